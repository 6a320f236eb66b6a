//! photo-pipeline's status-api: consumes the stage topics into per-user counters and streams
//! them to browsers over Server-Sent Events. See the repository README for the whole system.

pub mod auth;
pub mod config;
pub mod counters;
pub mod feed;
pub mod server;
pub mod sse;
pub mod store;
