//! HTTP handlers. Every handler returns `Result<_, ApiError>`; the mapping to status and
//! JSON lives in `crate::error` alone.

pub mod admin;
pub mod body;
pub mod chat;
pub mod completions;
pub mod exec;
pub mod health;
pub mod models;
pub mod sse;
pub mod validate;
