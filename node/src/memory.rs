//! Gives freed heap memory back to the OS once the node goes quiet.
//!
//! glibc keeps what a burst of requests freed inside its arenas (only the top of a heap is
//! trimmed on `free`), so a node that once served a load spike would keep that resident size
//! forever. After a second without a completed request (and only after there was traffic since
//! the last trim), `malloc_trim(0)` releases the free pages of every arena. Never under load:
//! the call walks the arenas under their locks.

use std::sync::Arc;
use std::time::Duration;

use crate::metrics::Metrics;

/// How long the node must have been without a completed request before memory is released.
const QUIET_PERIOD: Duration = Duration::from_secs(1);

/// Starts the trimmer; it stops when the handle is aborted.
pub fn spawn_trimmer(metrics: Arc<Metrics>) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut ticks = tokio::time::interval(QUIET_PERIOD);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut seen = metrics.requests_completed();
        let mut trimmed_at = seen;
        loop {
            ticks.tick().await;
            let now = metrics.requests_completed();
            if is_quiet_after_traffic(seen, now, trimmed_at) {
                let traced = tracing::enabled!(tracing::Level::DEBUG);
                let before = if traced { resident_kib() } else { 0 };
                let released = release_free_memory();
                if traced {
                    tracing::debug!(
                        released,
                        rss_before_kib = before,
                        rss_after_kib = resident_kib(),
                        "node quiet: returned free heap memory to the OS"
                    );
                }
                trimmed_at = now;
            }
            seen = now;
        }
    })
}

/// True when no request completed during the last period but some did since the last trim.
fn is_quiet_after_traffic(seen: u64, now: u64, trimmed_at: u64) -> bool {
    now == seen && now != trimmed_at
}

/// Resident set size in KiB, from `/proc/self/status` (0 where it is not available).
pub fn resident_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
            line.split_whitespace().nth(1)?.parse().ok()
        })
        .unwrap_or(0)
}

#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[allow(unsafe_code)]
fn release_free_memory() -> bool {
    // SAFETY: `malloc_trim` is glibc's documented MT-safe entry point; it takes no pointers
    // and only returns free pages of the allocator's own arenas to the kernel.
    unsafe { libc::malloc_trim(0) == 1 }
}

/// Other allocators (musl, macOS) return memory on their own.
#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn release_free_memory() -> bool {
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trims_once_per_quiet_spell_and_never_under_traffic() {
        assert!(
            !is_quiet_after_traffic(10, 12, 0),
            "requests still completing"
        );
        assert!(is_quiet_after_traffic(12, 12, 0), "quiet after traffic");
        assert!(
            !is_quiet_after_traffic(12, 12, 12),
            "already trimmed for this spell"
        );
        assert!(!is_quiet_after_traffic(0, 0, 0), "never served anything");
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn reads_the_resident_size_and_the_trim_call_is_safe_to_make() {
        let before = resident_kib();
        assert!(before > 0, "VmRSS is read from /proc/self/status");
        let buffers: Vec<Vec<u8>> = (0..64).map(|i| vec![i as u8; 64 * 1024]).collect();
        drop(buffers);
        release_free_memory();
        assert!(resident_kib() > 0);
    }
}
