//! `grpc.health.v1.Health`: every loaded service reports SERVING, the empty name the server itself.
//! A reload updates the statuses, so `Watch` sees a removed service turn NOT_SERVING.

use std::collections::BTreeMap;

use tonic_health::server::HealthReporter;
use tonic_health::ServingStatus;
use tower::util::BoxCloneSyncService;

use super::HttpService;

pub const PREFIX: &str = "/grpc.health.v1.Health/";

/// The health service and the handle that sets its statuses.
#[derive(Clone)]
pub struct Health {
    reporter: HealthReporter,
    pub service: HttpService,
}

impl Health {
    pub fn new() -> Self {
        let (reporter, server) = tonic_health::server::health_reporter();
        Self {
            reporter,
            service: BoxCloneSyncService::new(server),
        }
    }

    /// Reports the statuses of `now`; services of `before` missing from `now` turn NOT_SERVING
    /// (watchers are told; a service that comes back reports again). Callable from any thread: the
    /// reporter's lock is runtime-agnostic.
    pub fn update(
        &self,
        before: &BTreeMap<String, ServingStatus>,
        now: &BTreeMap<String, ServingStatus>,
    ) {
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
