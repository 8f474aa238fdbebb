//! Table and property tests of the planner, with a model executor that
//! applies a plan to in-memory sides.

use std::collections::BTreeMap;

use proptest::prelude::*;

#[allow(unused_imports)]
use super::FileStat;
use super::model::{World, move_prefix};
use super::*;
use crate::{ContentHash, RemotePath};

fn p(s: &str) -> RemotePath {
    RemotePath::parse(s).unwrap()
}

fn h(s: &str) -> ContentHash {
    ContentHash::of(s.as_bytes())
}

fn lf(s: &str) -> LocalFile {
    LocalFile {
        hash: h(s),
        size: s.len() as u64,
        stat: FileStat::default(),
        disk_name: None,
    }
}

fn rf(s: &str, rev: u64) -> RemoteFile {
    RemoteFile {
        revision: rev,
        hash: h(s),
        size: s.len() as u64,
    }
}

fn bf(s: &str, rev: u64) -> BaseFile {
    BaseFile {
        stat: FileStat::default(),
        revision: rev,
        hash: h(s),
        size: s.len() as u64,
    }
}

fn input() -> SyncInput {
    SyncInput {
        host: "hostA".into(),
        stamp: "20261125-101500".into(),
        ..Default::default()
    }
}

#[test]
fn one_side_changed_propagates() {
    let mut i = input();
    i.base.insert(p("a"), bf("v1", 1));
    i.remote.insert(p("a"), rf("v1", 1));
    i.local.insert(p("a"), lf("v2"));
    assert_eq!(
        plan(&i).operations,
        [Operation::Upload {
            path: p("a"),
            if_revision: 1
        }]
    );

    let mut i = input();
    i.base.insert(p("a"), bf("v1", 1));
    i.remote.insert(p("a"), rf("v2", 5));
    i.local.insert(p("a"), lf("v1"));
    assert_eq!(
        plan(&i).operations,
        [Operation::Download {
            path: p("a"),
            remote: rf("v2", 5),
            local_hash: Some(h("v1"))
        }]
    );
}

#[test]
fn identical_changes_on_both_sides_are_no_conflict() {
    let mut i = input();
    i.base.insert(p("a"), bf("v1", 1));
    i.remote.insert(p("a"), rf("same", 7));
    i.local.insert(p("a"), lf("same"));
    let plan = plan(&i);
    assert!(plan.is_in_sync());
    assert_eq!(
        plan.operations,
        [Operation::SetBase {
            path: p("a"),
            base: Some(bf("same", 7))
        }]
    );
}

#[test]
fn different_edits_give_a_conflict_copy() {
    let mut i = input();
    i.base.insert(p("docs/r.txt"), bf("v1", 1));
    i.remote.insert(p("docs/r.txt"), rf("theirs", 4));
    i.local.insert(p("docs/r.txt"), lf("mine"));
    assert_eq!(
        plan(&i).operations,
        [Operation::Conflict {
            path: p("docs/r.txt"),
            copy: p("docs/r.conflict-hostA-20261125-101500.txt"),
            remote: rf("theirs", 4),
            local_hash: h("mine"),
            upload_copy: true,
        }]
    );
}

#[test]
fn modification_beats_deletion() {
    let mut i = input();
    i.base.insert(p("a"), bf("v1", 1));
    i.local.insert(p("a"), lf("edited")); // edited here, deleted there
    assert_eq!(
        plan(&i).operations,
        [Operation::Upload {
            path: p("a"),
            if_revision: 0
        }]
    );

    let mut i = input();
    i.base.insert(p("a"), bf("v1", 1));
    i.remote.insert(p("a"), rf("edited", 3)); // edited there, deleted here
    assert_eq!(
        plan(&i).operations,
        [Operation::Download {
            path: p("a"),
            remote: rf("edited", 3),
            local_hash: None
        }]
    );
}

