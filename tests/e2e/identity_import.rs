//! `tarmac identity import` with the user's own PKI, made with OpenSSL as a user's would
//! be: a root the mesh never holds the key of, and an intermediate under it that Tarmac
//! issues with. The mesh `tarmac up` then runs serves across its sidecars over mTLS with
//! certificates from that intermediate, verified against the user's root; and an issuer
//! from another PKI is refused on import, leaving the directory as it was.

use crate::app_tls::{NEW_KEY, openssl};
use crate::up::{Up, get_ok, greeter_addr, greeting, replica_addr, stop};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;
use tarmac_testkit::tools::{binary, temp_dir};

const INTERMEDIATE_CN: &str = "ExampleCorpMeshIntermediate";

/// `<name>.pem` and `<name>.key` in `dir`: a self-signed root CA named `cn` (no spaces).
fn root(dir: &Path, name: &str, cn: &str) {
    let d = dir.display();
    openssl(&format!(
        "req -x509 {NEW_KEY} -keyout {d}/{name}.key -out {d}/{name}.pem -days 30 -subj /O=ExampleCorp/CN={cn} \
         -addext basicConstraints=critical,CA:TRUE -addext keyUsage=critical,keyCertSign,cRLSign"
    ));
}

/// `<name>.pem` and `<name>.key` (PKCS#8): a certificate for `subject` (no spaces) signed
/// by `<issuer>`, with the extensions of `ext` (an openssl extension section's lines).
fn signed(dir: &Path, name: &str, subject: &str, issuer: &str, ext: &str) {
    let d = dir.display();
    std::fs::write(dir.join(format!("{name}.ext")), ext).unwrap();
    openssl(&format!("req -new {NEW_KEY} -keyout {d}/{name}.key -out {d}/{name}.csr -subj {subject}"));
    openssl(&format!(
        "x509 -req -in {d}/{name}.csr -CA {d}/{issuer}.pem -CAkey {d}/{issuer}.key -CAcreateserial -days 30 \
         -extfile {d}/{name}.ext -out {d}/{name}.pem"
    ));
}

const CA_EXT: &str = "basicConstraints=critical,CA:TRUE,pathlen:0\nkeyUsage=critical,keyCertSign,cRLSign\nsubjectKeyIdentifier=hash\nauthorityKeyIdentifier=keyid\n";

/// `tarmac identity --identity-dir DIR import --anchors A --issuer I --issuer-key K`.
fn import(ca_dir: &Path, pki: &Path, anchors: &str, issuer: &str) -> Output {
    Command::new(binary("tarmac"))
        .arg("identity")
        .arg("--identity-dir")
        .arg(ca_dir)
        .arg("import")
        .arg("--anchors")
        .arg(pki.join(format!("{anchors}.pem")))
        .arg("--issuer")
        .arg(pki.join(format!("{issuer}.pem")))
        .arg("--issuer-key")
        .arg(pki.join(format!("{issuer}.key")))
        .output()
        .unwrap()
}

fn text(out: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
}

/// The files of the CA directory and their contents.
fn contents(dir: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    let mut files: Vec<(PathBuf, Vec<u8>)> = match std::fs::read_dir(dir) {
        Ok(entries) => {
            entries.map(|e| e.unwrap().path()).map(|p| (p.clone(), std::fs::read(p).unwrap())).collect()
        }
        Err(_) => Vec::new(),
    };
    files.sort();
    files
}

