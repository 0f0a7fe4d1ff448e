//! One deadline for every protocol, and the two things that end a call from outside: its deadline
//! and the end of the shutdown grace period (`cut`).
//!
//! Each protocol names the deadline its own way — gRPC and gRPC-Web `grpc-timeout`, Connect
//! `connect-timeout-ms`, HTTP/JSON `Grpc-Timeout` as grpc-gateway's runtime reads it — and all
//! become a [`Deadline`]. An answer is raced against the deadline and the cut by [`bounded`] until
//! it is ready (its headers, for a stream), and a reply stream by [`until_deadline`] after that;
//! [`until`] bounds a piece of work inside a protocol. Both races start only once the answer waits:
//! a call answered at once never arms a timer or joins the shutdown token's waiters.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use http::{HeaderMap, HeaderName};
use tokio::time::Instant;
use tokio_util::sync::{CancellationToken, WaitForCancellationFuture};
use tonic::Status;

// Looked up on every gRPC call: a `HeaderName` is hashed as it is, a `&str` parsed first.
static GRPC_TIMEOUT: HeaderName = HeaderName::from_static("grpc-timeout");
static CONNECT_TIMEOUT: HeaderName = HeaderName::from_static("connect-timeout-ms");

/// When a call must be answered by, if it said.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Deadline(Option<Instant>);

impl Deadline {
    /// No deadline.
    pub(crate) const NONE: Deadline = Deadline(None);

    /// The moment it passes, if any (on std's clock, as the call's records keep time).
    pub(crate) fn at(self) -> Option<std::time::Instant> {
        self.0.map(Instant::into_std)
    }

    /// A timeout too long for the clock to add is no deadline: it would not pass anyway.
    fn after(timeout: Option<Duration>) -> Deadline {
        Deadline(timeout.and_then(|t| Instant::now().checked_add(t)))
    }

    /// gRPC's `grpc-timeout`: 1 to 8 digits and a unit (`1500m`, `2S`, …), as PROTOCOL-HTTP2.md
    /// writes it. Anything else is INTERNAL, as grpc-go answers it (a client that means a deadline
    /// must not be served without one).
    pub(crate) fn grpc(headers: &HeaderMap) -> Result<Deadline, Status> {
        let Some(value) = headers.get(&GRPC_TIMEOUT) else {
            return Ok(Deadline::NONE);
        };
        timeout(value.as_bytes(), 8)
            .map(|t| Deadline::after(Some(t)))
            .ok_or_else(|| {
                Status::internal(format!(
                    "malformed grpc-timeout: {:?} is not 1 to 8 digits and a unit (H, M, S, m, u, n)",
                    String::from_utf8_lossy(value.as_bytes())
                ))
            })
    }

    /// Connect's `connect-timeout-ms`: a positive integer of at most 10 digits (0 is refused).
    pub(crate) fn connect(headers: &HeaderMap) -> Result<Deadline, Status> {
        let Some(value) = headers.get(&CONNECT_TIMEOUT) else {
            return Ok(Deadline::NONE);
        };
        let text = value.to_str().unwrap_or_default();
        match text.parse::<u64>() {
            Ok(ms) if ms > 0 && text.len() <= 10 && text.bytes().all(|b| b.is_ascii_digit()) => {
                Ok(Deadline::after(Some(Duration::from_millis(ms))))
            }
            _ => Err(Status::invalid_argument(format!(
                "connect-timeout-ms '{text}' is not a positive integer of at most 10 digits"
            ))),
        }
    }

    /// HTTP/JSON's `Grpc-Timeout`, as grpc-gateway's runtime honours it on a transcoded call:
    /// gRPC's digits and unit (grpc-gateway does not cap the digits; 18 keep the sum in range), and
    /// INVALID_ARGUMENT when it does not read (grpc-gateway's `invalid grpc-timeout`).
    pub(crate) fn http(headers: &HeaderMap) -> Result<Deadline, Status> {
        let Some(value) = headers.get(&GRPC_TIMEOUT) else {
            return Ok(Deadline::NONE);
        };
        timeout(value.as_bytes(), 18)
            .map(|t| Deadline::after(Some(t)))
            .ok_or_else(|| {
                Status::invalid_argument(format!(
                    "invalid Grpc-Timeout: {:?} is not digits and a unit (H, M, S, m, u, n)",
                    String::from_utf8_lossy(value.as_bytes())
                ))
            })
    }
}

