//! The UAT load test: N users each upload M photos in parallel through the real path (S3 PUT,
//! then the signed B2 webhook per object), and the test watches every user's progress through
//! status-api's SSE stream as the browser would, the stage events on Kafka, and the CPU and
//! memory of each process. It writes a report directory (Markdown, SVG charts, JSON) and prints
//! as its last line `ideal_ratio=… fairness=… lost=… double=…`; it exits non-zero if a photo
//! was lost or counted twice. Definitions of every figure: docs/loadtest.md.
//!
//! Run through `scripts/loadtest`, which builds the binaries; `--start-stack` starts its own
//! devstack, processor and status-api on free ports.

#[path = "loadtest/capacity.rs"]
mod capacity;
#[path = "loadtest/own_stack.rs"]
mod own_stack;
#[path = "loadtest/procstat.rs"]
mod procstat;
#[path = "loadtest/report.rs"]
mod report;
#[path = "loadtest/sse_watch.rs"]
mod sse_watch;
#[path = "loadtest/stage_events.rs"]
mod stage_events;
#[path = "loadtest/svg_chart.rs"]
mod svg_chart;
#[path = "loadtest/uploader.rs"]
mod uploader;

use anyhow::Context;
use clap::Parser;
use std::collections::HashSet;
use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Load test settings: flags, or the same environment variables the services read.
#[derive(Parser, Debug)]
#[command(
    name = "loadtest",
    about = "N users × M photos through S3 PUT + B2 webhook; progress watched through status-api's SSE"
)]
struct Args {
    /// Users uploading in parallel.
    #[arg(long, default_value_t = 5)]
    users: usize,
    /// Photos each user uploads (the photo set is cycled; each upload is a distinct object).
    #[arg(long, default_value_t = 2000)]
    photos: usize,
    /// The photo set.
    #[arg(long, default_value = "../shared/corpus/photos")]
    photos_dir: PathBuf,
    /// Report directory (report.md, *.svg, summary.json).
    #[arg(long, default_value = "loadtest-report")]
    out: PathBuf,
    /// Concurrent PUTs per user (1: one photo after another, as a user's app uploads).
    #[arg(long, default_value_t = 4)]
    concurrency: usize,
    /// Each user's upload bandwidth in Mbit/s (e.g. 40 for a good home line); unset: unlimited
    /// (loopback, far faster than any user's line).
    #[arg(long)]
    upload_mbps: Option<f64>,
    /// The processor's `/metrics` (per-stage CPU for the capacity model); default: the webhook
    /// URL's host with `/metrics`.
    #[arg(long)]
    processor_metrics_url: Option<String>,
    /// Give up waiting for completion after this many seconds (0: 120 + 2 s per photo).
    #[arg(long, default_value_t = 0)]
    timeout_secs: u64,
    /// Start an own devstack + processor (ingest,thumbnail,embed) + status-api on free ports
    /// (binaries from `--bin-dir`) instead of using the endpoints below.
    #[arg(long)]
    start_stack: bool,
    /// Where devstack, processor and status-api are (default: beside this binary).
    #[arg(long)]
    bin_dir: Option<PathBuf>,
    /// Extra processor settings for `--start-stack`, `NAME=VALUE` (e.g. `CPU_WORKERS=2`).
    #[arg(long = "processor-env", value_parser = parse_kv)]
    processor_env: Vec<(String, String)>,
    /// With `--start-stack`: use this Kafka (e.g. Apache Kafka from `scripts/kafka up`) instead
    /// of devstack's embedded broker.
    #[arg(long)]
    stack_kafka: Option<String>,
    /// Keep `--start-stack`'s data and logs in this directory.
    #[arg(long)]
    stack_dir: Option<PathBuf>,
    #[arg(long, env = "S3_ENDPOINT", default_value = "http://127.0.0.1:9000")]
    s3_endpoint: String,
    #[arg(long, env = "S3_BUCKET", default_value = "photos")]
    bucket: String,
    #[arg(long, env = "S3_ACCESS_KEY", default_value = "local")]
    access_key: String,
    #[arg(
        long,
        env = "S3_SECRET_KEY",
        default_value = "localsecret",
        hide_env_values = true
    )]
    secret_key: String,
    /// POST the signed B2 webhook ourselves after each PUT (for S3 endpoints that do not send
    /// B2 event notifications; devstack's S3 server and B2 itself do).
    #[arg(long)]
    send_webhook: bool,
    #[arg(
        long,
        env = "B2_WEBHOOK_URL",
        default_value = "http://127.0.0.1:8081/v1/b2/events"
    )]
    webhook_url: String,
    #[arg(
        long,
        env = "B2_WEBHOOK_SECRET",
        default_value = "local-webhook-secret",
        hide_env_values = true
    )]
    webhook_secret: String,
    #[arg(long, env = "STATUS_URL", default_value = "http://127.0.0.1:8080")]
    status_url: String,
    /// status-api's token secret, to mint the users' tokens.
    #[arg(
        long,
        env = "STATUS_TOKEN_SECRET",
        default_value = "local-token-secret",
        hide_env_values = true
    )]
    token_secret: String,
    #[arg(long, env = "KAFKA_BROKERS", default_value = "127.0.0.1:9092")]
    brokers: String,
    #[arg(long, env = "TOPIC_UPLOADED", default_value = schemas::topics::UPLOADED)]
    topic_uploaded: String,
    #[arg(long, env = "TOPIC_THUMBNAILED", default_value = schemas::topics::THUMBNAILED)]
    topic_thumbnailed: String,
    #[arg(long, env = "TOPIC_EMBEDDED", default_value = schemas::topics::EMBEDDED)]
    topic_embedded: String,
    /// Whether a user is done only once embeddings are (as status-api's
    /// `STATUS_EXPECT_EMBEDDINGS`).
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    expect_embeddings: bool,
    /// Processes to sample, `NAME=PID` (default: with --start-stack its own; otherwise found by
    /// name: processor, status-api, devstack).
    #[arg(long = "pid", value_parser = parse_kv)]
    pids: Vec<(String, String)>,
    /// Cores available to the pipeline, for the ideal (default: all online CPUs).
    #[arg(long)]
    cores: Option<f64>,
}

