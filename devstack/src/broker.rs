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

/// A broker that can be stopped and started again on the same address with its data (topics,
/// records, committed offsets, idempotent-producer state), for outage tests: a broker restart
/// as clients see it, inside the test process.
pub struct RestartableBroker {
    addr: SocketAddr,
    snapshot: std::path::PathBuf,
    running: Option<(noida::lifecycle::Lifecycle, noida::kafka::engine::Engine)>,
}

impl RestartableBroker {
    /// Start on `addr` (port 0: any free port), keeping the snapshot in `data_dir`.
    pub fn start(addr: &str, data_dir: &Path) -> anyhow::Result<Self> {
        std::fs::create_dir_all(data_dir)?;
        let mut broker = Self {
            addr: addr.parse()?,
            snapshot: data_dir.join("kafka.json"),
            running: None,
        };
        broker.serve(addr)?;
        Ok(broker)
    }

    /// Where clients connect; the same after every restart.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Whether the broker is serving now.
    pub fn is_running(&self) -> bool {
        self.running.is_some()
    }

    /// Stop: close the port and every client connection, then write the snapshot (the
    /// connections are closed first, so every acknowledged record is in it).
    pub fn stop(&mut self) -> anyhow::Result<()> {
        if let Some((life, engine)) = self.running.take() {
            life.stop();
            let bytes = serde_json::to_vec(&engine.snapshot())?;
            noida::persistence::write_snapshot_atomically(&self.snapshot, &bytes)?;
        }
        Ok(())
    }

    /// Start again on the same address from the snapshot written by [`Self::stop`].
    pub fn restart(&mut self) -> anyhow::Result<()> {
        self.stop()?;
        let addr = self.addr.to_string();
        // The old listener's port may take a moment to be released.
        let mut tries = 0;
        loop {
            match self.serve(&addr) {
                Ok(()) => return Ok(()),
                Err(e) if tries < 50 => {
                    tries += 1;
                    tracing::debug!(%e, "broker port not free yet");
                    std::thread::sleep(Duration::from_millis(100));
                }
                Err(e) => return Err(e),
            }
        }
    }

    fn serve(&mut self, addr: &str) -> anyhow::Result<()> {
        use noida::kafka::engine::{Engine, Snapshot};
        let listener = std::net::TcpListener::bind(addr)?;
        let bound = listener.local_addr()?;
        let (host, port) = (bound.ip().to_string(), bound.port() as i32);
        let engine = if self.snapshot.exists() {
            let snapshot: Snapshot = serde_json::from_slice(&std::fs::read(&self.snapshot)?)?;
            Engine::new_persistent(snapshot, host, port)
        } else {
            Engine::new(host, port)
        };
        engine.spawn_log_cleaner();
        let life = noida::lifecycle::Lifecycle::default();
        let incoming = life.incoming(listener);
        let served = engine.clone();
        std::thread::spawn(move || {
            for (stream, conn) in incoming {
                let engine = served.clone();
                std::thread::spawn(move || {
                    let _conn = conn;
                    noida::kafka::connection::handle_connection(stream, engine);
                });
            }
        });
        self.addr = bound;
        self.running = Some((life, engine));
        Ok(())
    }
}

impl Drop for RestartableBroker {
    fn drop(&mut self) {
        if let Some((life, _)) = self.running.take() {
            life.stop();
        }
    }
}
