//! A verification filter: which journaled calls count. Written as a rule's `when` is (the same
//! conditions, read by the same loader), plus the method and the status the call ended with:
//!
//! ```toml
//! method = "helloworld.Greeter/SayHello"   # optional
//! when.request.name = "tom"                # request conditions need `method`: it types them
//! when.metadata.x-user = { present = true }
//! status = "OK"                            # optional; a code name (any case) or number
//! ```
//!
//! It is read from TOML or JSON by the loader (`Filter::toml`, `Filter::json`, in `load/filter.rs`).
//! It knows no journal: [`Filter::matches`] takes what one call had, so whoever keeps calls asks
//! it per call.

use prost::Message as _;
use prost_reflect::{DynamicMessage, MessageDescriptor, ReflectMessage};
use tonic::metadata::MetadataMap;
use tonic::Code;

use super::matcher::{Condition, Subject};
use super::template::Scope;

/// A compiled filter; see the module's doc.
#[derive(Clone, Debug)]
pub(crate) struct Filter {
    /// `pkg.Service/Method`, when the filter names one.
    pub(crate) method: Option<String>,
    /// The method's input, which typed the request conditions.
    pub(crate) input: Option<MessageDescriptor>,
    pub(crate) conditions: Vec<Condition>,
    pub(crate) status: Option<Code>,
}

impl Filter {
    /// Whether a call of `method` (`pkg.Service/Method`, a leading `/` is fine) with `metadata`,
    /// `request` (the message to test: for a stream, whichever the caller picks — each, or the
    /// last) and the final `code` counts. A filter with request conditions does not count a call
    /// without a request; a request of another pool's type (protos reloaded since the call) is
    /// read again as the filter's type.
    pub(crate) fn matches(
        &self,
        method: &str,
        metadata: &MetadataMap,
        request: Option<&DynamicMessage>,
        code: Code,
    ) -> bool {
        if let Some(want) = &self.method {
            if method.trim_start_matches('/') != want {
                return false;
            }
        }
        if self.status.is_some_and(|s| s != code) {
            return false;
        }
        let on_request = self
            .conditions
            .iter()
            .any(|c| matches!(c.subject, Subject::Field(_)));
        let converted;
        let request = match (request, &self.input) {
            (Some(r), Some(input)) if on_request && r.descriptor() != *input => {
                if r.descriptor().full_name() != input.full_name() {
                    return false;
                }
                match DynamicMessage::decode(input.clone(), r.encode_to_vec().as_slice()) {
                    Ok(m) => {
                        converted = m;
                        Some(&converted)
                    }
                    Err(_) => return false,
                }
            }
            (None, _) if on_request => return false,
            (r, _) => r,
        };
        let scope = Scope::new(request, metadata);
        self.conditions.iter().all(|c| c.holds(&scope))
    }
}