fn parse_kv(s: &str) -> Result<(String, String), String> {
    s.split_once('=')
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .ok_or_else(|| format!("expected NAME=VALUE, got {s:?}"))
}

fn load_photos(dir: &PathBuf) -> anyhow::Result<Vec<(PathBuf, Vec<u8>)>> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .with_context(|| format!("reading the photo set {dir:?}"))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_file())
        .collect();
    files.sort();
    anyhow::ensure!(!files.is_empty(), "no photos in {dir:?}");
    files
        .into_iter()
        .map(|p| {
            let b = std::fs::read(&p).with_context(|| format!("reading {p:?}"))?;
            Ok((p, b))
        })
        .collect()
}

/// The 1-minute load average (`/proc/loadavg`): how busy the machine was besides this run.
fn load_avg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|s| s.split_whitespace().next().map(str::to_string))
        .unwrap_or_else(|| "?".into())
}

fn utc_now() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    let (days, rem) = (secs.div_euclid(86400), secs.rem_euclid(86400));
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719468;
    let era = z.div_euclid(146097);
    let doe = z - era * 146097;
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + (m <= 2) as i64;
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02}",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// One user's row in the live table: a bar (█ embedded, ▓ thumbnailed, ░ uploaded) and counts.
fn progress_row(
    user: &str,
    target: usize,
    up: u64,
    failed: u64,
    s: &sse_watch::Snapshot,
) -> String {
    const W: usize = 30;
    let cells = |n: u64| ((n as usize * W) / target.max(1)).min(W);
    let (e, t, u) = (
        cells(s.embeddings.done()),
        cells(s.thumbnails.done()),
        cells(up),
    );
    let bar: String = (0..W)
        .map(|i| {
            if i < e {
                '█'
            } else if i < t {
                '▓'
            } else if i < u {
                '░'
            } else {
                '·'
            }
        })
        .collect();
    format!(
        "{user:<14} {bar} put {up:>5}{} thumbs {:>5} embeds {:>5} {}",
        if failed > 0 {
            format!(" ({failed} failed)")
        } else {
            String::new()
        },
        s.thumbnails.done(),
        s.embeddings.done(),
        s.phase,
    )
}

