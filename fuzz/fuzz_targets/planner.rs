//! The sync planner (`core::sync::plan`) on random local/remote/base
//! states, made by edits (writes, deletes, folder moves) on either side of
//! an agreed base. Checks the planner's stated rules (core/src/sync):
//! - same input, same plan; a refused plan does nothing;
//! - paths left alone (unreadable, held, ignored) are never touched;
//! - two-way: nothing deletes or replaces a version the other side changed
//!   (modification beats deletion), conflict copies take free names and
//!   keep both versions;
//! - each step's precondition holds when the model executor
//!   (`core::sync::model`) carries the plan out, and, applied, the plan is
//!   idempotent: planning again moves nothing, and both sides agree (push:
//!   the server mirrors the folder; pull: the folder mirrors the server).
#![no_main]

use std::collections::{BTreeMap, BTreeSet};

use arbitrary::Arbitrary;
use distribusync_core::sync::model::{World, move_prefix};
use distribusync_core::sync::{BaseFile, FileStat, LocalFile, Mode, Operation, RemoteFile, plan};
use distribusync_core::{ContentHash, RemotePath};
use libfuzzer_sys::fuzz_target;

const NAMES: [&str; 10] = [
    "a", "b", "d/c", "d/e", "f/g", "f/h", "g/c", "d/x/c", "e.txt", "f/e.txt",
];
const CONTENTS: [&str; 6] = ["", "one", "two", "three", "four", "five"];

#[derive(Arbitrary, Debug)]
enum Edit {
    Write {
        name: u8,
        content: u8,
    },
    Delete {
        name: u8,
    },
    /// Moves the folder of `from` (or the file itself when `file`) to the
    /// folder of `to` (or to `to` itself).
    Move {
        from: u8,
        to: u8,
        file: bool,
    },
}

#[derive(Arbitrary, Debug)]
struct Input {
    extra_names: Vec<String>,
    base: Vec<(u8, u8)>,
    local: Vec<Edit>,
    remote: Vec<Edit>,
    held: Vec<u8>,
    ignored: Vec<u8>,
    unreadable: Vec<u8>,
    mode: u8,
    host: String,
}

fn content(i: u8) -> (ContentHash, u64) {
    let c = CONTENTS[usize::from(i) % CONTENTS.len()];
    (ContentHash::of(c.as_bytes()), c.len() as u64)
}

/// A file may not sit where a folder is, nor inside a file.
fn fits<T>(side: &BTreeMap<RemotePath, T>, p: &RemotePath) -> bool {
    !side
        .keys()
        .any(|k| k != p && (k.is_inside(p) || p.is_inside(k)))
}

fn move_target(pool: &[RemotePath], from: u8, to: u8, file: bool) -> (RemotePath, RemotePath) {
    let pick = |i: u8| pool[usize::from(i) % pool.len()].clone();
    let (f, t) = (pick(from), pick(to));
    if file {
        (f, t)
    } else {
        (f.parent().unwrap_or(f), t.parent().unwrap_or(t))
    }
}

fn movable<T>(side: &BTreeMap<RemotePath, T>, from: &RemotePath, to: &RemotePath) -> bool {
    from != to
        && !to.is_inside(from)
        && !from.is_inside(to)
        && side.keys().any(|k| k == from || k.is_inside(from))
        && !side
            .keys()
            .any(|k| k == to || k.is_inside(to) || to.is_inside(k))
}

fn build(input: &Input) -> Option<(World, Vec<RemotePath>)> {
    let mut pool: Vec<RemotePath> = NAMES
        .iter()
        .map(|n| RemotePath::parse(n).unwrap())
        .collect();
    for n in input.extra_names.iter().take(6) {
        if let Ok(p) = RemotePath::normalized(n)
            && !pool.contains(&p)
        {
            pool.push(p);
        }
    }
    if input.base.len() + input.local.len() + input.remote.len() > 64 {
        return None;
    }
    let pick = |i: u8| pool[usize::from(i) % pool.len()].clone();
    let mut w = World::default();
    for (i, &(n, c)) in input.base.iter().enumerate() {
        let p = pick(n);
        if !fits(&w.base, &p) {
            continue;
        }
        let (hash, size) = content(c);
        let rev = i as u64 + 1;
        w.base.insert(
            p.clone(),
            BaseFile {
                stat: FileStat::default(),
                revision: rev,
                hash,
                size,
            },
        );
        w.local.insert(p.clone(), LocalFile {
            hash,
            size,
            stat: FileStat::default(),
            disk_name: None,
        });
        w.remote.insert(
            p,
            RemoteFile {
                revision: rev,
                hash,
                size,
            },
        );
    }
    w.seq = 1000;
    for e in &input.local {
        match *e {
            Edit::Write { name, content: c } => {
                let p = pick(name);
                if fits(&w.local, &p) {
                    let (hash, size) = content(c);
                    w.local.insert(p, LocalFile {
            hash,
            size,
            stat: FileStat::default(),
            disk_name: None,
        });
                }
            }
            Edit::Delete { name } => {
                w.local.remove(&pick(name));
            }
            Edit::Move { from, to, file } => {
                let (f, t) = move_target(&pool, from, to, file);
                if movable(&w.local, &f, &t) {
                    move_prefix(&mut w.local, &f, &t);
                }
            }
        }
    }
    for e in &input.remote {
        w.seq += 1;
        match *e {
            Edit::Write { name, content: c } => {
                let p = pick(name);
                if fits(&w.remote, &p) {
                    let (hash, size) = content(c);
                    w.remote.insert(
                        p,
                        RemoteFile {
                            revision: w.seq,
                            hash,
                            size,
                        },
                    );
                }
            }
            Edit::Delete { name } => {
                w.remote.remove(&pick(name));
            }
            Edit::Move { from, to, file } => {
                let (f, t) = move_target(&pool, from, to, file);
                if movable(&w.remote, &f, &t) {
                    move_prefix(&mut w.remote, &f, &t);
                    let seq = w.seq;
                    for (_, r) in w
                        .remote
                        .iter_mut()
                        .filter(|(k, _)| *k == &t || k.is_inside(&t))
                    {
                        r.revision = seq;
                    }
                }
            }
        }
    }
    Some((w, pool))
}

