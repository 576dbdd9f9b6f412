//! Busy polling (`server.busy_poll`): while a request waits for an upstream that has lately
//! answered within the window, the runtime's thread keeps polling for I/O instead of sleeping
//! in `epoll_wait`, so the answer is picked up without the wake-up of a halted CPU (tens of
//! microseconds on a VM). Adaptive, like a mutex that spins only while its holder is about to
//! let go: an upstream slower than the window (any hosted LLM) is never spun for, so the cost
//! is CPU bounded by the wait itself, and only for upstreams that answer in microseconds.
//!
//! Only on tokio's current-thread runtime (a process with one core): there the spinning task's
//! every yield makes the one thread poll the I/O driver without blocking. On the multi-thread
//! runtime an idle worker holds the driver while it sleeps, so a spinning worker could not
//! poll it and would only burn a core: there is then no spinner. The spinner belongs to the
//! runtime's one thread, so it is found through a thread-local and needs no plumbing.

use std::cell::RefCell;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tokio::sync::Notify;

thread_local! {
    /// The spinner of the current-thread runtime running on this thread, if any.
    static SPINNER: RefCell<Option<Arc<BusyPoll>>> = const { RefCell::new(None) };
}

/// Starts this thread's spinner when `window` is non-zero and the runtime can use it (once per
/// thread while its runtime lives: later calls find it).
pub fn start(window: Duration) {
    if window.is_zero() || running_spinner().is_some() {
        return;
    }
    let flavor = tokio::runtime::Handle::current().runtime_flavor();
    if flavor != tokio::runtime::RuntimeFlavor::CurrentThread {
        tracing::info!(
            window_us = window.as_micros() as u64,
            "busy polling is off: it needs a process with one core (the current-thread \
             runtime, e.g. under `taskset -c N`); with more, a spinning worker cannot poll I/O"
        );
        return;
    }
    tracing::info!(
        window_us = window.as_micros() as u64,
        "busy polling while waiting for upstreams that answer within the window"
    );
    let busy = Arc::new(BusyPoll {
        window,
        started: AtomicU64::new(0),
        latest_ended: AtomicU64::new(0),
        sleeping: AtomicBool::new(false),
        alive: AtomicBool::new(true),
        wake: Notify::new(),
    });
    tokio::spawn(Arc::clone(&busy).run());
    // Ignored during the thread's teardown, when there is nothing left to spin for.
    let _ = SPINNER.try_with(|spinner| spinner.replace(Some(busy)));
}

/// This thread's spinner, unless there is none or its runtime has gone (a thread that ran
/// one runtime and then another, as tests do).
fn running_spinner() -> Option<Arc<BusyPoll>> {
    SPINNER
        .try_with(|spinner| {
            spinner
                .borrow()
                .as_ref()
                .filter(|busy| busy.alive.load(Ordering::SeqCst))
                .map(Arc::clone)
        })
        .ok()
        .flatten()
}

/// One request's wait for its upstream's answer, spun through; its number among the holds.
pub struct Hold(Arc<BusyPoll>, u64);

/// How fast an upstream has lately answered (a moving average), to decide whether a wait for
/// it is worth spinning through. Timed only where a spinner runs.
#[derive(Debug)]
pub struct AnswerTime {
    /// Microseconds; [`AnswerTime::UNKNOWN`] before the first answer.
    micros: AtomicU32,
}

impl Default for AnswerTime {
    fn default() -> Self {
        Self {
            micros: AtomicU32::new(Self::UNKNOWN),
        }
    }
}

impl AnswerTime {
    const UNKNOWN: u32 = u32::MAX;