#[test]
fn a_deletion_wins_over_a_remote_folder_rename() {
    // Deleted here; there, its folder was renamed (and `kept` edited).
    let mut i = input();
    i.base.insert(p("docs/gone.txt"), bf("old", 1));
    i.base.insert(p("docs/kept.txt"), bf("kept", 2));
    i.base.insert(p("other"), bf("x", 3));
    i.local.insert(p("other"), lf("x"));
    i.remote.insert(p("other"), rf("x", 3));
    i.remote.insert(p("papers/gone.txt"), rf("old", 4));
    i.remote.insert(p("papers/kept.txt"), rf("kept, edited", 5));
    assert_eq!(
        plan(&i).operations,
        [
            Operation::DeleteRemote {
                path: p("papers/gone.txt"),
                if_revision: 4
            },
            // Modification beats deletion: the edited file comes back.
            Operation::Download {
                path: p("papers/kept.txt"),
                remote: rf("kept, edited", 5),
                local_hash: None
            },
            Operation::SetBase {
                path: p("docs/gone.txt"),
                base: None
            },
            Operation::SetBase {
                path: p("docs/kept.txt"),
                base: None
            },
        ]
    );
}

#[test]
fn a_deletion_not_yet_settled_is_not_undone_by_a_remote_folder_rename() {
    // Deleted here a moment ago (the deletion waits for the folder to be
    // quiet, so its path is held) when the server's folder rename arrives:
    // the moved file waits with it instead of being downloaded back.
    let mut i = input();
    i.base.insert(p("docs/gone.txt"), bf("old", 1));
    i.base.insert(p("other"), bf("x", 2));
    i.local.insert(p("other"), lf("x"));
    i.remote.insert(p("other"), rf("x", 2));
    i.remote.insert(p("papers/gone.txt"), rf("old", 3));
    i.held.insert(p("docs/gone.txt"));
    assert_eq!(plan(&i).operations, []);
    // The same while a partial pass's view still lists the held path (its
    // deletion event is pending): a held path is not on disk.
    i.local.insert(p("docs/gone.txt"), lf("old"));
    assert_eq!(plan(&i).operations, []);
    i.local.remove(&p("docs/gone.txt"));
    // Once it settles, the deletion wins at the new name.
    i.held.clear();
    assert_eq!(
        plan(&i).operations,
        [
            Operation::DeleteRemote {
                path: p("papers/gone.txt"),
                if_revision: 3
            },
            Operation::SetBase {
                path: p("docs/gone.txt"),
                base: None
            },
        ]
    );
}

#[test]
fn a_local_move_of_a_file_deleted_on_the_server_is_sent_back() {
    // The other direction never deletes a local file the base does not
    // hold at that path: the moved file survives.
    let mut i = input();
    i.base.insert(p("docs/a.txt"), bf("a", 1));
    i.base.insert(p("other"), bf("x", 2));
    i.local.insert(p("other"), lf("x"));
    i.remote.insert(p("other"), rf("x", 2));
    i.local.insert(p("papers/a.txt"), lf("a"));
    assert_eq!(
        plan(&i).operations,
        [
            Operation::Upload {
                path: p("papers/a.txt"),
                if_revision: 0
            },
            Operation::SetBase {
                path: p("docs/a.txt"),
                base: None
            },
        ]
    );
}

#[test]
fn a_file_name_that_differs_is_no_move() {
    // Same content under another name in another folder: not a move,
    // nothing is deleted.
    let mut i = input();
    i.base.insert(p("docs/a.txt"), bf("a", 1));
    i.base.insert(p("other"), bf("x", 2));
    i.local.insert(p("other"), lf("x"));
    i.remote.insert(p("other"), rf("x", 2));
    i.remote.insert(p("papers/b.txt"), rf("a", 3));
    let ops = plan(&i).operations;
    assert!(
        !ops.iter()
            .any(|o| matches!(o, Operation::DeleteRemote { .. })),
        "{ops:?}"
    );
}

