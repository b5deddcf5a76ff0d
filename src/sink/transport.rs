//! The one place that talks HTTP to OpenSearch.
//!
//! On reqwest and `aws-sigv4` directly, for the function's `_bulk` path and the tools' requests
//! alike, not on the `opensearch` crate the project is specified on. Its latest release (2.4.0)
//! cannot carry the TLS configuration users get here, or send a query as it signs it:
//! - Its `TransportBuilder` builds its own reqwest client. Its one TLS setting
//!   (`CertificateValidation::Full`) adds roots to reqwest's platform verifier, which reads the
//!   system's CA store when the client is built (`rustls_native_certs::load_native_certs` in
//!   `rustls-platform-verifier`) and trusts it besides the roots given. So neither "Mozilla's
//!   roots compiled in, no file read at start" nor "only the store `SSL_CERT_FILE` /
//!   `SSL_CERT_DIR` name" (a private CA, and nothing else) could hold.
//! - Its typed calls serialise the query with `serde_urlencoded`, which leaves `*` raw while
//!   SigV4 signs `%2A` (`filter_path=items.*.status`): a proxy or signer that checks the query as
//!   received refuses the request. Here every query goes out as it is signed.
//!
//! Its unreleased main branch can hand the transport a configured client
//! (`with_client_initializer`); once that is on crates.io the tools' calls can move to it with
//! this module's TLS configuration and signing. Until then one TLS configuration ([`root_store`]
//! given to rustls) and one signing ([`sigv4`](super::sigv4), `aws-sigv4`) serve every request.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use bytes::Bytes;
use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};
use reqwest::header::{ACCEPT, ACCEPT_ENCODING, AUTHORIZATION, CONTENT_TYPE, HeaderValue};
use url::Url;

use super::sigv4::{SignError, Signer};
use crate::config::{Auth, Config};
use crate::pipeline::bulk::{self, ItemOutcome};
use crate::pipeline::change::Action;
use crate::telemetry::error_chain;

/// What a `_bulk` response keeps (OpenSearch's common `filter_path` parameter): each item's
/// status and error, which are all [`bulk::outcomes`] reads, and a refused request's own error
/// and status, for its reason. The rest (`_index`, `_id`, `_version`, `result`, `_shards`,
/// `_seq_no`, `_primary_term` per item) was about 150 of the 180 bytes an item took, read and
/// parsed only to be skipped.
/// Written as a query string encoded as it is signed.
const BULK_FILTER: &str = "filter_path=items.%2A.status%2Citems.%2A.error%2Cerror%2Cstatus";

/// An HTTP method of a request to OpenSearch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    Get,
    Post,
    Put,
    Delete,
    Head,
}

impl Method {
    fn http(self) -> reqwest::Method {
        match self {
            Method::Get => reqwest::Method::GET,
            Method::Post => reqwest::Method::POST,
            Method::Put => reqwest::Method::PUT,
            Method::Delete => reqwest::Method::DELETE,
            Method::Head => reqwest::Method::HEAD,
        }
    }
}

/// A client for one cluster, built once per process and shared by every invocation.
#[derive(Clone)]
pub struct OpenSearch {
    http: reqwest::Client,
    /// The cluster's URL, its path ending in `/`: request paths are joined to it.
    base: Arc<Url>,
    /// Each index's `_bulk` URL, joined once: a join formats a path and parses a URL, about
    /// 6,000 instructions, 3% of a one-record invocation's (reqwest parses the URL twice more,
    /// in its redirect layer, even with redirects off). The indexes are the configuration's
    /// (its routes' and the quarantine's), so the list is short; past [`BULK_URLS`] names it is
    /// not grown.
    bulk_urls: Arc<Mutex<BulkUrls>>,
    auth: Arc<Authorization>,
}

/// Index names and their `_bulk` URLs.
type BulkUrls = Vec<(Box<str>, Url)>;

/// The most indexes whose `_bulk` URL is kept.
const BULK_URLS: usize = 32;

/// How each request proves who sends it.
enum Authorization {
    None,
    /// The `Authorization` header, built once.
    Basic(HeaderValue),
    SigV4(Signer),
}

