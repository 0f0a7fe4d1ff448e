//! The statuses of the size and cardinality limits every layer enforces: the codec measures a reply,
//! the engine and each protocol read requests. They live below all of them, so that none has to
//! import another one (and none the transport) for a message text.

use tonic::Status;

/// A reply over `--max-message-size` ends the call with RESOURCE_EXHAUSTED, whatever the protocol.
pub(crate) fn check_reply_len(size: usize, limit: usize) -> Result<(), Status> {
    if size > limit {
        return Err(Status::resource_exhausted(format!(
            "response message of {size} bytes is larger than the limit of {limit} bytes (--max-message-size)"
        )));
    }
    Ok(())
}

/// `what` (a body, a decompressed request) is over `--max-message-size`.
pub(crate) fn too_large(what: &str, limit: usize) -> Status {
    Status::resource_exhausted(format!(
        "{what} is larger than the limit of {limit} bytes (--max-message-size)"
    ))
}

/// A framed request message whose length prefix says `len`, over the limit (gRPC's wording).
pub(crate) fn request_too_large(len: usize, limit: usize) -> Status {
    Status::resource_exhausted(format!(
        "request message of {len} bytes is larger than the limit of {limit} bytes (--max-message-size)"
    ))
}

/// A second message to a method that takes one: grpc-go's status for it.
pub(crate) fn multiple_requests() -> Status {
    Status::internal(
        "cardinality violation: received multiple request messages for non-client-streaming RPC",
    )
}
