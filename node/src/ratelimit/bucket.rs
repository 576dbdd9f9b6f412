//! A token bucket that may go into debt (tokens charged after the fact).

use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;

pub struct Bucket {
    /// Per-minute budget: the bucket's capacity.
    pub limit: u64,
    refill_per_sec: f64,
    state: Mutex<(f64, Instant)>,
}

impl Bucket {
    pub fn per_minute(limit: u64) -> Arc<Self> {
        Arc::new(Self {
            limit,
            refill_per_sec: limit as f64 / 60.0,
            state: Mutex::new((limit as f64, Instant::now())),
        })
    }

    /// Credits the time since the last refill. A `now` older than that (read before another
    /// thread's refill took the lock) credits nothing and leaves the mark where it is, so no
    /// stretch of time is credited twice.
    fn refill(&self, state: &mut (f64, Instant), now: Instant) {
        if now <= state.1 {
            return;
        }
        let elapsed = (now - state.1).as_secs_f64();
        state.0 = (state.0 + elapsed * self.refill_per_sec).min(self.limit as f64);
        state.1 = now;
    }

    /// Takes `amount` (capped at the capacity so a large request is not starved forever),
    /// or says how long until it could.
    ///
    /// Taken: the amount, and what remains after it (as [`Self::remaining`] would say then).
    /// `now` is the caller's, read once for all the buckets of one admission.
    pub fn try_take(&self, amount: f64, now: Instant) -> Result<(f64, (u64, u64)), Duration> {
        let amount = amount.min(self.limit as f64);
        let mut state = self.state.lock();
        self.refill(&mut state, now);
        if state.0 >= amount {
            state.0 -= amount;
            Ok((amount, self.figures(state.0)))
        } else {
            let missing = amount - state.0;
            Err(Duration::from_secs_f64(
                missing / self.refill_per_sec.max(f64::MIN_POSITIVE),
            ))
        }
    }

    /// Adds (positive) or charges (negative) an adjustment; charges may leave a debt.
    pub fn adjust(&self, delta: f64) {
        let mut state = self.state.lock();
        self.refill(&mut state, Instant::now());
        state.0 = (state.0 + delta).min(self.limit as f64);
    }

    /// Remaining whole units and seconds until full.
    pub fn remaining(&self) -> (u64, u64) {
        let mut state = self.state.lock();
        self.refill(&mut state, Instant::now());
        self.figures(state.0)
    }

    /// Whole units left of `level`, and seconds until the bucket is full again.
    fn figures(&self, level: f64) -> (u64, u64) {
        let missing = self.limit as f64 - level;
        (
            level.max(0.0).floor() as u64,
            (missing / self.refill_per_sec.max(f64::MIN_POSITIVE)).ceil() as u64,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn takes_until_empty_then_reports_wait_and_debt_is_kept() {
        let b = Bucket::per_minute(60);
        for _ in 0..60 {
            assert!(b.try_take(1.0, Instant::now()).is_ok());
        }
        let wait = b.try_take(1.0, Instant::now()).err().unwrap_or_default();
        assert!(
            wait > Duration::from_millis(900) && wait <= Duration::from_millis(1000),
            "{wait:?}"
        );
        b.adjust(-10.0);
        assert!(b.try_take(1.0, Instant::now()).is_err());
        assert_eq!(b.remaining().0, 0);
    }

    /// Admissions read the clock before taking a bucket's lock: one that read it earlier but
    /// got the lock later must not credit again the time the other already credited.
    #[test]
    fn an_older_reading_of_the_clock_credits_nothing() {
        let b = Bucket::per_minute(60_000);
        let start = Instant::now();
        let later = start + Duration::from_secs(30);
        for _ in 0..60_000 {
            let _ = b.try_take(1.0, start);
        }
        // 30 s at 1000 a second: 30,000 back, whatever order the readings arrive in.
        assert!(b.try_take(30_000.0, later).is_ok());
        assert!(
            b.try_take(1.0, start).is_err(),
            "the earlier reading credits nothing"
        );
        assert!(
            b.try_take(1.0, later).is_err(),
            "nor does the same reading again"
        );
    }
}
