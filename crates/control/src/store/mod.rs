//! Desired state, from wherever it is kept.
//!
//! A store publishes [`Snapshot`]s: complete, validated sets of objects. A change that does
//! not validate is refused whole: the previous snapshot stays in force and the refusal is
//! published as [`Status`] (for `tarmac check` and the logs). Consumers never see a partial
//! apply.

pub mod files;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::SystemTime;
use tarmac_model::{ModelError, ObjectKey, Resource};
use tokio::sync::watch;

/// A complete, valid desired state.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Snapshot {
    /// Increases with every accepted change.
    pub generation: u64,
    pub objects: BTreeMap<ObjectKey, Resource>,
}

impl Snapshot {
    /// The objects of `kind`: a range of the map, which is ordered by kind, namespace and
    /// name, not a walk through every object.
    pub fn iter_kind<'a>(&'a self, kind: &'static str) -> impl Iterator<Item = &'a Resource> + 'a {
        let from = ObjectKey { kind, namespace: String::new(), name: String::new() };
        self.objects.range(from..).take_while(move |(k, _)| k.kind == kind).map(|(_, r)| r)
    }

    /// The objects of `kind` in `namespace`, by range as [`Snapshot::iter_kind`].
    pub fn iter_kind_in<'a>(
        &'a self,
        kind: &'static str,
        namespace: &str,
    ) -> impl Iterator<Item = &'a Resource> + use<'a> {
        let from = ObjectKey { kind, namespace: namespace.to_string(), name: String::new() };
        let namespace = from.namespace.clone();
        self.objects
            .range(from..)
            .take_while(move |(k, _)| k.kind == kind && k.namespace == namespace)
            .map(|(_, r)| r)
    }
}

/// What the store last concluded about its input.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Status {
    /// Generation of the snapshot in force.
    pub generation: u64,
    /// Empty when the input as it is now was accepted; otherwise why it was refused (the
    /// snapshot in force is the last good one).
    pub rejected: Vec<ModelError>,
    pub checked_at: Option<SystemTime>,
}

/// A source of desired state. Implementations publish through watch channels so that
/// consumers always read the newest value and never queue stale ones.
pub trait Store: Send + Sync {
    fn snapshots(&self) -> watch::Receiver<Arc<Snapshot>>;
    fn status(&self) -> watch::Receiver<Arc<Status>>;
}
