//! The operators' replay recipes (docs/kafka.md, the replay recipes) run with Apache
//! Kafka's own tools (`scripts/kafka-cli`) against the real pipeline: read a stage topic from the
//! beginning, re-drive a dead letter into the thumbnail stage's input with the console producer
//! (key kept), and reprocess everything with `kafka-consumer-groups --reset-offsets` while the
//! processor is stopped, the counts staying exact.
//!
//! Needs Apache Kafka in `TEST_KAFKA_BROKERS` (the test command's Apache Kafka suite starts
//! one with `scripts/kafka up` and runs this with `--ignored`).

use devstack::testkit::*;
use serde_json::Value;
use status_api::auth::TokenSigner;
use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const TIMEOUT: Duration = Duration::from_secs(120);

fn kafka_cli() -> PathBuf {
    PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").expect("run under cargo"))
        .join("../scripts/kafka-cli")
}

/// Run a Kafka tool; its stdout, or a panic with its stderr.
fn cli(args: &[&str], stdin: Option<&str>) -> String {
    try_cli(args, stdin).unwrap_or_else(|e| panic!("kafka-cli {args:?} failed: {e}"))
}

/// Run a Kafka tool: its stdout, or its stderr if it failed.
fn try_cli(args: &[&str], stdin: Option<&str>) -> Result<String, String> {
    let mut child = Command::new(kafka_cli())
        .args(args)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("scripts/kafka-cli");
    if let Some(input) = stdin {
        child
            .stdin
            .take()
            .unwrap()
            .write_all(input.as_bytes())
            .unwrap();
    }
    let out = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    // Some failures (e.g. a group still active) are reported on stdout with status 0.
    if out.status.success() && !stdout.contains("Error:") {
        Ok(stdout)
    } else {
        Err(format!("{stdout}{}", String::from_utf8_lossy(&out.stderr)))
    }
}

/// `key<TAB>value` lines of a topic, from the beginning, with the console consumer.
fn consume_keyed(brokers: &str, topic: &str) -> Vec<(String, Value)> {
    cli(
        &[
            "kafka-console-consumer",
            "--bootstrap-server",
            brokers,
            "--topic",
            topic,
            "--from-beginning",
            "--timeout-ms",
            "8000",
            "--property",
            "print.key=true",
        ],
        None,
    )
    .lines()
    .filter(|l| !l.trim().is_empty())
    .map(|l| {
        let (k, v) = l.split_once('\t').unwrap_or_else(|| panic!("no key: {l}"));
        (k.to_string(), serde_json::from_str(v).unwrap())
    })
    .collect()
}

