//! MASTER on disk: resolving remote paths without ever leaving the root,
//! staging uploads, and the renames and fsyncs that make changes atomic.
//!
//! A symlink anywhere below the root is refused rather than followed. Every
//! component of a path is checked with `lstat` (for clear errors), and the
//! operations themselves resolve paths with `openat2(RESOLVE_BENEATH |
//! RESOLVE_NO_SYMLINKS)` from a descriptor of the root: reads (downloads,
//! the reconcile's hashing) open the file that way, and installs, renames,
//! deletes, new folders and the removal of emptied folders act on a
//! descriptor of the parent folder opened that way. So a local user who
//! swaps a folder for a link between the check and the act cannot make the
//! server read, write or remove anything outside its root through it. Left
//! path-based: the fsync of a folder (harmless), and the sweep of empty
//! folders at start (before any client is served). All methods are
//! blocking.

use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use distribusync_core::{RESERVED_DIR, RemotePath};
use rustix::fs::{AtFlags, Mode, OFlags, ResolveFlags};
use rustix::io::Errno;

use crate::error::{Result, ServiceError};

/// Staging is spread over this many folders: creating many files in one
/// folder at once serialises on the folder's lock in the kernel (measured:
/// most of the server's CPU time in a batch of small uploads).
const STAGING_SHARDS: u64 = 16;

/// What sits at a path in MASTER.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Missing,
    File,
    Folder,
}

/// How long the part of an interrupted upload is kept for resuming.
const PARTIAL_TTL: std::time::Duration = std::time::Duration::from_secs(24 * 3600);

/// The root folder, its staging area and the kept parts of interrupted
/// uploads.
#[derive(Debug, Clone)]
pub struct Disk {
    root: PathBuf,
    staging: PathBuf,
    partials: PathBuf,
    /// `ROOT/.distribusync/lock`, held (flock) while the server runs: one
    /// server per folder, since a second would empty the first's staging
    /// area and write to the same index with locks of its own.
    _lock: std::sync::Arc<File>,
    /// The root, for resolving paths beneath it.
    root_fd: std::sync::Arc<OwnedFd>,
}

/// Name under which the part of an interrupted upload of `path` (with this
/// size and modified time) is kept: the same file always maps to the same
/// name, a changed file to another.
pub(crate) fn partial_name(path: &RemotePath, size: u64, modified_ns: i64) -> String {
    let mut key = blake3::Hasher::new();
    key.update(path.as_str().as_bytes());
    key.update(&[0]);
    key.update(&size.to_le_bytes());
    key.update(&modified_ns.to_le_bytes());
    let hex = key.finalize().to_hex();
    format!("{}.part", &hex[..32])
}

/// An error of an operation resolved beneath the root: a link met on the
/// way (or a path that would leave the root) is refused as the checks
/// before it would have refused it.
fn beneath_error(path: &RemotePath, e: io::Error) -> ServiceError {
    match e.raw_os_error() {
        Some(libc::ELOOP | libc::EXDEV) => symlink_refused(path.as_str()),
        _ => ServiceError::io(path.to_string(), e),
    }
}

/// Takes the folder's lock, or says which folder another server holds.
fn lock_root(root: &Path, meta: &Path) -> Result<File> {
    let path = meta.join("lock");
    let file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .custom_flags(libc::O_NOFOLLOW)
        .open(&path)
        .map_err(|e| ServiceError::io(path.display().to_string(), e))?;
    match rustix::fs::flock(&file, rustix::fs::FlockOperation::NonBlockingLockExclusive) {
        Ok(()) => Ok(file),
        Err(rustix::io::Errno::WOULDBLOCK) => Err(ServiceError::Conflict(format!(
            "{}: another distribusync server is already serving this folder",
            root.display()
        ))),
        Err(e) => Err(ServiceError::io(path.display().to_string(), e.into())),
    }
}

/// Removes kept parts older than [`PARTIAL_TTL`]; best effort.
fn expire_partials(dir: &Path) {
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        // An entry whose age cannot be read is left alone.
        let old = entry
            .metadata()
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| t.elapsed().ok())
            .is_some_and(|age| age > PARTIAL_TTL);
        if old {
            let _ = fs::remove_file(entry.path());
        }
    }
}

