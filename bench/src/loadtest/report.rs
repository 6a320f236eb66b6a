//! The load test's figures (per user, per stage, per process), the ideal / fairness / exactness
//! ratios, and the report directory (Markdown, SVG charts, JSON) they are written to.

use crate::procstat::Usage;
use crate::sse_watch::Snapshot;
use crate::stage_events::StageLog;
use crate::svg_chart::{line_chart, Series};
use std::collections::BTreeMap;
use std::fmt::Write;
use std::path::Path;

/// What was measured for one user.
pub struct UserResult {
    pub user: String,
    pub uploaded_ok: u64,
    pub upload_failed: u64,
    pub upload_errors: Vec<String>,
    /// Seconds from the run's start.
    pub first_upload_start: Option<f64>,
    pub last_upload_done: Option<f64>,
    pub thumbs_done_at: Option<f64>,
    pub embeds_done_at: Option<f64>,
    pub status: Snapshot,
    pub sse_error: Option<String>,
    pub upload_timeline: Vec<(f64, u64)>,
    /// (t, uploaded, thumbnails done, embeddings done) as SSE showed them.
    pub sse_timeline: Vec<(f64, u64, u64, u64)>,
}

impl UserResult {
    pub fn upload_secs(&self) -> Option<f64> {
        Some(self.last_upload_done? - self.first_upload_start?)
    }
    /// Seconds from the user's last acknowledged upload until the SSE event showing every
    /// photo thumbnailed ("Processing your photos" is over).
    pub fn thumb_wait(&self) -> Option<f64> {
        Some((self.thumbs_done_at? - self.last_upload_done?).max(0.0))
    }
    /// The same until every photo's faces are indexed ("Indexing with AI" is over).
    pub fn embed_wait(&self) -> Option<f64> {
        Some((self.embeds_done_at? - self.last_upload_done?).max(0.0))
    }
    /// When the user's last stage finished for every photo, as the browser saw it.
    pub fn completion_at(&self, expect_embeddings: bool) -> Option<f64> {
        if expect_embeddings {
            self.embeds_done_at
        } else {
            self.thumbs_done_at
        }
    }
}

/// Inputs of the report besides the per-user results.
pub struct RunInfo {
    pub command: String,
    pub started_utc: String,
    pub mode: String,
    pub photos_dir: String,
    pub photo_files: usize,
    pub photo_bytes: u64,
    pub users: usize,
    pub photos_per_user: usize,
    pub concurrency: usize,
    /// Per-user upload bandwidth, Mbit/s (None: unlimited).
    pub upload_mbps: Option<f64>,
    pub cores: f64,
    pub expect_embeddings: bool,
    pub start_wall_ms: i64,
    pub wall_secs: f64,
    pub timed_out: bool,
    /// 1-minute load average at the start and at the end.
    pub load_avg: (String, String),
    /// Stage-topic records read, and those that were not JSON.
    pub kafka_records: (u64, u64),
}

/// The headline figures (the last line) and their parts.
#[derive(Debug, Default, serde::Serialize)]
pub struct Verdict {
    pub ideal_secs: Option<f64>,
    pub ideal_ratio: Option<f64>,
    pub thumbs_ideal_ratio: Option<f64>,
    pub fairness: Option<f64>,
    pub jain: Option<f64>,
    pub lost: u64,
    pub double: u64,
    pub double_events: u64,
    pub double_status: u64,
    pub failed_thumbnails: u64,
    pub failed_embeddings: u64,
    pub failed_uploads: u64,
    /// Slowest user's thumbnails-done time / fastest user's (from run start).
    pub thumb_fairness: Option<f64>,
    /// Max over users of [`UserResult::thumb_wait`].
    pub thumb_wait_s: Option<f64>,
    /// Max over users of [`UserResult::embed_wait`].
    pub embed_wait_s: Option<f64>,
}

