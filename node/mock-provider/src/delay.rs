//! Injected delays that end when they say, to the tens of microseconds.
//!
//! tokio's timer has a 1 ms tick and rounds every deadline up to it, so a `latency_ms: 20`
//! fault answered after 20–21 ms, and where in that millisecond depended on the phase between
//! the request's arrival and the tick. Benchmarks at a fixed request rate compare runs whose
//! phases differ (a request through a gateway reaches the mock later than a direct one), so
//! the rounding alone moved a gateway's "added latency" by hundreds of microseconds either
//! way. One thread sleeps on the kernel's high-resolution timer (futex wait, 1 µs timer slack)
//! until the earliest deadline and wakes the delayed tasks as their deadlines pass.

use std::collections::BTreeMap;
use std::sync::{Arc, OnceLock};
use std::thread::Thread;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use tokio::sync::oneshot;

/// Waits `delay` on the shared precise timer (tokio's timer if that thread could not start).
pub(crate) async fn sleep(delay: Duration) {
    let Some(deadline) = Instant::now().checked_add(delay) else {
        // Past what the clock can represent: a delay that never ends.
        return std::future::pending().await;
    };
    let Some(timer) = timer() else {
        return tokio::time::sleep_until(deadline.into()).await;
    };
    let (wake, woken) = oneshot::channel();
    timer.schedule(deadline, wake);
    // An error means the timer thread ended; fall back rather than end the delay early.
    if woken.await.is_err() {
        tokio::time::sleep_until(deadline.into()).await;
    }
}

fn timer() -> Option<&'static Timer> {
    static TIMER: OnceLock<Option<Timer>> = OnceLock::new();
    TIMER.get_or_init(Timer::start).as_ref()
}

struct Timer {
    pending: Arc<Mutex<Pending>>,
    thread: Thread,
}

#[derive(Default)]
struct Pending {
    /// Wake-ups by deadline, earliest first; the sequence number keeps equal deadlines apart.
    wakers: BTreeMap<(Instant, u64), oneshot::Sender<()>>,
    next_sequence: u64,
}

impl Timer {
    fn start() -> Option<Self> {
        let pending = Arc::new(Mutex::new(Pending::default()));
        let shared = Arc::clone(&pending);
        let handle = std::thread::Builder::new()
            .name("mock-delay".into())
            .spawn(move || {
                set_fine_timer_slack();
                loop {
                    match fire_due(&shared, Instant::now()) {
                        Some(next) => std::thread::park_timeout(
                            next.saturating_duration_since(Instant::now()),
                        ),
                        None => std::thread::park(),
                    }
                }
            })
            .ok()?;
        Some(Self {
            pending,
            thread: handle.thread().clone(),
        })
    }

    fn schedule(&self, deadline: Instant, wake: oneshot::Sender<()>) {
        if schedule(&self.pending, deadline, wake) {
            self.thread.unpark();
        }
    }
}

/// Queues a wake-up; true when it is now the earliest (the thread must wake to re-arm).
fn schedule(pending: &Mutex<Pending>, deadline: Instant, wake: oneshot::Sender<()>) -> bool {
    let mut pending = pending.lock();
    let sequence = pending.next_sequence;
    pending.next_sequence = sequence.wrapping_add(1);
    let earliest = pending
        .wakers
        .first_key_value()
        .is_none_or(|((first, _), _)| deadline < *first);
    pending.wakers.insert((deadline, sequence), wake);
    earliest
}

/// Wakes every delay whose deadline is at or before `now`; returns the next deadline.
fn fire_due(pending: &Mutex<Pending>, now: Instant) -> Option<Instant> {
    let (due, next) = {
        let mut pending = pending.lock();
        let later = pending.wakers.split_off(&(now, u64::MAX));
        let due = std::mem::replace(&mut pending.wakers, later);
        let next = pending
            .wakers
            .first_key_value()
            .map(|((deadline, _), _)| *deadline);
        (due, next)
    };
    for wake in due.into_values() {
        // The delayed request may be gone (its client disconnected): nothing to wake then.
        let _ = wake.send(());
    }
    next
}

/// The kernel lets a sleeping thread wake up to 50 µs late by default (timer slack); this
/// thread's only job is waking on time.
#[allow(unsafe_code)]
fn set_fine_timer_slack() {
    // SAFETY: PR_SET_TIMERSLACK takes one integer argument and changes only the calling thread.
    unsafe {
        libc::prctl(libc::PR_SET_TIMERSLACK, 1_u64, 0_u64, 0_u64, 0_u64);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fires_in_deadline_order_and_reports_the_next() {
        let pending = Mutex::new(Pending::default());
        let start = Instant::now();
        let at = |ms| start + Duration::from_millis(ms);
        let (late, mut late_woken) = oneshot::channel();
        let (early, mut early_woken) = oneshot::channel();
        assert!(schedule(&pending, at(30), late));
        assert!(
            schedule(&pending, at(10), early),
            "an earlier deadline re-arms the thread"
        );
        let (same, mut same_woken) = oneshot::channel();
        assert!(!schedule(&pending, at(30), same), "a later one does not");

        assert_eq!(fire_due(&pending, at(5)), Some(at(10)));
        assert!(early_woken.try_recv().is_err(), "not due yet");
        assert_eq!(fire_due(&pending, at(10)), Some(at(30)));
        assert!(early_woken.try_recv().is_ok());
        assert!(late_woken.try_recv().is_err());
        assert_eq!(fire_due(&pending, at(31)), None);
        assert!(late_woken.try_recv().is_ok());
        assert!(same_woken.try_recv().is_ok());
    }

    #[tokio::test]
    async fn never_ends_a_delay_early() {
        for _ in 0..20 {
            let started = Instant::now();
            sleep(Duration::from_micros(2_500)).await;
            let slept = started.elapsed();
            assert!(slept >= Duration::from_micros(2_500), "{slept:?}");
        }
    }
}
