//! protodrop: a gRPC server with no code generation.
//!
//! Data flow: [`cli`] flags → [`protos`] (folder → descriptor pool) → [`rules`] (handler files →
//! rules checked against the pool; Rhai [`script`]s) → [`state`] (the swapped state: path → method +
//! rules) → [`service`] (one tower service for every path, one branch per RPC shape, [`codec`] on the
//! wire). [`state::reload`] watches both folders and swaps the state; [`server`] puts it on a socket.

#![forbid(unsafe_code)]

pub mod budget;
pub mod cli;
pub mod codec;
pub mod diagnostic;
pub mod front;
pub mod handlers;
pub mod protos;
pub mod respond;
pub mod rules;
pub mod run;
pub mod script;
pub mod server;
pub mod service;
pub mod state;