impl Verdict {
    /// `ideal_ratio=… fairness=… lost=… double=… thumb_wait_s=… embed_wait_s=…`
    pub fn last_line(&self) -> String {
        let f = |v: Option<f64>| v.map(|v| format!("{v:.3}")).unwrap_or_else(|| "nan".into());
        let s = |v: Option<f64>| v.map(|v| format!("{v:.1}")).unwrap_or_else(|| "nan".into());
        format!(
            "ideal_ratio={} fairness={} lost={} double={} thumb_wait_s={} embed_wait_s={}",
            f(self.ideal_ratio),
            f(self.fairness),
            self.lost,
            self.double,
            s(self.thumb_wait_s),
            s(self.embed_wait_s)
        )
    }
}

/// Max of the values if every user has one.
fn max_all(v: impl Iterator<Item = Option<f64>>) -> Option<f64> {
    let v: Option<Vec<f64>> = v.collect();
    v.filter(|v| !v.is_empty())
        .map(|v| v.into_iter().fold(f64::MIN, f64::max))
}

/// Slowest / fastest if every user has a value.
fn spread(v: impl Iterator<Item = Option<f64>>) -> Option<f64> {
    let v: Vec<f64> = v.collect::<Option<Vec<f64>>>()?;
    let max = v.iter().cloned().fold(f64::MIN, f64::max);
    let min = v.iter().cloned().fold(f64::MAX, f64::min);
    (!v.is_empty() && min > 0.0).then(|| max / min)
}

