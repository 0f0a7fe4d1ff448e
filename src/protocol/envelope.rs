//! The 5-byte envelope every framed protocol here puts around a message: a flags byte and a
//! big-endian length. gRPC's length-prefixed message, gRPC-Web's (whose trailer frame tonic-web
//! writes) and Connect streaming's envelope are the same bytes, so they are read and written here
//! once; each protocol gives the flags their meaning and words its own errors from [`ReadError`].

use std::pin::Pin;
use std::task::{ready, Context, Poll};

use bytes::{Buf as _, BufMut as _, Bytes, BytesMut};
use futures::Stream;
use http_body::Body as _;
use tonic::Status;

/// Length of the prefix: one flags byte and a 4-byte big-endian length.
pub(crate) const PREFIX: usize = 5;
/// The message is compressed (gRPC and Connect alike).
pub(crate) const COMPRESSED: u8 = 0x01;
/// Connect's end-stream message (JSON: error and trailers); responses only.
pub(crate) const END_STREAM: u8 = 0x02;

/// The flags and length of the envelope `buf` starts with, once its prefix is in.
pub(crate) fn header(buf: &[u8]) -> Option<(u8, usize)> {
    let prefix = buf.first_chunk::<PREFIX>()?;
    let len = u32::from_be_bytes([prefix[1], prefix[2], prefix[3], prefix[4]]) as usize;
    Some((prefix[0], len))
}

/// Writes the prefix of a message of `len` bytes into `prefix` (the first [`PREFIX`] bytes of a
/// buffer reserved for them, so that a message encoded after them is framed in place).
pub(crate) fn write_prefix(prefix: &mut [u8], flags: u8, len: usize) {
    prefix[0] = flags;
    prefix[1..PREFIX].copy_from_slice(&(len as u32).to_be_bytes());
}

/// One envelope: flags, length, message.
pub(crate) fn encode(flags: u8, message: &[u8]) -> Bytes {
    let mut out = BytesMut::with_capacity(PREFIX + message.len());
    out.put_u8(flags);
    out.put_u32(message.len() as u32);
    out.put_slice(message);
    out.freeze()
}

/// The one envelope `data` holds, whole and alone: `None` if it holds less or more.
pub(crate) fn single(mut data: Bytes) -> Option<(u8, Bytes)> {
    let (flags, len) = header(&data)?;
    data.advance(PREFIX);
    (data.len() == len).then_some((flags, data))
}

/// Why no envelope could be read.
#[derive(Debug)]
pub(crate) enum ReadError {
    /// The body failed: the status its producer gave (tonic-web's for base64 that does not decode,
    /// the transport's for a stream that broke off).
    Body(Status),
    /// A flags byte with bits the reader was not told to accept, seen as soon as the prefix is in.
    Flags(u8),
    /// A length prefix over the limit, seen before the message is read.
    TooLarge(usize),
    /// The body ended inside an envelope, with this many bytes of it read.
    Truncated(usize),
}

/// Envelopes read off a request body as they arrive, each checked (flags, length) as soon as its
/// prefix is in, so that a message over the limit is refused before it is buffered.
pub(crate) struct Reader {
    body: tonic::body::Body,
    buf: BytesMut,
    /// Flag bits an envelope may carry; any other is [`ReadError::Flags`].
    flags: u8,
    limit: usize,
}

impl Reader {
    pub(crate) fn new(body: tonic::body::Body, flags: u8, limit: usize) -> Self {
        Self {
            body,
            buf: BytesMut::new(),
            flags,
            limit,
        }
    }

    /// The next envelope's flags and message; `None` at the end of the body.
    pub(crate) async fn next(&mut self) -> Result<Option<(u8, Bytes)>, ReadError> {
        std::future::poll_fn(|cx| self.poll_next(cx)).await
    }

