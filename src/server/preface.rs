//! A deadline on the first bytes of a connection, which hyper does not bound: hyper-util reads the
//! HTTP/2 preface (to tell HTTP/2 from HTTP/1.1) with no timeout, so a client that connects, or
//! finishes its TLS handshake, and then sends nothing or half a preface would hold its socket for
//! good.
//!
//! The deadline covers the first [`PREFACE_LEN`] bytes only; after them hyper's own timers take
//! over: HTTP/2 keep-alive PINGs (a peer that stops answering is dropped, however far it got into a
//! frame) and, for HTTP/1.1, `header_read_timeout`. So the timer is armed once per connection and
//! dropped as soon as the preface is in: reads after that cost one branch.

use std::future::Future as _;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Sleep;

/// Length of the HTTP/2 client preface (`PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n`).
pub(super) const PREFACE_LEN: usize = 24;

/// `io`, failing its reads with `TimedOut` if its first [`PREFACE_LEN`] bytes take longer than the
/// deadline to arrive.
pub(super) struct PrefaceDeadline<IO> {
    io: IO,
    /// `None` once the preface is in (or the peer closed).
    deadline: Option<Pin<Box<Sleep>>>,
    read: usize,
}

impl<IO> PrefaceDeadline<IO> {
    pub(super) fn new(io: IO, timeout: Duration) -> Self {
        Self {
            io,
            deadline: Some(Box::pin(tokio::time::sleep(timeout))),
            read: 0,
        }
    }
}

impl<IO: AsyncRead + Unpin> AsyncRead for PrefaceDeadline<IO> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let polled = Pin::new(&mut this.io).poll_read(cx, buf);
        if let Some(deadline) = &mut this.deadline {
            match &polled {
                Poll::Ready(Ok(())) => {
                    let n = buf.filled().len() - before;
                    this.read += n;
                    if this.read >= PREFACE_LEN || n == 0 {
                        this.deadline = None;
                    }
                }
                Poll::Ready(Err(_)) => {}
                Poll::Pending => {
                    if deadline.as_mut().poll(cx).is_ready() {
                        this.deadline = None;
                        return Poll::Ready(Err(io::Error::new(
                            io::ErrorKind::TimedOut,
                            "the client sent no request in time (--handshake-timeout)",
                        )));
                    }
                }
            }
        }
        polled
    }
}

impl<IO: AsyncWrite + Unpin> AsyncWrite for PrefaceDeadline<IO> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
}
