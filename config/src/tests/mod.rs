//! Loading scenarios, each with its own fake environment (the process env is never touched).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;
use std::time::Duration;

use crate::*;

mod cache;
mod checks;
mod overload;

const SEED: &str = include_str!("../../tests/fixtures/seed-example.yaml");
const HAPAX: &str = include_str!("../../tests/fixtures/hapax-style.yaml");
const BROKEN: &str = include_str!("../../tests/fixtures/broken.yaml");

pub(super) fn env_of(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
    let map: HashMap<String, String> = pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
    move |name| map.get(name).cloned()
}

pub(super) fn load(text: &str, pairs: &[(&str, &str)]) -> Result<LoadedConfig, ConfigErrors> {
    load_str(text, "test.yaml", &env_of(pairs))
}

pub(super) fn problem<'e>(errors: &'e ConfigErrors, path: &str) -> &'e ConfigProblem {
    errors
        .problems
        .iter()
        .find(|p| p.path == path)
        .unwrap_or_else(|| panic!("no problem at {path}: {errors}"))
}

pub(super) fn notice<'l>(loaded: &'l LoadedConfig, path: &str) -> &'l ConfigNotice {
    loaded
        .notices
        .iter()
        .find(|n| n.path == path)
        .unwrap_or_else(|| panic!("no notice at {path}: {:?}", loaded.notices))
}

pub(super) fn at(p: &ConfigProblem) -> (Option<usize>, Option<usize>) {
    (p.line, p.column)
}

#[test]
fn seed_example_loads_with_warnings_when_no_keys_are_set() {
    let loaded = load(SEED, &[]).unwrap();
    let config = &loaded.config;
    assert_eq!(
        config.provider_preference,
        ["ollama", "anthropic", "openai"]
    );
    assert_eq!(
        config.providers.keys().collect::<Vec<_>>(),
        ["ollama", "anthropic", "openai"]
    );
    assert_eq!(
        config.providers["ollama"].base_url.as_deref(),
        Some(defaults::OLLAMA_BASE_URL)
    );
    assert_eq!(
        config.providers["openai"].base_url.as_deref(),
        Some(defaults::OPENAI_BASE_URL)
    );
    assert!(config.providers["openai"].api_key.is_none());
    assert_eq!(config.circuit_breaker.max_requests, 100);
    assert_eq!(config.circuit_breaker.failure_threshold, 5);
    assert_eq!(
        config.circuit_breaker.timeout.get(),
        Duration::from_secs(10)
    );
    assert_eq!(config.server.write_timeout.get(), Duration::from_secs(45));
    assert_eq!(config.server.http3.as_ref().and_then(|h| h.port), Some(443));

    let openai = notice(&loaded, "providerPreference[2]");
    assert!(openai.message.contains("OPENAI_API_KEY"), "{openai}");
    assert_eq!((openai.line, openai.column), (Some(27), Some(5)));
    assert!(
        notice(&loaded, "providerPreference[1]")
            .message
            .contains("ANTHROPIC_API_KEY")
    );
    assert!(
        loaded.notices.iter().all(|n| n.path != "server.http3"),
        "HTTP/3 is served, so it is no longer \"accepted but not used yet\""
    );
    assert!(
        notice(&loaded, "auth")
            .message
            .contains("every request will get 401")
    );
}

#[test]
fn seed_example_takes_keys_from_the_environment() {
    let loaded = load(
        SEED,
        &[("OPENAI_API_KEY", "sk-o"), ("ANTHROPIC_API_KEY", "sk-a")],
    )
    .unwrap();
    let providers = &loaded.config.providers;
    assert_eq!(
        providers["openai"].api_key.as_ref().map(Secret::expose),
        Some("sk-o")
    );
    assert_eq!(
        providers["anthropic"].api_key.as_ref().map(Secret::expose),
        Some("sk-a")
    );
    assert!(
        !loaded.notices.iter().any(|n| n.message.contains("API_KEY")),
        "{:?}",
        loaded.notices
    );
    let summary = loaded.summary();
    assert!(
        !summary.contains("sk-o") && !summary.contains("sk-a"),
        "{summary}"
    );
    assert!(summary.contains("listen: 0.0.0.0:8080"), "{summary}");
    assert!(summary.contains("1. ollama: type=ollama"), "{summary}");
    assert!(
        summary.contains("failure_threshold=5 timeout=10s interval=30s max_requests=100"),
        "{summary}"
    );
}