/// gRPC's timeout syntax: 1 to `max_digits` digits and a unit.
fn timeout(value: &[u8], max_digits: usize) -> Option<Duration> {
    let (&unit, digits) = value.split_last()?;
    if digits.is_empty() || digits.len() > max_digits || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let n = digits
        .iter()
        .fold(0u64, |n, d| n * 10 + u64::from(d - b'0'));
    Some(match unit {
        b'H' => Duration::from_secs(n.saturating_mul(3600)),
        b'M' => Duration::from_secs(n.saturating_mul(60)),
        b'S' => Duration::from_secs(n),
        b'm' => Duration::from_millis(n),
        b'u' => Duration::from_micros(n),
        b'n' => Duration::from_nanos(n),
        _ => return None,
    })
}

/// How a call still running at the end of the shutdown grace period ends.
pub(crate) fn shutdown_status() -> Status {
    Status::unavailable("server shutting down")
}

/// `answer`, or `on_deadline()` if `deadline` passes before it is ready, or `on_cut()` if `cut` is
/// cancelled first; as an `Ok`, for a service.
pub(crate) fn bounded<F: Future>(
    answer: F,
    deadline: Deadline,
    cut: &'static CancellationToken,
    on_deadline: fn() -> F::Output,
    on_cut: fn() -> F::Output,
) -> Bounded<F> {
    Bounded {
        answer: Box::pin(answer),
        deadline: deadline.0,
        expiry: None,
        on_deadline,
        cut,
        cancelled: None,
        on_cut,
    }
}

/// The future of [`bounded`]. An answer ready at its first poll (most unary ones) passes straight
/// through: the timer and the cut are made and polled only once it waits. The answer is boxed on
/// its own so that this wrapper (and the service's box around it) stays small: an answer's state is
/// large, and async wrappers around it had copied it several times per call.
pub(crate) struct Bounded<F: Future> {
    answer: Pin<Box<F>>,
    deadline: Option<Instant>,
    expiry: Option<Pin<Box<tokio::time::Sleep>>>,
    on_deadline: fn() -> F::Output,
    cut: &'static CancellationToken,
    /// Made on the first wait, so that an answer that never waits never joins the token's waiters.
    cancelled: Option<Pin<Box<WaitForCancellationFuture<'static>>>>,
    on_cut: fn() -> F::Output,
}

impl<F: Future> Future for Bounded<F> {
    type Output = Result<F::Output, Infallible>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = &mut *self;
        if let Poll::Ready(answer) = this.answer.as_mut().poll(cx) {
            return Poll::Ready(Ok(answer));
        }
        let cut = this.cut;
        let cancelled = this
            .cancelled
            .get_or_insert_with(|| Box::pin(cut.cancelled()));
        if cancelled.as_mut().poll(cx).is_ready() {
            return Poll::Ready(Ok((this.on_cut)()));
        }
        if let Some(deadline) = this.deadline {
            let expiry = this
                .expiry
                .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
            if expiry.as_mut().poll(cx).is_ready() {
                return Poll::Ready(Ok((this.on_deadline)()));
            }
        }
        Poll::Pending
    }
}

/// Runs `work` until `deadline`, else DEADLINE_EXCEEDED with `message` (dropping the work stops
/// what it runs: a delay, a script).
pub(crate) async fn until<T>(
    deadline: Deadline,
    message: &'static str,
    work: impl Future<Output = Result<T, Status>>,
) -> Result<T, Status> {
    match deadline.0 {
        None => work.await,
        Some(at) => tokio::time::timeout_at(at, work)
            .await
            .unwrap_or_else(|_| Err(Status::deadline_exceeded(message))),
    }
}

