//! Event types carried on photo-pipeline's Kafka topics.
//!
//! This crate is the single owner of the wire format: every stage produces and consumes these
//! types, and `schemas/json/*.schema.json` describes the same JSON for tools outside Rust
//! (kcat users, the backend team). Every event carries [`SCHEMA_VERSION`] so readers can
//! refuse formats they do not understand instead of guessing.
//!
//! All topics are keyed by user id, so one user's events stay in order on one partition.

use serde::{Deserialize, Serialize};

pub mod heartbeat;
pub mod hook;
pub mod settings;
use sha2::{Digest, Sha256};

/// Version of the event format written by this build. Bump on any incompatible change.
pub const SCHEMA_VERSION: u32 = 1;

/// Default topic names; every service lets them be overridden.
pub mod topics {
    /// `PhotoUploaded`: one per accepted object-created notification.
    pub const UPLOADED: &str = "photos.uploaded";
    /// `ThumbnailDone`: one per photo the thumbnail stage finished (ok or failed).
    pub const THUMBNAILED: &str = "photos.thumbnailed";
    /// `EmbeddingDone`: one per photo the embed stage finished (ok or failed).
    pub const EMBEDDED: &str = "photos.embedded";
    /// `DeadLetter`: photos that failed a stage, kept for inspection and re-driving.
    pub const DLQ: &str = "photos.dlq";
}

/// Deterministic identity of one uploaded object version.
///
/// The same (bucket, key, version) always yields the same id, so a duplicate webhook delivery,
/// a Kafka redelivery or a replay is recognised as the same photo by every downstream stage.
pub fn photo_id(bucket: &str, key: &str, version_id: &str) -> String {
    let mut h = Sha256::new();
    for part in [bucket, key, version_id] {
        h.update((part.len() as u64).to_be_bytes());
        h.update(part.as_bytes());
    }
    hex::encode(&h.finalize()[..16])
}

/// Milliseconds since the Unix epoch, the time unit of every event timestamp.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// A photo accepted by the upload stage (from a B2 event notification), topic `photos.uploaded`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PhotoUploaded {
    pub schema_version: u32,
    /// See [`photo_id`].
    pub photo_id: String,
    pub user_id: String,
    pub bucket: String,
    /// Object key of the original.
    pub key: String,
    /// Object version id from the storage event; part of the photo's identity.
    pub version_id: String,
    pub size_bytes: u64,
    /// The storage provider's event id (B2 `eventId`), for tracing a photo back to its webhook.
    pub event_id: String,
    /// When the object was created, per the storage event.
    pub uploaded_at_ms: i64,
    /// When the upload stage accepted the event.
    pub received_at_ms: i64,
}

/// Whether a stage produced its output for a photo.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StageStatus {
    Ok,
    Failed,
}

/// Why a stage gave up on a photo. Stable codes: dashboards and the backend team match on them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FailureReason {
    /// The object has zero bytes.
    EmptyObject,
    /// Larger in bytes than the configured download limit.
    ObjectTooLarge,
    /// Recognised image format that this build cannot decode (e.g. HEIC, AVIF).
    UnsupportedFormat,
    /// Not an image in any format we recognise.
    NotAnImage,
    /// Recognised format but the data is corrupt or truncated.
    CorruptImage,
    /// Width × height above the configured pixel limit (decompression-bomb guard).
    TooManyPixels,
    /// The original no longer exists in object storage.
    NotFound,
    /// Object storage kept failing after the retry budget.
    StorageError,
    /// The DB-update hook kept failing after the retry budget.
    HookError,
    /// Face detection or embedding failed.
    ModelError,
    /// Kafka refused the stage's result event for good (larger than the topic accepts, or
    /// this service is not authorised to write it); retrying could not help.
    OutputRejected,
    /// A bug or an unexpected condition; the detail says which.
    Internal,
}

impl FailureReason {
    /// The snake_case code, as written in events and metric labels.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::EmptyObject => "empty_object",
            Self::ObjectTooLarge => "object_too_large",
            Self::UnsupportedFormat => "unsupported_format",
            Self::NotAnImage => "not_an_image",
            Self::CorruptImage => "corrupt_image",
            Self::TooManyPixels => "too_many_pixels",
            Self::NotFound => "not_found",
            Self::StorageError => "storage_error",
            Self::HookError => "hook_error",
            Self::ModelError => "model_error",
            Self::OutputRejected => "output_rejected",
            Self::Internal => "internal",
        }
    }
}

/// A stage's failure: a stable reason code plus a human-readable detail.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Failure {
    pub reason: FailureReason,
    pub detail: String,
}

/// The thumbnail written for a photo.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Thumbnail {
    pub key: String,
    pub content_type: String,
    pub width: u32,
    pub height: u32,
    pub size_bytes: u64,
}

/// Facts about the original learned while decoding it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SourceImage {
    /// Detected container format: `jpeg`, `png`, `webp`, `gif`, ...
    pub format: String,
    /// Stored pixel size, before EXIF orientation.
    pub width: u32,
    pub height: u32,
    /// EXIF orientation tag (1–8) that was applied.
    pub orientation: u8,
}

