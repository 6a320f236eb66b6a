//! `--start-stack`: the load test's own stack on free ports, started the way `scripts/dev` starts
//! it (devstack: broker, S3 server with B2 webhook emulation, DB-hook sink; the processor with
//! the ingest, thumbnail and embed stages; status-api waiting for embeddings), so a run never
//! collides with a developer's stack or another run. Everything is killed on drop.

use anyhow::{bail, Context};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The endpoints and secrets of a started stack, and its processes.
pub struct OwnStack {
    pub s3_endpoint: String,
    pub access_key: String,
    pub secret_key: String,
    pub webhook_url: String,
    pub webhook_secret: String,
    pub status_url: String,
    pub token_secret: String,
    pub brokers: String,
    /// (name, child) of devstack, processor and status-api.
    pub children: Vec<(String, Child)>,
    /// Data and logs; kept (not deleted) when `keep` is set, for a post-mortem.
    pub dir: PathBuf,
    _tmp: Option<tempfile::TempDir>,
}

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

async fn wait_ready(url: &str, what: &str, child: &mut Child, log: &Path) -> anyhow::Result<()> {
    let start = Instant::now();
    let http = reqwest::Client::new();
    loop {
        if let Ok(r) = http.get(url).send().await {
            if r.status().is_success() {
                return Ok(());
            }
        }
        if let Some(status) = child.try_wait()? {
            bail!("{what} exited ({status}) before it was ready; see {log:?}");
        }
        if start.elapsed() > Duration::from_secs(120) {
            bail!("{what} not ready at {url} after 120 s; see {log:?}");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn wait_tcp(addr: &str, what: &str, child: &mut Child, log: &Path) -> anyhow::Result<()> {
    let start = Instant::now();
    loop {
        if tokio::net::TcpStream::connect(addr).await.is_ok() {
            return Ok(());
        }
        if let Some(status) = child.try_wait()? {
            bail!("{what} exited ({status}) before it listened; see {log:?}");
        }
        if start.elapsed() > Duration::from_secs(120) {
            bail!("{what} not listening on {addr} after 120 s; see {log:?}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn spawn(bin: &Path, env: &[(&str, String)], args: &[&str], log: &Path) -> anyhow::Result<Child> {
    anyhow::ensure!(
        bin.is_file(),
        "{bin:?} not found: build the workspace first (scripts/loadtest does)"
    );
    let err = std::fs::File::create(log)?;
    let mut cmd = Command::new(bin);
    cmd.args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(err);
    cmd.env(
        "RUST_LOG",
        std::env::var("LOADTEST_STACK_LOG").unwrap_or("warn".into()),
    );
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.spawn().with_context(|| format!("starting {bin:?}"))
}

impl OwnStack {
    /// Start devstack, the processor and status-api from `bin_dir`; `processor_env` adds
    /// settings (e.g. `CPU_WORKERS`) to the processor. Data and logs go under `dir` if given,
    /// else a temporary directory.
    ///
    /// With `kafka = Some(brokers)` the stack uses that broker (e.g. Apache Kafka from
    /// `scripts/kafka up`) instead of devstack's embedded one; the topics are then this run's own.
    pub async fn start(
        bin_dir: &Path,
        dir: Option<PathBuf>,
        processor_env: &[(String, String)],
        kafka: Option<String>,
    ) -> anyhow::Result<Self> {
        let (dir, tmp) = match dir {
            Some(d) => {
                std::fs::create_dir_all(&d)?;
                (d, None)
            }
            None => {
                let t = tempfile::Builder::new()
                    .prefix("loadtest-stack")
                    .tempdir()?;
                (t.path().to_path_buf(), Some(t))
            }
        };
        let (kafka_port, s3, hook, proc_port, status_port) = (
            free_port()?,
            free_port()?,
            free_port()?,
            free_port()?,
            free_port()?,
        );
        let embedded = kafka.is_none();
        let brokers = kafka.unwrap_or_else(|| format!("127.0.0.1:{kafka_port}"));
        let webhook_url = format!("http://127.0.0.1:{proc_port}/v1/b2/events");
        let webhook_secret = "loadtest-webhook-secret".to_string();
        let token_secret = "loadtest-token-secret".to_string();
        let (access_key, secret_key) = ("local".to_string(), "localsecret".to_string());
        let mut stack = Self {
            s3_endpoint: format!("http://127.0.0.1:{s3}"),
            access_key: access_key.clone(),
            secret_key: secret_key.clone(),
            webhook_url: webhook_url.clone(),
            webhook_secret: webhook_secret.clone(),
            status_url: format!("http://127.0.0.1:{status_port}"),
            token_secret: token_secret.clone(),
            brokers: brokers.clone(),
            children: vec![],
            dir: dir.clone(),
            _tmp: tmp,
        };

        let log = dir.join("devstack.log");
        let mut devstack = spawn(
            &bin_dir.join("devstack"),
            &[
                (
                    "KAFKA_ADDR",
                    if embedded {
                        brokers.clone()
                    } else {
                        "none".into()
                    },
                ),
                ("S3_ADDR", format!("127.0.0.1:{s3}")),
                ("HOOK_ADDR", format!("127.0.0.1:{hook}")),
                ("DEV_PERSIST_KAFKA", "false".into()),
                ("DEV_DATA_DIR", dir.join("data").display().to_string()),
                ("B2_WEBHOOK_URL", webhook_url.clone()),
                ("B2_WEBHOOK_SECRET", webhook_secret.clone()),
                ("S3_ACCESS_KEY", access_key.clone()),
                ("S3_SECRET_KEY", secret_key.clone()),
            ],
            &["up"],
            &log,
        )?;
        let waited = async {
            if embedded {
                wait_tcp(&brokers, "devstack broker", &mut devstack, &log).await?;
            }
            wait_tcp(
                &format!("127.0.0.1:{s3}"),
                "devstack S3",
                &mut devstack,
                &log,
            )
            .await
        }
        .await;
        stack.children.push(("devstack".into(), devstack));
        waited?;

        let log = dir.join("processor.log");
        let mut env = vec![
            ("PROCESSOR_HTTP_ADDR", format!("127.0.0.1:{proc_port}")),
            ("PROCESSOR_STAGES", "ingest,thumbnail,embed".into()),
            ("KAFKA_BROKERS", brokers.clone()),
            ("S3_ENDPOINT", stack.s3_endpoint.clone()),
            ("S3_ACCESS_KEY", access_key),
            ("S3_SECRET_KEY", secret_key),
            ("B2_WEBHOOK_SECRET", webhook_secret),
            ("DB_HOOK_URL", format!("http://127.0.0.1:{hook}/hook")),
        ];
        for (k, v) in processor_env {
            env.push((k.as_str(), v.clone()));
        }
        let mut processor = spawn(&bin_dir.join("processor"), &env, &[], &log)?;
        let waited = wait_ready(
            &format!("http://127.0.0.1:{proc_port}/readyz"),
            "processor",
            &mut processor,
            &log,
        )
        .await;
        stack.children.push(("processor".into(), processor));
        waited?;

        let log = dir.join("status-api.log");
        let mut status = spawn(
            &bin_dir.join("status-api"),
            &[
                ("STATUS_HTTP_ADDR", format!("127.0.0.1:{status_port}")),
                ("KAFKA_BROKERS", brokers),
                ("STATUS_TOKEN_SECRET", token_secret),
                ("STATUS_EXPECT_EMBEDDINGS", "true".into()),
            ],
            &[],
            &log,
        )?;
        let waited = wait_ready(
            &format!("{}/readyz", stack.status_url),
            "status-api",
            &mut status,
            &log,
        )
        .await;
        stack.children.push(("status-api".into(), status));
        waited?;
        Ok(stack)
    }

    /// Pids of the started processes, by name.
    pub fn pids(&self) -> Vec<(String, u32)> {
        self.children
            .iter()
            .map(|(n, c)| (n.clone(), c.id()))
            .collect()
    }

    /// Names of started processes that have exited (they should not, during a run).
    pub fn exited(&mut self) -> Vec<String> {
        self.children
            .iter_mut()
            .filter_map(|(n, c)| matches!(c.try_wait(), Ok(Some(_))).then(|| n.clone()))
            .collect()
    }
}

impl Drop for OwnStack {
    fn drop(&mut self) {
        // Reverse order: status-api and processor before the broker and S3 they use.
        for (_, child) in self.children.iter_mut().rev() {
            child.kill().ok();
            child.wait().ok();
        }
    }
}
