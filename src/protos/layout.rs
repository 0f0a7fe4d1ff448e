//! Which file an import means, and the one name each file is known by.
//!
//! protoc looks an import up in its roots in order (here: the protos folder, then each `-I`). Real
//! trees rely on more than that, and protoc's own answer — two names for one file, so everything in
//! it "already defined" — is never what the user meant:
//!
//! * **One file, one name.** When roots overlap (`-I protos/third_party`, or etcd's
//!   `-I api/etcdserverpb` inside the protos folder), a file is reachable under several names. It
//!   is known by the shortest one (fewest path segments) that import lookup finds it under; an
//!   import spelling another of its names gets a *forwarding file*, a file of that name holding
//!   only `import public "<its name>";`, as protobuf itself does for a moved file. Names depend on
//!   the folders alone, never on which file the compiler happens to reach first.
//! * **An import no root has** is looked for, in order: next to the importing file (etcd's
//!   `raft_internal.proto` imports `"rpc.proto"`, its neighbour); then as the end of the path of a
//!   file in the protos folder — a vendored root such as `third_party/` in
//!   `third_party/google/api/annotations.proto` for `"google/api/annotations.proto"` (the shortest
//!   such path; excluded files are not considered) — and only then among the `google/api`,
//!   `google/rpc` and well-known types bundled in the binary, so the user's copy wins. Either way
//!   the file keeps its own name and the import's name forwards to it.
//!
//! Excluded files (`--exclude`, `.protodropignore`) are not compiled for themselves, but an import
//! that names one still finds it.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};

use protox::file::{File, FileResolver, GoogleFileResolver};

use super::ahead::ParseAhead;
use super::nesting::open_checked;
use super::sets::SetResolver;
use super::BundledResolver;
use crate::diagnostic::Diagnostic;

/// The roots, in lookup order: the protos folder first, then the `-I` roots.
#[derive(Debug)]
pub(super) struct Layout {
    roots: Vec<PathBuf>,
    /// The roots made absolute with symlinks resolved, to tell when two of them hold one file;
    /// `None` for a root that is not there.
    resolved: Vec<Option<PathBuf>>,
    /// Whether some root lies inside another (or is the same): only then can a file have two names.
    overlapping: bool,
}

impl Layout {
    pub(super) fn new(protos: &Path, include_roots: &[PathBuf]) -> Self {
        let roots: Vec<PathBuf> = std::iter::once(protos.to_path_buf())
            .chain(include_roots.iter().cloned())
            .collect();
        let resolved: Vec<Option<PathBuf>> = roots
            .iter()
            .map(|r| std::fs::canonicalize(r).ok())
            .collect();
        let present: Vec<&PathBuf> = resolved.iter().flatten().collect();
        let overlapping = present.iter().enumerate().any(|(i, a)| {
            present
                .iter()
                .enumerate()
                .any(|(j, b)| i != j && b.starts_with(a))
        });
        Self {
            roots,
            resolved,
            overlapping,
        }
    }

    /// The first root holding `name`, and the file's path: protoc's import lookup.
    pub(super) fn lookup(&self, name: &str) -> Option<(usize, PathBuf)> {
        if !is_plain_name(name) {
            return None;
        }
        self.roots
            .iter()
            .enumerate()
            .map(|(i, root)| (i, root.join(name)))
            .find(|(_, path)| path.is_file())
    }

    /// The name the file that is `name` under root `root` is known by (see the module's doc).
    pub(super) fn known_name(&self, root: usize, name: &str) -> String {
        if !self.overlapping {
            return name.to_string();
        }
        let Some(file) = self.resolved[root].as_ref().map(|r| r.join(name)) else {
            return name.to_string();
        };
        let mut best = (segments(name), name.len(), root, name.to_string());
        for (j, resolved) in self.resolved.iter().enumerate() {
            let Some(rel) = resolved.as_ref().and_then(|r| file.strip_prefix(r).ok()) else {
                continue;
            };
            let Some(candidate) = slash_name(rel) else {
                continue;
            };
            let key = (segments(&candidate), candidate.len(), j);
            if key >= (best.0, best.1, best.2) {
                continue;
            }
            // Only a name that import lookup resolves to this very file.
            let found = self.lookup(&candidate).and_then(|(k, _)| {
                self.resolved[k]
                    .as_ref()
                    .map(|r| r.join(&candidate) == file)
            });
            if found == Some(true) {
                best = (key.0, key.1, key.2, candidate);
            }
        }
        best.3
    }
}

