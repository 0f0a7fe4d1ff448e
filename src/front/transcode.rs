//! HTTP/JSON transcoding from `google.api.http` annotations. Placeholder: being written.

use std::sync::Arc;

use crate::registry::State;
use crate::service::ServiceSettings;

/// Serves one plain HTTP request by the route it matches.
pub async fn serve(
    _state: Arc<State>,
    _request: http::Request<axum::body::Body>,
    _settings: ServiceSettings,
) -> http::Response<tonic::body::Body> {
    http::Response::builder()
        .status(http::StatusCode::NOT_FOUND)
        .body(tonic::body::Body::empty())
        .expect("static response")
}
