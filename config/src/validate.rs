//! Checks values that type-check but cannot work, and notes what is accepted but unused.
//! Everything is collected; nothing stops at the first finding.

use std::collections::HashMap;

use crate::defaults as d;
use crate::duration::ConfigDuration;
use crate::error::Report;
use crate::load::Facts;
use crate::normalize::ProviderOrigin;
use crate::positions::KeyPath;
use crate::schema::{ApiKeyConfig, Config, HealthCheckConfig, Http3Config, RateLimitConfig};

fn at(path: &str) -> KeyPath {
    KeyPath::parse(path)
}

fn non_zero(report: &mut Report<'_>, path: &KeyPath, duration: ConfigDuration) {
    if duration.is_zero() {
        report.problem(path, "must be longer than 0s");
    }
}

fn at_least(report: &mut Report<'_>, path: &KeyPath, value: u64, min: u64) {
    if value < min {
        report.problem(path, format!("must be at least {min} (got {value})"));
    }
}

pub(crate) fn validate(config: &Config, facts: &Facts, report: &mut Report<'_>) {
    server(config, report);
    breaker(config, report);
    routing(config, report);
    providers(config, facts, report);
    logging(config, report);
    auth(config, facts, report);
    rate_limits(config, report);
    crate::validate_cache::caches(config, report);
    if let Some(cluster) = &config.cluster {
        crate::validate_cluster::cluster(cluster, report);
    }
    unused(config, report);
}

fn server(config: &Config, report: &mut Report<'_>) {
    let server = &config.server;
    if server.host.trim().is_empty() {
        report.problem(
            &at("server.host"),
            "must not be empty (use 0.0.0.0 or 127.0.0.1)",
        );
    }
    non_zero(report, &at("server.read_timeout"), server.read_timeout);
    non_zero(report, &at("server.write_timeout"), server.write_timeout);
    at_least(
        report,
        &at("server.max_body_bytes"),
        server.max_body_bytes as u64,
        1024,
    );
    at_least(
        report,
        &at("server.max_header_bytes"),
        server.max_header_bytes as u64,
        1024,
    );
    if server.busy_poll.get() > d::SERVER_BUSY_POLL_MAX.get() {
        report.problem(
            &at("server.busy_poll"),
            format!(
                "must be at most {} (got {}): spinning longer outlasts any wake-up it saves",
                d::SERVER_BUSY_POLL_MAX,
                server.busy_poll
            ),
        );
    }
    overload(config, report);
    if let Some(tls) = &server.tls {
        for (key, file) in [("cert_file", &tls.cert_file), ("key_file", &tls.key_file)] {
            if file.trim().is_empty() {
                report.problem(&at("server.tls").key(key), "must name a PEM file");
            }
        }
    }
    if let Some(http3) = server.http3.as_ref().filter(|h| h.enabled) {
        http3_checks(config, http3, report);
    }
}

/// The load-shedding and connection caps, and Hapax's `queue:` block that may set the former.
fn overload(config: &Config, report: &mut Report<'_>) {
    let server = &config.server;
    if let Some(cap) = server.max_inflight_requests {
        at_least(report, &at("server.max_inflight_requests"), cap as u64, 1);
    }
    at_least(
        report,
        &at("server.max_connections"),
        server.max_connections as u64,
        1,
    );
    let Some(queue) = &config.queue else {
        return;
    };
    if let Some(size) = queue.max_size {
        at_least(report, &at("queue.max_size"), size, 1);
    }
    if queue.is_enabled() && queue.max_size.is_some() && server.max_inflight_requests.is_some() {
        report.notice(
            &at("queue.max_size"),
            "overridden by `server.max_inflight_requests`",
        );
    }
    if !queue.is_enabled() && queue.max_size.is_some() {
        report.notice(
            &at("queue.max_size"),
            "ignored: the queue is disabled, so the default cap on requests in flight applies",
        );
    }
}

