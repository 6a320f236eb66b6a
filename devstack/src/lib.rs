//! Local stand-ins for photo-pipeline's outside services, used by `scripts/dev` and the
//! integration tests. Each is a real network server, not a mock:
//!
//! - [`spawn_broker`]: an embedded Kafka-protocol broker (noida-db) on TCP.
//! - [`S3Server`]: an S3-compatible server (s3s + s3s-fs) on HTTP with SigV4 auth, plus
//!   [`B2Emulation`], which sends the signed Backblaze B2 event-notification webhook for every
//!   object created under a prefix, as B2 would.
//! - [`HookSink`]: an HTTP endpoint standing in for the DB-update hook ("Lambda 2").
//! - [`hostile`]: a generated corpus of hostile uploads and webhook bodies for the bad-input tests.
//!
//! Production uses Apache Kafka and Backblaze B2; nothing in `processor` or `status-api`
//! depends on this crate.

pub mod b2;
pub mod backlog;
pub mod broker;
pub mod compare;
pub mod fetch_wait;
pub mod hook_sink;
pub mod hostile;
pub mod s3;
pub mod testkit;

pub use b2::B2Emulation;
pub use broker::spawn_broker;
pub use hook_sink::HookSink;
pub use s3::{S3Config, S3Server};
