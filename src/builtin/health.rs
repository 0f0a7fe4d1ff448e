//! `grpc.health.v1.Health`: every loaded service reports SERVING, the empty name the server itself.
//! A reload updates the statuses, so `Watch` sees a removed service turn NOT_SERVING.
//!
//! tonic-health answers `Check` and `Watch`; `List`, which grpc-proto's current `health.proto` adds
//! (and reflection describes, from that file: `proto/health.proto`), is answered here from the same
//! statuses.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, PoisonError, RwLock};

use futures::FutureExt as _;
use tonic_health::pb::HealthCheckResponse;
use tonic_health::server::HealthReporter;
use tonic_health::ServingStatus;
use tower::util::BoxCloneSyncService;
use tower::ServiceExt as _;

use super::HttpService;

pub(crate) const PREFIX: &str = "/grpc.health.v1.Health/";
const LIST: &str = "/grpc.health.v1.Health/List";

/// The statuses as last reported, for `List`.
type Statuses = Arc<RwLock<BTreeMap<String, ServingStatus>>>;

/// The health service and the handle that sets its statuses.
#[derive(Clone)]
pub(crate) struct Health {
    reporter: HealthReporter,
    statuses: Statuses,
    pub service: HttpService,
}

#[derive(Clone, PartialEq, prost::Message)]
struct HealthListRequest {}

#[derive(Clone, PartialEq, prost::Message)]
struct HealthListResponse {
    #[prost(map = "string, message", tag = "1")]
    statuses: HashMap<String, HealthCheckResponse>,
}

/// `List`: every status reported.
#[derive(Clone)]
struct List(Statuses);

impl tonic::server::UnaryService<HealthListRequest> for List {
    type Response = HealthListResponse;
    type Future =
        futures::future::Ready<Result<tonic::Response<HealthListResponse>, tonic::Status>>;

    fn call(&mut self, _: tonic::Request<HealthListRequest>) -> Self::Future {
        let statuses = self
            .0
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .map(|(name, status)| {
                let status = match status {
                    ServingStatus::Unknown => 0,
                    ServingStatus::Serving => 1,
                    ServingStatus::NotServing => 2,
                };
                (name.clone(), HealthCheckResponse { status })
            })
            .collect();
        futures::future::ready(Ok(tonic::Response::new(HealthListResponse { statuses })))
    }
}

impl Health {
    pub(crate) fn new() -> Self {
        let (reporter, server) = tonic_health::server::health_reporter();
        let statuses = Statuses::default();
        let list = List(statuses.clone());
        let server = BoxCloneSyncService::new(server);
        let service = tower::service_fn(move |request: http::Request<tonic::body::Body>| {
            if request.uri().path() == LIST {
                let list = list.clone();
                async move {
                    let mut grpc = tonic::server::Grpc::new(tonic_prost::ProstCodec::default());
                    Ok(grpc.unary(list, request).await)
                }
                .boxed()
            } else {
                server.clone().oneshot(request).boxed()
            }
        });
        Self {
            reporter,
            statuses,
            service: BoxCloneSyncService::new(service),
        }
    }

    /// Reports the statuses of `now`; services of `before` missing from `now` turn NOT_SERVING
    /// (watchers are told; a service that comes back reports again). Callable from any thread: the
    /// reporter's lock is runtime-agnostic.
    pub(crate) fn update(
        &self,
        before: &BTreeMap<String, ServingStatus>,
        now: &BTreeMap<String, ServingStatus>,
    ) {
        {
            let mut statuses = self
                .statuses
                .write()
                .unwrap_or_else(PoisonError::into_inner);
            statuses.extend(now.iter().map(|(n, s)| (n.clone(), *s)));
            for gone in before.keys().filter(|name| !now.contains_key(*name)) {
                statuses.insert(gone.clone(), ServingStatus::NotServing);
            }
        }
        futures::executor::block_on(async {
            for (name, status) in now {
                self.reporter.set_service_status(name, *status).await;
            }
            for gone in before.keys().filter(|name| !now.contains_key(*name)) {
                self.reporter
                    .set_service_status(gone, ServingStatus::NotServing)
                    .await;
            }
        });
    }
}

impl Default for Health {
    fn default() -> Self {
        Self::new()
    }
}
