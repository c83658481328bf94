//! The generated code in src/gen is checked in so that builds need no protoc. This test
//! regenerates it from proto/ (with protox, pure Rust) and fails if it differs: a changed
//! .proto must come with its regenerated code. `TARMAC_BLESS=1 cargo test -p tarmac-proto`
//! rewrites src/gen.

use std::path::{Path, PathBuf};

#[test]
fn generated_code_is_up_to_date() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let out = std::env::temp_dir().join(format!("tarmac-proto-gen-{}", std::process::id()));
    std::fs::create_dir_all(&out).unwrap();
    let protos = [
        root.join("proto/tarmac/discovery/v1/discovery.proto"),
        root.join("proto/tarmac/identity/v1/identity.proto"),
        root.join("proto/opentelemetry/proto/collector/trace/v1/trace_service.proto"),
    ];
    let descriptors = protox::compile(&protos, [root.join("proto")]).expect("the .proto files compile");
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        // Connection setup belongs to the users (proxy, control plane), not the contract.
        .build_transport(false)
        // Buffers that start small: a discovery stream lives as long as its proxy (lib.rs).
        .codec_path("crate::codec::SmallCodec")
        .out_dir(&out)
        .compile_fds(descriptors)
        .expect("code generation");

    let checked_in = root.join("src/gen");
    let mut stale = Vec::new();
    for entry in std::fs::read_dir(&out).unwrap() {
        let generated = entry.unwrap().path();
        let name = generated.file_name().unwrap();
        let target = checked_in.join(name);
        let new = std::fs::read_to_string(&generated).unwrap();
        if read(&target) != Some(new.clone()) {
            if std::env::var_os("TARMAC_BLESS").is_some() {
                std::fs::write(&target, new).unwrap();
            } else {
                stale.push(target.display().to_string());
            }
        }
    }
    assert!(
        stale.is_empty(),
        "stale generated code: {stale:?}; run `TARMAC_BLESS=1 cargo test -p tarmac-proto`"
    );
}

fn read(path: &Path) -> Option<String> {
    std::fs::read_to_string(path).ok()
}
