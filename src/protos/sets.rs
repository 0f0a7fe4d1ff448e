//! Compiled descriptor sets (`FileDescriptorSet`, as `buf build -o` or `protoc -o --include_imports`
//! write them): the standard way to bring in a schema protox cannot parse. Their files join the
//! pool next to the compiled `.proto` files, and each side may import the other.
//!
//! A file name given by two sets must be the same file (source info aside), or the load fails naming
//! both; sets made with `--include_imports` all carry the well-known types, so copies are common. A
//! `.proto` file of the folder wins over a set's file of the same name (a set built from the very
//! folder it sits in is common too), with a warning.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use bytes::{Buf, Bytes};
use prost::encoding::{decode_key, decode_varint, skip_field, DecodeContext, WireType};
use prost::Message as _;
use protox::file::{File, FileResolver};

use crate::diagnostic::{Diagnostic, Diagnostics};

/// The extensions of descriptor-set files picked up in the protos folder.
pub(crate) const EXTENSIONS: &[&str] = &["binpb", "pb"];

/// Whether `path` names a descriptor set by its extension.
pub(crate) fn is_descriptor_set(path: &Path) -> bool {
    path.extension()
        .is_some_and(|e| EXTENSIONS.iter().any(|x| e == *x))
}

/// One file of a set: where it came from and its encoded `FileDescriptorProto` (kept encoded so
/// custom options and edition features survive).
#[derive(Clone, Debug)]
struct SetFile {
    set: PathBuf,
    encoded: Bytes,
}

/// The files of every set, by name.
#[derive(Clone, Debug, Default)]
pub(crate) struct Sets {
    files: BTreeMap<String, SetFile>,
    /// Names in the order the sets list them (dependencies first, as both tools write them).
    order: Vec<String>,
}

impl Sets {
    /// Reads `paths` in order; every problem is reported, each naming its set.
    pub(crate) fn read(paths: &[PathBuf], problems: &mut Diagnostics) -> Sets {
        let mut sets = Sets::default();
        for path in paths {
            let bytes = match std::fs::read(path) {
                Ok(bytes) => Bytes::from(bytes),
                Err(e) => {
                    problems.push(Diagnostic::file(
                        path,
                        format!("cannot read the descriptor set: {e}"),
                    ));
                    continue;
                }
            };
            match split(bytes) {
                Ok(files) => {
                    for (name, encoded) in files {
                        sets.add(path, name, encoded, problems);
                    }
                }
                Err(e) => problems.push(Diagnostic::file(
                    path,
                    format!(
                        "not a FileDescriptorSet (what `buf build -o FILE.binpb` or `protoc \
                         --include_imports -o FILE.binpb` writes): {e}"
                    ),
                )),
            }
        }
        sets
    }

    fn add(&mut self, set: &Path, name: String, encoded: Bytes, problems: &mut Diagnostics) {
        match self.files.get(&name) {
            None => {
                self.order.push(name.clone());
                self.files.insert(
                    name,
                    SetFile {
                        set: set.to_path_buf(),
                        encoded,
                    },
                );
            }
            Some(first) if same_file(&first.encoded, &encoded) => {}
            Some(first) => problems.push(Diagnostic::file(
                set,
                format!(
                    "{name} is also in {} with different contents: a file name may stand for one \
                     file only (rebuild the sets from the same sources, or keep one of them)",
                    first.set.display()
                ),
            )),
        }
    }

    /// File names, in set order.
    pub(crate) fn names(&self) -> impl Iterator<Item = &str> {
        self.order.iter().map(String::as_str)
    }

    /// The set that gives `name`, if one does.
    pub(crate) fn set_of(&self, name: &str) -> Option<&Path> {
        self.files.get(name).map(|f| f.set.as_path())
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.files.is_empty()
    }

    /// A resolver serving the sets' files to protox.
    pub(crate) fn resolver(&self) -> SetResolver {
        SetResolver(self.files.clone())
    }
}

/// The sets' files as a protox resolver.
pub(crate) struct SetResolver(BTreeMap<String, SetFile>);

impl SetResolver {
    /// Whether a set has a file of that name.
    pub(crate) fn has(&self, name: &str) -> bool {
        self.0.contains_key(name)
    }
}

impl FileResolver for SetResolver {
    fn open_file(&self, name: &str) -> Result<File, protox::Error> {
        match self.0.get(name) {
            // Checked when the set was read.
            Some(file) => {
                File::decode_file_descriptor_proto(file.encoded.clone()).map_err(protox::Error::new)
            }
            None => Err(protox::Error::file_not_found(name)),
        }
    }
}

/// The files of an encoded `FileDescriptorSet`, each named and still encoded.
fn split(mut buf: Bytes) -> Result<Vec<(String, Bytes)>, String> {
    const FILE: u32 = 1;
    let mut files = Vec::new();
    while buf.has_remaining() {
        let (tag, wire_type) = decode_key(&mut buf).map_err(|e| e.to_string())?;
        if tag == FILE && wire_type == WireType::LengthDelimited {
            let len = decode_varint(&mut buf).map_err(|e| e.to_string())?;
            if len > buf.remaining() as u64 {
                return Err("truncated".into());
            }
            let encoded = buf.split_to(len as usize);
            let file = prost_types::FileDescriptorProto::decode(encoded.clone())
                .map_err(|e| format!("file #{}: {e}", files.len() + 1))?;
            match file.name {
                Some(name) if !name.is_empty() => files.push((name, encoded)),
                _ => return Err(format!("file #{} has no name", files.len() + 1)),
            }
        } else {
            skip_field(wire_type, tag, &mut buf, DecodeContext::default())
                .map_err(|e| e.to_string())?;
        }
    }
    Ok(files)
}

/// The same file in two sets: the same bytes, or the same descriptor once source info (which one
/// tool writes and another not) is set aside.
fn same_file(a: &Bytes, b: &Bytes) -> bool {
    if a == b {
        return true;
    }
    let strip = |bytes: &Bytes| {
        let mut buf = bytes.clone();
        let mut out = Vec::with_capacity(bytes.len());
        const SOURCE_CODE_INFO: u32 = 9;
        while buf.has_remaining() {
            let start = bytes.len() - buf.remaining();
            let Ok((tag, wire_type)) = decode_key(&mut buf) else {
                return None;
            };
            skip_field(wire_type, tag, &mut buf, DecodeContext::default()).ok()?;
            if tag != SOURCE_CODE_INFO {
                out.extend_from_slice(&bytes[start..bytes.len() - buf.remaining()]);
            }
        }
        Some(out)
    };
    matches!((strip(a), strip(b)), (Some(a), Some(b)) if a == b)
}
