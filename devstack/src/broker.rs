//! The embedded Kafka-protocol broker (crate `noida-db`, feature `kafka`).

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

/// Start a broker on `addr` (use port 0 for any free port). With `data_dir`, the broker loads
/// its last snapshot from there and saves one every few seconds, so `scripts/dev` keeps topics
/// across restarts. Returns the bound address. The broker lives until the process exits.
pub fn spawn_broker(addr: &str, data_dir: Option<&Path>) -> anyhow::Result<SocketAddr> {
    match data_dir {
        None => Ok(noida::kafka::spawn(addr)?),
        Some(dir) => {
            std::fs::create_dir_all(dir)?;
            let (bound, save) = noida::kafka::spawn_persistent_for_test(addr, dir)?;
            std::thread::spawn(move || loop {
                std::thread::sleep(Duration::from_secs(5));
                save();
            });
            Ok(bound)
        }
    }
}