fn symlink_refused(path: &str) -> ServiceError {
    ServiceError::Conflict(format!(
        "{path}: is a symbolic link inside the server's folder; the server does not follow links"
    ))
}

/// fsyncs a directory so a rename or creation inside it is durable.
pub fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

impl Disk {
    /// Opens MASTER at `root`, creating it and `ROOT/.distribusync/staging`;
    /// leftovers of interrupted uploads are removed, except the parts kept
    /// for resuming (`ROOT/.distribusync/partial`) that are less than a day
    /// old.
    ///
    /// # Errors
    /// When the folders cannot be created.
    pub fn open(root: &Path) -> Result<Self> {
        fs::create_dir_all(root).map_err(|e| ServiceError::io(root.display().to_string(), e))?;
        let root = root
            .canonicalize()
            .map_err(|e| ServiceError::io(root.display().to_string(), e))?;
        let meta = root.join(RESERVED_DIR);
        if fs::symlink_metadata(&meta).is_ok_and(|m| m.file_type().is_symlink()) {
            return Err(symlink_refused(RESERVED_DIR));
        }
        fs::create_dir_all(&meta).map_err(|e| ServiceError::io(meta.display().to_string(), e))?;
        let lock = lock_root(&root, &meta)?;
        let staging = meta.join("staging");
        if staging.exists() {
            fs::remove_dir_all(&staging)
                .map_err(|e| ServiceError::io(staging.display().to_string(), e))?;
        }
        for shard in 0..STAGING_SHARDS {
            let dir = staging.join(shard.to_string());
            fs::create_dir_all(&dir).map_err(|e| ServiceError::io(dir.display().to_string(), e))?;
        }
        let partials = meta.join("partial");
        fs::create_dir_all(&partials)
            .map_err(|e| ServiceError::io(partials.display().to_string(), e))?;
        expire_partials(&partials);
        let root_fd = rustix::fs::open(
            &root,
            OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| ServiceError::io(root.display().to_string(), e.into()))?;
        Ok(Self {
            root,
            staging,
            partials,
            _lock: std::sync::Arc::new(lock),
            root_fd: std::sync::Arc::new(root_fd),
        })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// `ROOT/.distribusync`.
    pub fn meta_dir(&self) -> PathBuf {
        self.root.join(RESERVED_DIR)
    }

    /// Opens `rel` (relative to the root) in one step that neither follows
    /// a symlink nor leaves the root, whatever changes on disk meanwhile.
    fn open_beneath(&self, rel: &str, flags: OFlags) -> io::Result<OwnedFd> {
        let flags = flags | OFlags::CLOEXEC;
        let resolve = ResolveFlags::BENEATH | ResolveFlags::NO_SYMLINKS;
        match rustix::fs::openat2(&*self.root_fd, rel, flags, Mode::empty(), resolve) {
            // Kernels before 5.6 (ENOSYS), or sandboxes whose syscall filter
            // does not know openat2 (EPERM): the lstat checks before each
            // call remain.
            Err(Errno::NOSYS | Errno::PERM) => {
                rustix::fs::openat(&*self.root_fd, rel, flags | OFlags::NOFOLLOW, Mode::empty())
            }
            r => r,
        }
        .map_err(Into::into)
    }

    /// The folder holding `path`, opened beneath the root (see
    /// [`Disk::open_beneath`]).
    fn parent_dir(&self, path: &RemotePath) -> io::Result<OwnedFd> {
        self.parent_dir_with(path, OFlags::PATH | OFlags::DIRECTORY)
    }

    fn parent_dir_with(&self, path: &RemotePath, flags: OFlags) -> io::Result<OwnedFd> {
        let rel = path
            .parent()
            .map_or_else(|| ".".to_owned(), |p| p.to_string());
        self.open_beneath(&rel, flags)
    }

    /// Removes the empty folder at `path` through its parent opened beneath
    /// the root; fails (harmlessly) when it is not empty.
    fn remove_empty_dir(&self, path: &RemotePath) -> io::Result<()> {
        let parent = self.parent_dir(path)?;
        rustix::fs::unlinkat(&parent, path.file_name(), AtFlags::REMOVEDIR).map_err(Into::into)
    }

    fn local(&self, path: &RemotePath) -> PathBuf {
        let mut p = self.root.clone();
        p.extend(path.segments());
        p
    }

    /// What is at `path`, refusing symlinks on the way (a missing ancestor
    /// means `Missing`; a file as an ancestor is reported as a conflict).
    pub fn kind(&self, path: &RemotePath) -> Result<Kind> {
        let mut cur = self.root.clone();
        let segs: Vec<&str> = path.segments().collect();
        for (i, seg) in segs.iter().enumerate() {
            cur.push(seg);
            let shown = segs[..=i].join("/");
            let meta = match fs::symlink_metadata(&cur) {
                Ok(m) => m,
                Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Kind::Missing),
                Err(e) => return Err(ServiceError::io(shown, e)),
            };
            let ft = meta.file_type();
            if ft.is_symlink() {
                return Err(symlink_refused(&shown));
            }
            let last = i + 1 == segs.len();
            if last {
                return Ok(if ft.is_dir() {
                    Kind::Folder
                } else {
                    Kind::File
                });
            }
            if !ft.is_dir() {
                return Err(ServiceError::Conflict(format!(
                    "{path}: {shown} is a file, not a folder"
                )));
            }
        }
        Ok(Kind::Missing)
    }