/// Where the embed input of a photo is: in the memory of the process that made it, or in a
/// derivative object (lossless PNG, same bucket) that the embed stage reads and deletes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EmbedInputRef {
    /// Derivative object key; absent when handed over in memory.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    /// Size of the input image.
    pub width: u32,
    pub height: u32,
    /// Upright size of the original it was made from (faces are reported in these pixels).
    pub source_width: u32,
    pub source_height: u32,
}

/// Wall-clock milliseconds spent in each step of the thumbnail stage.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ThumbnailTimings {
    pub download_ms: f64,
    pub decode_resize_encode_ms: f64,
    pub upload_ms: f64,
    pub hook_ms: f64,
}

/// The thumbnail stage's result for one photo, topic `photos.thumbnailed`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ThumbnailDone {
    pub schema_version: u32,
    pub photo_id: String,
    pub user_id: String,
    pub bucket: String,
    pub source_key: String,
    pub status: StageStatus,
    /// Present when `status` is `ok`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub thumbnail: Option<Thumbnail>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<SourceImage>,
    /// Present when `status` is `failed`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failure: Option<Failure>,
    /// The embed stage's input, made from the same decode as the thumbnail; absent when the
    /// thumbnail stage does not hand one over (the embed stage then reads the original).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub embed_input: Option<EmbedInputRef>,
    pub timings: ThumbnailTimings,
    /// The upload event this result answers (for end-to-end latency).
    pub uploaded_at_ms: i64,
    pub finished_at_ms: i64,
}

/// One detected face and its recognition embedding.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Face {
    /// Box in original-image pixels (after EXIF orientation): x, y, width, height.
    pub bbox: [f32; 4],
    pub score: f32,
    /// Facial landmarks in original-image pixels, `[x, y]` pairs.
    pub landmarks: Vec<[f32; 2]>,
    pub embedding: Vec<f32>,
}

/// The embed stage's result for one photo, topic `photos.embedded`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EmbeddingDone {
    pub schema_version: u32,
    pub photo_id: String,
    pub user_id: String,
    pub status: StageStatus,
    /// Model profile that produced the embeddings (e.g. `arcface112`).
    pub profile: String,
    /// The photo's faces, largest first, as many as fit in [`MAX_EVENT_BYTES`]
    /// ([`EmbeddingDone::fit_faces`]); the DB-update hook gets all of them.
    #[serde(default)]
    pub faces: Vec<Face>,
    /// Faces found but left out of `faces` to keep the event within [`MAX_EVENT_BYTES`] (a crowd
    /// photo); 0 for nearly every photo.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub faces_omitted: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failure: Option<Failure>,
    pub uploaded_at_ms: i64,
    pub finished_at_ms: i64,
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

/// The most bytes of JSON a stage event may take: half of Kafka's default message limit
/// (`message.max.bytes`, 1 MB), so that the worst photo fits with room for the record's
/// overhead and a topic that keeps the default.
pub const MAX_EVENT_BYTES: usize = 512 * 1024;

impl EmbeddingDone {
    /// Keep the faces within `max_bytes` of JSON together with the rest of the event: all of
    /// them (in detection order) when they fit, else the largest that fit, largest first, the
    /// others counted in `faces_omitted`. A 512-d embedding is ~6–7 KB of JSON, so a photo of
    /// ~75 faces or more (a crowd, a class photo) would otherwise exceed what Kafka accepts.
    pub fn fit_faces(&mut self, max_bytes: usize) {
        if json_len(self) <= max_bytes {
            return;
        }
        let mut faces = std::mem::take(&mut self.faces);
        let found = faces.len() + self.faces_omitted as usize;
        // Room for the other fields, with a faces_omitted count of any size.
        self.faces_omitted = u32::MAX;
        let mut used = json_len(self);
        faces.sort_by(|a, b| {
            let area = |f: &Face| f.bbox[2] * f.bbox[3];
            area(b).total_cmp(&area(a))
        });
        for face in faces {
            let len = json_len(&face) + 1; // and a comma
            if used + len > max_bytes {
                break;
            }
            used += len;
            self.faces.push(face);
        }
        self.faces_omitted = u32::try_from(found - self.faces.len()).unwrap_or(u32::MAX);
    }
}

/// Length of `v` as JSON.
fn json_len<T: Serialize>(v: &T) -> usize {
    serde_json::to_vec(v).map_or(usize::MAX, |v| v.len())
}

