//! `grpc.reflection.v1` and `v1alpha`, answered straight from the loaded [`DescriptorPool`].
//!
//! The pool already holds every file, with a name index covering every symbol, so reflection keeps
//! no index of its own and encodes each file when it is asked for: building a state's reflection
//! is a pointer copy, whatever the size of the tree. (tonic-reflection decoded every file a second
//! time into its own symbol table, which on a large tree cost about as much memory as the pool.)
//!
//! Answers follow grpc-go's reflection service, the reference clients are written against:
//! - a file answer carries the file and its transitive imports not yet sent on this stream, the
//!   file asked for first;
//! - symbols are messages, enums, services, extensions, methods (`pkg.Service.Method`), fields and
//!   oneofs (`pkg.Message.field`) and enum values, scoped as protoc scopes them (beside their enum:
//!   `pkg.VALUE`, `pkg.Message.VALUE`; `pkg.Enum.VALUE`, which tonic-reflection answered, is
//!   accepted too);
//! - extension queries are answered from the extensions the pool knows for the message;
//! - what is not found is a `NOT_FOUND` error response on the stream, which goes on; a request
//!   with no question ends the stream with `INVALID_ARGUMENT`.
//!
//! An answer must fit a client's default receive limit (4 MiB) or the client drops the whole
//! stream. A larger one is sent without the files' `source_code_info` (comments and positions,
//! which only `describe`-like output uses); if that is still too large, the imports that do not fit
//! are left out and not counted as sent, so the client asks for them by name, as clients do for any
//! import they miss. Only a single file over the limit on its own is an error (`RESOURCE_EXHAUSTED`).
//!
//! The built-in services' own files (`grpc/health/v1/health.proto`, both reflection protos) are
//! served beside the user's. The health file is grpc-proto's current one (`proto/health.proto`,
//! with `List`), which the built-in health service answers in full (`builtin::health`): a user's
//! vendored copy of it, served instead under the same name, then describes what answers. A user file of the same name is the one served, and a service both
//! define is listed once, so a tree that vendors those protos neither breaks nor duplicates them.
//!
//! The two versions are the same messages under two package names, identical on the wire, so a
//! v1alpha call is served by the v1 service under the v1 path.

use std::collections::{BTreeSet, HashSet};
use std::sync::LazyLock;

use futures::StreamExt;
use prost::encoding::encoded_len_varint;
use prost::Message;
use prost_reflect::{DescriptorPool, FileDescriptor};
use tonic::{Request, Response, Status, Streaming};
use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;
use tonic_reflection::pb::v1::server_reflection_server::{
    ServerReflection, ServerReflectionServer,
};
use tonic_reflection::pb::v1::{
    ErrorResponse, ExtensionNumberResponse, FileDescriptorResponse, ListServiceResponse,
    ServerReflectionRequest, ServerReflectionResponse, ServiceResponse,
};
use tower::util::BoxCloneSyncService;
use tower::ServiceExt;

use super::HttpService;

pub(crate) const V1_PREFIX: &str = "/grpc.reflection.v1.ServerReflection/";
pub(crate) const V1ALPHA_PREFIX: &str = "/grpc.reflection.v1alpha.ServerReflection/";

/// The most bytes one answer may take: what gRPC clients accept by default (grpc-go, grpc-java,
/// grpcio, grpc-dotnet all use 4 MiB).
const ANSWER_LIMIT: usize = 4 * 1024 * 1024;

/// `source_code_info` in `FileDescriptorProto`.
const SOURCE_CODE_INFO: u32 = 9;

