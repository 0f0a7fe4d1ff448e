//! Methods answered by protodrop's own code instead of rules: the admin API's, for one.
//!
//! A native method is an ordinary [`Method`] (a descriptor, a name, a path in the state), so every
//! protocol serves it as it serves a user's method — gRPC, gRPC-Web, Connect, HTTP/JSON — with the
//! same framing, limits, deadlines and error forms. Only what answers differs: [`Native::answer`]
//! takes the one request, decoded, with its metadata, and gives the reply message or a status.
//!
//! It has no rules, so [`super::answer`] reaches it only on the branch taken for a method without
//! rules: the rules' path does not test for it. A caller that must tell a native call from a
//! user's (to leave it out of per-call rule work or the journal) asks [`Method::is_native`].

use std::fmt::Debug;

use futures::future::BoxFuture;
use prost_reflect::DynamicMessage;
use tonic::metadata::MetadataMap;
use tonic::Status;

use super::{End, Message, Method, Ready, Reply, Request, Requests};
use crate::codec::decode_request;

/// What answers a native method: one request in, one reply out (unary), its reply within `limit`
/// bytes encoded (`--max-message-size`: a larger one is refused as any call's is, so a native that
/// can shorten its reply does). Shared by every call of the method, so it is `Send + Sync`; the
/// future may borrow it.
pub(crate) trait Native: Send + Sync + Debug {
    fn answer(
        &self,
        request: DynamicMessage,
        metadata: MetadataMap,
        limit: usize,
    ) -> BoxFuture<'_, Result<DynamicMessage, Status>>;
}

/// A native method's answer: its one request decoded (gRPC's bytes, or JSON already decoded), the
/// native's reply as a ready answer with no headers or trailers, or its status as a refusal.
pub(super) async fn answer(
    method: &Method,
    native: &dyn Native,
    metadata: MetadataMap,
    requests: Requests,
    limit: usize,
) -> Reply {
    let answered = async {
        let request = match requests.one(None).await? {
            Request::Encoded(bytes) => decode_request(&method.desc.input(), bytes)?,
            Request::Decoded(message) => message,
        };
        native.answer(request, metadata, limit).await
    };
    match answered.await {
        Ok(message) => Reply::Ready(Ready {
            headers: MetadataMap::new(),
            message: Some(Message::Decoded(message)),
            end: End::ok(MetadataMap::new()),
        }),
        Err(status) => Reply::refused(status),
    }
}