/// Why a request got no response.
#[derive(Debug, thiserror::Error)]
enum SendError {
    #[error(transparent)]
    Sign(#[from] SignError),
    #[error(transparent)]
    Http(#[from] reqwest::Error),
    #[error("bad request path {0:?}: {1}")]
    Path(String, url::ParseError),
}

/// The answer to one `_bulk` request.
#[derive(Debug)]
pub enum BulkReply {
    /// The request was processed; one outcome per action, in body order.
    Items(Vec<ItemOutcome>),
    /// 413: the body is too large for the cluster and must be split.
    TooLarge,
    /// The request failed as a whole (HTTP error status, transport error, timeout): every
    /// action in it is retryable for now.
    Failed {
        reason: String,
        failure: RequestFailure,
    },
}

/// Why a whole `_bulk` request failed: decides between slowing down and splitting.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RequestFailure {
    /// 429: the cluster is overloaded; lower concurrency, never split.
    Throttled,
    /// Any other error status.
    Status(u16),
    /// No answer: refused or dropped connection, timeout, a response cut off.
    Connection,
}

/// The CA certificates TLS connections are verified against: Mozilla's, compiled in
/// (`webpki-roots`: no file is read at start, and a Lambda image's store does not matter), or,
/// when `SSL_CERT_FILE` or `SSL_CERT_DIR` is set (a private CA), only the certificates found
/// there (`rustls-native-certs`, as OpenSSL reads those variables). A store that yields no
/// certificate is an error naming the variables and what could not be read.
pub fn root_store() -> Result<rustls::RootCertStore, ClientError> {
    let mut store = rustls::RootCertStore::empty();
    let named = ["SSL_CERT_FILE", "SSL_CERT_DIR"]
        .iter()
        .any(|v| std::env::var_os(v).is_some_and(|p| !p.is_empty()));
    if !named {
        store.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
        return Ok(store);
    }
    let found = rustls_native_certs::load_native_certs();
    let (added, _unusable) = store.add_parsable_certificates(found.certs);
    if added == 0 {
        let problems: Vec<String> = found.errors.iter().map(|e| e.to_string()).collect();
        return Err(ClientError(format!(
            "no usable CA certificate in SSL_CERT_FILE / SSL_CERT_DIR{}",
            if problems.is_empty() {
                String::new()
            } else {
                format!(" ({})", problems.join("; "))
            }
        )));
    }
    Ok(store)
}

/// The client could not be built.
#[derive(Debug, thiserror::Error)]
#[error("cannot build the OpenSearch client: {0}")]
pub struct ClientError(String);

/// A request outside `_bulk` failed (applying templates, reading documents, quarantine).
#[derive(Debug, thiserror::Error)]
#[error("{method} {path}: {reason}")]
pub struct RequestError {
    pub method: String,
    pub path: String,
    pub status: Option<u16>,
    /// OpenSearch's `error.type` from the response body, when it has one: what callers decide
    /// on (the reason text is cut to a snippet and is for people).
    pub error_type: Option<String>,
    pub reason: String,
}

impl OpenSearch {
    /// Builds the client from configuration; SigV4 credentials come from the default AWS chain.
    pub async fn connect(config: &Config) -> Result<OpenSearch, ClientError> {
        let auth = match &config.auth {
            Auth::None => Authorization::None,
            Auth::Basic { username, password } => {
                use base64::Engine;
                let token = base64::engine::general_purpose::STANDARD
                    .encode(format!("{username}:{password}"));
                let mut value = HeaderValue::try_from(format!("Basic {token}"))
                    .map_err(|e| ClientError(format!("basic credentials: {e}")))?;
                value.set_sensitive(true);
                Authorization::Basic(value)
            }
            Auth::SigV4 { service, region } => {
                let aws = aws_config::from_env()
                    .region(aws_config::Region::new(region.clone()))
                    .load()
                    .await;
                let credentials = aws.credentials_provider().ok_or_else(|| {
                    ClientError("sigv4: no AWS credentials provider found".into())
                })?;
                Authorization::SigV4(Signer {
                    credentials,
                    service: service.clone(),
                    region: region.clone(),
                })
            }
        };
        // Built whatever the scheme, so that a local start costs what a deployed one does.
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let mut tls = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| ClientError(format!("TLS: {e}")))?
            .with_root_certificates(root_store()?)
            .with_no_client_auth();
        tls.alpn_protocols = vec![b"http/1.1".to_vec()];
        let http = reqwest::Client::builder()
            .tls_backend_preconfigured(tls)
            .timeout(config.request_timeout)
            .user_agent(concat!("stream-indexer/", env!("CARGO_PKG_VERSION")))
            // A redirected POST would come back a GET: a redirect is answered as the status it
            // is, and never carries the credentials elsewhere.
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|e| ClientError(error_chain(&e)))?;
        let mut base = config.url.clone();
        if !base.path().ends_with('/') {
            base.set_path(&format!("{}/", base.path()));
        }
        Ok(OpenSearch {
            http,
            base: Arc::new(base),
            bulk_urls: Arc::default(),
            auth: Arc::new(auth),
        })
    }

    /// `path` (with any query string) joined to the cluster's URL, its query encoded as SigV4's
    /// canonical request has it.
    fn url(&self, path: &str) -> Result<Url, SendError> {
        let mut url = self
            .base
            .join(path.trim_start_matches('/'))
            .map_err(|e| SendError::Path(path.to_string(), e))?;
        sign_ready_query(&mut url);
        Ok(url)
    }

    /// `index`'s `_bulk` URL, with the response filter.
    fn bulk_url(&self, index: &str) -> Result<Url, SendError> {
        let mut known = self
            .bulk_urls
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some((_, url)) = known.iter().find(|(name, _)| **name == *index) {
            return Ok(url.clone());
        }
        let url = self.url(&format!("{index}/_bulk?{BULK_FILTER}"))?;
        if known.len() < BULK_URLS {
            known.push((index.into(), url.clone()));
        }
        Ok(url)
    }

    /// Sends one request to `url`.
    async fn send(
        &self,
        method: Method,
        url: Url,
        content_type: &'static str,
        identity_encoding: bool,
        body: Option<Bytes>,
        timeout: Duration,
    ) -> Result<reqwest::Response, SendError> {
        let mut request = reqwest::Request::new(method.http(), url);
        *request.timeout_mut() = Some(timeout);
        let headers = request.headers_mut();
        headers.insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
        headers.insert(ACCEPT, HeaderValue::from_static("application/json"));
        if identity_encoding {
            headers.insert(ACCEPT_ENCODING, HeaderValue::from_static("identity"));
        }
        if let Some(body) = body {
            *request.body_mut() = Some(body.into());
        }
        match &*self.auth {
            Authorization::None => {}
            Authorization::Basic(value) => {
                request.headers_mut().insert(AUTHORIZATION, value.clone());
            }
            Authorization::SigV4(signer) => signer.sign(&mut request).await?,
        }
        Ok(self.http.execute(request).await?)
    }

    /// Sends one `_bulk` body to `index`, waiting at most `timeout`.
    pub async fn bulk(
        &self,
        index: &str,
        body: Bytes,
        actions: &[Action],
        timeout: Duration,
    ) -> BulkReply {
        // Said outright, whatever a proxy or client default would ask: OpenSearch compresses
        // when the request accepts gzip (Amazon OpenSearch Service does by default). The
        // response is read once for its statuses: compressing it costs the cluster and this
        // function CPU to save about 16 KB per 100 items on a link where bytes are cheap.
        let sent = match self.bulk_url(index) {
            Ok(url) => {
                self.send(
                    Method::Post,
                    url,
                    "application/x-ndjson",
                    true,
                    Some(body),
                    timeout,
                )
                .await
            }
            Err(e) => Err(e),
        };
        let response = match sent {
            Ok(r) => r,
            Err(e) => {
                return BulkReply::Failed {
                    reason: format!("bulk request failed: {}", error_chain(&e)),
                    failure: RequestFailure::Connection,
                };
            }
        };
        let status = response.status().as_u16();
        let bytes = match response.bytes().await {
            Ok(b) => b,
            Err(e) => {
                return BulkReply::Failed {
                    reason: format!("bulk response lost: {}", error_chain(&e)),
                    failure: RequestFailure::Connection,
                };
            }
        };
        match status {
            200 => BulkReply::Items(bulk::outcomes(&bytes, actions)),
            413 => BulkReply::TooLarge,
            429 => BulkReply::Failed {
                reason: format!("bulk request answered 429: {}", snippet(&bytes)),
                failure: RequestFailure::Throttled,
            },
            _ => BulkReply::Failed {
                reason: format!("bulk request answered {status}: {}", snippet(&bytes)),
                failure: RequestFailure::Status(status),
            },
        }
    }

    /// Any JSON request; returns the status and body, or an error for transport failures and
    /// for statuses other than 2xx (and 404 when `allow_404`).
    pub async fn request(
        &self,
        method: Method,
        path: &str,
        body: Option<Vec<u8>>,
        timeout: Duration,
    ) -> Result<(u16, Bytes), RequestError> {
        let fail = |status, reason: String| RequestError {
            error_type: None,
            method: format!("{method:?}").to_uppercase(),
            path: path.to_string(),
            status,
            reason,
        };
        let url = self.url(path).map_err(|e| fail(None, error_chain(&e)))?;
        let response = self
            .send(
                method,
                url,
                "application/json",
                false,
                body.map(Bytes::from),
                timeout,
            )
            .await
            .map_err(|e| fail(None, error_chain(&e)))?;
        let status = response.status().as_u16();
        let bytes = response
            .bytes()
            .await
            .map_err(|e| fail(Some(status), error_chain(&e)))?;
        if (200..300).contains(&status) {
            Ok((status, bytes))
        } else {
            #[derive(serde::Deserialize)]
            struct ErrorBody {
                error: ErrorField,
            }
            #[derive(serde::Deserialize)]
            struct ErrorField {
                #[serde(rename = "type")]
                kind: String,
            }
            let error_type = serde_json::from_slice::<ErrorBody>(&bytes)
                .ok()
                .map(|b| b.error.kind);
            Err(RequestError {
                error_type,
                ..fail(Some(status), format!("{status}: {}", snippet(&bytes)))
            })
        }
    }
}

