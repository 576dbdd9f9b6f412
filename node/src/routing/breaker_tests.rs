use super::*;

struct NoObserver;
impl TransitionObserver for NoObserver {
    fn on_transition(&self, _: &str, _: BreakerPhase, _: BreakerPhase, _: &str) {}
}

fn breaker(threshold: u32, timeout_ms: u64, probes: u32) -> Arc<Breaker> {
    let settings = BreakerSettings {
        failure_threshold: threshold,
        failure_ratio: None,
        min_requests: 10,
        interval: Duration::from_secs(60),
        open_timeout: Duration::from_millis(timeout_ms),
        max_probes: probes,
    };
    Breaker::new(
        "p",
        settings,
        IntGauge::new("g", "g").unwrap(),
        Arc::new(NoObserver),
    )
}

#[test]
fn trips_after_threshold_then_half_opens_and_closes_on_success() {
    let b = breaker(3, 30, 1);
    for _ in 0..2 {
        b.try_acquire().unwrap().failure("500");
    }
    assert_eq!(b.phase(), BreakerPhase::Closed);
    b.try_acquire().unwrap().failure("500");
    assert_eq!(b.phase(), BreakerPhase::Open);
    assert!(b.try_acquire().is_none());
    std::thread::sleep(Duration::from_millis(40));
    assert_eq!(b.phase(), BreakerPhase::HalfOpen);
    let probe = b.try_acquire().unwrap();
    assert!(
        b.try_acquire().is_none(),
        "only max_requests probes at once"
    );
    probe.success();
    assert_eq!(b.phase(), BreakerPhase::Closed);
}

#[test]
fn failed_probe_reopens_and_dropped_probe_frees_its_slot() {
    let b = breaker(1, 10, 1);
    b.try_acquire().unwrap().failure("timeout");
    std::thread::sleep(Duration::from_millis(15));
    drop(b.try_acquire().unwrap());
    let probe = b.try_acquire().unwrap();
    probe.failure("500");
    assert_eq!(b.phase(), BreakerPhase::Open);
}

#[test]
fn success_resets_consecutive_count_and_force_overrides() {
    let b = breaker(2, 10, 1);
    b.try_acquire().unwrap().failure("x");
    b.try_acquire().unwrap().success();
    b.try_acquire().unwrap().failure("x");
    assert_eq!(b.phase(), BreakerPhase::Closed);
    b.force(true);
    std::thread::sleep(Duration::from_millis(15));
    assert_eq!(b.phase(), BreakerPhase::Open, "forced open does not expire");
    b.force(false);
    assert_eq!(b.phase(), BreakerPhase::Closed);
}

#[test]
fn failure_ratio_trips_within_interval() {
    let settings = BreakerSettings {
        failure_threshold: 100,
        failure_ratio: Some(0.5),
        min_requests: 4,
        interval: Duration::from_secs(60),
        open_timeout: Duration::from_secs(1),
        max_probes: 1,
    };
    let b = Breaker::new(
        "p",
        settings,
        IntGauge::new("g", "g").unwrap(),
        Arc::new(NoObserver),
    );
    b.try_acquire().unwrap().failure("x");
    b.try_acquire().unwrap().success();
    b.try_acquire().unwrap().success();
    assert_eq!(b.phase(), BreakerPhase::Closed);
    b.try_acquire().unwrap().failure("x");
    assert_eq!(b.phase(), BreakerPhase::Open);
}
