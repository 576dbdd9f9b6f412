//! The log sink: lines are appended to a bounded in-memory buffer and written to stderr in
//! batches by one background thread.
//!
//! Why not a channel with a line per message (tracing-appender): waking the writer thread for
//! every line costs a futex wake and, on a busy core, a context switch that lands before the
//! response leaves (the request's line is logged before hyper writes the response). Here a
//! line wakes the thread only when it sleeps, i.e. after a quiet period: an active writer
//! writes what came in every [`BATCH_DELAY`] on its own clock, and goes to sleep after a
//! round with nothing to write. Under steady traffic requests never wake it; while idle it
//! never runs. A line is on stderr at most about [`BATCH_DELAY`] after it was logged (and at
//! exit, when the guard is dropped). Past [`BUFFER_LIMIT`] lines are dropped, never waited
//! for, and the count of dropped lines is written with the next batch.

use std::io::Write;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;
use std::time::Duration;

use tracing_subscriber::fmt::MakeWriter;

/// How long the writer waits after the first line of a batch for more lines to join it.
pub const BATCH_DELAY: Duration = Duration::from_millis(50);
/// Bytes buffered before new lines are dropped rather than slowing requests down.
pub const BUFFER_LIMIT: usize = 8 * 1024 * 1024;

struct Shared {
    state: Mutex<State>,
    ready: Condvar,
    dropped: AtomicU64,
    /// Times a line had to wake the writer (a test reads it: steady traffic must not).
    wakeups: AtomicU64,
    /// The writer thread could not be started: lines go straight to stderr instead of into a
    /// buffer nobody would ever write out.
    unbatched: AtomicBool,
}