/// HTTP/3 needs a port, a certificate and a UDP port of its own (not gossip's). The files
/// themselves are read and checked by the node (`hapax validate` and start-up).
fn http3_checks(config: &Config, http3: &Http3Config, report: &mut Report<'_>) {
    if http3.port.is_none() {
        report.problem(
            &at("server.http3.port"),
            "HTTP/3 is enabled, so `port` must be set (a UDP port)",
        );
    }
    let (cert, key) = http3.cert_and_key(config.server.tls.as_ref());
    for (name, file) in [("tls_cert_file", cert), ("tls_key_file", key)] {
        if file.trim().is_empty() {
            report.problem(
                &at("server.http3").key(name),
                format!("HTTP/3 is enabled, so `{name}` (or `server.tls`) must be set"),
            );
        }
    }
    let limits = [
        // HTTP/3 needs three unidirectional streams per side (control, QPACK encoder, decoder).
        (
            "max_uni_streams_concurrent",
            http3.max_uni_streams_concurrent,
            3,
        ),
        (
            "max_bi_streams_concurrent",
            http3.max_bi_streams_concurrent,
            1,
        ),
        (
            "max_stream_receive_window",
            http3.max_stream_receive_window,
            1024,
        ),
        (
            "max_connection_receive_window",
            http3.max_connection_receive_window,
            1024,
        ),
    ];
    for (name, value, min) in limits {
        if let Some(value) = value {
            at_least(report, &at("server.http3").key(name), value, min);
        }
    }
    if let Some(idle) = http3.idle_timeout {
        non_zero(report, &at("server.http3.idle_timeout"), idle);
    }
    let gossip_port = config
        .cluster
        .as_ref()
        .and_then(|c| c.gossip_listen.parse::<std::net::SocketAddr>().ok())
        .map(|a| a.port());
    if let Some(port) = http3.port.filter(|p| *p != 0 && Some(*p) == gossip_port) {
        report.problem(
            &at("server.http3.port"),
            format!("UDP port {port} is also cluster.gossip_listen's port: HTTP/3 and gossip need a UDP port each"),
        );
    }
}

fn breaker(config: &Config, report: &mut Report<'_>) {
    let breaker = &config.circuit_breaker;
    at_least(
        report,
        &at("circuit_breaker.failure_threshold"),
        breaker.failure_threshold.into(),
        1,
    );
    at_least(
        report,
        &at("circuit_breaker.max_requests"),
        breaker.max_requests.into(),
        1,
    );
    non_zero(report, &at("circuit_breaker.interval"), breaker.interval);
    non_zero(report, &at("circuit_breaker.timeout"), breaker.timeout);
    let bad_ratio = breaker.failure_ratio.filter(|r| !(*r > 0.0 && *r <= 1.0));
    if let Some(ratio) = bad_ratio {
        report.problem(
            &at("circuit_breaker.failure_ratio"),
            format!("must be in (0, 1] (got {ratio})"),
        );
    }
}

fn routing(config: &Config, report: &mut Report<'_>) {
    let routing = &config.routing;
    at_least(
        report,
        &at("routing.max_attempts"),
        routing.max_attempts.into(),
        1,
    );
    if !(routing.backoff_multiplier >= 1.0 && routing.backoff_multiplier.is_finite()) {
        let got = routing.backoff_multiplier;
        report.problem(
            &at("routing.backoff_multiplier"),
            format!("must be at least 1.0 (got {got})"),
        );
    }
    non_zero(
        report,
        &at("routing.request_timeout"),
        routing.request_timeout,
    );
    non_zero(
        report,
        &at("routing.first_token_timeout"),
        routing.first_token_timeout,
    );
    non_zero(
        report,
        &at("routing.stream_stall_timeout"),
        routing.stream_stall_timeout,
    );
    if routing.backoff_max < routing.backoff_initial {
        let (max, initial) = (routing.backoff_max, routing.backoff_initial);
        report.problem(
            &at("routing.backoff_max"),
            format!("{max} is shorter than backoff_initial ({initial})"),
        );
    }
}

fn health_check(report: &mut Report<'_>, path: &KeyPath, check: &HealthCheckConfig) {
    if !check.enabled {
        return;
    }
    non_zero(report, &path.key("interval"), check.interval);
    non_zero(report, &path.key("timeout"), check.timeout);
    at_least(
        report,
        &path.key("failure_threshold"),
        check.failure_threshold.into(),
        1,
    );
    at_least(
        report,
        &path.key("success_threshold"),
        check.success_threshold.into(),
        1,
    );
}

