//! Reliability suites (issue 7), on real components (see `common`):
//!
//! - **Crash:** the ingest, thumbnail and embed stages run as separate processes beside
//!   status-api; while photos of several users flow, a seeded random schedule `kill -9`s one of
//!   the four at a random moment, several times, restarting it each time.
//! - **Outages:** a broker restart (stopped, then started again on the same port from its
//!   snapshot; with `TEST_KAFKA_KIND=apache`, a real Apache Kafka broker killed with SIGKILL and
//!   restarted on its data), S3 answering 503 and then slowly for 30 s each, the DB hook down for a while;
//!   and, with a short retry budget, an outage that exhausts the retries: those photos end
//!   `failed` + dead letter, and `scripts/replay redrive-dlq` brings them through after recovery.
//!
//! Every scenario ends with the same check ([`Pipeline::check_invariants`]): each photo has
//! exactly one photo id, exactly one thumbnail object, an ok `ThumbnailDone` and an ok
//! `EmbeddingDone` (repeats of the same record are possible after a crash, at-least-once, and
//! must agree with each other), one DB-hook row, status-api counts exactly N for every stage and
//! user, and every consumer group's committed offsets reach the end of its input topic.
//!
//! The tests take minutes, mostly waiting out outages, so they are `#[ignore]`d in the plain
//! `cargo test --workspace` and run side by side by `scripts/test`'s reliability suite:
//! `cargo test -p processor --test reliability -- --ignored --test-threads 5`.
//! `TEST_KAFKA_BROKERS` (with `TEST_KAFKA_KIND=apache`) runs them on Apache Kafka, and
//! `TEST_KAFKA_GROUP_PROTOCOL` (`classic`, `consumer`) sets the stages' consumer-group protocol.
//! `CHAOS_PHOTOS`, `CHAOS_KILLS`, `CHAOS_SEED` size the crash run (`scripts/chaos` runs the full
//! 500-photo variant); the seed and every kill are printed.

mod common;

use common::*;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::Value;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

const USERS: usize = 5;

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Small photos with faces (downscaled copies of the face-model test photos and a corpus photo),
/// so hundreds fit the time budget on two cores while the embed stage still finds faces.
fn small_photos() -> Vec<(String, Vec<u8>)> {
    let models = processor::embed::default_model_dir().join("test_images");
    let sources = [
        models.join("t1.jpg"),
        models.join("obama.jpg"),
        corpus().join("photos/L_friends_2056x3088.jpg"),
        corpus().join("photos/S_dune_1680x1050.jpg"),
    ];
    sources
        .iter()
        .map(|path| {
            let bytes = std::fs::read(path)
                .unwrap_or_else(|e| panic!("{path:?}: {e} (run scripts/fetch-models)"));
            let img = image::load_from_memory(&bytes).expect("test photo decodes");
            let small = img.resize(480, 480, image::imageops::FilterType::Triangle);
            let mut out = std::io::Cursor::new(Vec::new());
            small
                .to_rgb8()
                .write_to(&mut out, image::ImageFormat::Jpeg)
                .expect("encode");
            let name = path.file_stem().unwrap().to_string_lossy().into_owned();
            (format!("{name}.jpg"), out.into_inner())
        })
        .collect()
}

/// Which process a kill or restart is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Victim {
    Ingest,
    Thumbnail,
    Embed,
    StatusApi,
}

const VICTIMS: [Victim; 4] = [
    Victim::Ingest,
    Victim::Thumbnail,
    Victim::Embed,
    Victim::StatusApi,
];

/// A processor process running some stages, restartable with the same settings.
struct StageProcess {
    stages: &'static str,
    port: u16,
    env: Vec<(String, String)>,
    child: Option<Child>,
}

