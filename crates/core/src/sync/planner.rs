//! [`plan`]: the pure heart of sync.

use std::collections::{BTreeMap, BTreeSet};

use super::{
    BaseFile, FileStat, InputViews, LocalFile, Mode, Operation, RemoteFile, Side, SyncInput,
    SyncPlan, Views, conflict_name,
};
use crate::{ContentHash, RemotePath};

/// Computes what to do to bring local and remote into agreement. Pure and
/// deterministic: the same input always gives the same plan.
pub fn plan(input: &SyncInput) -> SyncPlan {
    plan_with(input, &InputViews(input))
}

/// [`plan`], with the whole-view questions answered by `views` instead of
/// the input's maps. Then the maps need hold only the entries of the
/// paths in `input.focus`, and the plan equals [`plan`] of the whole
/// views whenever the focus holds every path whose entries disagree (not
/// the same content, revision and size on all three sides, or not absent
/// from all three): a path on which all sides agree makes no step, is no
/// rename's source or target and takes part in no other path's step
/// except through `views` (property test
/// `a_plan_of_the_disagreeing_paths_over_views_is_the_full_plan`). So a
/// full pass over a million files needs in memory only what differs.
pub fn plan_with(input: &SyncInput, views: &dyn Views) -> SyncPlan {
    if let Some(why) = safety_stop(input, views) {
        return SyncPlan {
            operations: Vec::new(),
            refused: Some(why),
        };
    }
    let mut renames_remote = Vec::new();
    let mut renames_local = Vec::new();
    let mut handled: BTreeSet<RemotePath> = BTreeSet::new();

    if input.mode != Mode::Pull {
        let pairs = local_renames(input, views);
        renames_remote = coalesce(&pairs, input, views, Side::Remote, |from, to, folder| {
            // A file moves only if the server still has the version we saw.
            let if_revision = (!folder).then(|| input.remote.get(&from).map_or(0, |r| r.revision));
            Operation::RenameRemote {
                from,
                to,
                folder,
                if_revision,
            }
        });
        handled.extend(pairs.iter().flat_map(|(f, t)| [f.clone(), t.clone()]));
    }
    if input.mode != Mode::Push {
        let pairs = remote_renames(input, views);
        renames_local = coalesce(&pairs, input, views, Side::Local, |from, to, folder| {
            Operation::RenameLocal { from, to, folder }
        });
        handled.extend(pairs.iter().flat_map(|(f, t)| [f.clone(), t.clone()]));
    }
    // Deleted here while the server moved it (a folder renamed there):
    // the deletion wins, at the new name, unless the file was modified.
    let mut moved_deletes = Vec::new();
    if input.mode == Mode::TwoWay {
        let (pairs, waiting) = deleted_while_moved(input, &handled);
        // The deletion is not settled yet (its path is held): the moved
        // file waits with it, or this pass would download it back.
        handled.extend(waiting);
        for (_, to) in pairs {
            if let Some(r) = input.remote.get(&to) {
                moved_deletes.push(Operation::DeleteRemote {
                    path: to.clone(),
                    if_revision: r.revision,
                });
                handled.insert(to);
            }
        }
    }

    let all: Box<dyn Iterator<Item = &RemotePath>> = match &input.focus {
        Some(focus) => Box::new(focus.iter()),
        None => Box::new(
            input
                .local
                .keys()
                .chain(input.remote.keys())
                .chain(input.base.keys()),
        ),
    };
    let paths: BTreeSet<&RemotePath> = all
        .filter(|p| !left_alone(input, p) && !handled.contains(*p))
        .collect();
    // Conflict copies chosen so far (every other name in use is in the views).
    let mut taken: BTreeSet<RemotePath> = BTreeSet::new();
    let (mut deletes, mut transfers, mut bookkeeping) = (moved_deletes, Vec::new(), Vec::new());
    for path in paths {
        let l = input.local.get(path);
        let r = input.remote.get(path);
        let b = input.base.get(path);
        if l.map(|f| f.hash) == r.map(|f| f.hash) {
            let agreed = r.map(|r| BaseFile {
                stat: FileStat::default(),
                revision: r.revision,
                hash: r.hash,
                size: r.size,
            });
            // The stat is the client's business, not part of the agreement.
            let key = |f: &BaseFile| (f.revision, f.hash, f.size);
            if agreed.as_ref().map(key) != b.map(key) {
                bookkeeping.push(Operation::SetBase {
                    path: path.clone(),
                    base: agreed,
                });
            }
            continue;
        }
        let op = match input.mode {
            Mode::TwoWay => two_way(path, l, r, b, views, &mut taken, input),
            Mode::Push => Some(push(path, l, r)),
            Mode::Pull => pull(path, l, r, b, views, &mut taken, input),
        };
        match op {
            Some(op @ (Operation::DeleteLocal { .. } | Operation::DeleteRemote { .. })) => {
                deletes.push(op);
            }
            Some(op) => transfers.push(op),
            None => {}
        }
    }
    let mut operations = renames_remote;
    operations.extend(renames_local);
    operations.extend(deletes);
    operations.extend(transfers);
    operations.extend(bookkeeping);
    SyncPlan {
        operations,
        refused: None,
    }
}