/// The built-in services' files: health and both reflection versions, under the names grpc-proto
/// gives them (what other servers answer and what a user's file imports; tonic's crates name them
/// `health.proto`, `reflection_v1.proto`, `reflection_v1alpha.proto`).
static BUILT_INS: LazyLock<DescriptorPool> = LazyLock::new(|| {
    let mut pool = DescriptorPool::new();
    // grpc-proto's current health.proto (with `List`, which `builtin::health` answers beside
    // tonic-health's `Check` and `Watch`); it imports nothing.
    let health = protox::file::File::from_source(
        "grpc/health/v1/health.proto",
        include_str!("proto/health.proto"),
    )
    .expect("the built-in health.proto parses");
    pool.add_file_descriptor_proto(health.file_descriptor_proto().clone())
        .expect("the built-in health.proto is valid");
    for (set, name) in [
        (
            tonic_reflection::pb::v1::FILE_DESCRIPTOR_SET,
            "grpc/reflection/v1/reflection.proto",
        ),
        (
            tonic_reflection::pb::v1alpha::FILE_DESCRIPTOR_SET,
            "grpc/reflection/v1alpha/reflection.proto",
        ),
    ] {
        // One file each, importing nothing, with no custom options for a decode to lose.
        let mut set = prost_types::FileDescriptorSet::decode(set)
            .expect("the built-in services' descriptors are valid");
        for file in &mut set.file {
            file.name = Some(name.to_string());
        }
        pool.add_file_descriptor_set(set)
            .expect("the built-in services' descriptors are valid");
    }
    pool
});

/// Reflection over one pool, both versions.
#[derive(Clone)]
pub(crate) struct Reflection {
    service: HttpService,
}

impl std::fmt::Debug for Reflection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Reflection")
    }
}

impl Reflection {
    /// Serves every file of `pool` (imports and well-known types included, so clients can resolve
    /// every type a method uses), then those of `natives` (the pools of the services protodrop
    /// answers natively, the admin API's), plus the built-in services' files. Cheap: nothing is
    /// indexed or encoded until asked for.
    pub(crate) fn new(pool: &DescriptorPool, natives: &[DescriptorPool]) -> Self {
        let server = ServerReflectionServer::new(Answers {
            pool: pool.clone(),
            natives: natives.to_vec(),
        });
        let service = server.map_request(|mut request: http::Request<tonic::body::Body>| {
            if let Some(method) = request.uri().path().strip_prefix(V1ALPHA_PREFIX) {
                let path = format!("{V1_PREFIX}{method}");
                let mut parts = request.uri().clone().into_parts();
                // A path made of a valid one's pieces is valid.
                parts.path_and_query = path.parse().ok();
                if let Ok(uri) = http::Uri::from_parts(parts) {
                    *request.uri_mut() = uri;
                }
            }
            request
        });
        Self {
            service: BoxCloneSyncService::new(service),
        }
    }

    /// The service for `path`, if it is a reflection path.
    pub(crate) fn route(&self, path: &str) -> Option<&HttpService> {
        (path.starts_with(V1_PREFIX) || path.starts_with(V1ALPHA_PREFIX)).then_some(&self.service)
    }
}

/// The answering side: the user's pool, with the native services' pools and [`BUILT_INS`] behind
/// it (a file or symbol both define is the user's).
#[derive(Clone)]
struct Answers {
    pool: DescriptorPool,
    natives: Vec<DescriptorPool>,
}

#[tonic::async_trait]
impl ServerReflection for Answers {
    type ServerReflectionInfoStream = tonic::codegen::BoxStream<ServerReflectionResponse>;

    async fn server_reflection_info(
        &self,
        request: Request<Streaming<ServerReflectionRequest>>,
    ) -> Result<Response<Self::ServerReflectionInfoStream>, Status> {
        let stream = Stream {
            answers: self.clone(),
            requests: request.into_inner(),
            sent: HashSet::new(),
            done: false,
        };
        let replies = futures::stream::unfold(stream, |mut stream| async move {
            let reply = stream.next().await?;
            Some((reply, stream))
        });
        Ok(Response::new(replies.boxed()))
    }
}

/// One reflection stream: what it has sent so far.
struct Stream {
    answers: Answers,
    requests: Streaming<ServerReflectionRequest>,
    /// Names of the files sent on this stream.
    sent: HashSet<String>,
    done: bool,
}

