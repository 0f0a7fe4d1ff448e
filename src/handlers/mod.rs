//! What is left of the old handlers module: the compiled emitters, on their way into the engine.

pub mod emit;