    /// [`Reader::next`], polled: what a stream of envelopes reads with, making no future a message.
    pub(crate) fn poll_next(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Result<Option<(u8, Bytes)>, ReadError>> {
        loop {
            if let Some((flags, len)) = header(&self.buf) {
                if flags & !self.flags != 0 {
                    return Poll::Ready(Err(ReadError::Flags(flags)));
                }
                if len > self.limit {
                    return Poll::Ready(Err(ReadError::TooLarge(len)));
                }
                if self.buf.len() >= PREFIX + len {
                    self.buf.advance(PREFIX);
                    return Poll::Ready(Ok(Some((flags, self.buf.split_to(len).freeze()))));
                }
            }
            match ready!(self.poll_data(cx)).map_err(ReadError::Body)? {
                Some(data) => {
                    if self.buf.is_empty() && data.len() >= PREFIX {
                        // The usual case: a whole envelope in one chunk, taken without a copy.
                        self.buf = BytesMut::from(data);
                    } else {
                        self.buf.extend_from_slice(&data);
                    }
                }
                None if self.buf.is_empty() => return Poll::Ready(Ok(None)),
                None => return Poll::Ready(Err(ReadError::Truncated(self.buf.len()))),
            }
        }
    }

    /// Whether anything but the body's end follows what was read (a second message, or part of
    /// one); reads to the end when nothing is left over.
    pub(crate) async fn more(&mut self) -> Result<bool, Status> {
        if !self.buf.is_empty() {
            return Ok(true);
        }
        while let Some(data) = self.data().await? {
            if !data.is_empty() {
                return Ok(true);
            }
        }
        Ok(false)
    }

    /// The next data of the body (trailers are skipped); `None` at its end.
    async fn data(&mut self) -> Result<Option<Bytes>, Status> {
        std::future::poll_fn(|cx| self.poll_data(cx)).await
    }

    fn poll_data(&mut self, cx: &mut Context<'_>) -> Poll<Result<Option<Bytes>, Status>> {
        loop {
            match ready!(Pin::new(&mut self.body).poll_frame(cx)) {
                Some(Ok(frame)) => {
                    if let Ok(data) = frame.into_data() {
                        return Poll::Ready(Ok(Some(data)));
                    }
                }
                Some(Err(status)) => return Poll::Ready(Err(status)),
                None => return Poll::Ready(Ok(None)),
            }
        }
    }
}

/// A request body's envelopes as a stream of messages, each made by `read` (a protocol's own
/// unwrapping and wording of errors) from what [`Reader::poll_next`] read: `None` ends the stream,
/// and so does an error, after it is yielded. Polled, not an `unfold` of `Reader::next`: that made
/// and moved a future for every message of a stream.
pub(crate) struct Envelopes<F> {
    reader: Option<Reader>,
    read: F,
}

impl<F> Envelopes<F> {
    pub(crate) fn new(reader: Reader, read: F) -> Self {
        Envelopes {
            reader: Some(reader),
            read,
        }
    }
}

impl<T, F> Stream for Envelopes<F>
where
    F: FnMut(Result<Option<(u8, Bytes)>, ReadError>) -> Option<Result<T, Status>> + Unpin,
{
    type Item = Result<T, Status>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        let Some(reader) = this.reader.as_mut() else {
            return Poll::Ready(None);
        };
        let item = (this.read)(ready!(reader.poll_next(cx)));
        if !matches!(item, Some(Ok(_))) {
            this.reader = None;
        }
        Poll::Ready(item)
    }
}

#[cfg(test)]
mod tests {
    use std::convert::Infallible;

    use bytes::Bytes;
    use futures::StreamExt as _;
    use http_body::Frame;
    use tonic::Status;

    use super::{encode, Envelopes, Reader};

    fn body(chunks: Vec<Bytes>) -> tonic::body::Body {
        let frames = futures::stream::iter(
            chunks
                .into_iter()
                .map(|chunk| Ok::<_, Infallible>(Frame::data(chunk))),
        );
        tonic::body::Body::new(http_body_util::StreamBody::new(frames))
    }

    /// Envelopes split across the body's chunks come out whole and in order; a body that ends
    /// inside one yields that error as its last item, and nothing is read after it.
    #[test]
    fn envelopes_across_chunks_come_out_whole_and_an_error_is_the_last_item() {
        let (first, second) = (encode(0, b"first"), encode(0, b"second message"));
        let mut joined = first.to_vec();
        joined.extend_from_slice(&second[..3]);
        let chunks = vec![
            Bytes::from(joined),
            second.slice(3..),
            // The prefix of a third envelope, and the body ends.
            encode(0, b"third").slice(..4),
        ];
        let envelopes = Envelopes::new(Reader::new(body(chunks), 0, 1 << 20), |read| match read {
            Ok(Some((_, message))) => Some(Ok(message)),
            Ok(None) => None,
            Err(e) => Some(Err(Status::internal(format!("{e:?}")))),
        });
        let read: Vec<Result<Bytes, Status>> =
            futures::executor::block_on(envelopes.take(10).collect());
        assert_eq!(read.len(), 3, "{read:?}");
        assert_eq!(read[0].as_ref().unwrap(), &b"first"[..]);
        assert_eq!(read[1].as_ref().unwrap(), &b"second message"[..]);
        let error = read[2].as_ref().unwrap_err();
        assert!(error.message().contains("Truncated(4)"), "{error:?}");
    }
}