impl Stream {
    async fn next(&mut self) -> Option<Result<ServerReflectionResponse, Status>> {
        if self.done {
            return None;
        }
        // A client that goes away (or breaks the stream) has nobody left to answer.
        let request = self.requests.message().await.ok()??;
        let Some(question) = &request.message_request else {
            self.done = true;
            return Some(Err(Status::invalid_argument(
                "invalid MessageRequest: none of its fields is set",
            )));
        };
        // The reply's size for files of these sizes: the reply without them, plus the
        // `FileDescriptorResponse` (field 4) holding them as `bytes` (field 1).
        let bare = ServerReflectionResponse {
            valid_host: request.host.clone(),
            original_request: Some(request.clone()),
            message_response: None,
        }
        .encoded_len();
        let answer_len = move |sizes: &[usize]| {
            let files: usize = sizes
                .iter()
                .map(|&len| 1 + encoded_len_varint(len as u64) + len)
                .sum();
            bare + 1 + encoded_len_varint(files as u64) + files
        };
        // Encoding a large file and its imports takes milliseconds: off the threads serving calls.
        let answers = self.answers.clone();
        let question = question.clone();
        let mut sent = std::mem::take(&mut self.sent);
        let (answer, sent) = tokio::task::spawn_blocking(move || {
            let answer = answers.answer(&question, &mut sent, answer_len);
            (answer, sent)
        })
        .await
        .unwrap_or_else(|e| {
            // A panic while answering: this question fails, and files sent before may be sent again.
            let status = Status::internal(format!("reflection failed on this question: {e}"));
            (Err(status), HashSet::new())
        });
        self.sent = sent;
        let message_response = answer.unwrap_or_else(|status| {
            MessageResponse::ErrorResponse(ErrorResponse {
                error_code: status.code() as i32,
                error_message: status.message().to_string(),
            })
        });
        let reply = ServerReflectionResponse {
            valid_host: request.host.clone(),
            original_request: Some(request),
            message_response: Some(message_response),
        };
        if let (true, Some(MessageResponse::FileDescriptorResponse(files))) =
            (cfg!(debug_assertions), &reply.message_response)
        {
            let sizes: Vec<usize> = files.file_descriptor_proto.iter().map(Vec::len).collect();
            debug_assert_eq!(answer_len(&sizes), reply.encoded_len());
        }
        Some(Ok(reply))
    }
}

impl Answers {
    /// The answer to `question`, or the error the stream reports for it. `answer_len` gives the
    /// encoded size of the whole reply for files of the sizes given.
    fn answer(
        &self,
        question: &MessageRequest,
        sent: &mut HashSet<String>,
        answer_len: impl Fn(&[usize]) -> usize,
    ) -> Result<MessageResponse, Status> {
        let files = |root: FileDescriptor, sent: &mut HashSet<String>| {
            with_imports(&root, sent, &answer_len).map(|files| {
                MessageResponse::FileDescriptorResponse(FileDescriptorResponse {
                    file_descriptor_proto: files,
                })
            })
        };
        match question {
            MessageRequest::ListServices(_) => {
                // Sorted, as grpc-go lists them; a service both pools define, once.
                let names: BTreeSet<String> = self
                    .pools()
                    .flat_map(|pool| pool.services())
                    .map(|service| service.full_name().to_string())
                    .collect();
                Ok(MessageResponse::ListServicesResponse(ListServiceResponse {
                    service: names
                        .into_iter()
                        .map(|name| ServiceResponse { name })
                        .collect(),
                }))
            }
            MessageRequest::FileByFilename(name) => {
                let file = self
                    .pools()
                    .find_map(|pool| pool.get_file_by_name(name))
                    .ok_or_else(|| Status::not_found(format!("file not found: {name}")))?;
                files(file, sent)
            }
            MessageRequest::FileContainingSymbol(symbol) => {
                let file = self
                    .pools()
                    .find_map(|pool| file_containing_symbol(pool, symbol))
                    .ok_or_else(|| Status::not_found(format!("symbol not found: {symbol}")))?;
                files(file, sent)
            }
            MessageRequest::FileContainingExtension(request) => {
                let message = self.message(&request.containing_type)?;
                let number = request.extension_number;
                let extension = u32::try_from(number)
                    .ok()
                    .and_then(|n| message.extensions().find(|e| e.number() == n))
                    .ok_or_else(|| {
                        Status::not_found(format!(
                            "extension not found: {} has no extension numbered {number}",
                            request.containing_type
                        ))
                    })?;
                files(extension.parent_file(), sent)
            }
            MessageRequest::AllExtensionNumbersOfType(name) => {
                let message = self.message(name)?;
                let mut numbers: Vec<i32> =
                    message.extensions().map(|e| e.number() as i32).collect();
                numbers.sort_unstable();
                numbers.dedup();
                Ok(MessageResponse::AllExtensionNumbersResponse(
                    ExtensionNumberResponse {
                        base_type_name: name.clone(),
                        extension_number: numbers,
                    },
                ))
            }
        }
    }

