//! photo-pipeline's processor: the upload stage (B2 event-notification webhook → Kafka) and the
//! thumbnail stage (Kafka → S3 thumbnail → DB hook → Kafka), in one binary that can run any
//! subset of stages. See `README.md` at the repository root for the whole system.

pub mod config;
pub mod cpu_pool;
pub mod embed;
pub mod embed_stage;
pub mod fair_queue;
pub mod handoff;
pub mod heartbeat;
pub mod hook;
pub mod ingest;
pub mod kafka;
pub mod keys;
pub mod offsets;
pub mod outcome;
pub mod photo;
pub mod retry;
pub mod server;
pub mod settings;
pub mod stage_runner;
pub mod storage;
pub mod telemetry;
pub mod thumbnail;
