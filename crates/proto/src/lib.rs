//! `tarmac-proto`: the gRPC contract between `tarmac-control` and `tarmac-proxy`, and the
//! part of OTLP (the OpenTelemetry protocol) the proxy exports spans with.
//!
//! The protocol lives in `proto/`; the Rust code generated from it is checked in under
//! `src/gen` so that building needs no `protoc`. `tests/bootstrap.rs` regenerates it and
//! fails when it is stale.

/// `tarmac.discovery.v1`: service discovery, inbound settings and telemetry.
pub mod discovery {
    #![allow(clippy::all, missing_docs, rust_2018_idioms)]
    include!("gen/tarmac.discovery.v1.rs");
}

/// `tarmac.identity.v1`: workload certificates from the control plane's CA.
pub mod identity {
    #![allow(clippy::all, missing_docs, rust_2018_idioms)]
    include!("gen/tarmac.identity.v1.rs");
}

/// OTLP/gRPC trace export (`opentelemetry.proto.*.v1`), the subset the proxy sends: the
/// specification's messages and field numbers, so that any OTLP collector reads them.
/// Nested as the packages are: the generated code refers across them by relative path.
pub mod opentelemetry {
    pub mod proto {
        pub mod common {
            pub mod v1 {
                #![allow(clippy::all, missing_docs, rust_2018_idioms)]
                include!("gen/opentelemetry.proto.common.v1.rs");
            }
        }
        pub mod resource {
            pub mod v1 {
                #![allow(clippy::all, missing_docs, rust_2018_idioms)]
                include!("gen/opentelemetry.proto.resource.v1.rs");
            }
        }
        pub mod trace {
            pub mod v1 {
                #![allow(clippy::all, missing_docs, rust_2018_idioms)]
                include!("gen/opentelemetry.proto.trace.v1.rs");
            }
        }
        pub mod collector {
            pub mod trace {
                pub mod v1 {
                    #![allow(clippy::all, missing_docs, rust_2018_idioms)]
                    include!("gen/opentelemetry.proto.collector.trace.v1.rs");
                }
            }
        }
    }
}
