//! protodrop patch: edition features.
//!
//! In an editions file (`syntax = "editions"`) a field's presence, its repeated encoding, its
//! message encoding and whether it is required come from `features` options resolved from the
//! edition's defaults, then the file, each enclosing message (and oneof), then the field itself,
//! as protoc defines them. prost-reflect 0.16 knows only proto2 and proto3; this pass sets the
//! same `supports_presence`, `is_packed`, kind (`Group` for DELIMITED) and cardinality the rest of
//! the crate already acts on, once options are resolved (features are options). The descriptor
//! itself is left as it was given, so reflection serves it unchanged.
//!
//! The same pass settles `[packed = …]` in proto2 and proto3 files: `resolve.rs` reads it before
//! options are resolved, so a file compiled from source (protox hands options over uninterpreted)
//! had `[packed = true]` ignored in proto2 and `[packed = false]` in proto3.
//!
//! Not resolved (the crate behaves here as it does for every syntax): `enum_type = CLOSED` (unknown
//! values of a closed enum are kept as numbers, not moved to unknown fields) and
//! `utf8_validation = NONE` (strings are always checked). `json_format` only governs name-conflict
//! checks, which are skipped for editions files.

use prost::{
    encoding::{decode_key, skip_field, DecodeContext, WireType},
    Message,
};

use crate::{
    descriptor::{
        error::{DescriptorErrorKind, Label},
        find_enum_proto, find_message_proto, tag,
        types::{DescriptorProto, FieldDescriptorProto, FileDescriptorProto},
        Cardinality, DescriptorPoolInner, KindIndex, Syntax,
    },
    DescriptorError,
};

use super::DescriptorPoolOffsets;

/// `google.protobuf.Edition` numbers.
pub(crate) const EDITION_2023: i32 = 1000;
pub(crate) const EDITION_2024: i32 = 1001;

/// Where `features` (a `FeatureSet`) sits in each options message.
const FILE_FEATURES: u32 = 50;
const MESSAGE_FEATURES: u32 = 12;
const FIELD_FEATURES: u32 = 21;
const ONEOF_FEATURES: u32 = 1;
const ENUM_FEATURES: u32 = 7;

/// The `FeatureSet` fields resolved here, as their enum numbers.
#[derive(Clone, PartialEq, Message)]
struct FeatureSet {
    #[prost(int32, optional, tag = "1")]
    field_presence: Option<i32>,
    #[prost(int32, optional, tag = "2")]
    enum_type: Option<i32>,
    #[prost(int32, optional, tag = "3")]
    repeated_field_encoding: Option<i32>,
    #[prost(int32, optional, tag = "5")]
    message_encoding: Option<i32>,
}

const IMPLICIT: i32 = 2;
const LEGACY_REQUIRED: i32 = 3;
const OPEN: i32 = 1;
const PACKED: i32 = 1;
const DELIMITED: i32 = 2;

#[derive(Clone, Copy)]
struct Features {
    field_presence: i32,
    enum_type: i32,
    repeated_field_encoding: i32,
    message_encoding: i32,
}

impl Features {
    /// Editions 2023 and 2024 share these defaults: EXPLICIT presence, OPEN enums, PACKED repeated
    /// scalars, LENGTH_PREFIXED messages.
    const EDITION_DEFAULTS: Features = Features {
        field_presence: 1,
        enum_type: OPEN,
        repeated_field_encoding: PACKED,
        message_encoding: 1,
    };

    /// Overrides these with the `features` found at `tag` in encoded options, if any.
    fn merge(&mut self, options: Option<&[u8]>, tag: u32) {
        let Some(mut buf) = options else { return };
        let mut set = FeatureSet::default();
        while !buf.is_empty() {
            let Ok((number, wire_type)) = decode_key(&mut buf) else {
                return;
            };
            let read = if number == tag && wire_type == WireType::LengthDelimited {
                prost::encoding::message::merge(
                    wire_type,
                    &mut set,
                    &mut buf,
                    DecodeContext::default(),
                )
            } else {
                skip_field(wire_type, number, &mut buf, DecodeContext::default())
            };
            if read.is_err() {
                return;
            }
        }
        let pick = |value: Option<i32>, into: &mut i32| {
            if let Some(v) = value.filter(|&v| v != 0) {
                *into = v;
            }
        };
        pick(set.field_presence, &mut self.field_presence);
        pick(set.enum_type, &mut self.enum_type);
        pick(
            set.repeated_field_encoding,
            &mut self.repeated_field_encoding,
        );
        pick(set.message_encoding, &mut self.message_encoding);
    }

