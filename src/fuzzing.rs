//! The internal entry points the cargo-fuzz targets (`fuzz/fuzz_targets/`) call, and nothing else:
//! compiled only with the `fuzzing` feature (which fuzz/Cargo.toml enables), hidden from the docs.
//! Not an API: these change with the code they drive. Laid out as the crate's own modules, so a
//! target names `protodrop::fuzzing::engine::answer` where the crate says `crate::engine::answer`.

/// The engine, driven directly by `request_path`.
pub mod engine {
    pub use crate::engine::{answer, Call, Event, Message, Request, Requests};
}

/// The HTTP/JSON protocol, served whole by `transcode_path`.
pub mod protocol {
    pub use crate::protocol::ServiceSettings;

    pub mod http_json {
        pub use crate::protocol::http_json::serve;
    }
}

/// The proto loader (`handler_file`) and the `google.api.http` route table (`transcode_path`,
/// `path_template`).
pub mod protos {
    pub use crate::protos::load;

    pub mod http_routes {
        pub use crate::protos::http_routes::{Lookup, Verb};

        pub mod pattern {
            pub use crate::protos::http_routes::pattern::{Segment, Template};
        }
    }
}

/// One handler file checked as the loader checks it (`handler_file`).
pub mod rules {
    pub use crate::rules::load_source;
}

/// Script limits and the Rhai engine the loader compiles with.
pub mod script {
    pub use crate::script::{ScriptEngine, ScriptLimits};
}

/// The served state, built as a reload builds it (`request_path`, `transcode_path`).
pub mod state {
    pub use crate::state::{Method, Sources, State};
}
