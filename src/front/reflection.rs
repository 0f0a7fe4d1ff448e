//! `grpc.reflection.v1` and `v1alpha`, built from the loaded descriptors. tonic-reflection's state is
//! immutable, so every load builds new ones; they are swapped with the rest of the state.

use prost_reflect::DescriptorPool;
use tower::util::BoxCloneSyncService;

use super::HttpService;

pub const V1_PREFIX: &str = "/grpc.reflection.v1.ServerReflection/";
pub const V1ALPHA_PREFIX: &str = "/grpc.reflection.v1alpha.ServerReflection/";

/// Both reflection versions over one pool.
#[derive(Clone)]
pub struct Reflection {
    pub v1: HttpService,
    pub v1alpha: HttpService,
}

impl std::fmt::Debug for Reflection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Reflection")
    }
}

impl Reflection {
    /// Serves every file of `pool` (imports and well-known types included, so clients can resolve
    /// every type a method uses), plus the health service's own descriptors.
    pub fn new(pool: &DescriptorPool) -> Result<Self, tonic_reflection::server::Error> {
        let encoded = pool.encode_to_vec();
        let builder = || {
            tonic_reflection::server::Builder::configure()
                .register_encoded_file_descriptor_set(&encoded)
                .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        };
        Ok(Self {
            v1: BoxCloneSyncService::new(builder().build_v1()?),
            v1alpha: BoxCloneSyncService::new(builder().build_v1alpha()?),
        })
    }

    /// The service for `path`, if it is a reflection path.
    pub fn route(&self, path: &str) -> Option<&HttpService> {
        if path.starts_with(V1_PREFIX) {
            Some(&self.v1)
        } else if path.starts_with(V1ALPHA_PREFIX) {
            Some(&self.v1alpha)
        } else {
            None
        }
    }
}
