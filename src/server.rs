//! Puts the service on a socket: tonic's server (HTTP/2, and HTTP/1.1 for browsers) with one catch-all
//! route, wrapped in the gRPC-Web and CORS layer.

use std::future::Future;
use std::sync::Arc;

use tokio::net::TcpListener;
use tonic::service::Routes;
use tonic::transport::server::TcpIncoming;

use crate::front::web::WebLayer;
use crate::registry::Registry;
use crate::service::{DynamicService, ServiceSettings};

/// Serves until `shutdown` completes, then lets calls in flight finish.
pub async fn serve(
    listener: TcpListener,
    registry: Arc<Registry>,
    settings: ServiceSettings,
    web: WebLayer,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), tonic::transport::Error> {
    // tonic names services at compile time; a fallback route takes every path instead and keeps
    // tonic's transport and layers (grpc-timeout among them).
    let router = axum::Router::new().fallback_service(DynamicService::new(registry, settings));
    let incoming = TcpIncoming::from(listener).with_nodelay(Some(true));
    tonic::transport::Server::builder()
        // HTTP/1.1 for curl, browsers and gRPC-Web; HTTP/2 for gRPC.
        .accept_http1(true)
        // gRPC-Web (translated to gRPC) and CORS, before anything else sees the request.
        .layer(web)
        .add_routes(Routes::from(router))
        .serve_with_incoming_shutdown(incoming, shutdown)
        .await
}