impl StageProcess {
    async fn start(&mut self) {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_processor"));
        cmd.env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env(
                "RUST_LOG",
                std::env::var("TEST_PROCESSOR_LOG").unwrap_or_else(|_| "error".into()),
            )
            .env("PROCESSOR_STAGES", self.stages)
            .env("PROCESSOR_HTTP_ADDR", format!("127.0.0.1:{}", self.port))
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdout(Stdio::null())
            .stderr(Stdio::inherit());
        self.child = Some(cmd.spawn().expect("start processor"));
        let url = format!("http://127.0.0.1:{}/readyz", self.port);
        let started = Instant::now();
        loop {
            let ready = reqwest::get(&url)
                .await
                .is_ok_and(|r| r.status().is_success());
            if ready {
                return;
            }
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                panic!("{} stage exited before it was ready: {status}", self.stages);
            }
            assert!(
                started.elapsed() < Duration::from_secs(120),
                "{} stage not ready after 120 s",
                self.stages
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Restart the process if it exited on its own (what a supervisor such as Kubernetes does:
    /// a stage whose Kafka consumer failed fatally exits non-zero to be restarted).
    async fn supervise(&mut self) {
        let exited = self
            .child
            .as_mut()
            .and_then(|c| c.try_wait().ok().flatten());
        if let Some(status) = exited {
            eprintln!(
                "supervisor: {} stage exited on its own ({status}); restarting it",
                self.stages
            );
            self.child = None;
            self.start().await;
        }
    }

    /// SIGKILL: no shutdown, no final commit.
    fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            c.kill().ok();
            c.wait().ok();
        }
    }
}

impl Drop for StageProcess {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The whole pipeline of one scenario: the stack (whose own processor is the ingest stage, the
/// B2 webhook's target), the thumbnail and embed stages as processes of their own, status-api.
struct Pipeline {
    stack: Stack,
    thumbnail: StageProcess,
    embed: StageProcess,
    embed_group: String,
}

/// One uploaded photo.
#[derive(Debug, Clone)]
struct Upload {
    user: String,
    key: String,
    thumb_key: String,
}

impl Pipeline {
    /// Start everything; `stage_env` goes to the thumbnail and embed processes (it may replace
    /// `S3_ENDPOINT`, e.g. with a faulty S3 server), `brokers` names an external broker.
    async fn start(stage_env: &[(&str, &str)], brokers: Option<String>) -> Self {
        let ingest_env = vec![("PROCESSOR_STAGES", "ingest")];
        let stack = match brokers {
            Some(b) => Stack::start_on(env!("CARGO_BIN_EXE_processor"), ingest_env, b).await,
            None => Stack::start_with(env!("CARGO_BIN_EXE_processor"), ingest_env).await,
        };
        Self::around(stack, stage_env).await
    }

    async fn around(mut stack: Stack, stage_env: &[(&str, &str)]) -> Self {
        let models = processor::embed::default_model_dir();
        let profile = Path::new(env!("CARGO_MANIFEST_DIR")).join("profiles/arcface112.json");
        let embed_group = format!("{}.embed", stack.topics.group);
        // The stages' consumer-group protocol (the test command runs the crash test with both).
        let group_protocol =
            std::env::var("TEST_KAFKA_GROUP_PROTOCOL").unwrap_or_else(|_| "classic".into());
        let t = &stack.topics;
        let mut env: Vec<(String, String)> = [
            ("KAFKA_BROKERS", stack.brokers.as_str()),
            ("KAFKA_TOPIC_PARTITIONS", "3"),
            ("TOPIC_UPLOADED", &t.uploaded),
            ("TOPIC_THUMBNAILED", &t.thumbnailed),
            ("TOPIC_EMBEDDED", &t.embedded),
            ("TOPIC_DLQ", &t.dlq),
            ("THUMBNAIL_GROUP", &t.group),
            ("EMBED_GROUP", &embed_group),
            ("S3_ENDPOINT", &stack.s3_endpoint),
            ("S3_ACCESS_KEY", "test"),
            ("S3_SECRET_KEY", "testsecret"),
            ("DB_HOOK_URL", &stack.hook_url),
            ("DB_HOOK_SECRET", devstack::testkit::HOOK_SECRET),
            ("RETRY_BUDGET_SECS", "60"),
            ("MAX_IN_FLIGHT", "8"),
            ("CPU_WORKERS", "1"),
            ("SHUTDOWN_GRACE_SECS", "5"),
            ("MODEL_DIR", &models.display().to_string()),
            ("EMBED_PROFILE", &profile.display().to_string()),
            ("KAFKA_GROUP_PROTOCOL", &group_protocol),
        ]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        env.extend(
            stage_env
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string())),
        );
        let with_instance = |id: String| {
            let mut e = env.clone();
            e.push(("KAFKA_GROUP_INSTANCE_ID".into(), id));
            e
        };
        let mut thumbnail = StageProcess {
            stages: "thumbnail",
            port: free_port(),
            env: with_instance(format!("{}-thumbnail-0", t.group)),
            child: None,
        };
        let mut embed = StageProcess {
            stages: "embed",
            port: free_port(),
            env: with_instance(format!("{}-embed-0", t.group)),
            child: None,
        };
        thumbnail.start().await;
        embed.start().await;
        stack
            .start_status_api(&workspace_bin("status-api"), &[])
            .await;
        Self {
            stack,
            thumbnail,
            embed,
            embed_group,
        }
    }

    /// The HTTP port of a stage process of ours (thumbnail, embed).
    fn stage_port(&self, v: Victim) -> Option<u16> {
        match v {
            Victim::Thumbnail => Some(self.thumbnail.port),
            Victim::Embed => Some(self.embed.port),
            Victim::Ingest | Victim::StatusApi => None,
        }
    }

    async fn kill(&mut self, v: Victim) {
        match v {
            Victim::Ingest => self.stack.kill_processor(),
            Victim::Thumbnail => self.thumbnail.kill(),
            Victim::Embed => self.embed.kill(),
            Victim::StatusApi => self.stack.kill_status_api(),
        }
    }

    async fn restart(&mut self, v: Victim) {
        match v {
            Victim::Ingest => self.stack.start_processor().await,
            Victim::Thumbnail => self.thumbnail.start().await,
            Victim::Embed => self.embed.start().await,
            Victim::StatusApi => {
                self.stack
                    .start_status_api(&workspace_bin("status-api"), &[])
                    .await
            }
        }
    }