#[test]
fn a_folder_renamed_locally_is_one_remote_rename() {
    let mut i = input();
    for n in 0..100 {
        let content = format!("file {n}");
        i.base
            .insert(p(&format!("photos/{n}.jpg")), bf(&content, n + 1));
        i.remote
            .insert(p(&format!("photos/{n}.jpg")), rf(&content, n + 1));
        i.local
            .insert(p(&format!("pictures/2026/{n}.jpg")), lf(&content));
    }
    assert_eq!(
        plan(&i).operations,
        [Operation::RenameRemote {
            from: p("photos"),
            to: p("pictures/2026"),
            folder: true,
            if_revision: None
        }]
    );
}

#[test]
fn a_remote_file_rename_is_a_local_rename() {
    let mut i = input();
    i.base.insert(p("a.txt"), bf("content", 1));
    i.local.insert(p("a.txt"), lf("content"));
    i.local.insert(p("other"), lf("x"));
    i.base.insert(p("other"), bf("x", 2));
    i.remote.insert(p("other"), rf("x", 2));
    i.remote.insert(p("b.txt"), rf("content", 3));
    assert_eq!(
        plan(&i).operations,
        [Operation::RenameLocal {
            from: p("a.txt"),
            to: p("b.txt"),
            folder: false
        }]
    );
}

#[test]
fn an_emptied_folder_stops_sync() {
    let mut i = input();
    for n in ["a", "b"] {
        i.base.insert(p(n), bf(n, 1));
        i.remote.insert(p(n), rf(n, 1));
    }
    let plan = plan(&i);
    assert!(plan.operations.is_empty());
    assert!(plan.refused.unwrap().contains("refusing to delete"));
}

#[test]
fn a_file_rename_carries_the_revision_it_saw() {
    let mut i = input();
    i.base.insert(p("a.txt"), bf("content", 4));
    i.remote.insert(p("a.txt"), rf("content", 4));
    i.local.insert(p("b.txt"), lf("content"));
    i.base.insert(p("x"), bf("x", 1));
    i.remote.insert(p("x"), rf("x", 1));
    i.local.insert(p("x"), lf("x"));
    assert_eq!(
        plan(&i).operations,
        [Operation::RenameRemote {
            from: p("a.txt"),
            to: p("b.txt"),
            folder: false,
            if_revision: Some(4)
        }]
    );
}

/// Found by fuzzing (planner target): folder `f` deleted here and file `b`
/// renamed to `f`, while the server still has `f/e.txt`. A rename of `b`
/// onto the server's folder cannot be applied; `f` travels as a new file
/// after the folder's file is deleted, and the sides converge.
#[test]
fn a_file_renamed_onto_a_folder_the_server_still_has_is_sent_as_a_new_file() {
    let mut w = World::default();
    for (n, (path, content)) in [("b", "bee"), ("f/e.txt", "eee")].into_iter().enumerate() {
        let rev = n as u64 + 1;
        w.base.insert(p(path), bf(content, rev));
        w.remote.insert(p(path), rf(content, rev));
    }
    w.local.insert(p("f"), lf("bee"));
    w.seq = 10;
    let first = plan(&w.input(Mode::TwoWay));
    assert!(
        !first
            .operations
            .iter()
            .any(|op| matches!(op, Operation::RenameRemote { .. })),
        "{first:?}"
    );
    w.apply(&first);
    let second = plan(&w.input(Mode::TwoWay));
    assert!(second.operations.is_empty(), "not converged: {second:?}");
    assert_eq!(w.remote.keys().collect::<Vec<_>>(), [&p("f")]);
    assert_eq!(w.remote[&p("f")].hash, h("bee"));
}

