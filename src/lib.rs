//! protodrop: a gRPC server with no code generation.
//!
//! Data flow: [`cli`] flags → [`protos`] (folder → descriptor pool, and the HTTP route table) →
//! [`handlers`] (handler files → rules checked against the pool) → [`registry`] (the swapped state:
//! path → method + rules, the [`builtin`] services) → [`server`] (sockets, TLS, hyper; its router
//! picks one [`protocol`] per request) → the protocol reads the call, asks [`respond`] (and, for
//! gRPC, the compiled path in [`service`]) for the answer, and writes it ([`codec`] for messages,
//! [`limits`] for the size statuses every layer shares). [`reload`] watches both folders and swaps
//! the registry.

#![forbid(unsafe_code)]

pub mod builtin;
pub mod cli;
pub mod codec;
pub mod diagnostic;
pub mod handlers;
pub mod limits;
pub mod protocol;
pub mod protos;
pub mod registry;
pub mod reload;
pub mod respond;
pub mod run;
pub mod server;
pub mod service;
