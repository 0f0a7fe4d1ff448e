//! protodrop patch: a pool made of some of another pool's files, in a given order, without building
//! them again.
//!
//! A pool only grows by appending files, and building a file (names, resolution, options) is most of
//! the cost of compiling it. To recompile one file of a large tree, a caller keeps every file that
//! neither is it nor imports it: it relocates them into a new pool (`DescriptorPool::with_files`),
//! adds the rest, then relocates once more to put every file where a build from scratch would have
//! put it. Relocating copies the built definitions and renumbers the indices between them, which
//! is what a build from scratch in that order would have numbered them: definitions are numbered
//! per file in the order of the files, and within a file in the same visiting order as before.

use std::collections::HashMap;
use std::sync::Arc;

use crate::descriptor::{
    Definition, DefinitionKind, DescriptorPoolInner, EnumDescriptorInner, ExtensionDescriptorInner,
    FileDescriptorInner, FileIndex, KindIndex, MessageDescriptorInner, NameMap, ServiceDescriptorInner,
};
use crate::DescriptorPool;

const DROPPED: u32 = u32::MAX;

/// The elements of one of the pool's vectors: when the pool is not shared, those from an index on,
/// moved out, else all of them, cloned.
enum Items<'a, T> {
    Owned(usize, Vec<Option<T>>),
    Shared(&'a [T]),
}

impl<T: Clone> Items<'_, T> {
    fn take(&mut self, i: usize) -> T {
        match self {
            Items::Owned(from, items) => items[i - *from].take().expect("each item is taken once"),
            Items::Shared(items) => items[i].clone(),
        }
    }

    /// Room in `into` for the items to come, up to `total`.
    fn reserve(&self, into: &mut Vec<T>, total: usize) {
        into.reserve(total.saturating_sub(into.len()));
    }
}

/// How many items at the front keep their index (`map[i] == i`).
fn in_place(map: &[u32]) -> usize {
    map.iter()
        .enumerate()
        .take_while(|&(i, &new)| new as usize == i)
        .count()
}

/// Old index → new index, for the items whose file is kept, in the new order of files then the
/// old order within a file. Also the old indices in new order. A counting sort by new file: no
/// hashing, one pass over the items each way.
fn renumber(files: &[u32], file_of: impl Iterator<Item = FileIndex> + Clone, count: usize, kept: usize) -> (Vec<u32>, Vec<usize>) {
    // starts[f]: where the items of new file f begin in the new order.
    let mut starts = vec![0usize; kept + 1];
    for file in file_of.clone() {
        let new = files[file as usize];
        if new != DROPPED {
            starts[new as usize + 1] += 1;
        }
    }
    for f in 0..kept {
        starts[f + 1] += starts[f];
    }
    let mut map = vec![DROPPED; count];
    let mut order = vec![0usize; starts[kept]];
    for (i, file) in file_of.enumerate() {
        let new = files[file as usize];
        if new != DROPPED {
            let at = &mut starts[new as usize];
            map[i] = *at as u32;
            order[*at] = i;
            *at += 1;
        }
    }
    (map, order)
}

