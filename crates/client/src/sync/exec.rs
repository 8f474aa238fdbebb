//! Carrying out a [`SyncPlan`]: renames and deletes one by one, transfers
//! concurrently. Every step checks its precondition first (the server's
//! revision through `if_revision`, the local file through its stat), and
//! every completed step is recorded as the new base at once.

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use distribusync_core::sync::{Operation, RemoteFile, SyncPlan};
use distribusync_core::{ContentHash, RemotePath, limits};
use futures::StreamExt;

use super::engine::{PassReport, SyncEngine, SyncError};
use super::scan::{LocalEntry, stat_of};
use super::state::{BaseEntry, FileStat, PAGE, StateError, StateWrite};
use super::traffic::{Direction, Tracker};
use crate::error::ClientError;
use crate::files::{BatchFile, Expected, FileInfo, FilesClient, Progress};

/// Transfers in flight: each yields the results of its files.
type Job = futures::future::BoxFuture<'static, Vec<(RemotePath, Result<Done, ClientError>)>>;

/// The result of one transfer, applied to the engine's views afterwards.
#[derive(Debug)]
enum Done {
    Uploaded {
        path: RemotePath,
        info: FileInfo,
        stat: FileStat,
    },
    Downloaded {
        path: RemotePath,
        info: FileInfo,
        stat: FileStat,
    },
    Conflict {
        path: RemotePath,
        copy: RemotePath,
        copy_upload: Option<FileInfo>,
        copy_stat: FileStat,
        copy_hash: ContentHash,
        info: FileInfo,
        stat: FileStat,
    },
}

fn local_err(path: &Path, e: std::io::Error) -> ClientError {
    ClientError::Local {
        path: path.to_owned(),
        error: e,
    }
}

