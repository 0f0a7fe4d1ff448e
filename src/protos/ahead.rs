//! Parsing the protos folder ahead of the compiler, on spare cores.
//!
//! protox links files one at a time, on one thread, and parses each file only when it reaches it.
//! Parsing is about a third of a load and needs nothing from other files, so helper threads parse the
//! folder's files (in the order the compiler asks for them) while the compiler links, and the
//! compiler takes each file from here. A file here is exactly what reading it on demand
//! (`nesting::open_checked`) would have returned (same source, same descriptor or error), so the
//! pool and every diagnostic stay the same; only the thread that did the parsing differs.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};

use protox::file::{File, FileResolver};

/// How far helpers may run ahead of the compiler: parsed files wait in memory until linked, so an
/// unbounded lead would raise the peak memory of a large tree for nothing.
const MAX_LEAD: usize = 64;

enum Slot {
    /// Nobody has started on it.
    Pending,
    /// A helper is parsing it.
    Parsing,
    /// Parsed, not yet taken by the compiler (boxed: a `File` is large, the other states are not).
    Done(Box<Result<File, protox::Error>>),
    /// Handed to the compiler (or the compiler parsed it itself).
    Taken,
}

struct Slots {
    slots: Vec<Slot>,
    /// How many files the compiler has taken: helpers stay within `MAX_LEAD` of it.
    taken: usize,
    /// The compiler is done (or gone): helpers stop, whatever is left.
    closed: bool,
}

/// The folder's files, parsed by helpers or on demand; the first resolver of the compiler's chain.
/// Cheap to clone: the compiler owns one handle, the helpers share another.
#[derive(Clone)]
pub(super) struct ParseAhead(Arc<Inner>);

struct Inner {
    names: Vec<String>,
    paths: Vec<PathBuf>,
    index: HashMap<String, usize>,
    state: Mutex<Slots>,
    /// Signalled when a file is parsed and when the compiler takes one.
    changed: Condvar,
    /// The next file a helper should look at.
    next: AtomicUsize,
}

impl ParseAhead {
    /// `files`: the name protox knows each by, and its path, in the order the compiler will open
    /// them.
    pub(super) fn new(files: &[(String, PathBuf)]) -> Self {
        let names: Vec<String> = files.iter().map(|(n, _)| n.clone()).collect();
        Self(Arc::new(Inner {
            paths: files.iter().map(|(_, p)| p.clone()).collect(),
            index: names
                .iter()
                .enumerate()
                .map(|(i, n)| (n.clone(), i))
                .collect(),
            state: Mutex::new(Slots {
                slots: files.iter().map(|_| Slot::Pending).collect(),
                taken: 0,
                closed: false,
            }),
            changed: Condvar::new(),
            next: AtomicUsize::new(0),
            names,
        }))
    }

    /// How many helper threads pay: the compiler's thread links, and linking is about twice as slow
    /// as parsing, so one spare core keeps ahead and a second is slack. None on one core.
    pub(super) fn helpers(files: usize) -> usize {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        (cores - 1).min(2).min(files.saturating_sub(1))
    }

    /// A helper's loop: parse pending files in order until none is left (the compiler parses any file
    /// it needs before a helper gets to it).
    pub(super) fn help(&self) {
        let ahead = &*self.0;
        loop {
            let i = ahead.next.fetch_add(1, Ordering::Relaxed);
            if i >= ahead.names.len() {
                return;
            }
            {
                let mut state = ahead.lock();
                while i >= state.taken + MAX_LEAD
                    && matches!(state.slots[i], Slot::Pending)
                    && !state.closed
                {
                    state = ahead
                        .changed
                        .wait(state)
                        .unwrap_or_else(PoisonError::into_inner);
                }
                if state.closed {
                    return;
                }
                if !matches!(state.slots[i], Slot::Pending) {
                    continue;
                }
                state.slots[i] = Slot::Parsing;
            }
            // Should the parser panic, the slot goes back to pending so the compiler parses the file
            // itself (and panics as it did before), rather than waiting for it forever.
            let _reset = ResetOnPanic { ahead, i };
            let file = ahead.open(i);
            ahead.lock().slots[i] = Slot::Done(Box::new(file));
            ahead.changed.notify_all();
        }
    }

    /// Stops the helpers, once the compiler needs no more files. Also on unwinding, so a panic in
    /// the compiler cannot leave a helper waiting (and the scope joining it) forever.
    pub(super) fn close_on_drop(&self) -> impl Drop + '_ {
        CloseOnDrop(&self.0)
    }
}

struct CloseOnDrop<'a>(&'a Inner);

impl Drop for CloseOnDrop<'_> {
    fn drop(&mut self) {
        self.0.lock().closed = true;
        self.0.changed.notify_all();
    }
}

impl Inner {
    fn open(&self, i: usize) -> Result<File, protox::Error> {
        super::nesting::open_checked(&self.names[i], &self.paths[i])
    }

    fn lock(&self) -> MutexGuard<'_, Slots> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl ParseAhead {
    /// The path of the folder's file protox knows as `name`, if it is one.
    pub(super) fn path_of(&self, name: &str) -> Option<&Path> {
        let i = *self.0.index.get(name)?;
        Some(&self.0.paths[i])
    }
}

impl FileResolver for ParseAhead {
    fn open_file(&self, name: &str) -> Result<File, protox::Error> {
        let ahead = &*self.0;
        let Some(&i) = ahead.index.get(name) else {
            // Not one of the folder's `*.proto` files: the rest of the chain decides.
            return Err(protox::Error::file_not_found(name));
        };
        let mut state = ahead.lock();
        loop {
            match std::mem::replace(&mut state.slots[i], Slot::Taken) {
                Slot::Parsing => {
                    state.slots[i] = Slot::Parsing;
                    state = ahead
                        .changed
                        .wait(state)
                        .unwrap_or_else(PoisonError::into_inner);
                }
                Slot::Done(file) => {
                    state.taken += 1;
                    drop(state);
                    ahead.changed.notify_all();
                    return *file;
                }
                Slot::Pending => {
                    state.taken += 1;
                    drop(state);
                    ahead.changed.notify_all();
                    return ahead.open(i);
                }
                // Asked again: its first open or link failed, and the compiler tries each import
                // anew (as protox's own resolver would, parse it again).
                Slot::Taken => {
                    drop(state);
                    return ahead.open(i);
                }
            }
        }
    }
}

/// Lets the compiler's thread shrug off a helper that panicked mid-parse (see `help`).
struct ResetOnPanic<'a> {
    ahead: &'a Inner,
    i: usize,
}

impl Drop for ResetOnPanic<'_> {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.ahead.lock().slots[self.i] = Slot::Pending;
            self.ahead.changed.notify_all();
        }
    }
}