/// Found by fuzzing (planner target): the server renamed folder `f` to
/// `a` while a file `a` is being written here (unreadable this pass). The
/// plan must not name `a`, a path left alone: no folder rename onto it.
#[test]
fn a_remote_folder_rename_onto_a_file_being_written_here_leaves_that_file_alone() {
    let mut i = input();
    i.base.insert(p("f/h"), bf("h", 1));
    i.local.insert(p("f/h"), lf("h"));
    i.remote.insert(p("a/h"), rf("h", 5));
    i.unreadable.insert(p("a"));
    let plan = plan(&i);
    for op in &plan.operations {
        if let Operation::RenameLocal { from, to, .. } = op {
            assert!(
                to != &p("a") && from != &p("a"),
                "{op:?} touches a file left alone"
            );
        }
    }
}

/// Found by fuzzing (planner target): `f/h` and `g/c` both moved here
/// into a new folder `d`. Two folder renames onto `d` cannot both be
/// applied on the server (the second finds `d` taken): the files move one
/// by one, and the sides converge in one pass.
#[test]
fn two_folders_moved_into_one_are_file_renames() {
    let mut w = World::default();
    for (n, (path, content)) in [("f/h", "h"), ("g/c", "c")].into_iter().enumerate() {
        let rev = n as u64 + 1;
        w.base.insert(p(path), bf(content, rev));
        w.remote.insert(p(path), rf(content, rev));
    }
    w.local.insert(p("d/h"), lf("h"));
    w.local.insert(p("d/c"), lf("c"));
    w.seq = 10;
    let first = plan(&w.input(Mode::TwoWay));
    w.apply(&first);
    let second = plan(&w.input(Mode::TwoWay));
    assert!(second.operations.is_empty(), "not converged: {second:?}");
    let remote: Vec<_> = w.remote.keys().map(RemotePath::as_str).collect();
    assert_eq!(remote, ["d/c", "d/h"]);
}

#[test]
fn ignored_paths_are_never_touched_and_do_not_hide_an_emptied_folder() {
    let mut i = input();
    // On the server and in the base, but ignored here: no delete anywhere.
    i.base.insert(p("build/out.o"), bf("o", 1));
    i.remote.insert(p("build/out.o"), rf("o", 1));
    i.remote.insert(p(".DS_Store"), rf("ds", 2));
    i.ignored.insert(p("build/out.o"));
    i.ignored.insert(p(".DS_Store"));
    i.base.insert(p("a"), bf("a", 3));
    i.remote.insert(p("a"), rf("a", 3));
    i.local.insert(p("a"), lf("a"));
    assert!(plan(&i).operations.is_empty());
    // The ignore file alone does not make a folder "not empty".
    let mut i = input();
    for n in ["a", "b"] {
        i.base.insert(p(n), bf(n, 1));
        i.remote.insert(p(n), rf(n, 1));
    }
    i.local.insert(p(IGNORE_FILE), lf("*.log"));
    assert!(plan(&i).refused.is_some());
}

#[test]
fn a_wiped_server_stops_sync_instead_of_emptying_the_folder() {
    let mut i = input();
    for n in ["a", "b"] {
        i.base.insert(p(n), bf(n, 1));
        i.local.insert(p(n), lf(n));
    }
    let refused = plan(&i).refused.unwrap();
    assert!(refused.contains("server has none"), "{refused}");
    // Pushing to it is fine: the folder is the truth.
    i.mode = Mode::Push;
    assert!(plan(&i).refused.is_none());
}

#[test]
fn push_mirrors_and_pull_keeps_local_edits_as_copies() {
    let mut i = input();
    i.mode = Mode::Push;
    i.base.insert(p("a"), bf("v1", 1));
    i.remote.insert(p("a"), rf("server edit", 2));
    i.local.insert(p("a"), lf("v1"));
    i.remote.insert(p("extra"), rf("x", 3));
    i.local.insert(p("keep"), lf("k"));
    assert_eq!(
        plan(&i).operations,
        [
            Operation::DeleteRemote {
                path: p("extra"),
                if_revision: 3
            },
            Operation::Upload {
                path: p("a"),
                if_revision: 2
            },
            Operation::Upload {
                path: p("keep"),
                if_revision: 0
            },
        ]
    );

    let mut i = input();
    i.mode = Mode::Pull;
    i.base.insert(p("a"), bf("v1", 1));
    i.remote.insert(p("a"), rf("server", 2));
    i.local.insert(p("a"), lf("local edit"));
    let ops = plan(&i).operations;
    assert!(
        matches!(
            &ops[..],
            [Operation::Conflict {
                upload_copy: false,
                ..
            }]
        ),
        "{ops:?}"
    );
}

