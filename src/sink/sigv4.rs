//! SigV4 signing for Amazon OpenSearch Service and OpenSearch Serverless, with `aws-sigv4`.
//!
//! Signs the request as built, just before it is sent: method, URL (path and query), every
//! header then present, and the body's SHA-256, which also goes out as `x-amz-content-sha256`
//! (OpenSearch Serverless requires it). Credentials come from the provider on each request, so
//! rotated ones (Lambda's, an assumed role's) are picked up as the provider refreshes them.

use std::time::SystemTime;

use aws_credential_types::provider::{ProvideCredentials, SharedCredentialsProvider};
use aws_sigv4::http_request::{
    PayloadChecksumKind, SignableBody, SignableRequest, SigningSettings, sign,
};
use aws_sigv4::sign::v4;
use aws_smithy_runtime_api::client::identity::Identity;
use reqwest::header::HeaderValue;

/// Signs requests for one service (`es` or `aoss`) in one region.
#[derive(Clone, Debug)]
pub struct Signer {
    pub credentials: SharedCredentialsProvider,
    pub service: String,
    pub region: String,
}

/// Why a request could not be signed.
#[derive(Debug, thiserror::Error)]
pub enum SignError {
    #[error("no AWS credentials: {0}")]
    Credentials(#[source] aws_credential_types::provider::error::CredentialsError),
    #[error("cannot sign the request: {0}")]
    Sign(String),
}

impl Signer {
    pub async fn sign(&self, request: &mut reqwest::Request) -> Result<(), SignError> {
        let credentials = self
            .credentials
            .provide_credentials()
            .await
            .map_err(SignError::Credentials)?;
        let expiry = credentials.expiry();
        let identity = Identity::new(credentials, expiry);
        let mut settings = SigningSettings::default();
        settings.payload_checksum_kind = PayloadChecksumKind::XAmzSha256;
        let params = v4::SigningParams::builder()
            .identity(&identity)
            .name(&self.service)
            .region(&self.region)
            .time(SystemTime::now())
            .settings(settings)
            .build()
            .map_err(|e| SignError::Sign(e.to_string()))?
            .into();
        let mut headers = Vec::with_capacity(request.headers().len());
        for (name, value) in request.headers() {
            let value = value
                .to_str()
                .map_err(|_| SignError::Sign(format!("header {name} is not text")))?;
            headers.push((name.as_str(), value));
        }
        let body = match request.body() {
            Some(b) => SignableBody::Bytes(
                b.as_bytes()
                    .ok_or_else(|| SignError::Sign("a streamed body cannot be hashed".into()))?,
            ),
            None => SignableBody::Bytes(&[]),
        };
        let signable = SignableRequest::new(
            request.method().as_str(),
            request.url().as_str(),
            headers.into_iter(),
            body,
        )
        .map_err(|e| SignError::Sign(e.to_string()))?;
        let (instructions, _) = sign(signable, &params)
            .map_err(|e| SignError::Sign(e.to_string()))?
            .into_parts();
        let (new_headers, query) = instructions.into_parts();
        for header in new_headers {
            let mut value = HeaderValue::from_str(header.value())
                .map_err(|_| SignError::Sign(format!("header {} is not text", header.name())))?;
            value.set_sensitive(header.sensitive());
            request.headers_mut().insert(header.name(), value);
        }
        // Signing in headers (the default) adds no query parameters; presigning would.
        for (name, value) in query {
            request
                .url_mut()
                .query_pairs_mut()
                .append_pair(name, &value);
        }
        Ok(())
    }
}