    /// The features in force at `path` (a field, extension or enum) of `file`.
    fn at(file: &FileDescriptorProto, path: &[i32]) -> Features {
        let mut features = Features::EDITION_DEFAULTS;
        features.merge(options(&file.options), FILE_FEATURES);
        let field = |features: &mut Features, field: Option<&FieldDescriptorProto>| {
            if let Some(field) = field {
                features.merge(options(&field.options), FIELD_FEATURES);
            }
        };
        let mut message: Option<&DescriptorProto> = None;
        for part in path.chunks_exact(2) {
            let i = part[1] as usize;
            match (message, part[0]) {
                (None, tag::file::MESSAGE_TYPE) => {
                    message = file.message_type.get(i);
                    if let Some(m) = message {
                        features.merge(options(&m.options), MESSAGE_FEATURES);
                    }
                }
                (Some(m), tag::message::NESTED_TYPE) => {
                    message = m.nested_type.get(i);
                    if let Some(m) = message {
                        features.merge(options(&m.options), MESSAGE_FEATURES);
                    }
                }
                (None, tag::file::ENUM_TYPE) => {
                    if let Some(e) = file.enum_type.get(i) {
                        features.merge(options(&e.options), ENUM_FEATURES);
                    }
                }
                (Some(m), tag::message::ENUM_TYPE) => {
                    if let Some(e) = m.enum_type.get(i) {
                        features.merge(options(&e.options), ENUM_FEATURES);
                    }
                }
                (None, tag::file::EXTENSION) => field(&mut features, file.extension.get(i)),
                (Some(m), tag::message::EXTENSION) => field(&mut features, m.extension.get(i)),
                (Some(m), tag::message::FIELD) => {
                    let f = m.field.get(i);
                    if let Some(oneof) = f
                        .and_then(|f| f.oneof_index)
                        .and_then(|o| m.oneof_decl.get(o as usize))
                    {
                        features.merge(options(&oneof.options), ONEOF_FEATURES);
                    }
                    field(&mut features, f);
                }
                _ => {}
            }
        }
        features
    }
}

fn options<T>(options: &Option<crate::descriptor::types::Options<T>>) -> Option<&[u8]> {
    options.as_ref().map(|o| &*o.encoded)
}

