//! Identity on Kubernetes, with no cluster (docs/kubernetes.md, "Identity"): the
//! `tarmac-control --store kubernetes --identity-secret` binary against the scripted API
//! server, which holds the CA's Secret and answers TokenReviews for the ServiceAccount
//! tokens the test mints; proxies (in this process) that bootstrap with a token file, and
//! a gRPC client that attacks the Identity service as a rogue proxy would.

use base64::Engine as _;
use serde_json::{Value, json};
use std::path::Path;
use std::time::Duration;
use tarmac_identity::SpiffeId;
use tarmac_identity::ca::{Ca, ISSUER_KEY_FILE, generate_root};
use tarmac_identity::workload::WorkloadKey;
use tarmac_proto::identity::ServiceAccountToken;
use tarmac_proto::identity::certify_request::Proof;
use tarmac_testkit::apiserver::ApiServer;
use tarmac_testkit::control::ControlProcess;
use tarmac_testkit::echo::{EchoServer, field};
use tarmac_testkit::proxy::start;
use tarmac_testkit::tools::{curl, http_get, temp_dir};

const SECRETS: &str = "/api/v1/secrets";

/// The Secret `tarmac-system/tarmac-identity` as cert-manager writes it: `data` fields
/// base64, as the API serves them.
fn secret(anchors: &str, issuer: &str, key: &str) -> Value {
    let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
    json!({
        "apiVersion": "v1", "kind": "Secret", "type": "kubernetes.io/tls",
        "metadata": {"name": "tarmac-identity", "namespace": "tarmac-system"},
        "data": {"ca.crt": b64(anchors), "tls.crt": b64(issuer), "tls.key": b64(key)},
    })
}

/// An issuer under the root `(root_pem, root_key)`: its certificate and its key, PEM.
fn issuer_under(dir: &Path, tag: &str, root_pem: &str, root_key: &str) -> (String, String) {
    // The trust domain only names the issuer here: `tag` tells issuers apart.
    let ca = Ca::from_root(root_pem, root_key, &format!("cluster.local {tag}")).unwrap();
    let at = dir.join(tag);
    ca.save(&at, None).unwrap();
    (ca.issuer_pem().to_string(), std::fs::read_to_string(at.join(ISSUER_KEY_FILE)).unwrap())
}

fn proxy_identity(control: &str, dir: &Path, sa: &str, token: &str) -> String {
    let token_file = dir.join(format!("token-{sa}"));
    std::fs::write(&token_file, token).unwrap();
    format!(
        "control: {{addr: \"{control}\", namespace: shop, service_account: {sa}}}\n\
         identity: {{trust_anchors: \"{}\", service_account_token: \"{}\"}}\n",
        dir.join("anchors.pem").display(),
        token_file.display()
    )
}

/// The `/identity` of a proxy's admin: (SPIFFE ID, issuer).
async fn identity_of(admin: std::net::SocketAddr) -> (String, String) {
    let (status, body) = http_get(admin, "/identity").await;
    assert_eq!(status, 200, "{body}");
    let get = |key: &str| {
        body.split(&format!("\"{key}\":\"")).nth(1).and_then(|s| s.split('"').next()).unwrap().to_string()
    };
    (get("identity"), get("issuer"))
}

async fn identity_client(
    control: &ControlProcess,
    anchors: &str,
) -> tarmac_proto::identity::identity_client::IdentityClient<tonic::transport::Channel> {
    let certs = std::sync::Arc::new(tarmac_proxy::identity::store::CertStore::default());
    let tls = tarmac_proxy::identity::MeshTls::new(anchors, "anchors", certs, Default::default()).unwrap();
    let config = tarmac_proxy::config::ControlConfig {
        addr: control.grpc.into(),
        namespace: "shop".into(),
        workload: "rogue".into(),
        service_account: String::new(),
    };
    let channel = tarmac_proxy::discovery::ControlClient::new(&config, Some(&tls)).channel();
    tarmac_proto::identity::identity_client::IdentityClient::new(channel)
}

async fn certify(
    client: &mut tarmac_proto::identity::identity_client::IdentityClient<tonic::transport::Channel>,
    csr: Vec<u8>,
    proof: Proof,
) -> Result<tarmac_proto::identity::CertifyResponse, tonic::Status> {
    client
        .certify(tarmac_proto::identity::CertifyRequest { csr, proof: Some(proof) })
        .await
        .map(|r| r.into_inner())
}

