//! A model executor: a [`World`] of in-memory local, remote and base
//! views that applies a [`SyncPlan`] the way the client's executor and the
//! server would, asserting every step's precondition.
//!
//! Test support, not product code: compiled for this crate's tests and,
//! with the `model` feature, for the planner's fuzz target (fuzz/), so both
//! check the planner against one model. A failed assertion here means the
//! plan asked for something the real executor would refuse.
#![allow(clippy::missing_panics_doc)]

use std::collections::BTreeMap;

use super::{BaseFile, FileStat, LocalFile, Mode, Operation, RemoteFile, SyncInput, SyncPlan};
use crate::RemotePath;

/// The three views a plan changes, plus the server's revision counter.
#[derive(Debug, Clone, Default)]
pub struct World {
    pub local: BTreeMap<RemotePath, LocalFile>,
    pub remote: BTreeMap<RemotePath, RemoteFile>,
    pub base: BTreeMap<RemotePath, BaseFile>,
    /// The server's revision counter: each applied step takes the next.
    pub seq: u64,
}

/// Moves every key equal to or inside `from` to the same place under `to`;
/// returns the new keys.
pub fn move_prefix<T: Clone>(
    m: &mut BTreeMap<RemotePath, T>,
    from: &RemotePath,
    to: &RemotePath,
) -> Vec<RemotePath> {
    let moved: Vec<_> = m
        .keys()
        .filter_map(|k| k.rebase(from, to).map(|n| (k.clone(), n)))
        .collect();
    let mut new_keys = Vec::new();
    for (old, new) in moved {
        let v = m.remove(&old).unwrap();
        m.insert(new.clone(), v);
        new_keys.push(new);
    }
    new_keys
}

/// A rename's source holds something and its target is free: nothing at
/// it, inside it, or at one of its ancestors (as the server and the
/// client's executor require).
fn assert_can_move<T>(side: &BTreeMap<RemotePath, T>, from: &RemotePath, to: &RemotePath) {
    assert!(
        side.keys().any(|k| k == from || k.is_inside(from)),
        "rename of {from}: nothing there"
    );
    assert!(
        !side
            .keys()
            .any(|k| k == to || k.is_inside(to) || to.is_inside(k)),
        "rename to {to}: taken"
    );
}

impl World {
    /// The planner's input for this world (fixed host and stamp).
    pub fn input(&self, mode: Mode) -> SyncInput {
        SyncInput {
            local: self.local.clone(),
            remote: self.remote.clone(),
            base: self.base.clone(),
            mode,
            host: "h".into(),
            stamp: "20261125-000000".into(),
            ..Default::default()
        }
    }

    /// The base entries under `from` move to `to` and take the server's
    /// revision there, as the client's executor records a rename.
    fn moved_base(&mut self, from: &RemotePath, to: &RemotePath) {
        for k in move_prefix(&mut self.base, from, to) {
            if let Some(r) = self.remote.get(&k) {
                self.base.get_mut(&k).unwrap().revision = r.revision;
            }
        }
    }

    /// Carries `plan` out as the executor would, asserting each step's
    /// precondition (a failed assertion is a planner bug).
    pub fn apply(&mut self, plan: &SyncPlan) {
        for op in &plan.operations {
            self.seq += 1;
            let seq = self.seq;
            match op {
                Operation::Upload { path, if_revision } => {
                    assert_eq!(
                        self.remote.get(path).map_or(0, |r| r.revision),
                        *if_revision
                    );
                    let l = self.local[path].clone();
                    let r = RemoteFile {
                        revision: seq,
                        hash: l.hash,
                        size: l.size,
                    };
                    self.remote.insert(path.clone(), r.clone());
                    self.base.insert(
                        path.clone(),
                        BaseFile {
                            stat: FileStat::default(),
                            revision: seq,
                            hash: l.hash,
                            size: l.size,
                        },
                    );
                }
                Operation::Download {
                    path,
                    remote,
                    local_hash,
                } => {
                    assert_eq!(self.local.get(path).map(|l| l.hash), *local_hash);
                    self.local.insert(
                        path.clone(),
                        LocalFile {
                            hash: remote.hash,
                            size: remote.size,
                            stat: FileStat::default(),
                            disk_name: None,
                        },
                    );
                    self.base.insert(
                        path.clone(),
                        BaseFile {
                            stat: FileStat::default(),
                            revision: remote.revision,
                            hash: remote.hash,
                            size: remote.size,
                        },
                    );
                }
                Operation::DeleteRemote { path, if_revision } => {
                    assert_eq!(
                        self.remote.get(path).map_or(0, |r| r.revision),
                        *if_revision
                    );
                    self.remote.remove(path);
                    self.base.remove(path);
                }
                Operation::DeleteLocal { path, local_hash } => {
                    assert_eq!(self.local[path].hash, *local_hash);
                    self.local.remove(path);
                    self.base.remove(path);
                }
                Operation::RenameRemote {
                    from,
                    to,
                    if_revision,
                    ..
                } => {
                    if let Some(rev) = if_revision {
                        assert_eq!(self.remote[from].revision, *rev);
                    }
                    assert_can_move(&self.remote, from, to);
                    // The server gives every moved file the rename's
                    // revision; the base entries that moved take it.
                    for k in move_prefix(&mut self.remote, from, to) {
                        self.remote.get_mut(&k).unwrap().revision = seq;
                    }
                    self.moved_base(from, to);
                }
                Operation::RenameLocal { from, to, .. } => {
                    assert_can_move(&self.local, from, to);
                    move_prefix(&mut self.local, from, to);
                    self.moved_base(from, to);
                }
                Operation::Conflict {
                    path,
                    copy,
                    remote,
                    local_hash,
                    upload_copy,
                } => {
                    let l = self.local.remove(path).unwrap();
                    assert_eq!(l.hash, *local_hash);
                    self.local.insert(copy.clone(), l.clone());
                    if *upload_copy {
                        self.remote.insert(
                            copy.clone(),
                            RemoteFile {
                                revision: seq,
                                hash: l.hash,
                                size: l.size,
                            },
                        );
                        self.base.insert(
                            copy.clone(),
                            BaseFile {
                                stat: FileStat::default(),
                                revision: seq,
                                hash: l.hash,
                                size: l.size,
                            },
                        );
                    }
                    self.local.insert(
                        path.clone(),
                        LocalFile {
                            hash: remote.hash,
                            size: remote.size,
                            stat: FileStat::default(),
                            disk_name: None,
                        },
                    );
                    self.base.insert(
                        path.clone(),
                        BaseFile {
                            stat: FileStat::default(),
                            revision: remote.revision,
                            hash: remote.hash,
                            size: remote.size,
                        },
                    );
                }
                Operation::SetBase { path, base } => match base {
                    Some(b) => {
                        self.base.insert(path.clone(), b.clone());
                    }
                    None => {
                        self.base.remove(path);
                    }
                },
            }
        }
    }
}
