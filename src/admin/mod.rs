//! protodrop's admin API, `protodrop.admin.v1.Admin` ([`PROTO`], `src/admin/admin.proto`): look at
//! and steer a running mock. It is served by protodrop's own machinery, as a user's service is:
//! gRPC, gRPC-Web, Connect and HTTP/JSON through its `google.api.http` routes, listed by reflection.
//!
//! Its proto is compiled once, at start-up, into a pool of its own (never merged into the user's:
//! a user's tree and its reloads are the same with or without it), and its methods are
//! `engine::Method`s answered natively ([`crate::engine::Native`], see [`methods`]). The whole is a
//! [`NativeService`], which the state serves beside the user's protos: in the one method table
//! (where it wins over a user's copy of the service, with a warning, as the built-in health does),
//! its routes tried after the user's, its files listed by reflection. On a listener of its own
//! (`--admin-listen`) it is served from a state of its own ([`State::native_only`]), and the main
//! port does not know it.
//!
//! It sits above `state`: its methods read the served state through the [`Registry`], which is
//! built after them (the registry's first state already holds them), hence [`Admin::attach`].

mod methods;

use std::sync::{Arc, OnceLock, Weak};

use tonic::Status;

use crate::engine::Method;
use crate::observe::journal::Journal;
use crate::protos::http_routes::Routes;
use crate::state::{NativeService, Registry, State};

/// The service's full name.
pub(crate) const SERVICE: &str = "protodrop.admin.v1.Admin";

/// The path of every admin call over gRPC, gRPC-Web and Connect starts with this…
pub(crate) const METHOD_PREFIX: &str = "/protodrop.admin.v1.Admin/";
/// …and every `google.api.http` route of [`PROTO`] with this (a unit test holds the proto to it).
pub(crate) const ROUTE_PREFIX: &str = "/protodrop/admin/v1/";

/// Whether a request to `path` is (or could be routed as) an admin call: what the server's origin
/// guard checks before any routing, so it holds whichever protocol or route the request takes.
/// Leading slashes are not counted and escapes are decoded first, because the route table matches
/// `/%70rotodrop/admin/v1/rules` as the `rules` route (a decode only for a path with a `%`).
pub(crate) fn is_admin_path(path: &str) -> bool {
    fn under(path: &str) -> bool {
        let path = path.trim_start_matches('/');
        path.starts_with(&METHOD_PREFIX[1..]) || path.starts_with(&ROUTE_PREFIX[1..])
    }
    under(path)
        || (path.contains('%')
            && under(&percent_encoding::percent_decode_str(path).decode_utf8_lossy()))
}

/// The admin API's contract, bundled in the binary, and the name reflection gives its file.
pub(crate) const PROTO: &str = include_str!("admin.proto");
pub(crate) const PROTO_NAME: &str = "protodrop/admin/v1/admin.proto";

/// The admin API, built once per server.
pub(crate) struct Admin {
    service: Arc<NativeService>,
    context: Arc<Context>,
}

/// What the admin's methods read: the server's registry, once it exists, and the journal.
#[derive(Debug, Default)]
pub(crate) struct Context {
    /// Weak: the registry's states hold the methods that hold this.
    registry: OnceLock<Weak<Registry>>,
    /// `None` with `--no-journal`.
    journal: OnceLock<Option<&'static Journal>>,
}

impl Context {
    /// The registry of the protos and rules served.
    pub(crate) fn registry(&self) -> Result<Arc<Registry>, Status> {
        self.registry
            .get()
            .and_then(Weak::upgrade)
            .ok_or_else(|| Status::unavailable("the admin API is not serving yet"))
    }

    /// The state being served now.
    pub(crate) fn state(&self) -> Result<Arc<State>, Status> {
        self.registry().map(|registry| registry.current())
    }

