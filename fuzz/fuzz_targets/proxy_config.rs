//! The proxy's configuration file: any text is a configuration or an error naming why.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = tarmac_proxy::Config::from_yaml(text, "fuzz.yaml");
    }
});
