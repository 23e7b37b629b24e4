//! Shared AWS SDK setup: region and credentials from the standard chain, and an endpoint override
//! (pixbox's `endpoint_url`, else `AWS_ENDPOINT_URL`) for LocalStack, moto or MinIO.

use aws_config::BehaviorVersion;
use aws_smithy_http_client::tls;

/// Loads the SDK configuration. `endpoint_url` wins over `AWS_ENDPOINT_URL`; without either the
/// SDK talks to AWS itself. A region is required by the SDK; `us-east-1` is used when none is set.
pub async fn sdk_config(endpoint_url: Option<&str>) -> aws_config::SdkConfig {
    // rustls on ring: the SDK's default client would bring aws-lc, a long C build (Cargo.toml).
    let https = aws_smithy_http_client::Builder::new()
        .tls_provider(tls::Provider::Rustls(tls::rustls_provider::CryptoMode::Ring))
        .build_https();
    let mut loader = aws_config::defaults(BehaviorVersion::latest()).http_client(https);
    if let Some(url) = endpoint_url {
        loader = loader.endpoint_url(url);
    }
    let config = loader.load().await;
    if config.region().is_some() {
        config
    } else {
        config.into_builder().region(aws_config::Region::new("us-east-1")).build()
    }
}

/// The display form of an SDK error with its source chain (the SDK's top-level message alone is
/// often just "service error").
pub fn describe(err: &(dyn std::error::Error + 'static)) -> String {
    let mut out = err.to_string();
    let mut source = err.source();
    while let Some(e) = source {
        out.push_str(": ");
        out.push_str(&e.to_string());
        source = e.source();
    }
    out
}