    /// Upload `count` photos spread over users, `pace` apart, numbered from `first`; returns
    /// what was uploaded. `hold` (if set) blocks the last `held` uploads until it becomes true.
    fn uploader(
        &self,
        first: usize,
        count: usize,
        pace: Duration,
        hold: Option<(Arc<AtomicBool>, usize)>,
    ) -> tokio::task::JoinHandle<Vec<Upload>> {
        let client = self.stack.s3_client();
        let photos = small_photos();
        tokio::spawn(async move {
            let mut done = vec![];
            for i in first..first + count {
                if let Some((flag, held)) = &hold {
                    if i >= first + count - held {
                        while !flag.load(Ordering::SeqCst) {
                            tokio::time::sleep(Duration::from_millis(50)).await;
                        }
                    }
                }
                let (name, body) = &photos[i % photos.len()];
                let user = format!("u{}", i % USERS);
                let key = format!("users/{user}/photos/{i:04}-{name}");
                let mut tries = 0;
                // The test's own uploads go to the healthy S3 server; retry just in case.
                while let Err(e) = client
                    .put_object()
                    .bucket(BUCKET)
                    .key(&key)
                    .body(body.clone().into())
                    .send()
                    .await
                {
                    tries += 1;
                    assert!(tries < 20, "PUT {key}: {e:?}");
                    tokio::time::sleep(Duration::from_millis(250)).await;
                }
                done.push(Upload {
                    thumb_key: format!("users/{user}/thumbs/{i:04}-{name}.jpg"),
                    user,
                    key,
                });
                tokio::time::sleep(pace).await;
            }
            done
        })
    }

    /// The stages' own count of S3 retries (`retries_total{op="s3_get"|"s3_put"}`).
    async fn s3_retries(&self) -> u64 {
        let mut n = 0.0;
        for port in [self.thumbnail.port, self.embed.port] {
            let text = reqwest::get(format!("http://127.0.0.1:{port}/metrics"))
                .await
                .unwrap()
                .text()
                .await
                .unwrap();
            n += text
                .lines()
                .filter(|l| l.starts_with("retries_total{op=\"s3_"))
                .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
                .sum::<f64>();
        }
        n as u64
    }

    /// Photos with an ok `EmbeddingDone`, as status-api counts them (summed over users).
    async fn embedded_ok(&self, users: &[String]) -> u64 {
        let mut n = 0;
        for u in users {
            if let Some(s) = self.status(u).await {
                n += s["lifetime"]["embeddings"]["ok"].as_u64().unwrap_or(0);
            }
        }
        n
    }

    async fn status(&self, user: &str) -> Option<Value> {
        let r = reqwest::Client::new()
            .get(format!(
                "{}/v1/users/{user}/status",
                self.stack.status_url()
            ))
            .bearer_auth(token(user))
            .timeout(Duration::from_secs(5))
            .send()
            .await
            .ok()?;
        r.status().is_success().then_some(())?;
        r.json().await.ok()
    }