#[test]
fn held_paths_are_left_alone_but_do_not_hide_an_emptied_folder() {
    let mut i = input();
    for n in ["a", "b", "c"] {
        i.base.insert(p(n), bf(n, 1));
        i.remote.insert(p(n), rf(n, 1));
    }
    i.local.insert(p("a"), lf("a"));
    i.local.insert(p("b"), lf("b"));
    i.remote.insert(p("c"), rf("c, edited there", 2));
    i.held.insert(p("c"));
    // c waits (nothing planned for it); a and b are in sync.
    assert!(plan(&i).operations.is_empty());

    // Everything gone locally: held paths are no evidence of content.
    i.local.clear();
    assert!(plan(&i).refused.is_some());
}

#[test]
fn unreadable_files_are_left_alone() {
    let mut i = input();
    i.base.insert(p("locked"), bf("v1", 1));
    i.remote.insert(p("locked"), rf("v1", 1));
    i.unreadable.insert(p("locked"));
    assert!(plan(&i).operations.is_empty());
}

// ---- properties, on the model executor ----

// `g/c` shares a file name with `d/c`: moves between folders happen too.
const NAMES: [&str; 7] = ["a", "b", "d/c", "d/e", "f/g", "f/h", "g/c"];
const CONTENTS: [&str; 4] = ["one", "two", "three", ""];

fn side() -> impl Strategy<Value = BTreeMap<usize, usize>> {
    prop::collection::btree_map(0..NAMES.len(), 0..CONTENTS.len(), 0..NAMES.len())
}

fn world() -> impl Strategy<Value = World> {
    (side(), side(), side()).prop_map(|(base, local_edits, remote_edits)| {
        let mut w = World::default();
        for (i, (&n, &c)) in base.iter().enumerate() {
            w.base.insert(p(NAMES[n]), bf(CONTENTS[c], i as u64 + 1));
            w.local.insert(p(NAMES[n]), lf(CONTENTS[c]));
            w.remote.insert(p(NAMES[n]), rf(CONTENTS[c], i as u64 + 1));
        }
        w.seq = 100;
        // Edits: content index 3 (past the end) on odd keys means delete.
        for (&n, &c) in &local_edits {
            if c == 3 && n % 2 == 1 {
                w.local.remove(&p(NAMES[n]));
            } else {
                w.local.insert(p(NAMES[n]), lf(CONTENTS[c]));
            }
        }
        for (&n, &c) in &remote_edits {
            w.seq += 1;
            if c == 3 && n % 2 == 1 {
                w.remote.remove(&p(NAMES[n]));
            } else {
                w.remote.insert(p(NAMES[n]), rf(CONTENTS[c], w.seq));
            }
        }
        w
    })
}

