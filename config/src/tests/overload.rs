//! The overload caps: `server.max_inflight_requests`, `server.max_connections`, and Hapax's
//! `queue:` block whose size becomes the in-flight cap.

use super::{load, notice, problem};
use crate::*;

const PROVIDER: &str = "providers:\n  mock: {type: mock}\n";

#[test]
fn caps_have_defaults_and_server_keys_set_them() {
    let loaded = load(PROVIDER, &[]).unwrap();
    assert_eq!(
        loaded.config.max_inflight_requests(),
        defaults::SERVER_MAX_INFLIGHT_REQUESTS
    );
    assert_eq!(
        loaded.config.server.max_connections,
        defaults::SERVER_MAX_CONNECTIONS
    );
    assert!(loaded.summary().contains("max_inflight_requests=1024"));

    let text = format!("server: {{max_inflight_requests: 8, maxConnections: 50}}\n{PROVIDER}");
    let loaded = load(&text, &[]).unwrap();
    assert_eq!(loaded.config.max_inflight_requests(), 8);
    assert_eq!(loaded.config.server.max_connections, 50);
}

#[test]
fn hapax_queue_block_sets_the_in_flight_cap() {
    // Hapax's own keys: `initial_size` is the size; persistence keys are accepted, unused.
    let text = format!(
        "{PROVIDER}queue:\n  enabled: true\n  initial_size: 300\n  state_path: /var/lib/hapax/queue.json\n  save_interval: 30s\n"
    );
    let loaded = load(&text, &[]).unwrap();
    assert_eq!(loaded.config.max_inflight_requests(), 300);
    assert!(
        notice(&loaded, "queue.state_path")
            .message
            .contains("not used")
    );
    notice(&loaded, "queue.save_interval");

    // `max_size` works too; a block without a size uses Hapax's default of 1000.
    let loaded = load(&format!("{PROVIDER}queue: {{max_size: 42}}\n"), &[]).unwrap();
    assert_eq!(loaded.config.max_inflight_requests(), 42);
    let loaded = load(&format!("{PROVIDER}queue: {{enabled: true}}\n"), &[]).unwrap();
    assert_eq!(
        loaded.config.max_inflight_requests(),
        defaults::QUEUE_MAX_SIZE as usize
    );

    // Disabled: the default cap, and a notice that the size is ignored.
    let loaded = load(
        &format!("{PROVIDER}queue: {{enabled: false, initial_size: 5}}\n"),
        &[],
    )
    .unwrap();
    assert_eq!(
        loaded.config.max_inflight_requests(),
        defaults::SERVER_MAX_INFLIGHT_REQUESTS
    );
    assert!(loaded.notices.iter().any(|n| n.message.contains("ignored")));

    // The server key wins over the queue's size.
    let text = format!("server: {{max_inflight_requests: 7}}\n{PROVIDER}queue: {{max_size: 42}}\n");
    let loaded = load(&text, &[]).unwrap();
    assert_eq!(loaded.config.max_inflight_requests(), 7);
    assert!(
        notice(&loaded, "queue.max_size")
            .message
            .contains("overridden")
    );
}

#[test]
fn zero_caps_and_unknown_queue_keys_are_refused() {
    let text = format!(
        "server: {{max_inflight_requests: 0, max_connections: 0}}\n{PROVIDER}queue: {{max_size: 0}}\n"
    );
    let errors = load(&text, &[]).unwrap_err();
    problem(&errors, "server.max_inflight_requests");
    problem(&errors, "server.max_connections");
    problem(&errors, "queue.max_size");

    let errors = load(&format!("{PROVIDER}queue: {{max_sise: 10}}\n"), &[]).unwrap_err();
    assert!(errors.to_string().contains("max_size"), "{errors}");
}

#[test]
fn busy_polling_is_on_by_default_can_be_turned_off_and_is_bounded() {
    let loaded = load(PROVIDER, &[]).unwrap();
    assert_eq!(
        loaded.config.server.busy_poll.get(),
        std::time::Duration::from_micros(200)
    );
    assert!(
        loaded
            .summary()
            .contains("busy polling: spins while waiting for upstreams that answer within 200us"),
        "{}",
        loaded.summary()
    );
    let off = load(&format!("server: {{busy_poll: 0s}}\n{PROVIDER}"), &[]).unwrap();
    assert!(off.config.server.busy_poll.is_zero());
    assert!(!off.summary().contains("busy polling"));

    let loaded = load(&format!("server: {{busy_poll: 30us}}\n{PROVIDER}"), &[]).unwrap();
    assert_eq!(
        loaded.config.server.busy_poll.get(),
        std::time::Duration::from_micros(30)
    );
    assert!(
        loaded.summary().contains("within 30us"),
        "{}",
        loaded.summary()
    );

    let errors = load(&format!("server: {{busy_poll: 5ms}}\n{PROVIDER}"), &[]).unwrap_err();
    let found = problem(&errors, "server.busy_poll");
    assert!(found.message.contains("at most 1ms"), "{}", found.message);
    assert!(found.to_string().contains("line 1"), "{found}");
}

#[test]
fn a_providers_pool_idle_timeout_is_optional_and_bounded() {
    let loaded = load(PROVIDER, &[]).unwrap();
    assert_eq!(loaded.config.providers["mock"].pool_idle_timeout, None);

    let text = "providers:\n  mock: {type: mock, pool_idle_timeout: 55s}\n";
    let loaded = load(text, &[]).unwrap();
    assert_eq!(
        loaded.config.providers["mock"]
            .pool_idle_timeout
            .map(|d| d.get()),
        Some(std::time::Duration::from_secs(55))
    );

    let text = "providers:\n  a: {type: mock, pool_idle_timeout: 0s}\n  b: {type: mock, pool_idle_timeout: 2h}\n";
    let errors = load(text, &[]).unwrap_err();
    let zero = problem(&errors, "providers.a.pool_idle_timeout");
    assert!(zero.to_string().contains("line 2"), "{zero}");
    let long = problem(&errors, "providers.b.pool_idle_timeout");
    assert!(long.message.contains("at most 1h"), "{}", long.message);
    assert!(long.to_string().contains("line 3"), "{long}");
}
