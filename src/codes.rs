//! gRPC status codes by name, as handler files write them (`error.code = "NOT_FOUND"`) and as the
//! call log, the journal and the metrics name them: one table for all.

use tonic::Code;

/// The names, indexed by code.
pub(crate) const NAMES: [&str; 17] = [
    "OK",
    "CANCELLED",
    "UNKNOWN",
    "INVALID_ARGUMENT",
    "DEADLINE_EXCEEDED",
    "NOT_FOUND",
    "ALREADY_EXISTS",
    "PERMISSION_DENIED",
    "RESOURCE_EXHAUSTED",
    "FAILED_PRECONDITION",
    "ABORTED",
    "OUT_OF_RANGE",
    "UNIMPLEMENTED",
    "INTERNAL",
    "UNAVAILABLE",
    "DATA_LOSS",
    "UNAUTHENTICATED",
];

/// The code of a call cut short before its end (its answer dropped): DEADLINE_EXCEEDED once its
/// deadline has passed, as the client is told; else CANCELLED (the client went away, or the
/// shutdown ended it).
pub(crate) fn cut_short(deadline: Option<std::time::Instant>) -> Code {
    match deadline {
        Some(deadline) if std::time::Instant::now() >= deadline => Code::DeadlineExceeded,
        _ => Code::Cancelled,
    }
}

/// The name gRPC gives `code` (`NOT_FOUND`).
pub(crate) fn name(code: Code) -> &'static str {
    NAMES.get(code as usize).copied().unwrap_or("UNKNOWN")
}