/// The entries of `map` the plan looks at: all of them, or (in an
/// incremental pass) those of the focus, in the same order.
fn considered<'a, V>(
    input: &'a SyncInput,
    map: &'a BTreeMap<RemotePath, V>,
) -> Box<dyn Iterator<Item = (&'a RemotePath, &'a V)> + 'a> {
    match &input.focus {
        Some(focus) => Box::new(focus.iter().filter_map(|p| map.get_key_value(p))),
        None => Box::new(map.iter()),
    }
}

/// Paths the plan must not touch this time.
fn left_alone(input: &SyncInput, p: &RemotePath) -> bool {
    input.unreadable.contains(p) || input.ignored.contains(p) || input.held.contains(p)
}

fn safety_stop(input: &SyncInput, views: &dyn Views) -> Option<String> {
    // Both tests stop at the first file found, so a folder with files in
    // it costs O(1) here; only then are the synced files counted.
    let emptied = views.local_is_empty() && input.unreadable.is_empty();
    let remote_gone = views.remote_is_empty();
    if !(emptied || remote_gone) {
        return None;
    }
    let synced = views.synced();
    if synced < 2 {
        return None;
    }
    if input.mode != Mode::Pull && emptied {
        return Some(format!(
            "the folder is empty, but {synced} files were in sync before; refusing to delete \
             them on the server (if the folder was emptied on purpose, delete the files on \
             the server with `distribusync rm`, or remove .distribusync/state.db to start over)"
        ));
    }
    if input.mode != Mode::Push && remote_gone {
        return Some(format!(
            "the server has none of the {synced} files that were in sync before (was it wiped, \
             or is this another server?); refusing to delete them here (remove \
             .distribusync/state.db to upload this folder to it afresh)"
        ));
    }
    None
}

fn changed_local(l: Option<&LocalFile>, b: Option<&BaseFile>) -> bool {
    l.map(|f| f.hash) != b.map(|f| f.hash)
}

fn changed_remote(r: Option<&RemoteFile>, b: Option<&BaseFile>) -> bool {
    r.map(|f| f.hash) != b.map(|f| f.hash)
}

fn conflict(
    path: &RemotePath,
    l: &LocalFile,
    r: &RemoteFile,
    (input, views): (&SyncInput, &dyn Views),
    taken: &mut BTreeSet<RemotePath>,
    upload_copy: bool,
) -> Operation {
    let copy = conflict_name(path, &input.host, &input.stamp, |c| {
        taken.contains(c)
            || views.contains(Side::Local, c)
            || views.contains(Side::Remote, c)
            || views.contains(Side::Base, c)
    });
    taken.insert(copy.clone());
    Operation::Conflict {
        path: path.clone(),
        copy,
        remote: r.clone(),
        local_hash: l.hash,
        upload_copy,
    }
}

