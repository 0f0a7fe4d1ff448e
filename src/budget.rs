//! A size budget for what one call builds from templates, checked while it is built: a reply
//! (`--max-message-size`) or a set of response headers, trailers or an error message
//! (`--max-reply-metadata-size`, [`max_metadata_size`]).
//!
//! Rendering is synchronous, so the budget lives in a thread-local for the length of one
//! [`within`] and the code that builds (texts, lists, emitters) asks [`fits`] or [`spend`] as it
//! goes, giving up at the first "no" — a template that repeats a 4 MB request field a hundred times
//! stops after about one copy past the limit instead of building 400 MB first. What is counted is
//! a lower bound of the encoded size (string and bytes contents, one byte per list element), so a
//! reply refused here would also have been refused once encoded. Outside [`within`] (load-time
//! constants, conditions) there is no budget.

use std::cell::Cell;
use std::sync::atomic::{AtomicUsize, Ordering};

use tonic::Status;

/// `--max-reply-metadata-size`'s default: what servers commonly accept as a whole request header
/// list (16 KiB), so that a client with such a limit can read what we send.
pub(crate) const DEFAULT_MAX_METADATA_SIZE: usize = 16 << 10;

/// Most bytes of response headers (or trailers, or an error message) built from templates and
/// scripts for one call. Process-wide, set once at start-up like `--max-request-memory`: it is
/// read deep in rendering (templates, Rhai's `header()`), far from any per-call settings.
static MAX_METADATA_SIZE: AtomicUsize = AtomicUsize::new(DEFAULT_MAX_METADATA_SIZE);

/// Sets [`max_metadata_size`] (`--max-reply-metadata-size`).
pub(crate) fn set_max_metadata_size(bytes: usize) {
    MAX_METADATA_SIZE.store(bytes, Ordering::Relaxed);
}

/// The bound on response headers, trailers or an error message built for one call: a templated
/// value copied from a large request field is refused with RESOURCE_EXHAUSTED rather than sent.
pub(crate) fn max_metadata_size() -> usize {
    MAX_METADATA_SIZE.load(Ordering::Relaxed)
}

thread_local! {
    /// Bytes left, when a budget is in force on this thread.
    static LEFT: Cell<Option<usize>> = const { Cell::new(None) };
    /// Set when something did not fit; stays set until [`within`] returns.
    static OVER: Cell<bool> = const { Cell::new(false) };
}

/// What was built did not fit its budget.
#[derive(Debug)]
pub(crate) struct Exceeded;

/// Runs `f` with `limit` bytes to spend. `Err` when it ran out: whatever `f` returned is then
/// incomplete, and is dropped.
pub(crate) fn within<R>(limit: usize, f: impl FnOnce() -> R) -> Result<R, Exceeded> {
    struct Restore(Option<usize>, bool);
    impl Drop for Restore {
        fn drop(&mut self) {
            LEFT.set(self.0);
            OVER.set(self.1);
        }
    }
    let _restore = Restore(LEFT.replace(Some(limit)), OVER.replace(false));
    let result = f();
    if OVER.get() {
        Err(Exceeded)
    } else {
        Ok(result)
    }
}

/// Takes `n` bytes; false (from then on) when they are not there.
pub(crate) fn spend(n: usize) -> bool {
    match LEFT.get() {
        None => true,
        Some(left) => match left.checked_sub(n) {
            Some(rest) if !OVER.get() => {
                LEFT.set(Some(rest));
                true
            }
            _ => {
                OVER.set(true);
                false
            }
        },
    }
}

/// Whether something `n` bytes long, not yet counted, still fits (texts being built, bytes being
/// written); false (from then on) when it does not.
pub(crate) fn fits(n: usize) -> bool {
    match LEFT.get() {
        Some(left) if n > left || OVER.get() => {
            OVER.set(true);
            false
        }
        _ => true,
    }
}

/// RESOURCE_EXHAUSTED for a reply that passed `--max-message-size` while it was built.
pub(crate) fn reply_too_large(limit: usize) -> Status {
    Status::resource_exhausted(format!(
        "response message is larger than the limit of {limit} bytes (--max-message-size)"
    ))
}

/// RESOURCE_EXHAUSTED for response `what` (headers, trailers, an error message) built from templates
/// past [`max_metadata_size`].
pub(crate) fn metadata_too_large(what: &str) -> Status {
    Status::resource_exhausted(format!(
        "the response {what} built for this call are larger than the limit of {} bytes \
         (--max-reply-metadata-size)",
        max_metadata_size()
    ))
}

/// Runs `f` (which renders headers or trailers) within [`max_metadata_size`], and checks the total
/// of what it built.
pub(crate) fn bounded_metadata(
    what: &str,
    f: impl FnOnce() -> Result<tonic::metadata::MetadataMap, Status>,
) -> Result<tonic::metadata::MetadataMap, Status> {
    let limit = max_metadata_size();
    let map = within(limit, f).map_err(|Exceeded| metadata_too_large(what))??;
    let size: usize = map
        .as_ref()
        .iter()
        .map(|(k, v)| k.as_str().len() + v.len())
        .sum();
    if size > limit {
        return Err(metadata_too_large(what));
    }
    Ok(map)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spending_past_the_limit_is_reported_and_restored() {
        assert!(spend(usize::MAX), "no budget outside within()");
        let inner = within(10, || {
            assert!(spend(6) && fits(4) && !fits(5));
            spend(1)
        });
        assert!(inner.is_err());
        assert!(within(10, || spend(10)).is_ok());
        assert!(within(10, || within(1, || spend(5)).is_err() && spend(10)).unwrap());
    }
}
