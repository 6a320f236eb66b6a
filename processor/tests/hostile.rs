//! Bad input (issue 7, suite 3): the generated hostile corpus (`devstack::hostile`) is uploaded
//! for one user while another user's normal photos flow, through the real stack (broker, S3
//! server with B2 webhook emulation, the processor running ingest + thumbnail + embed).
//!
//! Asserted: every hostile photo ends with exactly the outcome the corpus states (`failed` with
//! its specific reason, or `ok` where the file is a valid image) within [`PER_PHOTO_LIMIT_MS`];
//! every hostile webhook body gets its HTTP status and enqueues nothing; keys outside the photo
//! prefix never become photos; the processor neither crashes nor exceeds [`RSS_BOUND_MIB`] of
//! peak resident memory; the other user's photos all complete, with embeddings.

mod common;

use common::*;
use devstack::hostile::{self, Expect};
use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

const HOSTILE: &str = "hostile";
const CALM: &str = "calm";
/// The thumbnail stage's own work on one photo (download, decode/resize/encode, upload, hook:
/// the event's `timings`), issue 7's "within 5 s": no hostile file may hang a worker or be
/// retried. Upload-to-done time also includes queueing behind the other ~50 photos uploaded at
/// the same moment on a 2-core machine; it is printed, and bounded by [`TIMEOUT`].
const PER_PHOTO_LIMIT_MS: f64 = 5_000.0;
/// The same for hostile files that are valid images and so are fully decoded (4 MB of EXIF,
/// CMYK conversion): the tests run a debug build of the processor on a shared 2-core machine,
/// where these took up to 6 s; a hang or a retry loop would still show.
const VALID_ODD_LIMIT_MS: f64 = 15_000.0;
/// Peak RSS (`VmHWM`) the processor may reach over the whole run, with its default settings.
/// Measured here: 1.06-1.26 GiB with thumbnails shrunk on load and one embed worker; 1.58 GiB
/// since the thumbnail stage decodes at full size to hand the embed input over (decode once,
/// up to 512 MB of inputs waiting in memory) and the embed stage runs one worker per core.
/// A decompression bomb that got through would need gigabytes more (50,000x50,000 RGB is
/// 7.5 GB).
const RSS_BOUND_MIB: u64 = 2_048;
const TIMEOUT: Duration = Duration::from_secs(180);

const CALM_PHOTOS: [&str; 6] = [
    "P12_dragonfly_o1_4032x3024.jpg",
    "S_dune_1680x1050.jpg",
    "M_kite_2560x1600.jpg",
    "L_friends_2056x3088.jpg",
    "PNG_dune_photo_1680x1050.png",
    "S_storm_1920x1280.jpg",
];

/// Peak resident set size of a process, in KiB, from `/proc/<pid>/status`.
fn vm_hwm_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("proc status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmHWM line")
}