    /// Opens the file at `path` for reading.
    pub fn open_file(&self, path: &RemotePath) -> Result<File> {
        match self.kind(path)? {
            Kind::File => {}
            Kind::Folder => {
                return Err(ServiceError::Conflict(format!("{path}: is a folder")));
            }
            Kind::Missing => return Err(ServiceError::NotFound(path.clone())),
        }
        self.open_beneath(path.as_str(), OFlags::RDONLY)
            .map(File::from)
            .map_err(|e| beneath_error(path, e))
    }

    /// Creates the folders above `path` (refusing files and links in the way).
    fn make_parents(&self, path: &RemotePath) -> Result<PathBuf> {
        let mut cur = self.root.clone();
        for dir in path.ancestors() {
            cur.push(dir.file_name());
            // One lstat per component: the ones before it were just checked.
            let kind = match fs::symlink_metadata(&cur) {
                Ok(m) if m.file_type().is_symlink() => return Err(symlink_refused(dir.as_str())),
                Ok(m) if m.is_dir() => Kind::Folder,
                Ok(_) => Kind::File,
                Err(e) if e.kind() == io::ErrorKind::NotFound => Kind::Missing,
                Err(e) => return Err(ServiceError::io(dir.to_string(), e)),
            };
            match kind {
                Kind::Folder => {}
                Kind::File => {
                    return Err(ServiceError::Conflict(format!(
                        "{path}: {dir} is a file, not a folder"
                    )));
                }
                Kind::Missing => {
                    // Made inside its parent as opened beneath the root, so
                    // a parent swapped for a link meanwhile is refused.
                    let parent = self
                        .parent_dir_with(&dir, OFlags::RDONLY | OFlags::DIRECTORY)
                        .map_err(|e| beneath_error(&dir, e))?;
                    let made =
                        rustix::fs::mkdirat(&parent, dir.file_name(), Mode::from_raw_mode(0o777));
                    match made {
                        Ok(()) => rustix::fs::fsync(&parent)
                            .map_err(|e| ServiceError::io(dir.to_string(), e.into()))?,
                        Err(Errno::EXIST) => {}
                        Err(e) => return Err(ServiceError::io(dir.to_string(), e.into())),
                    }
                }
            }
        }
        Ok(cur)
    }

