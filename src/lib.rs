//! protodrop: a gRPC server with no code generation.
//!
//! Data flow: [`cli`] flags → [`protos`] (folder → descriptor pool) → [`handlers`] (handler files →
//! rules checked against the pool) → [`registry`] (the swapped state: path → [`engine::Method`]) →
//! [`service`] / [`front`] (each protocol reads a call and writes its answer, [`codec`] on the wire)
//! → [`engine`] (a call in, the rules executed, reply events out).
//! [`reload`] watches both folders and swaps the registry; [`server`] puts it on a socket.

#![forbid(unsafe_code)]

pub mod cli;
pub mod codec;
pub mod diagnostic;
pub mod engine;
pub mod front;
pub mod handlers;
pub mod protos;
pub mod registry;
pub mod reload;
pub mod run;
pub mod server;
pub mod service;
