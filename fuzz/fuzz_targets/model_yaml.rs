//! The resource model: any directory file is resources or errors naming file and field.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = tarmac_model::parse_documents("fuzz.yaml", text);
    }
});
