//! What the processor and status-api share, so each exists once:
//!
//! - [`kafka`]: the Kafka layer: broker settings flattened into both services' configs
//!   ([`kafka::KafkaArgs`]), topic creation ([`kafka::ensure_topics`]), "follow these topics
//!   from a starting point" ([`kafka::assign_when_ready`]), consumer lag metrics
//!   ([`kafka::LagStatistics`]) and the durable JSON event producer ([`kafka::EventProducer`]).
//! - [`s3`]: the object store's settings (`S3_*`) and client settings ([`s3::S3Args`]).
//! - [`service`]: the skeleton of a service process: logging (`RUST_LOG`, `LOG_FORMAT=json`) and
//!   the shutdown signal.

pub mod kafka;
pub mod s3;
pub mod service;
