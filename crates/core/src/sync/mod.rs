//! The sync planner: three views of a folder in, a [`SyncPlan`] out.
//!
//! - **local**: what the synced folder holds now (from a scan),
//! - **remote**: what the server holds now (from its listing and change log),
//! - **base**: what both sides last agreed on (the merge base).
//!
//! [`plan`] is a pure, deterministic function of those views (same input,
//! same plan); the client's executor carries the plan out and records each
//! step's result as the new base. Merge rules: one side changed → propagate;
//! both changed to the same content → nothing to move; both changed
//! differently → the server's version keeps the name and the local one is
//! kept as a conflict copy on both sides; modification beats deletion;
//! renames are detected by content and travel as renames.

/// The per-folder ignore file; it syncs like any file but does not count
/// when deciding whether the folder was emptied.
pub const IGNORE_FILE: &str = ".distribusyncignore";

mod conflict;
#[cfg(any(test, feature = "model"))]
pub mod model;
mod planner;

pub use conflict::conflict_name;
pub use planner::{plan, plan_with};

use std::collections::BTreeMap;

use crate::{ContentHash, RemotePath, Revision};

/// A file in the local folder.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalFile {
    pub hash: ContentHash,
    pub size: u64,
    /// The file's stat when it was hashed (the planner ignores it; the
    /// client's scan uses it to skip re-hashing an unchanged file). Kept
    /// here so the client's local view *is* the planner's input, lent to
    /// it rather than copied for every pass.
    pub stat: FileStat,
    /// The name on disk when it differs from the path (a name in Unicode
    /// NFD, as macOS writes them); the planner ignores it.
    pub disk_name: Option<String>,
}

/// A file on the server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RemoteFile {
    pub revision: Revision,
    pub hash: ContentHash,
    pub size: u64,
}

/// What both sides last agreed on for a path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BaseFile {
    pub revision: Revision,
    pub hash: ContentHash,
    pub size: u64,
    /// The local file's stat when it last matched (the planner ignores
    /// it; the client's scan uses it to skip re-hashing an unchanged file).
    pub stat: FileStat,
}

/// What identifies a local file's version without reading it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct FileStat {
    pub size: u64,
    pub mtime_ns: i64,
    pub inode: u64,
}

/// Which way changes flow.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Mode {
    /// Both ways (default).
    #[default]
    TwoWay,
    /// The folder is the truth; the server mirrors it.
    Push,
    /// The server is the truth; the folder mirrors it (local edits are kept
    /// as conflict copies, never sent).
    Pull,
}

/// The three views the planner reads, plus what it needs to name conflict
/// copies deterministically.
#[derive(Debug, Clone, Default)]
pub struct SyncInput {
    pub local: BTreeMap<RemotePath, LocalFile>,
    pub remote: BTreeMap<RemotePath, RemoteFile>,
    pub base: BTreeMap<RemotePath, BaseFile>,
    /// Local files the scan could not read, or that are still being
    /// written: left alone entirely this time (and the folder is not empty).
    pub unreadable: std::collections::BTreeSet<RemotePath>,
    /// Paths left alone this time for the caller's own reasons (a change
    /// not yet settled, a step waiting for its retry) that are not on disk:
    /// unlike `unreadable`, they are no evidence that the folder still
    /// holds something.
    pub held: std::collections::BTreeSet<RemotePath>,
    /// Paths the ignore rules exclude: never touched on either side, even
    /// when they exist on the server or in the base.
    pub ignored: std::collections::BTreeSet<RemotePath>,
    pub mode: Mode,
    /// Host name used in conflict copy names.
    pub host: String,
    /// `yyyymmdd-hhmmss` used in conflict copy names.
    pub stamp: String,
    /// When set, only these paths are planned (an incremental pass): the
    /// views are still whole and every lookup (conflict names, whether a
    /// whole folder moved) uses all of them, but no pass is made over
    /// them. The caller's promise: every path whose local, remote or base
    /// entry changed since the last plan is in it, a folder together with
    /// everything inside it, and neither side is (nearly) empty, so the
    /// safety stop could not apply (it is checked anyway, cheaply).
    ///
    /// With [`plan_with`], the maps need hold only the focus's entries
    /// (each focus path's entry on every side that has one), and a *full*
    /// plan is the focused plan of the paths where the three views
    /// disagree (see [`plan_with`]).
    pub focus: Option<std::collections::BTreeSet<RemotePath>>,
}

/// One of the three views.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    Local,
    Remote,
    Base,
}