/// The file paths an operation touches (folder renames: both folders).
fn touched(op: &Operation) -> Vec<&RemotePath> {
    match op {
        Operation::Upload { path, .. }
        | Operation::Download { path, .. }
        | Operation::DeleteRemote { path, .. }
        | Operation::DeleteLocal { path, .. }
        | Operation::SetBase { path, .. } => vec![path],
        Operation::RenameRemote { from, to, .. } | Operation::RenameLocal { from, to, .. } => {
            vec![from, to]
        }
        Operation::Conflict { path, copy, .. } => vec![path, copy],
    }
}

fuzz_target!(|input: Input| {
    let Some((mut w, pool)) = build(&input) else {
        return;
    };
    let mode = [Mode::TwoWay, Mode::Push, Mode::Pull][usize::from(input.mode) % 3];
    let mut inp = w.input(mode);
    inp.host = input.host.chars().take(64).collect();
    inp.stamp = "20261125-101500".into();
    // The engine only ever names files one of the views holds.
    let known = |p: &RemotePath| {
        inp.local.contains_key(p) || inp.remote.contains_key(p) || inp.base.contains_key(p)
    };
    let set = |ix: &[u8]| -> BTreeSet<RemotePath> {
        ix.iter()
            .take(4)
            .map(|&i| pool[usize::from(i) % pool.len()].clone())
            .filter(|p| known(p))
            .collect()
    };
    inp.held = set(&input.held);
    inp.ignored = set(&input.ignored);
    inp.unreadable = set(&input.unreadable);
    // The scan lists neither ignored nor unreadable files.
    for p in inp.ignored.iter().chain(&inp.unreadable) {
        inp.local.remove(p);
    }
    let left_alone: BTreeSet<&RemotePath> = inp
        .held
        .iter()
        .chain(&inp.ignored)
        .chain(&inp.unreadable)
        .collect();

    let first = plan(&inp);
    if std::env::var_os("PLANNER_DEBUG").is_some() {
        eprintln!("{inp:#?}\n{first:#?}");
    }
    assert_eq!(first, plan(&inp.clone()), "not deterministic");
    if first.refused.is_some() {
        assert!(first.operations.is_empty());
        return;
    }
    let (l, r, b) = (&inp.local, &inp.remote, &inp.base);
    let base_hash = |p: &RemotePath| b.get(p).map(|f| f.hash);
    let mut copies = BTreeSet::new();
    for op in &first.operations {
        for p in touched(op) {
            assert!(!left_alone.contains(p), "{op:?} touches a path left alone");
        }
        match op {
            Operation::DeleteLocal { path, local_hash } => {
                assert_ne!(mode, Mode::Push, "{op:?}");
                assert_eq!(l.get(path).map(|f| f.hash), Some(*local_hash));
                assert_eq!(
                    base_hash(path),
                    Some(*local_hash),
                    "deletes a local edit: {op:?}"
                );
                assert!(!r.contains_key(path), "{op:?}");
            }
            Operation::DeleteRemote { path, if_revision } => {
                assert_ne!(mode, Mode::Pull, "{op:?}");
                let rf = r
                    .get(path)
                    .unwrap_or_else(|| panic!("{op:?}: nothing to delete"));
                assert_eq!(rf.revision, *if_revision);
                assert!(!l.contains_key(path), "{op:?}");
                if mode == Mode::TwoWay {
                    // Either the synced version at that path, or one the
                    // server only moved (a deletion here wins over a move).
                    let synced = base_hash(path) == Some(rf.hash)
                        || (!b.contains_key(path) && b.values().any(|f| f.hash == rf.hash));
                    assert!(synced, "deletes a remote edit: {op:?}");
                }
            }
            Operation::Download {
                path,
                remote,
                local_hash,
            } => {
                assert_ne!(mode, Mode::Push, "{op:?}");
                assert_eq!(r.get(path), Some(remote));
                assert_eq!(l.get(path).map(|f| f.hash), *local_hash);
                if let Some(h) = local_hash {
                    assert_eq!(base_hash(path), Some(*h), "overwrites a local edit: {op:?}");
                }
            }
            Operation::Upload { path, if_revision } => {
                assert_ne!(mode, Mode::Pull, "{op:?}");
                assert!(l.contains_key(path), "{op:?}");
                assert_eq!(r.get(path).map_or(0, |f| f.revision), *if_revision);
                if mode == Mode::TwoWay
                    && let Some(rf) = r.get(path)
                {
                    assert_eq!(
                        base_hash(path),
                        Some(rf.hash),
                        "overwrites a remote edit: {op:?}"
                    );
                }
            }
            Operation::Conflict {
                path,
                copy,
                remote,
                local_hash,
                ..
            } => {
                assert_ne!(mode, Mode::Push, "{op:?}");
                assert_eq!(r.get(path), Some(remote));
                assert_eq!(l.get(path).map(|f| f.hash), Some(*local_hash));
                assert_ne!(remote.hash, *local_hash);
                assert_eq!(RemotePath::parse(copy.as_str()).as_ref(), Ok(copy));
                // Beside the original, or at the top when its folder's
                // path leaves no room for a conflict name.
                assert!(
                    copy.parent() == path.parent() || copy.parent().is_none(),
                    "{op:?}"
                );
                assert!(
                    !l.contains_key(copy) && !r.contains_key(copy) && !b.contains_key(copy),
                    "conflict copy over an existing file: {op:?}"
                );
                assert!(
                    copies.insert(copy.clone()),
                    "two conflicts, one copy: {op:?}"
                );
            }
            Operation::RenameRemote { .. } => assert_ne!(mode, Mode::Pull, "{op:?}"),
            Operation::RenameLocal { .. } => assert_ne!(mode, Mode::Push, "{op:?}"),
            Operation::SetBase { .. } => {}
        }
    }

    // Carry the plan out on the model (it asserts every precondition).
    w.local = inp.local.clone();
    let (local_before, remote_before) = (w.local.clone(), w.remote.clone());
    w.apply(&first);
    if !left_alone.is_empty() {
        return;
    }
    let mut again = w.input(mode);
    again.host = inp.host.clone();
    again.stamp = inp.stamp.clone();
    let second = plan(&again);
    let hashes = |m: &mut dyn Iterator<Item = (&RemotePath, ContentHash)>| {
        m.map(|(k, h)| (k.clone(), h)).collect::<BTreeMap<_, _>>()
    };
    let local_now = hashes(&mut w.local.iter().map(|(k, f)| (k, f.hash)));
    let remote_now = hashes(&mut w.remote.iter().map(|(k, f)| (k, f.hash)));
    match mode {
        Mode::TwoWay => {
            assert!(
                second.operations.is_empty(),
                "not idempotent: {:?}",
                second.operations
            );
            assert_eq!(local_now, remote_now, "sides differ after the plan");
            // Both versions of every edit survive somewhere (conflicts keep
            // both). An edit: content the base had nowhere (a moved file
            // deleted on the other side may go: deletion beats a move).
            let edited = |h: ContentHash| !b.values().any(|f| f.hash == h);
            for (p, f) in &local_before {
                if edited(f.hash) {
                    assert!(
                        local_now.values().any(|h| *h == f.hash),
                        "lost the local edit of {p}"
                    );
                }
            }
            for (p, f) in &remote_before {
                if edited(f.hash) {
                    assert!(
                        remote_now.values().any(|h| *h == f.hash),
                        "lost the remote edit of {p}"
                    );
                }
            }
        }
        Mode::Push => {
            assert!(
                second.is_in_sync(),
                "push not idempotent: {:?}",
                second.operations
            );
            assert_eq!(w.local, local_before);
            let want = hashes(&mut local_before.iter().map(|(k, f)| (k, f.hash)));
            assert_eq!(remote_now, want, "the server does not mirror the folder");
        }
        Mode::Pull => {
            assert!(
                second.is_in_sync(),
                "pull not idempotent: {:?}",
                second.operations
            );
            for (p, h) in &remote_now {
                assert_eq!(local_now.get(p), Some(h), "{p} not pulled");
            }
            let before = hashes(&mut remote_before.iter().map(|(k, f)| (k, f.hash)));
            assert_eq!(remote_now, before, "pull changed the server");
        }
    }
});