/// What SigV4 leaves unencoded in a query: letters, digits and `-._~` (RFC 3986's unreserved).
const QUERY_VALUE: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

/// Rewrites `url`'s query the way the signer reads it (each name and value decoded, then every
/// byte but the unreserved ones encoded), keeping the order. Amazon's endpoints re-encode a query
/// before they check its signature, so a raw `*` or `,` is accepted there; a proxy or a signer
/// that takes the query as received is not, and sees exactly what was signed only this way.
fn sign_ready_query(url: &mut Url) {
    let Some(query) = url.query().filter(|q| !q.is_empty()) else {
        return;
    };
    let mut encoded = String::with_capacity(query.len() + 16);
    for (name, value) in url::form_urlencoded::parse(query.as_bytes()) {
        if !encoded.is_empty() {
            encoded.push('&');
        }
        encoded.extend(utf8_percent_encode(&name, QUERY_VALUE));
        encoded.push('=');
        encoded.extend(utf8_percent_encode(&value, QUERY_VALUE));
    }
    url.set_query(Some(&encoded));
}

/// The start of a response body, for error messages (never item contents: bulk responses
/// carry ids and error reasons only).
fn snippet(bytes: &[u8]) -> String {
    let text = String::from_utf8_lossy(&bytes[..bytes.len().min(300)]);
    text.replace('\n', " ")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Each index gets its own `_bulk` URL, the same from the list as when first joined, and
    /// indexes past the list's end still get theirs.
    #[tokio::test]
    async fn each_index_gets_its_own_bulk_url() {
        let config = Config::from_lookup(|var| match var {
            "OPENSEARCH_URL" => Some("https://search.example:9200/prefix".into()),
            "OPENSEARCH_INDEX" => Some("items".into()),
            _ => None,
        })
        .unwrap();
        let os = OpenSearch::connect(&config).await.unwrap();
        let names: Vec<String> = (0..BULK_URLS + 3).map(|i| format!("index-{i}")).collect();
        for round in 0..2 {
            for name in &names {
                assert_eq!(
                    os.bulk_url(name).unwrap().as_str(),
                    format!("https://search.example:9200/prefix/{name}/_bulk?{BULK_FILTER}"),
                    "round {round}"
                );
            }
        }
        assert_eq!(os.bulk_urls.lock().unwrap().len(), BULK_URLS);
    }
}