fn two_way(
    path: &RemotePath,
    l: Option<&LocalFile>,
    r: Option<&RemoteFile>,
    b: Option<&BaseFile>,
    views: &dyn Views,
    taken: &mut BTreeSet<RemotePath>,
    input: &SyncInput,
) -> Option<Operation> {
    let path_ = || path.clone();
    let lc = changed_local(l, b);
    let rc = changed_remote(r, b);
    Some(match (lc, rc, l, r) {
        // Only the local side changed, or it is the only modification.
        (true, false, Some(_), r) | (true, true, Some(_), r @ None) => Operation::Upload {
            path: path_(),
            if_revision: r.map_or(0, |r| r.revision),
        },
        (true, false, None, Some(r)) => Operation::DeleteRemote {
            path: path_(),
            if_revision: r.revision,
        },
        (false, true, l, Some(r)) | (true, true, l @ None, Some(r)) => Operation::Download {
            path: path_(),
            remote: r.clone(),
            local_hash: l.map(|l| l.hash),
        },
        (false, true, Some(l), None) => Operation::DeleteLocal {
            path: path_(),
            local_hash: l.hash,
        },
        (true, true, Some(l), Some(r)) => conflict(path, l, r, (input, views), taken, true),
        // Neither changed yet they differ: cannot happen (both equal base).
        _ => return None,
    })
}

fn push(path: &RemotePath, l: Option<&LocalFile>, r: Option<&RemoteFile>) -> Operation {
    match (l, r) {
        (Some(_), r) => Operation::Upload {
            path: path.clone(),
            if_revision: r.map_or(0, |r| r.revision),
        },
        (None, r) => Operation::DeleteRemote {
            path: path.clone(),
            if_revision: r.map_or(0, |r| r.revision),
        },
    }
}

fn pull(
    path: &RemotePath,
    l: Option<&LocalFile>,
    r: Option<&RemoteFile>,
    b: Option<&BaseFile>,
    views: &dyn Views,
    taken: &mut BTreeSet<RemotePath>,
    input: &SyncInput,
) -> Option<Operation> {
    let local_edited = l.is_some() && changed_local(l, b);
    match (l, r) {
        (Some(l), Some(r)) if local_edited => {
            Some(conflict(path, l, r, (input, views), taken, false))
        }
        (l, Some(r)) => Some(Operation::Download {
            path: path.clone(),
            remote: r.clone(),
            local_hash: l.map(|l| l.hash),
        }),
        (Some(l), None) if !local_edited => Some(Operation::DeleteLocal {
            path: path.clone(),
            local_hash: l.hash,
        }),
        // A local-only file in pull mode stays, untouched and unsent.
        _ => None,
    }
}

/// Pairs `(gone, new)` where one side lost a path and gained another with
/// the same (non-empty) content, while the other side kept the old one.
fn match_renames(
    gone: Vec<(&RemotePath, ContentHash)>,
    new: Vec<(&RemotePath, ContentHash)>,
) -> Vec<(RemotePath, RemotePath)> {
    let mut by_hash: BTreeMap<ContentHash, Vec<&RemotePath>> = BTreeMap::new();
    for (p, h) in new {
        by_hash.entry(h).or_default().push(p);
    }
    let mut pairs = Vec::new();
    for (from, h) in gone {
        let Some(cands) = by_hash.get_mut(&h) else {
            continue;
        };
        if cands.is_empty() {
            continue;
        }
        // Prefer a candidate with the same file name (a move); else the first.
        let i = cands
            .iter()
            .position(|c| c.file_name() == from.file_name())
            .unwrap_or(0);
        pairs.push((from.clone(), cands.remove(i).clone()));
    }
    pairs
}