    /// Starts a wait for an answer that went out at `sent`: spun through when this thread
    /// has a spinner and the upstream's answers lately came within its window (or none has
    /// come yet); `None` when no spinner runs here, so nothing is timed.
    pub fn wait(&self, sent: Instant) -> Option<Waiting<'_>> {
        let micros = self.micros.load(Ordering::Relaxed);
        let expected = Duration::from_micros(if micros == Self::UNKNOWN {
            0
        } else {
            micros.into()
        });
        let busy = running_spinner()?;
        let hold = (expected <= busy.window).then(|| busy.hold());
        Some(Waiting {
            time: self,
            sent,
            _hold: hold,
        })
    }

    /// Folds one answer's time in at a quarter weight: an upstream that turns slow stops being
    /// spun for after one or two answers, and one slow answer among fast ones leaves the next
    /// dozen or so waits unspun. The first answer sets it.
    fn record(&self, took: Duration) {
        let sample = u32::try_from(took.as_micros()).unwrap_or(Self::UNKNOWN - 1);
        let sample = sample.min(Self::UNKNOWN - 1);
        let old = self.micros.load(Ordering::Relaxed);
        let new = if old == Self::UNKNOWN {
            sample
        } else {
            ((u64::from(old) * 3 + u64::from(sample)) / 4) as u32
        };
        self.micros.store(new, Ordering::Relaxed);
    }

    #[cfg(test)]
    pub(crate) fn expected(&self) -> Option<Duration> {
        let micros = self.micros.load(Ordering::Relaxed);
        (micros != Self::UNKNOWN).then(|| Duration::from_micros(micros.into()))
    }
}

/// A request waiting for its upstream's answer, maybe spun through.
pub struct Waiting<'a> {
    time: &'a AnswerTime,
    sent: Instant,
    _hold: Option<Hold>,
}

impl Waiting<'_> {
    /// The answer came: its time is folded into the upstream's, and the spinning stops.
    pub fn answered(self) {
        self.time.record(self.sent.elapsed());
    }
}

impl Drop for Hold {
    fn drop(&mut self) {
        let Hold(busy, number) = self;
        // Only the latest hold's end stops the spinning: an older one still open (a slow
        // upstream, the first wait for one not yet timed) must not keep it going.
        if busy.started.load(Ordering::SeqCst) == *number {
            busy.latest_ended.store(*number, Ordering::SeqCst);
        }
    }
}

/// The spinner's state. Holds are taken and dropped on the runtime's one thread, but `Hold`
/// is `Send` (it lives across awaits), so the orderings are sequentially consistent all the
/// same: the `sleeping` / `started` hand-over must not lose a wake-up whatever thread drops.
struct BusyPoll {
    window: Duration,
    /// Holds taken, which numbers them; the spinner spins for at most `window` after it sees
    /// this change.
    started: AtomicU64,
    /// The number of the latest hold, once it has ended: the spinning stops.
    latest_ended: AtomicU64,
    /// Set while the spinner waits for the next hold, so that taking one wakes it.
    sleeping: AtomicBool,
    /// Cleared when the spinner's task ends (its runtime shut down).
    alive: AtomicBool,
    wake: Notify,
}

/// Clears `alive` when the spinner's task is dropped, polled or not.
struct Alive(Arc<BusyPoll>);

impl Drop for Alive {
    fn drop(&mut self) {
        self.0.alive.store(false, Ordering::SeqCst);
    }
}

impl BusyPoll {
    /// A wait to spin through: the spinning stops when it is the latest and is dropped, or
    /// the window has passed, whichever comes first.
    fn hold(self: &Arc<Self>) -> Hold {
        let number = self.started.fetch_add(1, Ordering::SeqCst) + 1;
        if self.sleeping.load(Ordering::SeqCst) {
            self.wake.notify_one();
        }
        Hold(Arc::clone(self), number)
    }

    /// The spinner: yields to the scheduler (which polls I/O without blocking when nothing
    /// else is ready) while the latest hold is open and within its window; sleeps otherwise
    /// until the next hold.
    fn run(self: Arc<Self>) -> impl Future<Output = ()> {
        let alive = Alive(Arc::clone(&self));
        async move {
            let _alive = alive;
            self.spin().await;
        }
    }