    /// Wait until status-api counts every uploaded photo embedded (cheaper to poll than the
    /// topic; whether the count is right is checked afterwards, against the topics).
    async fn wait_all_embedded(&mut self, n: usize, timeout: Duration) {
        let start = Instant::now();
        loop {
            self.thumbnail.supervise().await;
            self.embed.supervise().await;
            let ok = self.embedded_ok(&users()).await;
            if ok >= n as u64 {
                return;
            }
            assert!(
                start.elapsed() < timeout,
                "timed out: status-api counts {ok} of {n} photos embedded after {timeout:?}"
            );
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }

    /// Committed offset of `group` on each partition of `topic`, and the partition's end.
    fn offsets(&self, group: &str, topic: &str) -> Vec<(i32, i64, i64)> {
        use rdkafka::consumer::{BaseConsumer, Consumer};
        use rdkafka::{ClientConfig, Offset, TopicPartitionList};
        let consumer: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", &self.stack.brokers)
            .set("group.id", group)
            .set("enable.auto.commit", "false")
            .create()
            .unwrap();
        let t = Duration::from_secs(10);
        let md = consumer.fetch_metadata(Some(topic), t).unwrap();
        let parts: Vec<i32> = md.topics()[0].partitions().iter().map(|p| p.id()).collect();
        let mut tpl = TopicPartitionList::new();
        for p in &parts {
            tpl.add_partition(topic, *p);
        }
        let committed = consumer.committed_offsets(tpl, t).unwrap();
        parts
            .iter()
            .map(|&p| {
                let (_, high) = consumer.fetch_watermarks(topic, p, t).unwrap();
                let c = match committed.find_partition(topic, p).map(|e| e.offset()) {
                    Some(Offset::Offset(o)) => o,
                    _ => 0,
                };
                (p, c, high)
            })
            .collect()
    }

    /// Wait until both stage groups have committed up to the end of their input topics.
    async fn wait_offsets_at_end(&self, timeout: Duration) {
        let t = &self.stack.topics;
        let start = Instant::now();
        loop {
            let thumb = self.offsets(&t.group, &t.uploaded);
            let embed = self.offsets(&self.embed_group, &t.thumbnailed);
            if thumb.iter().chain(&embed).all(|(_, c, h)| c == h) {
                return;
            }
            assert!(
                start.elapsed() < timeout,
                "committed offsets never reached the log end (partition, committed, end): \
                 thumbnail {thumb:?}, embed {embed:?}"
            );
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }

    /// The final invariants (see the module doc). `may_have_failed`: photos that went through
    /// the DLQ and were re-driven (their failed events stay on the topics; status-api must count
    /// them ok now). `exactly_once`: no process crashed and the broker stayed up, so no stage
    /// event may be repeated at all. Returns a one-line summary.
    async fn check_invariants(
        &mut self,
        uploads: &[Upload],
        may_have_failed: &HashSet<String>,
        exactly_once: bool,
    ) -> String {
        let n = uploads.len();
        // A debug-build embed stage does ~1 small photo a second on a busy 2-core machine.
        self.wait_all_embedded(n, Duration::from_secs(120 + 2 * n as u64))
            .await;
        self.wait_offsets_at_end(Duration::from_secs(60)).await;
        let t = &self.stack.topics;

        // One photo id per uploaded key, and no other photos.
        let uploaded = self.stack.read_topic(&t.uploaded);
        let mut ids_by_key: HashMap<&str, HashSet<&str>> = HashMap::new();
        for e in &uploaded {
            ids_by_key
                .entry(e["key"].as_str().unwrap())
                .or_default()
                .insert(e["photo_id"].as_str().unwrap());
        }
        assert_eq!(ids_by_key.len(), n, "uploaded keys on the topic");
        let mut photo_of_key = HashMap::new();
        let mut user_of_photo = HashMap::new();
        for u in uploads {
            let ids = ids_by_key
                .get(u.key.as_str())
                .unwrap_or_else(|| panic!("{} never reached {}", u.key, t.uploaded));
            assert_eq!(ids.len(), 1, "{}: photo ids {ids:?}", u.key);
            let id = ids.iter().next().unwrap().to_string();
            user_of_photo.insert(id.clone(), u.user.clone());
            photo_of_key.insert(u.key.clone(), id);
        }

        // Each stage: every photo has an ok event; repeats of a photo's event are the same
        // result; failed events only for re-driven photos.
        let stage_check = |topic: &str, what: &str| -> (usize, HashMap<String, u64>) {
            let records = self.stack.read_topic(topic);
            let mut by_photo: BTreeMap<String, Vec<&Value>> = BTreeMap::new();
            for e in &records {
                by_photo
                    .entry(e["photo_id"].as_str().unwrap().to_string())
                    .or_default()
                    .push(e);
            }
            let mut faces = HashMap::new();
            for (id, events) in &by_photo {
                assert!(
                    user_of_photo.contains_key(id),
                    "{what} for a photo nobody uploaded: {id}"
                );
                let ok: Vec<_> = events.iter().filter(|e| e["status"] == "ok").collect();
                assert!(!ok.is_empty(), "{what}: no ok event for {id}: {events:#?}");
                let failed = events.len() - ok.len();
                assert!(
                    !exactly_once || ok.len() == 1 || may_have_failed.contains(id),
                    "{what}: {} ok events for {id} without any crash or restart",
                    ok.len()
                );
                assert!(
                    failed == 0 || may_have_failed.contains(id),
                    "{what}: failed event for {id}, which was never re-driven: {events:#?}"
                );
                let first = ok[0];
                for e in &ok[1..] {
                    for field in ["thumbnail", "profile"] {
                        assert_eq!(e[field], first[field], "{what}: repeats of {id} disagree");
                    }
                    assert_eq!(
                        e["faces"].as_array().map(Vec::len),
                        first["faces"].as_array().map(Vec::len),
                        "{what}: repeats of {id} disagree on faces"
                    );
                }
                faces.insert(
                    id.clone(),
                    first["faces"].as_array().map(Vec::len).unwrap_or(0) as u64,
                );
            }
            assert_eq!(by_photo.len(), n, "{what}: photos with events");
            (records.len() - by_photo.len(), faces)
        };
        let (thumb_repeats, _) = stage_check(&t.thumbnailed, "ThumbnailDone");
        let (embed_repeats, faces) = stage_check(&t.embedded, "EmbeddingDone");

        // Exactly one thumbnail object per photo, and nothing else under thumbs/.
        let mut thumbs = HashSet::new();
        let mut pages = self
            .stack
            .s3_client()
            .list_objects_v2()
            .bucket(BUCKET)
            .prefix("users/")
            .into_paginator()
            .send();
        while let Some(page) = pages.next().await {
            for o in page.expect("list objects").contents() {
                let k = o.key().unwrap().to_string();
                if k.contains("/thumbs/") {
                    thumbs.insert(k);
                }
            }
        }
        let want: HashSet<String> = uploads.iter().map(|u| u.thumb_key.clone()).collect();
        assert_eq!(thumbs, want, "thumbnail objects");

        // The DB hook heard of every photo, of no other: one row per photo for the thumbnail
        // (idempotency key = photo id) and, where the embed stage calls it too, one for the
        // embeddings (`{photo_id}:embeddings`).
        let mut hooked: BTreeMap<String, HashSet<String>> = BTreeMap::new();
        for key in self.stack.hook.calls.lock().unwrap().iter() {
            let key = key.idempotency_key.clone().expect("idempotency key");
            let (id, event) = key.split_once(':').unwrap_or((&key, "thumbnail"));
            hooked
                .entry(event.to_string())
                .or_default()
                .insert(id.to_string());
        }
        let ids: HashSet<String> = photo_of_key.values().cloned().collect();
        assert_eq!(
            hooked.get("thumbnail"),
            Some(&ids),
            "DB hook rows (thumbnail)"
        );
        for (event, rows) in &hooked {
            assert_eq!(rows, &ids, "DB hook rows ({event})");
        }

        // status-api: exact counts per user, in a freshly replaying replica too.
        let mut per_user: BTreeMap<String, (u64, u64)> = BTreeMap::new();
        for (id, user) in &user_of_photo {
            let e = per_user.entry(user.clone()).or_default();
            e.0 += 1;
            e.1 += faces[id];
        }
        let start = Instant::now();
        loop {
            let mut mismatches = vec![];
            for (user, (photos, faces)) in &per_user {
                let s = self.status(user).await.unwrap_or(Value::Null);
                let l = &s["lifetime"];
                let got = (
                    l["uploaded"].as_u64(),
                    l["thumbnails"]["ok"].as_u64(),
                    l["thumbnails"]["failed"].as_u64(),
                    l["embeddings"]["ok"].as_u64(),
                    l["embeddings"]["failed"].as_u64(),
                    l["faces"].as_u64(),
                );
                let want = (
                    Some(*photos),
                    Some(*photos),
                    Some(0),
                    Some(*photos),
                    Some(0),
                    Some(*faces),
                );
                if got != want {
                    mismatches.push(format!("{user}: got {got:?}, want {want:?}"));
                }
            }
            if mismatches.is_empty() {
                break;
            }
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "status-api counts are not exact (uploaded, thumbs ok, thumbs failed, \
                 embeddings ok, embeddings failed, faces): {mismatches:#?}"
            );
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        let dlq = self.stack.read_topic(&t.dlq).len();
        format!(
            "photos={n} users={} lost=0 double_counted=0 repeated_events(thumbnailed={thumb_repeats}, \
             embedded={embed_repeats}, uploaded={}) dlq_records={dlq} faces={}",
            per_user.len(),
            uploaded.len() - n,
            faces.values().sum::<u64>()
        )
    }
}

/// Seconds from `since` until the stage process on `port` has finished a photo (its
/// `photos_processed_total`), polled every 200 ms for up to 2 minutes; None if it never did (it
/// was killed again, or exited).
async fn first_photo_after(port: u16, since: Instant) -> Option<f64> {
    let url = format!("http://127.0.0.1:{port}/metrics");
    while since.elapsed() < Duration::from_secs(120) {
        // It answered /readyz before we started: not answering now means it died.
        if photos_processed(&url).await? > 0 {
            return Some(since.elapsed().as_secs_f64());
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    None
}

fn token(user: &str) -> String {
    let out = Command::new(workspace_bin("status-api"))
        .args(["token", "--user", user])
        .env("STATUS_TOKEN_SECRET", TOKEN_SECRET)
        .output()
        .expect("status-api token");
    assert!(out.status.success(), "status-api token failed");
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

fn users() -> Vec<String> {
    (0..USERS).map(|i| format!("u{i}")).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "reliability suite: scripts/test runs it (with --ignored), scripts/chaos the full crash run"]
async fn crash_kill9_random_stages_loses_nothing() {
    let photos: usize = env_or("CHAOS_PHOTOS", 120);
    let kills: usize = env_or("CHAOS_KILLS", 5);
    let seed: u64 = env_or("CHAOS_SEED", rand::random());
    eprintln!("chaos: seed={seed} photos={photos} kills={kills} (rerun with CHAOS_SEED={seed})");
    let mut rng = StdRng::seed_from_u64(seed);
    let mut p = Pipeline::start(&[], None).await;

    // Uploads are paced so that the run outlasts the kills; the last tenth waits until every
    // kill is done, so each kill lands while photos are still being uploaded and processed.
    let kills_done = Arc::new(AtomicBool::new(false));
    // Uploads spread over ~20 s, about as long as the kill schedule takes.
    let pace = Duration::from_millis(env_or("CHAOS_PACE_MS", (20_000 / photos as u64).max(10)));
    let uploader = p.uploader(0, photos, pace, Some((kills_done.clone(), photos / 10 + 1)));
    let started = Instant::now();
    let mut log = vec![];
    let killed_count = Arc::new(AtomicUsize::new(0));
    let mut resumes = vec![];
    for k in 0..kills {
        let wait = Duration::from_millis(rng.random_range(500..3000));
        tokio::time::sleep(wait).await;
        let victim = VICTIMS[rng.random_range(0..VICTIMS.len())];
        let down = Duration::from_millis(rng.random_range(0..1500));
        let embedded = p.embedded_ok(&users()).await;
        assert!(
            !uploader.is_finished(),
            "kill {k} came after the last upload: the run is too short for the kill schedule"
        );
        p.kill(victim).await;
        killed_count.fetch_add(1, Ordering::SeqCst);
        let line = format!(
            "kill {} at {:.1}s: {victim:?} (kill -9), down {down:?}; status-api then counted {embedded} embeddings",
            k + 1,
            started.elapsed().as_secs_f64()
        );
        eprintln!("chaos: {line}");
        log.push(line);
        tokio::time::sleep(down).await;
        p.restart(victim).await;
        if let Some(port) = p.stage_port(victim) {
            resumes.push((
                victim,
                tokio::spawn(first_photo_after(port, Instant::now())),
            ));
        }
    }
    kills_done.store(true, Ordering::SeqCst);
    let uploads = uploader.await.unwrap();
    assert_eq!(uploads.len(), photos);
    let summary = p.check_invariants(&uploads, &HashSet::new(), false).await;
    // How long a restarted stage took to process again (rejoin the group, get its partitions).
    let mut resumed = vec![];
    for (victim, waited) in resumes {
        match waited.await.unwrap() {
            Some(s) => resumed.push(format!("{victim:?} {s:.1}s")),
            None => resumed.push(format!("{victim:?} -")),
        }
    }
    let protocol = std::env::var("TEST_KAFKA_GROUP_PROTOCOL").unwrap_or_else(|_| "classic".into());
    eprintln!(
        "chaos: RESULT seed={seed} kills={} group_protocol={protocol} {summary} in {:.0}s; \
         restarted stage processing again after: [{}] (- = killed again or exited first)",
        killed_count.load(Ordering::SeqCst),
        started.elapsed().as_secs_f64(),
        resumed.join(", ")
    );
}

/// A broker a test can take down and bring back on the same address: the embedded one
/// (stopped, then started again from its snapshot), or with `TEST_KAFKA_KIND=apache` an Apache
/// Kafka broker of the test's own, killed with SIGKILL and restarted on its data.
enum RestartableBroker {
    // The directory lives as long as the broker (its snapshot is there).
    Embedded(
        devstack::broker::RestartableBroker,
        #[allow(dead_code)] tempfile::TempDir,
    ),
    Apache(ApacheKafka),
}

impl RestartableBroker {
    fn start() -> Self {
        if testing_apache_kafka() {
            Self::Apache(ApacheKafka::start().expect("scripts/kafka up"))
        } else {
            let dir = tempfile::tempdir().unwrap();
            let b = devstack::broker::RestartableBroker::start("127.0.0.1:0", dir.path()).unwrap();
            Self::Embedded(b, dir)
        }
    }

    fn addr(&self) -> String {
        match self {
            Self::Embedded(b, _) => b.addr().to_string(),
            Self::Apache(b) => b.addr().to_string(),
        }
    }

    fn stop(&mut self) {
        match self {
            Self::Embedded(b, _) => b.stop().unwrap(),
            Self::Apache(b) => b.kill().unwrap(),
        }
    }

    fn restart(&mut self) {
        match self {
            Self::Embedded(b, _) => b.restart().unwrap(),
            Self::Apache(b) => b.restart().unwrap(),
        }
    }
}

/// The broker stopped mid-run (Apache Kafka: kill -9) and started again on the same port.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "reliability suite: scripts/test runs it (with --ignored), scripts/chaos the full crash run"]
async fn outage_broker_restart_mid_run_loses_nothing() {
    let mut broker = tokio::task::block_in_place(RestartableBroker::start);
    let mut p = Pipeline::start(&[], Some(broker.addr())).await;
    let uploader = p.uploader(0, 30, Duration::from_millis(150), None);
    // Some photos through, then the broker goes away for 5 s while uploads continue.
    p.stack
        .wait_for_photos(&p.stack.topics.thumbnailed, 3, Duration::from_secs(120))
        .await;
    let down_at = Instant::now();
    tokio::task::block_in_place(|| broker.stop());
    tokio::time::sleep(Duration::from_secs(5)).await;
    tokio::task::block_in_place(|| broker.restart());
    eprintln!(
        "outage: broker {} down for {:.1}s",
        broker.addr(),
        down_at.elapsed().as_secs_f64()
    );
    let uploads = uploader.await.unwrap();
    let summary = p.check_invariants(&uploads, &HashSet::new(), false).await;
    eprintln!("outage: RESULT broker restart: {summary}");
}

/// A second S3 server on the same objects, for the stages only: faults injected there hit the
/// processor while the test's uploads (and B2 notifications) keep working.
async fn faulty_s3_for(stack: &Stack) -> devstack::S3Server {
    devstack::S3Server::spawn(devstack::S3Config {
        addr: "127.0.0.1:0".into(),
        root: stack.data_dir().join("s3"),
        access_key: "test".into(),
        secret_key: "testsecret".into(),
        buckets: vec![BUCKET.into()],
        notify: None,
    })
    .await
    .unwrap()
}

async fn start_with_faulty_s3(stage_env: &[(&str, &str)]) -> (Pipeline, devstack::S3Server) {
    let stack = Stack::start_with(
        env!("CARGO_BIN_EXE_processor"),
        vec![("PROCESSOR_STAGES", "ingest")],
    )
    .await;
    let s3 = faulty_s3_for(&stack).await;
    let endpoint = format!("http://{}", s3.addr);
    let mut env = vec![("S3_ENDPOINT", endpoint.as_str())];
    env.extend_from_slice(stage_env);
    (Pipeline::around(stack, &env).await, s3)
}

/// S3 answers 503 SlowDown for 30 s, then every answer is delayed for 30 s; photos keep coming.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "reliability suite: scripts/test runs it (with --ignored), scripts/chaos the full crash run"]
async fn outage_s3_unavailable_then_slow_loses_nothing() {
    let (mut p, s3) = start_with_faulty_s3(&[]).await;
    let before = p.uploader(0, 10, Duration::from_millis(50), None);
    p.stack
        .wait_for_photos(&p.stack.topics.thumbnailed, 2, Duration::from_secs(120))
        .await;
    let outage = Instant::now();
    s3.faults.unavailable_for(Duration::from_secs(30));
    let during = p.uploader(10, 10, Duration::from_millis(1500), None);
    let mut uploads = before.await.unwrap();
    uploads.extend(during.await.unwrap());
    tokio::time::sleep(Duration::from_secs(30).saturating_sub(outage.elapsed())).await;
    let refused = s3.faults.injected();
    // Backoff, not hammering: over 30 s each S3 operation of a photo is retried ~12 times
    // (0.2 s doubling to 5 s, jittered), not every 0.2 s (150 times). At most 20 photos, each
    // with a GET in both stages and a PUT, were caught by the outage.
    let retries = p.s3_retries().await;
    assert!(refused > 0 && retries > 0, "the outage was never seen");
    assert!(
        retries <= 20 * 3 * 20,
        "{retries} S3 retries during a 30 s outage: retries do not back off"
    );
    s3.faults
        .slow_for(Duration::from_secs(30), Duration::from_millis(1500));
    let slow = p.uploader(20, 10, Duration::from_millis(1000), None);
    uploads.extend(slow.await.unwrap());
    let summary = p.check_invariants(&uploads, &HashSet::new(), true).await;
    eprintln!(
        "outage: RESULT s3 503 30s + slow 30s: requests_refused_503={refused} s3_retries_during_outage={retries} \
         faults_injected_total={} {summary}",
        s3.faults.injected()
    );
}

/// The DB hook answers 503 for 20 s, then recovers; retries (60 s budget) carry every photo.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "reliability suite: scripts/test runs it (with --ignored), scripts/chaos the full crash run"]
async fn outage_db_hook_down_then_recovers_loses_nothing() {
    let mut p = Pipeline::start(&[], None).await;
    let before = p.uploader(0, 10, Duration::from_millis(50), None);
    p.stack
        .wait_for_photos(&p.stack.topics.thumbnailed, 2, Duration::from_secs(120))
        .await;
    p.stack.hook.fail_for(Duration::from_secs(20));
    let during = p.uploader(10, 15, Duration::from_millis(500), None);
    let mut uploads = before.await.unwrap();
    uploads.extend(during.await.unwrap());
    let summary = p.check_invariants(&uploads, &HashSet::new(), true).await;
    let refused = p.stack.hook.refused_calls();
    assert!(refused > 0, "the hook outage was never seen");
    assert!(
        refused <= 25 * 15,
        "{refused} refused hook calls: retries do not back off"
    );
    eprintln!("outage: RESULT db hook down 20s: refused_calls={refused} {summary}");
}

/// With a 3 s retry budget, a 12 s S3 outage exhausts the retries: those photos end `failed`
/// with `storage_error` and a dead letter (in the thumbnail or the embed stage, wherever they
/// were). After recovery `scripts/replay redrive-dlq` re-drives them, and all end ok, counted once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "reliability suite: scripts/test runs it (with --ignored), scripts/chaos the full crash run"]
async fn retries_exhausted_go_to_dlq_and_redrive_completes_them() {
    let (mut p, s3) = start_with_faulty_s3(&[("RETRY_BUDGET_SECS", "3")]).await;
    let t = p.stack.topics.clone();
    let before = p.uploader(0, 10, Duration::from_millis(50), None);
    p.stack
        .wait_for_photos(&t.thumbnailed, 2, Duration::from_secs(120))
        .await;
    s3.faults.unavailable_for(Duration::from_secs(12));
    let during = p.uploader(10, 10, Duration::from_millis(300), None);
    let mut uploads = before.await.unwrap();
    uploads.extend(during.await.unwrap());
    tokio::time::sleep(Duration::from_secs(12)).await;
    // Every photo is now finished one way or the other: ok, or failed with a dead letter.
    let start = Instant::now();
    let dead = loop {
        let dlq = p.stack.read_topic(&t.dlq);
        let failed_thumbs: HashSet<String> = p
            .stack
            .read_topic(&t.thumbnailed)
            .iter()
            .filter(|e| e["status"] == "failed")
            .map(|e| e["photo_id"].as_str().unwrap().to_string())
            .collect();
        let failed_embeds: HashSet<String> = p
            .stack
            .read_topic(&t.embedded)
            .iter()
            .filter(|e| e["status"] == "failed")
            .map(|e| e["photo_id"].as_str().unwrap().to_string())
            .collect();
        let ok_thumbs = distinct_photos(
            &p.stack
                .read_topic(&t.thumbnailed)
                .into_iter()
                .filter(|e| e["status"] == "ok")
                .collect::<Vec<_>>(),
        );
        let ok_embeds = distinct_photos(
            &p.stack
                .read_topic(&t.embedded)
                .into_iter()
                .filter(|e| e["status"] == "ok")
                .collect::<Vec<_>>(),
        );
        // Settled: every photo's thumbnail finished, and every ok thumbnail's embedding too.
        if ok_thumbs + failed_thumbs.len() >= uploads.len()
            && ok_embeds + failed_embeds.len() >= ok_thumbs
            && dlq.len() >= failed_thumbs.len() + failed_embeds.len()
        {
            for d in &dlq {
                assert_eq!(d["failure"]["reason"], "storage_error", "{d}");
                assert_matches_schema(schemas::json_schema::DEAD_LETTER, d);
            }
            eprintln!(
                "dlq: {} thumbnail and {} embed failures, {} dead letters",
                failed_thumbs.len(),
                failed_embeds.len(),
                dlq.len()
            );
            break failed_thumbs
                .union(&failed_embeds)
                .cloned()
                .collect::<HashSet<_>>();
        }
        assert!(
            start.elapsed() < Duration::from_secs(120),
            "photos never settled after the outage"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    assert!(
        !dead.is_empty(),
        "a 12 s outage with a 3 s retry budget failed no photo"
    );
    // status-api shows the failures before the re-drive.
    let mut failed_shown = 0;
    for u in users() {
        let s = p.status(&u).await.unwrap();
        failed_shown += s["lifetime"]["thumbnails"]["failed"].as_u64().unwrap()
            + s["lifetime"]["embeddings"]["failed"].as_u64().unwrap();
    }
    assert_eq!(failed_shown, dead.len() as u64, "status-api failed counts");

    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/replay");
    let st = Command::new(script)
        .arg("redrive-dlq")
        .env("KAFKA_BROKERS", &p.stack.brokers)
        .env("TOPIC_UPLOADED", &t.uploaded)
        .env("TOPIC_THUMBNAILED", &t.thumbnailed)
        .env("TOPIC_EMBEDDED", &t.embedded)
        .env("TOPIC_DLQ", &t.dlq)
        .status()
        .unwrap();
    assert!(st.success(), "scripts/replay redrive-dlq failed");
    let summary = p.check_invariants(&uploads, &dead, true).await;
    eprintln!(
        "outage: RESULT retries exhausted: failed_then_redriven={} faults_injected={} {summary}",
        dead.len(),
        s3.faults.injected()
    );
}

/// Fair sharing across partitions: with a backlog of 5 users spread over 3 partitions, each
/// partition's backlog larger than the stage's whole lookahead (`MAX_BUFFERED`), every user
/// gets about a fifth of the first photos finished. (Records arrive a partition at a time;
/// were the lookahead filled from one partition, the users of the others would wait for that
/// whole partition.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "reliability suite: scripts/test runs it (with --ignored)"]
async fn a_backlog_is_shared_between_users_across_partitions() {
    let per_user = 30;
    let photos = USERS * per_user;
    let mut p = Pipeline::start(
        &[
            ("MAX_IN_FLIGHT", "1"),
            ("MAX_BUFFERED", "24"),
            ("CPU_WORKERS", "1"),
        ],
        None,
    )
    .await;
    // The backlog builds up while the thumbnail stage is down.
    p.kill(Victim::Thumbnail).await;
    let uploads = p
        .uploader(0, photos, Duration::from_millis(5), None)
        .await
        .unwrap();
    wait_for(Duration::from_secs(60), "the backlog in Kafka", || async {
        p.stack.read_topic(&p.stack.topics.uploaded).len() >= photos
    })
    .await;
    // Which partition each user's records are in (kcat: partition and key).
    let layout = std::process::Command::new("kcat")
        .args(["-b", &p.stack.brokers, "-C", "-t", &p.stack.topics.uploaded])
        .args(["-o", "beginning", "-e", "-q", "-f", "%p %k\n"])
        .output()
        .expect("kcat");
    let partitions: std::collections::BTreeSet<String> = String::from_utf8_lossy(&layout.stdout)
        .lines()
        .map(str::to_string)
        .collect();
    p.restart(Victim::Thumbnail).await;
    p.wait_all_embedded(photos, Duration::from_secs(300)).await;

    let mut done: Vec<(i64, String)> = p
        .stack
        .read_topic(&p.stack.topics.thumbnailed)
        .iter()
        .map(|r| {
            (
                r["finished_at_ms"].as_i64().unwrap(),
                r["user_id"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    done.sort();
    let first: Vec<&str> = done[..photos / 3].iter().map(|(_, u)| u.as_str()).collect();
    eprintln!("fairness: partition and user of the backlog {partitions:?}; first {} thumbnails by user: {first:?}", first.len());
    let fair = first.len() / USERS;
    for user in users() {
        let n = first.iter().filter(|u| **u == user).count();
        assert!(
            n >= fair / 2 && n <= fair * 2,
            "{user} had {n} of the first {} thumbnails, a fair share being {fair} ({first:?}): users are not served in turn",
            first.len()
        );
    }
    p.check_invariants(&uploads, &HashSet::new(), true).await;
}
