//! How the embed input made by the thumbnail stage reaches the embed stage, so that the
//! original is downloaded and decoded once (`docs/embed.md`, "Decode once").
//!
//! - [`HandoffMode::Memory`] (both stages in one process): the input waits in a
//!   [`HandoffCache`] keyed by photo id, bounded in bytes; the embed stage takes it out. When
//!   the cache is full (thumbnails run first, so under load they get far ahead of the face
//!   work), the thumbnail stage hands nothing over and makes the thumbnail from its cheapest
//!   decode; the embed stage then decodes the original itself, at the smallest JPEG scale the
//!   embed input needs. Writing the input out as a derivative instead would cost the
//!   thumbnail path a PNG encode and an upload per photo, and the bucket the objects.
//! - [`HandoffMode::Derivative`] (separate deployments): the input is written once as a
//!   lossless PNG object next to the photo, named in `ThumbnailDone.embed_input`; the embed
//!   stage reads it and deletes it after its result is delivered.
//! - Either way, an input that is gone (another replica took the partition, a restart lost the
//!   memory, the object was deleted after a redelivered result) falls back to the original —
//!   slower, never wrong. `embed_input_total{source}` shows which path photos took.

use crate::embed::EmbedInput;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Where the thumbnail stage puts the embed input.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum HandoffMode {
    /// In process memory (the embed stage runs in this process), spilling to a derivative
    /// object when the memory budget is used up.
    Memory,
    /// As a derivative object in the bucket (the embed stage runs elsewhere).
    Derivative,
    /// Not at all: thumbnails shrink on load (fastest) and the embed stage reads the original.
    None,
}

/// Embed inputs waiting for the embed stage of this process. Entries older than the time to
/// live are dropped on insert (their photo was embedded elsewhere); a full cache refuses new
/// entries rather than dropping waiting ones.
pub struct HandoffCache {
    inner: Mutex<CacheState>,
    budget_bytes: usize,
    ttl: Duration,
}

#[derive(Default)]
struct CacheState {
    entries: HashMap<String, (Instant, Arc<EmbedInput>)>,
    bytes: usize,
}

impl HandoffCache {
    /// A cache holding at most `budget_bytes` of pixels, entries living at most `ttl`.
    pub fn new(budget_bytes: usize, ttl: Duration) -> Self {
        Self {
            inner: Mutex::new(CacheState::default()),
            budget_bytes,
            ttl,
        }
    }

    /// Keep `input` for `photo_id`; `false` if it does not fit (the caller spills it).
    pub fn insert(&self, photo_id: &str, input: Arc<EmbedInput>) -> bool {
        let mut st = self.inner.lock().expect("handoff cache lock");
        let now = Instant::now();
        let ttl = self.ttl;
        let mut freed = 0;
        st.entries.retain(|_, (at, e)| {
            let keep = now.duration_since(*at) < ttl;
            if !keep {
                freed += e.byte_len();
            }
            keep
        });
        st.bytes -= freed;
        if st.bytes + input.byte_len() > self.budget_bytes {
            return false;
        }
        st.bytes += input.byte_len();
        if let Some((_, old)) = st.entries.insert(photo_id.to_owned(), (now, input)) {
            st.bytes -= old.byte_len();
        }
        metrics::gauge!("embed_handoff_bytes").set(st.bytes as f64);
        true
    }

    /// Whether an input of `bytes` would fit now (entries past their time to live count as
    /// gone). The thumbnail stage asks before decoding: when the embed stage is far behind and
    /// the cache is full, it makes the thumbnail alone, from its cheapest decode.
    pub fn has_room(&self, bytes: usize) -> bool {
        let st = self.inner.lock().expect("handoff cache lock");
        st.bytes + bytes <= self.budget_bytes
            || st.entries.values().any(|(at, _)| at.elapsed() >= self.ttl)
    }

    /// Take the input of `photo_id` out, if it is here.
    pub fn take(&self, photo_id: &str) -> Option<Arc<EmbedInput>> {
        let mut st = self.inner.lock().expect("handoff cache lock");
        let (_, input) = st.entries.remove(photo_id)?;
        st.bytes -= input.byte_len();
        metrics::gauge!("embed_handoff_bytes").set(st.bytes as f64);
        Some(input)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn input(bytes: usize) -> Arc<EmbedInput> {
        Arc::new(EmbedInput {
            pixels: vec![0; bytes],
            width: 1,
            height: 1,
            source_width: 1,
            source_height: 1,
        })
    }

    #[test]
    fn refuses_when_full_and_frees_on_take() {
        let cache = HandoffCache::new(100, Duration::from_secs(60));
        assert!(cache.insert("a", input(60)));
        assert!(!cache.insert("b", input(60)), "over budget must spill");
        assert_eq!(cache.take("a").unwrap().byte_len(), 60);
        assert!(cache.take("a").is_none());
        assert!(cache.insert("b", input(60)));
    }

    #[test]
    fn has_room_says_whether_an_input_would_fit() {
        let cache = HandoffCache::new(100, Duration::from_secs(60));
        assert!(cache.has_room(100));
        assert!(cache.insert("a", input(60)));
        assert!(cache.has_room(40));
        assert!(!cache.has_room(41));
    }

    #[test]
    fn stale_entries_make_room() {
        let cache = HandoffCache::new(100, Duration::from_millis(20));
        assert!(cache.insert("a", input(60)));
        std::thread::sleep(Duration::from_millis(40));
        assert!(cache.insert("b", input(60)));
        assert!(cache.take("a").is_none());
    }
}
