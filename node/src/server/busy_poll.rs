//! Busy polling (`server.busy_poll`): the runtime's thread stays awake for a short window after
//! each request arrives, polling for I/O instead of sleeping in `epoll_wait`, so that a fast
//! upstream's answer is picked up without the wake-up of a halted CPU (tens of microseconds on
//! a VM). Paid in CPU: at most the window a request, less under load, when the next request
//! arrives within it; nothing when idle.
//!
//! Only on tokio's current-thread runtime (a process with one core): there the spinning task's
//! every yield makes the one thread poll the I/O driver without blocking. On the multi-thread
//! runtime an idle worker holds the driver while it sleeps, so a spinning worker could not
//! poll it and would only burn a core: the setting is then refused with a warning.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use tokio::sync::Notify;
use tokio::time::Instant;

/// Starts the spinner when `window` is non-zero and the runtime can use it; the handle that
/// requests touch.
pub fn start(window: Duration) -> Option<Arc<BusyPoll>> {
    if window.is_zero() {
        return None;
    }
    let flavor = tokio::runtime::Handle::current().runtime_flavor();
    if flavor != tokio::runtime::RuntimeFlavor::CurrentThread {
        tracing::warn!(
            window_us = window.as_micros() as u64,
            "server.busy_poll is ignored: it needs a process with one core (the current-thread \
             runtime, e.g. under `taskset -c N`); with more, a spinning worker cannot poll I/O"
        );
        return None;
    }
    tracing::info!(
        window_us = window.as_micros() as u64,
        "busy polling after each HTTP/1.1 request"
    );
    let busy = BusyPoll::new(window);
    tokio::spawn(Arc::clone(&busy).run());
    Some(busy)
}

pub struct BusyPoll {
    window: Duration,
    /// Bumped by every request; the spinner spins until `window` after the last bump.
    activity: AtomicU64,
    sleeping: AtomicBool,
    wake: Notify,
}

impl BusyPoll {
    fn new(window: Duration) -> Arc<Self> {
        Arc::new(Self {
            window,
            activity: AtomicU64::new(0),
            sleeping: AtomicBool::new(false),
            wake: Notify::new(),
        })
    }

    /// A request arrived: keep polling for the next `window`.
    pub fn touch(&self) {
        self.activity.fetch_add(1, Ordering::SeqCst);
        if self.sleeping.load(Ordering::SeqCst) {
            self.wake.notify_one();
        }
    }

    /// The spinner: yields to the scheduler (which polls I/O without blocking when nothing
    /// else is ready) while traffic is recent, sleeps otherwise.
    pub async fn run(self: Arc<Self>) {
        let mut seen = self.activity.load(Ordering::SeqCst);
        let mut until = Instant::now();
        loop {
            let activity = self.activity.load(Ordering::SeqCst);
            if activity != seen {
                seen = activity;
                until = Instant::now() + self.window;
            } else if Instant::now() >= until {
                self.sleeping.store(true, Ordering::SeqCst);
                if self.activity.load(Ordering::SeqCst) == seen {
                    self.wake.notified().await;
                }
                self.sleeping.store(false, Ordering::SeqCst);
                continue;
            }
            tokio::task::yield_now().await;
        }
    }
}
