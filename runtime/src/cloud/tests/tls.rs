//! TLS: a private cloud's self-signed certificate is trusted only through `ca_file`.

use std::sync::Arc;

use rustls::pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};
use serde_json::json;
use tokio_rustls::TlsAcceptor;

use super::fake::{completion, FakeCloud, Reply};
use super::{config, write};
use crate::cloud::{Cloud, CloudError};
use crate::metrics::Metrics;

/// A TLS acceptor with a fresh self-signed certificate for 127.0.0.1, and that certificate as PEM.
fn self_signed() -> (TlsAcceptor, String) {
    let cert = rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_owned(), "localhost".to_owned()])
        .expect("generate a certificate");
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(cert.signing_key.serialize_der()));
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut server = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("TLS versions")
        .with_no_client_auth()
        .with_single_cert(vec![cert.cert.der().clone()], key)
        .expect("server certificate");
    server.alpn_protocols = vec![b"http/1.1".to_vec()];
    (TlsAcceptor::from(Arc::new(server)), cert.cert.pem())
}

#[tokio::test]
async fn a_self_signed_cloud_is_trusted_only_with_its_ca_file() {
    let (acceptor, pem) = self_signed();
    let fake = FakeCloud::start_tls(acceptor, |_, _| Reply::json(200, completion("m", "over TLS"))).await;
    let mut config = config(&fake.url());
    config.retries = 0;

    let untrusting = Cloud::new(&config, Arc::new(Metrics::new())).expect("client");
    let err = untrusting.complete(json!({"messages": []})).await.expect_err("unknown issuer");
    assert!(matches!(&err, CloudError::Connect(m) if m.contains("certificate")), "{err:?}");
    assert_eq!(fake.requests().len(), 0, "no request crosses an untrusted connection");

    let dir = tempfile::tempdir().expect("tempdir");
    config.ca_file = Some(write(dir.path(), "ca.pem", &pem));
    let trusting = Cloud::new(&config, Arc::new(Metrics::new())).expect("client");
    let answer = trusting.complete(json!({"messages": []})).await.expect("trusted through ca_file");
    assert_eq!(answer["choices"][0]["message"]["content"], "over TLS");
    assert_eq!(fake.requests().len(), 1);
}

#[test]
fn a_ca_file_that_is_missing_or_not_pem_names_its_path() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut config = config("https://127.0.0.1:9/v1");
    for (path, what) in [
        (dir.path().join("missing.pem"), "missing"),
        (write(dir.path(), "junk.pem", "not a certificate\n"), "not PEM"),
        (
            write(dir.path(), "bad.pem", "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n"),
            "bad DER",
        ),
    ] {
        config.ca_file = Some(path.clone());
        match Cloud::new(&config, Arc::new(Metrics::new())) {
            Err(err @ CloudError::CaFile { .. }) => {
                assert!(err.to_string().contains(&path.display().to_string()), "{what}: {err}");
            }
            other => panic!("{what}: expected a CaFile error, got {other:?}"),
        }
    }
}

#[tokio::test]
async fn a_handshake_that_never_finishes_is_a_connect_timeout() {
    // Accepts TCP connections and never says a word: the TLS handshake hangs.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("address");
    let silent = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((tcp, _)) = listener.accept().await {
            held.push(tcp);
        }
    });
    let mut config = config(&format!("https://{addr}/v1"));
    config.retries = 0;
    config.connect_timeout = std::time::Duration::from_millis(200);
    config.timeout = std::time::Duration::from_secs(5);
    let cloud = Cloud::new(&config, Arc::new(Metrics::new())).expect("client");

    let started = std::time::Instant::now();
    let err = cloud.complete(json!({"messages": []})).await.expect_err("no handshake");

    assert!(matches!(err, CloudError::Timeout("connect")), "{err:?}");
    assert!(started.elapsed() < std::time::Duration::from_secs(1), "took {:?}", started.elapsed());
    silent.abort();
}
