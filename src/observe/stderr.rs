//! Where log lines go: stderr, written in batches by a thread of its own.
//!
//! With a line per call, a write(2) per line costs a call more than its answer, and so does a
//! channel that wakes a writer thread per line (tracing-appender's `non_blocking` does: a futex wake
//! and a context switch per line, on the one core a mock often has). Call lines are not even
//! formatted where the call ends: `observe::log` queues what a line says, and the writer thread,
//! every [`PERIOD`] or when woken for a full batch ([`Stderr::wake`]), formats the queue (the
//! drain registered with [`Stderr::set_drain`]) and writes it at once. Formatting a line costs
//! less than it did interleaved with calls, as its code stays in the processor's caches from one
//! line to the next. Every other line (tracing's: start-up, reloads, warnings — rare, and waited
//! for by people and tests) is written at once, after the call lines queued before it.

use std::io::Write;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, OnceLock};
use std::time::Duration;

/// How long a line may wait before it is written.
const PERIOD: Duration = Duration::from_millis(20);

#[derive(Default)]
struct Shared {
    /// Held while lines are written, so that they reach stderr in the order they were made.
    writing: Mutex<Writing>,
    /// Told when the process ends, or when a batch is due.
    wake: Condvar,
    woken: AtomicBool,
    dropped: AtomicU64,
    /// Formats the queued call lines into the buffer it is given (see `observe::log`).
    drain: OnceLock<fn(&mut Vec<u8>)>,
}

#[derive(Default)]
struct Writing {
    /// Reused from batch to batch.
    out: Vec<u8>,
    stopping: bool,
}

/// The `MakeWriter` of the process's log: cheap to clone, one per line.
#[derive(Clone)]
pub struct Stderr {
    shared: Arc<Shared>,
}

/// Writes what is left when dropped (at exit), and stops the writer thread.
pub struct Flush {
    shared: Arc<Shared>,
    writer: Option<std::thread::JoinHandle<()>>,
}

impl Stderr {
    /// The writer, and the guard that flushes it at exit.
    pub fn start() -> (Stderr, Flush) {
        let shared = Arc::new(Shared::default());
        let writer = {
            let shared = shared.clone();
            std::thread::Builder::new()
                .name("protodrop-log".into())
                .spawn(move || write_out(&shared))
                .ok()
        };
        (
            Stderr {
                shared: shared.clone(),
            },
            Flush { shared, writer },
        )
    }

    /// Where the writer takes the queued call lines from, formatted.
    pub(crate) fn set_drain(&self, drain: fn(&mut Vec<u8>)) {
        let _ = self.shared.drain.set(drain);
    }

    /// A batch of call lines is queued: written now rather than at the end of the period, so that
    /// a busy server's batches stay small enough for the processor's caches. A wake-up lost to the
    /// race with the writer's wait costs at most a period.
    pub(crate) fn wake(&self) {
        if !self.shared.woken.swap(true, Ordering::Relaxed) {
            self.shared.wake.notify_one();
        }
    }

    /// A call line was dropped: more were queued than the bound allows (stderr did not keep up).
    pub(crate) fn dropped(&self) {
        self.shared.dropped.fetch_add(1, Ordering::Relaxed);
    }
}

/// The writer thread: every period (or at once when woken or stopping), the queued lines go to
/// stderr.
fn write_out(shared: &Shared) {
    loop {
        let writing = shared.lock();
        let (mut writing, _) = shared
            .wake
            .wait_timeout_while(writing, PERIOD, |w| {
                !w.stopping && !shared.woken.load(Ordering::Relaxed)
            })
            .unwrap_or_else(|e| e.into_inner());
        shared.woken.store(false, Ordering::Relaxed);
        shared.write_queued(&mut writing.out);
        if writing.stopping {
            return;
        }
    }
}

impl Drop for Flush {
    fn drop(&mut self) {
        self.shared.lock().stopping = true;
        self.shared.wake.notify_all();
        if let Some(writer) = self.writer.take() {
            let _ = writer.join();
        }
    }
}

impl Shared {
    fn lock(&self) -> std::sync::MutexGuard<'_, Writing> {
        self.writing.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Formats the queued call lines into `out` and writes them (the `writing` lock held).
    fn write_queued(&self, out: &mut Vec<u8>) {
        out.clear();
        if let Some(drain) = self.drain.get() {
            drain(out);
        }
        let dropped = self.dropped.swap(0, Ordering::Relaxed);
        if out.is_empty() && dropped == 0 {
            return;
        }
        let mut err = std::io::stderr().lock();
        let _ = err.write_all(out);
        if dropped > 0 {
            let _ = writeln!(
                err,
                "protodrop: {dropped} log line(s) dropped: stderr did not keep up"
            );
        }
        let _ = err.flush();
    }
}

/// One line of tracing's being written (tracing-subscriber writes a whole line in one `write`):
/// at once, after the call lines queued before it, to keep the order. These lines are rare, and
/// people and tests wait for them.
pub struct Line<'a> {
    shared: &'a Shared,
}

impl Write for Line<'_> {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        let mut writing = self.shared.lock();
        self.shared.write_queued(&mut writing.out);
        let mut err = std::io::stderr().lock();
        let _ = err.write_all(bytes);
        let _ = err.flush();
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for Stderr {
    type Writer = Line<'a>;

    fn make_writer(&'a self) -> Line<'a> {
        Line {
            shared: &self.shared,
        }
    }
}

#[cfg(test)]
impl Stderr {
    /// A writer with no thread, for tests of what is queued for it.
    pub(crate) fn detached() -> Stderr {
        Stderr {
            shared: Arc::new(Shared::default()),
        }
    }

    pub(crate) fn dropped_lines(&self) -> u64 {
        self.shared.dropped.load(Ordering::Relaxed)
    }
}
