//! status-api's start-up replay of a large backlog: 200,000 stage events (uploads, thumbnails
//! with some failures, embeddings with faces carrying 512-float embeddings) over 12 partitions
//! of each stage topic, many fetches on every partition. A fresh status-api must become ready
//! and show every user's exact counts. The time bound is one only a stall can exceed (the
//! replay takes seconds); the replay's speed is measured by `scripts/bench-sse`.
//!
//! The broker is the embedded one, or `TEST_KAFKA_BROKERS` (the test command also runs this
//! against Apache Kafka).

use devstack::backlog::{self, BacklogSpec, BacklogTopics};
use devstack::testkit::*;
use serde_json::Value;
use status_api::auth::TokenSigner;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// A stall, not slowness: the replay of this backlog takes a few seconds.
const READY_WITHIN: Duration = Duration::from_secs(120);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fresh_status_api_replays_a_large_backlog_exactly() {
    let brokers = match std::env::var("TEST_KAFKA_BROKERS") {
        Ok(b) if !b.is_empty() => b,
        _ => devstack::spawn_broker("127.0.0.1:0", None)
            .unwrap()
            .to_string(),
    };
    let id = format!("{:08x}", rand::random::<u32>());
    let topics = BacklogTopics {
        uploaded: format!("r{id}.photos.uploaded"),
        thumbnailed: format!("r{id}.photos.thumbnailed"),
        embedded: format!("r{id}.photos.embedded"),
    };
    backlog::create_topics(&brokers, &topics, 12).await.unwrap();
    let spec = BacklogSpec {
        photos: 68_000,
        users: 300,
        failed_every: 50,
        faces_every: 4,
        faces: 2,
        embedding_dim: 512,
    };
    let produced = backlog::produce(&brokers, &topics, &spec, &format!("r{id}u"))
        .await
        .unwrap();
    assert!(produced.events >= 200_000, "{} events", produced.events);
    eprintln!(
        "backlog: {} events, {:.1} MiB",
        produced.events,
        produced.bytes as f64 / 1048576.0
    );

    let port = free_port();
    let mut child = Command::new(workspace_bin("status-api"))
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("RUST_LOG", "warn")
        .env("STATUS_HTTP_ADDR", format!("127.0.0.1:{port}"))
        .env("KAFKA_BROKERS", &brokers)
        .env("TOPIC_UPLOADED", &topics.uploaded)
        .env("TOPIC_THUMBNAILED", &topics.thumbnailed)
        .env("TOPIC_EMBEDDED", &topics.embedded)
        .env("STATUS_TOKEN_SECRET", TOKEN_SECRET)
        .env("STATUS_EXPECT_EMBEDDINGS", "true")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start status-api");
    let base = format!("http://127.0.0.1:{port}");
    let started = Instant::now();
    let http = reqwest::Client::new();
    let mut ready = false;
    while started.elapsed() < READY_WITHIN {
        if http
            .get(format!("{base}/readyz"))
            .send()
            .await
            .is_ok_and(|r| r.status().is_success())
        {
            ready = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let consumed = http
        .get(format!("{base}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let events: f64 = consumed
        .lines()
        .filter(|l| l.starts_with("events_consumed_total{"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum();
    if !ready {
        let _ = child.kill();
        panic!(
            "status-api not ready {READY_WITHIN:?} after start: {events} of {} events consumed (a stalled replay)",
            produced.events
        );
    }
    eprintln!(
        "replay of {} events: ready after {:.1} s",
        produced.events,
        started.elapsed().as_secs_f64()
    );
    assert_eq!(events as u64, produced.events, "every event applied once");

    let signer = TokenSigner::new(TOKEN_SECRET.as_bytes()).unwrap();
    for (user, want) in &produced.users {
        let s: Value = http
            .get(format!("{base}/v1/users/{user}/status"))
            .bearer_auth(signer.mint(user, 3600))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let got = (
            s["uploaded"].as_u64(),
            s["thumbnails"]["ok"].as_u64(),
            s["thumbnails"]["failed"].as_u64(),
            s["embeddings"]["ok"].as_u64(),
        );
        let want = (
            Some(want.uploaded),
            Some(want.thumbnails_ok),
            Some(want.thumbnails_failed),
            Some(want.embeddings_ok),
        );
        assert_eq!(got, want, "{user}: {s}");
    }
    let _ = child.kill();
    let _ = child.wait();
}