fn segments(name: &str) -> usize {
    name.split('/').count()
}

/// A path relative to a root as protox names files: `/`-separated, plain segments only.
pub(super) fn slash_name(rel: &Path) -> Option<String> {
    let mut parts = Vec::new();
    for c in rel.components() {
        match c {
            std::path::Component::Normal(part) => parts.push(part.to_str()?),
            _ => return None,
        }
    }
    (!parts.is_empty()).then(|| parts.join("/"))
}

/// An import name protoc would look up: relative, no `.` or `..` segment, no empty segment.
fn is_plain_name(name: &str) -> bool {
    !name.is_empty()
        && !name.starts_with('/')
        && name
            .split('/')
            .all(|s| !s.is_empty() && s != "." && s != "..")
}

/// What the compiler opens files through: the folder's files (parsed ahead), the roots, the
/// fallbacks of the module's doc, then the bundled files.
pub(super) struct Tree {
    layout: Arc<Layout>,
    ahead: ParseAhead,
    /// The protos folder's files that are not excluded, relative to it: where vendored roots are
    /// looked for.
    local: Vec<String>,
    /// The descriptor sets' files: after the protos folder's own, before the `-I` roots.
    sets: SetResolver,
    bundled: BundledResolver,
    google: GoogleFileResolver,
    state: Arc<Mutex<TreeState>>,
    /// Problems found while resolving (drained by the load).
    pub(super) problems: Arc<Mutex<Vec<Diagnostic>>>,
    /// The files read from the roots and importers' folders (not the folder's own, parsed ahead):
    /// what the watcher watches outside the protos folder.
    pub(super) reads: Arc<Mutex<std::collections::BTreeSet<PathBuf>>>,
}

#[derive(Default)]
struct TreeState {
    /// For each name imported so far, the folder of the file that imported it last: the compiler
    /// asks for a file's imports right after it gets the file, so the last importer is the one
    /// asking.
    importer_dirs: HashMap<String, Arc<Path>>,
    /// Names resolved next to their importer: the file, and the importer's folder.
    neighbours: HashMap<String, (PathBuf, Arc<Path>)>,
    /// How each name asked for was resolved.
    origins: HashMap<String, Origin>,
    /// Files read from the roots (not the protos folder's own), as they were before being read.
    stamps: HashMap<PathBuf, super::stamp::Stamp>,
}

