//! SSE load benchmark: hold N concurrent EventSource-like clients against status-api while
//! stage events flow at a steady rate; report status-api's RSS and CPU, and the latency from
//! a stage event's timestamp to its arrival at a client. Optionally first measure how long a
//! fresh status-api takes to replay M events.
//!
//! Run through `scripts/bench-sse CLIENTS`, which starts the broker and status-api. Last line:
//! `clients=<held> rss_mib=<peak> p99_ms=<latency>`.

use clap::Parser;
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use rdkafka::ClientConfig;
use schemas::{StageStatus, ThumbnailDone, ThumbnailTimings, SCHEMA_VERSION};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

#[derive(Parser)]
struct Args {
    /// `topics`: create the stage topics; `preload`: write `--events` events and exit;
    /// `load`: the SSE load test.
    #[arg(long, default_value = "load")]
    mode: String,
    #[arg(long, default_value_t = 0)]
    clients: usize,
    #[arg(long, default_value_t = 1_000_000)]
    events: u64,
    /// Distinct users the clients watch (clients are spread over them).
    #[arg(long, default_value_t = 2000)]
    users: usize,
    /// Stage events per second while clients are connected.
    #[arg(long, default_value_t = 500)]
    rate: u64,
    /// Seconds of steady event flow to measure.
    #[arg(long, default_value_t = 20)]
    seconds: u64,
    #[arg(long, default_value = "127.0.0.1:8080")]
    status_addr: SocketAddr,
    #[arg(long, default_value_t = 0)]
    status_pid: u32,
    #[arg(long)]
    brokers: String,
    #[arg(long, default_value = "photos.thumbnailed")]
    topic: String,
    #[arg(long, default_value = "local-token-secret")]
    token_secret: String,
    /// Source addresses 127.0.0.2 .. 127.0.0.(1+N), to get past the ephemeral port range.
    #[arg(long, default_value_t = 8)]
    source_ips: u8,
}

fn proc_rss_mib(pid: u32) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok())
        })
        .map(|kb| kb / 1024.0)
        .unwrap_or(0.0)
}

fn proc_cpu_secs(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let after = stat.rsplit(')').next().unwrap_or("");
    let f: Vec<&str> = after.split_whitespace().collect();
    let ticks: f64 = f.get(11).and_then(|v| v.parse().ok()).unwrap_or(0.0)
        + f.get(12).and_then(|v| v.parse().ok()).unwrap_or(0.0);
    ticks / 100.0
}

fn event(user: usize, seq: u64) -> ThumbnailDone {
    let now = schemas::now_ms();
    ThumbnailDone {
        schema_version: SCHEMA_VERSION,
        photo_id: format!("{:016x}{:016x}", user as u64, seq),
        user_id: format!("bench{user}"),
        bucket: "photos".into(),
        source_key: format!("users/bench{user}/photos/{seq}.jpg"),
        status: StageStatus::Ok,
        thumbnail: None,
        source: None,
        failure: None,
        embed_input: None,
        timings: ThumbnailTimings::default(),
        uploaded_at_ms: now,
        finished_at_ms: now,
    }
}

struct Stats {
    latencies_ms: Mutex<Vec<f64>>,
    connected: AtomicU64,
    received: AtomicU64,
}

async fn client(
    i: usize,
    args: Arc<Args>,
    token: String,
    stats: Arc<Stats>,
    measuring: Arc<std::sync::atomic::AtomicBool>,
) {
    let ip = IpAddr::V4(Ipv4Addr::new(
        127,
        0,
        0,
        2 + (i % args.source_ips as usize) as u8,
    ));
    let sock = tokio::net::TcpSocket::new_v4().expect("socket");
    if sock.bind(SocketAddr::new(ip, 0)).is_err() {
        return;
    }
    let Ok(mut stream) = sock.connect(args.status_addr).await else {
        return;
    };
    let user = i % args.users;
    let req = format!(
        "GET /v1/users/bench{user}/events?token={token} HTTP/1.1\r\nHost: {}\r\nAccept: text/event-stream\r\n\r\n",
        args.status_addr
    );
    if stream.write_all(req.as_bytes()).await.is_err() {
        return;
    }
    let mut lines = BufReader::new(stream).lines();
    let mut counted = false;
    while let Ok(Some(line)) = lines.next_line().await {
        if let Some(data) = line.strip_prefix("data: ") {
            if !counted {
                counted = true;
                stats.connected.fetch_add(1, Ordering::Relaxed);
            }
            if !measuring.load(Ordering::Relaxed) {
                continue;
            }
            if let Ok(v) = serde_json::from_str::<serde_json::Value>(data) {
                if let Some(t) = v["last_event_ms"].as_i64() {
                    if t > 0 {
                        stats.received.fetch_add(1, Ordering::Relaxed);
                        stats
                            .latencies_ms
                            .lock()
                            .expect("lock")
                            .push((schemas::now_ms() - t) as f64);
                    }
                }
            }
        }
    }
}

fn percentile(v: &mut [f64], p: f64) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(|a, b| a.total_cmp(b));
    v[((v.len() - 1) as f64 * p).round() as usize]
}

