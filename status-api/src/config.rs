//! status-api configuration: one typed struct from flags and environment variables, with
//! defaults that match the local stack (`scripts/dev`).

use clap::{Parser, Subcommand};
use std::net::SocketAddr;

/// Command line.
#[derive(Debug, Parser)]
#[command(
    name = "status-api",
    version,
    about = "photo-pipeline status: per-user progress over Server-Sent Events"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,
    #[command(flatten)]
    pub config: Config,
}

/// Subcommands; without one, the server runs.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the server (the default).
    Serve,
    /// Print a token for a user (signed with STATUS_TOKEN_SECRET), alone on stdout.
    Token {
        #[arg(long)]
        user: String,
        /// Validity in seconds.
        #[arg(long, default_value_t = 86_400)]
        ttl_secs: u64,
    },
    /// Print the argon2 hash of a console password (read from stdin, one line), for a
    /// `user:hash` line of STATUS_ACCOUNTS_FILE.
    HashPassword,
}

/// Everything the server reads at start-up.
#[derive(Debug, Clone, clap::Args)]
pub struct Config {
    /// HTTP listen address: SSE, status, console, /metrics, /healthz, /readyz.
    #[arg(long, env = "STATUS_HTTP_ADDR", default_value = "127.0.0.1:8080")]
    pub http_addr: SocketAddr,

    #[command(flatten)]
    pub kafka: service_kit::kafka::KafkaArgs,

    #[arg(long, env = "TOPIC_UPLOADED", default_value = schemas::topics::UPLOADED)]
    pub topic_uploaded: String,
    #[arg(long, env = "TOPIC_THUMBNAILED", default_value = schemas::topics::THUMBNAILED)]
    pub topic_thumbnailed: String,
    #[arg(long, env = "TOPIC_EMBEDDED", default_value = schemas::topics::EMBEDDED)]
    pub topic_embedded: String,
    /// Compacted topic of runtime settings (written by the console's Settings page).
    #[arg(long, env = "TOPIC_SETTINGS", default_value = schemas::settings::TOPIC)]
    pub topic_settings: String,
    /// Dead letters, for the Services page (operators).
    #[arg(long, env = "TOPIC_DLQ", default_value = schemas::topics::DLQ)]
    pub topic_dlq: String,
    /// Processor heartbeats, for the Services and Dashboard pages.
    #[arg(long, env = "TOPIC_HEARTBEATS", default_value = schemas::heartbeat::TOPIC)]
    pub topic_heartbeats: String,

    /// Secret that signs user tokens (HS256). Must be the same on every replica.
    #[arg(
        long,
        env = "STATUS_TOKEN_SECRET",
        default_value = "local-token-secret",
        hide_env_values = true
    )]
    pub token_secret: String,

    /// Browser origin allowed by CORS (the app's origin).
    #[arg(
        long,
        env = "STATUS_ALLOWED_ORIGIN",
        default_value = "http://127.0.0.1:8080"
    )]
    pub allowed_origin: String,

    /// Whether the deployment runs the embed stage: "done" then waits for the faces. On by
    /// default (a deployment that forgot it would show "Done" before indexing); a deployment
    /// without an embed stage sets it to false, or no batch would ever be done.
    #[arg(long, env = "STATUS_EXPECT_EMBEDDINGS", default_value_t = true, action = clap::ArgAction::Set)]
    pub expect_embeddings: bool,

    /// Most SSE updates per second per connection (changes in between are coalesced).
    #[arg(long, env = "STATUS_SSE_MAX_RATE", default_value_t = 4.0)]
    pub sse_max_rate: f64,

    /// SSE keep-alive comment interval.
    #[arg(long, env = "STATUS_SSE_KEEPALIVE_SECS", default_value_t = 15)]
    pub sse_keepalive_secs: u64,

    /// Reconnect delay the browser is told (`retry:`).
    #[arg(long, env = "STATUS_SSE_RETRY_MS", default_value_t = 2000)]
    pub sse_retry_ms: u64,

    /// A finished batch is closed when the user's next upload comes this much later.
    #[arg(long, env = "STATUS_BATCH_GAP_SECS", default_value_t = 1800)]
    pub batch_gap_secs: u64,

    /// Console accounts: a file of `user:argon2-hash` lines (`status-api hash-password`
    /// makes the hashes). Without it nobody can sign in to the console.
    #[arg(long, env = "STATUS_ACCOUNTS_FILE")]
    pub accounts_file: Option<std::path::PathBuf>,

    /// Console session length (cookie and the status token it yields).
    #[arg(long, env = "STATUS_SESSION_TTL_SECS", default_value_t = 43_200)]
    pub session_ttl_secs: u64,

    /// Mark the session cookie `Secure` (set it when the console is served over HTTPS).
    #[arg(long, env = "STATUS_COOKIE_SECURE", default_value_t = false, action = clap::ArgAction::Set)]
    pub cookie_secure: bool,

    /// Failed sign-ins allowed per account and client address per minute; more get 429.
    #[arg(long, env = "STATUS_LOGIN_MAX_FAILURES", default_value_t = 5)]
    pub login_max_failures: usize,

    /// Object store the console's browsers upload to and read thumbnails from (presigned
    /// URLs), as browsers reach it.
    #[command(flatten)]
    pub s3: service_kit::s3::S3Args,
    #[arg(long, env = "S3_BUCKET", default_value = "photos")]
    pub s3_bucket: String,

    /// Where uploads go; must match the processor's PHOTO_KEY_PATTERN.
    #[arg(
        long,
        env = "PHOTO_KEY_PATTERN",
        default_value = "users/{user_id}/photos/{file}"
    )]
    pub photo_key_pattern: String,

    /// Validity of presigned upload and thumbnail URLs.
    #[arg(long, env = "STATUS_PRESIGN_TTL_SECS", default_value_t = 900)]
    pub presign_ttl_secs: u64,

    /// Recent photos kept per user for the console's Gallery.
    #[arg(long, env = "STATUS_GALLERY_PER_USER", default_value_t = 500)]
    pub gallery_per_user: usize,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn done_waits_for_faces_unless_the_deployment_says_otherwise() {
        if std::env::var_os("STATUS_EXPECT_EMBEDDINGS").is_some() {
            return; // the environment decides; the default is not what is being read
        }
        let cli = Cli::try_parse_from(["status-api"]).unwrap();
        assert!(cli.config.expect_embeddings);
        let cli = Cli::try_parse_from(["status-api", "--expect-embeddings", "false"]).unwrap();
        assert!(!cli.config.expect_embeddings);
    }
}
