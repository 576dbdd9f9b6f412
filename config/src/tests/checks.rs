//! Validation and file-level scenarios: values that parse but cannot work.

use super::{at, load, problem};
use crate::*;
#[test]
fn providers_keys_and_urls_are_checked() {
    let text = "\
providers:
  compat:
    type: openai_compatible
  bad_url:
    type: ollama
    endpoint: ftp://example.com
  spread:
    type: anthropic
    api_key: sk-a
    deployments:
      - base_url: https://eu.example.com/
      - api_key: sk-b
provider_preference: [compat, bad_url, spread, compat]
";
    let errors = load(text, &[]).unwrap_err();
    assert!(
        problem(&errors, "providers.compat.base_url")
            .message
            .contains("needs a `base_url`")
    );
    assert_eq!(
        at(problem(&errors, "providers.bad_url.endpoint")),
        (Some(6), Some(5))
    );
    assert!(
        problem(&errors, "provider_preference[3]")
            .message
            .contains("listed twice")
    );
    assert_eq!(errors.problems.len(), 3, "{errors}");

    let loaded = load("providers:\n  spread:\n    type: anthropic\n    api_key: sk-a\n    deployments:\n      - base_url: https://eu.example.com/\n      - api_key: sk-b\n", &[]).unwrap();
    let spread = &loaded.config.providers["spread"];
    assert_eq!(
        spread.deployments[0].base_url.as_deref(),
        Some("https://eu.example.com")
    );
    assert_eq!(
        spread.deployments[0].api_key.as_ref().map(Secret::expose),
        Some("sk-a")
    );
    assert_eq!(
        spread.deployments[1].base_url.as_deref(),
        Some(defaults::ANTHROPIC_BASE_URL)
    );
    assert_eq!(
        spread.deployments[1].api_key.as_ref().map(Secret::expose),
        Some("sk-b")
    );
}

#[test]
fn values_that_cannot_work_are_all_reported() {
    let text = "\
server:
  max_body_bytes: 10
  http3:
    enabled: true
circuit_breaker:
  failure_threshold: 0
  max_requests: 0
  failure_ratio: 1.5
routing:
  max_attempts: 0
  backoff_multiplier: 0.5
  request_timeout: 0s
auth:
  api_keys:
    - name: a
      key: k1
      key_sha256: abc
    - name: a
      key_sha256: nothex
    - name: c
  admin_keys:
    - name: ops
      key: ''
rate_limits:
  global: { requests_per_minute: 0 }
  endpoints:
    v1/chat: { tokens_per_minute: 5 }
providers:
  m: { type: mock }
";
    let errors = load(text, &[]).unwrap_err();
    for path in [
        "server.max_body_bytes",
        "server.http3.port",
        "server.http3.tls_cert_file",
        "server.http3.tls_key_file",
        "circuit_breaker.failure_threshold",
        "circuit_breaker.max_requests",
        "circuit_breaker.failure_ratio",
        "routing.max_attempts",
        "routing.backoff_multiplier",
        "routing.request_timeout",
        "auth.api_keys[0]",
        "auth.api_keys[1].name",
        "auth.api_keys[1].key_sha256",
        "auth.api_keys[2]",
        "auth.admin_keys[0].key",
        "rate_limits.global.requests_per_minute",
        "rate_limits.endpoints.v1/chat",
    ] {
        problem(&errors, path);
    }
    assert_eq!(
        at(problem(&errors, "auth.api_keys[1].name")),
        (Some(18), Some(7))
    );
    assert_eq!(errors.problems.len(), 17, "{errors}");
}

#[test]
fn file_level_problems_have_positions() {
    let errors = load("server:\n  port: [1\n", &[]).unwrap_err();
    assert_eq!(errors.problems.len(), 1);
    assert!(
        errors.problems[0].message.starts_with("invalid YAML"),
        "{errors}"
    );
    assert!(errors.problems[0].line.is_some());

    let errors = load("server:\n  port: 1\n  port: 2\n", &[]).unwrap_err();
    assert_eq!(at(problem(&errors, "server.port")), (Some(3), Some(3)));

    let errors = load("providers:\n  m: { type: mock }\nprovidres: {}\ncircuit_breaker: { timeout: 1s }\ncircuitBreaker: {}\n", &[]).unwrap_err();
    assert_eq!(
        problem(&errors, "providres").message,
        "unknown key `providres`; did you mean `providers`?"
    );
    assert!(
        problem(&errors, "circuitBreaker")
            .message
            .contains("repeats")
    );

    let errors = load("providers:\n  m: { type: mokc }\n", &[]).unwrap_err();
    assert!(
        problem(&errors, "providers.m.type")
            .message
            .contains("did you mean `mock`?"),
        "{errors}"
    );

    let errors = load("", &[]).unwrap_err();
    assert!(
        problem(&errors, "providers")
            .message
            .contains("no providers")
    );

    let errors = load_file(std::path::Path::new("/nonexistent/hapax.yaml")).unwrap_err();
    assert_eq!(errors.problems.len(), 1);
    assert!(
        errors
            .to_string()
            .contains("cannot read /nonexistent/hapax.yaml"),
        "{errors}"
    );
}

