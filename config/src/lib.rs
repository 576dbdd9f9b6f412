//! Hapax configuration: the typed schema, loading from YAML with `${VAR}` expansion, and
//! validation that reports every problem at once with its `line:column`.
//!
//! The node reads only the normalised [`Config`]: legacy `llm:` blocks, implicit providers,
//! environment keys and default base URLs are resolved here, once.

pub mod defaults;
pub mod duration;
pub mod env;
pub mod positions;
pub mod schema;

mod error;
mod load;
mod normalize;
mod summary;
mod validate;
mod validate_cache;
mod validate_cluster;

#[cfg(test)]
mod tests;

pub use duration::ConfigDuration;
pub use error::{ConfigErrors, ConfigNotice, ConfigProblem};
pub use load::{ConfigSource, LoadedConfig, load_embedded, load_file, load_str};
pub use schema::*;
