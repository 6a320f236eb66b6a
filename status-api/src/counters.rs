//! Per-user progress counters, exact under redelivery: every photo is counted once per stage
//! however often its events arrive, because each photo's stage outcomes are remembered by photo
//! id for the user's current batch.
//!
//! A *batch* is what the browser shows ("Processing your photos — 40 of 2,000"): photos
//! uploaded close together. When a batch is complete and the user's next upload comes more
//! than `batch_gap` later (event time), the batch is sealed: its photo ids are dropped and its
//! counts folded into lifetime totals. Memory per user is thus bounded by the largest batch
//! (~40 bytes a photo) plus a fixed ~200 bytes, not by the user's history.

use schemas::{EmbeddingDone, PhotoUploaded, StageStatus, ThumbnailDone};
use serde::Serialize;
use std::collections::HashMap;

const UPLOADED: u8 = 1;
const THUMB_OK: u8 = 2;
const THUMB_FAILED: u8 = 4;
const EMBED_OK: u8 = 8;
const EMBED_FAILED: u8 = 16;

/// The stages whose outcomes are counted per photo.
#[derive(Debug, Clone, Copy)]
enum Stage {
    Thumbnail,
    Embedding,
}

/// Ok/failed counts of one stage.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct StageCounts {
    pub ok: u64,
    pub failed: u64,
}

impl StageCounts {
    pub fn done(&self) -> u64 {
        self.ok + self.failed
    }
}

/// Counts of one batch (or of a user's lifetime).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Counts {
    pub uploaded: u64,
    pub thumbnails: StageCounts,
    pub embeddings: StageCounts,
    pub faces: u64,
}

impl Counts {
    fn add(&mut self, o: &Counts) {
        self.uploaded += o.uploaded;
        self.thumbnails.ok += o.thumbnails.ok;
        self.thumbnails.failed += o.thumbnails.failed;
        self.embeddings.ok += o.embeddings.ok;
        self.embeddings.failed += o.embeddings.failed;
        self.faces += o.faces;
    }
}

/// What the browser's banners show.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    Idle,
    /// Thumbnails pending: "Processing your photos".
    Processing,
    /// Thumbnails done, embeddings pending: "Indexing with AI".
    Indexing,
    Done,
}

/// Which stages the deployment runs, so "done" does not wait for a stage that never comes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Expect {
    pub embeddings: bool,
}

/// One user's progress.
#[derive(Debug, Clone, Default)]
pub struct UserCounters {
    photos: HashMap<u128, u8>,
    batch: Counts,
    /// Sealed batches only; add `batch` for the user's total.
    sealed: Counts,
    first_event_ms: i64,
    last_event_ms: i64,
    /// Number of counted changes ever applied: deterministic for a given set of events, so it
    /// is the same on every replica and after a restart; used as the SSE event id.
    seq: u64,
}

/// The JSON snapshot sent to browsers.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Snapshot {
    pub user_id: String,
    pub phase: Phase,
    /// This batch.
    pub uploaded: u64,
    pub thumbnails: StageCounts,
    pub embeddings: StageCounts,
    pub faces: u64,
    pub thumbnails_pending: u64,
    pub embeddings_pending: u64,
    /// All batches, this one included.
    pub lifetime: Counts,
    pub first_event_ms: i64,
    pub last_event_ms: i64,
    pub seq: u64,
}

fn photo_key(photo_id: &str) -> u128 {
    u128::from_str_radix(photo_id, 16).unwrap_or_else(|_| {
        // Not our 32-hex format: hash it (still deterministic).
        let mut h: u128 = 0xcbf29ce484222325;
        for b in photo_id.bytes() {
            h = (h ^ b as u128).wrapping_mul(0x100000001b3);
        }
        h
    })
}

impl UserCounters {
    /// Start a new batch if the current one is complete and `at_ms` is `gap_ms` past it.
    fn maybe_seal(&mut self, at_ms: i64, gap_ms: i64, expect: Expect) {
        if self.batch.uploaded > 0
            && self.phase(expect) == Phase::Done
            && at_ms - self.last_event_ms > gap_ms
        {
            self.sealed.add(&self.batch);
            self.batch = Counts::default();
            self.photos = HashMap::new();
            self.first_event_ms = at_ms;
        }
    }

    fn touch(&mut self, at_ms: i64) {
        if self.first_event_ms == 0 || at_ms < self.first_event_ms {
            self.first_event_ms = at_ms;
        }
        self.last_event_ms = self.last_event_ms.max(at_ms);
    }

