//! Processor heartbeats, topic `photos.heartbeats`: every few seconds each processor instance
//! says which stages it runs, with what key configuration, and its counters, so the console's
//! Services and Dashboard pages can show instances, in-flight work and lag without a
//! Prometheus server.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// The heartbeat topic.
pub const TOPIC: &str = "photos.heartbeats";

/// Counters of one stage in one instance, since the instance started.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StageCounters {
    pub processed_ok: u64,
    pub processed_failed: u64,
}

/// One instance's state.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Heartbeat {
    pub schema_version: u32,
    /// Unique per process (host name and process id, or the static group instance id).
    pub instance_id: String,
    /// Stages this instance runs: `ingest`, `thumbnail`, `embed`.
    pub stages: Vec<String>,
    /// Key configuration (thumbnail box and quality, model profile, workers, …).
    pub config: BTreeMap<String, String>,
    /// Photos being processed now, all stages.
    pub in_flight: u64,
    /// Per stage.
    pub counters: BTreeMap<String, StageCounters>,
    /// Records behind the partition ends, per input topic, if known.
    #[serde(default)]
    pub consumer_lag: BTreeMap<String, u64>,
    pub started_at_ms: i64,
    pub sent_at_ms: i64,
}