impl DescriptorPool {
    /// protodrop patch: a pool of the files named `files`, in that order. Each must be a file of
    /// this pool, and come after every file it imports (else `None`). The files' definitions are
    /// copied, not built again (see `build/relocate.rs`), so the result is what adding these files
    /// to an empty pool in this order would have made, provided that adding them raised no error.
    pub fn with_files<S: AsRef<str>>(self, files: &[S]) -> Option<DescriptorPool> {
        let old = &*self.inner;
        // Old file index → new one.
        let mut file_map = vec![DROPPED; old.files.len()];
        for (new, name) in files.iter().enumerate() {
            let &old_index = old.file_names.get(name.as_ref())?;
            if file_map[old_index as usize] != DROPPED {
                return None;
            }
            for &dep in &old.files[old_index as usize].dependencies {
                if file_map[dep as usize] == DROPPED {
                    return None;
                }
            }
            file_map[old_index as usize] = new as u32;
        }
        let (messages_map, messages_order) = renumber(
            &file_map,
            old.messages.iter().map(|m| m.id.file),
            old.messages.len(),
            files.len(),
        );
        let (enums_map, enums_order) =
            renumber(&file_map, old.enums.iter().map(|e| e.id.file), old.enums.len(), files.len());
        let (extensions_map, extensions_order) = renumber(
            &file_map,
            old.extensions.iter().map(|e| e.id.file),
            old.extensions.len(),
            files.len(),
        );
        let (services_map, services_order) = renumber(
            &file_map,
            old.services.iter().map(|s| s.id.file),
            old.services.len(),
            files.len(),
        );
        let kind = |kind: KindIndex| match kind {
            KindIndex::Message(m) => KindIndex::Message(messages_map[m as usize]),
            KindIndex::Group(m) => KindIndex::Group(messages_map[m as usize]),
            KindIndex::Enum(e) => KindIndex::Enum(enums_map[e as usize]),
            other => other,
        };
        let message = |m: u32| {
            if m == u32::MAX {
                m
            } else {
                messages_map[m as usize]
            }
        };

        // When the pool is not shared, the items at the front that keep their index (the files
        // before the first one that moves: putting a pool back in order after a few files were
        // compiled onto its end moves only what follows them) stay where they are, renumbered in
        // place; the others are moved out and back in their new order. A shared pool's items are
        // cloned (cheap: names, paths and lookup tables are shared).
        let mut owned;
        let shared;
        let mut pool;
        let (mut f, mut ms, mut es, mut xs, mut ss, names) = match Arc::try_unwrap(self.inner) {
            Ok(inner) => {
                owned = inner;
                fn tail<T>(items: &mut Vec<T>, keep: usize) -> Items<'static, T> {
                    Items::Owned(keep, items.split_off(keep).into_iter().map(Some).collect())
                }
                let files_kept = in_place(&file_map);
                let files_tail = tail(&mut owned.files, files_kept);
                let messages_tail = tail(&mut owned.messages, in_place(&messages_map));
                let enums_tail = tail(&mut owned.enums, in_place(&enums_map));
                let extensions_tail = tail(&mut owned.extensions, in_place(&extensions_map));
                let services_tail = tail(&mut owned.services, in_place(&services_map));
                pool = DescriptorPoolInner {
                    files: std::mem::take(&mut owned.files),
                    file_names: std::mem::take(&mut owned.file_names),
                    messages: std::mem::take(&mut owned.messages),
                    enums: std::mem::take(&mut owned.enums),
                    extensions: std::mem::take(&mut owned.extensions),
                    services: std::mem::take(&mut owned.services),
                    names: Default::default(),
                };
                // The tail's items go back in their new order, after those kept in place.
                files_tail.reserve(&mut pool.files, files.len());
                messages_tail.reserve(&mut pool.messages, messages_order.len());
                enums_tail.reserve(&mut pool.enums, enums_order.len());
                extensions_tail.reserve(&mut pool.extensions, extensions_order.len());
                services_tail.reserve(&mut pool.services, services_order.len());
                (
                    files_tail,
                    messages_tail,
                    enums_tail,
                    extensions_tail,
                    services_tail,
                    Names::Owned(std::mem::take(&mut owned.names)),
                )
            }
            Err(arc) => {
                shared = arc;
                pool = DescriptorPoolInner {
                    files: Vec::with_capacity(files.len()),
                    file_names: shared.file_names.clone(),
                    messages: Vec::with_capacity(messages_order.len()),
                    enums: Vec::with_capacity(enums_order.len()),
                    extensions: Vec::with_capacity(extensions_order.len()),
                    services: Vec::with_capacity(services_order.len()),
                    names: Default::default(),
                };
                (
                    Items::Shared(&shared.files[..]),
                    Items::Shared(&shared.messages[..]),
                    Items::Shared(&shared.enums[..]),
                    Items::Shared(&shared.extensions[..]),
                    Items::Shared(&shared.services[..]),
                    Names::Shared(&shared.names),
                )
            }
        };
        pool.file_names.retain(|_, index| {
            *index = file_map[*index as usize];
            *index != DROPPED
        });

        let fix_file = |file: &mut FileDescriptorInner| {
            for dep in &mut file.dependencies {
                *dep = file_map[*dep as usize];
            }
            // Empty once a file is built (`build_files_deduped`).
            debug_assert!(file.transitive_dependencies.is_empty());
        };
        for file in &mut pool.files {
            fix_file(file);
        }
        let old_files: Vec<usize> = {
            let mut v = vec![0; files.len()];
            for (old_index, &new) in file_map.iter().enumerate() {
                if new != DROPPED {
                    v[new as usize] = old_index;
                }
            }
            v
        };
        for &old_index in &old_files[pool.files.len()..] {
            let mut file = f.take(old_index);
            fix_file(&mut file);
            file.locations = Default::default();
            pool.files.push(file);
        }

