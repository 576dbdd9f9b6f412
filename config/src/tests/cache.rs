//! The response cache section: Hapax's `llm.cache` keys, defaults, and every problem located.

use std::time::Duration;

use super::{at, load, notice, problem};
use crate::*;

const PROVIDER: &str = "providers:\n  mock: {type: mock}\n";

#[test]
fn cache_is_off_unless_configured_and_on_when_a_block_is_written() {
    let loaded = load(PROVIDER, &[]).unwrap();
    assert!(loaded.config.response_cache().is_none());
    assert!(loaded.summary().contains("response cache: off"));

    let loaded = load(&format!("{PROVIDER}cache: {{}}\n"), &[]).unwrap();
    let cache = loaded.config.response_cache().unwrap();
    assert_eq!(cache.kind(), CacheKind::Memory);
    assert_eq!(cache.ttl.get(), Duration::from_secs(3600));
    assert_eq!(cache.max_size, defaults::CACHE_MAX_ENTRIES);
    assert_eq!(cache.scope, CacheScope::Key);

    let loaded = load(&format!("{PROVIDER}cache: {{enabled: false}}\n"), &[]).unwrap();
    assert!(loaded.config.response_cache().is_none());
}

#[test]
fn redis_block_implies_redis_and_keeps_its_settings() {
    let text = format!(
        "{PROVIDER}cache:\n  ttl: 10m\n  scope: shared\n  redis:\n    address: ${{REDIS_ADDR}}\n    password: ${{REDIS_PASSWORD}}\n    db: 2\n    tls: true\n    timeout: 20ms\n"
    );
    let loaded = load(
        &text,
        &[
            ("REDIS_ADDR", "cache.internal:6380"),
            ("REDIS_PASSWORD", "pw"),
        ],
    )
    .unwrap();
    let cache = loaded.config.response_cache().unwrap();
    assert_eq!(cache.kind(), CacheKind::Redis);
    assert_eq!(cache.scope, CacheScope::Shared);
    assert_eq!(cache.ttl.get(), Duration::from_secs(600));
    let redis = cache.redis.as_ref().unwrap();
    assert_eq!(redis.address, "cache.internal:6380");
    assert_eq!(redis.password.as_ref().map(Secret::expose), Some("pw"));
    assert_eq!((redis.db, redis.tls), (2, true));
    assert_eq!(redis.timeout.get(), Duration::from_millis(20));
    assert!(
        !loaded.notices.iter().any(|n| n.path.contains("cache")),
        "{:?}",
        loaded.notices
    );
    let summary = loaded.summary();
    assert!(
        summary.contains(
            "response cache: redis cache.internal:6380 db=2 tls timeout=20ms ttl=10m scope=shared"
        ),
        "{summary}"
    );
    let url = format!("{PROVIDER}cache: {{redis: {{address: \"redis://:pw@cache:6379/1\"}}}}\n");
    let summary = load(&url, &[]).unwrap().summary();
    assert!(
        summary.contains("redis redis://cache:6379/1 db=0"),
        "{summary}"
    );
    assert!(!summary.contains("pw"), "{summary}");
}

#[test]
fn hapax_llm_cache_follows_hapax_defaults() {
    let hapax = "llm:\n  provider: ollama\n  cache:\n    enable: true\n    type: redis\n    ttl: 24h\n    max_size: 1000\n    redis:\n      address: localhost:6379\n      password: \"\"\n      db: 0\n";
    let loaded = load(hapax, &[]).unwrap();
    let cache = loaded.config.response_cache().unwrap();
    assert_eq!(cache.kind(), CacheKind::Redis);
    assert_eq!(cache.ttl.get(), Duration::from_secs(24 * 3600));
    assert!(
        !loaded
            .notices
            .iter()
            .any(|n| n.path.starts_with("llm.cache"))
    );

    let off = "llm:\n  provider: ollama\n  cache:\n    type: memory\n";
    let loaded = load(off, &[]).unwrap();
    assert!(
        loaded.config.response_cache().is_none(),
        "Hapax's `enable` defaults to false"
    );

    let both = "llm:\n  provider: ollama\n  cache: {enable: true}\ncache: {ttl: 5m}\n";
    let loaded = load(both, &[]).unwrap();
    assert_eq!(
        loaded.config.response_cache().unwrap().ttl.get(),
        Duration::from_secs(300)
    );
    assert!(notice(&loaded, "llm.cache").message.contains("wins over"));
}

#[test]
fn cache_problems_are_located() {
    let text = format!(
        "{PROVIDER}cache:\n  type: redis\n  ttl: 0s\n  redis:\n    address: localhost\n    db: -1\n    timeout: 0s\n    tiemout: 1s\n"
    );
    let errors = load(&text, &[]).unwrap_err();
    let typo = problem(&errors, "cache.redis.tiemout");
    assert_eq!(
        typo.message,
        "unknown key `tiemout`; did you mean `timeout`?"
    );
    assert_eq!(at(typo), (Some(10), Some(5)));

    let text = format!(
        "{PROVIDER}cache:\n  type: redis\n  ttl: 0s\n  redis:\n    address: localhost\n    db: -1\n    timeout: 0s\n"
    );
    let errors = load(&text, &[]).unwrap_err();
    assert_eq!(at(problem(&errors, "cache.ttl")), (Some(5), Some(3)));
    let address = problem(&errors, "cache.redis.address");
    assert_eq!(at(address), (Some(7), Some(5)));
    assert!(address.message.contains("host:port"), "{address}");
    assert_eq!(at(problem(&errors, "cache.redis.db")), (Some(8), Some(5)));
    assert_eq!(
        at(problem(&errors, "cache.redis.timeout")),
        (Some(9), Some(5))
    );
    assert_eq!(errors.problems.len(), 4, "{errors}");

    let errors = load(&format!("{PROVIDER}cache: {{type: redis}}\n"), &[]).unwrap_err();
    assert!(
        problem(&errors, "cache.type")
            .message
            .contains("needs a `redis` block")
    );
    let errors = load(&format!("{PROVIDER}cache: {{type: disk}}\n"), &[]).unwrap_err();
    assert!(
        problem(&errors, "cache.type")
            .message
            .contains("unknown value `disk`")
    );
    let errors = load(&format!("{PROVIDER}cache: {{scope: tenant}}\n"), &[]).unwrap_err();
    assert!(problem(&errors, "cache.scope").message.contains("`key`"));
}

#[test]
fn hapax_file_cache_falls_back_to_memory_with_a_notice() {
    let text = format!("{PROVIDER}cache: {{type: file, dir: /tmp/cache, max_size: 100}}\n");
    let loaded = load(&text, &[]).unwrap();
    assert_eq!(loaded.config.response_cache().unwrap().max_size, 100);
    assert!(
        notice(&loaded, "cache.type")
            .message
            .contains("not supported")
    );
    assert_eq!(
        notice(&loaded, "cache.dir").message,
        "accepted but not used yet"
    );
}