fn providers(config: &Config, facts: &Facts, report: &mut Report<'_>) {
    if let Some(check) = config
        .llm
        .as_ref()
        .and_then(|llm| llm.health_check.as_ref())
    {
        health_check(report, &at("llm.health_check"), check);
    }
    for (name, provider) in &config.providers {
        let origin = facts
            .origins
            .get(name)
            .cloned()
            .unwrap_or(ProviderOrigin::Declared);
        if origin != ProviderOrigin::Declared {
            continue; // its settings were checked where they were written (`llm`)
        }
        if let Some(timeout) = provider.timeout {
            non_zero(report, &origin.field(name, "timeout"), timeout);
        }
        if let Some(idle) = provider.pool_idle_timeout {
            let max = d::PROVIDER_POOL_IDLE_TIMEOUT_MAX;
            if idle.get() > max.get() {
                report.problem(
                    &origin.field(name, "pool_idle_timeout"),
                    format!("must be at most {max} (got {idle})"),
                );
            } else {
                non_zero(report, &origin.field(name, "pool_idle_timeout"), idle);
            }
        }
        if let Some(check) = &provider.health_check {
            health_check(report, &origin.field(name, "health_check"), check);
        }
        if provider.default_max_tokens == Some(0) {
            report.problem(
                &origin.field(name, "default_max_tokens"),
                "must be at least 1",
            );
        }
    }
}

const LEVELS: &[&str] = &["trace", "debug", "info", "warn", "error", "off"];

/// A simple check of tracing's filter syntax: `level` or `target=level`, comma-separated.
pub(crate) fn valid_filter(filter: &str) -> bool {
    let level_ok = |level: &str| LEVELS.contains(&level.trim().to_ascii_lowercase().as_str());
    !filter.trim().is_empty()
        && filter.split(',').all(|item| match item.split_once('=') {
            Some((target, level)) => !target.trim().is_empty() && level_ok(level),
            None => level_ok(item),
        })
}

fn logging(config: &Config, report: &mut Report<'_>) {
    let level = &config.logging.level;
    if !valid_filter(level) {
        report.problem(
            &at("logging.level"),
            format!("invalid log filter `{level}`: write e.g. `info` or `hapax=debug,warn` (levels: trace, debug, info, warn, error, off)"),
        );
    }
}

/// The caller name of requests served with auth off.
const RESERVED_CALLER: &str = "anonymous";

/// Endpoints whose requests the rate limiter admits (the model calls).
const RATE_LIMITED_ENDPOINTS: [&str; 2] = ["/v1/chat/completions", "/v1/completions"];

