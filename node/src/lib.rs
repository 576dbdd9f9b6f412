//! Hapax node: the HTTP front, providers, routing and failover, circuit breakers, health
//! checks, deduplication, rate limits, auth and metrics of one gateway node.

pub mod api;
pub mod app;
pub mod auth;
pub mod busy_poll;
pub mod cache;
pub mod cluster_link;
pub mod consensus_link;
pub mod dedup;
pub mod error;
#[doc(hidden)]
pub mod fuzzing;
pub mod logging;
pub mod memory;
pub mod metrics;
pub mod providers;
pub mod ratelimit;
pub mod routing;
pub mod server;
pub mod wire;
