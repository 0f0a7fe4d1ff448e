//! The Connect protocol (unary and server streaming; JSON and binary). Placeholder: being written.

use std::sync::Arc;

use crate::registry::State;
use crate::service::ServiceSettings;

/// Serves one Connect request for the method at its path.
pub async fn serve(
    _state: Arc<State>,
    _request: http::Request<axum::body::Body>,
    _settings: ServiceSettings,
) -> http::Response<tonic::body::Body> {
    http::Response::builder()
        .status(http::StatusCode::UNSUPPORTED_MEDIA_TYPE)
        .body(tonic::body::Body::empty())
        .expect("static response")
}
