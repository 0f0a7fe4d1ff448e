//! Placeholder with the final interface; the real module replaces this file.
use std::path::Path;

use prost_reflect::{DynamicMessage, MessageDescriptor};
use tonic::{metadata::MetadataMap, Status};

use crate::diagnostic::Diagnostic;

#[derive(Clone, Debug)]
pub struct ScriptLimits {
    pub max_operations: u64,
    pub max_call_depth: usize,
    pub max_string_size: usize,
    pub max_array_size: usize,
    pub max_map_size: usize,
}
impl Default for ScriptLimits {
    fn default() -> Self {
        Self {
            max_operations: 1_000_000,
            max_call_depth: 64,
            max_string_size: 1 << 20,
            max_array_size: 100_000,
            max_map_size: 100_000,
        }
    }
}
#[derive(Clone, Debug)]
pub struct ScriptEngine;
impl ScriptEngine {
    pub fn new(_limits: ScriptLimits) -> Self {
        ScriptEngine
    }
    pub fn compile(
        &self,
        file: &Path,
        _source: &str,
        _line_offset: usize,
    ) -> Result<Script, Diagnostic> {
        Err(Diagnostic::file(file, "scripts are not available yet"))
    }
}
#[derive(Clone, Debug)]
pub struct Script;
pub struct ScriptCall {
    pub request: Option<DynamicMessage>,
    pub metadata: MetadataMap,
    pub incoming: Option<tokio::sync::mpsc::Receiver<DynamicMessage>>,
    pub output: MessageDescriptor,
    pub streaming_response: bool,
    pub cancel: tokio_util::sync::CancellationToken,
}
pub enum ScriptEvent {
    Headers(MetadataMap),
    Message(DynamicMessage),
}
pub struct ScriptOutcome {
    pub reply: Option<DynamicMessage>,
    pub trailers: MetadataMap,
}
impl Script {
    pub fn run(
        &self,
        _call: ScriptCall,
        _events: &mut dyn FnMut(ScriptEvent) -> bool,
    ) -> Result<ScriptOutcome, Status> {
        Err(Status::unimplemented("scripts"))
    }
}
