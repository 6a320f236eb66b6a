use clap::Parser;
use processor::config::Config;
use tokio_util::sync::CancellationToken;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cfg = Config::parse();
    processor::telemetry::init_logging();
    let metrics = processor::telemetry::install_metrics()?;
    let shutdown = CancellationToken::new();
    processor::server::cancel_on_signal(shutdown.clone());
    processor::server::run(cfg, metrics, shutdown).await
}