proptest! {
    #[test]
    fn applying_a_two_way_plan_converges(w in world()) {
        let mut w = w;
        let before_local: BTreeMap<_, _> = w.local.clone();
        let base_before = w.base.clone();
        let first = plan(&w.input(Mode::TwoWay));
        prop_assume!(first.refused.is_none());
        w.apply(&first);
        let second = plan(&w.input(Mode::TwoWay));
        prop_assert!(second.operations.is_empty(), "not converged: {:?}", second.operations);
        prop_assert_eq!(w.local.len(), w.remote.len());
        for (path, l) in &w.local {
            prop_assert_eq!(Some(l.hash), w.remote.get(path).map(|r| r.hash));
        }
        // No unsynced local edit is lost: every local version that differed
        // from the base still exists locally (under its name or a copy's).
        for (path, l) in before_local {
            if base_before.get(&path).map(|b| b.hash) != Some(l.hash) {
                prop_assert!(w.local.values().any(|x| x.hash == l.hash), "lost the edit of {}", path);
            }
        }
    }

    #[test]
    fn no_plan_deletes_or_replaces_an_unsynced_local_edit(w in world()) {
        let plan = plan(&w.input(Mode::TwoWay));
        for op in &plan.operations {
            match op {
                Operation::DeleteLocal { path, local_hash } => {
                    prop_assert_eq!(Some(*local_hash), w.base.get(path).map(|b| b.hash));
                }
                Operation::Download { path, local_hash: Some(hash), .. } => {
                    prop_assert_eq!(Some(*hash), w.base.get(path).map(|b| b.hash));
                }
                _ => {}
            }
        }
    }

    #[test]
    fn push_makes_the_server_a_mirror(w in world()) {
        let mut w = w;
        let plan = plan(&w.input(Mode::Push));
        prop_assume!(plan.refused.is_none());
        let local = w.local.clone();
        w.apply(&plan);
        prop_assert_eq!(&w.local, &local);
        let remote: BTreeMap<_, _> = w.remote.iter().map(|(k, v)| (k.clone(), v.hash)).collect();
        let want: BTreeMap<_, _> = local.iter().map(|(k, v)| (k.clone(), v.hash)).collect();
        prop_assert_eq!(remote, want);
    }

    #[test]
    fn planning_is_deterministic(w in world()) {
        let i = w.input(Mode::TwoWay);
        prop_assert_eq!(plan(&i), plan(&i.clone()));
    }
}

proptest! {
    /// A folder renamed on the server while files in it were deleted here
    /// (and some edited there): the deleted, unedited files are gone
    /// everywhere; edited ones come back under the new name; the rest
    /// moves; the plan converges.
    #[test]
    fn deletions_win_over_a_remote_folder_rename_unless_modified(
        deleted in prop::collection::btree_set(0..5usize, 0..5),
        edited in prop::collection::btree_set(0..5usize, 0..5),
    ) {
        let mut w = World::default();
        for n in 0..5u64 {
            let content = format!("file {n}");
            let path = p(&format!("docs/f{n}"));
            w.base.insert(path.clone(), bf(&content, n + 1));
            w.remote.insert(path.clone(), rf(&content, n + 1));
            if !deleted.contains(&(n as usize)) {
                w.local.insert(path, lf(&content));
            }
        }
        w.base.insert(p("other"), bf("x", 9));
        w.local.insert(p("other"), lf("x"));
        w.remote.insert(p("other"), rf("x", 9));
        w.seq = 20;
        move_prefix(&mut w.remote, &p("docs"), &p("papers"));
        for n in &edited {
            w.seq += 1;
            w.remote.insert(p(&format!("papers/f{n}")), rf(&format!("edited {n}"), w.seq));
        }
        let first = plan(&w.input(Mode::TwoWay));
        prop_assume!(first.refused.is_none());
        w.apply(&first);
        let second = plan(&w.input(Mode::TwoWay));
        prop_assert!(second.operations.is_empty(), "not converged: {:?}", second.operations);
        for n in 0..5usize {
            let path = p(&format!("papers/f{n}"));
            let want = if edited.contains(&n) {
                Some(h(&format!("edited {n}")))
            } else if deleted.contains(&n) {
                None
            } else {
                Some(h(&format!("file {n}")))
            };
            prop_assert_eq!(w.remote.get(&path).map(|r| r.hash), want);
            prop_assert_eq!(w.local.get(&path).map(|l| l.hash), want);
            let old = p(&format!("docs/f{n}"));
            prop_assert!(!w.local.contains_key(&old));
        }
    }
}

/// A synced tree of `folders` x `per` files, the same on every side.
fn synced_tree(folders: usize, per: usize) -> SyncInput {
    let mut i = input();
    for d in 0..folders {
        for f in 0..per {
            let path = p(&format!("d{d}/f{f}.txt"));
            let content = format!("{d}/{f}");
            i.base.insert(path.clone(), bf(&content, 1));
            i.remote.insert(path.clone(), rf(&content, 1));
            i.local.insert(path, lf(&content));
        }
    }
    i
}