async fn status(stack: &Stack, user: &str) -> Value {
    reqwest::Client::new()
        .get(format!("{}/v1/users/{user}/status", stack.status_url()))
        .bearer_auth(
            TokenSigner::new(TOKEN_SECRET.as_bytes())
                .unwrap()
                .mint(user, 3600),
        )
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

async fn wait_status(stack: &Stack, user: &str, what: &str, ok: impl Fn(&Value) -> bool) -> Value {
    let start = Instant::now();
    loop {
        let s = status(stack, user).await;
        if ok(&s) {
            return s;
        }
        assert!(start.elapsed() < TIMEOUT, "{what}: {s}");
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs Apache Kafka in TEST_KAFKA_BROKERS (scripts/test, Apache Kafka suite)"]
async fn replay_recipes_with_the_kafka_cli_keep_counts_exact() {
    let brokers = std::env::var("TEST_KAFKA_BROKERS")
        .ok()
        .filter(|b| !b.is_empty())
        .expect("TEST_KAFKA_BROKERS: an Apache Kafka broker");
    let mut stack = Stack::start(workspace_bin("processor")).await;
    assert_eq!(stack.brokers, brokers);
    stack
        .start_status_api(&workspace_bin("status-api"), &[])
        .await;
    let photo = |n: &str| std::fs::read(corpus().join("photos").join(n)).unwrap();
    for i in 0..3 {
        stack
            .upload(
                &format!("users/cli1/photos/{i}.jpg"),
                photo("S_dune_1680x1050.jpg"),
            )
            .await;
    }
    let broken = "users/cli1/photos/broken.jpg";
    stack.upload(broken, b"not a photo yet".to_vec()).await;
    let before = wait_status(&stack, "cli1", "4 photos through", |s| {
        s["thumbnails"]["ok"] == 3 && s["thumbnails"]["failed"] == 1
    })
    .await;

    // 1. Read a stage topic from the beginning: every ThumbnailDone, keyed by its user.
    let done = consume_keyed(&brokers, &stack.topics.thumbnailed);
    assert_eq!(done.len(), 4, "{done:?}");
    assert!(done
        .iter()
        .all(|(k, v)| k == "cli1" && v["user_id"] == "cli1"));

    // 2. Re-drive the dead letter: the original upload event, key kept, into the stage's
    // input with the console producer (after the object was repaired).
    stack.upload(broken, photo("S_dune_1680x1050.jpg")).await;
    let dead = consume_keyed(&brokers, &stack.topics.dlq);
    assert_eq!(dead.len(), 1, "{dead:?}");
    let redrive: String = dead
        .iter()
        .map(|(k, v)| format!("{k}\t{}\n", v["original"]))
        .collect();
    cli(
        &[
            "kafka-console-producer",
            "--bootstrap-server",
            &brokers,
            "--topic",
            &stack.topics.uploaded,
            "--property",
            "parse.key=true",
            "--property",
            "key.separator=\t",
        ],
        Some(&redrive),
    );
    // The repaired object is a new version (a new photo, counted as an upload) and the
    // re-driven one now succeeds: 5 uploads, 5 ok, no failure left.
    let repaired = wait_status(&stack, "cli1", "re-driven photo ok", |s| {
        s["thumbnails"]["ok"] == 5 && s["thumbnails"]["failed"] == 0
    })
    .await;
    assert_eq!(repaired["uploaded"], 5, "{repaired}");

    // 3. Reprocess everything: stop the processor, move its group back to the earliest offsets
    // with kafka-consumer-groups, start it again. Every photo is thumbnailed a second time;
    // the counts do not move.
    assert!(stack.stop_processor().success());
    // A static member (KAFKA_GROUP_INSTANCE_ID) does not leave the group when it stops: the
    // group stays active until its session times out (10 s), and Kafka refuses to reset an
    // active group's offsets. So the reset is retried until the group is empty.
    let start = Instant::now();
    let reset = loop {
        let tried = try_cli(
            &[
                "kafka-consumer-groups",
                "--bootstrap-server",
                &brokers,
                "--group",
                &stack.topics.group,
                "--topic",
                &stack.topics.uploaded,
                "--reset-offsets",
                "--to-earliest",
                "--execute",
            ],
            None,
        );
        match tried {
            Ok(out) => break out,
            Err(e) => {
                assert!(
                    start.elapsed() < Duration::from_secs(60),
                    "reset refused: {e}"
                );
                tokio::time::sleep(Duration::from_secs(2)).await;
            }
        }
    };
    assert!(reset.contains(&stack.topics.uploaded), "{reset}");
    let events_before = consume_keyed(&brokers, &stack.topics.thumbnailed).len();
    stack.start_processor().await;
    let start = Instant::now();
    loop {
        let n = consume_keyed(&brokers, &stack.topics.thumbnailed).len();
        // 6 upload events (4 + the repaired version + the re-driven one): all processed again.
        if n >= events_before + 6 {
            break;
        }
        assert!(start.elapsed() < TIMEOUT, "reprocessing: {n} ThumbnailDone");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let after = status(&stack, "cli1").await;
    for field in ["uploaded", "thumbnails"] {
        assert_eq!(after[field], repaired[field], "{field}: {after}");
    }
    assert_ne!(before["thumbnails"], after["thumbnails"]);

    // The group has caught up: lag 0 on every partition.
    let describe = cli(
        &[
            "kafka-consumer-groups",
            "--bootstrap-server",
            &brokers,
            "--describe",
            "--group",
            &stack.topics.group,
        ],
        None,
    );
    let lags: Vec<&str> = describe
        .lines()
        .filter(|l| l.contains(&stack.topics.uploaded))
        .filter_map(|l| l.split_whitespace().nth(5))
        .collect();
    assert!(
        !lags.is_empty() && lags.iter().all(|l| *l == "0" || *l == "-"),
        "{describe}"
    );
}
