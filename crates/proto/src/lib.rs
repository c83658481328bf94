//! `tarmac-proto`: the gRPC contract between `tarmac-control` and `tarmac-proxy`.
//!
//! The protocol lives in `proto/`; the Rust code generated from it is checked in under
//! `src/gen` so that building needs no `protoc`. `tests/bootstrap.rs` regenerates it and
//! fails when it is stale.

/// `tarmac.discovery.v1`: service discovery and inbound settings.
pub mod discovery {
    #![allow(clippy::all, missing_docs, rust_2018_idioms)]
    include!("gen/tarmac.discovery.v1.rs");
}

/// `tarmac.identity.v1`: workload certificates from the control plane's CA.
pub mod identity {
    #![allow(clippy::all, missing_docs, rust_2018_idioms)]
    include!("gen/tarmac.identity.v1.rs");
}
