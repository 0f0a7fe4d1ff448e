//! protodrop: a gRPC server with no code generation.
//!
//! As a library it offers what the `protodrop` binary uses, for a program that embeds it: [`cli`],
//! the flags (`Cli`, its commands and their arguments), and [`run`], the commands themselves
//! ([`run::serve`], [`run::check`]). Everything else is the crate's own.
//!
//! Inside, data flows: `cli` flags → `protos` (folder → descriptor pool, and the HTTP route table) →
//! `rules` (handler files → rules checked against the pool; Rhai `script`s) → `state` (the swapped
//! state: path → `engine::Method`, the `builtin` services) → `server` (sockets, TLS, hyper; its
//! router picks one `protocol` per request) → the protocol reads the call and hands it to the
//! `engine` (a call in, the rules executed, reply events out), then writes the events in its own
//! wire form (`codec` for messages, `limits` for the size statuses every layer shares).
//! `state::reload` watches both folders and swaps the state. The `admin` API is served by the same
//! machinery: its methods are native `engine::Method`s that the state serves beside the user's.
//!
//! ARCHITECTURE.md is the map: which module does what, and where a new protocol, answer kind or
//! built-in service goes.

#![forbid(unsafe_code)]

// The library's surface is what the binary and an embedder use: the flags and the commands. All
// else is the crate's own (`pub(crate)` or private), so it can change without a semver promise.
pub mod cli;
pub mod run;

mod admin;
mod budget;
mod builtin;
mod codec;
mod codes;
mod diagnostic;
mod engine;
mod limits;
mod metrics;
mod observe;
mod protocol;
mod protos;
mod remote;
mod rules;
mod script;
mod server;
mod state;

#[cfg(feature = "fuzzing")]
#[doc(hidden)]
pub mod fuzzing;

#[cfg(test)]
mod tests;
