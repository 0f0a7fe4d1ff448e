//! The built-in gRPC services: server reflection ([`reflection`]) and health ([`health`]), tonic
//! services boxed as [`HttpService`]s and rebuilt with each state. They speak gRPC only and know
//! nothing of the protocols: the router hands them gRPC (and gRPC-Web) calls, and Connect reaches
//! them through its bridge (`protocol::connect::bridge`), which sits above them.

pub(crate) mod health;
pub(crate) mod reflection;

use std::convert::Infallible;

use tower::util::BoxCloneSyncService;

/// The built-in health service. It answers whatever the protos say: a vendored copy of
/// `grpc/health/v1/health.proto` (grpc-proto ships one) is compiled, but its service is not
/// served, with a warning (see `state::State::builtin_copies`).
pub(crate) const HEALTH_SERVICE: &str = "grpc.health.v1.Health";

/// The built-in reflection services, which take precedence over copies in the protos as health
/// does, unless reflection is turned off (then a copy is served like any other service).
pub(crate) const REFLECTION_SERVICES: [&str; 2] = [
    "grpc.reflection.v1.ServerReflection",
    "grpc.reflection.v1alpha.ServerReflection",
];

/// A boxed gRPC service over HTTP: the shape of every built-in.
pub(crate) type HttpService = BoxCloneSyncService<
    http::Request<tonic::body::Body>,
    http::Response<tonic::body::Body>,
    Infallible,
>;
