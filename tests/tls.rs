//! TLS: the client trusts the CA store it is given (here `SSL_CERT_FILE`, and `SSL_CERT_DIR`
//! beside it, as a user with a private CA would set them) and nothing else. Three servers
//! answer on `localhost`: one with a certificate from the trusted CA, one from another CA, and
//! one from the trusted CA but for another name. Only the first is answered; the others fail
//! on their certificate.
//!
//! The store's place is in environment variables read when the client is built, so this binary
//! holds one test, which sets them.

use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use stream_indexer::config::Config;
use stream_indexer::sink::transport::{Method, OpenSearch};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

#[path = "common/ca.rs"]
mod ca;
use ca::{authority, leaf};

#[tokio::test]
async fn only_certificates_from_the_trusted_store_and_for_the_host_are_accepted() {
    let trusted = authority("trusted test CA");
    let other = authority("another test CA");
    let unused = authority("a CA that signs nothing here");
    let root = std::env::temp_dir().join(format!("tls-test-{}", std::process::id()));
    let (bundle, dir) = (root.join("ca.pem"), root.join("certs"));
    std::fs::create_dir_all(&dir).unwrap();

    // The trusted CA in a bundle file alone, then in a directory beside a bundle that does not
    // hold it. The directory is read when a chain first needs it: the CA is put there only
    // once the first client has been made.
    for in_directory in [false, true] {
        if in_directory {
            std::fs::write(&bundle, unused.pem()).unwrap();
        } else {
            std::fs::write(&bundle, trusted.pem()).unwrap();
        }
        // SAFETY: the only test in this binary, and nothing else runs while it sets them.
        unsafe {
            std::env::set_var("SSL_CERT_FILE", &bundle);
            if in_directory {
                std::env::set_var("SSL_CERT_DIR", &dir);
            } else {
                std::env::remove_var("SSL_CERT_DIR");
            }
        }
        let cases = [
            ("localhost", &trusted, None),
            ("localhost", &other, Some("UnknownIssuer")),
            ("elsewhere.example", &trusted, Some("not valid for name")),
        ];
        for (name, issuer, refusal) in cases {
            let port = serve(leaf(name, issuer)).await;
            let config = Config::from_lookup(|var| match var {
                "OPENSEARCH_URL" => Some(format!("https://localhost:{port}")),
                "OPENSEARCH_INDEX" => Some("items".into()),
                _ => None,
            })
            .unwrap();
            let os = OpenSearch::connect(&config).await.unwrap();
            if in_directory {
                std::fs::write(dir.join("trusted.pem"), trusted.pem()).unwrap();
            }
            let answer = os
                .request(Method::Get, "/", None, Duration::from_secs(10))
                .await;
            let case = format!("{name} (in a directory: {in_directory})");
            match (refusal, answer) {
                (None, Ok((status, body))) => {
                    assert_eq!((status, &body[..]), (200, &b"{}"[..]), "{case}")
                }
                (Some(why), Err(e)) => assert!(e.reason.contains(why), "{case}: {e}"),
                (refusal, answer) => panic!("{case} (refusal {refusal:?}): {answer:?}"),
            }
        }
    }
    std::fs::remove_dir_all(&root).unwrap();
}

/// A TLS server on 127.0.0.1 answering every request `200 {}`; returns its port.
async fn serve((cert, key): (CertificateDer<'static>, PrivateKeyDer<'static>)) -> u16 {
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(vec![cert], key)
    .unwrap();
    let acceptor = TlsAcceptor::from(Arc::new(config));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        loop {
            let Ok((conn, _)) = listener.accept().await else {
                return;
            };
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(mut tls) = acceptor.accept(conn).await else {
                    return;
                };
                let mut head = Vec::new();
                let mut buf = [0u8; 1024];
                while !head.ends_with(b"\r\n\r\n") {
                    match tls.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
                let answer = "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n\
                              content-length: 2\r\nconnection: close\r\n\r\n{}";
                let _ = tls.write_all(answer.as_bytes()).await;
                let _ = tls.shutdown().await;
            });
        }
    });
    port
}