    /// A fresh staging file for an upload.
    pub fn stage(&self) -> Result<(PathBuf, File)> {
        // Unique within this process; the staging folder is emptied at start.
        static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let p = self
            .staging
            .join((n % STAGING_SHARDS).to_string())
            .join(format!("{n}.part"));
        let f = OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&p)
            .map_err(|e| ServiceError::io("staging file", e))?;
        Ok((p, f))
    }

    /// Bytes kept of an interrupted upload of this file; 0 if none.
    pub fn partial_len(&self, path: &RemotePath, size: u64, modified_ns: i64) -> u64 {
        fs::symlink_metadata(self.partials.join(partial_name(path, size, modified_ns)))
            .map_or(0, |m| m.len())
    }

    /// Takes the kept part of an interrupted upload of this file as a
    /// staging file holding its first `offset` bytes, positioned at the
    /// end. The rename makes the claim exclusive: two clients never resume
    /// into one file. `None` when fewer than `offset` bytes are kept.
    pub fn claim_partial(
        &self,
        path: &RemotePath,
        size: u64,
        modified_ns: i64,
        offset: u64,
    ) -> Result<Option<(PathBuf, File)>> {
        let kept = self.partials.join(partial_name(path, size, modified_ns));
        let (staged, _) = self.stage()?;
        match fs::rename(&kept, &staged) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                let _ = fs::remove_file(&staged);
                return Ok(None);
            }
            Err(e) => {
                let _ = fs::remove_file(&staged);
                return Err(ServiceError::io("kept upload part", e));
            }
        }
        let claimed = (|| {
            let mut f = OpenOptions::new()
                .read(true)
                .write(true)
                .custom_flags(libc::O_NOFOLLOW)
                .open(&staged)?;
            if f.metadata()?.len() < offset {
                return Ok(None);
            }
            f.set_len(offset)?;
            io::Seek::seek(&mut f, io::SeekFrom::Start(offset))?;
            Ok(Some(f))
        })();
        match claimed {
            Ok(Some(f)) => Ok(Some((staged, f))),
            Ok(None) => {
                let _ = fs::remove_file(&staged);
                Ok(None)
            }
            Err(e) => {
                let _ = fs::remove_file(&staged);
                Err(ServiceError::io("kept upload part", e))
            }
        }
    }

    /// Removes the kept part of an upload of this file, if any.
    pub fn drop_partial(&self, path: &RemotePath, size: u64, modified_ns: i64) {
        let _ = fs::remove_file(self.partials.join(partial_name(path, size, modified_ns)));
    }

    /// The folder of kept parts.
    pub fn partials_dir(&self) -> &Path {
        &self.partials
    }

    /// Removes kept parts older than a day (also run at start).
    pub fn expire_partials(&self) {
        expire_partials(&self.partials);
    }

    /// Keeps the staging file of an interrupted upload for resuming,
    /// replacing any older part of the same file.
    pub fn keep_partial(
        &self,
        staged: &Path,
        path: &RemotePath,
        size: u64,
        modified_ns: i64,
    ) -> io::Result<()> {
        fs::rename(
            staged,
            self.partials.join(partial_name(path, size, modified_ns)),
        )
    }

    /// Moves a verified, durable staging file to `path`, atomically
    /// replacing any previous version. Returns the folder that changed: the
    /// caller fsyncs it (once per folder for a group of installs).
    /// `checked` holds folders already made and checked in this group of
    /// installs (the caller's locks keep them as they are), so a group of
    /// files in one folder checks that folder once.
    pub fn install(
        &self,
        staged: &Path,
        path: &RemotePath,
        checked: &mut std::collections::HashSet<PathBuf>,
    ) -> Result<PathBuf> {
        let target = self.local(path);
        match fs::symlink_metadata(&target) {
            Ok(m) if m.file_type().is_symlink() => return Err(symlink_refused(path.as_str())),
            // An empty folder holds nothing the server serves (one made by
            // hand, say): the file takes its place.
            Ok(m) if m.is_dir() && self.remove_empty_dir(path).is_ok() => {}
            Ok(m) if m.is_dir() => {
                return Err(ServiceError::Conflict(format!(
                    "{path}: is a folder; cannot replace it with a file"
                )));
            }
            _ => {}
        }
        self.rename_into((rustix::fs::CWD, staged), path, checked)
    }

    /// Renames `src` (a path relative to `src_dir`) to `path`, creating its
    /// folders. A concurrent delete in the same folder may prune a folder
    /// just created (it holds only a shared lock on it), so a vanished
    /// parent is created again.
    fn rename_into(
        &self,
        (src_dir, src): (BorrowedFd<'_>, &Path),
        path: &RemotePath,
        checked: &mut std::collections::HashSet<PathBuf>,
    ) -> Result<PathBuf> {
        let target = self.local(path);
        let mut attempts = 0;
        loop {
            let parent = match target.parent().filter(|p| checked.contains(*p)) {
                Some(p) => p.to_owned(),
                None => {
                    let p = self.make_parents(path)?;
                    checked.insert(p.clone());
                    p
                }
            };
            let dir = match self.parent_dir(path) {
                Ok(d) => Ok(d),
                Err(e) if e.kind() == io::ErrorKind::NotFound => Err(e),
                Err(e) => return Err(beneath_error(path, e)),
            };
            let renamed = dir.and_then(|dir| {
                rustix::fs::renameat(src_dir, src, &dir, path.file_name()).map_err(Into::into)
            });
            match renamed {
                Ok(()) => return Ok(parent),
                Err(e)
                    if e.kind() == io::ErrorKind::NotFound
                        && attempts < 3
                        && rustix::fs::statat(src_dir, src, AtFlags::SYMLINK_NOFOLLOW).is_ok() =>
                {
                    checked.remove(&parent);
                    attempts += 1;
                }
                Err(e) => return Err(ServiceError::io(path.to_string(), e)),
            }
        }
    }

    /// Flushes every staged file's data with one `syncfs` (for batches of
    /// small files, instead of an fsync each).
    pub fn sync_staging(&self) -> Result<()> {
        let dir = File::open(&self.staging).map_err(|e| ServiceError::io("staging", e))?;
        rustix::fs::syncfs(&dir).map_err(|e| ServiceError::io("staging", e.into()))
    }

    /// Removes the file at `path` and then any folders it leaves empty.
    pub fn remove_file(&self, path: &RemotePath) -> Result<()> {
        if self.kind(path)? != Kind::File {
            return Err(ServiceError::NotFound(path.clone()));
        }
        self.parent_dir(path)
            .and_then(|dir| {
                rustix::fs::unlinkat(&dir, path.file_name(), AtFlags::empty()).map_err(Into::into)
            })
            .map_err(|e| beneath_error(path, e))?;
        self.prune_empty_parents(path)
    }

    /// Renames a file or folder; any file at `to` is replaced.
    pub fn rename(&self, from: &RemotePath, to: &RemotePath) -> Result<()> {
        if self.kind(from)? == Kind::Missing {
            return Err(ServiceError::NotFound(from.clone()));
        }
        if self.kind(to)? == Kind::Folder {
            return Err(ServiceError::Conflict(format!(
                "{to}: is a folder; a rename never replaces a folder"
            )));
        }
        let from_dir = self.parent_dir(from).map_err(|e| beneath_error(from, e))?;
        let parent = self.rename_into(
            (from_dir.as_fd(), Path::new(from.file_name())),
            to,
            &mut Default::default(),
        )?;
        if let Some(from_parent) = self.local(from).parent() {
            sync_dir(from_parent).map_err(|e| ServiceError::io(from.to_string(), e))?;
        }
        sync_dir(&parent).map_err(|e| ServiceError::io(to.to_string(), e))?;
        self.prune_empty_parents(from)
    }

    /// Folders exist only to hold files: when the last file of a folder goes,
    /// the folder goes too (and its parents, if they become empty).
    fn prune_empty_parents(&self, path: &RemotePath) -> Result<()> {
        let mut cur = path.parent();
        let mut changed = self.local(path);
        while let Some(dir) = cur {
            match self.remove_empty_dir(&dir) {
                Ok(()) => changed = self.local(&dir),
                // Not empty (or already gone): stop climbing.
                Err(_) => break,
            }
            cur = dir.parent();
        }
        if let Some(parent) = changed.parent() {
            sync_dir(parent).map_err(|e| ServiceError::io(path.to_string(), e))?;
        }
        Ok(())
    }

    /// Every regular file below the root (outside `.distribusync`), with its
    /// metadata; symlinks and invalid names are reported and skipped.
    pub fn walk(&self) -> Vec<(RemotePath, fs::Metadata)> {
        self.walk_from(self.root.clone(), String::new())
    }

    /// The file at `path`, or every file under the folder at `path`, as
    /// [`Disk::walk`] finds them; nothing if a link is on the way.
    pub fn walk_under(&self, path: &RemotePath) -> Vec<(RemotePath, fs::Metadata)> {
        match self.kind(path) {
            Ok(Kind::File) => fs::symlink_metadata(self.local(path))
                .map(|m| vec![(path.clone(), m)])
                .unwrap_or_default(),
            Ok(Kind::Folder) => self.walk_from(self.local(path), path.to_string()),
            _ => Vec::new(),
        }
    }

    fn walk_from(&self, dir: PathBuf, prefix: String) -> Vec<(RemotePath, fs::Metadata)> {
        let mut out = Vec::new();
        let mut stack = vec![(dir, prefix)];
        while let Some((dir, prefix)) = stack.pop() {
            let entries = match fs::read_dir(&dir) {
                Ok(e) => e,
                Err(e) => {
                    tracing::warn!(dir = %dir.display(), error = %e, "cannot read folder; skipped");
                    continue;
                }
            };
            for entry in entries.flatten() {
                let name = entry.file_name();
                let Some(name) = name.to_str() else {
                    tracing::warn!(name = ?name, "file name is not UTF-8; skipped");
                    continue;
                };
                if prefix.is_empty() && name == RESERVED_DIR {
                    continue;
                }
                let rel = if prefix.is_empty() {
                    name.to_owned()
                } else {
                    format!("{prefix}/{name}")
                };
                let Ok(meta) = entry.metadata() else { continue };
                let ft = meta.file_type();
                if ft.is_dir() {
                    stack.push((entry.path(), rel));
                } else if ft.is_file() {
                    match RemotePath::parse(&rel) {
                        Ok(p) => out.push((p, meta)),
                        Err(e) => {
                            tracing::warn!(error = %e, "file in MASTER has an invalid name; skipped")
                        }
                    }
                } else if ft.is_symlink() {
                    tracing::warn!(path = %rel, "symbolic link in MASTER; not served");
                }
            }
        }
        out
    }

    /// Removes every folder below the root (outside `.distribusync`) that
    /// holds no file, deepest first: folders exist only to hold files, so
    /// one emptied by hand while the server was down goes as it would have
    /// through the service. Returns how many went.
    pub fn prune_empty_folders(&self) -> usize {
        fn prune(dir: &Path, top: bool, removed: &mut usize) -> bool {
            let Ok(entries) = fs::read_dir(dir) else {
                return false;
            };
            let (mut empty, mut removed_here) = (true, false);
            for entry in entries.flatten() {
                let is_dir = entry.file_type().is_ok_and(|t| t.is_dir());
                let reserved = top && entry.file_name() == RESERVED_DIR;
                if is_dir
                    && !reserved
                    && prune(&entry.path(), false, removed)
                    && fs::remove_dir(entry.path()).is_ok()
                {
                    *removed += 1;
                    removed_here = true;
                    continue;
                }
                empty = false;
            }
            if removed_here {
                let _ = sync_dir(dir);
            }
            empty
        }
        let mut removed = 0;
        prune(&self.root, true, &mut removed);
        removed
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> RemotePath {
        RemotePath::parse(s).unwrap()
    }

    /// A folder swapped for a link to outside the root after it was checked
    /// (here: marked checked, as an earlier install in the group would have)
    /// does not lead the rename, the read or the delete outside.
    #[test]
    fn a_folder_swapped_for_a_link_after_its_check_is_not_followed() {
        let tmp = tempfile::tempdir().unwrap();
        let outside = tmp.path().join("outside");
        fs::create_dir(&outside).unwrap();
        fs::write(outside.join("secret"), b"secret").unwrap();
        let disk = Disk::open(&tmp.path().join("MASTER")).unwrap();
        let mut checked = std::collections::HashSet::new();
        let (staged, _) = disk.stage().unwrap();
        disk.install(&staged, &p("docs/a"), &mut checked).unwrap();

        // The swap: docs becomes a link to a folder outside the root.
        fs::remove_file(disk.root().join("docs/a")).unwrap();
        fs::remove_dir(disk.root().join("docs")).unwrap();
        std::os::unix::fs::symlink(&outside, disk.root().join("docs")).unwrap();

        let (staged, _) = disk.stage().unwrap();
        let err = disk.install(&staged, &p("docs/b"), &mut checked);
        assert!(err.is_err(), "installed through a link");
        assert!(!outside.join("b").exists());
        // Past the checks, the operations themselves refuse too.
        let err = disk
            .open_beneath("docs/secret", OFlags::RDONLY)
            .unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::ELOOP));
        let err = disk.parent_dir(&p("docs/secret")).unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::ELOOP));
        assert!(disk.remove_file(&p("docs/secret")).is_err());
        assert_eq!(fs::read(outside.join("secret")).unwrap(), b"secret");
    }
}
