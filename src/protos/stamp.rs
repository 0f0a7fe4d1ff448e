//! What a file on disk looked like, to tell a changed file from an unchanged one between two loads
//! (the incremental reload, `super::incremental`; the resolver stamps each file it reads).

use std::path::Path;

/// What a file on disk looked like: a change to it changes this (its modification and inode-change
/// times, to the nanosecond, its size and its inode), as for make or cargo.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Stamp {
    len: u64,
    modified: Option<std::time::SystemTime>,
    #[cfg(unix)]
    changed: (i64, i64),
    #[cfg(unix)]
    inode: (u64, u64),
}

/// File times have the granularity of the kernel's coarse clock (a few milliseconds): two writes
/// that close give one time. A file modified less than this before it is stamped could change
/// again unseen, so it gets no stamp and counts as changed in the next load (as git's "racily
/// clean" entries).
const RACY: std::time::Duration = std::time::Duration::from_millis(25);

impl Stamp {
    /// The file's stamp; `None` when it is not there or was modified too recently to trust one.
    pub(crate) fn of(path: &Path) -> Option<Stamp> {
        let now = std::time::SystemTime::now();
        let meta = std::fs::metadata(path).ok()?;
        if meta.modified().ok()? + RACY > now {
            return None;
        }
        #[cfg(unix)]
        use std::os::unix::fs::MetadataExt;
        Some(Stamp {
            len: meta.len(),
            modified: meta.modified().ok(),
            #[cfg(unix)]
            changed: (meta.ctime(), meta.ctime_nsec()),
            #[cfg(unix)]
            inode: (meta.dev(), meta.ino()),
        })
    }
}
