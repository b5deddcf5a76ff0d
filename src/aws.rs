//! AWS SDK configuration shared by the runner, the backfill and the demo.

use aws_config::{BehaviorVersion, Region, SdkConfig};

/// Loads the default AWS configuration. With `endpoint` (a local DynamoDB such as moto or
/// DynamoDB Local) requests go there, and when no credentials are configured, placeholder ones
/// are used, which local servers accept.
pub async fn sdk_config(endpoint: Option<&str>) -> SdkConfig {
    let mut loader = aws_config::defaults(BehaviorVersion::latest());
    if let Some(url) = endpoint {
        loader = loader.endpoint_url(url);
        if std::env::var_os("AWS_ACCESS_KEY_ID").is_none()
            && std::env::var_os("AWS_PROFILE").is_none()
        {
            loader = loader.credentials_provider(aws_sdk_dynamodb::config::Credentials::new(
                "local", "local", None, None, "local",
            ));
        }
        if std::env::var_os("AWS_REGION").is_none()
            && std::env::var_os("AWS_DEFAULT_REGION").is_none()
        {
            loader = loader.region(Region::new("us-east-1"));
        }
    }
    loader.load().await
}
