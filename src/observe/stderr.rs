//! Where log lines go: stderr, written in batches by a thread of its own.
//!
//! With a line per call, a write(2) per line costs a call more than its answer, and so does a
//! channel that wakes a writer thread per line (tracing-appender's `non_blocking` does: a futex wake
//! and a context switch per line, on the one core a mock often has). Here a line is appended to a
//! shared buffer under a lock — no wake-up — and the writer thread takes the whole buffer every
//! [`PERIOD`], so a line reaches stderr within that. Call lines come here already formatted
//! ([`Stderr::write_batched`], from `observe::log`); every other line (tracing's: start-up,
//! reloads, warnings — rare, and waited for by people and tests) is written at once, after what is
//! pending. The buffer is bounded ([`MOST`]): when stderr does not keep up, lines are dropped, not
//! calls slowed, and the drop is said on stderr.

use std::io::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

/// How long a line may wait before it is written.
const PERIOD: Duration = Duration::from_millis(20);
/// Most bytes waiting; past it, lines are dropped until the writer catches up.
const MOST: usize = 8 << 20;
/// Pending bytes that wake the writer before its period is up: a busy server's lines are written
/// in batches small enough to stay in the processor's caches, not a period's worth at once.
const BATCH: usize = 32 << 10;

#[derive(Default)]
struct Shared {
    pending: Mutex<Pending>,
    /// Told when the process ends, so the last lines are written at once, or when a batch is due.
    wake: Condvar,
    dropped: AtomicU64,
}

#[derive(Default)]
struct Pending {
    lines: Vec<u8>,
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
}

/// The writer thread: every period (or at once when stopping), what is pending goes to stderr.
fn write_out(shared: &Shared) {
    let mut spare = Vec::new();
    loop {
        let stopping = {
            let pending = shared.lock();
            let (mut pending, _) = shared
                .wake
                .wait_timeout_while(pending, PERIOD, |p| !p.stopping && p.lines.len() < BATCH)
                .unwrap_or_else(|e| e.into_inner());
            std::mem::swap(&mut pending.lines, &mut spare);
            pending.stopping
        };
        let dropped = shared.dropped.swap(0, Ordering::Relaxed);
        let mut err = std::io::stderr().lock();
        let _ = err.write_all(&spare);
        if dropped > 0 {
            let _ = writeln!(
                err,
                "protodrop: {dropped} log line(s) dropped: stderr did not keep up"
            );
        }
        let _ = err.flush();
        spare.clear();
        if stopping {
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

impl Stderr {
    /// Appends a call's line (whole lines only) to what the writer thread writes next.
    pub(crate) fn write_batched(&self, line: &[u8]) {
        let mut pending = self.shared.lock();
        if pending.lines.len() + line.len() > MOST {
            self.shared.dropped.fetch_add(1, Ordering::Relaxed);
        } else {
            let was = pending.lines.len();
            pending.lines.extend_from_slice(line);
            if was < BATCH && pending.lines.len() >= BATCH {
                self.shared.wake.notify_one();
            }
        }
    }
}

impl Shared {
    fn lock(&self) -> std::sync::MutexGuard<'_, Pending> {
        self.pending.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// One line of tracing's being written (tracing-subscriber writes a whole line in one `write`):
/// at once, after the call lines pending before it, to keep the order. These lines are rare, and
/// people and tests wait for them.
pub struct Line<'a> {
    shared: &'a Shared,
}

impl Write for Line<'_> {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        let mut pending = self.shared.lock();
        let mut err = std::io::stderr().lock();
        let _ = err.write_all(&pending.lines);
        pending.lines.clear();
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
mod tests {
    use super::*;

    #[test]
    fn lines_past_the_bound_are_dropped_and_counted() {
        let stderr = Stderr {
            shared: Arc::new(Shared::default()),
        };
        let shared = &stderr.shared;
        let big = vec![b'x'; MOST / 2 + 1];
        stderr.write_batched(&big);
        stderr.write_batched(&big);
        assert_eq!(shared.pending.lock().unwrap().lines.len(), big.len());
        assert_eq!(shared.dropped.load(Ordering::Relaxed), 1);
    }
}
