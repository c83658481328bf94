//! Protocol detection decides on a prefix of the connection: whatever it decided from
//! fewer bytes it must decide from more (a decision that changed with more bytes would
//! depend on how the client's bytes were split into packets), and never panic.
#![no_main]
use libfuzzer_sys::fuzz_target;
use tarmac_proxy::detect::{Detected, classify, classify_at_end};

fuzz_target!(|data: &[u8]| {
    if data.len() > 4096 {
        return;
    }
    let whole = classify(data);
    for n in 1..data.len() {
        if let Some(early) = classify(&data[..n]) {
            assert_eq!(whole, Some(early), "decided {early:?} on {n} bytes, then {whole:?}");
            break;
        }
    }
    let at_end = classify_at_end(data);
    if let Some(decided) = whole {
        assert_eq!(at_end, decided);
    }
    // Something that starts like a request line is never left to opaque forwarding.
    if data.starts_with(b"GET ") || data.starts_with(b"POST ") {
        assert_eq!(at_end, Detected::Http1);
    }
});
