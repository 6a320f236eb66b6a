//! status-api against the real pipeline: embedded broker over TCP, S3 server with B2 webhook
//! emulation, the processor binary, status-api binary; browsers simulated by an SSE client
//! over HTTP; topics replayed with kcat; metrics scraped by a real Prometheus.

use devstack::testkit::*;
use futures::StreamExt;
use serde_json::Value;
use status_api::auth::TokenSigner;
use std::process::Command;
use std::time::{Duration, Instant};
use tokio::sync::mpsc;

const TIMEOUT: Duration = Duration::from_secs(90);

fn token(user: &str) -> String {
    TokenSigner::new(TOKEN_SECRET.as_bytes())
        .unwrap()
        .mint(user, 3600)
}

fn photo(name: &str) -> Vec<u8> {
    std::fs::read(corpus().join("photos").join(name)).unwrap()
}

/// A minimal EventSource: yields (id, data) of each `status` event.
async fn sse(
    url: String,
    last_event_id: Option<u64>,
) -> (reqwest::StatusCode, mpsc::UnboundedReceiver<(u64, Value)>) {
    let mut req = reqwest::Client::new()
        .get(url)
        .header("accept", "text/event-stream");
    if let Some(id) = last_event_id {
        req = req.header("last-event-id", id.to_string());
    }
    let resp = req.send().await.unwrap();
    let status = resp.status();
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        let mut body = resp.bytes_stream();
        let mut buf = String::new();
        while let Some(Ok(chunk)) = body.next().await {
            buf.push_str(&String::from_utf8_lossy(&chunk));
            while let Some(end) = buf.find("\n\n") {
                let frame: String = buf.drain(..end + 2).collect();
                let (mut id, mut data) = (None, String::new());
                for line in frame.lines() {
                    if let Some(v) = line.strip_prefix("id:") {
                        id = v.trim().parse().ok();
                    } else if let Some(v) = line.strip_prefix("data:") {
                        data.push_str(v.trim_start());
                    }
                }
                if let (Some(id), false) = (id, data.is_empty()) {
                    if tx.send((id, serde_json::from_str(&data).unwrap())).is_err() {
                        return;
                    }
                }
            }
        }
    });
    (status, rx)
}

async fn next_until(
    rx: &mut mpsc::UnboundedReceiver<(u64, Value)>,
    what: &str,
    pred: impl Fn(&Value) -> bool,
) -> Vec<(u64, Value)> {
    let mut seen = vec![];
    let deadline = Instant::now() + TIMEOUT;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, rx.recv()).await {
            Ok(Some(ev)) => {
                let done = pred(&ev.1);
                seen.push(ev);
                if done {
                    return seen;
                }
            }
            _ => panic!("timed out waiting for {what}; saw {seen:#?}"),
        }
    }
}