#[tokio::main]
async fn main() {
    match run(Args::parse()).await {
        Ok(code) => std::process::exit(code),
        Err(e) => {
            eprintln!("loadtest: {e:#}");
            std::process::exit(2);
        }
    }
}

/// The capacity model from the processor's per-stage CPU (scraped now, before the stack stops).
async fn capacity_model(
    args: &Args,
    info: &report::RunInfo,
    results: &[report::UserResult],
    log: &stage_events::StageLog,
    processor_cpu: Option<f64>,
) -> Option<capacity::CapacityModel> {
    let url = args.processor_metrics_url.clone().unwrap_or_else(|| {
        let base = args
            .webhook_url
            .split("/v1/")
            .next()
            .unwrap_or(&args.webhook_url);
        format!("{base}/metrics")
    });
    let text = match reqwest::get(&url).await {
        Ok(r) => r.text().await.ok(),
        Err(e) => {
            eprintln!("loadtest: no capacity model: {url}: {e}");
            None
        }
    }?;
    let lanes = capacity::LaneCpu::parse(&text)?;
    let uploads: Vec<f64> = results.iter().filter_map(|u| u.upload_secs()).collect();
    let photos = log.photos.values().filter(|p| p.thumb_events > 0).count() as u64;
    capacity::CapacityModel::build(&capacity::Measured {
        lanes,
        processor_cpu: processor_cpu?,
        photos,
        users: info.users,
        upload_secs_per_user: uploads.iter().sum::<f64>() / uploads.len().max(1) as f64,
        photos_per_user: results.iter().map(|u| u.uploaded_ok as f64).sum::<f64>()
            / results.len().max(1) as f64,
        mean_photo_bytes: info.photo_bytes as f64 / info.photo_files.max(1) as f64,
    })
}

