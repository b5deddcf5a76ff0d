//! TLS: the client trusts Mozilla's roots compiled in, or, when `SSL_CERT_FILE` or
//! `SSL_CERT_DIR` is set (a private CA), the store they name and nothing else. Three servers
//! answer on `localhost`: one with a certificate from the test CA, one from another CA, and one
//! from the test CA but for another name. With the test CA in the named store only the first is
//! answered; without a store named, none is (no public CA signed them).
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

/// Where the test CA is put.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Store {
    /// Nowhere: the compiled-in roots.
    Compiled,
    /// In a bundle file (`SSL_CERT_FILE`).
    File,
    /// In a directory (`SSL_CERT_DIR`) beside a bundle that does not hold it.
    Directory,
}

#[tokio::test]
async fn only_certificates_from_the_trusted_store_and_for_the_host_are_accepted() {
    let trusted = authority("trusted test CA");
    let other = authority("another test CA");
    let unused = authority("a CA that signs nothing here");
    let root = std::env::temp_dir().join(format!("tls-test-{}", std::process::id()));
    let (bundle, dir) = (root.join("ca.pem"), root.join("certs"));
    std::fs::create_dir_all(&dir).unwrap();

    for store in [Store::File, Store::Directory, Store::Compiled] {
        // SAFETY: the only test in this binary, and nothing else runs while it sets them.
        unsafe {
            std::env::remove_var("SSL_CERT_FILE");
            std::env::remove_var("SSL_CERT_DIR");
            match store {
                Store::Compiled => {}
                Store::File => {
                    std::fs::write(&bundle, trusted.pem()).unwrap();
                    std::env::set_var("SSL_CERT_FILE", &bundle);
                }
                Store::Directory => {
                    std::fs::write(&bundle, unused.pem()).unwrap();
                    std::fs::write(dir.join("trusted.pem"), trusted.pem()).unwrap();
                    std::env::set_var("SSL_CERT_FILE", &bundle);
                    std::env::set_var("SSL_CERT_DIR", &dir);
                }
            }
        }
        let cases = [
            ("localhost", &trusted, None),
            ("localhost", &other, Some("UnknownIssuer")),
            ("elsewhere.example", &trusted, Some("not valid for name")),
        ];
        for (name, issuer, refusal) in cases {
            // No public CA signed the test CA: with the compiled-in roots, nothing is trusted.
            let refusal = match store {
                Store::Compiled => Some("UnknownIssuer"),
                _ => refusal,
            };
            let port = serve(leaf(name, issuer)).await;
            let config = Config::from_lookup(|var| match var {
                "OPENSEARCH_URL" => Some(format!("https://localhost:{port}")),
                "OPENSEARCH_INDEX" => Some("items".into()),
                _ => None,
            })
            .unwrap();
            let os = OpenSearch::connect(&config).await.unwrap();
            let answer = os
                .request(Method::Get, "/", None, Duration::from_secs(10))
                .await;
            let case = format!("{name} ({store:?})");
            match (refusal, answer) {
                (None, Ok((status, body))) => {
                    assert_eq!((status, &body[..]), (200, &b"{}"[..]), "{case}")
                }
                (Some(why), Err(e)) => assert!(e.reason.contains(why), "{case}: {e}"),
                (refusal, answer) => panic!("{case} (refusal {refusal:?}): {answer:?}"),
            }
        }
    }
    // A named store with no certificate in it is a start error naming the variables.
    std::fs::write(&bundle, "not a certificate").unwrap();
    // SAFETY: as above.
    unsafe {
        std::env::set_var("SSL_CERT_FILE", &bundle);
        std::env::remove_var("SSL_CERT_DIR");
    }
    let config = Config::from_lookup(|var| match var {
        "OPENSEARCH_URL" => Some("https://localhost:9".into()),
        "OPENSEARCH_INDEX" => Some("items".into()),
        _ => None,
    })
    .unwrap();
    let e = OpenSearch::connect(&config)
        .await
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("SSL_CERT_FILE"), "{e}");
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