#[test]
fn load_file_reads_the_fixture() {
    let path =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/hapax-style.yaml");
    let loaded = load_file(&path).unwrap();
    assert_eq!(loaded.source, ConfigSource::File(path));
    assert_eq!(loaded.config.provider_preference[0], "ollama");
}

#[test]
fn http3_checks_its_port_streams_and_the_certificate_it_shares_with_tls() {
    let shared = "\
server:
  tls: {cert_file: c.pem, key_file: k.pem}
  http3: {enabled: true, port: 8443}
providers: {m: {type: mock}}
";
    let loaded = load(shared, &[]).unwrap();
    let http3 = loaded.config.server.http3.as_ref().unwrap();
    let tls = loaded.config.server.tls.as_ref();
    assert_eq!(http3.cert_and_key(tls), ("c.pem", "k.pem"));
    assert!(
        loaded
            .notices
            .iter()
            .all(|n| !n.path.starts_with("server.http3"))
    );

    let text = "\
server:
  tls: {cert_file: '', key_file: k.pem}
  http3:
    enabled: true
    port: 7946
    max_uni_streams_concurrent: 2
    idle_timeout: 0s
cluster: {gossip_listen: '0.0.0.0:7946'}
providers: {m: {type: mock}}
";
    let errors = load(text, &[]).unwrap_err();
    assert!(
        problem(&errors, "server.tls.cert_file")
            .message
            .contains("PEM")
    );
    assert!(
        problem(&errors, "server.http3.tls_cert_file")
            .message
            .contains("server.tls")
    );
    assert!(
        problem(&errors, "server.http3.max_uni_streams_concurrent")
            .message
            .contains("at least 3")
    );
    assert!(
        problem(&errors, "server.http3.idle_timeout")
            .message
            .contains("0s")
    );
    let clash = problem(&errors, "server.http3.port");
    assert!(clash.message.contains("gossip_listen"), "{clash}");
    assert_eq!(at(clash), (Some(5), Some(5)));
}

#[test]
fn keys_that_would_be_served_otherwise_than_configured_are_refused() {
    let text = "\
providers:
  main: { type: mock }
  spare: { type: mock }
provider_preference: [main]
auth:
  api_keys:
    - { name: web, key: same-secret, providers: [spare] }
    - { name: other, key: same-secret }
    - { name: hashed, key_sha256: 0d6d5e1d9a3bf7e2b5a5d8d5ac2a3d2bd11bb4a0e8c5b29d1cbf4b1d3e0c4d2f }
    - { name: anonymous, key: anon-secret }
rate_limits:
  endpoints:
    /v1/chat/completions/: { requests_per_minute: 5 }
    /v1/completions: { requests_per_minute: 5 }
";
    let errors = load(text, &[]).unwrap_err();
    assert!(
        problem(&errors, "auth.api_keys[0].providers[0]")
            .message
            .contains("not in provider_preference"),
        "{errors}"
    );
    let duplicate = problem(&errors, "auth.api_keys[1].key");
    assert!(
        duplicate.message.contains("same secret") && duplicate.message.contains("`web`"),
        "{errors}"
    );
    assert!(
        problem(&errors, "auth.api_keys[3].name")
            .message
            .contains("reserved"),
        "{errors}"
    );
    assert!(
        problem(&errors, "rate_limits.endpoints./v1/chat/completions/")
            .message
            .contains("not one that is rate limited"),
        "{errors}"
    );
    assert_eq!(errors.problems.len(), 4, "{errors}");

    // A digest of a plain key already given is the same secret too (in either case).
    let sha = {
        use sha2::Digest;
        let d = sha2::Sha256::digest(b"plain-secret");
        d.iter().map(|b| format!("{b:02x}")).collect::<String>()
    };
    let text = format!(
        "providers:\n  m: {{ type: mock }}\nauth:\n  api_keys:\n    - {{ name: a, key: plain-secret }}\n    - {{ name: b, key_sha256: {} }}\n",
        sha.to_uppercase()
    );
    let errors = load(&text, &[]).unwrap_err();
    assert!(
        problem(&errors, "auth.api_keys[1].key_sha256")
            .message
            .contains("same secret"),
        "{errors}"
    );

    // Client and admin keys are looked up apart: one operator secret may be both.
    let text = "providers:\n  m: { type: mock }\nauth:\n  api_keys:\n    - { name: ops-client, key: op-secret }\n  admin_keys:\n    - { name: ops, key: op-secret }\n";
    assert!(load(text, &[]).is_ok());
}