/// The questions the planner asks of the *whole* views, beyond the
/// entries of the paths it plans: whether a name is taken (conflict
/// copies, rename targets), whether a whole folder moved, and whether a
/// side is empty (the safety stop). Implemented over the input's own maps
/// ([`InputViews`], what [`plan`] uses) and, by the client, over its state
/// database, so a plan needs in memory only the entries it plans.
///
/// Every answer must describe the same views the input's maps are taken
/// from.
pub trait Views {
    /// True when `side` holds `path`.
    fn contains(&self, side: Side, path: &RemotePath) -> bool;
    /// How many paths `side` holds strictly inside the folder `dir`.
    fn count_inside(&self, side: Side, dir: &RemotePath) -> u64;
    /// True when `side` holds some path strictly inside the folder `dir`.
    fn holds_inside(&self, side: Side, dir: &RemotePath) -> bool {
        self.count_inside(side, dir) > 0
    }
    /// True when the local side holds nothing but the ignore file.
    fn local_is_empty(&self) -> bool;
    /// True when the server holds nothing this folder does not ignore.
    fn remote_is_empty(&self) -> bool;
    /// How many base entries this folder does not ignore.
    fn synced(&self) -> u64;
}

/// [`Views`] over the input's own (whole) maps.
#[derive(Debug, Clone, Copy)]
pub struct InputViews<'a>(pub &'a SyncInput);

fn count_inside_map<V>(map: &BTreeMap<RemotePath, V>, dir: &RemotePath) -> u64 {
    crate::path::at_or_inside(map, dir)
        .filter(|(p, _)| *p != dir)
        .count() as u64
}

impl Views for InputViews<'_> {
    fn contains(&self, side: Side, path: &RemotePath) -> bool {
        match side {
            Side::Local => self.0.local.contains_key(path),
            Side::Remote => self.0.remote.contains_key(path),
            Side::Base => self.0.base.contains_key(path),
        }
    }

    fn count_inside(&self, side: Side, dir: &RemotePath) -> u64 {
        match side {
            Side::Local => count_inside_map(&self.0.local, dir),
            Side::Remote => count_inside_map(&self.0.remote, dir),
            Side::Base => count_inside_map(&self.0.base, dir),
        }
    }

    fn holds_inside(&self, side: Side, dir: &RemotePath) -> bool {
        fn any<V>(map: &BTreeMap<RemotePath, V>, dir: &RemotePath) -> bool {
            crate::path::at_or_inside(map, dir).any(|(p, _)| p != dir)
        }
        match side {
            Side::Local => any(&self.0.local, dir),
            Side::Remote => any(&self.0.remote, dir),
            Side::Base => any(&self.0.base, dir),
        }
    }

    fn local_is_empty(&self) -> bool {
        // Stops at the first file that is not the ignore file: O(1) for
        // a folder with files in it.
        self.0.local.keys().all(|p| p.as_str() == IGNORE_FILE)
    }

    fn remote_is_empty(&self) -> bool {
        self.0.remote.keys().all(|p| self.0.ignored.contains(p))
    }

    fn synced(&self) -> u64 {
        self.0
            .base
            .keys()
            .filter(|p| !self.0.ignored.contains(*p))
            .count() as u64
    }
}

/// One step of a plan. Preconditions (`if_revision`, expected local hashes)
/// let the executor refuse a step when the world moved since planning.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Operation {
    /// Send the local file; the server's revision must still be
    /// `if_revision` (0: must not exist).
    Upload {
        path: RemotePath,
        if_revision: Revision,
    },
    /// Fetch the server's version; the local file must still have hash
    /// `local_hash` (`None`: must not exist).
    Download {
        path: RemotePath,
        remote: RemoteFile,
        local_hash: Option<ContentHash>,
    },
    /// Delete on the server (its revision must still be `if_revision`).
    DeleteRemote {
        path: RemotePath,
        if_revision: Revision,
    },
    /// Delete locally (the file must still have hash `local_hash`).
    DeleteLocal {
        path: RemotePath,
        local_hash: ContentHash,
    },
    /// A local rename, repeated on the server (a folder when `folder`).
    /// For a file, the server's revision must still be `if_revision`.
    RenameRemote {
        from: RemotePath,
        to: RemotePath,
        folder: bool,
        if_revision: Option<Revision>,
    },
    /// A server rename, repeated locally (a folder when `folder`).
    RenameLocal {
        from: RemotePath,
        to: RemotePath,
        folder: bool,
    },
    /// Both sides changed `path` differently: move the local version to
    /// `copy` (and upload it there unless pulling), then download the
    /// server's version to `path`.
    Conflict {
        path: RemotePath,
        copy: RemotePath,
        remote: RemoteFile,
        local_hash: ContentHash,
        upload_copy: bool,
    },
    /// Both sides already agree: record the new base, move nothing.
    /// `None` forgets the path.
    SetBase {
        path: RemotePath,
        base: Option<BaseFile>,
    },
}

impl Operation {
    /// True for steps that move or change files (not bookkeeping).
    pub fn is_transfer(&self) -> bool {
        !matches!(self, Self::SetBase { .. })
    }
}

/// What to do, in order: renames first, then deletes, then transfers and
/// conflicts, then bookkeeping.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SyncPlan {
    pub operations: Vec<Operation>,
    /// Why the plan refuses to run, if it does (the safety stop).
    pub refused: Option<String>,
}

impl SyncPlan {
    /// True when nothing needs to move.
    pub fn is_in_sync(&self) -> bool {
        self.refused.is_none() && !self.operations.iter().any(Operation::is_transfer)
    }
}

#[cfg(test)]
mod tests;