    async fn spin(&self) {
        let mut seen = 0; // a hold taken before this first runs is spun for too
        let mut until = Instant::now();
        loop {
            let started = self.started.load(Ordering::SeqCst);
            if started != seen {
                seen = started;
                until = Instant::now() + self.window;
            } else if self.latest_ended.load(Ordering::SeqCst) == started || Instant::now() >= until
            {
                self.sleeping.store(true, Ordering::SeqCst);
                if self.started.load(Ordering::SeqCst) == seen {
                    self.wake.notified().await;
                }
                self.sleeping.store(false, Ordering::SeqCst);
                continue;
            }
            // Lets whatever else is runnable on this core (the upstream or the client, when
            // they share it) run first: spinning past them would delay the very answer it
            // waits for. A system call that returns at once when nothing else is runnable.
            std::thread::yield_now();
            tokio::task::yield_now().await;
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn spinner() -> Arc<BusyPoll> {
        running_spinner().unwrap()
    }

    #[tokio::test(flavor = "current_thread")]
    async fn waits_are_timed_only_with_a_spinner_and_spun_only_within_the_window() {
        let time = AnswerTime::default();
        assert!(
            time.wait(Instant::now()).is_none(),
            "no spinner on this thread yet"
        );
        start(Duration::from_micros(100));
        start(Duration::from_micros(500)); // the first spinner stays
        let busy = spinner();
        assert_eq!(busy.window, Duration::from_micros(100));

        // Nothing known yet: spun.
        let wait = time.wait(Instant::now()).unwrap();
        assert!(wait._hold.is_some());
        drop(wait); // failed: not timed
        assert_eq!(time.expected(), None);

        let sent = Instant::now() - Duration::from_micros(80);
        time.wait(sent).unwrap().answered();
        let first = time.expected().unwrap();
        assert!(first >= Duration::from_micros(80) && first < Duration::from_millis(50));
        assert!(time.wait(Instant::now()).unwrap()._hold.is_some());

        // One slow answer (20 ms) puts the estimate past the window: timed, not spun.
        time.wait(Instant::now() - Duration::from_millis(20))
            .unwrap()
            .answered();
        let wait = time.wait(Instant::now()).unwrap();
        assert!(wait._hold.is_none());
        drop(wait);
        // Fast answers bring it back within a few.
        for _ in 0..20 {
            time.wait(Instant::now() - Duration::from_micros(10))
                .unwrap()
                .answered();
        }
        assert!(time.wait(Instant::now()).unwrap()._hold.is_some());
        assert_eq!(
            busy.started.load(Ordering::SeqCst),
            busy.latest_ended.load(Ordering::SeqCst),
            "the latest hold ended with its wait"
        );
    }

    #[test]
    fn the_estimate_follows_a_quarter_of_each_answer() {
        let time = AnswerTime::default();
        time.record(Duration::from_micros(400));
        assert_eq!(time.expected(), Some(Duration::from_micros(400)));
        time.record(Duration::from_micros(0));
        assert_eq!(time.expected(), Some(Duration::from_micros(300)));
        time.record(Duration::from_secs(1 << 40)); // saturates, never "unknown"
        assert!(time.expected().unwrap() > Duration::from_secs(1000));
    }

    /// Whether the spinner is asleep once it has had a few turns.
    async fn asleep_after_a_few_turns(busy: &BusyPoll) -> bool {
        for _ in 0..3 {
            tokio::task::yield_now().await;
        }
        busy.sleeping.load(Ordering::SeqCst)
    }

    #[tokio::test(flavor = "current_thread")]
    async fn the_spinner_sleeps_when_no_hold_is_open_and_spins_while_one_is() {
        start(Duration::from_millis(50));
        let busy = spinner();
        assert!(asleep_after_a_few_turns(&busy).await, "idle: asleep");
        let open = busy.hold();
        assert!(
            !asleep_after_a_few_turns(&busy).await,
            "a hold is open: spinning"
        );
        drop(open);
        assert!(
            asleep_after_a_few_turns(&busy).await,
            "the hold ended: asleep again"
        );

        // An older hold still open (a slow upstream) does not keep the spinning going once
        // the latest has ended.
        let slow = busy.hold();
        let fast = busy.hold();
        assert!(
            !asleep_after_a_few_turns(&busy).await,
            "spinning for the fast one"
        );
        drop(fast);
        assert!(
            asleep_after_a_few_turns(&busy).await,
            "the latest ended: asleep"
        );
        drop(slow);
    }

    #[test]
    fn a_thread_whose_runtime_has_gone_starts_a_new_spinner() {
        let first = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        first.block_on(async { start(Duration::from_micros(100)) });
        assert!(running_spinner().is_some());
        drop(first); // its tasks, the spinner among them, are dropped
        assert!(
            running_spinner().is_none(),
            "a spinner with no runtime is not used"
        );
        let second = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        second.block_on(async {
            start(Duration::from_micros(300));
            tokio::task::yield_now().await;
            let busy = running_spinner().unwrap();
            assert_eq!(busy.window, Duration::from_micros(300));
        });
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 1)]
    async fn a_multi_thread_runtime_gets_no_spinner() {
        start(Duration::from_micros(100));
        assert!(AnswerTime::default().wait(Instant::now()).is_none());
    }
}
