//! The compiled-emitter path of gRPC calls ([`direct`]), kept where it was while issue 18's engine
//! work moves it into the engine; `protocol::grpc` calls it, and it knows nothing of the protocols.
//! What `direct` takes from its parent is re-exported here from the pieces below the protocols.

pub(crate) mod direct;

use std::pin::Pin;

use bytes::Bytes;
use tonic::Status;

pub(crate) use crate::limits::{multiple_requests, size_status};

/// Reply messages, encoded as they are produced.
pub(crate) type EncodedStream = Pin<Box<dyn futures::Stream<Item = Result<Bytes, Status>> + Send>>;
