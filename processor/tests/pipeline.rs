//! End-to-end: S3 PUT → B2 webhook (signed) → Kafka → thumbnail stage → thumbnail in S3 +
//! DB hook + ThumbnailDone on Kafka, on real components (see `common`).

mod common;

use common::*;
use std::time::Duration;

const TIMEOUT: Duration = Duration::from_secs(90);

fn photo(name: &str) -> Vec<u8> {
    std::fs::read(corpus().join("photos").join(name)).unwrap()
}

/// A PNG signature and a valid IHDR chunk declaring `w`×`h` RGB pixels, and no pixel data:
/// a decompression bomb's opening bytes.
fn png_header_only(w: u32, h: u32) -> Vec<u8> {
    fn crc32(data: &[u8]) -> u32 {
        let mut crc = !0u32;
        for &b in data {
            crc ^= b as u32;
            for _ in 0..8 {
                crc = if crc & 1 == 1 {
                    (crc >> 1) ^ 0xEDB8_8320
                } else {
                    crc >> 1
                };
            }
        }
        !crc
    }
    let mut chunk = b"IHDR".to_vec();
    chunk.extend_from_slice(&w.to_be_bytes());
    chunk.extend_from_slice(&h.to_be_bytes());
    chunk.extend_from_slice(&[8, 2, 0, 0, 0]);
    let mut png = b"\x89PNG\r\n\x1a\n\0\0\0\x0d".to_vec();
    png.extend_from_slice(&chunk);
    png.extend_from_slice(&crc32(&chunk).to_be_bytes());
    png
}

