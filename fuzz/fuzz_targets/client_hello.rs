//! The inbound side peeks at a ClientHello to tell mesh TLS from an app's own TLS: any
//! bytes a client sends must get an answer (or a wait for more), never a panic.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = tarmac_proxy::identity::accept::offers_mesh_alpn(data);
});
