//! The embedded Kafka-protocol broker (crate `noida-db`, feature `kafka`), served through
//! [`crate::fetch_wait`] so that its Fetch long-polls as Kafka's does.

use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::time::Duration;

use noida::kafka::engine::{Engine, Snapshot};
use noida::lifecycle::Lifecycle;

/// Start a broker on `addr` (use port 0 for any free port). With `data_dir`, the broker loads
/// its last snapshot from there and saves one every few seconds, so `scripts/dev` keeps topics
/// across restarts. Returns the bound address. The broker lives until the process exits.
pub fn spawn_broker(addr: &str, data_dir: Option<&Path>) -> anyhow::Result<SocketAddr> {
    let snapshot = match data_dir {
        Some(dir) => {
            std::fs::create_dir_all(dir)?;
            Some(dir.join("kafka.json"))
        }
        None => None,
    };
    let served = Served::start(addr, snapshot.as_deref())?;
    if let Some(path) = snapshot {
        let engine = served.engine.clone();
        std::thread::spawn(move || loop {
            std::thread::sleep(Duration::from_secs(5));
            if let Err(e) = save_snapshot(&engine, &path) {
                tracing::warn!(%e, "kafka snapshot not saved");
            }
        });
    }
    let addr = served.addr;
    // Lives until the process exits.
    std::mem::forget(served);
    Ok(addr)
}

fn save_snapshot(engine: &Engine, path: &Path) -> anyhow::Result<()> {
    let bytes = serde_json::to_vec(&engine.snapshot())?;
    noida::persistence::write_snapshot_atomically(path, &bytes)?;
    Ok(())
}

/// One running broker: the engine (noida-db) on a loopback port of its own, and the clients'
/// listener in front of it, each client connection relayed by [`crate::fetch_wait::relay`].
/// The engine advertises the clients' address in its metadata, so clients never reach the
/// engine's port directly.
struct Served {
    addr: SocketAddr,
    engine: Engine,
    clients: Lifecycle,
    engine_life: Lifecycle,
}

impl Served {
    /// Serve on `addr`, from the snapshot at `snapshot` if there is one.
    fn start(addr: &str, snapshot: Option<&Path>) -> anyhow::Result<Self> {
        let listener = TcpListener::bind(addr)?;
        let bound = listener.local_addr()?;
        let (host, port) = (bound.ip().to_string(), bound.port() as i32);
        let engine = match snapshot.filter(|p| p.exists()) {
            Some(path) => {
                let snapshot: Snapshot = serde_json::from_slice(&std::fs::read(path)?)
                    .map_err(|e| anyhow::anyhow!("kafka snapshot {}: {e}", path.display()))?;
                Engine::new_persistent(snapshot, host, port)
            }
            None => Engine::new(host, port),
        };
        engine.spawn_log_cleaner();

        let inner = TcpListener::bind("127.0.0.1:0")?;
        let inner_addr = inner.local_addr()?;
        let engine_life = Lifecycle::default();
        let incoming = engine_life.incoming(inner);
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

        let clients = Lifecycle::default();
        let incoming = clients.incoming(listener);
        std::thread::spawn(move || {
            for (stream, conn) in incoming {
                std::thread::spawn(move || {
                    let _conn = conn;
                    if let Err(e) = crate::fetch_wait::relay(stream, inner_addr) {
                        tracing::debug!(%e, "kafka client connection ended");
                    }
                });
            }
        });
        Ok(Self {
            addr: bound,
            engine,
            clients,
            engine_life,
        })
    }

    /// Close the port and every client connection, then the engine's.
    fn stop(&self) {
        self.clients.stop();
        self.engine_life.stop();
    }
}

/// A broker that can be stopped and started again on the same address with its data (topics,
/// records, committed offsets, idempotent-producer state), for outage tests: a broker restart
/// as clients see it, inside the test process.
pub struct RestartableBroker {
    addr: SocketAddr,
    snapshot: PathBuf,
    running: Option<Served>,
}

impl RestartableBroker {
    /// Start on `addr` (port 0: any free port), keeping the snapshot in `data_dir`.
    pub fn start(addr: &str, data_dir: &Path) -> anyhow::Result<Self> {
        std::fs::create_dir_all(data_dir)?;
        let snapshot = data_dir.join("kafka.json");
        let running = Served::start(addr, Some(&snapshot))?;
        Ok(Self {
            addr: running.addr,
            snapshot,
            running: Some(running),
        })
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
        if let Some(served) = self.running.take() {
            served.stop();
            save_snapshot(&served.engine, &self.snapshot)?;
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
            match Served::start(&addr, Some(&self.snapshot)) {
                Ok(served) => {
                    self.running = Some(served);
                    return Ok(());
                }
                Err(e) if tries < 50 => {
                    tries += 1;
                    tracing::debug!(%e, "broker port not free yet");
                    std::thread::sleep(Duration::from_millis(100));
                }
                Err(e) => return Err(e),
            }
        }
    }
}

impl Drop for RestartableBroker {
    fn drop(&mut self) {
        if let Some(served) = self.running.take() {
            served.stop();
        }
    }
}