fn stage_topics() -> devstack::backlog::BacklogTopics {
    devstack::backlog::BacklogTopics {
        uploaded: schemas::topics::UPLOADED.into(),
        thumbnailed: schemas::topics::THUMBNAILED.into(),
        embedded: schemas::topics::EMBEDDED.into(),
    }
}

async fn create_topics(brokers: &str) -> anyhow::Result<()> {
    devstack::backlog::create_topics(brokers, &stage_topics(), 12).await
}

/// Write about `n` stage events as a deployment accumulates them: per photo an upload, a
/// thumbnail (1 in 50 failed) and an embedding (1 in 10 with a face carrying a 512-float
/// embedding), over 10,000 users. Prints the events and bytes written.
async fn preload(brokers: &str, n: u64) -> anyhow::Result<()> {
    let t0 = Instant::now();
    let spec = devstack::backlog::BacklogSpec {
        photos: n.div_ceil(3),
        users: 10_000,
        failed_every: 50,
        faces_every: 10,
        faces: 1,
        embedding_dim: 512,
    };
    let produced = devstack::backlog::produce(brokers, &stage_topics(), &spec, "replay").await?;
    eprintln!(
        "preloaded {} events ({} photos, {:.1} MiB) in {:.1}s",
        produced.events,
        spec.photos,
        produced.bytes as f64 / 1048576.0,
        t0.elapsed().as_secs_f64()
    );
    println!("events={} bytes={}", produced.events, produced.bytes);
    Ok(())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Arc::new(Args::parse());
    match args.mode.as_str() {
        "topics" => return create_topics(&args.brokers).await,
        "preload" => return preload(&args.brokers, args.events).await,
        _ => {}
    }
    let signer = status_api::auth::TokenSigner::new(args.token_secret.as_bytes())?;
    let stats = Arc::new(Stats {
        latencies_ms: Mutex::new(vec![]),
        connected: AtomicU64::new(0),
        received: AtomicU64::new(0),
    });
    let measuring = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let tokens: Vec<String> = (0..args.users.min(args.clients))
        .map(|u| signer.mint(&format!("bench{u}"), 3600))
        .collect();

    let rss_before = proc_rss_mib(args.status_pid);
    let start = Instant::now();
    let limiter = Arc::new(tokio::sync::Semaphore::new(256));
    for i in 0..args.clients {
        let permit = limiter.clone().acquire_owned().await?;
        let (a, s, m, t) = (
            args.clone(),
            stats.clone(),
            measuring.clone(),
            tokens[i % tokens.len()].clone(),
        );
        tokio::spawn(async move {
            // Hold the permit until the first byte of the stream arrives (connected).
            let fut = client(i, a, t, s, m);
            drop(permit);
            fut.await
        });
        if i % 1000 == 999 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    let deadline = Instant::now() + Duration::from_secs(120);
    while (stats.connected.load(Ordering::Relaxed) as usize) < args.clients
        && Instant::now() < deadline
    {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let held = stats.connected.load(Ordering::Relaxed);
    eprintln!(
        "connected {held}/{} clients in {:.1}s; status-api RSS {:.0} MiB (before: {:.0})",
        args.clients,
        start.elapsed().as_secs_f64(),
        proc_rss_mib(args.status_pid),
        rss_before
    );

    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", &args.brokers)
        .set("linger.ms", "2")
        .create()?;
    measuring.store(true, Ordering::SeqCst);
    let cpu0 = proc_cpu_secs(args.status_pid);
    let t0 = Instant::now();
    let mut peak_rss = proc_rss_mib(args.status_pid);
    let mut seq = 0u64;
    let interval = Duration::from_secs_f64(1.0 / args.rate as f64);
    let mut next = Instant::now();
    while t0.elapsed() < Duration::from_secs(args.seconds) {
        let user = (seq as usize * 7919) % args.users.min(args.clients);
        let e = event(user, seq);
        let payload = serde_json::to_vec(&e)?;
        let key = e.user_id.clone();
        let _ = producer.send_result(FutureRecord::to(&args.topic).key(&key).payload(&payload));
        seq += 1;
        if seq.is_multiple_of(100) {
            peak_rss = peak_rss.max(proc_rss_mib(args.status_pid));
        }
        next += interval;
        if let Some(d) = next.checked_duration_since(Instant::now()) {
            tokio::time::sleep(d).await;
        }
    }
    producer.flush(Duration::from_secs(5))?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    measuring.store(false, Ordering::SeqCst);
    let cpu = proc_cpu_secs(args.status_pid) - cpu0;
    peak_rss = peak_rss.max(proc_rss_mib(args.status_pid));
    let mut lat = stats.latencies_ms.lock().expect("lock").clone();
    let (p50, p99, max) = (
        percentile(&mut lat, 0.5),
        percentile(&mut lat, 0.99),
        percentile(&mut lat, 1.0),
    );
    let wall = t0.elapsed().as_secs_f64();
    println!(
        "events={seq} rate={}/s deliveries={} p50_ms={p50:.0} max_ms={max:.0} status_cpu={:.0}% (of one core) rss_per_client_kib={:.1}",
        args.rate,
        lat.len(),
        100.0 * cpu / wall,
        (peak_rss - rss_before) * 1024.0 / held.max(1) as f64
    );
    println!("clients={held} rss_mib={peak_rss:.0} p99_ms={p99:.0}");
    Ok(())
}
