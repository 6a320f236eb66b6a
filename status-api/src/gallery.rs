//! Each user's most recent photos for the console's Gallery, built from the stage events
//! status-api already consumes: the thumbnail (key and size) from `ThumbnailDone`, the face
//! boxes from `EmbeddingDone`. Bounded per user (the oldest photo is forgotten first), so
//! memory is O(users × bound), not O(history); the full history stays in the topics.

use crate::store::StageEvent;
use dashmap::DashMap;
use schemas::{StageStatus, ThumbnailDone};
use serde::Serialize;
use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;

/// A face box as fractions (0–1) of the oriented image, so it scales to any display size.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct FaceBox {
    pub x: f32,
    pub y: f32,
    pub w: f32,
    pub h: f32,
    pub score: f32,
}

/// One photo as the Gallery shows it.
#[derive(Debug, Clone, Default, Serialize)]
pub struct GalleryPhoto {
    pub photo_id: String,
    /// The uploaded file's name (last key segment).
    pub file: String,
    pub source_key: String,
    /// `pending`, `ok` or `failed`.
    pub thumbnail_status: &'static str,
    pub embedding_status: &'static str,
    /// Failure reason of whichever stage failed.
    pub failure: Option<String>,
    pub thumbnail_key: Option<String>,
    pub thumbnail_width: u32,
    pub thumbnail_height: u32,
    /// The original's size after EXIF orientation (what face boxes refer to).
    pub width: u32,
    pub height: u32,
    pub faces: Vec<FaceBox>,
    pub updated_at_ms: i64,
    /// Raw boxes in oriented-original pixels, kept until the original's size is known.
    #[serde(skip)]
    raw_faces: Vec<([f32; 4], f32)>,
}

impl GalleryPhoto {
    fn relayout_faces(&mut self) {
        if self.width == 0 || self.height == 0 {
            self.faces.clear();
            return;
        }
        let (w, h) = (self.width as f32, self.height as f32);
        self.faces = self
            .raw_faces
            .iter()
            .map(|&([x, y, bw, bh], score)| FaceBox {
                x: (x / w).clamp(0.0, 1.0),
                y: (y / h).clamp(0.0, 1.0),
                w: (bw / w).clamp(0.0, 1.0),
                h: (bh / h).clamp(0.0, 1.0),
                score,
            })
            .collect();
    }

    fn apply_thumbnail(&mut self, e: &ThumbnailDone) {
        self.source_key = e.source_key.clone();
        self.thumbnail_status = status_str(e.status);
        if let Some(t) = &e.thumbnail {
            self.thumbnail_key = Some(t.key.clone());
            self.thumbnail_width = t.width;
            self.thumbnail_height = t.height;
        }
        if let Some(s) = &e.source {
            // EXIF orientations 5–8 transpose the stored pixels.
            (self.width, self.height) = if s.orientation >= 5 {
                (s.height, s.width)
            } else {
                (s.width, s.height)
            };
        }
        if let Some(f) = &e.failure {
            self.failure = Some(f.reason.as_str().to_string());
        }
        self.relayout_faces();
    }
}

fn status_str(s: StageStatus) -> &'static str {
    match s {
        StageStatus::Ok => "ok",
        StageStatus::Failed => "failed",
    }
}

#[derive(Default)]
struct UserPhotos {
    /// Photo ids, oldest first.
    order: VecDeque<String>,
    photos: HashMap<String, GalleryPhoto>,
}

/// Every user's recent photos.
pub struct Gallery {
    users: DashMap<String, Mutex<UserPhotos>>,
    per_user: usize,
}

impl Gallery {
    /// Keep at most `per_user` photos per user.
    pub fn new(per_user: usize) -> Self {
        Self {
            users: DashMap::new(),
            per_user: per_user.max(1),
        }
    }