    /// The user's pool, the native services' pools, then the built-in services' files.
    fn pools(&self) -> impl Iterator<Item = &DescriptorPool> {
        std::iter::once(&self.pool)
            .chain(&self.natives)
            .chain(std::iter::once(&*BUILT_INS))
    }

    fn message(&self, name: &str) -> Result<prost_reflect::MessageDescriptor, Status> {
        self.pools()
            .find_map(|pool| pool.get_message_by_name(name))
            .ok_or_else(|| Status::not_found(format!("message type not found: {name}")))
    }
}

/// The file that declares `name`, found as grpc-go's `FindDescriptorByName` finds it.
fn file_containing_symbol(pool: &DescriptorPool, name: &str) -> Option<FileDescriptor> {
    if let Some(message) = pool.get_message_by_name(name) {
        return Some(message.parent_file());
    }
    if let Some(enum_) = pool.get_enum_by_name(name) {
        return Some(enum_.parent_file());
    }
    if let Some(service) = pool.get_service_by_name(name) {
        return Some(service.parent_file());
    }
    if let Some(extension) = pool.get_extension_by_name(name) {
        return Some(extension.parent_file());
    }
    // A member: its parent is a message, a service, an enum, or (enum values) a package.
    let (parent, leaf) = name.rsplit_once('.').unwrap_or(("", name));
    if let Some(message) = pool.get_message_by_name(parent) {
        let member = message.get_field_by_name(leaf).is_some()
            || message.oneofs().any(|o| o.name() == leaf)
            || message
                .child_enums()
                .any(|e| e.get_value_by_name(leaf).is_some());
        return member.then(|| message.parent_file());
    }
    if let Some(service) = pool.get_service_by_name(parent) {
        return service
            .methods()
            .any(|m| m.name() == leaf)
            .then(|| service.parent_file());
    }
    if let Some(enum_) = pool.get_enum_by_name(parent) {
        return enum_.get_value_by_name(leaf).map(|_| enum_.parent_file());
    }
    // A top-level enum's value, scoped in the package.
    pool.files()
        .filter(|file| file.package_name() == parent)
        .find(|file| file.enums().any(|e| e.get_value_by_name(leaf).is_some()))
}

/// `root` and its transitive imports not yet in `sent` (breadth first, `root` first and always),
/// encoded, and marked sent. The whole must fit [`ANSWER_LIMIT`] (measured by `answer_len`): see
/// the module doc for what gives way when it does not.
fn with_imports(
    root: &FileDescriptor,
    sent: &mut HashSet<String>,
    answer_len: impl Fn(&[usize]) -> usize,
) -> Result<Vec<Vec<u8>>, Status> {
    // Imports of files already sent are walked too: such a file may have been sent without some
    // of its imports (see above).
    let mut order = vec![root.clone()];
    let mut seen: HashSet<String> = HashSet::from([root.name().to_string()]);
    let mut next = 0;
    while next < order.len() {
        let imports: Vec<FileDescriptor> = order[next].dependencies().collect();
        for import in imports {
            if seen.insert(import.name().to_string()) {
                order.push(import);
            }
        }
        next += 1;
    }
    let chosen: Vec<&FileDescriptor> = std::iter::once(&order[0])
        .chain(order[1..].iter().filter(|f| !sent.contains(f.name())))
        .collect();

    let mut files: Vec<Vec<u8>> = chosen.iter().map(|f| f.encode_to_vec()).collect();
    let sizes = |files: &[Vec<u8>]| files.iter().map(Vec::len).collect::<Vec<_>>();
    if answer_len(&sizes(&files)) > ANSWER_LIMIT {
        files = files.iter().map(|f| without_source_info(f)).collect();
    }
    let sizes = sizes(&files);
    if answer_len(&sizes[..1]) > ANSWER_LIMIT {
        return Err(Status::resource_exhausted(format!(
            "{} is {} bytes even without source_code_info, over the {ANSWER_LIMIT} bytes a gRPC \
             client receives by default",
            root.name(),
            sizes[0]
        )));
    }
    // As many imports as fit (all of them, but for a very large tree); the client asks for the
    // others by name.
    let mut kept = vec![true; files.len()];
    let mut fitting = vec![sizes[0]];
    for (i, &size) in sizes.iter().enumerate().skip(1) {
        fitting.push(size);
        if answer_len(&fitting) > ANSWER_LIMIT {
            fitting.pop();
            kept[i] = false;
        }
    }
    let mut kept = kept.into_iter();
    let files: Vec<Vec<u8>> = files
        .into_iter()
        .zip(&chosen)
        .filter(|_| kept.next().unwrap_or(false))
        .map(|(bytes, file)| {
            sent.insert(file.name().to_string());
            bytes
        })
        .collect();
    Ok(files)
}