#[test]
fn a_mesh_runs_on_an_imported_intermediate_of_the_users_root_and_a_foreign_issuer_is_refused() {
    let pki = temp_dir("import-pki");
    root(&pki, "root", "ExampleCorpRootCA");
    signed(&pki, "intermediate", &format!("/O=ExampleCorp/CN={INTERMEDIATE_CN}"), "root", CA_EXT);
    // Another organisation's root and intermediate: valid, but not under the user's root.
    root(&pki, "other-root", "OtherRootCA");
    signed(&pki, "other-intermediate", "/O=Other/CN=OtherIntermediate", "other-root", CA_EXT);
    let ca_dir = temp_dir("import-ca").join("identity");

    // Refused while the directory is empty: nothing is written.
    let out = import(&ca_dir, &pki, "root", "other-intermediate");
    assert!(!out.status.success(), "a foreign issuer was imported:\n{}", text(&out));
    assert!(text(&out).contains("does not chain to the trust anchors"), "{}", text(&out));
    assert!(contents(&ca_dir).is_empty(), "{:?}", contents(&ca_dir));

    let out = import(&ca_dir, &pki, "root", "intermediate");
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains(INTERMEDIATE_CN), "{}", text(&out));
    // The mesh holds the intermediate's key only, never the root's.
    assert!(!ca_dir.join("root.key").exists());
    let imported = contents(&ca_dir);

    // Refused over a good CA: the good one stays whole.
    let out = import(&ca_dir, &pki, "root", "other-intermediate");
    assert!(!out.status.success(), "{}", text(&out));
    assert_eq!(contents(&ca_dir), imported, "a refused import changed the CA directory");

    // The mesh: greeter -> its sidecar -> (mTLS) -> a names sidecar -> names.
    let hello = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../examples/hello");
    let mut up = Up::start_with_ca(&[hello.to_str().unwrap()], &ca_dir);
    let greeter = greeter_addr(&up);
    assert!(up.lines().iter().any(|l| l.contains("identity: CA from")), "{}", up.output());
    // Greetings until one crossed the edge over mTLS (the very first may precede the
    // sidecars' certificates).
    let greeter_admin = replica_addr(&up, "greeter-0", "admin ");
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        greeting(&up, greeter);
        let metrics = get_ok(greeter_admin, "/metrics");
        let handshakes = tarmac_testkit::metrics::sum(
            &metrics,
            "tarmac_tls_handshakes_total",
            &[("direction", "outbound"), ("result", "ok")],
        );
        if handshakes >= 1.0 {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "no mTLS handshake from greeter-0:\n{metrics}");
        std::thread::sleep(Duration::from_millis(200));
    }

    // Each sidecar's certificate was issued by the imported intermediate ...
    let (admin, inbound) =
        (replica_addr(&up, "names-0", "admin "), replica_addr(&up, "names-0", "sidecar inbound "));
    let identity = get_ok(admin, "/identity");
    assert!(identity.contains(INTERMEDIATE_CN), "{identity}");
    assert!(identity.contains("spiffe://cluster.local/ns/default/sa/names"), "{identity}");

    // ... and an independent client that trusts only the user's root accepts it, while
    // the sidecar accepts that client's certificate from the same intermediate.
    signed(
        &pki,
        "tester",
        "/O=ExampleCorp/CN=tester",
        "intermediate",
        "basicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature\nextendedKeyUsage=clientAuth,serverAuth\nsubjectAltName=URI:spiffe://cluster.local/ns/default/sa/tester\n",
    );
    let chain = pki.join("tester-chain.pem");
    let mut both = std::fs::read(pki.join("tester.pem")).unwrap();
    both.extend(std::fs::read(pki.join("intermediate.pem")).unwrap());
    std::fs::write(&chain, both).unwrap();
    let p = |f: &str| pki.join(f).display().to_string();
    let out = Command::new("openssl")
        .args(["s_client", "-connect", &inbound.to_string(), "-tls1_3", "-alpn", "tarmac.h2"])
        .args(["-CAfile", &p("root.pem"), "-verify_return_error", "-showcerts"])
        .args([
            "-cert",
            &p("tester-chain.pem"),
            "-cert_chain",
            &p("tester-chain.pem"),
            "-key",
            &p("tester.key"),
        ])
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    let said = text(&out);
    assert!(said.contains("Verify return code: 0 (ok)"), "{said}");
    assert!(
        said.contains(&format!("CN = {INTERMEDIATE_CN}")) || said.contains(&format!("CN={INTERMEDIATE_CN}")),
        "{said}"
    );
    assert!(said.contains("ALPN protocol: tarmac.h2"), "{said}");

    stop(&mut up);
}
