//! `tarmac-proto`: the gRPC contract between `tarmac-control` and `tarmac-proxy`, and the
//! part of OTLP (the OpenTelemetry protocol) the proxy exports spans with.
//!
//! The protocol lives in `proto/`; the Rust code generated from it is checked in under
//! `src/gen` so that building needs no `protoc`. `tests/bootstrap.rs` regenerates it and
//! fails when it is stale. Every generated client and server uses [`codec::SmallCodec`],
//! whose call buffers start small (a discovery stream lives as long as its proxy).

/// The codec of every generated client and server: prost's, with buffers that start small.
///
/// tonic gives each call an encode buffer and a decode buffer of 8 KiB to start with, and
/// keeps them for the call's life. A discovery stream lives as long as its proxy and its
/// messages are a few hundred bytes: at a cluster's size (17,000 streams for 2000 proxies)
/// the 8 KiB buffers were most of the control plane's memory. These start at 512 bytes
/// and grow as a message needs (bench/README, "The control plane at a cluster's size").
pub mod codec {
    use std::marker::PhantomData;
    use tonic::codec::{BufferSettings, Codec};
    use tonic_prost::{ProstCodec, ProstDecoder, ProstEncoder};

    /// Where a call's buffers start; tonic grows them for larger messages.
    const BUFFER_SIZE: usize = 512;
    /// tonic's default: how much a stream encodes before it lets others run.
    const YIELD_THRESHOLD: usize = 32 * 1024;

    #[derive(Debug, Clone)]
    pub struct SmallCodec<T, U>(PhantomData<(T, U)>);

    impl<T, U> Default for SmallCodec<T, U> {
        fn default() -> Self {
            Self(PhantomData)
        }
    }

    impl<T, U> Codec for SmallCodec<T, U>
    where
        T: prost::Message + Send + 'static,
        U: prost::Message + Default + Send + 'static,
    {
        type Encode = T;
        type Decode = U;
        type Encoder = ProstEncoder<T>;
        type Decoder = ProstDecoder<U>;

        fn encoder(&mut self) -> Self::Encoder {
            ProstCodec::<T, U>::raw_encoder(BufferSettings::new(BUFFER_SIZE, YIELD_THRESHOLD))
        }

        fn decoder(&mut self) -> Self::Decoder {
            ProstCodec::<T, U>::raw_decoder(BufferSettings::new(BUFFER_SIZE, YIELD_THRESHOLD))
        }
    }
}

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
