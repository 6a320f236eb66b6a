//! Test kit for the integration tests of every crate: real components over real sockets. A
//! Kafka-protocol broker over TCP (the embedded noida-db broker, or any broker named by
//! `TEST_KAFKA_BROKERS`, e.g. tansu), the local S3 server over HTTP with B2 webhook emulation,
//! the DB-hook sink, and the processor (and optionally status-api) binaries as child
//! processes. Topics are read back with kcat.

use crate::{B2Emulation, HookSink, S3Config, S3Server};
use aws_sdk_s3::config::{Credentials, Region};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub const SECRET: &str = "test-webhook-secret";
/// The DB-hook signing secret of test stacks (`DB_HOOK_SECRET`), which their hook sink checks.
pub const HOOK_SECRET: &str = "test-hook-secret";
pub const BUCKET: &str = "photos";
pub const TOKEN_SECRET: &str = "test-token-secret";

/// `../shared/corpus` beside the repository.
pub fn corpus() -> PathBuf {
    let p = Path::new(&std::env::var("CARGO_MANIFEST_DIR").expect("run under cargo"))
        .join("../../shared/corpus");
    assert!(
        p.is_dir(),
        "test photos not found at {p:?}: the repository must sit beside shared/"
    );
    p
}

/// A port free now, for a child process to listen on. Taken below Linux's ephemeral range
/// (32768–60999): a port the OS handed out for `:0` is released before the child binds it, and
/// meanwhile any outgoing connection (a Kafka client, an HTTP request) could be given the same
/// port; that made a processor fail with "Address already in use" once in CI. Below the range
/// only another listener picking the same random port can collide.
pub fn free_port() -> u16 {
    for _ in 0..1000 {
        let port = rand::random_range(20_000..32_000);
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free port in 20000..32000")
}

/// Photos a processor has finished (ok or failed, every stage), from its `/metrics` at
/// `metrics_url`; `None` if it did not answer.
pub async fn photos_processed(metrics_url: &str) -> Option<u64> {
    let text = reqwest::get(metrics_url).await.ok()?.text().await.ok()?;
    let sum: f64 = text
        .lines()
        .filter(|l| l.starts_with("photos_processed_total{"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum();
    Some(sum as u64)
}

/// Topic names unique to one test, so tests can share an external broker.
#[derive(Clone, Debug)]
pub struct Topics {
    pub uploaded: String,
    pub thumbnailed: String,
    pub embedded: String,
    pub dlq: String,
    pub group: String,
}

impl Topics {
    fn unique() -> Self {
        let id = format!("{:08x}", rand::random::<u32>());
        Self {
            uploaded: format!("t{id}.photos.uploaded"),
            thumbnailed: format!("t{id}.photos.thumbnailed"),
            embedded: format!("t{id}.photos.embedded"),
            dlq: format!("t{id}.photos.dlq"),
            group: format!("t{id}.thumbnail"),
        }
    }
}

/// A binary of this workspace, built next to the running test executable
/// (`target/debug/deps/<test>` → `target/debug/<name>`); `cargo build --workspace` builds it.
pub fn workspace_bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    let bin = exe
        .parent()
        .and_then(Path::parent)
        .expect("target/debug")
        .join(name);
    assert!(
        bin.is_file(),
        "{bin:?} not found: run `cargo build --workspace` first (scripts/test does)"
    );
    bin
}

/// Everything one test needs, torn down on drop.
pub struct Stack {
    pub processor_bin: PathBuf,
    pub brokers: String,
    pub s3: S3Server,
    pub s3_endpoint: String,
    pub processor_port: u16,
    pub hook: HookSink,
    pub hook_url: String,
    pub topics: Topics,
    pub processor: Option<Child>,
    /// status-api child, once [`Stack::start_status_api`] ran; always on `status_port`.
    pub status_api: Option<Child>,
    pub status_port: u16,
    pub extra_env: Vec<(String, String)>,
    _dir: tempfile::TempDir,
}

impl Stack {
    /// Start the stack with the processor binary at `processor_bin`.
    pub async fn start(processor_bin: impl Into<PathBuf>) -> Self {
        Self::start_with(processor_bin, vec![]).await
    }

    /// Start the stack; `extra_env` is passed to the processor (e.g. `MAX_PIXELS`).
    pub async fn start_with(
        processor_bin: impl Into<PathBuf>,
        extra_env: Vec<(&str, &str)>,
    ) -> Self {
        let brokers = match std::env::var("TEST_KAFKA_BROKERS") {
            Ok(b) if !b.is_empty() => b,
            _ => crate::spawn_broker("127.0.0.1:0", None)
                .unwrap()
                .to_string(),
        };
        Self::start_on(processor_bin, extra_env, brokers).await
    }

    /// Start the stack against the broker at `brokers` (e.g. a
    /// [`crate::broker::RestartableBroker`] that an outage test restarts).
    pub async fn start_on(
        processor_bin: impl Into<PathBuf>,
        extra_env: Vec<(&str, &str)>,
        brokers: String,
    ) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let processor_port = free_port();
        let notify = B2Emulation::new(
            format!("http://127.0.0.1:{processor_port}/v1/b2/events"),
            SECRET,
            "users/",
        );
        let s3 = S3Server::spawn(S3Config {
            addr: "127.0.0.1:0".into(),
            root: dir.path().join("s3"),
            access_key: "test".into(),
            secret_key: "testsecret".into(),
            buckets: vec![BUCKET.into()],
            notify: Some(notify),
        })
        .await
        .unwrap();
        let hook = HookSink::with_secret(HOOK_SECRET);
        let hook_addr = hook.spawn("127.0.0.1:0").await.unwrap();
        let mut stack = Self {
            processor_bin: processor_bin.into(),
            brokers,
            s3_endpoint: format!("http://{}", s3.addr),
            s3,
            processor_port,
            hook,
            hook_url: format!("http://{hook_addr}/hook"),
            topics: Topics::unique(),
            processor: None,
            status_api: None,
            status_port: free_port(),
            extra_env: extra_env
                .into_iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            _dir: dir,
        };
        stack.start_processor().await;
        stack
    }

    pub async fn start_processor(&mut self) {
        let mut cmd = self.processor_command(self.processor_port);
        self.processor = Some(cmd.spawn().expect("start processor binary"));
        wait_ready(self.processor_port).await;
    }

    /// Another processor on these topics running only the upload stage (a second ingest
    /// replica behind the same load balancer), on its own port; ready when this returns.
    pub async fn spawn_ingest_replica(&self) -> IngestReplica {
        let port = free_port();
        let mut cmd = self.processor_command(port);
        cmd.env("PROCESSOR_STAGES", "ingest");
        let child = cmd.spawn().expect("start processor binary");
        let replica = IngestReplica { child, port };
        wait_ready(port).await;
        replica
    }

    /// The processor's command line with this stack's settings, serving HTTP on `port`.
    fn processor_command(&self, port: u16) -> Command {
        let mut cmd = Command::new(&self.processor_bin);
        cmd.env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env(
                "RUST_LOG",
                std::env::var("TEST_PROCESSOR_LOG").unwrap_or_else(|_| "warn".into()),
            )
            .env("PROCESSOR_HTTP_ADDR", format!("127.0.0.1:{port}"))
            .env("KAFKA_BROKERS", &self.brokers)
            .env("KAFKA_TOPIC_PARTITIONS", "3")
            .env("TOPIC_UPLOADED", &self.topics.uploaded)
            .env("TOPIC_THUMBNAILED", &self.topics.thumbnailed)
            .env("TOPIC_EMBEDDED", &self.topics.embedded)
            .env("TOPIC_DLQ", &self.topics.dlq)
            .env("THUMBNAIL_GROUP", &self.topics.group)
            // Each test its own embed group too: tests running side by side in one shared group
            // rebalance each other's partitions away (on tansu, past the tests' timeouts).
            .env("EMBED_GROUP", format!("{}-embed", self.topics.group))
            // A restarted processor takes its partitions back at once (static membership).
            .env(
                "KAFKA_GROUP_INSTANCE_ID",
                format!("{}-0", self.topics.group),
            )
            .env("S3_ENDPOINT", &self.s3_endpoint)
            .env("S3_ACCESS_KEY", "test")
            .env("S3_SECRET_KEY", "testsecret")
            .env("B2_WEBHOOK_SECRET", SECRET)
            .env("DB_HOOK_URL", &self.hook_url)
            .env("DB_HOOK_SECRET", HOOK_SECRET)
            .env("RETRY_BUDGET_SECS", "10")
            .stdout(Stdio::null())
            .stderr(Stdio::inherit());
        for (k, v) in &self.extra_env {
            cmd.env(k, v);
        }
        cmd
    }

    /// Start status-api (binary at `bin`) against this stack's topics; waits until it has
    /// replayed the topics (`/readyz`).
    pub async fn start_status_api(&mut self, bin: &Path, extra_env: &[(&str, &str)]) {
        let mut cmd = Command::new(bin);
        cmd.env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env(
                "RUST_LOG",
                std::env::var("TEST_STATUS_LOG").unwrap_or_else(|_| "warn".into()),
            )
            .env(
                "STATUS_HTTP_ADDR",
                format!("127.0.0.1:{}", self.status_port),
            )
            .env("KAFKA_BROKERS", &self.brokers)
            .env("TOPIC_UPLOADED", &self.topics.uploaded)
            .env("TOPIC_THUMBNAILED", &self.topics.thumbnailed)
            .env("TOPIC_EMBEDDED", &self.topics.embedded)
            .env("STATUS_TOKEN_SECRET", TOKEN_SECRET)
            // Most test stacks run no embed stage (extra_env turns it on where one runs).
            .env("STATUS_EXPECT_EMBEDDINGS", "false")
            .stdout(Stdio::null())
            .stderr(Stdio::inherit());
        for (k, v) in extra_env {
            cmd.env(k, v);
        }
        self.status_api = Some(cmd.spawn().expect("start status-api binary"));
        let url = format!("{}/readyz", self.status_url());
        wait_for(Duration::from_secs(60), "status-api ready", || async {
            reqwest::get(&url)
                .await
                .map(|r| r.status().is_success())
                .unwrap_or(false)
        })
        .await;
    }

    /// The directory holding the S3 server's objects (`s3/<bucket>/...`): a second S3 server
    /// on the same directory serves the same objects (with faults of its own).
    pub fn data_dir(&self) -> &Path {
        self._dir.path()
    }

    pub fn status_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.status_port)
    }

    /// SIGKILL status-api.
    pub fn kill_status_api(&mut self) {
        if let Some(mut p) = self.status_api.take() {
            p.kill().ok();
            p.wait().ok();
        }
    }

    /// SIGKILL the processor (a crash, no graceful shutdown).
    pub fn kill_processor(&mut self) {
        if let Some(mut p) = self.processor.take() {
            p.kill().ok();
            p.wait().ok();
        }
    }

    /// SIGTERM the processor and wait for it to exit.
    pub fn stop_processor(&mut self) -> std::process::ExitStatus {
        let mut p = self.processor.take().expect("processor running");
        Command::new("kill")
            .arg("-TERM")
            .arg(p.id().to_string())
            .status()
            .unwrap();
        p.wait().unwrap()
    }

    pub fn webhook_url(&self) -> String {
        format!("http://127.0.0.1:{}/v1/b2/events", self.processor_port)
    }

    pub fn metrics_url(&self) -> String {
        format!("http://127.0.0.1:{}/metrics", self.processor_port)
    }

    /// Photos the running processor has finished (ok or failed), from its /metrics.
    pub async fn processed_count(&self) -> u64 {
        photos_processed(&self.metrics_url()).await.unwrap_or(0)
    }

    pub fn s3_client(&self) -> aws_sdk_s3::Client {
        let conf = aws_sdk_s3::Config::builder()
            .behavior_version_latest()
            .endpoint_url(&self.s3_endpoint)
            .region(Region::new("us-east-1"))
            .credentials_provider(Credentials::new("test", "testsecret", None, None, "test"))
            .force_path_style(true)
            .build();
        aws_sdk_s3::Client::from_conf(conf)
    }

    pub async fn upload(&self, key: &str, body: Vec<u8>) {
        self.s3_client()
            .put_object()
            .bucket(BUCKET)
            .key(key)
            .body(body.into())
            .send()
            .await
            .unwrap_or_else(|e| panic!("PUT {key}: {e:?}"));
    }

    pub async fn get_object(&self, key: &str) -> Option<Vec<u8>> {
        let r = self
            .s3_client()
            .get_object()
            .bucket(BUCKET)
            .key(key)
            .send()
            .await
            .ok()?;
        Some(r.body.collect().await.ok()?.into_bytes().to_vec())
    }

    /// All records of `topic` from the beginning: read with kcat, except against an external
    /// broker named by `TEST_KAFKA_BROKERS` (tansu), which Debian's kcat (librdkafka 2.0)
    /// cannot talk to; there with an rdkafka consumer.
    pub fn read_topic(&self, topic: &str) -> Vec<serde_json::Value> {
        if std::env::var("TEST_KAFKA_BROKERS").is_ok_and(|b| !b.is_empty()) {
            rdkafka_read(&self.brokers, topic)
        } else {
            kcat_read(&self.brokers, topic)
        }
    }

    /// Wait until `topic` has at least `n` records with distinct photo ids; return all records.
    pub async fn wait_for_photos(
        &self,
        topic: &str,
        n: usize,
        timeout: Duration,
    ) -> Vec<serde_json::Value> {
        let start = Instant::now();
        loop {
            let records = self.read_topic(topic);
            if distinct_photos(&records) >= n {
                return records;
            }
            assert!(
                start.elapsed() < timeout,
                "timed out: {} of {n} photos on {topic} after {timeout:?}",
                distinct_photos(&records)
            );
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
    }
}

