//! The short human summary `hapax validate` prints. It never includes secrets.

use std::fmt::Write as _;

use crate::load::{ConfigSource, LoadedConfig};
use crate::schema::RoutingStrategy;

impl LoadedConfig {
    /// Listen address, providers in preference order (type, model, base_url; never keys),
    /// auth and breaker settings.
    pub fn summary(&self) -> String {
        let config = &self.config;
        let mut out = String::new();
        let source = match &self.source {
            ConfigSource::File(path) => path.display().to_string(),
            ConfigSource::Embedded => "embedded default".to_owned(),
        };
        let _ = writeln!(out, "config: {source}");
        let _ = writeln!(out, "listen: {}:{}", config.server.host, config.server.port);
        let server = &config.server;
        if let Some(tls) = &server.tls {
            let _ = writeln!(out, "tls (HTTP/2, HTTP/1.1): {}", tls.cert_file);
        }
        if let Some(http3) = server.http3.as_ref().filter(|h| h.enabled) {
            let port = http3.port.unwrap_or(0);
            let (cert, _) = http3.cert_and_key(server.tls.as_ref());
            let zero_rtt = if http3.enable_0rtt { "on" } else { "off" };
            let _ = writeln!(
                out,
                "http3: udp port {port}, certificate {cert}, 0-rtt {zero_rtt}"
            );
        }
        let _ = writeln!(out, "providers, in preference order:");
        for (i, name) in config.provider_preference.iter().enumerate() {
            let Some(provider) = config.providers.get(name) else {
                continue;
            };
            let model = provider.model.as_deref().unwrap_or("(client's choice)");
            let base_url = provider.base_url.as_deref().unwrap_or("(none)");
            let key = match (&provider.api_key, provider.kind.api_key_env()) {
                (Some(_), _) => "api key set",
                (None, Some(_)) => "NO API KEY",
                (None, None) => "no api key",
            };
            let _ = write!(
                out,
                "  {}. {name}: type={} model={model} base_url={base_url} ({key})",
                i + 1,
                provider.kind
            );
            if !provider.deployments.is_empty() {
                let _ = write!(out, ", {} deployments", provider.deployments.len());
            }
            out.push('\n');
        }
        let unlisted: Vec<&str> = config
            .providers
            .keys()
            .filter(|name| !config.provider_preference.contains(name))
            .map(String::as_str)
            .collect();
        if !unlisted.is_empty() {
            let _ = writeln!(
                out,
                "declared but not in provider_preference: {}",
                unlisted.join(", ")
            );
        }
        let routing = &config.routing;
        let strategy = match routing.strategy {
            RoutingStrategy::Preference => "preference",
            RoutingStrategy::RoundRobin => "round_robin",
            RoutingStrategy::LeastInflight => "least_inflight",
            RoutingStrategy::Latency => "latency",
        };
        let _ = writeln!(
            out,
            "routing: strategy={strategy} max_attempts={} request_timeout={}",
            routing.max_attempts, routing.request_timeout
        );
        let auth = &config.auth;
        if auth.enabled == Some(false) {
            let _ = writeln!(out, "auth: off");
        } else {
            let _ = writeln!(
                out,
                "auth: on, {} api keys, {} admin keys",
                auth.api_keys.len(),
                auth.admin_keys.len()
            );
        }
        let breaker = &config.circuit_breaker;
        let _ = writeln!(
            out,
            "circuit breaker: failure_threshold={} timeout={} interval={} max_requests={}",
            breaker.failure_threshold, breaker.timeout, breaker.interval, breaker.max_requests
        );
        let _ = writeln!(out, "response cache: {}", cache_summary(config));
        let _ = writeln!(
            out,
            "limits: max_inflight_requests={} max_connections={} max_body_bytes={} max_header_bytes={} read_timeout={}",
            config.max_inflight_requests(),
            server.max_connections,
            server.max_body_bytes,
            server.max_header_bytes,
            server.read_timeout
        );
        if !server.busy_poll.is_zero() {
            let _ = writeln!(
                out,
                "busy polling: spins while waiting for upstreams that answer within {} (one-core processes only)",
                server.busy_poll
            );
        }
        out
    }
}

/// `off`, or the backend with its settings; a Redis URL is shown without its credentials.
fn cache_summary(config: &crate::schema::Config) -> String {
    let Some(cache) = config.response_cache() else {
        return "off".to_owned();
    };
    let scope = match cache.scope {
        crate::schema::CacheScope::Key => "key",
        crate::schema::CacheScope::Shared => "shared",
    };
    let backend = match (cache.kind(), &cache.redis) {
        (crate::schema::CacheKind::Redis, Some(redis)) => {
            let address = match redis.address.split_once("://") {
                Some((scheme, rest)) => {
                    format!("{scheme}://{}", rest.rsplit('@').next().unwrap_or_default())
                }
                None => redis.address.clone(),
            };
            let tls = if redis.tls { " tls" } else { "" };
            format!(
                "redis {address} db={}{tls} timeout={}",
                redis.db, redis.timeout
            )
        }
        _ => format!("memory max_size={}", cache.max_size),
    };
    format!("{backend} ttl={} scope={scope}", cache.ttl)
}