#[derive(Default)]
struct State {
    buffer: Vec<u8>,
    closed: bool,
    /// The writer waits on the condvar (not on its clock): the next line must wake it.
    asleep: bool,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock leaves a valid buffer behind: keep logging.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Hands out writers to the subscriber; cheap to clone.
#[derive(Clone)]
pub struct BatchedStderr {
    shared: Arc<Shared>,
}

/// Flushes what is buffered and stops the writer thread when dropped.
pub struct FlushGuard {
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

/// Starts the writer thread over `sink` (stderr in the binary).
pub fn batched(sink: impl Write + Send + 'static) -> (BatchedStderr, FlushGuard) {
    let shared = Arc::new(Shared {
        state: Mutex::new(State::default()),
        ready: Condvar::new(),
        dropped: AtomicU64::new(0),
        wakeups: AtomicU64::new(0),
        unbatched: AtomicBool::new(false),
    });
    let worker = Arc::clone(&shared);
    let thread = std::thread::Builder::new()
        .name("hapax-log".into())
        .spawn(move || write_batches(&worker, sink))
        .inspect_err(|error| {
            eprintln!("hapax: no log writer thread ({error}): writing log lines directly");
            shared.unbatched.store(true, Ordering::Relaxed);
        })
        .ok();
    (
        BatchedStderr {
            shared: Arc::clone(&shared),
        },
        FlushGuard { shared, thread },
    )
}

fn write_batches(shared: &Shared, mut sink: impl Write) {
    let mut batch = Vec::new();
    let mut state = shared.lock();
    loop {
        if state.buffer.is_empty() && !state.closed {
            // Nothing came in during the last round: sleep until a line wakes us.
            state.asleep = true;
            while state.asleep && !state.closed {
                state = shared
                    .ready
                    .wait(state)
                    .unwrap_or_else(PoisonError::into_inner);
            }
        }
        // Awake: one batch per round; lines do not wake an awake writer.
        loop {
            if !state.closed {
                drop(state);
                std::thread::sleep(BATCH_DELAY);
                state = shared.lock();
            }
            let closing = state.closed;
            if state.buffer.is_empty() && !closing {
                break;
            }
            std::mem::swap(&mut batch, &mut state.buffer);
            drop(state);
            write_batch(shared, &mut sink, &batch);
            batch.clear();
            if closing {
                return;
            }
            state = shared.lock();
        }
    }
}

fn write_batch(shared: &Shared, sink: &mut impl Write, batch: &[u8]) {
    // Nowhere to report a failing stderr: the lines are lost, the gateway goes on.
    let _ = sink.write_all(batch);
    // Lines were dropped after the buffered ones: say so after them.
    let dropped = shared.dropped.swap(0, Ordering::Relaxed);
    if dropped > 0 {
        let _ = writeln!(
            sink,
            "{{\"level\":\"WARN\",\"message\":\"{dropped} log lines dropped: the log buffer was full\"}}"
        );
    }
    let _ = sink.flush();
}

impl Drop for FlushGuard {
    fn drop(&mut self) {
        self.shared.lock().closed = true;
        self.shared.ready.notify_one();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// One event's writer: tracing-subscriber formats a whole line, then writes it at once.
pub struct LineWriter<'a> {
    shared: &'a Shared,
}

impl Write for LineWriter<'_> {
    fn write(&mut self, line: &[u8]) -> std::io::Result<usize> {
        if self.shared.unbatched.load(Ordering::Relaxed) {
            return std::io::stderr().write(line);
        }
        let mut state = self.shared.lock();
        if state.buffer.len() + line.len() > BUFFER_LIMIT {
            drop(state);
            self.shared.dropped.fetch_add(1, Ordering::Relaxed);
            return Ok(line.len());
        }
        state.buffer.extend_from_slice(line);
        let wake = std::mem::take(&mut state.asleep);
        drop(state);
        if wake {
            self.shared.wakeups.fetch_add(1, Ordering::Relaxed);
            self.shared.ready.notify_one();
        }
        Ok(line.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> MakeWriter<'a> for BatchedStderr {
    type Writer = LineWriter<'a>;

    fn make_writer(&'a self) -> Self::Writer {
        LineWriter {
            shared: &self.shared,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A sink the test can read back.
    #[derive(Clone, Default)]
    struct Captured(Arc<Mutex<Vec<u8>>>);

    impl Write for Captured {
        fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
            self.0
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .extend_from_slice(bytes);
            Ok(bytes.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    impl Captured {
        fn text(&self) -> String {
            String::from_utf8_lossy(&self.0.lock().unwrap_or_else(PoisonError::into_inner))
                .into_owned()
        }
    }

    #[test]
    fn lines_arrive_in_order_within_a_batch_delay_and_all_at_exit() {
        let sink = Captured::default();
        let (make, guard) = batched(sink.clone());
        for i in 0..100 {
            let _ = writeln!(make.make_writer(), "line {i}");
        }
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while !sink.text().contains("line 99") && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
        let expected: String = (0..100).map(|i| format!("line {i}\n")).collect();
        assert_eq!(
            sink.text(),
            expected,
            "written by the background thread, in order"
        );
        let _ = writeln!(make.make_writer(), "last words");
        drop(guard);
        assert!(
            sink.text().ends_with("last words\n"),
            "dropping the guard flushes"
        );
    }

    #[test]
    fn steady_lines_do_not_wake_the_writer_and_a_quiet_one_sleeps() {
        let sink = Captured::default();
        let (make, guard) = batched(sink.clone());
        // One line every 2 ms for ~300 ms: many rounds of BATCH_DELAY, never a quiet one.
        for i in 0..150 {
            let _ = writeln!(make.make_writer(), "line {i}");
            std::thread::sleep(Duration::from_millis(2));
        }
        // Waking per batch would be ~15 wakes; only the first line should (a stall of the
        // test thread longer than a round, on a loaded machine, may add one).
        let steady = make.shared.wakeups.load(Ordering::Relaxed);
        assert!(steady <= 3, "{steady} wakes for steady lines");
        // A quiet period: the writer goes to sleep, and the next line wakes it again.
        std::thread::sleep(BATCH_DELAY * 4);
        assert!(
            sink.text().ends_with("line 149\n"),
            "written without a wake"
        );
        let _ = writeln!(make.make_writer(), "after a pause");
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while !sink.text().contains("after a pause") && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
        assert!(sink.text().ends_with("after a pause\n"));
        assert_eq!(
            make.shared.wakeups.load(Ordering::Relaxed),
            steady + 1,
            "the line after the pause woke the sleeping writer"
        );
        drop(guard);
    }

    #[test]
    fn a_full_buffer_drops_lines_and_says_how_many() {
        let shared = Shared {
            state: Mutex::new(State::default()),
            ready: Condvar::new(),
            dropped: AtomicU64::new(0),
            wakeups: AtomicU64::new(0),
            unbatched: AtomicBool::new(false),
        };
        let line = vec![b'x'; 1024 * 1024];
        for _ in 0..12 {
            let _ = LineWriter { shared: &shared }.write(&line);
        }
        assert_eq!(
            shared.lock().buffer.len(),
            BUFFER_LIMIT,
            "never more than the limit"
        );
        assert_eq!(shared.dropped.load(Ordering::Relaxed), 4);
        shared.lock().closed = true;
        let sink = Captured::default();
        write_batches(&shared, sink.clone());
        let text = sink.text();
        assert!(
            text.starts_with(&"x".repeat(BUFFER_LIMIT)),
            "the buffered lines first"
        );
        assert_eq!(
            &text[BUFFER_LIMIT..],
            "{\"level\":\"WARN\",\"message\":\"4 log lines dropped: the log buffer was full\"}\n"
        );
    }
}