impl Drop for Stack {
    fn drop(&mut self) {
        self.kill_processor();
        self.kill_status_api();
    }
}

pub fn distinct_photos(records: &[serde_json::Value]) -> usize {
    let mut ids: Vec<&str> = records
        .iter()
        .filter_map(|r| r["photo_id"].as_str())
        .collect();
    ids.sort();
    ids.dedup();
    ids.len()
}

/// Read a whole topic from the beginning with kcat (`-e`: exit at the end of every partition).
pub fn kcat_read(brokers: &str, topic: &str) -> Vec<serde_json::Value> {
    let out = Command::new("kcat")
        .args([
            "-b",
            brokers,
            "-C",
            "-t",
            topic,
            "-o",
            "beginning",
            "-e",
            "-q",
            "-f",
            "%s\n",
        ])
        .output()
        .expect("kcat is installed (scripts/test installs it)");
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        // A topic that does not exist yet simply has no records.
        if err.contains("Unknown topic") || err.contains("UNKNOWN_TOPIC") {
            return vec![];
        }
        panic!("kcat failed on {topic}: {err}");
    }
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            serde_json::from_str(l)
                .unwrap_or_else(|e| panic!("record on {topic} is not JSON ({e}): {l}"))
        })
        .collect()
}

/// Read a whole topic from the beginning with a group-less rdkafka consumer, stopping once no
/// record has arrived for a second (not at the "latest" offset, which tansu reports wrongly).
pub fn rdkafka_read(brokers: &str, topic: &str) -> Vec<serde_json::Value> {
    use rdkafka::consumer::{BaseConsumer, Consumer};
    use rdkafka::message::Message;
    use rdkafka::{ClientConfig, Offset, TopicPartitionList};
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", "test-reader")
        .set("enable.auto.commit", "false")
        .create()
        .unwrap();
    let Ok(md) = consumer.fetch_metadata(Some(topic), Duration::from_secs(10)) else {
        return vec![];
    };
    let mut tpl = TopicPartitionList::new();
    for t in md.topics() {
        for p in t.partitions() {
            tpl.add_partition_offset(topic, p.id(), Offset::Beginning)
                .unwrap();
        }
    }
    if tpl.count() == 0 {
        return vec![];
    }
    consumer.assign(&tpl).unwrap();
    let mut out = vec![];
    let mut idle_since = Instant::now();
    while idle_since.elapsed() < Duration::from_secs(1) {
        match consumer.poll(Duration::from_millis(100)) {
            Some(Ok(m)) => {
                let payload = m.payload().unwrap_or_default();
                out.push(
                    serde_json::from_slice(payload)
                        .unwrap_or_else(|e| panic!("record on {topic} is not JSON ({e})")),
                );
                idle_since = Instant::now();
            }
            Some(Err(e)) => panic!("reading {topic}: {e}"),
            None => {}
        }
    }
    out
}

