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
//! server read, write or remove anything outside its root through it.
//!
//! Nothing in MASTER is reached by its absolute path: every call names a
//! path relative to the root's descriptor (or to a folder opened beneath
//! it), and a relative path too long for one call (a [`RemotePath`] may be
//! 4,096 bytes, the kernel takes at most 4,095 in one call) is walked in
//! pieces. So every accepted path works for every operation whatever the
//! length of the root's own path, and no file can be stored that cannot be
//! read, renamed or removed again. All methods are blocking.

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

/// Longest path one system call takes, in bytes (`PATH_MAX` less the NUL).
const MAX_CALL_PATH: usize = libc::PATH_MAX as usize - 1;

/// A file's size and modified time as the disk holds them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FileMeta {
    pub len: u64,
    /// Nanoseconds since the epoch (0 before it), as the index keeps them.
    pub modified_ns: i64,
}

impl FileMeta {
    /// The size and modified time of an open file (`None` if it cannot be
    /// read).
    pub fn of_open(f: &File) -> Option<Self> {
        rustix::fs::fstat(f).ok().map(|st| Self::of(&st))
    }

    fn of(st: &rustix::fs::Stat) -> Self {
        let ns = i128::from(st.st_mtime) * 1_000_000_000 + i128::from(st.st_mtime_nsec);
        Self {
            len: u64::try_from(st.st_size).unwrap_or(0),
            modified_ns: i64::try_from(ns.max(0)).unwrap_or(i64::MAX),
        }
    }
}

/// The folder `rel` names (`None`: the root), as a relative path for calls.
fn folder_rel(folder: Option<&RemotePath>) -> &str {
    folder.map_or(".", RemotePath::as_str)
}

/// Opens `rel` beneath `dir` in one call that neither follows a symlink
/// nor leaves `dir`.
fn open_at(dir: BorrowedFd<'_>, rel: &str, flags: OFlags) -> io::Result<OwnedFd> {
    let flags = flags | OFlags::CLOEXEC;
    let resolve = ResolveFlags::BENEATH | ResolveFlags::NO_SYMLINKS;
    match rustix::fs::openat2(dir, rel, flags, Mode::empty(), resolve) {
        // Kernels before 5.6 (ENOSYS), or sandboxes whose syscall filter
        // does not know openat2 (EPERM): the lstat checks before each
        // call remain.
        Err(Errno::NOSYS | Errno::PERM) => {
            rustix::fs::openat(dir, rel, flags | OFlags::NOFOLLOW, Mode::empty())
        }
        r => r,
    }
    .map_err(Into::into)
}

/// Times every file system holds are within this many seconds of the
/// epoch (32-bit seconds: December 1901 to January 2038); a file set to a
/// time outside is read back, since some file systems clamp silently.
const SURELY_HELD_SECS: i64 = i32::MAX as i64;

/// Sets the modified time of `file` (a staged upload of `path`) to `t`,
/// refusing a time its file system cannot hold (it would keep another,
/// and the index and the disk would disagree).
///
/// # Errors
/// InvalidArgument for a time the file system cannot hold; IO errors.
pub fn set_modified(file: &File, path: &RemotePath, t: std::time::SystemTime) -> Result<()> {
    // Whole seconds since the epoch, negative before it.
    let seconds = |t: std::time::SystemTime| distribusync_proto::timestamp(t).seconds;
    let secs = seconds(t);
    let refused = || {
        ServiceError::InvalidArgument(format!(
            "{}: modified time {secs} seconds after 1970-01-01 is outside what the server's \
             file system can hold",
            path.shown()
        ))
    };
    match file.set_modified(t) {
        Ok(()) => {}
        Err(e) if matches!(e.raw_os_error(), Some(libc::EINVAL | libc::EOVERFLOW)) => {
            return Err(refused());
        }
        Err(e) => return Err(ServiceError::io("staging file", e)),
    }
    if !(-SURELY_HELD_SECS..=SURELY_HELD_SECS).contains(&secs) {
        let held = file
            .metadata()
            .and_then(|m| m.modified())
            .map_err(|e| ServiceError::io("staging file", e))?;
        // Whole seconds: a clamp changes them; a coarse clock alone does not.
        let held_secs = seconds(held);
        if held_secs != secs {
            return Err(refused());
        }
    }
    Ok(())
}

