use clap::Parser;
use status_api::auth::TokenSigner;
use status_api::config::{Cli, Command};
use tokio_util::sync::CancellationToken;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    if let Some(Command::Token { user, ttl_secs }) = &cli.command {
        println!(
            "{}",
            TokenSigner::new(cli.config.token_secret.as_bytes())?.mint(user, *ttl_secs)
        );
        return Ok(());
    }
    if let Some(Command::HashPassword) = &cli.command {
        let mut password = String::new();
        std::io::stdin().read_line(&mut password)?;
        let password = password.trim_end_matches(['\r', '\n']);
        anyhow::ensure!(!password.is_empty(), "no password on stdin");
        println!("{}", status_api::accounts::hash_password(password));
        return Ok(());
    }
    service_kit::service::init_logging();
    let metrics = status_api::server::install_metrics()?;
    let shutdown = CancellationToken::new();
    service_kit::service::cancel_on_signal(shutdown.clone());
    status_api::server::run(cli.config, metrics, shutdown).await
}
