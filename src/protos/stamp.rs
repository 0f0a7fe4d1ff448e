//! What a file on disk looked like, to tell a changed file from an unchanged one between two loads
//! (the incremental reload, `super::incremental`; the resolver stamps each file it reads).

use std::collections::HashMap;
use std::path::{Path, PathBuf};

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

/// The stamps of `paths` (those that have one), taken on two threads where there are two cores:
/// a stat call each, and a large tree has thousands.
pub(crate) fn stamp_all<'a>(
    paths: impl ExactSizeIterator<Item = &'a Path>,
) -> HashMap<PathBuf, Stamp> {
    let paths: Vec<&Path> = paths.collect();
    let threads = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .clamp(1, 2);
    let stamp = |share: &[&Path]| -> Vec<(PathBuf, Stamp)> {
        share
            .iter()
            .filter_map(|p| Some((p.to_path_buf(), Stamp::of(p)?)))
            .collect()
    };
    let mut stamps = HashMap::with_capacity(paths.len());
    if threads < 2 || paths.len() < 256 {
        stamps.extend(stamp(&paths));
        return stamps;
    }
    let (first, second) = paths.split_at(paths.len() / 2);
    std::thread::scope(|scope| {
        let other = std::thread::Builder::new()
            .name("protodrop-stamp".into())
            .spawn_scoped(scope, || stamp(second));
        stamps.extend(stamp(first));
        match other.ok().map(|t| t.join()) {
            Some(Ok(theirs)) => stamps.extend(theirs),
            // No thread, or it panicked (it does not): stamped here.
            _ => stamps.extend(stamp(second)),
        }
    });
    stamps
}
