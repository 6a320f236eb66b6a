use clap::Parser;
use processor::config::Config;
use tokio_util::sync::CancellationToken;

fn main() -> anyhow::Result<()> {
    return_large_buffers_to_the_os();
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?
        .block_on(run())
}

async fn run() -> anyhow::Result<()> {
    let cfg = Config::parse();
    service_kit::service::init_logging();
    let metrics = processor::telemetry::install_metrics()?;
    let shutdown = CancellationToken::new();
    service_kit::service::cancel_on_signal(shutdown.clone());
    processor::server::run(cfg, metrics, shutdown).await
}

/// glibc serves an allocation above its mmap threshold with its own mapping, returned to the
/// system on free, but raises that threshold (up to 32 MiB) each time such a block is freed;
/// after a few photos every multi-megabyte decode buffer comes from malloc's arenas, which
/// keep the memory. A fixed 1 MiB threshold keeps decode buffers returnable. Measured with
/// `loadtest --users 5 --photos 200 --start-stack` on 2 cores: processor peak RSS 4,723 MiB
/// by default, 3,774 MiB with `MALLOC_MMAP_THRESHOLD_=1048576` and 3,936 MiB with this call;
/// processor CPU 320–345 s in all three runs. The environment variable, when set, still wins.
fn return_large_buffers_to_the_os() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    if std::env::var_os("MALLOC_MMAP_THRESHOLD_").is_none() {
        // SAFETY: mallopt only adjusts allocator parameters; called before any other thread
        // exists.
        unsafe {
            libc::mallopt(libc::M_MMAP_THRESHOLD, 1 << 20);
        }
    }
}