async fn put(stack: &Stack, key: &str, body: Vec<u8>, content_type: &str) {
    stack
        .s3_client()
        .put_object()
        .bucket(BUCKET)
        .key(key)
        .content_type(content_type)
        .body(body.into())
        .send()
        .await
        .unwrap_or_else(|e| panic!("PUT {key}: {e:?}"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_uploads_fail_cleanly_while_other_users_flow() {
    let models = processor::embed::default_model_dir();
    let profile = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("profiles/arcface112.json");
    let (models_s, profile_s) = (models.display().to_string(), profile.display().to_string());
    let mut stack = stack_with(vec![
        ("PROCESSOR_STAGES", "ingest,thumbnail,embed"),
        ("MODEL_DIR", &models_s),
        ("EMBED_PROFILE", &profile_s),
    ])
    .await;
    let pid = stack.processor.as_ref().unwrap().id();
    let photos = hostile::photos(&corpus());
    assert!(photos.len() >= 30, "the corpus has {} photos", photos.len());

    // The calm user's photos and the hostile user's files go up at the same time.
    let calm = async {
        for name in CALM_PHOTOS {
            let body = std::fs::read(corpus().join("photos").join(name)).unwrap();
            put(
                &stack,
                &format!("users/{CALM}/photos/{name}"),
                body,
                "image/jpeg",
            )
            .await;
        }
    };
    let hostile_uploads = async {
        for p in &photos {
            let key = format!("users/{HOSTILE}/photos/{}", p.name);
            put(&stack, &key, p.bytes.clone(), p.content_type).await;
        }
        // The S3 server may refuse some of these keys itself; those it stores are notified.
        for key in hostile::hostile_keys(HOSTILE) {
            let _ = stack
                .s3_client()
                .put_object()
                .bucket(BUCKET)
                .key(&key)
                .body(hostile::jpeg(64, 64).into())
                .send()
                .await;
        }
    };
    tokio::join!(calm, hostile_uploads);

    // Hostile webhook bodies, correctly signed: each gets its status, none enqueues anything.
    let http = reqwest::Client::new();
    let webhooks = hostile::webhooks(BUCKET, HOSTILE);
    for w in &webhooks {
        let sig = devstack::b2::signature(SECRET.as_bytes(), &w.body);
        let r = http
            .post(stack.webhook_url())
            .header("x-bz-event-notification-signature", sig)
            .header("content-type", "application/json")
            .body(w.body.clone())
            .send()
            .await
            .unwrap_or_else(|e| panic!("webhook {}: {e}", w.name));
        assert_eq!(
            r.status().as_u16(),
            w.status,
            "webhook {} ({})",
            w.name,
            w.about
        );
        if w.status == 200 {
            let reply: serde_json::Value = r.json().await.unwrap();
            assert_eq!(reply["accepted"], 0, "webhook {}: {reply}", w.name);
            assert_eq!(
                reply["rejected"].as_array().map(Vec::len),
                Some(w.rejected),
                "webhook {} ({}): {reply}",
                w.name,
                w.about
            );
        }
    }

    let want = photos.len() + CALM_PHOTOS.len();
    let done = stack
        .wait_for_photos(&stack.topics.thumbnailed, want, TIMEOUT)
        .await;
    let by_key: BTreeMap<String, &serde_json::Value> = done
        .iter()
        .map(|e| (e["source_key"].as_str().unwrap().to_string(), e))
        .collect();

    // Exactly the uploaded photos became events: no hostile key, no webhook body.
    let uploaded: BTreeSet<String> = stack
        .read_topic(&stack.topics.uploaded)
        .iter()
        .map(|e| e["key"].as_str().unwrap().to_string())
        .collect();
    let expected_keys: BTreeSet<String> = photos
        .iter()
        .map(|p| format!("users/{HOSTILE}/photos/{}", p.name))
        .chain(
            CALM_PHOTOS
                .iter()
                .map(|n| format!("users/{CALM}/photos/{n}")),
        )
        .collect();
    assert_eq!(
        uploaded, expected_keys,
        "photos.uploaded holds exactly the photos"
    );

    let mut problems = vec![];
    let mut slowest = (0i64, String::new());
    let mut slowest_work = 0f64;
    let mut slowest_failure = 0f64;
    let mut ok_photo_ids = vec![];
    for p in &photos {
        let key = format!("users/{HOSTILE}/photos/{}", p.name);
        let Some(e) = by_key.get(&key) else {
            problems.push(format!("{}: no ThumbnailDone", p.name));
            continue;
        };
        assert_matches_schema(schemas::json_schema::THUMBNAIL_DONE, e);
        let took = e["finished_at_ms"].as_i64().unwrap() - e["uploaded_at_ms"].as_i64().unwrap();
        if took > slowest.0 {
            slowest = (took, p.name.clone());
        }
        let work: f64 = [
            "download_ms",
            "decode_resize_encode_ms",
            "upload_ms",
            "hook_ms",
        ]
        .iter()
        .map(|k| e["timings"][k].as_f64().unwrap_or(0.0))
        .sum();
        let limit = match p.expect {
            Expect::Ok => VALID_ODD_LIMIT_MS,
            Expect::Failed(_) => {
                slowest_failure = slowest_failure.max(work);
                PER_PHOTO_LIMIT_MS
            }
        };
        slowest_work = slowest_work.max(work);
        if work > limit {
            problems.push(format!(
                "{}: the stage worked on it for {work:.0} ms",
                p.name
            ));
        }
        match p.expect {
            Expect::Ok => {
                if e["status"] != "ok" {
                    problems.push(format!("{} ({}): want ok, got {e}", p.name, p.about));
                    continue;
                }
                let (w, h) = (
                    e["thumbnail"]["width"].as_u64().unwrap(),
                    e["thumbnail"]["height"].as_u64().unwrap(),
                );
                assert!(
                    (1..=400).contains(&w) && (1..=400).contains(&h),
                    "{}: {w}x{h}",
                    p.name
                );
                ok_photo_ids.push(e["photo_id"].as_str().unwrap().to_string());
            }
            Expect::Failed(reason) => {
                if e["status"] != "failed" || e["failure"]["reason"] != reason {
                    problems.push(format!(
                        "{} ({}): want failed/{reason}, got {} {}",
                        p.name, p.about, e["status"], e["failure"]
                    ));
                }
                let detail = e["failure"]["detail"].as_str().unwrap_or_default();
                assert!(!detail.is_empty(), "{}: a failure says why", p.name);
            }
        }
    }
    eprintln!(
        "hostile: {} photos + {} webhook bodies + {} keys tried; stage work per photo max {:.0} ms \
         ({:.0} ms for those that fail); upload-to-done max {} ms ({})",
        photos.len(),
        webhooks.len(),
        hostile::hostile_keys(HOSTILE).len(),
        slowest_work,
        slowest_failure,
        slowest.0,
        slowest.1
    );
    eprintln!(
        "hostile: processor peak RSS (VmHWM) so far {} MiB",
        vm_hwm_kib(pid) / 1024
    );
    assert!(
        problems.is_empty(),
        "{} problems:\n{}",
        problems.len(),
        problems.join("\n")
    );

    // Failures are dead-lettered; the calm user's photos all made it.
    let failed = photos.iter().filter(|p| p.expect != Expect::Ok).count();
    let dlq = stack
        .wait_for_photos(&stack.topics.dlq, failed, TIMEOUT)
        .await;
    assert_eq!(distinct_photos(&dlq), failed);
    for n in CALM_PHOTOS {
        let e = by_key[&format!("users/{CALM}/photos/{n}")];
        assert_eq!(e["status"], "ok", "{n}: {e}");
        ok_photo_ids.push(e["photo_id"].as_str().unwrap().to_string());
    }
    // Every thumbnailed photo, odd ones included, went through the embed stage too.
    let embedded = stack
        .wait_for_photos(&stack.topics.embedded, ok_photo_ids.len(), TIMEOUT)
        .await;
    for id in &ok_photo_ids {
        let e = embedded
            .iter()
            .find(|e| e["photo_id"] == id.as_str())
            .unwrap_or_else(|| panic!("no EmbeddingDone for {id}"));
        assert_matches_schema(schemas::json_schema::EMBEDDING_DONE, e);
        if e["user_id"] == CALM {
            assert_eq!(e["status"], "ok", "{e}");
        }
    }

    // Still alive, and memory stayed bounded.
    let child = stack.processor.as_mut().unwrap();
    assert!(child.try_wait().unwrap().is_none(), "the processor exited");
    let health = reqwest::get(format!("http://127.0.0.1:{}/healthz", stack.processor_port))
        .await
        .unwrap();
    assert!(health.status().is_success());
    let hwm_mib = vm_hwm_kib(pid) / 1024;
    eprintln!("hostile: processor peak RSS (VmHWM) {hwm_mib} MiB, bound {RSS_BOUND_MIB} MiB");
    assert!(hwm_mib < RSS_BOUND_MIB, "peak RSS {hwm_mib} MiB");
}

/// The renderer is reused across photos on each worker: a hostile file must not leave state
/// behind that changes the outcome of the next photo. Every hostile photo is rendered in turn
/// by one renderer and by a fresh one, and the outcomes must agree.
#[test]
fn one_renderer_gives_the_same_outcomes_as_fresh_ones() {
    use processor::thumbnail::render::{RenderOptions, Renderer};
    let outcome = |r: Result<processor::thumbnail::render::Rendered, schemas::Failure>| match r {
        Ok(t) => format!("ok {}x{}", t.width, t.height),
        Err(f) => format!("failed {}", f.reason.as_str()),
    };
    let photos = hostile::photos(&corpus());
    let mut shared = Renderer::new(RenderOptions::default()).unwrap();
    let mut differ = vec![];
    for (i, p) in photos.iter().enumerate() {
        let reused = outcome(shared.render(&p.bytes));
        let fresh = outcome(
            Renderer::new(RenderOptions::default())
                .unwrap()
                .render(&p.bytes),
        );
        if reused != fresh {
            let prev = if i > 0 {
                photos[i - 1].name.as_str()
            } else {
                "-"
            };
            differ.push(format!(
                "{} after {prev}: reused {reused}, fresh {fresh}",
                p.name
            ));
        }
    }
    assert!(differ.is_empty(), "{}", differ.join("\n"));
}
