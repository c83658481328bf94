//! A value replaced as a whole, read on every request.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};

/// A value replaced as a whole by discovery, absent for most services: reading an absent
/// one is one atomic load.
#[derive(Debug)]
pub struct Swap<T> {
    active: AtomicBool,
    value: RwLock<Option<Arc<T>>>,
}

impl<T> Default for Swap<T> {
    fn default() -> Self {
        Self { active: AtomicBool::new(false), value: RwLock::new(None) }
    }
}

impl<T> Swap<T> {
    pub fn get(&self) -> Option<Arc<T>> {
        if !self.active.load(Ordering::Acquire) {
            return None;
        }
        self.value.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Whether a value is set: one atomic load.
    pub fn is_set(&self) -> bool {
        self.active.load(Ordering::Acquire)
    }

    pub fn set(&self, value: Option<T>) {
        let value = value.map(Arc::new);
        let active = value.is_some();
        *self.value.write().unwrap_or_else(|e| e.into_inner()) = value;
        self.active.store(active, Ordering::Release);
    }
}