/// A photo that failed a stage, topic `photos.dlq`; `scripts/replay` can re-drive it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeadLetter {
    pub schema_version: u32,
    /// Stage that gave up: `thumbnail` or `embed`.
    pub stage: String,
    pub photo_id: String,
    pub user_id: String,
    pub failure: Failure,
    /// The upload event to re-drive.
    pub original: PhotoUploaded,
    pub failed_at_ms: i64,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn face(side: f32) -> Face {
        Face {
            bbox: [0.0, 0.0, side, side],
            score: 0.99,
            landmarks: vec![[1.5, 2.5]; 5],
            embedding: (0..512).map(|i| (i as f32 * 0.7).sin() / 22.6).collect(),
        }
    }

    fn embedding_done(faces: Vec<Face>) -> EmbeddingDone {
        EmbeddingDone {
            schema_version: SCHEMA_VERSION,
            photo_id: "0".repeat(32),
            user_id: "u1".into(),
            status: StageStatus::Ok,
            profile: "arcface112".into(),
            faces,
            faces_omitted: 0,
            failure: None,
            uploaded_at_ms: 1,
            finished_at_ms: 2,
        }
    }

    #[test]
    fn a_crowd_photo_keeps_its_largest_faces_within_the_limit() {
        let faces: Vec<Face> = (0..250).map(|i| face(20.0 + i as f32)).collect();
        let mut done = embedding_done(faces);
        assert!(
            serde_json::to_vec(&done).unwrap().len() > 1_000_000,
            "the test needs a crowd"
        );
        done.fit_faces(MAX_EVENT_BYTES);
        let json = serde_json::to_vec(&done).unwrap();
        assert!(json.len() <= MAX_EVENT_BYTES, "{} bytes", json.len());
        assert!(
            done.faces.len() > 40,
            "only {} faces kept",
            done.faces.len()
        );
        assert_eq!(done.faces.len() + done.faces_omitted as usize, 250);
        // The largest, largest first.
        let sides: Vec<f32> = done.faces.iter().map(|f| f.bbox[2]).collect();
        assert_eq!(sides[0], 269.0);
        assert!(sides.windows(2).all(|w| w[0] > w[1]));
        assert_eq!(*sides.last().unwrap(), 270.0 - done.faces.len() as f32);
        let back: EmbeddingDone = serde_json::from_slice(&json).unwrap();
        assert_eq!(back.faces_omitted, done.faces_omitted);
    }

    #[test]
    fn a_photo_whose_faces_fit_is_left_as_it_is() {
        let faces = vec![face(30.0), face(90.0), face(60.0)];
        let mut done = embedding_done(faces.clone());
        done.fit_faces(MAX_EVENT_BYTES);
        assert_eq!((done.faces, done.faces_omitted), (faces, 0));
        let json = serde_json::to_string(&embedding_done(vec![])).unwrap();
        assert!(!json.contains("faces_omitted"), "{json}");
    }

    #[test]
    fn photo_id_is_deterministic_and_separates_fields() {
        let a = photo_id("photos", "users/u1/photos/a.jpg", "v1");
        assert_eq!(a, photo_id("photos", "users/u1/photos/a.jpg", "v1"));
        assert_eq!(a.len(), 32);
        assert_ne!(a, photo_id("photos", "users/u1/photos/a.jpg", "v2"));
        // Length-prefixing keeps ("ab","c") and ("a","bc") apart.
        assert_ne!(photo_id("ab", "c", "v"), photo_id("a", "bc", "v"));
    }

    #[test]
    fn failure_reason_codes_match_serde() {
        for r in [
            FailureReason::EmptyObject,
            FailureReason::TooManyPixels,
            FailureReason::UnsupportedFormat,
            FailureReason::HookError,
        ] {
            assert_eq!(serde_json::to_value(r).unwrap(), r.as_str());
        }
    }
}

/// The checked-in JSON Schema documents, by event type, for validating events outside Rust
/// and in tests. Files live in `schemas/json/`.
pub mod json_schema {
    pub const PHOTO_UPLOADED: &str = include_str!("../json/photo_uploaded.schema.json");
    pub const THUMBNAIL_DONE: &str = include_str!("../json/thumbnail_done.schema.json");
    pub const EMBEDDING_DONE: &str = include_str!("../json/embedding_done.schema.json");
    pub const DEAD_LETTER: &str = include_str!("../json/dead_letter.schema.json");
    pub const SETTINGS_CHANGE: &str = include_str!("../json/settings_change.schema.json");
    pub const HEARTBEAT: &str = include_str!("../json/heartbeat.schema.json");
    pub const HOOK_THUMBNAIL: &str = include_str!("../json/hook_thumbnail.schema.json");
    pub const HOOK_EMBEDDINGS: &str = include_str!("../json/hook_embeddings.schema.json");

    /// The schema document for a topic's events, if the topic is one of ours (default names).
    pub fn for_topic(topic: &str) -> Option<&'static str> {
        match topic {
            super::topics::UPLOADED => Some(PHOTO_UPLOADED),
            super::topics::THUMBNAILED => Some(THUMBNAIL_DONE),
            super::topics::EMBEDDED => Some(EMBEDDING_DONE),
            super::topics::DLQ => Some(DEAD_LETTER),
            super::settings::TOPIC => Some(SETTINGS_CHANGE),
            super::heartbeat::TOPIC => Some(HEARTBEAT),
            _ => None,
        }
    }
}