    /// The journal, or FAILED_PRECONDITION when the server keeps none.
    pub(crate) fn journal(&self) -> Result<&'static Journal, Status> {
        self.journal.get().copied().flatten().ok_or_else(|| {
            Status::failed_precondition(
                "the journal is off: this server was started with --no-journal (or \
                 PROTODROP_NO_JOURNAL=true); start it without to keep calls",
            )
        })
    }
}

impl Admin {
    /// Compiles the admin proto and makes its methods.
    pub(crate) fn new() -> Admin {
        // The proto is part of the binary, and a unit test compiles it: it cannot fail here.
        let pool = crate::protos::compile_bundled(PROTO_NAME, PROTO)
            .unwrap_or_else(|e| panic!("the bundled {PROTO_NAME} does not compile: {e:?}"));
        let service_desc = pool
            .get_service_by_name(SERVICE)
            .unwrap_or_else(|| panic!("the bundled {PROTO_NAME} has no {SERVICE}"));
        let context = Arc::new(Context::default());
        let methods = service_desc
            .methods()
            .map(|desc| {
                let native = methods::AdminMethod::new(&desc, context.clone());
                Arc::new(Method::native(desc, Arc::new(native)))
            })
            .collect();
        let routes = Arc::new(Routes::build(&pool, &[]));
        Admin {
            service: Arc::new(NativeService {
                name: SERVICE.to_string(),
                what: "admin API",
                pool,
                methods,
                routes,
            }),
            context,
        }
    }

    /// The service, for the state that serves it.
    pub(crate) fn service(&self) -> &Arc<NativeService> {
        &self.service
    }

    /// Gives the methods the registry they answer about; before this they answer UNAVAILABLE.
    pub(crate) fn attach(&self, registry: &Arc<Registry>, journal: Option<&'static Journal>) {
        let _ = self.context.registry.set(Arc::downgrade(registry));
        let _ = self.context.journal.set(journal);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_admin_proto_compiles_with_a_route_per_method() {
        let admin = Admin::new();
        let service = admin.service();
        let names: Vec<&str> = service.methods.iter().map(|m| m.name.as_str()).collect();
        assert_eq!(names.len(), 8, "{names:?}");
        assert!(
            names.contains(&"protodrop.admin.v1.Admin/ListRules"),
            "{names:?}"
        );
        assert!(service.methods.iter().all(|m| m.is_native()));
        assert!(
            service.routes.skipped.is_empty(),
            "{:?}",
            service.routes.skipped
        );
        assert_eq!(service.routes.len(), 8);
        // Every route is under ROUTE_PREFIX, or the origin guard would miss it.
        let templates: Vec<&str> = PROTO
            .lines()
            .filter_map(|l| {
                l.split_once("{get: \"")
                    .or_else(|| l.split_once("{post: \""))
                    .or_else(|| l.split_once("{put: \""))
                    .or_else(|| l.split_once("{delete: \""))
            })
            .map(|(_, rest)| rest)
            .collect();
        assert_eq!(templates.len(), 8, "{templates:?}");
        assert!(templates.iter().all(|t| is_admin_path(t)), "{templates:?}");
        assert!(is_admin_path(&format!("/{}", service.methods[0].name)));
        for path in [
            "/%70rotodrop/admin/v1/rules",
            "/protodrop/%61dmin/v1/calls",
            "//protodrop/admin/v1/rules",
            "/protodrop%2Fadmin%2Fv1/rules",
            "/protodrop.admin.v1.Admin/ResetRules",
            "/protodrop%2Eadmin.v1.Admin/ResetRules",
        ] {
            assert!(is_admin_path(path), "{path}");
        }
        for path in [
            "/t.Svc/Unary",
            "/protodrop/other",
            "/v1/protodrop/admin/v1/x",
            "/%zz",
        ] {
            assert!(!is_admin_path(path), "{path}");
        }
        // Every method has its function (none falls to the catch-all).
        for method in &service.methods {
            assert!(
                methods::known(method.desc.name()),
                "{} has no function in admin/methods.rs",
                method.name
            );
        }
    }
}
