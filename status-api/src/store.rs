//! The in-memory view: one [`UserCounters`] per user in a `DashMap`, each with a `watch`
//! channel carrying its latest snapshot to every SSE connection of that user. A watch channel
//! keeps only the newest value, so a slow browser skips intermediate states instead of
//! buffering them: fan-out is O(connections), memory O(users).

use crate::counters::{Expect, Snapshot, UserCounters};
use dashmap::DashMap;
use schemas::{EmbeddingDone, PhotoUploaded, ThumbnailDone};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use tokio::sync::watch;

/// A snapshot plus the event time of the change that produced it (for fan-out latency).
#[derive(Debug, Clone)]
pub struct Published {
    pub snapshot: Snapshot,
    pub event_ms: i64,
}

struct UserEntry {
    counters: Mutex<UserCounters>,
    tx: watch::Sender<Arc<Published>>,
}

/// Every user's progress.
pub struct StatusStore {
    users: DashMap<String, Arc<UserEntry>>,
    expect: Expect,
    batch_gap_ms: i64,
    pub events_applied: AtomicU64,
}

/// A stage event of any topic.
pub enum StageEvent {
    Uploaded(PhotoUploaded),
    Thumbnail(ThumbnailDone),
    Embedding(EmbeddingDone),
}

impl StageEvent {
    pub fn user_id(&self) -> &str {
        match self {
            Self::Uploaded(e) => &e.user_id,
            Self::Thumbnail(e) => &e.user_id,
            Self::Embedding(e) => &e.user_id,
        }
    }

    fn event_ms(&self) -> i64 {
        match self {
            Self::Uploaded(e) => e.received_at_ms,
            Self::Thumbnail(e) => e.finished_at_ms,
            Self::Embedding(e) => e.finished_at_ms,
        }
    }
}

impl StatusStore {
    pub fn new(expect: Expect, batch_gap_ms: i64) -> Self {
        Self {
            users: DashMap::new(),
            expect,
            batch_gap_ms,
            events_applied: AtomicU64::new(0),
        }
    }

    fn entry(&self, user_id: &str) -> Arc<UserEntry> {
        if let Some(e) = self.users.get(user_id) {
            return e.clone();
        }
        self.users
            .entry(user_id.to_string())
            .or_insert_with(|| {
                let snapshot = UserCounters::default().snapshot(user_id, self.expect);
                let (tx, _) = watch::channel(Arc::new(Published {
                    snapshot,
                    event_ms: 0,
                }));
                Arc::new(UserEntry {
                    counters: Mutex::new(UserCounters::default()),
                    tx,
                })
            })
            .clone()
    }

    /// Apply one event; subscribers are notified if the user's counts changed.
    pub fn apply(&self, event: &StageEvent) {
        self.events_applied.fetch_add(1, Ordering::Relaxed);
        let user_id = event.user_id();
        let entry = self.entry(user_id);
        let mut c = entry.counters.lock().expect("counters lock");
        let changed = match event {
            StageEvent::Uploaded(e) => c.apply_uploaded(e, self.batch_gap_ms, self.expect),
            StageEvent::Thumbnail(e) => c.apply_thumbnail(e),
            StageEvent::Embedding(e) => c.apply_embedding(e),
        };
        if changed {
            let snapshot = c.snapshot(user_id, self.expect);
            drop(c);
            entry.tx.send_replace(Arc::new(Published {
                snapshot,
                event_ms: event.event_ms(),
            }));
        }
    }

    /// The user's current snapshot.
    pub fn snapshot(&self, user_id: &str) -> Arc<Published> {
        self.entry(user_id).tx.borrow().clone()
    }

    /// Follow a user's snapshots.
    pub fn subscribe(&self, user_id: &str) -> watch::Receiver<Arc<Published>> {
        self.entry(user_id).tx.subscribe()
    }

    /// Users known (seen in events or subscribed to).
    pub fn users(&self) -> usize {
        self.users.len()
    }

    /// Approximate heap bytes of all per-photo state.
    pub fn photo_state_bytes(&self) -> usize {
        self.users
            .iter()
            .map(|e| e.counters.lock().expect("lock").heap_bytes())
            .sum()
    }
}