/// Pairs `(old, new)` where the local side deleted a synced file while the
/// server moved it: the base path is gone from both sides, and the server
/// gained a path with the same file name and the same (non-empty) content
/// that neither the base nor the local side has. Only this direction: a
/// local file is never deleted unless the base holds it at that path, so
/// a file moved here and deleted on the server is sent back instead.
/// Also returns the new paths of such files whose local deletion is still
/// held (not settled): they are left alone until it settles.
fn deleted_while_moved(
    input: &SyncInput,
    handled: &BTreeSet<RemotePath>,
) -> (Vec<(RemotePath, RemotePath)>, Vec<RemotePath>) {
    let mut new: BTreeMap<(ContentHash, &str), Vec<&RemotePath>> = BTreeMap::new();
    for (p, r) in considered(input, &input.remote) {
        if r.size > 0
            && !input.base.contains_key(p)
            && !input.local.contains_key(p)
            && !handled.contains(p)
            && !left_alone(input, p)
        {
            new.entry((r.hash, p.file_name())).or_default().push(p);
        }
    }
    let (mut pairs, mut waiting) = (Vec::new(), Vec::new());
    for (p, b) in considered(input, &input.base) {
        // A held path is not on disk; the local view may still list it
        // (a partial pass has not looked at it yet).
        let held =
            input.held.contains(p) && !input.unreadable.contains(p) && !input.ignored.contains(p);
        if b.size == 0
            || (input.local.contains_key(p) && !held)
            || input.remote.contains_key(p)
            || handled.contains(p)
            || (left_alone(input, p) && !held)
        {
            continue;
        }
        if let Some(cands) = new.get_mut(&(b.hash, p.file_name()))
            && !cands.is_empty()
        {
            let to = cands.remove(0).clone();
            if held {
                waiting.push(to);
            } else {
                pairs.push((p.clone(), to));
            }
        }
    }
    (pairs, waiting)
}

/// What the rename detector needs to know of a file on either side.
trait Content {
    fn hash(&self) -> ContentHash;
    fn size(&self) -> u64;
}

impl Content for super::LocalFile {
    fn hash(&self) -> ContentHash {
        self.hash
    }
    fn size(&self) -> u64 {
        self.size
    }
}

impl Content for RemoteFile {
    fn hash(&self) -> ContentHash {
        self.hash
    }
    fn size(&self) -> u64 {
        self.size
    }
}

/// Renames made on the `moved` side: a base path it lost while the `other`
/// side kept it unchanged, matched with a path it gained that neither the
/// base nor the other side has.
fn renames_on<M: Content, O: Content>(
    input: &SyncInput,
    moved: &BTreeMap<RemotePath, M>,
    (other, other_side): (&BTreeMap<RemotePath, O>, Side),
    views: &dyn Views,
) -> Vec<(RemotePath, RemotePath)> {
    let gone = considered(input, &input.base)
        .filter(|(p, b)| {
            b.size > 0
                && !moved.contains_key(*p)
                && !left_alone(input, p)
                && other.get(*p).is_some_and(|o| o.hash() == b.hash)
        })
        .map(|(p, b)| (p, b.hash))
        .collect();
    // A path the other side holds as a folder (or under a file) cannot be
    // a rename's target there: the server refuses it and the model
    // executor cannot apply it; it travels as a new file instead.
    let new = considered(input, moved)
        .filter(|(p, m)| {
            m.size() > 0
                && !input.base.contains_key(*p)
                && !other.contains_key(*p)
                && !folder_clash(views, other_side, p)
                && !left_alone(input, p)
                && !p.ancestors().iter().any(|a| left_alone(input, a))
        })
        .map(|(p, m)| (p, m.hash()))
        .collect();
    match_renames(gone, new)
}

/// True when `side` holds a file inside `p` or at one of its ancestors:
/// a file cannot be put at `p` there.
fn folder_clash(views: &dyn Views, side: Side, p: &RemotePath) -> bool {
    views.holds_inside(side, p) || p.ancestors().iter().any(|a| views.contains(side, a))
}

fn local_renames(input: &SyncInput, views: &dyn Views) -> Vec<(RemotePath, RemotePath)> {
    renames_on(input, &input.local, (&input.remote, Side::Remote), views)
}

fn remote_renames(input: &SyncInput, views: &dyn Views) -> Vec<(RemotePath, RemotePath)> {
    renames_on(input, &input.remote, (&input.local, Side::Local), views)
}