#[test]
fn a_focused_plan_is_the_full_plan_when_the_focus_holds_every_change() {
    let focus = |paths: &[&str]| Some(paths.iter().map(|s| p(s)).collect());
    // A file moved to another folder that keeps other files: a file
    // rename, not a folder rename, though only the two paths are planned.
    let mut i = synced_tree(3, 4);
    let moved = i.local.remove(&p("d0/f1.txt")).unwrap();
    i.local.insert(p("n/f1.txt"), moved);
    let full = plan(&i);
    i.focus = focus(&["d0/f1.txt", "n/f1.txt"]);
    assert_eq!(plan(&i), full);
    assert!(matches!(
        full.operations[..],
        [Operation::RenameRemote { folder: false, .. }]
    ));

    // A whole folder renamed: everything in both folders is in focus.
    let mut i = synced_tree(3, 4);
    let files: Vec<_> = i
        .local
        .keys()
        .filter(|k| k.as_str().starts_with("d1/"))
        .cloned()
        .collect();
    let mut names = vec!["d1".to_owned(), "e1".to_owned()];
    for f in files {
        let v = i.local.remove(&f).unwrap();
        let to = f.rebase(&p("d1"), &p("e1")).unwrap();
        names.push(f.to_string());
        names.push(to.to_string());
        i.local.insert(to, v);
    }
    let full = plan(&i);
    let names: Vec<&str> = names.iter().map(String::as_str).collect();
    i.focus = focus(&names);
    assert_eq!(plan(&i), full);
    assert!(matches!(
        full.operations[..],
        [Operation::RenameRemote { folder: true, .. }]
    ));

    // A conflict whose first copy name is taken by a file outside the
    // focus: the copy gets the next free name, as in a full plan.
    let mut i = synced_tree(2, 2);
    i.local.insert(p("d0/f0.txt"), lf("local edit"));
    i.remote.insert(p("d0/f0.txt"), rf("remote edit", 2));
    let first = conflict_name(&p("d0/f0.txt"), &i.host, &i.stamp, |_| false);
    i.local.insert(first.clone(), lf("an older copy"));
    i.remote.insert(first.clone(), rf("an older copy", 1));
    i.base.insert(first, bf("an older copy", 1));
    let full = plan(&i);
    i.focus = focus(&["d0/f0.txt"]);
    assert_eq!(plan(&i), full);
    assert!(matches!(full.operations[..], [Operation::Conflict { .. }]));

    // Nothing changed outside the focus: nothing else is planned, and
    // a change outside it waits (for its own event, or the full rescan).
    let mut i = synced_tree(3, 4);
    i.local.insert(p("d2/f3.txt"), lf("edited"));
    i.focus = focus(&["d0/f0.txt"]);
    assert!(plan(&i).operations.is_empty());
}

/// The paths on which the three views do not all agree (see `plan_with`).
fn disagreeing(i: &SyncInput) -> std::collections::BTreeSet<RemotePath> {
    let keys: std::collections::BTreeSet<&RemotePath> = i
        .local
        .keys()
        .chain(i.remote.keys())
        .chain(i.base.keys())
        .collect();
    keys.into_iter()
        .filter(|p| {
            let agree = match (i.local.get(*p), i.remote.get(*p), i.base.get(*p)) {
                (Some(l), Some(r), Some(b)) => {
                    l.hash == b.hash
                        && r.hash == b.hash
                        && (r.revision, r.size) == (b.revision, b.size)
                }
                _ => false,
            };
            !agree
        })
        .cloned()
        .collect()
}