/// An encoded `FileDescriptorProto` without its `source_code_info`, every other field (custom
/// options among them) left byte for byte.
fn without_source_info(file: &[u8]) -> Vec<u8> {
    use prost::encoding::{decode_key, decode_varint, WireType};
    let mut out = Vec::with_capacity(file.len());
    let mut rest = file;
    while !rest.is_empty() {
        let start = rest;
        let Ok((tag, wire_type)) = decode_key(&mut rest) else {
            return file.to_vec();
        };
        let skipped = match wire_type {
            WireType::Varint => decode_varint(&mut rest).is_ok(),
            WireType::LengthDelimited => match decode_varint(&mut rest) {
                Ok(len) if len as usize <= rest.len() => {
                    rest = &rest[len as usize..];
                    true
                }
                _ => false,
            },
            WireType::ThirtyTwoBit if rest.len() >= 4 => {
                rest = &rest[4..];
                true
            }
            WireType::SixtyFourBit if rest.len() >= 8 => {
                rest = &rest[8..];
                true
            }
            _ => false,
        };
        // Encoded by prost-reflect, so well formed; anything else is passed on whole.
        if !skipped {
            return file.to_vec();
        }
        if tag != SOURCE_CODE_INFO {
            out.extend_from_slice(&start[..start.len() - rest.len()]);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn built_in_files_are_the_health_and_reflection_protos() {
        let names: Vec<String> = BUILT_INS.files().map(|f| f.name().to_string()).collect();
        assert_eq!(
            names,
            [
                "grpc/health/v1/health.proto",
                "grpc/reflection/v1/reflection.proto",
                "grpc/reflection/v1alpha/reflection.proto"
            ]
        );
        let services: BTreeSet<String> = BUILT_INS
            .services()
            .map(|s| s.full_name().to_string())
            .collect();
        for service in [
            "grpc.health.v1.Health",
            "grpc.reflection.v1.ServerReflection",
            "grpc.reflection.v1alpha.ServerReflection",
        ] {
            assert!(services.contains(service), "{services:?}");
        }
        // grpc-proto's current health service, as `builtin::health` answers it.
        let health = BUILT_INS
            .get_service_by_name("grpc.health.v1.Health")
            .unwrap();
        let methods: Vec<String> = health.methods().map(|m| m.name().to_string()).collect();
        assert_eq!(methods, ["Check", "List", "Watch"]);
    }

    #[test]
    fn dropping_source_info_keeps_every_other_field_byte_for_byte() {
        let mut file = prost_types::FileDescriptorProto {
            name: Some("a.proto".into()),
            package: Some("a".into()),
            source_code_info: Some(prost_types::SourceCodeInfo {
                location: vec![prost_types::source_code_info::Location {
                    leading_comments: Some("x".repeat(1000)),
                    ..Default::default()
                }],
            }),
            ..Default::default()
        };
        let with = file.encode_to_vec();
        // An unknown field (as a custom option would be) after it survives too.
        let mut with_unknown = with.clone();
        with_unknown.extend_from_slice(&[0xf8, 0x01, 0x07]); // field 31, varint 7
        file.source_code_info = None;
        let mut expected = file.encode_to_vec();
        expected.extend_from_slice(&[0xf8, 0x01, 0x07]);
        assert_eq!(without_source_info(&with_unknown), expected);
    }
}
