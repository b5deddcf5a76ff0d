//! The one place that talks HTTP to OpenSearch.

use std::time::Duration;

use bytes::Bytes;
use opensearch::auth::Credentials;
pub use opensearch::http::Method;
use opensearch::http::headers::{ACCEPT_ENCODING, CONTENT_TYPE, HeaderMap, HeaderValue};
use opensearch::http::transport::{SingleNodeConnectionPool, TransportBuilder};

use crate::config::{Auth, Config};
use crate::pipeline::bulk::{self, ItemOutcome};
use crate::pipeline::change::Action;
use crate::telemetry::error_chain;

/// What a `_bulk` response keeps (OpenSearch's common `filter_path` parameter): each item's
/// status and error, which are all [`bulk::outcomes`] reads, and a refused request's own error
/// and status, for its reason. The rest (`_index`, `_id`, `_version`, `result`, `_shards`,
/// `_seq_no`, `_primary_term` per item) was about 150 of the 180 bytes an item took, read and
/// parsed only to be skipped.
const BULK_FILTER: &str = "items.*.status,items.*.error,error,status";

/// A client for one cluster, built once per process and shared by every invocation.
#[derive(Clone)]
pub struct OpenSearch {
    client: opensearch::OpenSearch,
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
        let pool = SingleNodeConnectionPool::new(config.url.clone());
        let mut builder = TransportBuilder::new(pool).timeout(config.request_timeout);
        match &config.auth {
            Auth::None => {}
            Auth::Basic { username, password } => {
                builder = builder.auth(Credentials::Basic(username.clone(), password.clone()));
            }
            Auth::SigV4 { service, region } => {
                let aws = aws_config::from_env()
                    .region(aws_config::Region::new(region.clone()))
                    .load()
                    .await;
                let provider = aws.credentials_provider().ok_or_else(|| {
                    ClientError("sigv4: no AWS credentials provider found".into())
                })?;
                builder = builder
                    .auth(Credentials::AwsSigV4(
                        provider,
                        aws_config::Region::new(region.clone()),
                    ))
                    .service_name(service);
            }
        }
        let transport = builder.build().map_err(|e| ClientError(e.to_string()))?;
        Ok(OpenSearch {
            client: opensearch::OpenSearch::new(transport),
        })
    }

    /// Sends one `_bulk` body to `index`, waiting at most `timeout`.
    pub async fn bulk(
        &self,
        index: &str,
        body: Bytes,
        actions: &[Action],
        timeout: Duration,
    ) -> BulkReply {
        let mut headers = HeaderMap::new();
        headers.insert(
            CONTENT_TYPE,
            HeaderValue::from_static("application/x-ndjson"),
        );
        // The HTTP client accepts gzip unless told otherwise, and OpenSearch then compresses
        // (Amazon OpenSearch Service does by default). The response is read once for its
        // statuses: compressing it costs the cluster and this function CPU to save about 16 KB
        // per 100 items on a link where bytes are cheap.
        headers.insert(ACCEPT_ENCODING, HeaderValue::from_static("identity"));
        let path = format!("/{index}/_bulk");
        let sent = self
            .client
            .send(
                Method::Post,
                &path,
                headers,
                Some(&[("filter_path", BULK_FILTER)]),
                Some(body),
                Some(timeout),
            )
            .await;
        let response = match sent {
            Ok(r) => r,
            Err(e) => {
                return BulkReply::Failed {
                    reason: format!("bulk request failed: {}", error_chain(&e)),
                    failure: RequestFailure::Connection,
                };
            }
        };
        let status = response.status_code().as_u16();
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
        let mut headers = HeaderMap::new();
        headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        let fail = |status, reason: String| RequestError {
            error_type: None,
            method: format!("{method:?}").to_uppercase(),
            path: path.to_string(),
            status,
            reason,
        };
        let response = self
            .client
            .send(method, path, headers, None::<&()>, body, Some(timeout))
            .await
            .map_err(|e| fail(None, error_chain(&e)))?;
        let status = response.status_code().as_u16();
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

/// The start of a response body, for error messages (never item contents: bulk responses
/// carry ids and error reasons only).
fn snippet(bytes: &[u8]) -> String {
    let text = String::from_utf8_lossy(&bytes[..bytes.len().min(300)]);
    text.replace('\n', " ")
}