fn jpeg_dims(bytes: &[u8]) -> (u32, u32) {
    let img = image::load_from_memory(bytes).expect("thumbnail decodes");
    (img.width(), img.height())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uploads_become_thumbnails_with_events() {
    let stack = stack().await;
    // Upright sizes from the file names: the o6/o8 files store rotated pixels plus an EXIF tag.
    let cases = [
        ("P12_dragonfly_o1_4032x3024.jpg", (400, 300)),
        ("P12_elephants_o8_4032x3024.jpg", (400, 300)),
        ("P12_wine_o6_3024x4032.jpg", (300, 400)),
        ("S_dune_1680x1050.jpg", (400, 250)),
        ("L_friends_2056x3088.jpg", (266, 400)),
        ("PNG_dune_photo_1680x1050.png", (400, 250)),
    ];
    for (name, _) in &cases {
        stack
            .upload(&format!("users/u1/photos/{name}"), photo(name))
            .await;
    }
    let done = stack
        .wait_for_photos(&stack.topics.thumbnailed, cases.len(), TIMEOUT)
        .await;
    assert_eq!(
        done.len(),
        cases.len(),
        "one ThumbnailDone per photo: {done:#?}"
    );
    for event in &done {
        assert_matches_schema(schemas::json_schema::THUMBNAIL_DONE, event);
        assert_eq!(event["status"], "ok", "{event}");
        assert_eq!(event["user_id"], "u1");
    }
    for (name, (w, h)) in cases {
        let key = format!("users/u1/thumbs/{name}.jpg");
        let event = done
            .iter()
            .find(|e| e["source_key"] == format!("users/u1/photos/{name}"))
            .expect("event for photo");
        assert_eq!(event["thumbnail"]["key"], key);
        let thumb = stack
            .get_object(&key)
            .await
            .unwrap_or_else(|| panic!("{key} missing"));
        let dims = jpeg_dims(&thumb);
        assert!(
            dims.0.abs_diff(w) <= 1 && dims.1.abs_diff(h) <= 1,
            "{name}: got {dims:?}, want ({w}, {h})"
        );
        assert_eq!(
            (
                event["thumbnail"]["width"].as_u64().unwrap() as u32,
                event["thumbnail"]["height"].as_u64().unwrap() as u32
            ),
            dims
        );
    }
    // Every upload event validates too, and the DB hook was told once per photo.
    let uploaded = stack.read_topic(&stack.topics.uploaded);
    assert_eq!(uploaded.len(), cases.len());
    for e in &uploaded {
        assert_matches_schema(schemas::json_schema::PHOTO_UPLOADED, e);
    }
    assert_eq!(stack.hook.distinct_keys(), cases.len());
    // Each hook call was signed (the sink refuses others) and keeps the contract: the schema,
    // and the original's own size and media type.
    assert_eq!(
        stack
            .hook
            .unauthorized
            .load(std::sync::atomic::Ordering::SeqCst),
        0
    );
    for call in stack.hook.calls.lock().unwrap().iter() {
        assert_matches_schema(schemas::json_schema::HOOK_THUMBNAIL, &call.body);
        let up = uploaded
            .iter()
            .find(|u| u["photo_id"] == call.body["photo_id"])
            .unwrap();
        let name = up["key"].as_str().unwrap().rsplit('/').next().unwrap();
        assert_eq!(
            call.body["original_size_bytes"].as_u64().unwrap(),
            photo(name).len() as u64,
            "{name}"
        );
        let ext = name.rsplit('.').next().unwrap().replace("jpg", "jpeg");
        assert_eq!(call.body["original_content_type"], format!("image/{ext}"));
    }
    // Prometheus exposition carries the stage metrics.
    let metrics = reqwest::get(stack.metrics_url())
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("thumbnail_step_seconds_bucket{step=\"decode\""),
        "{metrics}"
    );
    assert!(
        metrics.contains("photos_processed_total{stage=\"thumbnail\",status=\"ok\"} 6"),
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_or_missing_signature_is_refused_and_nothing_enqueued() {
    let stack = stack().await;
    let http = reqwest::Client::new();
    let (body, good_sig) = signed_event(BUCKET, "users/u1/photos/a.jpg", "v1", "e-forged");
    let forged = devstack::b2::signature(b"not-the-secret", &body);
    for sig in [Some(forged.as_str()), None, Some("v1=00"), Some("garbage")] {
        let mut req = http.post(stack.webhook_url()).body(body.clone());
        if let Some(sig) = sig {
            req = req.header("x-bz-event-notification-signature", sig);
        }
        assert_eq!(req.send().await.unwrap().status(), 401, "signature {sig:?}");
    }
    // The body signed correctly but then tampered with.
    let mut tampered = body.clone();
    let pos = tampered.windows(2).position(|w| w == b"u1").unwrap();
    tampered[pos + 1] = b'2';
    let r = http
        .post(stack.webhook_url())
        .header("x-bz-event-notification-signature", &good_sig)
        .body(tampered)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(
        stack.read_topic(&stack.topics.uploaded).is_empty(),
        "nothing may reach Kafka"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn duplicate_webhook_delivery_yields_one_photo() {
    let stack = stack().await;
    let key = "users/u2/photos/dup.jpg";
    // Put the object without notification side effects on this key: upload under u2 (notified
    // once by the emulation), then deliver the same B2 event ourselves twice more.
    let http = reqwest::Client::new();
    let (body, sig) = signed_event(BUCKET, key, "ver-1", "evt-dup-1");
    stack
        .s3_client()
        .put_object()
        .bucket(BUCKET)
        .key(key)
        .body(photo("S_dune_1680x1050.jpg").into())
        .send()
        .await
        .unwrap();
    for _ in 0..2 {
        let r = http
            .post(stack.webhook_url())
            .header("x-bz-event-notification-signature", &sig)
            .body(body.clone())
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
    }
    let r: serde_json::Value = http
        .post(stack.webhook_url())
        .header("x-bz-event-notification-signature", &sig)
        .body(body.clone())
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(r["duplicates"], 1, "{r}");
    // The emulation's own notification (new version id) is a second, distinct photo version.
    let done = stack
        .wait_for_photos(&stack.topics.thumbnailed, 2, TIMEOUT)
        .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let uploaded = stack.read_topic(&stack.topics.uploaded);
    let ours: Vec<_> = uploaded
        .iter()
        .filter(|e| e["event_id"] == "evt-dup-1")
        .collect();
    assert_eq!(
        ours.len(),
        1,
        "the duplicated event id is enqueued once: {uploaded:#?}"
    );
    let done_again = stack.read_topic(&stack.topics.thumbnailed);
    let photo_id = ours[0]["photo_id"].as_str().unwrap();
    assert_eq!(
        done_again
            .iter()
            .filter(|e| e["photo_id"] == photo_id)
            .count(),
        1,
        "{done:#?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_images_fail_with_reasons_and_go_to_the_dlq() {
    let stack = stack_with(vec![("MAX_PIXELS", "15000000")]).await;
    let good = photo("S_dune_1680x1050.jpg");
    let bomb_png = png_header_only(50_000, 50_000);
    let heic = std::fs::read(corpus().join("compat/ladybird.heic")).unwrap();
    let avif = std::fs::read(corpus().join("compat/ladybird.avif")).unwrap();
    let cases: Vec<(&str, Vec<u8>, &[&str])> = vec![
        ("zero.jpg", vec![], &["empty_object"]),
        (
            "random.jpg",
            (0..5000u32)
                .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
                .collect(),
            &["not_an_image"],
        ),
        (
            "truncated.jpg",
            good[..good.len() / 3].to_vec(),
            &["corrupt_image"],
        ),
        ("bomb.png", bomb_png, &["too_many_pixels"]),
        // 17.9 MP real photo, above this processor's 15 MP limit
        (
            "big.jpg",
            photo("XL_elephants_5640x3172.jpg"),
            &["too_many_pixels"],
        ),
        (
            "cut.heic",
            heic[..heic.len() / 2].to_vec(),
            &["corrupt_image"],
        ),
        ("phone.heic", heic.clone(), &[]),
        ("phone.avif", avif, &[]),
        ("ok.jpg", good.clone(), &[]),
    ];
    let refused = cases.iter().filter(|c| !c.2.is_empty()).count();
    for (name, body, _) in &cases {
        stack
            .upload(&format!("users/u3/photos/{name}"), body.clone())
            .await;
    }
    let done = stack
        .wait_for_photos(&stack.topics.thumbnailed, cases.len(), TIMEOUT)
        .await;
    for (name, _, reasons) in &cases {
        let e = done
            .iter()
            .find(|e| e["source_key"] == format!("users/u3/photos/{name}"))
            .unwrap();
        assert_matches_schema(schemas::json_schema::THUMBNAIL_DONE, e);
        if reasons.is_empty() {
            assert_eq!(e["status"], "ok", "{name}: {e}");
            // ladybird.heic/.avif are 2560x1600 photos: a 400x250 thumbnail.
            if name.starts_with("phone.") {
                assert_eq!(
                    (&e["thumbnail"]["width"], &e["thumbnail"]["height"]),
                    (&400.into(), &250.into()),
                    "{name}: {e}"
                );
            }
        } else {
            assert_eq!(e["status"], "failed", "{name}: {e}");
            let reason = e["failure"]["reason"].as_str().unwrap();
            assert!(
                reasons.contains(&reason),
                "{name}: reason {reason}, want {reasons:?}"
            );
        }
    }
    let dlq = stack
        .wait_for_photos(&stack.topics.dlq, refused, TIMEOUT)
        .await;
    assert_eq!(dlq.len(), refused);
    for d in &dlq {
        assert_matches_schema(schemas::json_schema::DEAD_LETTER, d);
        assert_eq!(d["stage"], "thumbnail");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn processor_crash_mid_batch_loses_nothing() {
    let mut stack = stack_with(vec![("MAX_IN_FLIGHT", "4"), ("CPU_WORKERS", "1")]).await;
    let names = [
        "P12_dragonfly_o1_4032x3024.jpg",
        "P12_kleiber_o1_4032x3024.jpg",
        "M_kite_2560x1600.jpg",
        "S_storm_1920x1280.jpg",
    ];
    let n = 40;
    for i in 0..n {
        let name = names[i % names.len()];
        stack
            .upload(
                &format!("users/u{}/photos/{i:02}-{name}", i % 3),
                photo(name),
            )
            .await;
    }
    // Let some, but not all, finish (watching the processor's own counter, which is quicker to
    // read than the topic); then crash hard.
    let start = std::time::Instant::now();
    loop {
        let k = stack.processed_count().await;
        if k >= 3 {
            assert!(
                k < n as u64,
                "crash came too late to test anything ({k} of {n} done)"
            );
            break;
        }
        assert!(start.elapsed() < TIMEOUT, "no progress before the crash");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    stack.kill_processor();
    stack.start_processor().await;
    let done = stack
        .wait_for_photos(&stack.topics.thumbnailed, n, TIMEOUT)
        .await;
    assert_eq!(distinct_photos(&done), n);
    assert!(done.iter().all(|e| e["status"] == "ok"));
    for i in 0..n {
        let name = names[i % names.len()];
        let key = format!("users/u{}/thumbs/{i:02}-{name}.jpg", i % 3);
        assert!(
            stack.get_object(&key).await.is_some(),
            "{key} missing after the crash"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_shuts_down_cleanly_and_commits() {
    let mut stack = stack().await;
    stack
        .upload("users/u4/photos/a.jpg", photo("S_dune_1680x1050.jpg"))
        .await;
    stack
        .wait_for_photos(&stack.topics.thumbnailed, 1, TIMEOUT)
        .await;
    let status = stack.stop_processor();
    assert!(status.success(), "processor exited with {status}");
    // A restart must not redo the committed photo.
    stack.start_processor().await;
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert_eq!(
        stack.read_topic(&stack.topics.thumbnailed).len(),
        1,
        "committed photo was processed again"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhook_refuses_bad_bodies_and_ignores_other_events() {
    let stack = stack().await;
    let http = reqwest::Client::new();
    let post = |body: Vec<u8>| {
        let sig = devstack::b2::signature(SECRET.as_bytes(), &body);
        http.post(stack.webhook_url())
            .header("x-bz-event-notification-signature", sig)
            .body(body)
            .send()
    };
    // Oversized (signed correctly, still refused before parsing).
    let big = vec![b' '; 300 * 1024];
    assert_eq!(post(big).await.unwrap().status(), 413);
    // Malformed JSON and the wrong shape.
    assert_eq!(post(b"{not json".to_vec()).await.unwrap().status(), 400);
    assert_eq!(
        post(br#"{"events": 5}"#.to_vec()).await.unwrap().status(),
        400
    );
    // B2's test event and other event types are acknowledged and ignored; keys outside the
    // photo pattern are refused and listed.
    let mut body = devstack::b2::event_body("b2:TestEvent", BUCKET, "", 0, "", "t1");
    let other = devstack::b2::event_body(
        "b2:ObjectDeleted:Delete",
        BUCKET,
        "users/u1/photos/a.jpg",
        1,
        "v",
        "t2",
    );
    let outside = devstack::b2::event_body(
        "b2:ObjectCreated:Upload",
        BUCKET,
        "users/u1/thumbs/a.jpg.jpg",
        1,
        "v",
        "t3",
    );
    let events = body["events"].as_array_mut().unwrap();
    events.push(other["events"][0].clone());
    events.push(outside["events"][0].clone());
    let reply: serde_json::Value = post(serde_json::to_vec(&body).unwrap())
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(reply["accepted"], 0, "{reply}");
    assert_eq!(reply["ignored"], 2, "{reply}");
    assert_eq!(reply["rejected"][0]["event_id"], "t3", "{reply}");
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(
        stack.read_topic(&stack.topics.uploaded).is_empty(),
        "nothing may reach Kafka"
    );
}

/// A counter's value from the processor's Prometheus text (0 when absent).
async fn counter(stack: &Stack, name_and_labels: &str) -> f64 {
    let text = reqwest::get(stack.metrics_url())
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    text.lines()
        .find(|l| l.starts_with(name_and_labels))
        .and_then(|l| l.rsplit(' ').next())
        .map(|v| v.parse().unwrap())
        .unwrap_or(0.0)
}

/// Photos with faces get embeddings, with the embed input handed over by the thumbnail stage
/// in `handoff` mode (the original is not read again), and the DB hook hears about them.
async fn photos_with_faces_get_embeddings(handoff: &str) {
    let models = processor::embed::default_model_dir();
    let profile = std::path::Path::new(&std::env::var("CARGO_MANIFEST_DIR").unwrap())
        .join("profiles/arcface112.json");
    let (models_s, profile_s) = (models.display().to_string(), profile.display().to_string());
    let stack = stack_with(vec![
        ("PROCESSOR_STAGES", "ingest,thumbnail,embed"),
        ("MODEL_DIR", &models_s),
        ("EMBED_PROFILE", &profile_s),
        ("EMBED_HANDOFF", handoff),
    ])
    .await;
    let images = models.join("test_images");
    let cases = [
        ("obama.jpg", 1usize),
        ("t1.jpg", 6),
        ("S_dune_1680x1050.jpg", 0),
    ];
    for (name, _) in cases {
        let path = if name.starts_with("S_") {
            corpus().join("photos").join(name)
        } else {
            images.join(name)
        };
        let body = std::fs::read(&path)
            .unwrap_or_else(|e| panic!("{path:?}: {e} (run scripts/fetch-models)"));
        stack.upload(&format!("users/u8/photos/{name}"), body).await;
    }
    let done = stack
        .wait_for_photos(&stack.topics.embedded, cases.len(), TIMEOUT)
        .await;
    let uploaded = stack.read_topic(&stack.topics.uploaded);
    let thumbnailed = stack.read_topic(&stack.topics.thumbnailed);
    for (name, faces) in cases {
        let photo_id = uploaded
            .iter()
            .find(|e| e["key"] == format!("users/u8/photos/{name}"))
            .unwrap()["photo_id"]
            .clone();
        let e = done
            .iter()
            .find(|e| e["photo_id"] == photo_id)
            .unwrap_or_else(|| panic!("no EmbeddingDone for {name}"));
        assert_matches_schema(schemas::json_schema::EMBEDDING_DONE, e);
        assert_eq!(e["status"], "ok", "{name}: {e}");
        assert_eq!(e["profile"], "arcface112");
        let got = e["faces"].as_array().unwrap();
        assert_eq!(got.len(), faces, "{name}: faces");
        for f in got {
            let emb: Vec<f64> = f["embedding"]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_f64().unwrap())
                .collect();
            assert_eq!(emb.len(), 512);
            let norm = emb.iter().map(|v| v * v).sum::<f64>().sqrt();
            assert!(
                (norm - 1.0).abs() < 1e-3,
                "{name}: embedding not L2-normalised ({norm})"
            );
        }
        // The hand-off is announced in the thumbnail event; a derivative is gone once used.
        let t = thumbnailed
            .iter()
            .find(|e| e["photo_id"] == photo_id)
            .unwrap();
        assert_matches_schema(schemas::json_schema::THUMBNAIL_DONE, t);
        let input = &t["embed_input"];
        assert!(input.is_object(), "{name}: no embed_input in {t}");
        assert!(
            input["width"]
                .as_u64()
                .unwrap()
                .max(input["height"].as_u64().unwrap())
                <= 1280
        );
        match handoff {
            "memory" => assert!(input.get("key").is_none(), "{t}"),
            _ => {
                let key = input["key"].as_str().expect("derivative key");
                assert!(key.starts_with("users/u8/derived/"), "{key}");
                wait_for(Duration::from_secs(10), "derivative deleted", || async {
                    stack.get_object(key).await.is_none()
                })
                .await;
            }
        }
    }
    // Every photo took the handed-over input, none re-read its original. Delivery is
    // at-least-once: on Apache Kafka a rebalance (the group's topics appearing) can redeliver a
    // record in flight, and the repeated ThumbnailDone hands its input over again, so a photo
    // may be counted twice here (seen once in 2 runs), but never zero times.
    let source = |s: &str| format!("embed_input_total{{source=\"{s}\"}}");
    let handed_over = counter(&stack, &source(handoff)).await;
    assert!(
        handed_over >= cases.len() as f64,
        "{handed_over} embed inputs from the {handoff} hand-off for {} photos",
        cases.len()
    );
    assert_eq!(counter(&stack, &source("original")).await, 0.0);
    // The DB hook got each photo's faces once (idempotency key photo_id:embeddings).
    let calls = stack.hook.calls.lock().unwrap().clone();
    for (name, faces) in cases {
        let photo_id = uploaded
            .iter()
            .find(|e| e["key"] == format!("users/u8/photos/{name}"))
            .unwrap()["photo_id"]
            .as_str()
            .unwrap()
            .to_string();
        let call = calls
            .iter()
            .find(|c| c.idempotency_key.as_deref() == Some(&format!("{photo_id}:embeddings")))
            .unwrap_or_else(|| panic!("{name}: no embeddings hook call"));
        assert_eq!(call.body["event"], "embeddings");
        assert_matches_schema(schemas::json_schema::HOOK_EMBEDDINGS, &call.body);
        assert_eq!(call.body["faces"].as_array().unwrap().len(), faces);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embeddings_with_in_memory_handoff() {
    photos_with_faces_get_embeddings("memory").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embeddings_with_derivative_handoff() {
    photos_with_faces_get_embeddings("derivative").await;
}

/// A stack running every stage with the arcface112 profile, plus `extra` settings.
async fn embed_stack(extra: Vec<(&str, &str)>) -> Stack {
    let models = processor::embed::default_model_dir().display().to_string();
    let profile = std::path::Path::new(&std::env::var("CARGO_MANIFEST_DIR").unwrap())
        .join("profiles/arcface112.json")
        .display()
        .to_string();
    let mut env = vec![
        ("PROCESSOR_STAGES", "ingest,thumbnail,embed"),
        ("MODEL_DIR", models.as_str()),
        ("EMBED_PROFILE", profile.as_str()),
    ];
    env.extend(extra);
    stack_with(env).await
}

/// A test photo of the face models (scripts/fetch-models).
fn model_test_photo(name: &str) -> Vec<u8> {
    let path = processor::embed::default_model_dir()
        .join("test_images")
        .join(name);
    std::fs::read(&path).unwrap_or_else(|e| panic!("{path:?}: {e} (run scripts/fetch-models)"))
}

/// A class photo: 15 × 15 copies of the face in obama.jpg, 76 px each on a grey grid.
fn crowd_photo() -> Vec<u8> {
    let face = image::load_from_memory(&model_test_photo("obama.jpg"))
        .unwrap()
        .to_rgb8();
    let face = image::imageops::crop_imm(&face, 293, 23, 400, 400).to_image();
    let face = image::imageops::resize(&face, 76, 76, image::imageops::FilterType::Lanczos3);
    let mut mosaic = image::RgbImage::from_pixel(15 * 85, 15 * 85, image::Rgb([128, 128, 128]));
    for i in 0..15 {
        for j in 0..15 {
            image::imageops::replace(&mut mosaic, &face, i * 85 + 4, j * 85 + 4);
        }
    }
    let mut jpeg = Vec::new();
    image::codecs::jpeg::JpegEncoder::new_with_quality(&mut jpeg, 90)
        .encode_image(&mosaic)
        .unwrap();
    jpeg
}

/// A crowd photo's embeddings (~7 KB of JSON a face) would exceed Kafka's 1 MB message limit;
/// its event keeps the largest faces within `MAX_EVENT_BYTES` and counts the rest, while the
/// DB hook gets every face.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crowd_photo_fits_in_one_event() {
    let stack = embed_stack(vec![]).await;
    stack
        .upload("users/u9/photos/class.jpg", crowd_photo())
        .await;
    let done = stack
        .wait_for_photos(&stack.topics.embedded, 1, Duration::from_secs(600))
        .await;
    let e = &done[0];
    assert_matches_schema(schemas::json_schema::EMBEDDING_DONE, e);
    assert_eq!(e["status"], "ok", "{}", e["failure"]);
    let kept = e["faces"].as_array().unwrap().len();
    let omitted = e["faces_omitted"].as_u64().unwrap_or(0) as usize;
    assert!(kept + omitted >= 200, "{kept} + {omitted} faces");
    assert!(omitted > 0 && kept > 40, "kept {kept}, omitted {omitted}");
    let bytes = serde_json::to_vec(e).unwrap().len();
    assert!(bytes <= schemas::MAX_EVENT_BYTES, "{bytes} bytes");
    let calls = stack.hook.calls.lock().unwrap().clone();
    let call = calls
        .iter()
        .find(|c| c.body["event"] == "embeddings")
        .expect("embeddings hook call");
    assert_eq!(call.body["faces"].as_array().unwrap().len(), kept + omitted);
}

/// An event Kafka refuses for good (here: larger than the producer's `message.max.bytes`, as a
/// topic's own limit would) fails its photo into the DLQ as `output_rejected` instead of being
/// retried forever, which would stall the partition; the next photo goes through.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_kafka_refuses_fails_the_photo_into_the_dlq() {
    // A face's embedding alone is ~7 KB of JSON; thumbnail events and dead letters are < 2 KB.
    let stack = embed_stack(vec![("KAFKA_OPTIONS", "message.max.bytes=4000")]).await;
    stack
        .upload("users/u9/photos/obama.jpg", model_test_photo("obama.jpg"))
        .await;
    stack
        .upload("users/u9/photos/dune.jpg", photo("S_dune_1680x1050.jpg"))
        .await;
    let done = stack
        .wait_for_photos(&stack.topics.embedded, 2, TIMEOUT)
        .await;
    let uploaded = stack.read_topic(&stack.topics.uploaded);
    let id = |name: &str| {
        uploaded
            .iter()
            .find(|e| e["key"] == format!("users/u9/photos/{name}"))
            .unwrap()["photo_id"]
            .clone()
    };
    let event = |name: &str| done.iter().find(|e| e["photo_id"] == id(name)).unwrap();
    let refused = event("obama.jpg");
    assert_matches_schema(schemas::json_schema::EMBEDDING_DONE, refused);
    assert_eq!(refused["status"], "failed", "{refused}");
    assert_eq!(refused["failure"]["reason"], "output_rejected");
    let detail = refused["failure"]["detail"].as_str().unwrap();
    assert!(
        detail.contains("photos") || detail.contains("bytes"),
        "{detail}"
    );
    assert_eq!(event("dune.jpg")["status"], "ok");
    let dlq = stack.read_topic(&stack.topics.dlq);
    let dead = dlq
        .iter()
        .find(|d| d["photo_id"] == id("obama.jpg"))
        .expect("a dead letter for the refused photo");
    assert_matches_schema(schemas::json_schema::DEAD_LETTER, dead);
    assert_eq!(
        (&dead["stage"], &dead["failure"]["reason"]),
        (&"embed".into(), &"output_rejected".into())
    );
    assert_eq!(
        counter(
            &stack,
            "photos_failed_total{stage=\"embed\",reason=\"output_rejected\"}"
        )
        .await,
        1.0
    );
}

/// A hook call signed with another secret is refused by the hook (401), which the processor
/// takes as permanent: the photo fails as `hook_error`, at once and with a dead letter.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hook_call_signed_with_the_wrong_secret_is_refused() {
    let stack = stack_with(vec![("DB_HOOK_SECRET", "not-the-hooks-secret")]).await;
    stack
        .upload("users/u7/photos/dune.jpg", photo("S_dune_1680x1050.jpg"))
        .await;
    let done = stack
        .wait_for_photos(&stack.topics.thumbnailed, 1, TIMEOUT)
        .await;
    assert_eq!(done[0]["status"], "failed", "{}", done[0]);
    assert_eq!(done[0]["failure"]["reason"], "hook_error");
    assert!(
        done[0]["failure"]["detail"]
            .as_str()
            .unwrap()
            .contains("401"),
        "{}",
        done[0]["failure"]
    );
    assert!(
        stack
            .hook
            .unauthorized
            .load(std::sync::atomic::Ordering::SeqCst)
            >= 1
    );
    assert!(stack.hook.calls.lock().unwrap().is_empty());
    assert_eq!(stack.read_topic(&stack.topics.dlq).len(), 1);
}

/// B2 retries a notification it got no answer for, and behind the load balancer the retry may
/// reach another ingest replica: that replica knows the event from the topic itself and
/// acknowledges it without enqueuing it again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redelivery_to_another_ingest_replica_is_recognised() {
    let stack = stack().await;
    let replica = stack.spawn_ingest_replica().await;
    let replica_port = replica.port;
    let key = "users/u3/photos/retried.jpg";
    stack
        .s3_client()
        .put_object()
        .bucket(BUCKET)
        .key(key)
        .body(photo("S_dune_1680x1050.jpg").into())
        .send()
        .await
        .unwrap();
    let (body, sig) = signed_event(BUCKET, key, "ver-r1", "evt-replica-1");
    let deliver = |url: String| {
        let (body, sig) = (body.clone(), sig.clone());
        async move {
            let r = reqwest::Client::new()
                .post(url)
                .header("x-bz-event-notification-signature", sig)
                .body(body)
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 200);
            r.json::<serde_json::Value>().await.unwrap()
        }
    };
    let first = deliver(stack.webhook_url()).await;
    assert_eq!(first["accepted"], 1, "{first}");
    // B2's retry comes seconds later, at the other replica, which has read the event back by
    // then.
    let replica_metrics = format!("http://127.0.0.1:{replica_port}/metrics");
    wait_for(TIMEOUT, "the replica read the event back", || async {
        let text = reqwest::get(&replica_metrics)
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        text.lines()
            .any(|l| l.starts_with("webhook_events_read_back_total ") && !l.ends_with(" 0"))
    })
    .await;
    let again = deliver(format!("http://127.0.0.1:{replica_port}/v1/b2/events")).await;
    assert_eq!(
        again["duplicates"], 1,
        "the replica enqueued it again: {again}"
    );
    tokio::time::sleep(Duration::from_secs(1)).await;
    let ours = stack
        .read_topic(&stack.topics.uploaded)
        .into_iter()
        .filter(|e| e["event_id"] == "evt-replica-1")
        .count();
    assert_eq!(ours, 1, "one PhotoUploaded for the event");
}