    /// Fold one stage event in.
    pub fn apply(&self, event: &StageEvent) {
        let (photo_id, at) = match event {
            StageEvent::Uploaded(e) => (&e.photo_id, e.received_at_ms),
            StageEvent::Thumbnail(e) => (&e.photo_id, e.finished_at_ms),
            StageEvent::Embedding(e) => (&e.photo_id, e.finished_at_ms),
        };
        let entry = self.users.entry(event.user_id().to_string()).or_default();
        let mut u = entry.lock().expect("gallery lock");
        if !u.photos.contains_key(photo_id) {
            u.order.push_back(photo_id.clone());
            u.photos.insert(
                photo_id.clone(),
                GalleryPhoto {
                    photo_id: photo_id.clone(),
                    thumbnail_status: "pending",
                    embedding_status: "pending",
                    ..Default::default()
                },
            );
            while u.order.len() > self.per_user {
                if let Some(old) = u.order.pop_front() {
                    u.photos.remove(&old);
                }
            }
        }
        let p = u.photos.get_mut(photo_id).expect("just inserted");
        p.updated_at_ms = p.updated_at_ms.max(at);
        match event {
            StageEvent::Uploaded(e) => {
                if p.source_key.is_empty() {
                    p.source_key = e.key.clone();
                }
            }
            // A later ok replaces a failure (a re-driven photo); a failure never replaces ok.
            StageEvent::Thumbnail(e) => {
                if !(p.thumbnail_status == "ok" && e.status == StageStatus::Failed) {
                    p.apply_thumbnail(e);
                }
            }
            StageEvent::Embedding(e) => {
                if !(p.embedding_status == "ok" && e.status == StageStatus::Failed) {
                    p.embedding_status = status_str(e.status);
                    p.raw_faces = e.faces.iter().map(|f| (f.bbox, f.score)).collect();
                    if let Some(f) = &e.failure {
                        p.failure = Some(f.reason.as_str().to_string());
                    }
                    p.relayout_faces();
                }
            }
        }
        p.file = p
            .source_key
            .rsplit('/')
            .next()
            .unwrap_or_default()
            .to_string();
    }

    /// `user_id`'s photos, newest first.
    pub fn list(&self, user_id: &str) -> Vec<GalleryPhoto> {
        let Some(entry) = self.users.get(user_id) else {
            return vec![];
        };
        let u = entry.lock().expect("gallery lock");
        u.order
            .iter()
            .rev()
            .filter_map(|id| u.photos.get(id).cloned())
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use schemas::*;

    fn thumb(id: &str, orientation: u8) -> ThumbnailDone {
        ThumbnailDone {
            schema_version: 1,
            photo_id: id.into(),
            user_id: "u".into(),
            bucket: "b".into(),
            source_key: format!("users/u/photos/{id}.jpg"),
            status: StageStatus::Ok,
            thumbnail: Some(Thumbnail {
                key: format!("users/u/thumbs/{id}.jpg.jpg"),
                content_type: "image/jpeg".into(),
                width: 300,
                height: 400,
                size_bytes: 1,
            }),
            source: Some(SourceImage {
                format: "jpeg".into(),
                width: 4000,
                height: 3000,
                orientation,
            }),
            failure: None,
            embed_input: None,
            timings: Default::default(),
            uploaded_at_ms: 1,
            finished_at_ms: 2,
        }
    }

    fn emb(id: &str) -> EmbeddingDone {
        EmbeddingDone {
            schema_version: 1,
            photo_id: id.into(),
            user_id: "u".into(),
            status: StageStatus::Ok,
            profile: "p".into(),
            faces: vec![Face {
                bbox: [300.0, 400.0, 600.0, 800.0],
                score: 0.9,
                landmarks: vec![],
                embedding: vec![],
            }],
            faces_omitted: 0,
            failure: None,
            uploaded_at_ms: 1,
            finished_at_ms: 3,
        }
    }

    #[test]
    fn faces_are_fractions_of_the_oriented_original_in_any_event_order() {
        let g = Gallery::new(10);
        g.apply(&StageEvent::Embedding(emb("a"))); // embedded read before thumbnailed
        g.apply(&StageEvent::Thumbnail(thumb("a", 6))); // rotated: 3000×4000 oriented
        let p = &g.list("u")[0];
        assert_eq!((p.width, p.height), (3000, 4000));
        assert_eq!((p.thumbnail_status, p.embedding_status), ("ok", "ok"));
        assert_eq!(p.file, "a.jpg");
        let f = p.faces[0];
        assert_eq!((f.x, f.y, f.w, f.h), (0.1, 0.1, 0.2, 0.2));
    }

    #[test]
    fn bounded_per_user_newest_first() {
        let g = Gallery::new(2);
        for id in ["a", "b", "c"] {
            g.apply(&StageEvent::Thumbnail(thumb(id, 1)));
        }
        let ids: Vec<_> = g.list("u").into_iter().map(|p| p.photo_id).collect();
        assert_eq!(ids, ["c", "b"]);
        assert!(g.list("other").is_empty());
    }
}