        let fix_message = |m: &mut MessageDescriptorInner| {
            m.id.file = file_map[m.id.file as usize];
            m.parent = m.parent.map(message);
            if !m.extensions.is_empty() {
                m.extensions = m
                    .extensions
                    .iter()
                    .map(|x| extensions_map[*x as usize])
                    .filter(|x| *x != DROPPED)
                    .collect();
                m.extensions.sort_unstable();
            }
            for field in &mut m.fields {
                field.id.file = m.id.file;
                field.kind = kind(field.kind);
            }
            for oneof in &mut m.oneofs {
                oneof.id.file = m.id.file;
            }
        };
        pool.messages.iter_mut().for_each(&fix_message);
        for &i in &messages_order[pool.messages.len()..] {
            let mut m = ms.take(i);
            fix_message(&mut m);
            pool.messages.push(m);
        }

        let fix_enum = |e: &mut EnumDescriptorInner| {
            e.id.file = file_map[e.id.file as usize];
            e.parent = e.parent.map(message);
            for value in &mut e.values {
                value.id.file = e.id.file;
            }
        };
        pool.enums.iter_mut().for_each(&fix_enum);
        for &i in &enums_order[pool.enums.len()..] {
            let mut e = es.take(i);
            fix_enum(&mut e);
            pool.enums.push(e);
        }

        let fix_extension = |x: &mut ExtensionDescriptorInner| {
            x.id.file = file_map[x.id.file as usize];
            x.parent = x.parent.map(message);
            x.extendee = message(x.extendee);
            x.kind = kind(x.kind);
        };
        pool.extensions.iter_mut().for_each(&fix_extension);
        for &i in &extensions_order[pool.extensions.len()..] {
            let mut x = xs.take(i);
            fix_extension(&mut x);
            pool.extensions.push(x);
        }

        let fix_service = |s: &mut ServiceDescriptorInner| {
            s.id.file = file_map[s.id.file as usize];
            for method in &mut s.methods {
                method.id.file = s.id.file;
                method.input = message(method.input);
                method.output = message(method.output);
            }
        };
        pool.services.iter_mut().for_each(&fix_service);
        for &i in &services_order[pool.services.len()..] {
            let mut s = ss.take(i);
            fix_service(&mut s);
            pool.services.push(s);
        }

        // Names: every kept definition renumbered, in place (a copy of the table when it is
        // shared: no key is hashed again); a package belongs to the first kept file declaring it
        // (or a package inside it), as adding the files in this order makes it.
        let mut packages: HashMap<&str, u32> = HashMap::new();
        for (index, file) in pool.files.iter().enumerate() {
            let package = file.raw.package();
            if package.is_empty() {
                continue;
            }
            let prefixes = package
                .match_indices('.')
                .map(|(i, _)| &package[..i])
                .chain(std::iter::once(package));
            for prefix in prefixes {
                packages.entry(prefix).or_insert(index as u32);
            }
        }
        let mut names = match names {
            Names::Owned(names) => names,
            Names::Shared(names) => names.clone(),
        };
        names.retain(|name, def| {
            let kind = match def.kind {
                DefinitionKind::Package => match packages.get(name.as_ref()) {
                    Some(&file) => {
                        def.file = file;
                        return true;
                    }
                    None => return false,
                },
                DefinitionKind::Message(m) => DefinitionKind::Message(messages_map[m as usize]),
                DefinitionKind::Field(m) => DefinitionKind::Field(messages_map[m as usize]),
                DefinitionKind::Oneof(m) => DefinitionKind::Oneof(messages_map[m as usize]),
                DefinitionKind::Service(s) => DefinitionKind::Service(services_map[s as usize]),
                DefinitionKind::Method(s) => DefinitionKind::Method(services_map[s as usize]),
                DefinitionKind::Enum(e) => DefinitionKind::Enum(enums_map[e as usize]),
                DefinitionKind::EnumValue(e) => DefinitionKind::EnumValue(enums_map[e as usize]),
                DefinitionKind::Extension(x) => {
                    DefinitionKind::Extension(extensions_map[x as usize])
                }
            };
            let file = file_map[def.file as usize];
            if file == DROPPED {
                return false;
            }
            def.file = file;
            def.kind = kind;
            true
        });
        drop(packages);
        pool.names = names;
        Some(DescriptorPool {
            inner: Arc::new(pool),
        })
    }
}

enum Names<'a> {
    Owned(NameMap<Arc<str>, Definition>),
    Shared(&'a NameMap<Arc<str>, Definition>),
}
