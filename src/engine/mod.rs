//! The rule engine: answers one call of a method from its rules.

pub mod emit;
pub(crate) mod fast;
pub mod general;