pub async fn wait_for<F, Fut>(timeout: Duration, what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let start = Instant::now();
    while !check().await {
        assert!(start.elapsed() < timeout, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A signed B2 webhook body for one object-created event.
pub fn signed_event(bucket: &str, key: &str, version: &str, event_id: &str) -> (Vec<u8>, String) {
    let body = crate::b2::event_body(
        "b2:ObjectCreated:Upload",
        bucket,
        key,
        10,
        version,
        event_id,
    );
    let body = serde_json::to_vec(&body).unwrap();
    let sig = crate::b2::signature(SECRET.as_bytes(), &body);
    (body, sig)
}

/// A second ingest process ([`Stack::spawn_ingest_replica`]); killed when dropped, so that a
/// failing test leaves no process behind.
pub struct IngestReplica {
    child: Child,
    /// Its HTTP port (webhook, metrics).
    pub port: u16,
}

impl Drop for IngestReplica {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Wait until the processor on `port` answers `/readyz`.
async fn wait_ready(port: u16) {
    let url = format!("http://127.0.0.1:{port}/readyz");
    wait_for(Duration::from_secs(60), "processor ready", || async {
        reqwest::get(&url)
            .await
            .map(|r| r.status().is_success())
            .unwrap_or(false)
    })
    .await;
}

/// Whether the external broker of `TEST_KAFKA_BROKERS` is Apache Kafka (`TEST_KAFKA_KIND=apache`,
/// set by the test command's Apache Kafka suites): tests that must restart the broker then run
/// an Apache Kafka broker of their own ([`ApacheKafka`]) instead of the embedded one.
pub fn testing_apache_kafka() -> bool {
    std::env::var("TEST_KAFKA_KIND").is_ok_and(|k| k == "apache")
}

/// An Apache Kafka broker of one test's own (`scripts/kafka`, jars from Maven Central), so the
/// test can crash and restart it; stopped and its data removed on drop.
pub struct ApacheKafka {
    script: PathBuf,
    dir: tempfile::TempDir,
    addr: String,
}

impl ApacheKafka {
    /// Format and start a broker on a free port (`scripts/kafka up`).
    pub fn start() -> std::io::Result<Self> {
        let script = Path::new(&std::env::var("CARGO_MANIFEST_DIR").expect("run under cargo"))
            .join("../scripts/kafka");
        let dir = tempfile::tempdir()?;
        let mut broker = Self {
            script,
            dir,
            addr: String::new(),
        };
        let port = free_port().to_string();
        broker.addr = broker.script(&["up", "--port", &port])?;
        Ok(broker)
    }

    /// Its bootstrap address.
    pub fn addr(&self) -> &str {
        &self.addr
    }

    /// A crash: SIGKILL, no controlled shutdown (the log's tail is recovered on restart).
    pub fn kill(&mut self) -> std::io::Result<()> {
        let pid = std::fs::read_to_string(self.data().join("kafka.pid"))?;
        let status = Command::new("kill").args(["-KILL", pid.trim()]).status()?;
        if !status.success() {
            return Err(std::io::Error::other(format!("kill -KILL {pid} failed")));
        }
        Ok(())
    }

    /// Start it again on its data and port (`scripts/kafka up --keep`).
    pub fn restart(&mut self) -> std::io::Result<()> {
        let addr = self.script(&["up", "--keep"])?;
        if addr != self.addr {
            return Err(std::io::Error::other(format!(
                "restarted on {addr}, not {}",
                self.addr
            )));
        }
        Ok(())
    }

    fn data(&self) -> PathBuf {
        self.dir.path().join("kafka")
    }

    /// Run `scripts/kafka CMD … --dir DATA`; its stdout (the bootstrap address for `up`).
    fn script(&self, args: &[&str]) -> std::io::Result<String> {
        let out = Command::new(&self.script)
            .args(args)
            .arg("--dir")
            .arg(self.data())
            .stderr(Stdio::inherit())
            .output()?;
        if !out.status.success() {
            return Err(std::io::Error::other(format!(
                "scripts/kafka {args:?} failed: {}",
                out.status
            )));
        }
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
    }
}

impl Drop for ApacheKafka {
    fn drop(&mut self) {
        let _ = self.script(&["down"]);
    }
}