/// `i`'s maps cut down to the entries of `focus`, planned with the whole
/// views' questions answered by `i`: what a client keeping its views in a
/// database holds in memory for a pass.
fn plan_of_subviews(i: &SyncInput, focus: std::collections::BTreeSet<RemotePath>) -> SyncPlan {
    fn pick<V: Clone>(
        m: &BTreeMap<RemotePath, V>,
        focus: &std::collections::BTreeSet<RemotePath>,
    ) -> BTreeMap<RemotePath, V> {
        focus
            .iter()
            .filter_map(|p| m.get(p).map(|v| (p.clone(), v.clone())))
            .collect()
    }
    let sub = SyncInput {
        local: pick(&i.local, &focus),
        remote: pick(&i.remote, &focus),
        base: pick(&i.base, &focus),
        focus: Some(focus),
        ..i.clone()
    };
    plan_with(&sub, &InputViews(i))
}

proptest! {
    /// A full plan needs in memory only the paths where the views
    /// disagree: planned over those alone, with the whole views' questions
    /// (names taken, whole folders moved, empty sides) asked of the views,
    /// the plan is the same, in every mode.
    #[test]
    fn a_plan_of_the_disagreeing_paths_over_views_is_the_full_plan(w in world()) {
        for mode in [Mode::TwoWay, Mode::Push, Mode::Pull] {
            let i = w.input(mode);
            prop_assert_eq!(plan_of_subviews(&i, disagreeing(&i)), plan(&i), "{:?}", mode);
        }
    }
}

#[test]
fn a_plan_of_the_disagreeing_paths_sees_names_and_folders_outside_them() {
    // A whole folder renamed: only its files disagree, and the views say
    // nothing else was in it, so it is one folder rename.
    let mut i = synced_tree(3, 4);
    let files: Vec<_> = i
        .local
        .keys()
        .filter(|k| k.as_str().starts_with("d1/"))
        .cloned()
        .collect();
    for f in files {
        let v = i.local.remove(&f).unwrap();
        i.local.insert(f.rebase(&p("d1"), &p("e1")).unwrap(), v);
    }
    let full = plan(&i);
    assert!(matches!(
        full.operations[..],
        [Operation::RenameRemote { folder: true, .. }]
    ));
    assert_eq!(plan_of_subviews(&i, disagreeing(&i)), full);

    // All but one file of a folder moved: the one left (in agreement,
    // so not in memory) keeps it from being a folder rename.
    let mut i = synced_tree(2, 3);
    for f in ["d0/f0.txt", "d0/f1.txt"] {
        let v = i.local.remove(&p(f)).unwrap();
        i.local.insert(p(f).rebase(&p("d0"), &p("n")).unwrap(), v);
    }
    let full = plan(&i);
    assert!(matches!(
        full.operations[..],
        [
            Operation::RenameRemote { folder: false, .. },
            Operation::RenameRemote { folder: false, .. }
        ]
    ));
    assert_eq!(plan_of_subviews(&i, disagreeing(&i)), full);

    // A conflict whose first copy name is taken by a file in agreement:
    // the copy gets the next free name.
    let mut i = synced_tree(2, 2);
    i.local.insert(p("d0/f0.txt"), lf("local edit"));
    i.remote.insert(p("d0/f0.txt"), rf("remote edit", 2));
    let first = conflict_name(&p("d0/f0.txt"), &i.host, &i.stamp, |_| false);
    i.local.insert(first.clone(), lf("an older copy"));
    i.remote.insert(first.clone(), rf("an older copy", 1));
    i.base.insert(first.clone(), bf("an older copy", 1));
    let full = plan(&i);
    assert!(matches!(&full.operations[..], [Operation::Conflict { copy, .. }] if *copy != first));
    assert_eq!(plan_of_subviews(&i, disagreeing(&i)), full);

    // An emptied folder: nothing local disagrees but everything does; the
    // views say the folder is empty and the plan refuses.
    let mut i = synced_tree(2, 2);
    i.local.clear();
    let full = plan(&i);
    assert!(full.refused.is_some());
    assert_eq!(plan_of_subviews(&i, disagreeing(&i)), full);
}
