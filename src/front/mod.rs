//! Services beside the user's: server reflection and health. Each is a boxed tower service, chosen by
//! path in `service`.

pub mod health;
pub mod reflection;

use std::convert::Infallible;

use tower::util::BoxCloneSyncService;

/// A boxed HTTP service, the common shape of every front.
pub type HttpService = BoxCloneSyncService<
    http::Request<axum::body::Body>,
    http::Response<tonic::body::Body>,
    Infallible,
>;