/// Nearest-rank percentile of an ascending slice.
pub fn percentile(sorted: &[f64], p: f64) -> Option<f64> {
    if sorted.is_empty() {
        return None;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil().max(1.0) as usize;
    Some(sorted[rank.min(sorted.len()) - 1])
}

fn opt(v: Option<f64>, digits: usize) -> String {
    v.map(|v| format!("{v:.digits$}"))
        .unwrap_or_else(|| "—".into())
}

/// Per-stage latency samples in seconds: ingest (B2 event → upload stage), thumbnail
/// (B2 event → thumbnail done), embed (B2 event → embedding done).
pub fn stage_latencies(log: &StageLog, user: Option<&str>) -> [Vec<f64>; 3] {
    let mut out: [Vec<f64>; 3] = Default::default();
    for p in log.photos.values() {
        if user.is_some_and(|u| u != p.user_id) {
            continue;
        }
        let Some(up) = p.uploaded_at_ms else { continue };
        for (i, end) in [p.received_at_ms, p.thumb_finished_ms, p.embed_finished_ms]
            .into_iter()
            .enumerate()
        {
            if let Some(e) = end {
                out[i].push((e - up) as f64 / 1000.0);
            }
        }
    }
    for v in &mut out {
        v.sort_by(f64::total_cmp);
    }
    out
}

/// Compute the verdict. `processor_cpu` is the processor's CPU seconds over the run.
pub fn verdict(
    info: &RunInfo,
    users: &[UserResult],
    log: &StageLog,
    processor_cpu: Option<f64>,
) -> Verdict {
    let mut v = Verdict {
        ideal_secs: processor_cpu.map(|c| c / info.cores),
        ..Default::default()
    };
    v.thumb_wait_s = max_all(users.iter().map(UserResult::thumb_wait));
    v.embed_wait_s = max_all(users.iter().map(UserResult::embed_wait));
    v.thumb_fairness = spread(users.iter().map(|u| u.thumbs_done_at));
    let completions: Vec<Option<f64>> = users
        .iter()
        .map(|u| u.completion_at(info.expect_embeddings))
        .collect();
    let all_done = completions.iter().all(Option::is_some) && !completions.is_empty();
    if all_done {
        let c: Vec<f64> = completions.iter().map(|c| c.unwrap()).collect();
        let (max, min) = (
            c.iter().cloned().fold(f64::MIN, f64::max),
            c.iter().cloned().fold(f64::MAX, f64::min),
        );
        if min > 0.0 {
            v.fairness = Some(max / min);
        }
        // Jain's index over per-user throughput (photos / completion time).
        let x: Vec<f64> = users
            .iter()
            .zip(&c)
            .map(|(u, t)| u.uploaded_ok as f64 / t.max(1e-9))
            .collect();
        let (s, s2) = (x.iter().sum::<f64>(), x.iter().map(|v| v * v).sum::<f64>());
        if s2 > 0.0 {
            v.jain = Some(s * s / (x.len() as f64 * s2));
        }
        if let Some(ideal) = v.ideal_secs.filter(|i| *i > 0.0) {
            v.ideal_ratio = Some(max / ideal);
            let thumbs_max = users
                .iter()
                .filter_map(|u| u.thumbs_done_at)
                .fold(f64::MIN, f64::max);
            v.thumbs_ideal_ratio = Some(thumbs_max / ideal);
        }
    }
    for u in users {
        v.failed_uploads += u.upload_failed;
        let photos: Vec<_> = log
            .photos
            .values()
            .filter(|p| p.user_id == u.user)
            .collect();
        // Lost per Kafka: uploaded (PUT acknowledged) but without a final stage event.
        let finished = photos
            .iter()
            .filter(|p| {
                p.thumb_events > 0 && (!info.expect_embeddings || !p.thumb_ok || p.embed_events > 0)
            })
            .count() as u64;
        let lost_kafka = u.uploaded_ok.saturating_sub(finished);
        // Lost per status-api: uploads it never counted as done.
        let s = &u.status;
        let mut lost_status = u.uploaded_ok.saturating_sub(s.thumbnails.done());
        if info.expect_embeddings {
            lost_status = lost_status.max(s.thumbnails.ok.saturating_sub(s.embeddings.done()));
        }
        v.lost += lost_kafka.max(lost_status);
        for p in &photos {
            v.double_events += p.uploaded_events.saturating_sub(1) as u64
                + p.thumb_events.saturating_sub(1) as u64
                + p.embed_events.saturating_sub(1) as u64;
            v.failed_thumbnails += (p.thumb_events > 0 && !p.thumb_ok) as u64;
            v.failed_embeddings += (p.embed_events > 0 && !p.embed_ok) as u64;
        }
        // Photos the tool did not upload are never in this run's users' counts (fresh user ids),
        // so any excess is a photo counted twice.
        v.double_status += s.uploaded.saturating_sub(u.uploaded_ok)
            + s.thumbnails.done().saturating_sub(s.uploaded)
            + s.embeddings.done().saturating_sub(s.thumbnails.ok);
    }
    v.double = v.double_events + v.double_status;
    v
}

/// Stage throughput: photos finished in the stage / (last finish − run start), photos/s.
fn stage_rate(
    log: &StageLog,
    start_ms: i64,
    pick: impl Fn(&crate::stage_events::PhotoRecord) -> Option<i64>,
) -> (u64, Option<f64>) {
    let ends: Vec<i64> = log.photos.values().filter_map(pick).collect();
    let n = ends.len() as u64;
    let last = ends.iter().max().copied();
    (
        n,
        last.filter(|l| *l > start_ms)
            .map(|l| n as f64 / ((l - start_ms) as f64 / 1000.0)),
    )
}

/// Write `report.md`, the SVG charts and `summary.json` to `dir`.
pub fn write(
    dir: &Path,
    info: &RunInfo,
    users: &[UserResult],
    log: &StageLog,
    usage: &BTreeMap<String, Usage>,
    v: &Verdict,
    capacity: Option<&super::capacity::CapacityModel>,
) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir)?;
    let mut md = String::new();
    let _ = writeln!(md, "# Load test report\n");
    let _ = writeln!(md, "```\n{}\n```\n", info.command);
    let _ = writeln!(
        md,
        "Started {} UTC; {} users × {} photos (photo set: {} files, {:.1} MiB, from `{}`, cycled; each upload a distinct object); {} concurrent PUTs per user{}; stack: {}; cores for the ideal: {}; embeddings expected: {}. Wall time {:.1} s{}.\n",
        info.started_utc,
        info.users,
        info.photos_per_user,
        info.photo_files,
        info.photo_bytes as f64 / 1048576.0,
        info.photos_dir,
        info.concurrency,
        info
            .upload_mbps
            .map(|m| format!(" over a {m} Mbit/s line each"))
            .unwrap_or_else(|| ", bandwidth unlimited (loopback)".into()),
        info.mode,
        info.cores,
        info.expect_embeddings,
        info.wall_secs,
        if info.timed_out { " — **timed out before every photo was done**" } else { "" }
    );
    let _ = writeln!(
        md,
        "Machine: {} online CPUs, 1-minute load average {} at the start and {} at the end (other work on the machine competes with the pipeline). Stage topics: {} records read after the run, {} not JSON.\n",
        std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
        info.load_avg.0,
        info.load_avg.1,
        info.kafka_records.0,
        info.kafka_records.1
    );
    let _ = writeln!(md, "## Verdict\n\n```\n{}\n```\n", v.last_line());
    let _ = writeln!(md, "| figure | value | definition |\n|---|---|---|");
    let _ = writeln!(md, "| thumb_wait_s | {} s | slowest user's wait from its last acknowledged upload to the SSE event showing all its thumbnails (\"Processing your photos\") |", opt(v.thumb_wait_s, 1));
    let _ = writeln!(
        md,
        "| embed_wait_s | {} s | the same until all its embeddings (\"Indexing with AI\") |",
        opt(v.embed_wait_s, 1)
    );
    let _ = writeln!(
        md,
        "| thumbnails fairness | {} | slowest user's time to all thumbnails / fastest user's |",
        opt(v.thumb_fairness, 3)
    );
    let _ = writeln!(md, "| ideal | {} s | processor CPU seconds over the run / cores (the time the pipeline's work would take if it kept every core busy and nothing else ran) |", opt(v.ideal_secs, 1));
    let _ = writeln!(md, "| ideal_ratio | {} | slowest user's completion time (run start → every photo done, as its SSE stream showed) / ideal |", opt(v.ideal_ratio, 3));
    let _ = writeln!(md, "| thumbnails ideal_ratio | {} | slowest user's time to all thumbnails / ideal (same ideal: it includes the embed work) |", opt(v.thumbs_ideal_ratio, 3));
    let _ = writeln!(
        md,
        "| fairness | {} | slowest user's completion time / fastest user's (1 = perfectly fair) |",
        opt(v.fairness, 3)
    );
    let _ = writeln!(md, "| Jain's index | {} | (Σx)²/(n·Σx²) over per-user throughput x = photos / completion time (1 = fair) |", opt(v.jain, 3));
    let _ = writeln!(md, "| lost | {} | photos whose PUT was acknowledged but that never got their final stage event on Kafka or were never counted done by status-api{} |", v.lost, if info.timed_out { " (**the run timed out: this includes photos still unfinished at the timeout**)" } else { "" });
    let _ = writeln!(md, "| double | {} | duplicate stage events on Kafka ({}) + photos status-api counted beyond those uploaded ({}) |", v.double, v.double_events, v.double_status);
    let _ = writeln!(
        md,
        "| failed | uploads {}, thumbnails {}, embeddings {} | recorded failures (not lost) |\n",
        v.failed_uploads, v.failed_thumbnails, v.failed_embeddings
    );

    let _ = writeln!(md, "## Per user\n\nTimes in seconds. *after last upload*: from the user's last acknowledged PUT to the SSE event showing every photo thumbnailed / embedded.\n");
    let _ = writeln!(md, "| user | uploaded | upload failed | upload duration | thumbnails done after last upload | embeddings done after last upload | completion (from run start) | thumb p50 / p95 / max | embed p50 / p95 / max | thumb failed | embed failed |\n|---|---|---|---|---|---|---|---|---|---|---|");
    for u in users {
        let lat = stage_latencies(log, Some(&u.user));
        let trip = |s: &[f64]| {
            format!(
                "{} / {} / {}",
                opt(percentile(s, 50.0), 2),
                opt(percentile(s, 95.0), 2),
                opt(s.last().copied(), 2)
            )
        };
        let after =
            |t: Option<f64>| opt(t.zip(u.last_upload_done).map(|(t, l)| (t - l).max(0.0)), 1);
        let _ = writeln!(
            md,
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
            u.user,
            u.uploaded_ok,
            u.upload_failed,
            opt(u.upload_secs(), 1),
            after(u.thumbs_done_at),
            after(u.embeds_done_at),
            opt(u.completion_at(info.expect_embeddings), 1),
            trip(&lat[1]),
            trip(&lat[2]),
            u.status.thumbnails.failed,
            u.status.embeddings.failed,
        );
    }
    let _ = writeln!(md);

    let lat = stage_latencies(log, None);
    let _ = writeln!(md, "## Stages\n\nPer-photo latency from the object's upload (B2 event time, `uploaded_at_ms`) to the stage's event (`received_at_ms` for ingest, `finished_at_ms` otherwise), read from `photos.uploaded` / `photos.thumbnailed` / `photos.embedded`. Throughput: photos through the stage / (its last event − run start).\n");
    let _ = writeln!(
        md,
        "| stage | photos | p50 s | p95 s | max s | photos/s |\n|---|---|---|---|---|---|"
    );
    let total_up: u64 = users.iter().map(|u| u.uploaded_ok).sum();
    let up_span = users
        .iter()
        .filter_map(|u| u.last_upload_done)
        .fold(0.0f64, f64::max);
    let _ = writeln!(
        md,
        "| S3 PUT (tool) | {} | | | | {} |",
        total_up,
        opt((up_span > 0.0).then(|| total_up as f64 / up_span), 2)
    );
    let rates = [
        stage_rate(log, info.start_wall_ms, |p| p.received_at_ms),
        stage_rate(log, info.start_wall_ms, |p| p.thumb_finished_ms),
        stage_rate(log, info.start_wall_ms, |p| p.embed_finished_ms),
    ];
    for (i, name) in ["ingest (webhook → photos.uploaded)", "thumbnail", "embed"]
        .iter()
        .enumerate()
    {
        let s = &lat[i];
        let _ = writeln!(
            md,
            "| {name} | {} | {} | {} | {} | {} |",
            rates[i].0,
            opt(percentile(s, 50.0), 2),
            opt(percentile(s, 95.0), 2),
            opt(s.last().copied(), 2),
            opt(rates[i].1, 2)
        );
    }
    let _ = writeln!(md);

    if let Some(c) = capacity {
        md.push_str(&c.markdown());
    }
    let _ = writeln!(md, "## Processes\n\nSampled from `/proc/PID/stat` and `/proc/PID/status` once a second over the run.\n");
    let _ = writeln!(md, "| process | CPU s | mean CPU % of one core | peak RSS MiB | RSS at end MiB |\n|---|---|---|---|---|");
    for (name, u) in usage {
        let _ = writeln!(
            md,
            "| {name} | {:.1} | {:.0} | {:.0} | {:.0} |",
            u.cpu_used(),
            u.cpu_used() / info.wall_secs.max(1e-9) * 100.0,
            u.rss_peak_mib,
            u.rss_end_mib
        );
    }
    let _ = writeln!(md);

    let _ = writeln!(md, "## Charts\n");
    for (file, title) in [
        ("uploads.svg", "uploads acknowledged per user"),
        ("thumbnails.svg", "thumbnails done per user (SSE)"),
        ("embeddings.svg", "embeddings done per user (SSE)"),
        ("cpu.svg", "CPU per process"),
    ] {
        let _ = writeln!(md, "![{title}]({file})\n");
    }

    let failures: Vec<String> = log
        .photos
        .values()
        .filter_map(|p| {
            p.thumb_failure
                .as_ref()
                .map(|f| format!("thumbnail `{}`: {f}", p.key))
                .or_else(|| {
                    p.embed_failure
                        .as_ref()
                        .map(|f| format!("embed `{}`: {f}", p.key))
                })
        })
        .chain(
            users
                .iter()
                .flat_map(|u| u.upload_errors.iter().map(|e| format!("upload: {e}"))),
        )
        .chain(
            users
                .iter()
                .filter_map(|u| u.sse_error.as_ref().map(|e| format!("SSE {}: {e}", u.user))),
        )
        .take(30)
        .collect();
    if !failures.is_empty() {
        let _ = writeln!(md, "## Failures (first 30)\n");
        for f in failures {
            let _ = writeln!(md, "- {f}");
        }
    }
    std::fs::write(dir.join("report.md"), md)?;

    let per_user = |pick: &dyn Fn(&UserResult) -> Vec<(f64, f64)>| -> Vec<Series> {
        users
            .iter()
            .map(|u| Series {
                name: u.user.clone(),
                points: pick(u),
            })
            .collect()
    };
    std::fs::write(
        dir.join("uploads.svg"),
        line_chart(
            "Uploads acknowledged (S3 PUT)",
            "seconds since start",
            "photos",
            &per_user(&|u| {
                u.upload_timeline
                    .iter()
                    .map(|&(t, n)| (t, n as f64))
                    .collect()
            }),
        ),
    )?;
    std::fs::write(
        dir.join("thumbnails.svg"),
        line_chart(
            "Thumbnails done, as status-api's SSE showed them",
            "seconds since start",
            "photos",
            &per_user(&|u| {
                u.sse_timeline
                    .iter()
                    .map(|&(t, _, th, _)| (t, th as f64))
                    .collect()
            }),
        ),
    )?;
    std::fs::write(
        dir.join("embeddings.svg"),
        line_chart(
            "Embeddings done, as status-api's SSE showed them",
            "seconds since start",
            "photos",
            &per_user(&|u| {
                u.sse_timeline
                    .iter()
                    .map(|&(t, _, _, e)| (t, e as f64))
                    .collect()
            }),
        ),
    )?;
    let cpu: Vec<Series> = usage
        .iter()
        .map(|(name, u)| Series {
            name: name.clone(),
            points: u.samples.iter().map(|&(t, c, _)| (t, c)).collect(),
        })
        .collect();
    std::fs::write(
        dir.join("cpu.svg"),
        line_chart(
            "CPU per process",
            "seconds since start",
            "% of one core",
            &cpu,
        ),
    )?;

    let summary = serde_json::json!({
        "command": info.command,
        "started_utc": info.started_utc,
        "users": info.users,
        "photos_per_user": info.photos_per_user,
        "wall_secs": info.wall_secs,
        "timed_out": info.timed_out,
        "verdict": v,
        "upload_mbps": info.upload_mbps,
        "concurrency": info.concurrency,
        "capacity": capacity,
        "per_user": users.iter().map(|u| serde_json::json!({
            "user": u.user,
            "uploaded": u.uploaded_ok,
            "upload_failed": u.upload_failed,
            "upload_secs": u.upload_secs(),
            "thumbs_done_at": u.thumbs_done_at,
            "embeds_done_at": u.embeds_done_at,
            "last_upload_done": u.last_upload_done,
            "thumb_wait_s": u.thumb_wait(),
            "embed_wait_s": u.embed_wait(),
        })).collect::<Vec<_>>(),
        "processes": usage.iter().map(|(n, u)| (n.clone(), serde_json::json!({
            "cpu_secs": u.cpu_used(), "rss_peak_mib": u.rss_peak_mib,
        }))).collect::<serde_json::Map<_, _>>(),
    });
    std::fs::write(
        dir.join("summary.json"),
        serde_json::to_string_pretty(&summary)?,
    )?;
    Ok(())
}