fn sa_proof(token: &str, sa: &str) -> Proof {
    Proof::ServiceAccountToken(ServiceAccountToken {
        token: token.into(),
        namespace: "shop".into(),
        service_account: sa.into(),
    })
}

fn issuer_of(leaf: &[u8]) -> String {
    tarmac_identity::x509::CertInfo::parse(leaf).unwrap().issuer
}

// Two workers: the scripted API server and the proxies run in this process while the
// control plane runs as its binary.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn service_account_tokens_get_certificates_and_the_issuer_rotates_from_its_secret() {
    let server = ApiServer::start().await;
    let dir = temp_dir("kube-identity");
    let (root_pem, root_key) = generate_root("cluster.local").unwrap();
    let root_key = root_key.serialize_pem();
    std::fs::write(dir.join("anchors.pem"), &root_pem).unwrap();
    let (issuer_a, key_a) = issuer_under(&dir, "a", &root_pem, &root_key);
    server.apply(SECRETS, secret(&root_pem, &issuer_a, &key_a));
    let kubeconfig = server.kubeconfig(&dir);
    let mut control = ControlProcess::spawn_with(&[
        "--store",
        "kubernetes",
        "--kubeconfig",
        kubeconfig.to_str().unwrap(),
        "--no-route-status",
        "--identity-secret",
        "tarmac-system/tarmac-identity",
        "--token-audience",
        "tarmac",
    ]);

    // A proxy bootstraps with its projected token and gets its service account's certificate.
    let app = EchoServer::start("books").await;
    let books_token = server.mint_token(&["tarmac"], "shop", "books", "books-5d8f-abcde");
    let books = start(&format!(
        "admin: 127.0.0.1:0\ninbound: {{listen: 127.0.0.1:0, app: \"{}\", mtls: strict}}\n{}",
        app.addr,
        proxy_identity(&control.grpc.to_string(), &dir, "books", &books_token)
    ))
    .await;
    let (id, books_issuer) = identity_of(books.addrs.admin).await;
    assert_eq!(id, "spiffe://cluster.local/ns/shop/sa/books");
    assert!(std::fs::exists(dir.join("token-books")).unwrap(), "the kubelet's token file is left in place");
    assert_eq!(server.token_reviews(), 1);

    // Attacks, each refused with nothing issued.
    let mut client = identity_client(&control, &root_pem).await;
    let key = WorkloadKey::generate().unwrap();
    let csr = key.csr_der(&SpiffeId::new("cluster.local", "shop", "books").unwrap()).unwrap();
    // books' token, claiming to be `admin`: never admin's certificate.
    let refused = certify(&mut client, csr.clone(), sa_proof(&books_token, "admin")).await.unwrap_err();
    assert_eq!(refused.code(), tonic::Code::PermissionDenied, "{refused:?}");
    assert!(refused.message().contains("is of shop/books, but the proxy claims shop/admin"), "{refused:?}");
    // A token the API server does not authenticate.
    let forged = format!("{}x", &books_token[..books_token.len() - 1]);
    let refused = certify(&mut client, csr.clone(), sa_proof(&forged, "books")).await.unwrap_err();
    assert_eq!(refused.code(), tonic::Code::PermissionDenied, "{refused:?}");
    assert!(refused.message().contains("did not authenticate"), "{refused:?}");
    // A token of the right service account, projected for another audience (a token
    // meant for some other service, replayed here).
    let vault = server.mint_token(&["vault"], "shop", "books", "books-5d8f-abcde");
    let refused = certify(&mut client, csr.clone(), sa_proof(&vault, "books")).await.unwrap_err();
    assert_eq!(refused.code(), tonic::Code::PermissionDenied, "{refused:?}");
    assert!(refused.message().contains("audience"), "{refused:?}");
    // A bootstrap token is not what this control plane checks.
    let refused = certify(&mut client, csr.clone(), Proof::Token(books_token.clone())).await.unwrap_err();
    assert_eq!(refused.code(), tonic::Code::PermissionDenied, "{refused:?}");
    // The API server cannot answer: retryable, not a refusal.
    server.reviews_unavailable(true);
    let other = server.mint_token(&["tarmac"], "shop", "orders", "orders-1");
    let retry = certify(&mut client, csr.clone(), sa_proof(&other, "orders")).await.unwrap_err();
    assert_eq!(retry.code(), tonic::Code::Unavailable, "{retry:?}");
    server.reviews_unavailable(false);

    // The same token again: answered from the cache, no second review.
    let reviews = server.token_reviews();
    let first = certify(&mut client, csr.clone(), sa_proof(&books_token, "books")).await.unwrap();
    assert_eq!(server.token_reviews(), reviews, "a recent positive review is remembered");

    // The issuer rotates in the Secret (cert-manager renewed it): same anchor, new issuer.
    let (issuer_b, key_b) = issuer_under(&dir, "b", &root_pem, &root_key);
    server.apply(SECRETS, secret(&root_pem, &issuer_b, &key_b));
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let rotated = loop {
        let issued = certify(&mut client, csr.clone(), sa_proof(&books_token, "books")).await.unwrap();
        if issuer_of(&issued.leaf) != issuer_of(&first.leaf) {
            break issued;
        }
        assert!(tokio::time::Instant::now() < deadline, "never rotated:\n{}", control.log());
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    // A certificate of the old issuer renews into one of the new.
    let renewed =
        certify(&mut client, csr.clone(), Proof::CurrentCertificate(first.leaf.clone())).await.unwrap();
    assert_eq!(issuer_of(&renewed.leaf), issuer_of(&rotated.leaf));

    // A proxy certified now (new issuer) calls the proxy certified before (old issuer)
    // over mTLS: both chain to the one anchor. This one finds the control plane by name,
    // as injected sidecars do (`tarmac-control.tarmac-system.svc:4180`).
    let orders_token = server.mint_token(&["tarmac"], "shop", "orders", "orders-7c9d-fghij");
    let orders = start(&format!(
        "admin: 127.0.0.1:0\noutbound:\n  services:\n  - name: books\n    listen: 127.0.0.1:0\n    endpoints: [{{addr: \"{}\", meshed: true, identity: \"spiffe://cluster.local/ns/shop/sa/books\"}}]\n{}",
        books.addrs.inbound.unwrap(),
        proxy_identity(&format!("localhost:{}", control.grpc.port()), &dir, "orders", &orders_token)
    ))
    .await;
    let (_, orders_issuer) = identity_of(orders.addrs.admin).await;
    assert_ne!(orders_issuer, books_issuer, "the new proxy's certificate is the new issuer's");
    let listen = orders.addrs.service("books").unwrap();
    let (body, _) = curl(&[&format!("http://{listen}/a")]).await;
    assert_eq!(
        field(&body, "header tarmac-client-id"),
        Some("spiffe://cluster.local/ns/shop/sa/orders"),
        "{body}"
    );

    // Malformed Secrets are refused, and the issuer in use stays.
    let (other_root, other_root_key) = generate_root("cluster.local").unwrap();
    let (foreign_issuer, foreign_key) = issuer_under(&dir, "c", &other_root, &other_root_key.serialize_pem());
    let malformed = [
        (secret(&root_pem, &issuer_b, &key_a), "tls.key: it is not the key of the issuer certificate"),
        (secret(&root_pem, &foreign_issuer, &foreign_key), "does not chain to the trust anchors"),
        (secret(&root_pem, &root_pem, ""), "no `tls.key`"),
    ];
    for (bad, expected) in malformed {
        server.apply(SECRETS, bad);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while !control.log().contains(expected) {
            assert!(tokio::time::Instant::now() < deadline, "{expected} not logged:\n{}", control.log());
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let issued = certify(&mut client, csr.clone(), sa_proof(&books_token, "books")).await.unwrap();
        assert_eq!(issuer_of(&issued.leaf), issuer_of(&rotated.leaf), "the previous issuer stays");
    }

    // Each refusal is logged with its reason.
    let log = control.log();
    for reason in ["claim_mismatch", "token_not_authenticated", "wrong_credential_kind"] {
        assert!(log.contains(reason), "{reason} not logged:\n{log}");
    }
    // Only the one Secret is asked for, by name.
    let asked = server.requests();
    let secrets: Vec<&String> = asked.iter().filter(|r| r.contains("secrets")).collect();
    assert!(secrets.iter().all(|r| r.contains("/namespaces/tarmac-system/secrets")), "{secrets:#?}");
    assert!(secrets.iter().any(|r| r.contains("fieldSelector=metadata.name")), "{secrets:#?}");
    let status = control.terminate(Duration::from_secs(5)).expect("tarmac-control exits within 5 s");
    assert!(status.success(), "exit {status}\n{}", control.log());
}
