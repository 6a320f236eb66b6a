//! `devstack`: run photo-pipeline's outside services locally (`devstack up`), and upload
//! photos to it (`devstack upload`). Defaults match the processor's and status-api's.

use aws_sdk_s3::config::{Credentials, Region};
use clap::{Parser, Subcommand};
use devstack::{spawn_broker, B2Emulation, HookSink, S3Config, S3Server};
use std::path::PathBuf;

#[derive(Parser)]
#[command(
    name = "devstack",
    about = "Local Kafka broker, S3 server with B2 webhook emulation, and DB-hook sink"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(clap::Args, Clone)]
struct S3Args {
    #[arg(long, env = "S3_ACCESS_KEY", default_value = "local")]
    access_key: String,
    #[arg(long, env = "S3_SECRET_KEY", default_value = "localsecret")]
    secret_key: String,
    #[arg(long, env = "S3_BUCKET", default_value = "photos")]
    bucket: String,
}

#[derive(Subcommand)]
enum Command {
    /// Start the broker, the S3 server (with B2 notifications) and the hook sink; run until Ctrl-C.
    Up {
        /// Where the embedded broker listens; `none` for no broker (Apache Kafka runs
        /// instead: `DEV_KAFKA=apache scripts/dev`).
        #[arg(long, env = "KAFKA_ADDR", default_value = "127.0.0.1:9092")]
        kafka_addr: String,
        #[arg(long, env = "S3_ADDR", default_value = "127.0.0.1:9000")]
        s3_addr: String,
        #[arg(long, env = "HOOK_ADDR", default_value = "127.0.0.1:8082")]
        hook_addr: String,
        /// Keep the broker's topics across restarts (a JSON snapshot every 5 s: fine for
        /// development, too slow for millions of records).
        #[arg(long, env = "DEV_PERSIST_KAFKA", default_value_t = true, action = clap::ArgAction::Set)]
        persist_kafka: bool,
        /// Where objects and the broker's snapshot are kept.
        #[arg(long, env = "DEV_DATA_DIR", default_value = ".dev")]
        data_dir: PathBuf,
        /// The processor's webhook URL that B2 notifications are sent to.
        #[arg(
            long,
            env = "B2_WEBHOOK_URL",
            default_value = "http://127.0.0.1:8081/v1/b2/events"
        )]
        webhook_url: String,
        #[arg(
            long,
            env = "B2_WEBHOOK_SECRET",
            default_value = "local-webhook-secret"
        )]
        webhook_secret: String,
        /// The secret the hook sink checks signatures with (the processor's `DB_HOOK_SECRET`).
        #[arg(
            long,
            env = "DB_HOOK_SECRET",
            default_value = devstack::hook_sink::LOCAL_HOOK_SECRET,
            hide_env_values = true
        )]
        hook_secret: String,
        /// Only objects under this prefix are notified (B2's objectNamePrefix).
        #[arg(long, env = "B2_NOTIFY_PREFIX", default_value = "users/")]
        notify_prefix: String,
        #[command(flatten)]
        s3: S3Args,
    },
    /// Upload files as a user's photos (`users/<user>/photos/<file name>`).
    Upload {
        #[arg(long)]
        user: String,
        #[arg(long, env = "S3_ENDPOINT", default_value = "http://127.0.0.1:9000")]
        endpoint: String,
        /// Add this to each object name (e.g. `-2`) to upload the same file again as a new photo.
        #[arg(long, default_value = "")]
        suffix: String,
        #[command(flatten)]
        s3: S3Args,
        files: Vec<PathBuf>,
    },
    /// Write the hostile-input corpus (bad, truncated, bomb and odd images; hostile webhook
    /// bodies) to DIR, with a manifest of the outcome each must have (see `devstack::hostile`).
    HostileCorpus {
        dir: PathBuf,
        /// The shared test photos (`shared/corpus`); its CMYK/YCCK JPEG is a base case.
        #[arg(long, default_value = "../shared/corpus")]
        corpus: PathBuf,
    },
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    match Cli::parse().command {
        Command::Up {
            kafka_addr,
            s3_addr,
            hook_addr,
            persist_kafka,
            data_dir,
            webhook_url,
            webhook_secret,
            hook_secret,
            notify_prefix,
            s3,
        } => {
            let kafka_dir = data_dir.join("kafka");
            let kafka = if kafka_addr == "none" {
                "none (an outside broker)".to_string()
            } else {
                spawn_broker(&kafka_addr, persist_kafka.then_some(kafka_dir.as_path()))?.to_string()
            };
            let notify = B2Emulation::new(&webhook_url, &webhook_secret, &notify_prefix);
            let server = S3Server::spawn(S3Config {
                addr: s3_addr,
                root: data_dir.join("s3"),
                access_key: s3.access_key.clone(),
                secret_key: s3.secret_key.clone(),
                buckets: vec![s3.bucket.clone()],
                notify: Some(notify),
            })
            .await?;
            let hook = HookSink::with_secret(&hook_secret)
                .spawn(&hook_addr)
                .await?;
            println!("devstack up");
            println!("  kafka           {kafka}");
            println!(
                "  s3              http://{}  bucket={} access_key={} secret_key={}",
                server.addr, s3.bucket, s3.access_key, s3.secret_key
            );
            println!("  b2 webhook  ->  {webhook_url}  (prefix {notify_prefix:?}, signing secret {webhook_secret})");
            println!("  db hook sink    http://{hook}/hook  (calls: GET http://{hook}/hook/calls)");
            tokio::signal::ctrl_c().await?;
            Ok(())
        }
        Command::Upload {
            user,
            endpoint,
            suffix,
            s3,
            files,
        } => {
            let conf = aws_sdk_s3::Config::builder()
                .behavior_version_latest()
                .endpoint_url(endpoint)
                .region(Region::new("us-east-1"))
                .credentials_provider(Credentials::new(
                    s3.access_key,
                    s3.secret_key,
                    None,
                    None,
                    "devstack",
                ))
                .force_path_style(true)
                .build();
            let client = aws_sdk_s3::Client::from_conf(conf);
            for file in files {
                let name = file
                    .file_name()
                    .and_then(|n| n.to_str())
                    .ok_or_else(|| anyhow::anyhow!("bad file name {file:?}"))?;
                let key = format!("users/{user}/photos/{name}{suffix}");
                let body = aws_sdk_s3::primitives::ByteStream::from_path(&file).await?;
                client
                    .put_object()
                    .bucket(&s3.bucket)
                    .key(&key)
                    .body(body)
                    .send()
                    .await?;
                println!("uploaded s3://{}/{key}", s3.bucket);
            }
            Ok(())
        }
        Command::HostileCorpus { dir, corpus } => {
            let n = devstack::hostile::write_corpus(&dir, &corpus)?;
            println!(
                "wrote {n} hostile files to {} (see manifest.tsv)",
                dir.display()
            );
            Ok(())
        }
    }
}