impl DescriptorPoolInner {
    /// Applies edition features to the fields, extensions and enums of the files added since
    /// `offsets`.
    pub(super) fn resolve_features(
        &mut self,
        offsets: DescriptorPoolOffsets,
    ) -> Result<(), DescriptorError> {
        let is_editions = |pool: &DescriptorPoolInner, file: u32| {
            pool.files[file as usize].syntax == Syntax::Editions
        };
        let mut errors = Vec::new();

        for message in offsets.message as usize..self.messages.len() {
            for field in 0..self.messages[message].fields.len() {
                let inner = &self.messages[message].fields[field];
                if !is_editions(self, inner.id.file) {
                    if let Some(packed) = self.packed_option(
                        inner.id.file,
                        &inner.id.path,
                        inner.cardinality,
                        inner.kind,
                    ) {
                        self.messages[message].fields[field].is_packed = packed;
                    }
                    continue;
                }
                let features =
                    Features::at(&self.files[inner.id.file as usize].raw, &inner.id.path);
                let kind = self.delimited(inner.kind, &features);
                let inner = &mut self.messages[message].fields[field];
                inner.kind = kind;
                if inner.cardinality == Cardinality::Optional
                    && features.field_presence == LEGACY_REQUIRED
                {
                    inner.cardinality = Cardinality::Required;
                }
                inner.supports_presence = inner.cardinality != Cardinality::Repeated
                    && (inner.oneof.is_some()
                        || kind.is_message()
                        || features.field_presence != IMPLICIT);
                inner.is_packed = inner.cardinality == Cardinality::Repeated
                    && kind.is_packable()
                    && features.repeated_field_encoding == PACKED;
            }
        }

        for extension in offsets.extension as usize..self.extensions.len() {
            let inner = &self.extensions[extension];
            if !is_editions(self, inner.id.file) {
                if let Some(packed) =
                    self.packed_option(inner.id.file, &inner.id.path, inner.cardinality, inner.kind)
                {
                    self.extensions[extension].is_packed = packed;
                }
                continue;
            }
            let features = Features::at(&self.files[inner.id.file as usize].raw, &inner.id.path);
            let kind = self.delimited(inner.kind, &features);
            let inner = &mut self.extensions[extension];
            inner.kind = kind;
            if inner.cardinality == Cardinality::Optional
                && features.field_presence == LEGACY_REQUIRED
            {
                inner.cardinality = Cardinality::Required;
            }
            inner.is_packed = inner.cardinality == Cardinality::Repeated
                && kind.is_packable()
                && features.repeated_field_encoding == PACKED;
        }

        // An open enum's first value must be zero (it is the default), as in proto3.
        for enum_ in &self.enums[offsets.enum_ as usize..] {
            let (file, path) = (enum_.id.file, &enum_.id.path);
            if self.files[file as usize].syntax != Syntax::Editions {
                continue;
            }
            let raw = &self.files[file as usize].raw;
            let first = find_enum_proto(raw, path).value.first();
            if Features::at(raw, path).enum_type == OPEN && first.is_some_and(|v| v.number() != 0) {
                let mut at = path.to_vec();
                at.extend([tag::enum_::VALUE, 0, tag::enum_value::NUMBER]);
                errors.push(DescriptorErrorKind::InvalidProto3EnumDefault {
                    found: Label::new(&self.files, "defined here", file, at.into()),
                });
            }
        }

        if errors.is_empty() {
            Ok(())
        } else {
            Err(DescriptorError::new(errors))
        }
    }

    /// Whether a repeated scalar field of a proto2 or proto3 file is packed, by its resolved
    /// `packed` option or its syntax's default; `None` when that cannot matter.
    fn packed_option(
        &self,
        file: u32,
        path: &[i32],
        cardinality: Cardinality,
        kind: KindIndex,
    ) -> Option<bool> {
        if cardinality != Cardinality::Repeated || !kind.is_packable() {
            return None;
        }
        let file = &self.files[file as usize];
        let field = field_proto(&file.raw, path)?;
        Some(
            field
                .options
                .as_ref()
                .and_then(|o| o.value().packed)
                .unwrap_or(file.syntax == Syntax::Proto3),
        )
    }

    /// A message field with DELIMITED encoding is read and written as a group (map entries excepted).
    fn delimited(&self, kind: KindIndex, features: &Features) -> KindIndex {
        match kind {
            KindIndex::Message(message) if features.message_encoding == DELIMITED => {
                let id = &self.messages[message as usize].id;
                let entry = find_message_proto(&self.files[id.file as usize].raw, &id.path);
                let is_map_entry = entry.options.as_ref().is_some_and(|o| o.value().map_entry());
                if is_map_entry {
                    kind
                } else {
                    KindIndex::Group(message)
                }
            }
            kind => kind,
        }
    }
}

/// The field or extension at `path` in `file`.
fn field_proto<'a>(
    file: &'a FileDescriptorProto,
    path: &[i32],
) -> Option<&'a FieldDescriptorProto> {
    let (messages, last) = path.split_last_chunk::<2>()?;
    if messages.is_empty() {
        return (last[0] == tag::file::EXTENSION)
            .then(|| file.extension.get(last[1] as usize))
            .flatten();
    }
    let message = find_message_proto(file, messages);
    match last[0] {
        tag::message::FIELD => message.field.get(last[1] as usize),
        tag::message::EXTENSION => message.extension.get(last[1] as usize),
        _ => None,
    }
}