impl Tree {
    pub(super) fn new(
        layout: Arc<Layout>,
        ahead: ParseAhead,
        local: Vec<String>,
        sets: SetResolver,
    ) -> Self {
        Self {
            layout,
            ahead,
            local,
            sets,
            bundled: BundledResolver,
            google: GoogleFileResolver::new(),
            state: Arc::default(),
            problems: Arc::default(),
            reads: Arc::default(),
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, TreeState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Notes the folder `file` lives in as where its imports come from (see `importer_dirs`), and
    /// reports an import that resolves next to an importer under a name already taken by another.
    fn note_imports(&self, file: &File, path: &Path) {
        let Some(dir) = path.parent() else {
            return;
        };
        let dir: Arc<Path> = Arc::from(dir);
        let mut state = self.state();
        for import in &file.file_descriptor_proto().dependency {
            if let Some((taken, first_dir)) = state.neighbours.get(import) {
                let here = dir.join(import);
                if *first_dir != dir && here.is_file() && self.layout.lookup(import).is_none() {
                    let instead = self
                        .root_name(&here)
                        .map(|(root, rel)| self.layout.known_name(root, &rel))
                        .map_or(String::new(), |name| format!("; import it as \"{name}\""));
                    self.problems
                        .lock()
                        .unwrap_or_else(PoisonError::into_inner)
                        .push(Diagnostic::file(
                            path,
                            format!(
                                "imports \"{import}\", meaning its neighbour {}, but that name \
                                 already means {} (the neighbour of another importer): one name is \
                                 one file in a load{instead}",
                                here.display(),
                                taken.display()
                            ),
                        ));
                }
            }
            state.importer_dirs.insert(import.clone(), dir.clone());
        }
    }

    /// `name` next to the file importing it, as (root, name under that root, path).
    fn neighbour(&self, name: &str) -> Option<(usize, String, PathBuf)> {
        if !is_plain_name(name) {
            return None;
        }
        let dir = self.state().importer_dirs.get(name)?.clone();
        let path = dir.join(name);
        if !path.is_file() {
            return None;
        }
        let (root, rel) = self.root_name(&path)?;
        self.state()
            .neighbours
            .entry(name.to_string())
            .or_insert_with(|| (path.clone(), dir));
        Some((root, rel, path))
    }

    /// The first root `path` is under, and its name there.
    fn root_name(&self, path: &Path) -> Option<(usize, String)> {
        self.layout.roots.iter().enumerate().find_map(|(i, r)| {
            path.strip_prefix(r)
                .ok()
                .and_then(slash_name)
                .map(|rel| (i, rel))
        })
    }

    /// A file of the protos folder whose path ends with `/name` (a vendored root), the shortest.
    fn vendored(&self, name: &str) -> Option<&str> {
        let tail = format!("/{name}");
        self.local
            .iter()
            .filter(|rel| rel.ends_with(&tail))
            .min_by_key(|rel| (segments(rel), rel.len(), rel.as_str()))
            .map(String::as_str)
    }

    /// `path`, parsed, under `name`, its imports noted.
    fn parsed(&self, name: &str, path: &Path) -> Result<File, protox::Error> {
        // Noted before reading: a file that fails is watched too, so its fix is reloaded.
        self.reads
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(path.to_path_buf());
        // Before reading: a later edit then shows as a change to the next load.
        if let Some(stamp) = super::stamp::Stamp::of(path) {
            self.state().stamps.insert(path.to_path_buf(), stamp);
        }
        let file = open_checked(name, path)?;
        self.note_imports(&file, path);
        Ok(file)
    }
}

/// How a [`Tree`] resolved the names the compiler asked for.
pub(super) struct Record(Arc<Mutex<TreeState>>);

impl Record {
    /// How each name was resolved, and the stamps of the files read from the roots (not the
    /// protos folder's own) as they were before being read.
    pub(super) fn take(
        &self,
    ) -> (
        HashMap<String, Origin>,
        HashMap<PathBuf, super::stamp::Stamp>,
    ) {
        let mut state = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        (
            std::mem::take(&mut state.origins),
            std::mem::take(&mut state.stamps),
        )
    }
}

/// A file named `alias` that only forwards to `name` (`import public`).
fn forward(alias: &str, name: &str) -> Result<File, protox::Error> {
    let quoted = name.replace('\\', "\\\\").replace('"', "\\\"");
    tracing::debug!(alias, name, "import forwarded");
    File::from_source(
        alias,
        &format!("syntax = \"proto3\";\nimport public \"{quoted}\";\n"),
    )
}

/// Where a name's file comes from, as [`Tree`] decided it: what an incremental load
/// (`super::incremental`) checks is decided the same way again before it keeps a compiled file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) enum Origin {
    /// One of the protos folder's own files.
    Folder(PathBuf),
    /// A descriptor set's.
    Set,
    /// Found in a root (protoc's lookup) under its known name.
    Root(PathBuf),
    /// Found in a root under another name than it is known by: a forwarding file.
    Forward(String),
    /// Next to its importer: depends on which file imported it last, so it is never replayed.
    Neighbour(PathBuf),
    /// A vendored root in the protos folder: a forwarding file.
    Vendored(String),
    /// Bundled in the binary, or protox's well-known types.
    Bundled,
}

impl Origin {
    /// The file on disk that the compiled file is made from, if one is.
    pub(super) fn path(&self) -> Option<&Path> {
        match self {
            Origin::Folder(p) | Origin::Root(p) | Origin::Neighbour(p) => Some(p),
            _ => None,
        }
    }
}

impl Tree {
    /// Where `name` comes from, without the neighbour rule when `neighbours` is false (it then
    /// answers `None` where the neighbour rule would have been tried and has a file to offer to
    /// some importer in `importer_dirs`).
    pub(super) fn origin(
        &self,
        name: &str,
        neighbours: bool,
        importer_dirs: &[&Path],
    ) -> Option<Origin> {
        // The folder's own files, under the names the load gave them.
        if let Some(path) = self.ahead.path_of(name) {
            return Some(Origin::Folder(path.to_path_buf()));
        }
        let found = self.layout.lookup(name);
        if found.as_ref().is_none_or(|(root, _)| *root > 0) && self.sets.has(name) {
            return Some(Origin::Set);
        }
        if let Some((root, path)) = found {
            let known = self.layout.known_name(root, name);
            if known != name {
                return Some(Origin::Forward(known));
            }
            return Some(Origin::Root(path));
        }
        if neighbours {
            if let Some((root, rel, path)) = self.neighbour(name) {
                let known = self.layout.known_name(root, &rel);
                if known != name {
                    return Some(Origin::Forward(known));
                }
                return Some(Origin::Neighbour(path));
            }
        } else if is_plain_name(name) && importer_dirs.iter().any(|d| d.join(name).is_file()) {
            return None;
        }
        if let Some(rel) = self.vendored(name) {
            return Some(Origin::Vendored(self.layout.known_name(0, rel)));
        }
        Some(Origin::Bundled)
    }

