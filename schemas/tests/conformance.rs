//! Every event type, in each of its shapes, validates against its checked-in JSON Schema,
//! and the schemas reject events that break the contract.

use schemas::*;
use serde_json::{json, Value};

fn validator(schema: &str) -> jsonschema::Validator {
    let schema: Value = serde_json::from_str(schema).expect("schema file is JSON");
    jsonschema::validator_for(&schema).expect("schema compiles")
}

fn assert_valid(schema: &str, event: &impl serde::Serialize) {
    let v = validator(schema);
    let value = serde_json::to_value(event).unwrap();
    let errors: Vec<String> = v.iter_errors(&value).map(|e| e.to_string()).collect();
    assert!(errors.is_empty(), "{value} violates its schema: {errors:?}");
}

fn uploaded() -> PhotoUploaded {
    PhotoUploaded {
        schema_version: SCHEMA_VERSION,
        photo_id: photo_id("photos", "users/u1/photos/a.jpg", "v1"),
        user_id: "u1".into(),
        bucket: "photos".into(),
        key: "users/u1/photos/a.jpg".into(),
        version_id: "v1".into(),
        size_bytes: 1234,
        event_id: "e1".into(),
        uploaded_at_ms: 1,
        received_at_ms: 2,
    }
}

fn thumb_failed() -> ThumbnailDone {
    let u = uploaded();
    ThumbnailDone {
        schema_version: SCHEMA_VERSION,
        photo_id: u.photo_id,
        user_id: u.user_id,
        bucket: u.bucket,
        source_key: u.key,
        status: StageStatus::Failed,
        thumbnail: None,
        source: None,
        failure: Some(Failure {
            reason: FailureReason::CorruptImage,
            detail: "truncated".into(),
        }),
        embed_input: None,
        timings: ThumbnailTimings::default(),
        uploaded_at_ms: 1,
        finished_at_ms: 3,
    }
}

#[test]
fn all_event_shapes_validate() {
    assert_valid(json_schema::PHOTO_UPLOADED, &uploaded());
    let mut ok = thumb_failed();
    ok.status = StageStatus::Ok;
    ok.failure = None;
    ok.thumbnail = Some(Thumbnail {
        key: "users/u1/thumbs/a.jpg.jpg".into(),
        content_type: "image/jpeg".into(),
        width: 400,
        height: 300,
        size_bytes: 20_000,
    });
    ok.source = Some(SourceImage {
        format: "jpeg".into(),
        width: 4000,
        height: 3000,
        orientation: 6,
    });
    assert_valid(json_schema::THUMBNAIL_DONE, &ok);
    for key in [None, Some("users/u1/derived/a.jpg.embed.png".to_string())] {
        ok.embed_input = Some(EmbedInputRef {
            key,
            width: 1280,
            height: 960,
            source_width: 4000,
            source_height: 3000,
        });
        assert_valid(json_schema::THUMBNAIL_DONE, &ok);
    }
    assert_valid(json_schema::THUMBNAIL_DONE, &thumb_failed());
    let emb = EmbeddingDone {
        schema_version: SCHEMA_VERSION,
        photo_id: uploaded().photo_id,
        user_id: "u1".into(),
        status: StageStatus::Ok,
        profile: "arcface112".into(),
        faces: vec![Face {
            bbox: [1.0, 2.0, 30.0, 40.0],
            score: 0.99,
            landmarks: vec![[1.0, 2.0]; 5],
            embedding: vec![0.1; 512],
        }],
        faces_omitted: 0,
        failure: None,
        uploaded_at_ms: 1,
        finished_at_ms: 2,
    };
    assert_valid(json_schema::EMBEDDING_DONE, &emb);
    let dlq = DeadLetter {
        schema_version: SCHEMA_VERSION,
        stage: "thumbnail".into(),
        photo_id: uploaded().photo_id,
        user_id: "u1".into(),
        failure: Failure {
            reason: FailureReason::TooManyPixels,
            detail: "50000x50000".into(),
        },
        original: uploaded(),
        failed_at_ms: 5,
    };
    assert_valid(json_schema::DEAD_LETTER, &dlq);
    for settings in [
        settings::GroupSettings::Thumbnail(settings::ThumbnailSettings {
            max_width: 160,
            max_height: 160,
            quality: 85,
        }),
        settings::GroupSettings::Faces(settings::FaceSettings {
            min_score: 0.97,
            min_size_px: 48,
        }),
        settings::GroupSettings::Alerts(settings::AlertSettings {
            max_lag_records: 1000,
            max_latency_ms: 30_000,
        }),
    ] {
        let change = settings::SettingsChange {
            schema_version: SCHEMA_VERSION,
            settings,
            changed_by: "alice".into(),
            changed_at_ms: 7,
        };
        assert_valid(json_schema::SETTINGS_CHANGE, &change);
    }
    let mut hb = heartbeat::Heartbeat {
        schema_version: SCHEMA_VERSION,
        instance_id: "host-1".into(),
        stages: vec!["thumbnail".into(), "embed".into()],
        config: [("thumb_quality".to_string(), "80".to_string())].into(),
        in_flight: 3,
        counters: [(
            "thumbnail".to_string(),
            heartbeat::StageCounters {
                processed_ok: 10,
                processed_failed: 1,
            },
        )]
        .into(),
        consumer_lag: [("photos.uploaded".to_string(), 4)].into(),
        started_at_ms: 1,
        sent_at_ms: 2,
    };
    assert_valid(json_schema::HEARTBEAT, &hb);
    hb.consumer_lag.clear();
    assert_valid(json_schema::HEARTBEAT, &hb);
}