/// What a walk of MASTER found: the files, and the folders it could not
/// read. What the index holds under those is unknown, not gone: nothing
/// there may be recorded as deleted.
#[derive(Debug, Default)]
pub struct Walk {
    pub files: Vec<(RemotePath, FileMeta)>,
    /// Folders (`None`: the root) or files that could not be read.
    pub unread: Vec<Option<RemotePath>>,
}

impl Walk {
    /// True when the walk cannot tell whether `path` exists: it is, or is
    /// inside, something that could not be read.
    pub fn unknown(&self, path: &RemotePath) -> bool {
        self.unread
            .iter()
            .any(|u| u.as_ref().is_none_or(|d| path == d || path.is_inside(d)))
    }
}

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
    /// Concurrent batches share their `syncfs` (see `flush`).
    flushes: std::sync::Arc<super::flush::FlushGroup>,
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
        "{}: is a symbolic link inside the server's folder; the server does not follow links",
        distribusync_core::echo(path)
    ))
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
            flushes: std::sync::Arc::default(),
        })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// `ROOT/.distribusync`.
    pub fn meta_dir(&self) -> PathBuf {
        self.root.join(RESERVED_DIR)
    }

    /// Opens `rel` (relative to the root) so that no symlink is followed
    /// and nothing outside the root is reached, whatever changes on disk
    /// meanwhile. A path longer than one call takes is opened a piece of
    /// folders at a time, each beneath the last.
    fn open_beneath(&self, rel: &str, flags: OFlags) -> io::Result<OwnedFd> {
        let mut dir: Option<OwnedFd> = None;
        let mut rest = rel;
        while rest.len() > MAX_CALL_PATH {
            // Cut at the last '/' that leaves a piece short enough ('/' is
            // ASCII, so the cut is on a character boundary).
            let cut = rest.as_bytes()[..=MAX_CALL_PATH]
                .iter()
                .rposition(|&b| b == b'/')
                .ok_or_else(|| io::Error::from_raw_os_error(libc::ENAMETOOLONG))?;
            let at = dir.as_ref().map_or(self.root_fd.as_fd(), AsFd::as_fd);
            let next = open_at(at, &rest[..cut], OFlags::PATH | OFlags::DIRECTORY)?;
            dir = Some(next);
            rest = &rest[cut + 1..];
        }
        let at = dir.as_ref().map_or(self.root_fd.as_fd(), AsFd::as_fd);
        open_at(at, rest, flags)
    }

    /// `lstat` of `rel` (relative to the root): links are reported, not
    /// followed.
    fn lstat(&self, rel: &str) -> io::Result<rustix::fs::Stat> {
        if rel.len() <= MAX_CALL_PATH {
            return rustix::fs::statat(&*self.root_fd, rel, AtFlags::SYMLINK_NOFOLLOW)
                .map_err(Into::into);
        }
        let (parent, name) = rel
            .rsplit_once('/')
            .ok_or_else(|| io::Error::from_raw_os_error(libc::ENAMETOOLONG))?;
        let dir = self.open_beneath(parent, OFlags::PATH | OFlags::DIRECTORY)?;
        rustix::fs::statat(&dir, name, AtFlags::SYMLINK_NOFOLLOW).map_err(Into::into)
    }

    /// The modification time (ns since the epoch) of folder `path` (`None`:
    /// the root) on disk: when an entry was last added, removed or renamed
    /// in it. `None` when it is no folder (or not reachable without a link).
    pub fn folder_modified_ns(&self, path: Option<&RemotePath>) -> Option<i64> {
        let st = match path {
            None => rustix::fs::fstat(&*self.root_fd).ok()?,
            Some(p) => {
                if self.kind(p).ok()? != Kind::Folder {
                    return None;
                }
                self.lstat(p.as_str()).ok()?
            }
        };
        let ns = i128::from(st.st_mtime) * 1_000_000_000 + i128::from(st.st_mtime_nsec);
        i64::try_from(ns).ok()
    }

    /// fsyncs a folder (`None`: the root) so a rename or creation inside it
    /// is durable.
    pub fn sync_folder(&self, folder: Option<&RemotePath>) -> Result<()> {
        let rel = folder_rel(folder);
        self.open_beneath(rel, OFlags::RDONLY | OFlags::DIRECTORY)
            .and_then(|d| rustix::fs::fsync(&d).map_err(Into::into))
            .map_err(|e| ServiceError::io(rel.to_owned(), e))
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

    /// What is at `path`, refusing symlinks on the way (a missing ancestor
    /// means `Missing`; a file as an ancestor is reported as a conflict).
    pub fn kind(&self, path: &RemotePath) -> Result<Kind> {
        let mut prefixes = path.ancestors();
        prefixes.push(path.clone());
        let count = prefixes.len();
        for (i, cur) in prefixes.into_iter().enumerate() {
            let shown = cur.as_str();
            let meta = match self.lstat(shown) {
                Ok(m) => m,
                Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Kind::Missing),
                Err(e) => return Err(ServiceError::io(shown, e)),
            };
            let ft = rustix::fs::FileType::from_raw_mode(meta.st_mode);
            if ft.is_symlink() {
                return Err(symlink_refused(shown));
            }
            let last = i + 1 == count;
            if last {
                return Ok(if ft.is_dir() {
                    Kind::Folder
                } else {
                    Kind::File
                });
            }
            if !ft.is_dir() {
                return Err(ServiceError::Conflict(format!(
                    "{}: {} is a file, not a folder",
                    path.shown(),
                    distribusync_core::echo(shown)
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
                return Err(ServiceError::Conflict(format!(
                    "{}: is a folder",
                    path.shown()
                )));
            }
            Kind::Missing => return Err(ServiceError::NotFound(path.clone())),
        }
        self.open_beneath(path.as_str(), OFlags::RDONLY)
            .map(File::from)
            .map_err(|e| beneath_error(path, e))
    }

    /// Creates the folders above `path` (refusing files and links in the way).
    fn make_parents(&self, path: &RemotePath) -> Result<Option<RemotePath>> {
        for dir in path.ancestors() {
            // One lstat per component: the ones before it were just checked.
            let kind = match self
                .lstat(dir.as_str())
                .map(|m| rustix::fs::FileType::from_raw_mode(m.st_mode))
            {
                Ok(t) if t.is_symlink() => return Err(symlink_refused(dir.as_str())),
                Ok(t) if t.is_dir() => Kind::Folder,
                Ok(_) => Kind::File,
                Err(e) if e.kind() == io::ErrorKind::NotFound => Kind::Missing,
                Err(e) => return Err(ServiceError::io(dir.to_string(), e)),
            };
            match kind {
                Kind::Folder => {}
                Kind::File => {
                    return Err(ServiceError::Conflict(format!(
                        "{}: {} is a file, not a folder",
                        path.shown(),
                        dir.shown()
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
        Ok(path.parent())
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
        checked: &mut std::collections::HashSet<Option<RemotePath>>,
    ) -> Result<Option<RemotePath>> {
        let target = self
            .lstat(path.as_str())
            .map(|m| rustix::fs::FileType::from_raw_mode(m.st_mode));
        match target {
            Ok(t) if t.is_symlink() => return Err(symlink_refused(path.as_str())),
            // An empty folder holds nothing the server serves (one made by
            // hand, say): the file takes its place.
            Ok(t) if t.is_dir() && self.remove_empty_dir(path).is_ok() => {}
            Ok(t) if t.is_dir() => {
                return Err(ServiceError::Conflict(format!(
                    "{}: is a folder; cannot replace it with a file",
                    path.shown()
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
        checked: &mut std::collections::HashSet<Option<RemotePath>>,
    ) -> Result<Option<RemotePath>> {
        let mut attempts = 0;
        loop {
            let parent = match Some(path.parent()).filter(|p| checked.contains(p)) {
                Some(p) => p,
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
    /// small files, instead of an fsync each), shared with the batches
    /// staged meanwhile (see `flush`): returns once what the caller
    /// wrote before it called is durable.
    pub fn sync_staging(&self) -> Result<()> {
        self.flushes.flush(|| {
            let dir = File::open(&self.staging).map_err(|e| ServiceError::io("staging", e))?;
            rustix::fs::syncfs(&dir).map_err(|e| ServiceError::io("staging", e.into()))
        })
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
        // The file is gone: a failure past this point must not make it
        // look present (the caller records the delete), so it is logged.
        if let Err(e) = self.prune_empty_parents(path) {
            tracing::error!(%path, error = %e, "removed, but its folder could not be flushed or pruned");
        }
        Ok(())
    }

    /// Renames a file or folder; any file at `to` is replaced.
    pub fn rename(&self, from: &RemotePath, to: &RemotePath) -> Result<()> {
        if self.kind(from)? == Kind::Missing {
            return Err(ServiceError::NotFound(from.clone()));
        }
        if self.kind(to)? == Kind::Folder {
            return Err(ServiceError::Conflict(format!(
                "{}: is a folder; a rename never replaces a folder",
                to.shown()
            )));
        }
        let from_dir = self.parent_dir(from).map_err(|e| beneath_error(from, e))?;
        let parent = self.rename_into(
            (from_dir.as_fd(), Path::new(from.file_name())),
            to,
            &mut Default::default(),
        )?;
        // The rename is done: a failure past this point must not make it
        // look undone (the caller records it), so it is logged.
        let flushed = self.sync_folder(from.parent().as_ref()).and_then(|()| {
            if parent == from.parent() {
                Ok(())
            } else {
                self.sync_folder(parent.as_ref())
            }
        });
        if let Err(e) = flushed.and_then(|()| self.prune_empty_parents(from)) {
            tracing::error!(%from, %to, error = %e, "renamed, but the folders could not be flushed or pruned");
        }
        Ok(())
    }

    /// Folders exist only to hold files: when the last file of a folder goes,
    /// the folder goes too (and its parents, if they become empty).
    fn prune_empty_parents(&self, path: &RemotePath) -> Result<()> {
        let mut cur = path.parent();
        // The folder that lost an entry last.
        let mut changed = path.parent();
        while let Some(dir) = cur {
            match self.remove_empty_dir(&dir) {
                Ok(()) => changed = dir.parent(),
                // Not empty (or already gone): stop climbing.
                Err(_) => break,
            }
            cur = dir.parent();
        }
        self.sync_folder(changed.as_ref())
    }

    /// Every regular file below the root (outside `.distribusync`), with its
    /// size and modified time; symlinks and invalid names are reported and
    /// skipped, folders that cannot be read are reported in
    /// [`Walk::unread`].
    pub fn walk(&self) -> Walk {
        self.walk_from(None)
    }

    /// The file at `path`, or every file under the folder at `path`, as
    /// [`Disk::walk`] finds them; nothing if a link is on the way.
    pub fn walk_under(&self, path: &RemotePath) -> Walk {
        let unread = || Walk {
            files: Vec::new(),
            unread: vec![Some(path.clone())],
        };
        match self.kind(path) {
            Ok(Kind::File) => match self.lstat(path.as_str()) {
                Ok(m) => Walk {
                    files: vec![(path.clone(), FileMeta::of(&m))],
                    unread: Vec::new(),
                },
                Err(_) => unread(),
            },
            Ok(Kind::Folder) => self.walk_from(Some(path.clone())),
            // A link (not served) or a file where a folder should be.
            Ok(Kind::Missing) | Err(ServiceError::Conflict(_)) => Walk::default(),
            Err(_) => unread(),
        }
    }

    /// The names in the folder `rel` (relative to the root), each with its
    /// `lstat`, read through a descriptor opened beneath the root.
    fn read_folder(&self, rel: &str) -> io::Result<Vec<(String, rustix::fs::Stat)>> {
        let fd = self.open_beneath(rel, OFlags::RDONLY | OFlags::DIRECTORY)?;
        let mut dir = rustix::fs::Dir::new(fd)?;
        let mut out = Vec::new();
        while let Some(entry) = dir.read() {
            let entry = entry?;
            let name = entry.file_name();
            if name == c"." || name == c".." {
                continue;
            }
            let Ok(name_str) = name.to_str() else {
                tracing::warn!(folder = rel, name = ?name, "file name is not UTF-8; skipped");
                continue;
            };
            match rustix::fs::statat(dir.fd()?, name, AtFlags::SYMLINK_NOFOLLOW) {
                Ok(st) => out.push((name_str.to_owned(), st)),
                // Gone since it was listed.
                Err(_) => continue,
            }
        }
        Ok(out)
    }

    fn walk_from(&self, top: Option<RemotePath>) -> Walk {
        let mut out = Walk::default();
        // Folders still to read, by relative path: one descriptor open at a
        // time, however deep or wide the tree.
        let mut stack = vec![top];
        while let Some(dir) = stack.pop() {
            let rel = folder_rel(dir.as_ref());
            let entries = match self.read_folder(rel) {
                Ok(e) => e,
                Err(e) => {
                    tracing::warn!(dir = rel, error = %e, "cannot read folder; skipped");
                    out.unread.push(dir);
                    continue;
                }
            };
            for (name, st) in entries {
                if dir.is_none() && name == RESERVED_DIR {
                    continue;
                }
                let rel = match &dir {
                    None => name,
                    Some(d) => format!("{d}/{name}"),
                };
                let ft = rustix::fs::FileType::from_raw_mode(st.st_mode);
                if ft.is_dir() || ft.is_file() {
                    match RemotePath::parse(&rel) {
                        Ok(p) if ft.is_dir() => stack.push(Some(p)),
                        Ok(p) => out.files.push((p, FileMeta::of(&st))),
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
        /// True when `dir` is empty (after pruning inside it).
        fn prune(disk: &Disk, dir: Option<&RemotePath>, removed: &mut usize) -> bool {
            let Ok(entries) = disk.read_folder(folder_rel(dir)) else {
                return false;
            };
            let (mut empty, mut removed_here) = (true, false);
            for (name, st) in entries {
                let is_dir = rustix::fs::FileType::from_raw_mode(st.st_mode).is_dir();
                let reserved = dir.is_none() && name == RESERVED_DIR;
                let child = match dir {
                    None => RemotePath::parse(&name),
                    Some(d) => RemotePath::parse(&format!("{d}/{name}")),
                };
                if is_dir
                    && !reserved
                    && let Ok(child) = child
                    && prune(disk, Some(&child), removed)
                    && disk.remove_empty_dir(&child).is_ok()
                {
                    *removed += 1;
                    removed_here = true;
                    continue;
                }
                empty = false;
            }
            if removed_here {
                let _ = disk.sync_folder(dir);
            }
            empty
        }
        let mut removed = 0;
        prune(self, None, &mut removed);
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

    /// Paths longer than one call takes are opened in pieces; a link in
    /// either piece is refused as in a short path.
    #[test]
    fn a_link_in_a_path_longer_than_one_call_is_not_followed() {
        let tmp = tempfile::tempdir().unwrap();
        let outside = tmp.path().join("outside");
        fs::create_dir(&outside).unwrap();
        fs::write(outside.join("x".repeat(240)), b"secret").unwrap();
        let disk = Disk::open(&tmp.path().join("MASTER")).unwrap();
        // 15 folders of 240 bytes, made through descriptors (their whole
        // path is past what one call takes).
        let mut dir = rustix::fs::open(
            disk.root(),
            OFlags::RDONLY | OFlags::DIRECTORY,
            Mode::empty(),
        )
        .unwrap();
        let mut segs = Vec::new();
        for i in 0..15u8 {
            let name = char::from(b'a' + i).to_string().repeat(240);
            rustix::fs::mkdirat(&dir, name.as_str(), Mode::from_raw_mode(0o755)).unwrap();
            dir = rustix::fs::openat(
                &dir,
                name.as_str(),
                OFlags::RDONLY | OFlags::DIRECTORY,
                Mode::empty(),
            )
            .unwrap();
            segs.push(name);
        }
        // In the first piece: a link standing for the last folder.
        let link = "l".repeat(240);
        rustix::fs::symlinkat(&outside, &dir, link.as_str()).unwrap();
        let through_link = format!("{}/{link}/{}", segs.join("/"), "x".repeat(240));
        assert_eq!(through_link.len(), 4096);
        let err = disk
            .open_beneath(&through_link, OFlags::RDONLY)
            .unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::ELOOP));
        assert!(disk.kind(&p(&through_link)).is_err());
        assert!(disk.remove_file(&p(&through_link)).is_err());

        // In the last piece: the file itself is a link.
        let real = "r".repeat(240);
        rustix::fs::mkdirat(&dir, real.as_str(), Mode::from_raw_mode(0o755)).unwrap();
        let last = rustix::fs::openat(
            &dir,
            real.as_str(),
            OFlags::RDONLY | OFlags::DIRECTORY,
            Mode::empty(),
        )
        .unwrap();
        let secret = outside.join("x".repeat(240));
        rustix::fs::symlinkat(&secret, &last, "y".repeat(240).as_str()).unwrap();
        let to_link = format!("{}/{real}/{}", segs.join("/"), "y".repeat(240));
        let err = disk.open_beneath(&to_link, OFlags::RDONLY).unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::ELOOP));
        assert!(disk.open_file(&p(&to_link)).is_err());
        // A real file there is read.
        let f = rustix::fs::openat(
            &last,
            "z".repeat(240).as_str(),
            OFlags::WRONLY | OFlags::CREATE,
            Mode::from_raw_mode(0o644),
        )
        .unwrap();
        rustix::io::write(&f, b"deep").unwrap();
        let real_file = format!("{}/{real}/{}", segs.join("/"), "z".repeat(240));
        let mut read = String::new();
        io::Read::read_to_string(&mut disk.open_file(&p(&real_file)).unwrap(), &mut read).unwrap();
        assert_eq!(read, "deep");
        assert_eq!(fs::read(&secret).unwrap(), b"secret");
    }

    /// What is in or under a folder a walk could not read is unknown, not
    /// gone; everything else is known.
    #[test]
    fn a_walk_knows_nothing_under_what_it_could_not_read() {
        let walk = Walk {
            files: Vec::new(),
            unread: vec![Some(p("trips/2026")), Some(p("f"))],
        };
        for unknown in ["trips/2026", "trips/2026/a", "trips/2026/x/y", "f"] {
            assert!(walk.unknown(&p(unknown)), "{unknown}");
        }
        for known in ["trips/a", "trips/2026-old/a", "trips", "f0", "g/f"] {
            assert!(!walk.unknown(&p(known)), "{known}");
        }
        let root = Walk {
            files: Vec::new(),
            unread: vec![None],
        };
        assert!(root.unknown(&p("anything/at/all")));
        assert!(!Walk::default().unknown(&p("a")));
    }
}
