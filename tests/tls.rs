//! HTTPS with rustls when a certificate and key are configured.

mod common;

use common::TestServer;
use std::io::{Read, Write};
use std::sync::Arc;

fn https_get(
    addr: std::net::SocketAddr,
    ca_pem: &str,
    version: &'static rustls::SupportedProtocolVersion,
) -> (String, rustls::ProtocolVersion) {
    https_send(
        addr,
        ca_pem,
        version,
        "GET /healthz HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n",
    )
}

fn https_send(
    addr: std::net::SocketAddr,
    ca_pem: &str,
    version: &'static rustls::SupportedProtocolVersion,
    request: &str,
) -> (String, rustls::ProtocolVersion) {
    use rustls_pki_types::CertificateDer;
    use rustls_pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        roots.add(cert.expect("pem")).expect("add root");
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[version])
        .expect("versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    let name = rustls_pki_types::ServerName::try_from("localhost").expect("name");
    let conn = rustls::ClientConnection::new(Arc::new(config), name).expect("client");
    let sock = std::net::TcpStream::connect(addr).expect("connect");
    let mut tls = rustls::StreamOwned::new(conn, sock);
    tls.write_all(request.as_bytes()).expect("write");
    let mut out = String::new();
    let _ = tls.read_to_string(&mut out);
    let negotiated = tls.conn.protocol_version().expect("negotiated");
    (out, negotiated)
}

#[actix_web::test]
async fn https_serves_tls_1_3_and_1_2_with_hsts() {
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).expect("cert");
    let dir = tempfile::tempdir().expect("tempdir");
    let (cert_file, key_file) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    std::fs::write(&cert_file, cert.cert.pem()).expect("cert file");
    std::fs::write(&key_file, cert.signing_key.serialize_pem()).expect("key file");
    let s = TestServer::start_with(
        "",
        &[
            (
                "EASEL_SERVER__TLS__CERT_FILE",
                cert_file.to_str().expect("utf8"),
            ),
            (
                "EASEL_SERVER__TLS__KEY_FILE",
                key_file.to_str().expect("utf8"),
            ),
        ],
    )
    .await;
    let addr = s.running.as_ref().expect("running").addr;
    let pem = cert.cert.pem();
    let (answer, version) =
        tokio::task::spawn_blocking(move || https_get(addr, &pem, &rustls::version::TLS13))
            .await
            .expect("join");
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(
        answer
            .to_ascii_lowercase()
            .contains("strict-transport-security: max-age=31536000"),
        "{answer}"
    );
    assert_eq!(version, rustls::ProtocolVersion::TLSv1_3);
    let pem = cert.cert.pem();
    let (answer, version) =
        tokio::task::spawn_blocking(move || https_get(addr, &pem, &rustls::version::TLS12))
            .await
            .expect("join");
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert_eq!(version, rustls::ProtocolVersion::TLSv1_2);
    // Plain HTTP on the TLS port gets no HTTP answer.
    let mut plain = std::net::TcpStream::connect(addr).expect("connect");
    plain
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .expect("write");
    plain
        .set_read_timeout(Some(std::time::Duration::from_secs(2)))
        .expect("timeout");
    let mut buf = Vec::new();
    let _ = plain.read_to_end(&mut buf);
    assert!(!String::from_utf8_lossy(&buf).starts_with("HTTP/1.1 200"));
    s.stop().await;
}

fn tls_env(dir: &std::path::Path) -> (String, Vec<(String, String)>) {
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).expect("cert");
    let (cert_file, key_file) = (dir.join("cert.pem"), dir.join("key.pem"));
    std::fs::write(&cert_file, cert.cert.pem()).expect("cert file");
    std::fs::write(&key_file, cert.signing_key.serialize_pem()).expect("key file");
    let path = |p: &std::path::Path| p.to_str().expect("utf8").to_string();
    (
        cert.cert.pem(),
        vec![
            ("EASEL_SERVER__TLS__CERT_FILE".into(), path(&cert_file)),
            ("EASEL_SERVER__TLS__KEY_FILE".into(), path(&key_file)),
        ],
    )
}

#[actix_web::test]
async fn the_session_cookie_is_secure_under_tls() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (pem, env) = tls_env(dir.path());
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let s = TestServer::start_with(
        "\n[auth]\nargon2_memory_kib = 1024\nargon2_iterations = 1\n",
        &env,
    )
    .await;
    s.make_account(
        "ada@example.com",
        easel::auth::Role::Member,
        "correct horse battery",
    )
    .await;
    let addr = s.running.as_ref().expect("running").addr;
    let body = r#"{"email":"ada@example.com","password":"correct horse battery"}"#;
    let request = format!(
        "POST /api/auth/login HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let (answer, _) = tokio::task::spawn_blocking(move || {
        https_send(addr, &pem, &rustls::version::TLS13, &request)
    })
    .await
    .expect("join");
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    let cookie = answer
        .lines()
        .find(|l| l.to_ascii_lowercase().starts_with("set-cookie:"))
        .expect("a cookie");
    for flag in ["easel_session=", "HttpOnly", "SameSite=Strict", "Secure"] {
        assert!(cookie.contains(flag), "{flag} missing: {cookie}");
    }
    s.stop().await;
}

#[test]
fn a_missing_certificate_is_a_clear_start_up_error() {
    let err = easel::http::tls_config(
        std::path::Path::new("/nonexistent/cert.pem"),
        std::path::Path::new("/nonexistent/key.pem"),
    )
    .expect_err("refused");
    assert!(err.contains("/nonexistent/cert.pem"), "{err}");
}
