//! photo-pipeline's status-api: consumes the stage topics into per-user counters and streams
//! them to browsers over Server-Sent Events. See the repository README for the whole system.

pub mod accounts;
pub mod auth;
pub mod config;
pub mod console;
pub mod counters;
pub mod feed;
pub mod gallery;
pub mod ops;
pub mod presign;
pub mod server;
pub mod session;
pub mod settings;
pub mod sse;
pub mod store;
