//! AWS SDK configuration shared by the runner, the backfill, verify, the demo and the export
//! loader.

use aws_config::{BehaviorVersion, Region, SdkConfig};

/// The SDK's standard endpoint variables for the services the tools call. The SDK itself sends
/// requests where they point; they are read here only to tell that a local server is meant.
const ENDPOINT_VARIABLES: [&str; 4] = [
    "AWS_ENDPOINT_URL",
    "AWS_ENDPOINT_URL_DYNAMODB",
    "AWS_ENDPOINT_URL_DYNAMODB_STREAMS",
    "AWS_ENDPOINT_URL_S3",
];

/// Loads the default AWS configuration. With `endpoint` (`--endpoint-url`, a local DynamoDB such
/// as moto or DynamoDB Local) requests go there. The SDK's standard variables
/// (`AWS_ENDPOINT_URL`, `AWS_ENDPOINT_URL_DYNAMODB`, ...) are honoured as the SDK honours them.
/// When a local server is meant (an `endpoint`, or a standard variable naming a loopback
/// address) and no credentials or region are configured, placeholders are used, which local
/// servers accept.
pub async fn sdk_config(endpoint: Option<&str>) -> SdkConfig {
    let mut loader = aws_config::defaults(BehaviorVersion::latest());
    if let Some(url) = endpoint {
        loader = loader.endpoint_url(url);
    }
    let (credentials, region) = placeholders(endpoint, |k| std::env::var(k).ok());
    if credentials {
        loader = loader.credentials_provider(aws_sdk_dynamodb::config::Credentials::new(
            "local", "local", None, None, "local",
        ));
    }
    if region {
        loader = loader.region(Region::new("us-east-1"));
    }
    loader.load().await
}

/// An S3 client (reading exports). Local servers (moto, MinIO) answer path-style requests
/// (`http://host/bucket/key`), not virtual-hosted ones (`http://bucket.host/key`).
pub fn s3_client(sdk: &SdkConfig, endpoint: Option<&str>) -> aws_sdk_s3::Client {
    let local = is_local(endpoint, |k| std::env::var(k).ok());
    let config = aws_sdk_s3::config::Builder::from(sdk)
        .force_path_style(local)
        .build();
    aws_sdk_s3::Client::from_conf(config)
}

/// Whether a local server is meant: `--endpoint-url`, or a standard variable with a loopback
/// address. One naming a real endpoint (a VPC endpoint, say) is not local.
fn is_local(endpoint: Option<&str>, env: impl Fn(&str) -> Option<String>) -> bool {
    let ignored =
        env("AWS_IGNORE_CONFIGURED_ENDPOINT_URLS").is_some_and(|v| v.eq_ignore_ascii_case("true"));
    endpoint.is_some()
        || (!ignored
            && ENDPOINT_VARIABLES.iter().any(|k| {
                env(k)
                    .and_then(|v| url::Url::parse(&v).ok())
                    .is_some_and(|u| crate::config::is_loopback(&u))
            }))
}

/// Whether placeholder (credentials, region) are wanted, from `--endpoint-url` and the
/// environment: for a local server, unless configured. A real endpoint must get the real
/// credentials chain.
fn placeholders(endpoint: Option<&str>, env: impl Fn(&str) -> Option<String>) -> (bool, bool) {
    let set = |k: &str| env(k).is_some_and(|v| !v.is_empty());
    let local = is_local(endpoint, &env);
    (
        local && !set("AWS_ACCESS_KEY_ID") && !set("AWS_PROFILE"),
        local && !set("AWS_REGION") && !set("AWS_DEFAULT_REGION"),
    )
}

#[cfg(test)]
mod tests {
    use super::placeholders;

    fn with(vars: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let vars: Vec<(String, String)> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |k| vars.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone())
    }

    #[test]
    fn a_loopback_endpoint_variable_means_a_local_server() {
        let local = "http://127.0.0.1:8000";
        assert_eq!(placeholders(None, with(&[])), (false, false));
        assert_eq!(placeholders(Some(local), with(&[])), (true, true));
        for var in [
            "AWS_ENDPOINT_URL",
            "AWS_ENDPOINT_URL_DYNAMODB",
            "AWS_ENDPOINT_URL_S3",
        ] {
            assert_eq!(
                placeholders(None, with(&[(var, local)])),
                (true, true),
                "{var}"
            );
            assert_eq!(
                placeholders(None, with(&[(var, "http://localhost:4566")])),
                (true, true)
            );
        }
        // A real endpoint keeps the real chain.
        let vpc = "https://vpce-1.dynamodb.eu-west-1.vpce.amazonaws.com";
        assert_eq!(
            placeholders(None, with(&[("AWS_ENDPOINT_URL", vpc)])),
            (false, false)
        );
        // Configured credentials and region are kept; an ignored variable means nothing.
        assert_eq!(
            placeholders(
                None,
                with(&[
                    ("AWS_ENDPOINT_URL", local),
                    ("AWS_PROFILE", "dev"),
                    ("AWS_REGION", "eu-west-1")
                ])
            ),
            (false, false)
        );
        assert_eq!(
            placeholders(
                None,
                with(&[
                    ("AWS_ENDPOINT_URL", local),
                    ("AWS_IGNORE_CONFIGURED_ENDPOINT_URLS", "true")
                ])
            ),
            (false, false)
        );
    }
}