/// Fails unless the local file is still what the plan saw (`None`: absent).
fn still_as_planned(path: &Path, expected: Option<FileStat>) -> Result<(), ClientError> {
    let now = match fs::symlink_metadata(path) {
        Ok(m) => Some(stat_of(&m)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => return Err(local_err(path, e)),
    };
    if now == expected {
        Ok(())
    } else {
        Err(ClientError::Stale(format!(
            "{}: changed locally since it was scanned; will look again",
            path.display()
        )))
    }
}

/// Refuses a path whose folders below `dir` include a symbolic link (or a
/// file): sync never reads or writes outside the synced folder.
fn no_links_below(dir: &Path, path: &Path) -> Result<(), ClientError> {
    let Ok(rel) = path.strip_prefix(dir) else {
        return Err(ClientError::Stale(format!(
            "{}: outside the synced folder",
            path.display()
        )));
    };
    let mut cur = dir.to_owned();
    let parts: Vec<_> = rel.components().collect();
    for part in &parts[..parts.len().saturating_sub(1)] {
        cur.push(part);
        match fs::symlink_metadata(&cur) {
            Ok(m) if m.is_dir() => {}
            Ok(_) => {
                return Err(ClientError::Stale(format!(
                    "{}: a symbolic link or a file is in the way; not following it",
                    cur.display()
                )));
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(local_err(&cur, e)),
        }
    }
    Ok(())
}

fn stat_path(path: &Path) -> Result<FileStat, ClientError> {
    fs::symlink_metadata(path)
        .map(|m| stat_of(&m))
        .map_err(|e| local_err(path, e))
}

/// Removes folders left empty below `root`, from `path`'s parent upwards.
fn prune_empty_dirs(root: &Path, path: &Path) {
    let mut cur = path.parent();
    while let Some(dir) = cur {
        if dir == root || !dir.starts_with(root) || fs::remove_dir(dir).is_err() {
            break;
        }
        cur = dir.parent();
    }
}

/// Downloads `path` into `local`, or copies it from one of `copies` (local
/// files whose scanned hash is the server's: a copy or rename made on
/// another machine costs no download).
#[allow(clippy::too_many_arguments)]
async fn download(
    client: &FilesClient,
    dir: &Path,
    path: &RemotePath,
    local: PathBuf,
    expected: Option<FileStat>,
    version: &RemoteFile,
    copies: Vec<PathBuf>,
    inline: Option<(FileInfo, Arc<[u8]>)>,
    progress: Arc<dyn Progress>,
) -> Result<(FileInfo, FileStat), ClientError> {
    no_links_below(dir, &local)?;
    // The bytes the change log brought: written as a download would be,
    // with no call to the server (a hundred clients of one change make no
    // hundred downloads).
    if let Some((info, data)) = inline {
        let (check_path, check_dir) = (local.clone(), dir.to_owned());
        // Content received from the server, like a download's.
        let size = data.len() as u64;
        match crate::delta::install_content(
            &local,
            &info,
            data,
            Box::new(move |_| {
                no_links_below(&check_dir, &check_path)?;
                still_as_planned(&check_path, expected)
            }),
        )
        .await
        {
            Ok(meta) => {
                progress.start(size, 0);
                progress.advance(size);
                return Ok((info, stat_of(&meta)));
            }
            // Not that version's bytes after all: fetch them.
            Err(ClientError::Corrupt { .. }) => {}
            Err(e) => return Err(e),
        }
    }
    let copies = copies
        .into_iter()
        .filter(|c| no_links_below(dir, c).is_ok())
        .collect();
    let check_path = local.clone();
    let check_dir = dir.to_owned();
    let (info, meta) = client
        .get_with_copies(
            path,
            &local,
            // The plan's version (from the change log or a listing): the
            // download need not ask the server which version it has.
            Some(Expected {
                hash: version.hash,
                size: version.size,
            }),
            copies,
            progress,
            Box::new(move |_| {
                no_links_below(&check_dir, &check_path)?;
                still_as_planned(&check_path, expected)
            }),
        )
        .await?;
    Ok((info, stat_of(&meta)))
}

impl SyncEngine {
    /// Notes a step that did not go through: reported, and (unless the
    /// server is unreachable, which the engine retries as a whole) looked
    /// at again on the path's own schedule.
    fn failed(&self, report: &mut PassReport, path: &RemotePath, e: &ClientError) {
        tracing::warn!(%path, error = %e, "not synced this time");
        report.failures.push(format!("{path}: {e}"));
        self.set_status(|s| s.errors += 1);
        if e.is_unreachable() {
            report.offline = true;
        } else {
            let rel = self
                .local
                .files
                .get(path)
                .and_then(|e| e.disk_name.clone())
                .unwrap_or_else(|| path.to_string());
            report.failed.push(rel);
        }
    }

    fn local_path(&self, path: &RemotePath) -> PathBuf {
        self.scanner.local_path(path, &self.local)
    }

    fn planned_stat(&self, path: &RemotePath, hash: Option<ContentHash>) -> Option<FileStat> {
        hash.and_then(|_| self.local.files.get(path).map(|e| e.stat))
    }

    fn record(
        &mut self,
        writes: &mut Vec<StateWrite>,
        path: &RemotePath,
        info: &FileInfo,
        stat: FileStat,
    ) {
        let file = RemoteFile {
            revision: info.revision,
            hash: info.hash,
            size: info.size,
        };
        self.set_remote(path, Some(file), info.revision, writes);
        let base = BaseEntry {
            revision: info.revision,
            hash: info.hash,
            size: info.size,
            stat,
        };
        writes.push(StateWrite::Base(path.clone(), Some(base.clone())));
        self.state.stage_base(path, Some(base));
        self.local.files.insert(
            path.clone(),
            LocalEntry {
                size: stat.size,
                stat,
                hash: info.hash,
                disk_name: None,
            },
        );
    }

    fn forget(&mut self, writes: &mut Vec<StateWrite>, path: &RemotePath) {
        self.state.stage_base(path, None);
        writes.push(StateWrite::Base(path.clone(), None));
    }

    fn moved(
        &mut self,
        writes: &mut Vec<StateWrite>,
        from: &RemotePath,
        to: &RemotePath,
    ) -> Result<(), StateError> {
        // A page of the folder at a time, written once the writes fill a
        // page (as `move_remote`): a folder of any size holds about a page.
        let mut after: Option<RemotePath> = None;
        loop {
            let page = self.state.base_inside_page(from, after.as_ref(), PAGE)?;
            for (old, mut b) in page.entries {
                let Some(new) = old.rebase(from, to) else {
                    continue;
                };
                self.state.stage_base(&old, None);
                writes.push(StateWrite::Base(old, None));
                if let Some(r) = self.state.remote_get(&new)? {
                    b.revision = r.revision;
                }
                if let Some(l) = self.local.files.get(&new) {
                    b.stat = l.stat;
                }
                writes.push(StateWrite::Base(new.clone(), Some(b.clone())));
                self.state.stage_base(&new, Some(b));
            }
            if writes.len() >= PAGE {
                self.state.write(writes)?;
                writes.clear();
            }
            match page.next {
                Some(next) => after = Some(next),
                None => return Ok(()),
            }
        }
    }

    pub(super) async fn execute(&mut self, plan: SyncPlan) -> Result<PassReport, SyncError> {
        let mut report = PassReport::default();
        let mut transfers = Vec::new();
        let planned = plan.operations.len() as u64;
        self.set_status(|s| s.pending = planned);
        // A local file whose bytes a download needs under another name (a
        // rename made elsewhere, seen as a delete and a create) is deleted
        // after the transfers, so the download copies it instead of
        // fetching it; unless a download goes inside it (a folder there).
        let downloads: Vec<(RemotePath, ContentHash)> = plan
            .operations
            .iter()
            .filter_map(|op| match op {
                Operation::Download { path, remote, .. } => Some((path.clone(), remote.hash)),
                _ => None,
            })
            .collect();
        let (deferred, operations): (Vec<Operation>, Vec<Operation>) =
            plan.operations.into_iter().partition(|op| match op {
                Operation::DeleteLocal { path, local_hash } => {
                    downloads.iter().any(|(_, h)| h == local_hash)
                        && !downloads.iter().any(|(p, _)| p.is_inside(path))
                }
                _ => false,
            });
        drop(downloads);
        for op in operations {
            let mut writes = Vec::new();
            let result = match op {
                Operation::RenameRemote {
                    from,
                    to,
                    folder,
                    if_revision,
                } => {
                    report.transfers += 1;
                    match self.client.rename(&from, &to, false, if_revision).await {
                        Ok((seq, files)) => {
                            self.move_remote(&from, &to, seq, seq, &mut writes)?;
                            if folder {
                                // A folder moves with whatever is in it now:
                                // take the server's word for its files.
                                self.refresh_remote(&to, &mut writes).await;
                            }
                            self.moved(&mut writes, &from, &to)?;
                            tracing::info!(%from, %to, folder, files, "renamed on server");
                            self.set_status(|s| {
                                s.last_action =
                                    Some(format!("renamed {from} -> {to} on the server"))
                            });
                            Ok(())
                        }
                        Err(e) => {
                            // An incremental pass plans only what is
                            // named: the new name must be looked at again
                            // too, not just the old one.
                            if !e.is_unreachable() {
                                report.failed.push(to.to_string());
                            }
                            Err((from, e))
                        }
                    }
                }
                Operation::RenameLocal { from, to, folder } => {
                    report.transfers += 1;
                    match self.rename_local(&from, &to) {
                        Ok(()) => {
                            self.moved(&mut writes, &from, &to)?;
                            tracing::info!(%from, %to, folder, "renamed locally");
                            self.set_status(|s| {
                                s.last_action = Some(format!("renamed {from} -> {to} here"))
                            });
                            Ok(())
                        }
                        Err(e) => {
                            // An incremental pass plans only what is
                            // named: the new name must be looked at again
                            // too, not just the old one.
                            if !e.is_unreachable() {
                                report.failed.push(to.to_string());
                            }
                            Err((from, e))
                        }
                    }
                }
                Operation::DeleteRemote { path, if_revision } => {
                    report.transfers += 1;
                    match self.client.delete(&path, Some(if_revision)).await {
                        Ok(seq) => {
                            self.set_remote(&path, None, seq, &mut writes);
                            self.forget(&mut writes, &path);
                            tracing::info!(%path, "deleted on server");
                            self.set_status(|s| {
                                s.last_action = Some(format!("deleted {path} on the server"))
                            });
                            Ok(())
                        }
                        Err(ClientError::NotFound(_)) => {
                            self.forget(&mut writes, &path);
                            Ok(())
                        }
                        Err(e) => Err((path, e)),
                    }
                }
                Operation::DeleteLocal { path, local_hash } => {
                    report.transfers += 1;
                    self.delete_local(path, local_hash, &mut writes)
                }
                Operation::SetBase { path, base } => {
                    match base {
                        Some(b) => {
                            let stat = self
                                .local
                                .files
                                .get(&path)
                                .map(|e| e.stat)
                                .unwrap_or_default();
                            let entry = BaseEntry {
                                revision: b.revision,
                                hash: b.hash,
                                size: b.size,
                                stat,
                            };
                            writes.push(StateWrite::Base(path.clone(), Some(entry.clone())));
                            self.state.stage_base(&path, Some(entry));
                        }
                        None => self.forget(&mut writes, &path),
                    }
                    Ok(())
                }
                op => {
                    transfers.push(op);
                    Ok(())
                }
            };
            self.state.write(&writes)?;
            if let Err((path, e)) = result {
                self.failed(&mut report, &path, &e);
            }
        }
        report.transfers += transfers.len() + deferred.len();
        let left = (transfers.len() + deferred.len()) as u64;
        self.set_status(|s| s.pending = left);
        self.run_transfers(transfers, &mut report).await?;
        for op in deferred {
            let Operation::DeleteLocal { path, local_hash } = op else {
                continue;
            };
            let mut writes = Vec::new();
            let result = self.delete_local(path, local_hash, &mut writes);
            self.state.write(&writes)?;
            self.set_status(|s| s.pending = s.pending.saturating_sub(1));
            if let Err((path, e)) = result {
                self.failed(&mut report, &path, &e);
            }
        }
        Ok(report)
    }

    /// Deletes the local file at `path` if it is still what the plan saw.
    fn delete_local(
        &mut self,
        path: RemotePath,
        local_hash: ContentHash,
        writes: &mut Vec<StateWrite>,
    ) -> Result<(), (RemotePath, ClientError)> {
        let local = self.local_path(&path);
        let expected = self.planned_stat(&path, Some(local_hash));
        match still_as_planned(&local, expected)
            .and_then(|()| fs::remove_file(&local).map_err(|e| local_err(&local, e)))
        {
            Ok(()) => {
                prune_empty_dirs(&self.opts.dir, &local);
                self.local.files.remove(&path);
                self.forget(writes, &path);
                tracing::info!(%path, "deleted locally");
                self.set_status(|s| s.last_action = Some(format!("deleted {path} here")));
                Ok(())
            }
            Err(e) => Err((path, e)),
        }
    }

    /// Replaces the remote view under `dir` with the server's listing.
    async fn refresh_remote(&mut self, dir: &RemotePath, writes: &mut Vec<StateWrite>) {
        match self.client.list_all(Some(dir)).await {
            Ok(files) => {
                for f in files {
                    let seq = self.seen.get(&f.path).copied().unwrap_or(0).max(f.revision);
                    self.seen.insert(f.path.clone(), seq);
                    let file = RemoteFile {
                        revision: f.revision,
                        hash: f.hash,
                        size: f.size,
                    };
                    writes.push(StateWrite::Remote(f.path.clone(), Some(file.clone())));
                    self.relisted.insert(f.path.clone());
                    self.state.stage_remote(&f.path, Some(file));
                }
            }
            // The change log brings the same facts a little later.
            Err(e) => tracing::debug!(%dir, error = %e, "could not list a renamed folder"),
        }
    }

    fn rename_local(&mut self, from: &RemotePath, to: &RemotePath) -> Result<(), ClientError> {
        let src = self.local_path(from);
        let dst = self.opts.dir.join(to.as_str());
        no_links_below(&self.opts.dir, &src)?;
        no_links_below(&self.opts.dir, &dst)?;
        if fs::symlink_metadata(&dst).is_ok() {
            return Err(ClientError::Stale(format!(
                "{}: already exists locally",
                dst.display()
            )));
        }
        if let Some(parent) = dst.parent() {
            fs::create_dir_all(parent).map_err(|e| local_err(parent, e))?;
        }
        fs::rename(&src, &dst).map_err(|e| local_err(&src, e))?;
        self.expect_written(&dst, None);
        prune_empty_dirs(&self.opts.dir, &src);
        // Keep the local view in step so the next plan sees the new names.
        let moved: Vec<_> = distribusync_core::path::at_or_inside(&self.local.files, from)
            .filter_map(|(p, _)| p.rebase(from, to).map(|n| (p.clone(), n)))
            .collect();
        for (old, new) in moved {
            if let Some(mut e) = self.local.files.remove(&old) {
                e.disk_name = None;
                self.local.files.insert(new, e);
            }
        }
        // Files there as the base records them move with the base (see
        // `moved`); what was gone at the old names is gone at the new.
        let lo = format!("{from}/");
        let gone: Vec<RemotePath> = self
            .local
            .deleted
            .iter()
            .filter(|p| *p == from || p.as_str().starts_with(&lo))
            .cloned()
            .collect();
        for old in gone {
            self.local.deleted.remove(&old);
            if let Some(new) = old.rebase(from, to) {
                self.local.deleted.insert(new);
            }
        }
        Ok(())
    }

    async fn run_transfers(
        &mut self,
        ops: Vec<Operation>,
        report: &mut PassReport,
    ) -> Result<(), SyncError> {
        // Small uploads travel in batches (shared round trips, fsyncs and
        // index transactions); everything else streams on its own.
        let (uploads, others): (Vec<Operation>, Vec<Operation>) = ops
            .into_iter()
            .partition(|op| matches!(op, Operation::Upload { path, .. } if self.local.files.contains_key(path)));
        let sizes: Vec<u64> = uploads
            .iter()
            .map(|op| match op {
                Operation::Upload { path, .. } => self.local.files[path].stat.size,
                _ => unreachable!("partitioned above"),
            })
            .collect();
        let plan = limits::plan_uploads(&sizes);
        let mut uploads: Vec<Option<Operation>> = uploads.into_iter().map(Some).collect();
        let mut ops = others;
        ops.extend(plan.singles.iter().filter_map(|&i| uploads[i].take()));
        let mut jobs: Vec<Job> = Vec::new();
        // Each transfer's bytes are pending until it moves them (see
        // `traffic`).
        let mut planned_bytes = 0u64;
        for batch in plan.batches {
            let mut items = Vec::with_capacity(batch.len());
            let mut bytes = 0u64;
            for i in batch {
                let Some(Operation::Upload { path, if_revision }) = uploads[i].take() else {
                    continue;
                };
                let Some(entry) = self.local.files.get(&path) else {
                    continue;
                };
                let (stat, hash) = (entry.stat, entry.hash);
                bytes += stat.size;
                // What the scan read, if it is still what the view says.
                let source = match self.local.contents.remove(&path) {
                    Some((at, data)) if at == stat => BatchSource::Memory {
                        local: self.local_path(&path),
                        data,
                        stat,
                        hash,
                    },
                    _ => BatchSource::Disk(self.local_path(&path)),
                };
                items.push((source, path, if_revision));
            }
            let what = match &items[..] {
                [(_, path, _)] => path.to_string(),
                _ => format!("{} small files", items.len()),
            };
            let tracker = Tracker::new(self.status.clone(), what, Direction::Up, bytes);
            planned_bytes += tracker.planned();
            let client = self.client.clone();
            jobs.push(Box::pin(async move {
                let results = upload_batch(client, items, &tracker).await;
                tracker.finish();
                results
            }));
        }
        // Whatever the scan kept and this pass did not use is stale by the
        // next one.
        self.local.contents.clear();
        // Where each download keeps its partial file, so that one left
        // behind (the transfer failed, the server went away) is removed
        // once no download will continue it.
        for op in &ops {
            if let Operation::Download { path, remote, .. }
            | Operation::Conflict { path, remote, .. } = op
            {
                let part = crate::files::partial_path(&self.local_path(path), &remote.hash);
                if let Some(rel) = part
                    .strip_prefix(&self.opts.dir)
                    .ok()
                    .and_then(|r| r.to_str())
                {
                    self.parts.insert(rel.to_owned());
                }
            }
        }
        // Local files by content, for downloads whose bytes are already
        // here under another name (at most a few candidates each).
        let mut by_hash: std::collections::HashMap<ContentHash, Vec<PathBuf>> = ops
            .iter()
            .filter_map(|op| match op {
                Operation::Download { remote, .. } => Some((remote.hash, Vec::new())),
                _ => None,
            })
            .collect();
        if !by_hash.is_empty() {
            for (p, e) in &self.local.files {
                if let Some(list) = by_hash.get_mut(&e.hash)
                    && list.len() < 4
                {
                    list.push(self.local_path(p));
                }
            }
            // Files in sync are not in the view (see `scan`): the base's
            // index by content finds them. (A hint: the copy is checked
            // against the hash as it is made.)
            for (hash, list) in by_hash.iter_mut().filter(|(_, l)| l.len() < 4) {
                for p in self.state.base_with_hash(hash, 4).unwrap_or_default() {
                    if list.len() < 4
                        && !self.local.files.contains_key(&p)
                        && !self.local.deleted.contains(&p)
                    {
                        list.push(self.local_path(&p));
                    }
                }
            }
        }
        // A conflict that fails may have left the copy behind: it is looked
        // at again with its path.
        let copies: std::collections::HashMap<RemotePath, RemotePath> = ops
            .iter()
            .filter_map(|op| match op {
                Operation::Conflict { path, copy, .. } => Some((path.clone(), copy.clone())),
                _ => None,
            })
            .collect();
        let singles = ops
            .into_iter()
            .map(|op| {
                let client = self.client.clone();
                let dir = self.opts.dir.clone();
                let (path, local) = match &op {
                    Operation::Upload { path, .. }
                    | Operation::Download { path, .. }
                    | Operation::Conflict { path, .. } => (path.clone(), self.local_path(path)),
                    _ => unreachable!("only transfers are queued"),
                };
                let planned = match &op {
                    Operation::Download { local_hash, .. } => self.planned_stat(&path, *local_hash),
                    _ => self.local.files.get(&path).map(|e| e.stat),
                };
                let local_copies: Vec<PathBuf> = match &op {
                    Operation::Download { remote, .. } => by_hash
                        .get(&remote.hash)
                        .map(|l| l.iter().filter(|c| **c != local).cloned().collect())
                        .unwrap_or_default(),
                    _ => Vec::new(),
                };
                let local_size = self.local.files.get(&path).map_or(0, |e| e.stat.size);
                let inline = match &op {
                    Operation::Download { remote, .. } => self
                        .inline
                        .remove(&path)
                        .filter(|(i, _)| i.hash == remote.hash && i.revision == remote.revision),
                    _ => None,
                };
                let status = self.status.clone();
                // What goes up (a new version, or a conflict's copy) and
                // what comes down, each with the bytes it plans to move.
                let (up, down) = match &op {
                    Operation::Upload { .. } => (
                        Some(Tracker::new(
                            status,
                            path.to_string(),
                            Direction::Up,
                            local_size,
                        )),
                        None,
                    ),
                    Operation::Download { remote, .. } => (
                        None,
                        Some(Tracker::new(
                            status,
                            path.to_string(),
                            Direction::Down,
                            remote.size,
                        )),
                    ),
                    Operation::Conflict {
                        copy,
                        upload_copy,
                        remote,
                        ..
                    } => (
                        upload_copy.then(|| {
                            Tracker::new(
                                status.clone(),
                                copy.to_string(),
                                Direction::Up,
                                local_size,
                            )
                        }),
                        Some(Tracker::new(
                            status,
                            path.to_string(),
                            Direction::Down,
                            remote.size,
                        )),
                    ),
                    _ => (None, None),
                };
                let (up, down) = (up.map(Arc::new), down.map(Arc::new));
                planned_bytes += up.as_ref().map_or(0, |t| t.planned())
                    + down.as_ref().map_or(0, |t| t.planned());
                let progress = |t: &Option<Arc<Tracker>>| -> Arc<dyn Progress> {
                    match t {
                        Some(t) => t.clone() as Arc<dyn Progress>,
                        None => Arc::new(()),
                    }
                };
                let (up_progress, down_progress) = (progress(&up), progress(&down));
                async move {
                    let r: Result<Done, ClientError> = async {
                        match op {
                            Operation::Upload { path, if_revision } => {
                                let stat = stat_path(&local)?;
                                let info = client
                                    .put(&local, &path, Some(if_revision), up_progress)
                                    .await?;
                                Ok(Done::Uploaded { path, info, stat })
                            }
                            Operation::Download { path, remote, .. } => {
                                let (info, stat) = download(
                                    &client,
                                    &dir,
                                    &path,
                                    local,
                                    planned,
                                    &remote,
                                    local_copies,
                                    inline,
                                    down_progress,
                                )
                                .await?;
                                Ok(Done::Downloaded { path, info, stat })
                            }
                            Operation::Conflict {
                                path,
                                copy,
                                local_hash,
                                upload_copy,
                                remote,
                            } => {
                                // Keep the local edit under the copy's name, then
                                // bring the server's version to the original name.
                                still_as_planned(&local, planned)?;
                                let copy_local = dir.join(copy.as_str());
                                if fs::symlink_metadata(&copy_local).is_ok() {
                                    return Err(ClientError::Stale(format!(
                                        "{}: already exists",
                                        copy_local.display()
                                    )));
                                }
                                fs::rename(&local, &copy_local)
                                    .map_err(|e| local_err(&local, e))?;
                                let copy_stat = stat_path(&copy_local)?;
                                let copy_upload = if upload_copy {
                                    Some(
                                        client
                                            .put(&copy_local, &copy, Some(0), up_progress)
                                            .await?,
                                    )
                                } else {
                                    None
                                };
                                let (info, stat) = download(
                                    &client,
                                    &dir,
                                    &path,
                                    local,
                                    None,
                                    &remote,
                                    Vec::new(),
                                    None,
                                    down_progress,
                                )
                                .await?;
                                Ok(Done::Conflict {
                                    path,
                                    copy,
                                    copy_upload,
                                    copy_stat,
                                    copy_hash: local_hash,
                                    info,
                                    stat,
                                })
                            }
                            _ => unreachable!("only transfers are queued"),
                        }
                    }
                    .await;
                    for t in up.iter().chain(&down) {
                        t.finish();
                    }
                    vec![(path, r)]
                }
            })
            // Built eagerly: the futures own their inputs and borrow nothing.
            .collect::<Vec<_>>();
        jobs.extend(
            singles
                .into_iter()
                .map(|f| Box::pin(f) as futures::future::BoxFuture<'static, _>),
        );
        self.set_status(|s| s.bytes_pending = planned_bytes);
        let parallel = self.opts.parallel.max(1);
        let mut waiting = jobs.len();
        self.set_status(|s| s.in_flight = waiting.min(parallel) as u64);
        let mut results = futures::stream::iter(jobs).buffer_unordered(parallel);
        while let Some(group) = results.next().await {
            // buffer_unordered starts the next job as soon as one ends.
            waiting -= 1;
            let done = group.len() as u64;
            self.set_status(|s| {
                s.in_flight = waiting.min(parallel) as u64;
                s.pending = s.pending.saturating_sub(done);
            });
            let mut writes = Vec::new();
            for (path, result) in group {
                match result {
                    Ok(Done::Uploaded { path, info, stat }) => {
                        tracing::info!(%path, size = info.size, revision = info.revision, "uploaded");
                        self.record(&mut writes, &path, &info, stat);
                        self.set_status(|s| {
                            s.uploaded += 1;
                            s.last_action = Some(format!("uploaded {path}"));
                        });
                    }
                    Ok(Done::Downloaded { path, info, stat }) => {
                        tracing::info!(%path, size = info.size, revision = info.revision, "downloaded");
                        let local = self.local_path(&path);
                        self.expect_written(&local, Some(stat));
                        self.record(&mut writes, &path, &info, stat);
                        self.set_status(|s| {
                            s.downloaded += 1;
                            s.last_action = Some(format!("downloaded {path}"));
                        });
                    }
                    Ok(Done::Conflict {
                        path,
                        copy,
                        copy_upload,
                        copy_stat,
                        copy_hash,
                        info,
                        stat,
                    }) => {
                        tracing::warn!(%path, %copy, "conflict: both sides changed; kept this side's version as a copy");
                        let (local, copy_local) =
                            (self.local_path(&path), self.opts.dir.join(copy.as_str()));
                        self.expect_written(&local, Some(stat));
                        self.expect_written(&copy_local, Some(copy_stat));
                        match copy_upload {
                            Some(ci) => self.record(&mut writes, &copy, &ci, copy_stat),
                            None => {
                                self.local.files.insert(
                                    copy.clone(),
                                    LocalEntry {
                                        size: copy_stat.size,
                                        stat: copy_stat,
                                        hash: copy_hash,
                                        disk_name: None,
                                    },
                                );
                            }
                        }
                        self.record(&mut writes, &path, &info, stat);
                        self.set_status(|s| {
                            s.conflicts += 1;
                            s.last_action =
                                Some(format!("conflict on {path}: local version kept as {copy}"))
                        });
                    }
                    Err(e) => {
                        if let Some(copy) = copies.get(&path)
                            && !e.is_unreachable()
                        {
                            report.failed.push(copy.to_string());
                        }
                        self.failed(report, &path, &e);
                    }
                }
                // A page at a time (see `state::PAGE`): a batch of a
                // thousand files is not held whole in the overlay.
                if writes.len() >= PAGE {
                    self.state.write(&writes)?;
                    writes.clear();
                }
            }
            self.state.write(&writes)?;
        }
        Ok(())
    }
}

/// Where a file of an upload batch comes from.
enum BatchSource {
    /// Read by the scan (with the stat it was read at, and its hash).
    Memory {
        local: PathBuf,
        data: std::sync::Arc<[u8]>,
        stat: FileStat,
        hash: ContentHash,
    },
    Disk(PathBuf),
}

/// Uploads a batch of small files; one result per file.
async fn upload_batch(
    client: FilesClient,
    items: Vec<(BatchSource, RemotePath, u64)>,
    tracker: &Tracker,
) -> Vec<(RemotePath, Result<Done, ClientError>)> {
    tracker.start(tracker.planned(), 0);
    let paths: Vec<RemotePath> = items.iter().map(|(_, p, _)| p.clone()).collect();
    let read = tokio::task::spawn_blocking(move || {
        items
            .into_iter()
            .map(|(source, path, rev)| match source {
                // What the scan read, while the file is still as it was
                // then (else it is read again, or its absence reported).
                BatchSource::Memory {
                    local,
                    data,
                    stat,
                    hash,
                } if stat_path(&local).is_ok_and(|now| now == stat) => Ok((
                    stat,
                    BatchFile {
                        remote: path,
                        if_revision: Some(rev),
                        data,
                        modified: distribusync_proto::from_unix_nanos(stat.mtime_ns),
                        hash: Some(hash),
                    },
                )),
                BatchSource::Memory { local, .. } | BatchSource::Disk(local) => {
                    // Stat before reading, so a file changed meanwhile is
                    // seen as changed.
                    let stat = stat_path(&local)?;
                    let file = crate::files::read_batch_file(&local, path, Some(rev))?;
                    Ok((stat, file))
                }
            })
            .collect::<Vec<Result<(FileStat, BatchFile), ClientError>>>()
    })
    .await;
    let read = match read {
        Ok(r) => r,
        Err(e) => {
            let msg = e.to_string();
            return paths
                .into_iter()
                .map(|p| (p, Err(ClientError::Protocol(msg.clone()))))
                .collect();
        }
    };
    // A file that could not be read is answered with its own error, in
    // its place, by `upload_batch_files`.
    let mut stats = Vec::with_capacity(read.len());
    let mut request = Vec::with_capacity(read.len());
    let sending: u64 = read
        .iter()
        .filter_map(|r| r.as_ref().ok())
        .map(|(_, f)| f.data.len() as u64)
        .sum();
    for r in read {
        let (stat, file) = match r {
            Ok((stat, file)) => (Some(stat), Ok(file)),
            Err(e) => (None, Err(e)),
        };
        stats.push(stat);
        request.push(file);
    }
    match client.upload_batch_files(request).await {
        Ok(results) => {
            // The server took the request: every file read went over.
            tracker.moved(sending);
            paths
                .into_iter()
                .zip(stats)
                .zip(results)
                .map(|((path, stat), r)| {
                    let done = r.and_then(|info| {
                        let stat = stat.ok_or_else(|| {
                            ClientError::Protocol("a file that was not read has a result".into())
                        })?;
                        Ok(Done::Uploaded {
                            path: path.clone(),
                            info,
                            stat,
                        })
                    });
                    (path, done)
                })
                .collect()
        }
        Err(e) => {
            let msg = e.to_string();
            let unreachable = e.is_unreachable();
            paths
                .into_iter()
                .map(|p| {
                    let err = if unreachable {
                        ClientError::Unreachable {
                            addr: client.addr().to_owned(),
                        }
                    } else {
                        ClientError::Server(msg.clone())
                    };
                    (p, Err(err))
                })
                .collect()
        }
    }
}