    /// Mark the photo uploaded (also implied by later stages' events, which may be read first:
    /// topics are not ordered relative to each other). Returns the photo's flags.
    fn uploaded(&mut self, key: u128) -> &mut u8 {
        let flags = self.photos.entry(key).or_insert(0);
        if *flags & UPLOADED == 0 {
            *flags |= UPLOADED;
            self.batch.uploaded += 1;
            self.seq += 1;
        }
        flags
    }

    /// Apply a `PhotoUploaded`; returns whether anything changed.
    pub fn apply_uploaded(&mut self, e: &PhotoUploaded, gap_ms: i64, expect: Expect) -> bool {
        self.maybe_seal(e.uploaded_at_ms, gap_ms, expect);
        let before = self.seq;
        self.uploaded(photo_key(&e.photo_id));
        self.touch(e.uploaded_at_ms);
        self.seq != before
    }

    /// Record a stage outcome for a photo. A later ok replaces an earlier failure (a re-driven
    /// photo); a failure never replaces an ok; repeats change nothing. Returns whether this was
    /// the photo's first ok for the stage.
    fn stage_outcome(
        &mut self,
        photo_id: &str,
        status: StageStatus,
        stage: Stage,
        at_ms: i64,
    ) -> bool {
        let key = photo_key(photo_id);
        let flags = *self.uploaded(key);
        let (ok_bit, failed_bit) = match stage {
            Stage::Thumbnail => (THUMB_OK, THUMB_FAILED),
            Stage::Embedding => (EMBED_OK, EMBED_FAILED),
        };
        let counts = match stage {
            Stage::Thumbnail => &mut self.batch.thumbnails,
            Stage::Embedding => &mut self.batch.embeddings,
        };
        let new = match status {
            StageStatus::Ok if flags & ok_bit == 0 => {
                if flags & failed_bit != 0 {
                    counts.failed -= 1;
                }
                counts.ok += 1;
                (flags & !failed_bit) | ok_bit
            }
            StageStatus::Failed if flags & (ok_bit | failed_bit) == 0 => {
                counts.failed += 1;
                flags | failed_bit
            }
            _ => flags,
        };
        if new != flags {
            self.photos.insert(key, new);
            self.seq += 1;
        }
        self.touch(at_ms);
        new & ok_bit != 0 && flags & ok_bit == 0
    }

    /// Apply a `ThumbnailDone`; returns whether anything changed.
    pub fn apply_thumbnail(&mut self, e: &ThumbnailDone) -> bool {
        let before = self.seq;
        self.stage_outcome(&e.photo_id, e.status, Stage::Thumbnail, e.finished_at_ms);
        self.seq != before
    }

    /// Apply an `EmbeddingDone` (faces are counted with the photo's first ok).
    pub fn apply_embedding(&mut self, e: &EmbeddingDone) -> bool {
        let before = self.seq;
        if self.stage_outcome(&e.photo_id, e.status, Stage::Embedding, e.finished_at_ms) {
            self.batch.faces += e.faces.len() as u64 + u64::from(e.faces_omitted);
        }
        self.seq != before
    }

    pub fn phase(&self, expect: Expect) -> Phase {
        let b = &self.batch;
        if b.uploaded == 0 {
            Phase::Idle
        } else if b.thumbnails.done() < b.uploaded {
            Phase::Processing
        } else if expect.embeddings && b.embeddings.done() < b.thumbnails.ok {
            // Failed thumbnails never reach the embed stage.
            Phase::Indexing
        } else {
            Phase::Done
        }
    }

    pub fn snapshot(&self, user_id: &str, expect: Expect) -> Snapshot {
        let b = self.batch;
        let mut lifetime = self.sealed;
        lifetime.add(&b);
        Snapshot {
            user_id: user_id.to_string(),
            phase: self.phase(expect),
            uploaded: b.uploaded,
            thumbnails: b.thumbnails,
            embeddings: b.embeddings,
            faces: b.faces,
            thumbnails_pending: b.uploaded.saturating_sub(b.thumbnails.done()),
            embeddings_pending: if expect.embeddings {
                b.thumbnails.ok.saturating_sub(b.embeddings.done())
            } else {
                0
            },
            lifetime,
            first_event_ms: self.first_event_ms,
            last_event_ms: self.last_event_ms,
            seq: self.seq,
        }
    }