    /// What the compiler resolved through this tree, readable once the compiler owns it.
    pub(super) fn record(&self) -> Record {
        Record(self.state.clone())
    }
}

impl FileResolver for Tree {
    fn open_file(&self, name: &str) -> Result<File, protox::Error> {
        let origin = self.origin(name, true, &[]).unwrap_or(Origin::Bundled);
        self.state()
            .origins
            .insert(name.to_string(), origin.clone());
        match origin {
            Origin::Folder(path) => {
                let file = self.ahead.open_file(name)?;
                self.note_imports(&file, &path);
                Ok(file)
            }
            Origin::Set => self.sets.open_file(name),
            Origin::Root(path) | Origin::Neighbour(path) => self.parsed(name, &path),
            Origin::Forward(known) | Origin::Vendored(known) => forward(name, &known),
            Origin::Bundled => match self.bundled.open_file(name) {
                Err(e) if e.is_file_not_found() => self.google.open_file(name),
                other => other,
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tree(files: &[&str]) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        for f in files {
            let p = dir.path().join(f);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(p, "").unwrap();
        }
        dir
    }

    #[test]
    fn a_file_is_known_by_its_shortest_name() {
        let dir = tree(&["p/api/x/rpc.proto", "p/api/x/other.proto", "p/rpc.proto"]);
        let p = dir.path().join("p");
        let layout = Layout::new(&p, &[dir.path().to_path_buf(), p.join("api/x")]);
        assert!(layout.overlapping);
        assert_eq!(layout.known_name(0, "api/x/other.proto"), "other.proto");
        assert_eq!(layout.known_name(1, "p/api/x/other.proto"), "other.proto");
        // `rpc.proto` means p/rpc.proto (the protos folder comes first): not a name of api/x's.
        assert_eq!(layout.known_name(0, "api/x/rpc.proto"), "api/x/rpc.proto");
        assert_eq!(layout.known_name(0, "rpc.proto"), "rpc.proto");
        let apart = Layout::new(&p, &[dir.path().join("elsewhere")]);
        assert!(!apart.overlapping);
        assert_eq!(
            apart.known_name(0, "api/x/other.proto"),
            "api/x/other.proto"
        );
    }

    #[test]
    fn only_plain_names_are_looked_up() {
        let dir = tree(&["p/a.proto", "b.proto"]);
        let layout = Layout::new(&dir.path().join("p"), &[]);
        assert!(layout.lookup("a.proto").is_some());
        assert!(layout.lookup("../b.proto").is_none());
        assert!(layout.lookup("./a.proto").is_none());
    }
}
