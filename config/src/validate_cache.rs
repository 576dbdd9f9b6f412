//! Checks of the response cache: `cache:` and Hapax's `llm.cache`.

use std::time::Duration;

use crate::error::Report;
use crate::positions::KeyPath;
use crate::schema::{CacheConfig, CacheKind, Config, RedisCacheConfig};

/// Past this, a slow Redis would noticeably delay every cacheable request.
const SLOW_REDIS_TIMEOUT: Duration = Duration::from_secs(1);

pub(crate) fn caches(config: &Config, report: &mut Report<'_>) {
    let legacy = config.llm.as_ref().and_then(|l| l.cache.as_ref());
    for (path, block) in [("cache", config.cache.as_ref()), ("llm.cache", legacy)] {
        if let Some(block) = block.filter(|b| b.is_enabled()) {
            cache(report, &KeyPath::parse(path), block);
        }
    }
}

fn cache(report: &mut Report<'_>, path: &KeyPath, cache: &CacheConfig) {
    if cache.ttl.is_zero() {
        report.problem(&path.key("ttl"), "must be longer than 0s");
    }
    match cache.kind() {
        kind @ (CacheKind::Memory | CacheKind::File) => {
            if cache.max_size == 0 {
                report.problem(&path.key("max_size"), "must be at least 1 (entries)");
            }
            if kind == CacheKind::File {
                report.notice(
                    &path.key("type"),
                    "`type: file` is not supported: the in-memory cache is used (max_size counts entries)",
                );
            }
            if cache.redis.is_some() {
                report.notice(
                    &path.key("redis"),
                    "ignored: `type` is not `redis`, so this node caches in memory",
                );
            }
        }
        CacheKind::Redis => match &cache.redis {
            None => report.problem(
                &path.key("type"),
                "`type: redis` needs a `redis` block with `address` (host:port or redis:// URL)",
            ),
            Some(redis) => redis_cache(report, &path.key("redis"), redis),
        },
    }
    if cache.dir.is_some() {
        report.notice(&path.key("dir"), "accepted but not used yet");
    }
}

fn redis_cache(report: &mut Report<'_>, path: &KeyPath, redis: &RedisCacheConfig) {
    if let Err(message) = check_redis_address(&redis.address) {
        report.problem(&path.key("address"), message);
    }
    if redis.db < 0 {
        report.problem(
            &path.key("db"),
            format!("must be 0 or more (got {})", redis.db),
        );
    }
    if redis.timeout.is_zero() {
        report.problem(&path.key("timeout"), "must be longer than 0s");
    } else if redis.timeout.get() > SLOW_REDIS_TIMEOUT {
        report.notice(
            &path.key("timeout"),
            format!(
                "a slow Redis may delay every cacheable request by up to {} (the default is 50ms)",
                redis.timeout
            ),
        );
    }
}

/// `host:port`, or a `redis://` / `rediss://` URL with a host.
pub(crate) fn check_redis_address(address: &str) -> Result<(), String> {
    if address.trim().is_empty() {
        return Err(
            "the Redis address is missing: write `host:port` or a `redis://` URL".to_owned(),
        );
    }
    if address.chars().any(char::is_whitespace) {
        return Err(format!(
            "invalid Redis address `{address}`: it contains spaces"
        ));
    }
    if let Some((scheme, rest)) = address.split_once("://") {
        if !matches!(scheme, "redis" | "rediss") {
            return Err(format!(
                "invalid Redis address `{address}`: the scheme must be `redis://` or `rediss://`"
            ));
        }
        let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
        let host = authority.rsplit('@').next().unwrap_or_default();
        if host.is_empty() || host.starts_with(':') {
            return Err(format!("invalid Redis address `{address}`: no host"));
        }
        return Ok(());
    }
    match address.rsplit_once(':') {
        Some((host, port)) if !host.is_empty() && port.parse::<u16>().is_ok_and(|p| p > 0) => {
            Ok(())
        }
        _ => Err(format!(
            "invalid Redis address `{address}`: write `host:port` (e.g. `localhost:6379`) or a `redis://` URL"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::check_redis_address;

    #[test]
    fn redis_addresses() {
        for good in [
            "localhost:6379",
            "10.0.0.5:6380",
            "[::1]:6379",
            "redis://localhost",
            "redis://:secret@cache.internal:6379/2",
            "rediss://cache.example.com:6380",
        ] {
            assert!(check_redis_address(good).is_ok(), "{good}");
        }
        for bad in [
            "",
            "localhost",
            "localhost:0",
            "localhost:port",
            ":6379",
            "http://localhost:6379",
            "redis://",
            "redis://:6379",
            "local host:6379",
        ] {
            assert!(check_redis_address(bad).is_err(), "{bad}");
        }
    }
}