#[test]
fn hapax_llm_block_becomes_providers_and_routing() {
    let loaded = load(HAPAX, &[("OPENAI_API_KEY", "sk-from-env")]).unwrap();
    let config = &loaded.config;
    assert_eq!(
        config.provider_preference,
        ["ollama", "anthropic", "openai"]
    );
    let ollama = &config.providers["ollama"];
    assert_eq!(ollama.kind, ProviderKind::Ollama);
    assert_eq!(ollama.model.as_deref(), Some("llama2"));
    assert_eq!(ollama.base_url.as_deref(), Some("http://localhost:11434"));
    let anthropic = &config.providers["anthropic"];
    assert_eq!(
        anthropic.api_key.as_ref().map(Secret::expose),
        Some("test-anthropic-key")
    );
    assert_eq!(
        anthropic.base_url.as_deref(),
        Some(defaults::ANTHROPIC_BASE_URL)
    );
    assert_eq!(
        config.providers["openai"]
            .api_key
            .as_ref()
            .map(Secret::expose),
        Some("sk-from-env")
    );
    for provider in config.providers.values() {
        let check = provider.health_check.as_ref().unwrap();
        assert_eq!(
            (check.interval.get(), check.failure_threshold),
            (Duration::from_secs(15), 3)
        );
    }
    assert_eq!(config.routing.max_attempts, 4);
    assert_eq!(
        config.routing.backoff_initial,
        ConfigDuration::from_millis(100)
    );
    assert_eq!(config.routing.backoff_max, ConfigDuration::from_secs(2));
    assert_eq!(config.routing.backoff_multiplier, 2.0);
    assert_eq!(
        config.routing.request_timeout,
        defaults::ROUTING_REQUEST_TIMEOUT
    );
    let llm = config.llm.as_ref().unwrap();
    assert_eq!(
        llm.system_prompt.as_deref(),
        Some("You are a helpful assistant.")
    );
    assert_eq!(config.circuit_breaker.max_requests, 100);
    for unused in [
        "routes",
        "llm.max_context_tokens",
        "llm.retry.retryable_errors",
        "circuit_breaker.test_mode",
    ] {
        assert_eq!(notice(&loaded, unused).message, "accepted but not used yet");
    }
    assert!(
        !loaded.notices.iter().any(|n| n.path == "auth"),
        "auth is off: no 401 warning"
    );
}

#[test]
fn broken_config_reports_every_problem_with_its_position() {
    let errors = load(BROKEN, &[]).unwrap_err();
    let port = problem(&errors, "server.port");
    assert_eq!(at(port), (Some(3), Some(3)));
    assert!(port.message.contains("expected u16"), "{port}");
    let duration = problem(&errors, "circuitBreaker.timeout");
    assert_eq!(at(duration), (Some(6), Some(3)));
    assert!(
        duration
            .message
            .contains("invalid duration 10: write it with a unit"),
        "{duration}"
    );
    let key = problem(&errors, "providers.openai.api_key");
    assert_eq!(at(key), (Some(8), Some(3)));
    assert!(key.message.contains("OPENAI_API_KEY"), "{key}");
    let typo = problem(&errors, "providers.local.tiemout");
    assert_eq!(at(typo), (Some(13), Some(5)));
    assert_eq!(
        typo.message,
        "unknown key `tiemout`; did you mean `timeout`?"
    );
    let unknown = problem(&errors, "provider_preference[2]");
    assert_eq!(at(unknown), (Some(17), Some(5)));
    assert!(
        unknown.message.contains("unknown provider `mistral`"),
        "{unknown}"
    );
    assert_eq!(at(problem(&errors, "logging.level")), (Some(19), Some(3)));
    // `local` failed to parse but is declared: no echo about it in provider_preference.
    assert_eq!(errors.problems.len(), 6, "{errors}");
    let text = errors.to_string();
    assert!(
        text.starts_with("invalid configuration test.yaml (6 problems):"),
        "{text}"
    );
    assert!(
        text.contains("\n  providers.local.tiemout (line 13:5): unknown key"),
        "{text}"
    );
}