async fn run(mut args: Args) -> anyhow::Result<i32> {
    anyhow::ensure!(
        args.users > 0 && args.photos > 0,
        "--users and --photos must be > 0"
    );
    let command = std::env::args()
        .map(|a| if a.contains(' ') { format!("'{a}'") } else { a })
        .collect::<Vec<_>>()
        .join(" ");
    let photos = Arc::new(load_photos(&args.photos_dir)?);
    let photo_bytes: u64 = photos.iter().map(|p| p.1.len() as u64).sum();

    // The stack: our own on free ports, or the configured endpoints.
    let mut stack = None;
    if args.start_stack {
        let bin_dir = match &args.bin_dir {
            Some(d) => d.clone(),
            None => std::env::current_exe()?
                .parent()
                .context("binary directory")?
                .to_path_buf(),
        };
        eprintln!("loadtest: starting devstack, processor (ingest,thumbnail,embed) and status-api from {bin_dir:?}");
        let s = own_stack::OwnStack::start(
            &bin_dir,
            args.stack_dir.clone(),
            &args.processor_env,
            args.stack_kafka.clone(),
        )
        .await?;
        args.s3_endpoint = s.s3_endpoint.clone();
        args.access_key = s.access_key.clone();
        args.secret_key = s.secret_key.clone();
        args.webhook_url = s.webhook_url.clone();
        args.webhook_secret = s.webhook_secret.clone();
        args.status_url = s.status_url.clone();
        args.token_secret = s.token_secret.clone();
        args.brokers = s.brokers.clone();
        eprintln!(
            "loadtest: stack up (S3 {}, status-api {}, Kafka {}, logs in {:?})",
            s.s3_endpoint, s.status_url, s.brokers, s.dir
        );
        stack = Some(s);
    }
    let mut watched: Vec<procstat::Watched> = vec![];
    if let Some(s) = &stack {
        for (name, pid) in s.pids() {
            watched.push(procstat::Watched { name, pid });
        }
    } else if !args.pids.is_empty() {
        for (name, pid) in &args.pids {
            watched.push(procstat::Watched {
                name: name.clone(),
                pid: pid.parse().with_context(|| format!("--pid {name}={pid}"))?,
            });
        }
    } else {
        for name in ["devstack", "processor", "status-api"] {
            let pids = procstat::find_by_name(name);
            for (i, pid) in pids.iter().enumerate() {
                let name = if pids.len() > 1 {
                    format!("{name}#{}", i + 1)
                } else {
                    name.to_string()
                };
                watched.push(procstat::Watched { name, pid: *pid });
            }
        }
    }
    watched.push(procstat::Watched {
        name: "loadtest".into(),
        pid: std::process::id(),
    });
    let cores = args.cores.unwrap_or_else(|| {
        std::thread::available_parallelism()
            .map(|n| n.get() as f64)
            .unwrap_or(1.0)
    });

    // Fresh user ids per run: status-api's counts and the Kafka filter see only this run.
    let run_id = format!("{:06x}", rand::random::<u32>() & 0xff_ffff);
    let users: Vec<String> = (1..=args.users)
        .map(|i| format!("lt{run_id}-u{i}"))
        .collect();
    let user_set: HashSet<String> = users.iter().cloned().collect();

    let load_avg_start = load_avg();
    let start = Instant::now();
    let start_wall_ms = schemas::now_ms();
    let started_utc = utc_now();

    // SSE, one stream per user, connected before the first upload.
    let signer = status_api::auth::TokenSigner::new(args.token_secret.as_bytes())?;
    let watches: Vec<Arc<sse_watch::Watch>> =
        users.iter().map(|_| sse_watch::Watch::new()).collect();
    let mut sse_tasks = vec![];
    for (u, w) in users.iter().zip(&watches) {
        sse_tasks.push(tokio::spawn(sse_watch::follow(
            args.status_url.clone(),
            u.clone(),
            signer.mint(u, 7 * 24 * 3600),
            w.clone(),
            start,
            args.expect_embeddings,
        )));
    }

    // Uploads: every user in parallel.
    let target = uploader::UploadTarget {
        s3: uploader::s3_client(&args.s3_endpoint, &args.access_key, &args.secret_key),
        bucket: args.bucket.clone(),
        webhook: args
            .send_webhook
            .then(|| (args.webhook_url.clone(), args.webhook_secret.clone())),
        http: reqwest::Client::builder()
            .timeout(Duration::from_secs(30))
            .build()?,
    };
    let uploads: Vec<Arc<uploader::UploadProgress>> =
        users.iter().map(|_| Arc::default()).collect();
    let mut upload_tasks = vec![];
    for (i, u) in users.iter().enumerate() {
        let link = Arc::new(uploader::UploadLink::new(args.upload_mbps));
        upload_tasks.push(Some(tokio::spawn(uploader::upload_user(
            target.clone(),
            run_id.clone(),
            u.clone(),
            i,
            photos.clone(),
            args.photos,
            args.concurrency,
            link,
            uploads[i].clone(),
            start,
        ))));
    }

    let total = args.users * args.photos;
    let timeout = Duration::from_secs(if args.timeout_secs > 0 {
        args.timeout_secs
    } else {
        120 + 2 * total as u64
    });
    let mut sampler = procstat::Sampler::new(watched, start);
    let tty = std::io::stderr().is_terminal();
    let mut drawn = 0usize;
    let mut last_sample = Instant::now();
    let mut last_plain = Instant::now();
    let mut timed_out = false;
    let mut stack_exited = vec![];
    loop {
        tokio::time::sleep(Duration::from_millis(250)).await;
        if last_sample.elapsed() >= Duration::from_secs(1) {
            sampler.sample();
            last_sample = Instant::now();
        }
        for (i, t) in upload_tasks.iter_mut().enumerate() {
            if t.as_ref().is_some_and(|t| t.is_finished()) {
                t.take();
                watches[i].expected.store(
                    uploads[i].ok.load(Ordering::Relaxed).max(1),
                    Ordering::Relaxed,
                );
            }
        }
        for w in &watches {
            w.recheck(args.expect_embeddings);
        }
        // The table.
        let rows: Vec<String> = {
            users
                .iter()
                .enumerate()
                .map(|(i, u)| {
                    let v = watches[i].view.lock().unwrap();
                    progress_row(
                        u,
                        args.photos,
                        uploads[i].ok.load(Ordering::Relaxed),
                        uploads[i].failed.load(Ordering::Relaxed),
                        &v.last,
                    )
                })
                .collect()
        };
        let header = format!(
            "loadtest {:>6.1} s  ({} users × {} photos; bar: █ embedded ▓ thumbnailed ░ uploaded)",
            start.elapsed().as_secs_f64(),
            args.users,
            args.photos
        );
        let mut err = std::io::stderr().lock();
        if tty {
            if drawn > 0 {
                let _ = write!(err, "\x1b[{drawn}A");
            }
            let _ = writeln!(err, "\x1b[2K{header}");
            for r in &rows {
                let _ = writeln!(err, "\x1b[2K{r}");
            }
            drawn = rows.len() + 1;
        } else if last_plain.elapsed() >= Duration::from_secs(10) {
            let _ = writeln!(err, "{header}");
            for r in &rows {
                let _ = writeln!(err, "  {r}");
            }
            last_plain = Instant::now();
        }
        drop(err);

        let uploads_done = upload_tasks.iter().all(Option::is_none);
        let users_done = watches.iter().all(|w| {
            let v = w.view.lock().unwrap();
            if args.expect_embeddings {
                v.embeds_done_at.is_some()
            } else {
                v.thumbs_done_at.is_some()
            }
        });
        if uploads_done && users_done {
            break;
        }
        if let Some(s) = &mut stack {
            stack_exited = s.exited();
            if !stack_exited.is_empty() {
                eprintln!(
                    "loadtest: {stack_exited:?} exited during the run; see {:?}",
                    s.dir
                );
                break;
            }
        }
        if start.elapsed() > timeout {
            eprintln!("loadtest: timed out after {timeout:?} before every photo was done");
            timed_out = true;
            break;
        }
    }
    let wall_secs = start.elapsed().as_secs_f64();
    sampler.sample();

    // Let late duplicates (redeliveries) arrive before counting them.
    tokio::time::sleep(Duration::from_secs(3)).await;
    for w in &watches {
        w.stop.store(true, Ordering::Relaxed);
    }
    for t in upload_tasks.into_iter().flatten() {
        t.abort();
    }
    for t in sse_tasks {
        let _ = tokio::time::timeout(Duration::from_secs(2), t).await;
    }
    // The stage events, read once now (a reader during the run would add load).
    let log = {
        let brokers = args.brokers.clone();
        let topics = stage_events::Topics {
            uploaded: args.topic_uploaded.clone(),
            thumbnailed: args.topic_thumbnailed.clone(),
            embedded: args.topic_embedded.clone(),
        };
        tokio::task::spawn_blocking(move || stage_events::read_all(&brokers, &topics, &user_set))
            .await?
            .context("reading the stage events from Kafka")?
    };
    let load_avg_end = load_avg();

    let results: Vec<report::UserResult> = users
        .iter()
        .enumerate()
        .map(|(i, u)| {
            let v = watches[i].view.lock().unwrap();
            let up = &uploads[i];
            report::UserResult {
                user: u.clone(),
                uploaded_ok: up.ok.load(Ordering::Relaxed),
                upload_failed: up.failed.load(Ordering::Relaxed),
                upload_errors: up.errors.lock().unwrap().clone(),
                first_upload_start: *up.first_start.lock().unwrap(),
                last_upload_done: *up.last_done.lock().unwrap(),
                thumbs_done_at: v.thumbs_done_at,
                embeds_done_at: v.embeds_done_at,
                status: v.last.clone(),
                sse_error: v.last_error.clone(),
                upload_timeline: up.timeline.lock().unwrap().clone(),
                sse_timeline: v.timeline.clone(),
            }
        })
        .collect();
    let info = report::RunInfo {
        command,
        started_utc,
        mode: if args.start_stack {
            "own (--start-stack: devstack + processor ingest,thumbnail,embed + status-api)".into()
        } else {
            format!(
                "configured endpoints (S3 {}, status-api {}, Kafka {})",
                args.s3_endpoint, args.status_url, args.brokers
            )
        },
        photos_dir: args.photos_dir.display().to_string(),
        photo_files: photos.len(),
        photo_bytes,
        users: args.users,
        photos_per_user: args.photos,
        concurrency: args.concurrency,
        upload_mbps: args.upload_mbps,
        cores,
        expect_embeddings: args.expect_embeddings,
        start_wall_ms,
        wall_secs,
        timed_out,
        load_avg: (load_avg_start, load_avg_end),
        kafka_records: log.summary(),
    };
    let processor_cpu = sampler
        .usage
        .iter()
        .filter(|(n, _)| n.starts_with("processor"))
        .map(|(_, u)| u.cpu_used())
        .reduce(|a, b| a + b);
    let verdict = report::verdict(&info, &results, &log, processor_cpu);
    let capacity = capacity_model(&args, &info, &results, &log, processor_cpu).await;
    report::write(
        &args.out,
        &info,
        &results,
        &log,
        &sampler.usage,
        &verdict,
        capacity.as_ref(),
    )?;
    drop(stack);

    // The final table on stdout, then the verdict as the last line.
    println!(
        "{:<14} {:>8} {:>7} {:>9} {:>12} {:>12} {:>11}",
        "user", "uploaded", "failed", "upload s", "thumbs+ s", "embeds+ s", "complete s"
    );
    for u in &results {
        let after = |t: Option<f64>| {
            t.zip(u.last_upload_done)
                .map(|(t, l)| format!("{:.1}", (t - l).max(0.0)))
                .unwrap_or_else(|| "—".into())
        };
        println!(
            "{:<14} {:>8} {:>7} {:>9} {:>12} {:>12} {:>11}",
            u.user,
            u.uploaded_ok,
            u.upload_failed,
            u.upload_secs()
                .map(|s| format!("{s:.1}"))
                .unwrap_or("—".into()),
            after(u.thumbs_done_at),
            after(u.embeds_done_at),
            u.completion_at(args.expect_embeddings)
                .map(|s| format!("{s:.1}"))
                .unwrap_or("—".into())
        );
    }
    for (name, u) in &sampler.usage {
        println!(
            "process {name:<12} cpu {:>8.1} s  peak rss {:>6.0} MiB",
            u.cpu_used(),
            u.rss_peak_mib
        );
    }
    println!(
        "ideal {} s (processor CPU / {cores} cores); failed uploads {} thumbnails {} embeddings {}; report {:?}",
        verdict.ideal_secs.map(|v| format!("{v:.1}")).unwrap_or("—".into()),
        verdict.failed_uploads,
        verdict.failed_thumbnails,
        verdict.failed_embeddings,
        args.out.join("report.md")
    );
    if !stack_exited.is_empty() {
        println!("stack processes exited during the run: {stack_exited:?}");
    }
    println!("{}", verdict.last_line());
    let incomplete = timed_out || !stack_exited.is_empty() || verdict.failed_uploads > 0;
    Ok(if verdict.lost > 0 || verdict.double > 0 {
        1
    } else if incomplete {
        3
    } else {
        0
    })
}