#[test]
fn schemas_reject_contract_breaks() {
    let v = validator(json_schema::THUMBNAIL_DONE);
    // failed without a failure
    let mut bad = serde_json::to_value(thumb_failed()).unwrap();
    bad.as_object_mut().unwrap().remove("failure");
    assert!(!v.is_valid(&bad));
    // unknown reason code
    let mut bad = serde_json::to_value(thumb_failed()).unwrap();
    bad["failure"]["reason"] = json!("cosmic_rays");
    assert!(!v.is_valid(&bad));
    // unknown field
    let mut bad = serde_json::to_value(uploaded()).unwrap();
    bad["extra"] = json!(1);
    assert!(!validator(json_schema::PHOTO_UPLOADED).is_valid(&bad));
    // future schema version
    let mut bad = serde_json::to_value(uploaded()).unwrap();
    bad["schema_version"] = json!(2);
    assert!(!validator(json_schema::PHOTO_UPLOADED).is_valid(&bad));
}

#[test]
fn serde_round_trips_and_refuses_unknown_fields() {
    let u = uploaded();
    let s = serde_json::to_string(&u).unwrap();
    assert_eq!(serde_json::from_str::<PhotoUploaded>(&s).unwrap(), u);
    let mut v: Value = serde_json::from_str(&s).unwrap();
    v["surprise"] = json!(true);
    assert!(serde_json::from_value::<PhotoUploaded>(v).is_err());
}

fn thumbnail_hook() -> hook::ThumbnailHook {
    let u = uploaded();
    hook::ThumbnailHook {
        schema_version: SCHEMA_VERSION,
        event: "thumbnail".into(),
        photo_id: u.photo_id,
        user_id: u.user_id,
        bucket: u.bucket,
        original_key: u.key,
        original_size_bytes: 2_345_678,
        original_content_type: "image/heic".into(),
        thumbnail_key: "users/u1/thumbs/a.jpg.jpg".into(),
        content_type: "image/jpeg".into(),
        width: 400,
        height: 300,
        size_bytes: 23_456,
        source_width: 4032,
        source_height: 3024,
    }
}

#[test]
fn hook_bodies_match_their_schemas() {
    assert_valid(json_schema::HOOK_THUMBNAIL, &thumbnail_hook());
    let emb = hook::EmbeddingsHook {
        schema_version: SCHEMA_VERSION,
        event: "embeddings".into(),
        photo_id: uploaded().photo_id,
        user_id: "u1".into(),
        bucket: "photos".into(),
        original_key: "users/u1/photos/a.jpg".into(),
        profile: "arcface112".into(),
        faces: vec![Face {
            bbox: [1.0, 2.0, 30.0, 40.0],
            score: 0.99,
            landmarks: vec![[1.0, 2.0]; 5],
            embedding: vec![0.1; 512],
        }],
    };
    assert_valid(json_schema::HOOK_EMBEDDINGS, &emb);
    assert_valid(
        json_schema::HOOK_EMBEDDINGS,
        &hook::EmbeddingsHook {
            faces: vec![],
            ..emb
        },
    );
    // The contract's breaks are refused: no original size, the wrong event name.
    let v = validator(json_schema::HOOK_THUMBNAIL);
    let mut bad = serde_json::to_value(thumbnail_hook()).unwrap();
    bad.as_object_mut().unwrap().remove("original_size_bytes");
    assert!(!v.is_valid(&bad));
    let mut bad = serde_json::to_value(thumbnail_hook()).unwrap();
    bad["event"] = json!("embeddings");
    assert!(!v.is_valid(&bad));
}