async fn status_json(stack: &Stack, user: &str) -> Value {
    reqwest::Client::new()
        .get(format!("{}/v1/users/{user}/status", stack.status_url()))
        .bearer_auth(token(user))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

/// Re-produce every record of `topic` into itself with kcat: a replay that duplicates all.
/// The records are read to the end first (as `scripts/replay` does): piped straight into the
/// producer, a consumer whose empty fetch is held, as Kafka holds it, reads its own replay
/// and never reaches the end.
fn kcat_duplicate_topic(brokers: &str, topic: &str) {
    let script = format!(
        "records=$(mktemp) && kcat -b {brokers} -C -t {topic} -o beginning -e -q -f '%k\\t%s\\n' > $records \
         && kcat -b {brokers} -P -t {topic} -K '\\t' < $records; st=$?; rm -f $records; exit $st"
    );
    let st = Command::new("bash")
        .arg("-c")
        .arg(&script)
        .status()
        .unwrap();
    assert!(st.success(), "kcat replay failed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn progress_is_live_exact_and_survives_duplicates_and_restarts() {
    let mut stack = Stack::start(workspace_bin("processor")).await;
    stack
        .start_status_api(&workspace_bin("status-api"), &[])
        .await;
    let url = format!(
        "{}/v1/users/u1/events?token={}",
        stack.status_url(),
        token("u1")
    );
    let (code, mut events) = sse(url.clone(), None).await;
    assert_eq!(code, 200);
    let first = next_until(&mut events, "initial snapshot", |_| true).await;
    assert_eq!(first[0].1["phase"], "idle");

    let names = [
        "S_dune_1680x1050.jpg",
        "M_kite_2560x1600.jpg",
        "P12_wine_o6_3024x4032.jpg",
        "S_storm_1920x1280.jpg",
    ];
    let n = 8;
    for i in 0..n {
        stack
            .upload(
                &format!("users/u1/photos/{i}-{}", names[i % 4]),
                photo(names[i % 4]),
            )
            .await;
    }
    stack
        .upload("users/u1/photos/broken.jpg", b"not a photo".to_vec())
        .await;
    let seen = next_until(&mut events, "done", |s| {
        s["phase"] == "done" && s["uploaded"] == n as u64 + 1
    })
    .await;
    assert!(
        seen.iter().any(|(_, s)| s["phase"] == "processing"),
        "never saw processing: {seen:#?}"
    );
    let ids: Vec<u64> = seen.iter().map(|(id, _)| *id).collect();
    assert!(
        ids.windows(2).all(|w| w[0] < w[1]),
        "ids must increase: {ids:?}"
    );
    let done = &seen.last().unwrap().1;
    assert_eq!(done["thumbnails"]["ok"], n as u64);
    assert_eq!(done["thumbnails"]["failed"], 1);
    assert_eq!(done["thumbnails_pending"], 0);
    let final_seq = seen.last().unwrap().0;

    // Replays: every event of every stage topic delivered a second time.
    for t in [&stack.topics.uploaded, &stack.topics.thumbnailed] {
        kcat_duplicate_topic(&stack.brokers, t);
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let after = status_json(&stack, "u1").await;
    assert_eq!(after["uploaded"], n as u64 + 1, "{after}");
    assert_eq!(after["thumbnails"]["ok"], n as u64);
    assert_eq!(after["seq"], final_seq, "duplicates must not count");

    // Crash and restart: the same counts, rebuilt from the topics.
    stack.kill_status_api();
    stack
        .start_status_api(&workspace_bin("status-api"), &[])
        .await;
    let rebuilt = status_json(&stack, "u1").await;
    assert_eq!(rebuilt, after, "restart must reproduce the counts exactly");

    // A client resuming with Last-Event-ID gets no stale repeat, then the next change.
    let (_, mut resumed) = sse(url.clone(), Some(final_seq)).await;
    stack
        .upload("users/u1/photos/late.jpg", photo("S_dune_1680x1050.jpg"))
        .await;
    let next = next_until(&mut resumed, "the change after resuming", |s| {
        s["uploaded"] == n as u64 + 2
    })
    .await;
    assert!(
        next.iter().all(|(id, _)| *id > final_seq),
        "resumed stream repeated old state: {next:#?}"
    );
    // And a fresh client gets the current snapshot at once.
    let (_, mut fresh) = sse(url, None).await;
    let now = next_until(&mut fresh, "snapshot", |_| true).await;
    assert!(now[0].1["uploaded"].as_u64().unwrap() >= n as u64 + 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_guard_each_users_status() {
    let mut stack = Stack::start(workspace_bin("processor")).await;
    stack
        .start_status_api(&workspace_bin("status-api"), &[])
        .await;
    let http = reqwest::Client::new();
    let base = stack.status_url();
    let get = |path: String, bearer: Option<String>| {
        let mut r = http.get(format!("{base}{path}"));
        if let Some(t) = bearer {
            r = r.bearer_auth(t);
        }
        r.send()
    };
    assert_eq!(
        get("/v1/users/u1/status".into(), None)
            .await
            .unwrap()
            .status(),
        401
    );
    assert_eq!(
        get("/v1/users/u1/status".into(), Some(token("u2")))
            .await
            .unwrap()
            .status(),
        403
    );
    let forged = TokenSigner::new(b"wrong-secret").unwrap().mint("u1", 3600);
    assert_eq!(
        get("/v1/users/u1/status".into(), Some(forged))
            .await
            .unwrap()
            .status(),
        401
    );
    assert_eq!(
        get("/v1/users/u1/status".into(), Some(token("u1")))
            .await
            .unwrap()
            .status(),
        200
    );
    let (code, _) = sse(
        format!("{base}/v1/users/u1/events?token={}", token("u2")),
        None,
    )
    .await;
    assert_eq!(code, 403);
    let (code, _) = sse(format!("{base}/v1/users/u1/events"), None).await;
    assert_eq!(code, 401);

    // The CLI mints tokens with the running server's secret.
    let out = Command::new(workspace_bin("status-api"))
        .args(["token", "--user", "u7"])
        .env("STATUS_TOKEN_SECRET", TOKEN_SECRET)
        .output()
        .unwrap();
    assert!(out.status.success());
    let cli_token = String::from_utf8(out.stdout).unwrap().trim().to_string();
    assert_eq!(
        get("/v1/users/u7/status".into(), Some(cli_token))
            .await
            .unwrap()
            .status(),
        200
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prometheus_scrapes_both_services() {
    let mut stack = Stack::start(workspace_bin("processor")).await;
    stack
        .start_status_api(&workspace_bin("status-api"), &[])
        .await;
    stack
        .upload("users/u5/photos/a.jpg", photo("S_dune_1680x1050.jpg"))
        .await;
    stack
        .wait_for_photos(&stack.topics.thumbnailed, 1, TIMEOUT)
        .await;
    let targets = [
        format!("127.0.0.1:{}", stack.processor_port),
        format!("127.0.0.1:{}", stack.status_port),
    ];
    for t in &targets {
        let body = reqwest::get(format!("http://{t}/metrics"))
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        let mut check = Command::new("promtool")
            .args(["check", "metrics"])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("promtool (Debian package prometheus) is installed");
        use std::io::Write;
        check
            .stdin
            .take()
            .unwrap()
            .write_all(body.as_bytes())
            .unwrap();
        let out = check.wait_with_output().unwrap();
        let text = String::from_utf8_lossy(&out.stdout).to_string()
            + &String::from_utf8_lossy(&out.stderr);
        assert!(
            out.status.success(),
            "promtool check metrics on {t}: {text}"
        );
    }
    let dir = tempfile::tempdir().unwrap();
    let config = format!(
        "global:\n  scrape_interval: 1s\nscrape_configs:\n  - job_name: photo-pipeline\n    static_configs:\n      - targets: ['{}', '{}']\n",
        targets[0], targets[1]
    );
    std::fs::write(dir.path().join("prometheus.yml"), config).unwrap();
    let port = free_port();
    let mut prom = Command::new("prometheus")
        .arg(format!(
            "--config.file={}",
            dir.path().join("prometheus.yml").display()
        ))
        .arg(format!(
            "--storage.tsdb.path={}",
            dir.path().join("data").display()
        ))
        .arg(format!("--web.listen-address=127.0.0.1:{port}"))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("prometheus (Debian package) is installed");
    let api = format!("http://127.0.0.1:{port}/api/v1");
    let start = Instant::now();
    let result = loop {
        let q: Value = match reqwest::get(format!("{api}/query?query=up")).await {
            Ok(r) => r.json().await.unwrap_or(Value::Null),
            Err(_) => Value::Null,
        };
        let ups: Vec<(String, String)> = q["data"]["result"]
            .as_array()
            .map(|a| {
                a.iter()
                    .map(|r| {
                        (
                            r["metric"]["instance"].as_str().unwrap_or("").to_string(),
                            r["value"][1].as_str().unwrap_or("").to_string(),
                        )
                    })
                    .collect()
            })
            .unwrap_or_default();
        let all_up = targets
            .iter()
            .all(|t| ups.iter().any(|(i, v)| i == t && v == "1"));
        if all_up {
            let q: Value = reqwest::get(format!("{api}/query?query=photos_processed_total"))
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            break q;
        }
        if start.elapsed() > Duration::from_secs(60) {
            prom.kill().ok();
            panic!("Prometheus did not scrape both targets: {ups:?}");
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    prom.kill().ok();
    prom.wait().ok();
    let series = result["data"]["result"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    assert!(
        series.iter().any(|s| s["value"][1] == "1"),
        "processed counter not scraped: {result}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dlq_redrive_with_scripts_replay_turns_a_failure_into_ok() {
    let mut stack = Stack::start(workspace_bin("processor")).await;
    stack
        .start_status_api(&workspace_bin("status-api"), &[])
        .await;
    // A broken upload fails and lands in the DLQ ...
    let key = "users/u6/photos/fixme.jpg";
    stack.upload(key, b"not yet a photo".to_vec()).await;
    stack.wait_for_photos(&stack.topics.dlq, 1, TIMEOUT).await;
    let failed = status_json(&stack, "u6").await;
    assert_eq!(
        (
            failed["thumbnails"]["failed"].as_u64(),
            failed["uploaded"].as_u64()
        ),
        (Some(1), Some(1)),
        "{failed}"
    );
    // ... the object is repaired (a new version, itself a new photo), and the DLQ is re-driven
    // with scripts/replay: the failed photo is processed again and now succeeds.
    stack.upload(key, photo("S_dune_1680x1050.jpg")).await;
    let script =
        std::path::Path::new(&std::env::var("CARGO_MANIFEST_DIR").expect("run under cargo"))
            .join("../scripts/replay");
    let st = Command::new(script)
        .arg("redrive-dlq")
        .env("KAFKA_BROKERS", &stack.brokers)
        .env("TOPIC_UPLOADED", &stack.topics.uploaded)
        .env("TOPIC_DLQ", &stack.topics.dlq)
        .status()
        .unwrap();
    assert!(st.success());
    let start = Instant::now();
    loop {
        let s = status_json(&stack, "u6").await;
        if s["thumbnails"]["ok"] == 2 {
            assert_eq!(
                (s["thumbnails"]["failed"].as_u64(), s["uploaded"].as_u64()),
                (Some(0), Some(2)),
                "{s}"
            );
            break;
        }
        assert!(
            start.elapsed() < TIMEOUT,
            "re-driven photo never succeeded: {s}"
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}