/// [`bounded`] holds a call to its deadline (and the shutdown) until the response headers; a reply
/// stream is cut here when the deadline passes or `cut` is cancelled, which also drops (and so
/// cancels) whatever produces it — a delay, a script.
pub(crate) fn until_deadline<T: Send + 'static>(
    stream: impl futures::Stream<Item = Result<T, Status>> + Send + 'static,
    deadline: Deadline,
    cut: &'static CancellationToken,
) -> impl futures::Stream<Item = Result<T, Status>> + Send + 'static {
    UntilDeadline {
        stream: Box::pin(stream),
        expiry: deadline.0.map(|d| Box::pin(tokio::time::sleep_until(d))),
        cut,
        cancelled: None,
        done: false,
    }
}

/// The stream of [`until_deadline`]. A message that is ready passes straight through (with a
/// deadline, the clock is read); the timer and the cut are polled, and so wake the call, only while
/// the stream waits — a stream that never waits ends by itself, and one whose client stops reading
/// is not polled at all (the connection's own end after the grace period cuts it). Racing them with
/// `select!` on every message cost a second state machine, a random branch order and a poll of each
/// per message.
struct UntilDeadline<S> {
    stream: Pin<Box<S>>,
    expiry: Option<Pin<Box<tokio::time::Sleep>>>,
    cut: &'static CancellationToken,
    /// Made on the first wait, so that a stream that never waits never joins the token's waiters.
    cancelled: Option<Pin<Box<WaitForCancellationFuture<'static>>>>,
    done: bool,
}

impl<S, T> futures::Stream for UntilDeadline<S>
where
    S: futures::Stream<Item = Result<T, Status>>,
{
    type Item = Result<T, Status>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        if this.done {
            return Poll::Ready(None);
        }
        let ended = |this: &mut Self, status: Status| {
            this.done = true;
            Poll::Ready(Some(Err(status)))
        };
        match this.stream.as_mut().poll_next(cx) {
            Poll::Ready(Some(item)) => {
                // A deadline's timer is polled only while waiting; a stream that never waits reads
                // the clock instead (only when the call has a deadline).
                if this
                    .expiry
                    .as_ref()
                    .is_some_and(|e| Instant::now() >= e.deadline())
                {
                    return ended(this, deadline_exceeded_while_streaming());
                }
                Poll::Ready(Some(item))
            }
            Poll::Ready(None) => {
                this.done = true;
                Poll::Ready(None)
            }
            Poll::Pending => {
                let cut = this.cut;
                let cancelled = this
                    .cancelled
                    .get_or_insert_with(|| Box::pin(cut.cancelled()));
                if cancelled.as_mut().poll(cx).is_ready() {
                    return ended(this, shutdown_status());
                }
                if let Some(expiry) = this.expiry.as_mut() {
                    if expiry.as_mut().poll(cx).is_ready() {
                        return ended(this, deadline_exceeded_while_streaming());
                    }
                }
                Poll::Pending
            }
        }
    }
}

fn deadline_exceeded_while_streaming() -> Status {
    Status::deadline_exceeded("deadline exceeded while streaming the reply")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timeouts_read_as_grpc_writes_them() {
        assert_eq!(timeout(b"1500m", 8), Some(Duration::from_millis(1500)));
        assert_eq!(timeout(b"2S", 8), Some(Duration::from_secs(2)));
        assert_eq!(timeout(b"1H", 8), Some(Duration::from_secs(3600)));
        assert_eq!(timeout(b"123456789m", 8), None);
        assert_eq!(
            timeout(b"123456789m", 18),
            Some(Duration::from_millis(123456789))
        );
        for bad in [&b""[..], b"m", b"10", b"10x", b"-1S", b"1.5S"] {
            assert_eq!(timeout(bad, 18), None, "{bad:?}");
        }
    }
}