#[test]
fn environment_expansion_covers_defaults_numbers_and_unset_variables() {
    let text = "\
server:
  port: ${PORT:-8080}
  host: \"${HOST:-127.0.0.1}\"
providers:
  main:
    type: openai_compatible
    base_url: ${BASE:-http://localhost:9999/v1/}
    api_key: ${MAIN_KEY}
  spare:
    type: openai
    api_key: ${SPARE_KEY:-}
";
    let loaded = load(
        text,
        &[("MAIN_KEY", "123456"), ("OPENAI_API_KEY", "sk-env")],
    )
    .unwrap();
    let config = &loaded.config;
    assert_eq!(config.server.port, 8080);
    assert_eq!(config.server.host, "127.0.0.1");
    let main = &config.providers["main"];
    assert_eq!(main.base_url.as_deref(), Some("http://localhost:9999/v1"));
    assert_eq!(
        main.api_key.as_ref().map(Secret::expose),
        Some("123456"),
        "digits stay a string key"
    );
    assert_eq!(
        config.providers["spare"]
            .api_key
            .as_ref()
            .map(Secret::expose),
        Some("sk-env")
    );

    let loaded = load(
        text,
        &[("PORT", "9090"), ("MAIN_KEY", "k"), ("SPARE_KEY", "s")],
    )
    .unwrap();
    assert_eq!(loaded.config.server.port, 9090);

    let errors = load(text, &[("OPENAI_API_KEY", "sk-env")]).unwrap_err();
    assert_eq!(errors.problems.len(), 1, "{errors}");
    let unset = problem(&errors, "providers.main.api_key");
    assert_eq!(at(unset), (Some(8), Some(5)));
    assert!(unset.message.contains("`MAIN_KEY` is not set"), "{unset}");

    let errors = load("server:\n  host: ${FOO\n", &[]).unwrap_err();
    assert!(
        problem(&errors, "server.host")
            .message
            .contains("malformed"),
        "{errors}"
    );
    let errors = load("server:\n  port: \"${PORT:-80}\"\n", &[]).unwrap_err();
    assert!(
        problem(&errors, "server.port")
            .message
            .contains("expected u16"),
        "quoted stays a string"
    );
}

#[test]
fn embedded_config_loads() {
    let loaded = load_embedded();
    assert_eq!(loaded.source, ConfigSource::Embedded);
    assert_eq!(loaded.config.provider_preference, ["mock"]);
    assert_eq!(loaded.config.providers["mock"].kind, ProviderKind::Mock);
    assert_eq!(loaded.config.auth.enabled, Some(false));
    assert!(loaded.notices.is_empty(), "{:?}", loaded.notices);
    assert!(loaded.summary().contains("auth: off"));
    assert!(load_str(defaults::EMBEDDED_CONFIG, "embedded", &|_| None).is_ok());
}

#[test]
fn explicit_provider_wins_over_llm_and_order_follows_declaration() {
    let text = "\
providers:
  local:
    type: mock
  openai:
    type: openai
    api_key: sk-explicit
llm:
  provider: openai
  api_key: sk-legacy
  backup_providers:
    - provider: ollama
";
    let loaded = load(text, &[]).unwrap();
    let config = &loaded.config;
    assert_eq!(
        config.providers["openai"]
            .api_key
            .as_ref()
            .map(Secret::expose),
        Some("sk-explicit")
    );
    assert_eq!(config.provider_preference, ["ollama", "local", "openai"]);
    assert!(notice(&loaded, "llm.provider").message.contains("wins"));
}