fn secret_digest(secret: &str) -> String {
    use sha2::Digest;
    let digest = sha2::Sha256::digest(secret.as_bytes());
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

fn is_sha256_hex(text: &str) -> bool {
    text.len() == 64 && text.bytes().all(|b| b.is_ascii_hexdigit())
}

fn auth(config: &Config, facts: &Facts, report: &mut Report<'_>) {
    let auth = &config.auth;
    let mut names: HashMap<&str, KeyPath> = HashMap::new();

    let lists: [(&str, &[ApiKeyConfig], &[usize]); 2] = [
        ("api_keys", &auth.api_keys, &facts.api_key_rows),
        ("admin_keys", &auth.admin_keys, &facts.admin_key_rows),
    ];
    for (list, keys, rows) in lists {
        // The same secret under two names of one list would serve whichever is matched last,
        // under its limits and provider restrictions: in a list, each secret names one caller.
        // (Client and admin keys are looked up apart: one secret may be both.)
        let mut secrets: HashMap<String, (KeyPath, &str)> = HashMap::new();
        for (i, key) in keys.iter().enumerate() {
            let path = at("auth")
                .key(list)
                .index(rows.get(i).copied().unwrap_or(i));
            api_key(config, report, &path, key);
            if let Some(first) = names.insert(key.name.as_str(), path.clone()) {
                report.problem(
                    &path.key("name"),
                    format!("key name `{}` is already used by {first}", key.name),
                );
            }
            if key.name == RESERVED_CALLER {
                report.problem(
                    &path.key("name"),
                    format!("`{RESERVED_CALLER}` is reserved for requests when auth is off"),
                );
            }
            let secret = match (&key.key, &key.key_sha256) {
                (Some(secret), None) if !secret.expose().is_empty() => {
                    Some((secret_digest(secret.expose()), "key"))
                }
                (None, Some(hash)) if is_sha256_hex(hash) => {
                    Some((hash.to_ascii_lowercase(), "key_sha256"))
                }
                _ => None,
            };
            if let Some((digest, field)) = secret {
                if let Some((first, other)) = secrets.get(&digest) {
                    report.problem(
                        &path.key(field),
                        format!("is the same secret as {first} (key `{other}`): each secret must name one caller"),
                    );
                } else {
                    secrets.insert(digest, (path.clone(), key.name.as_str()));
                }
            }
        }
    }
    let auth_failed = facts.failed_sections.contains("auth") || facts.auth_items_failed;
    if auth.enabled != Some(false) && auth.api_keys.is_empty() && !auth_failed {
        report.notice(
            &at("auth"),
            "auth is on but no api_keys are configured: every request will get 401",
        );
    }
}

fn api_key(config: &Config, report: &mut Report<'_>, path: &KeyPath, key: &ApiKeyConfig) {
    if key.name.trim().is_empty() {
        report.problem(&path.key("name"), "must not be empty");
    }
    match (&key.key, &key.key_sha256) {
        (Some(_), Some(_)) => report.problem(path, "give either `key` or `key_sha256`, not both"),
        (None, None) => report.problem(path, "give `key` or `key_sha256`"),
        (Some(secret), None) if secret.expose().is_empty() => {
            report.problem(
                &path.key("key"),
                "is empty (is its environment variable set?)",
            );
        }
        (None, Some(hash)) if !is_sha256_hex(hash) => {
            report.problem(
                &path.key("key_sha256"),
                "must be 64 hexadecimal characters (a sha256 digest)",
            );
        }
        _ => {}
    }
    for (j, provider) in key.providers.iter().enumerate() {
        if !config.providers.contains_key(provider) {
            report.problem(
                &path.key("providers").index(j),
                format!("unknown provider `{provider}`"),
            );
        } else if !config.provider_preference.contains(provider) {
            report.problem(
                &path.key("providers").index(j),
                format!(
                    "provider `{provider}` is declared but not in provider_preference, so it never serves"
                ),
            );
        }
    }
    if let Some(limit) = &key.rate_limit {
        rate_limit(report, &path.key("rate_limit"), limit);
    }
}

fn rate_limit(report: &mut Report<'_>, path: &KeyPath, limit: &RateLimitConfig) {
    if limit.requests_per_minute == Some(0) {
        report.problem(
            &path.key("requests_per_minute"),
            "must be greater than 0 (leave it out for no limit)",
        );
    }
    if limit.tokens_per_minute == Some(0) {
        report.problem(
            &path.key("tokens_per_minute"),
            "must be greater than 0 (leave it out for no limit)",
        );
    }
}

fn rate_limits(config: &Config, report: &mut Report<'_>) {
    let limits = &config.rate_limits;
    if let Some(limit) = &limits.global {
        rate_limit(report, &at("rate_limits.global"), limit);
    }
    if let Some(limit) = &limits.per_key {
        rate_limit(report, &at("rate_limits.per_key"), limit);
    }
    for (endpoint, limit) in &limits.endpoints {
        let path = at("rate_limits.endpoints").key(endpoint.as_str());
        if !RATE_LIMITED_ENDPOINTS.contains(&endpoint.as_str()) {
            report.problem(
                &path,
                format!(
                    "endpoint `{endpoint}` is not one that is rate limited (one of: {})",
                    RATE_LIMITED_ENDPOINTS.join(", ")
                ),
            );
        }
        rate_limit(report, &path, limit);
    }
}

fn unused(config: &Config, report: &mut Report<'_>) {
    const UNUSED: &str = "accepted but not used yet";
    let llm = config.llm.as_ref();
    let present = [
        ("routes", config.routes.is_some()),
        (
            "queue.state_path",
            config
                .queue
                .as_ref()
                .is_some_and(|q| q.state_path.is_some()),
        ),
        (
            "queue.save_interval",
            config
                .queue
                .as_ref()
                .is_some_and(|q| q.save_interval.is_some()),
        ),
        ("llm.options", llm.is_some_and(|l| l.options.is_some())),
        (
            "llm.max_context_tokens",
            llm.is_some_and(|l| l.max_context_tokens.is_some()),
        ),
        (
            "llm.retry.retryable_errors",
            llm.and_then(|l| l.retry.as_ref())
                .is_some_and(|r| r.retryable_errors.is_some()),
        ),
        (
            "circuit_breaker.test_mode",
            config.circuit_breaker.test_mode.is_some(),
        ),
    ];
    for (path, is_present) in present {
        if is_present {
            report.notice(&at(path), UNUSED);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::valid_filter;

    #[test]
    fn log_filters() {
        for good in [
            "info",
            "DEBUG",
            "hapax=debug,info",
            "hapax_node=trace, warn",
            "off",
        ] {
            assert!(valid_filter(good), "{good}");
        }
        for bad in [
            "",
            "loud",
            "hapax=",
            "=info",
            "info,,debug",
            "hapax=verbose",
        ] {
            assert!(!valid_filter(bad), "{bad}");
        }
    }
}