/// The folders a file rename implies: strip the longest common tail of
/// segments (keeping at least one segment on each side).
fn folder_mapping(from: &RemotePath, to: &RemotePath) -> Option<(RemotePath, RemotePath)> {
    let f: Vec<&str> = from.segments().collect();
    let t: Vec<&str> = to.segments().collect();
    let common = f
        .iter()
        .rev()
        .zip(t.iter().rev())
        .take_while(|(a, b)| a == b)
        .count();
    if common == 0 || common >= f.len() || common >= t.len() {
        return None;
    }
    let from_dir = RemotePath::parse(&f[..f.len() - common].join("/")).ok()?;
    let to_dir = RemotePath::parse(&t[..t.len() - common].join("/")).ok()?;
    Some((from_dir, to_dir))
}

/// Turns file renames into folder renames where a whole folder moved: every
/// file the base had in it moved to the same place, the side being changed
/// holds exactly those files there and nothing at the target, and no path
/// left alone this time lies in, at or above either folder (a folder
/// rename would move it, or land on it).
fn coalesce(
    pairs: &[(RemotePath, RemotePath)],
    input: &SyncInput,
    views: &dyn Views,
    target_side: Side,
    make: impl Fn(RemotePath, RemotePath, bool) -> Operation,
) -> Vec<Operation> {
    let left: Vec<&RemotePath> = input
        .unreadable
        .iter()
        .chain(&input.held)
        .chain(&input.ignored)
        .collect();
    let near = |dir: &RemotePath| {
        left.iter()
            .any(|p| *p == dir || p.is_inside(dir) || dir.is_inside(p))
    };
    let mut groups: BTreeMap<(RemotePath, RemotePath), Vec<&(RemotePath, RemotePath)>> =
        BTreeMap::new();
    let mut singles = Vec::new();
    for pair in pairs {
        match folder_mapping(&pair.0, &pair.1) {
            Some(m) => groups.entry(m).or_default().push(pair),
            None => singles.push(pair),
        }
    }
    // "Everything `side` holds inside `dir` moved": the moved paths that
    // `side` holds inside `dir` are all it holds there (a count, so the
    // views can answer it without listing the folder).
    let all_moved = |side: Side, dir: &RemotePath, moved: &BTreeSet<&RemotePath>| {
        let present = moved
            .iter()
            .filter(|p| p.is_inside(dir) && views.contains(side, p))
            .count() as u64;
        views.count_inside(side, dir) == present
    };
    let mut ops = Vec::new();
    let mut folders = Vec::new();
    for ((from_dir, to_dir), members) in groups {
        let moved: BTreeSet<&RemotePath> = members.iter().map(|(f, _)| f).collect();
        let whole = all_moved(Side::Base, &from_dir, &moved)
            && all_moved(target_side, &from_dir, &moved)
            && !views.contains(target_side, &to_dir)
            && !views.holds_inside(target_side, &to_dir)
            && !to_dir.is_inside(&from_dir)
            && !from_dir.is_inside(&to_dir)
            && !near(&from_dir)
            && !near(&to_dir);
        if whole {
            folders.push((from_dir, to_dir, members));
        } else {
            singles.extend(members);
        }
    }
    // Two folders moved into one (or one into the other's target): the
    // first rename would take the target and the second be refused, so
    // their files move one by one.
    let clash = |a: &RemotePath, b: &RemotePath| a == b || a.is_inside(b) || b.is_inside(a);
    for (i, (from_dir, to_dir, members)) in folders.iter().enumerate() {
        let shared = folders
            .iter()
            .enumerate()
            .any(|(j, (_, other, _))| i != j && clash(to_dir, other));
        if shared {
            singles.extend(members.iter().copied());
        } else {
            ops.push(make(from_dir.clone(), to_dir.clone(), true));
        }
    }
    singles.sort();
    ops.extend(
        singles
            .into_iter()
            .map(|(f, t)| make(f.clone(), t.clone(), false)),
    );
    ops
}
