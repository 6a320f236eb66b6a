//! The object store both services talk to: its settings (`S3_*`), flattened into each service's
//! config, and the client settings they share.

use aws_sdk_s3::config::{Credentials, Region};

/// An S3-compatible endpoint and its keys (Backblaze B2: `https://s3.<region>.backblazeb2.com`
/// and an application key with access to the bucket).
#[derive(Debug, Clone, clap::Args)]
pub struct S3Args {
    /// S3-compatible endpoint (Backblaze B2: https://s3.<region>.backblazeb2.com).
    #[arg(
        long = "s3-endpoint",
        env = "S3_ENDPOINT",
        default_value = "http://127.0.0.1:9000"
    )]
    pub endpoint: String,
    #[arg(long = "s3-region", env = "S3_REGION", default_value = "us-east-1")]
    pub region: String,
    #[arg(long = "s3-access-key", env = "S3_ACCESS_KEY", default_value = "local")]
    pub access_key: String,
    #[arg(
        long = "s3-secret-key",
        env = "S3_SECRET_KEY",
        default_value = "localsecret",
        hide_env_values = true
    )]
    pub secret_key: String,
}

impl S3Args {
    /// Client settings: this endpoint, region and keys, path-style addressing (B2 and local
    /// servers both need it). `client_name` names the credentials' source in the SDK's logs.
    pub fn client_config(&self, client_name: &'static str) -> aws_sdk_s3::config::Builder {
        aws_sdk_s3::Config::builder()
            .behavior_version_latest()
            .endpoint_url(&self.endpoint)
            .region(Region::new(self.region.clone()))
            .credentials_provider(Credentials::new(
                &self.access_key,
                &self.secret_key,
                None,
                None,
                client_name,
            ))
            .force_path_style(true)
    }
}