    /// Approximate heap bytes held for this user (for the memory benchmark and metrics).
    pub fn heap_bytes(&self) -> usize {
        // hashbrown: one control byte plus the (u128, u8) slot, padded to 32 bytes.
        self.photos.capacity() * (32 + 1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use schemas::*;

    const EXPECT: Expect = Expect { embeddings: true };

    fn up(id: u32, at: i64) -> PhotoUploaded {
        PhotoUploaded {
            schema_version: 1,
            photo_id: format!("{id:032x}"),
            user_id: "u".into(),
            bucket: "b".into(),
            key: format!("k{id}"),
            version_id: "v".into(),
            size_bytes: 1,
            event_id: format!("e{id}"),
            uploaded_at_ms: at,
            received_at_ms: at,
        }
    }

    fn thumb(id: u32, ok: bool, at: i64) -> ThumbnailDone {
        ThumbnailDone {
            schema_version: 1,
            photo_id: format!("{id:032x}"),
            user_id: "u".into(),
            bucket: "b".into(),
            source_key: format!("k{id}"),
            status: if ok {
                StageStatus::Ok
            } else {
                StageStatus::Failed
            },
            thumbnail: None,
            source: None,
            failure: None,
            embed_input: None,
            timings: Default::default(),
            uploaded_at_ms: at,
            finished_at_ms: at,
        }
    }

    fn emb(id: u32, faces: usize, at: i64) -> EmbeddingDone {
        EmbeddingDone {
            schema_version: 1,
            photo_id: format!("{id:032x}"),
            user_id: "u".into(),
            status: StageStatus::Ok,
            profile: "p".into(),
            faces: vec![
                Face {
                    bbox: [0.0; 4],
                    score: 1.0,
                    landmarks: vec![],
                    embedding: vec![1.0]
                };
                faces
            ],
            faces_omitted: 0,
            failure: None,
            uploaded_at_ms: at,
            finished_at_ms: at,
        }
    }

    #[test]
    fn phases_and_exact_counts_under_duplicates() {
        let mut u = UserCounters::default();
        assert_eq!(u.phase(EXPECT), Phase::Idle);
        for _ in 0..3 {
            // every event delivered three times
            u.apply_uploaded(&up(1, 10), 60_000, EXPECT);
            u.apply_uploaded(&up(2, 11), 60_000, EXPECT);
        }
        assert_eq!(u.phase(EXPECT), Phase::Processing);
        for _ in 0..3 {
            u.apply_thumbnail(&thumb(1, true, 20));
            u.apply_thumbnail(&thumb(2, false, 21));
        }
        let s = u.snapshot("u", EXPECT);
        assert_eq!(
            (s.uploaded, s.thumbnails.ok, s.thumbnails.failed),
            (2, 1, 1)
        );
        assert_eq!(
            s.phase,
            Phase::Indexing,
            "one ok thumbnail still needs its embedding"
        );
        for _ in 0..2 {
            u.apply_embedding(&emb(1, 3, 30));
        }
        let s = u.snapshot("u", EXPECT);
        assert_eq!((s.phase, s.embeddings.ok, s.faces), (Phase::Done, 1, 3));
        assert_eq!(s.seq, 5, "2 uploads + 2 thumbnails + 1 embedding");
    }

    #[test]
    fn stage_events_before_upload_and_redrive() {
        let mut u = UserCounters::default();
        u.apply_thumbnail(&thumb(7, false, 5)); // read before its PhotoUploaded
        u.apply_uploaded(&up(7, 1), 60_000, EXPECT);
        let s = u.snapshot("u", EXPECT);
        assert_eq!((s.uploaded, s.thumbnails.failed), (1, 1));
        u.apply_thumbnail(&thumb(7, true, 50)); // re-driven from the DLQ, now ok
        u.apply_thumbnail(&thumb(7, false, 60)); // a stale failure never wins over ok
        let s = u.snapshot("u", Expect { embeddings: false });
        assert_eq!(
            (s.thumbnails.ok, s.thumbnails.failed, s.phase),
            (1, 0, Phase::Done)
        );
    }

    #[test]
    fn batches_seal_after_a_gap_and_lifetime_adds_up() {
        let e = Expect { embeddings: false };
        let mut u = UserCounters::default();
        u.apply_uploaded(&up(1, 1_000), 60_000, e);
        u.apply_thumbnail(&thumb(1, true, 2_000));
        u.apply_uploaded(&up(2, 200_000), 60_000, e); // next batch, 3 minutes later
        let s = u.snapshot("u", e);
        assert_eq!(
            (s.uploaded, s.thumbnails.ok, s.phase),
            (1, 0, Phase::Processing)
        );
        assert_eq!((s.lifetime.uploaded, s.lifetime.thumbnails.ok), (2, 1));
        assert_eq!(u.photos.len(), 1, "the sealed batch's ids are dropped");
    }
}
