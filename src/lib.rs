//! protodrop: a gRPC server with no code generation.
//!
//! Data flow: [`cli`] flags → [`protos`] (folder → descriptor pool, and the HTTP route table) →
//! [`rules`] (handler files → rules checked against the pool; Rhai [`script`]s) → [`state`] (the
//! swapped state: path → method + rules, the [`builtin`] services) → [`server`] (sockets, TLS,
//! hyper; its router picks one [`protocol`] per request) → the protocol reads the call, asks
//! [`respond`] (and, for gRPC, the compiled path in [`service`]) for the answer, and writes it
//! ([`codec`] for messages, [`limits`] for the size statuses every layer shares).
//! [`state::reload`] watches both folders and swaps the state.

#![forbid(unsafe_code)]

pub mod budget;
pub mod builtin;
pub mod cli;
pub mod codec;
pub mod diagnostic;
pub mod handlers;
pub mod limits;
pub mod protocol;
pub mod protos;
pub mod respond;
pub mod rules;
pub mod run;
pub mod script;
pub mod server;
pub mod service;
pub mod state;
