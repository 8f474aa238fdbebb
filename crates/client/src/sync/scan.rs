//! Reading the local folder: which files exist, and their content hashes.
//! A file whose size, mtime and inode match what is already known is not
//! read again.
//!
//! A first pass (nothing known yet) can hand its files on in [`Slice`]s as
//! it goes, through a bounded channel ([`SliceSink`]), so sending overlaps
//! scanning and hashing. Invariant: files hashed and not yet sent (the
//! slice being filled, those in the channel, the one being sent) never
//! exceed `size × (channel capacity + 2)`, counted by [`Held`]; small
//! contents kept for those slices stay within [`KEEP_TOTAL_MAX`] in all.
//!
//! The local view held between passes is an overlay on the merge base
//! (which lives in the state database): `files` holds the files that
//! differ from their base entry (or have none, or a disk name of their
//! own), `deleted` the base paths that are not on disk (or cannot be read
//! now). Invariant: a path in neither is on disk exactly as its base entry
//! records it (same stat, so the same content). A full scan does not put
//! such files in `files` at all; a pass takes what it plans out of the
//! base (`SyncEngine::plan`) and drops what agrees again once it
//! is done (`SyncEngine::compact_local`). So what stays in memory follows
//! what differs, not the size of the tree.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use distribusync_core::{ContentHash, RemotePath, limits};

use super::ignore::IgnoreRules;
use super::state::{BaseEntry, BaseReader, FileStat};

/// A local file as last scanned: the planner's own type, so the view is
/// lent to the planner for a pass instead of copied (with a million files
/// every copy of a view costs a hundred megabytes and a pass over it).
pub type LocalEntry = distribusync_core::sync::LocalFile;

/// The local view of the folder.
#[derive(Debug, Default, Clone)]
pub struct LocalView {
    /// The files that differ from the base (see the module header), plus
    /// the entries a pass took out of the base for the paths it plans.
    pub files: BTreeMap<RemotePath, LocalEntry>,
    /// Base paths the folder does not hold as the base records them: gone
    /// from disk, or unreadable now (see the module header).
    pub deleted: BTreeSet<RemotePath>,
    /// Files that exist but could not be read (or named), or are still being
    /// written; sync leaves them alone and looks again later.
    pub unreadable: BTreeSet<RemotePath>,
    /// True when some file was left alone because it is still being
    /// written: worth another look once it settles.
    pub busy: bool,
    /// The paths (relative, as on disk) of those files: the engine looks
    /// at just them again shortly, whatever else is waiting.
    pub busy_paths: BTreeSet<String>,
    /// Partial downloads (`*.distribusync-part`, relative) a full scan
    /// came across: the engine removes those no download will continue.
    pub parts: Vec<String>,
    /// The folder itself could not be read.
    pub root_error: Option<String>,
    /// How many paths the last scan or refresh looked at on disk (stat-ed
    /// or listed): the work a pass did, for tests and tracing.
    pub examined: usize,
    /// The content of small files this scan read to hash them, with the
    /// stat it was read at: while `files` holds that same stat, the
    /// executor uploads it without reading the file again. Bounded by
    /// [`KEEP_TOTAL_MAX`]; the executor takes what it uses.
    pub contents: HashMap<RemotePath, (FileStat, Arc<[u8]>)>,
    /// The most entries the last scan held at once: the old view's not yet
    /// moved into this one, this one's, those waiting to be hashed and the
    /// hashes of disappeared files. A full rescan of a tree of N files
    /// holds about N, not a second copy of the view.
    pub held_peak: usize,
}

/// Files up to this size (those that travel in upload batches) are kept in
/// memory after a scan reads them...
pub const KEEP_FILE_MAX: u64 = limits::BATCH_FILE_MAX;
/// ...while all kept contents together stay within this.
pub const KEEP_TOTAL_MAX: u64 = 64 << 20;

/// Files of a first pass handed on before the scan has finished: each is
/// in the scan's own view too, which stays the truth for the final plan.
#[derive(Debug, Default)]
pub struct Slice {
    pub files: Vec<(RemotePath, LocalEntry)>,
    /// The contents the scan read of some of them (see
    /// [`LocalView::contents`]).
    pub contents: HashMap<RemotePath, (FileStat, Arc<[u8]>)>,
}

/// How many files a first pass holds hashed but not yet sent, and the most
/// it ever held at once: the measure of its bounded memory.
#[derive(Debug, Default)]
pub struct Held {
    now: std::sync::atomic::AtomicUsize,
    peak: std::sync::atomic::AtomicUsize,
}

impl Held {
    pub fn add(&self, n: usize) {
        use std::sync::atomic::Ordering::SeqCst;
        let now = self.now.fetch_add(n, SeqCst) + n;
        self.peak.fetch_max(now, SeqCst);
    }

    pub fn done(&self, n: usize) {
        use std::sync::atomic::Ordering::SeqCst;
        // Never below zero, whatever the order of calls.
        let _ = self
            .now
            .fetch_update(SeqCst, SeqCst, |v| Some(v.saturating_sub(n)));
    }

    pub fn peak(&self) -> usize {
        self.peak.load(std::sync::atomic::Ordering::SeqCst)
    }
}

/// Where a streaming scan hands its slices (see the module header).
#[derive(Debug)]
pub struct SliceSink {
    pub tx: tokio::sync::mpsc::Sender<Slice>,
    /// Files per slice, at most.
    pub size: usize,
    /// Files in the next slice: the first slices are small, so sending
    /// starts as soon as the scan has found a few hundred files (a first
    /// slice of `size` would keep the pipeline idle until the scan had
    /// hashed that many: most of a 10,000-file tree), then each is twice
    /// the last, up to `size`.
    pub next: usize,
    /// Small contents kept per slice: [`KEEP_TOTAL_MAX`] shared by every
    /// slice that can be alive at once.
    pub keep: u64,
    pub held: Arc<Held>,
}

impl SliceSink {
    /// Hashes what `to_hash` lists and hands the files on (blocking while
    /// the channel is full: the scan waits for the sending).
    fn flush(&mut self, dir: &Path, known: &Known<'_>, view: &mut LocalView, to_hash: &mut ToHash) {
        let batch = std::mem::take(to_hash);
        let listed = batch.files.len();
        if listed == 0 {
            return;
        }
        self.held.add(listed);
        let paths: Vec<RemotePath> = batch.files.iter().map(|f| f.0.clone()).collect();
        batch.finish(dir, known, view, self.keep);
        let mut slice = Slice::default();
        for p in paths {
            if let Some(c) = view.contents.remove(&p) {
                slice.contents.insert(p.clone(), c);
            }
            if let Some(e) = view.files.get(&p) {
                slice.files.push((p, e.clone()));
            }
        }
        // Unreadable or busy files are not sent: no longer held.
        self.held.done(listed - slice.files.len());
        let sent = slice.files.len();
        self.next = (self.next * 2).min(self.size).max(1);
        if sent > 0 && self.tx.blocking_send(slice).is_err() {
            // The engine stopped taking slices: the scan goes on alone.
            self.held.done(sent);
        }
    }
}

/// The ignore file's stat, `None` when there is none.
fn ignore_stat(dir: &Path) -> Option<FileStat> {
    fs::symlink_metadata(dir.join(distribusync_core::sync::IGNORE_FILE))
        .ok()
        .map(|m| stat_of(&m))
}

pub fn stat_of(meta: &fs::Metadata) -> FileStat {
    FileStat {
        size: meta.len(),
        mtime_ns: meta.mtime() * 1_000_000_000 + meta.mtime_nsec(),
        inode: meta.ino(),
    }
}

/// Hashes already known, valid while the stat matches: by path, or by
/// the stat alone (a renamed file keeps its inode, size and mtime).
///
/// Invariant: the previous view is *moved* into the new one as the walk
/// meets each path ([`Known::take`]), so a rescan holds each entry once
/// (the old view shrinks as the new one grows), and what is left in
/// `old` once the walk is done is what disappeared: the only entries a
/// renamed file can take its hash from ([`Known::by_stat`]).
struct Known<'a> {
    old: BTreeMap<RemotePath, LocalEntry>,
    /// A full scan leaves out of the view the files exactly as the base
    /// records them (and notes them in `met`); a refresh takes every file
    /// it meets into the view.
    leave_base: bool,
    /// The paths (a 128-bit digest of each) a full scan met exactly as
    /// the base records them: what is neither in the view nor in `met`
    /// once the walk is done is gone from disk. 16 bytes a file while the
    /// scan runs, none after it.
    met: std::collections::HashSet<u128>,
    /// The base, read from the state database by path (see `state`).
    base: &'a BaseReader,
    /// Hashes by stat of the old view as it was when the walk met its
    /// first young file without a known hash ([`Known::renamed_from`]);
    /// built only then, so a scan meeting none holds no second index.
    young_index: Option<HashMap<FileStat, ContentHash>>,
    /// The base's files directly in the folder the walk is in (its path,
    /// `""` for the top), read with one range query when the walk enters
    /// it ([`Known::enter`]) instead of a look-up per file; an entry is
    /// taken out as the walk meets its file.
    folder: Option<(String, HashMap<RemotePath, BaseEntry>)>,
}

impl<'a> Known<'a> {
    fn new(old: BTreeMap<RemotePath, LocalEntry>, base: &'a BaseReader, leave_base: bool) -> Self {
        Self {
            old,
            base,
            young_index: None,
            folder: None,
            leave_base,
            met: std::collections::HashSet::new(),
        }
    }

    /// The hash known for the file at `path` with `stat`, and whether the
    /// base records exactly that (same stat and content); takes `path`
    /// out of the old view either way (it is still there, so it is no
    /// rename's source).
    fn take(&mut self, path: &RemotePath, stat: &FileStat) -> Option<(ContentHash, bool)> {
        let old = self
            .old
            .remove(path)
            .filter(|e| e.stat == *stat)
            .map(|e| e.hash);
        let parent = path.as_str().rsplit_once('/').map_or("", |(d, _)| d);
        let base = match &mut self.folder {
            Some((dir, files)) if dir == parent => files.remove(path),
            // (A read that fails costs a re-hash, nothing else.)
            _ => self.base.get(path).ok().flatten(),
        };
        let base = base.filter(|b| b.stat == *stat).map(|b| b.hash);
        match (old, base) {
            (Some(o), b) => Some((o, b == Some(o))),
            (None, Some(b)) => Some((b, true)),
            (None, None) => None,
        }
    }

    /// Reads the base's files directly in `dir_rel` (relative, as on
    /// disk), for [`Known::take`]. A folder whose name does not normalize,
    /// or a read that fails, leaves the look-ups to `take`, one per file.
    fn enter(&mut self, dir_rel: &str) {
        self.folder = None;
        let dir = if dir_rel.is_empty() {
            None
        } else {
            match RemotePath::normalized(dir_rel) {
                Ok(d) => Some(d),
                Err(_) => return,
            }
        };
        if let Ok(files) = self.base.files_in(dir.as_ref()) {
            let name = dir.map_or_else(String::new, |d| d.as_str().to_owned());
            self.folder = Some((name, files));
        }
    }

    /// The hash of an old entry with exactly `stat` (inode, size, mtime):
    /// a file met young under a new name with the stat of a file the view
    /// knew is that file renamed (a folder renamed moments after its
    /// files were saved), so its content is known and it need not wait to
    /// settle; otherwise the rename would travel as deletes now and
    /// uploads later.
    fn renamed_from(&mut self, stat: &FileStat) -> Option<ContentHash> {
        let old = &self.old;
        self.young_index
            .get_or_insert_with(|| old.values().map(|e| (e.stat, e.hash)).collect())
            .get(stat)
            .copied()
    }

    /// Hashes by stat of the old entries the walk has not met (once it is
    /// done: the files that disappeared, one of which may have been
    /// renamed to a path being hashed).
    fn by_stat(&self) -> HashMap<FileStat, ContentHash> {
        self.old.values().map(|e| (e.stat, e.hash)).collect()
    }

    /// Every known path inside `dir`; `None` when the base cannot be read.
    fn inside(&self, dir: &RemotePath) -> Option<Vec<RemotePath>> {
        let mut found: Vec<RemotePath> = distribusync_core::path::at_or_inside(&self.old, dir)
            .map(|(p, _)| p)
            .filter(|p| p.is_inside(dir))
            .cloned()
            .collect();
        let base = self.base.inside(dir).ok()?;
        found.extend(base.into_iter().filter(|p| p.is_inside(dir)));
        Some(found)
    }
}

/// Files found whose hash is not known yet: hashed together, in parallel,
/// once the walk is done (or slice by slice, streaming to a [`SliceSink`]).
#[derive(Default)]
struct ToHash {
    files: Vec<(RemotePath, String, FileStat, Option<String>)>,
    paths: std::collections::HashSet<RemotePath>,
}

impl ToHash {
    /// Hashes everything listed (both cores) and adds it to `view`; small
    /// files are read whole and kept (see [`LocalView::contents`]).
    /// Keeps at most `keep` bytes of contents in `view` in all.
    fn finish(self, dir: &Path, known: &Known<'_>, view: &mut LocalView, keep: u64) {
        use rayon::prelude::*;
        // The bound holds across the daemon's partial rescans too: what
        // earlier ones kept (and no pass has sent yet) counts.
        let kept: u64 = view.contents.values().map(|(_, d)| d.len() as u64).sum();
        let mut room = keep.saturating_sub(kept);
        // A file that disappeared under one name and appeared under
        // another with the same stat was renamed: its hash is known.
        let by_stat = if self.files.is_empty() {
            HashMap::new()
        } else {
            known.by_stat()
        };
        view.held_peak = view
            .held_peak
            .max(view.files.len() + known.old.len() + self.files.len() + by_stat.len());
        let mut listed = Vec::with_capacity(self.files.len());
        for (path, rel, stat, disk_name) in self.files {
            match by_stat.get(&stat) {
                Some(&hash) => {
                    view.files.insert(
                        path,
                        LocalEntry {
                            size: stat.size,
                            stat,
                            hash,
                            disk_name,
                        },
                    );
                }
                None => listed.push((path, rel, stat, disk_name)),
            }
        }
        drop(by_stat);
        let listed: Vec<_> = listed
            .into_iter()
            .map(|f| {
                let size = f.2.size;
                let keep = size <= KEEP_FILE_MAX && size <= room;
                if keep {
                    room -= size;
                }
                (f, keep)
            })
            .collect();
        let hashed: Vec<_> = listed
            .into_par_iter()
            .map(|((path, rel, stat, disk_name), keep)| {
                let local = dir.join(&rel);
                let rel_kept = rel;
                let r = if keep {
                    read_small(&local, &stat)
                        .map(|data| {
                            let data: Arc<[u8]> = data.into();
                            (ContentHash::of(&data), data.len() as u64, Some(data))
                        })
                        .map_err(|e| crate::ClientError::local(&local, e))
                } else {
                    crate::files::hash_local(&local).map(|(h, n)| (h, n, None))
                };
                (path, rel_kept, stat, disk_name, r)
            })
            .collect();
        for (path, rel, stat, disk_name, r) in hashed {
            match r {
                // The file changed while it was read: hash what is there
                // next time rather than trust a torn read.
                Ok((hash, n, data)) if n == stat.size => {
                    // Kept only if it may be sent: content equal to the
                    // base's (a file merely touched) never is.
                    let unsent = known
                        .base
                        .get(&path)
                        .ok()
                        .flatten()
                        .is_some_and(|b| b.hash == hash);
                    if let Some(data) = data.filter(|_| !unsent) {
                        view.contents.insert(path.clone(), (stat, data));
                    }
                    view.files.insert(
                        path,
                        LocalEntry {
                            size: stat.size,
                            stat,
                            hash,
                            disk_name,
                        },
                    );
                }
                Ok(_) => {
                    view.unreadable.insert(path);
                    view.busy = true;
                    view.busy_paths.insert(rel);
                }
                Err(e) => {
                    tracing::warn!(%path, error = %e, "cannot read local file; skipped, will retry");
                    view.unreadable.insert(path);
                }
            }
        }
    }
}

/// Reads a small file whole, but only the regular file the walk saw (same
/// inode, never through a symlink swapped in since) and never more than
/// its listed size plus one byte, so a file that grew cannot blow the
/// memory bound (the caller sees the size differ and looks again later).
fn read_small(local: &Path, stat: &FileStat) -> std::io::Result<Vec<u8>> {
    use std::io::Read;
    use std::os::unix::fs::OpenOptionsExt;
    let file = fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW)
        .open(local)?;
    let meta = file.metadata()?;
    if !meta.is_file() || meta.ino() != stat.inode {
        return Err(std::io::Error::other("replaced while being read"));
    }
    let mut data = Vec::with_capacity(stat.size as usize);
    file.take(stat.size + 1).read_to_end(&mut data)?;
    Ok(data)
}

/// Folders listed (and their files stat-ed) at once by a walk.
const LISTED_AT_ONCE: usize = 64;

/// Threads listing folders: more than the cores, because with a cold
/// cache a listing mostly waits for the disk to read inodes, and a disk
/// (a virtual one above all) answers many reads in flight faster than
/// one or two at a time. `None` when the pool cannot be made: the
/// global pool lists instead.
fn listing_pool() -> Option<&'static rayon::ThreadPool> {
    static POOL: std::sync::OnceLock<Option<rayon::ThreadPool>> = std::sync::OnceLock::new();
    POOL.get_or_init(|| {
        rayon::ThreadPoolBuilder::new()
            .num_threads(8)
            .thread_name(|i| format!("ds-list-{i}"))
            .build()
            .ok()
    })
    .as_ref()
}

/// A path's 128-bit digest: what a full scan keeps of each file it met
/// as the base records it (see `Known::met`).
fn digest(path: &RemotePath) -> u128 {
    let h = ContentHash::of(path.as_str().as_bytes());
    let mut b = [0u8; 16];
    b.copy_from_slice(&h.as_bytes()[..16]);
    u128::from_le_bytes(b)
}

/// One entry of a folder listing.
enum Listed {
    Dir(String),
    /// The path, its stat and its modification time.
    File(String, FileStat, Option<SystemTime>),
    /// A partial download of ours.
    Part(String),
}

/// How partial downloads are named (see `files::partial_path`).
pub const PART_SUFFIX: &str = ".distribusync-part";

/// Scans one synced folder.
#[derive(Debug)]
pub struct Scanner {
    pub dir: PathBuf,
    /// The rules in force, and the ignore file's stat they were read from
    /// (`None`: no file). Replaced whole when the file changes; a scan
    /// keeps the rules it started with. (A std lock: never held across
    /// an await.)
    ignore: std::sync::RwLock<(Option<FileStat>, Arc<IgnoreRules>)>,
}

impl Scanner {
    pub fn new(dir: &Path) -> Self {
        Self {
            dir: dir.to_owned(),
            ignore: std::sync::RwLock::new((ignore_stat(dir), Arc::new(IgnoreRules::load(dir)))),
        }
    }

    /// The ignore rules in force.
    pub fn ignore(&self) -> Arc<IgnoreRules> {
        match self.ignore.read() {
            Ok(g) => g.1.clone(),
            Err(poisoned) => poisoned.into_inner().1.clone(),
        }
    }

    /// Reads `.distribusyncignore` again if it changed (or appeared, or
    /// went) since it was last read; true when the rules were replaced.
    pub fn reload_ignore(&self) -> bool {
        let now = ignore_stat(&self.dir);
        let mut g = match self.ignore.write() {
            Ok(g) => g,
            Err(poisoned) => poisoned.into_inner(),
        };
        if g.0 == now {
            return false;
        }
        tracing::info!("ignore rules changed; reloading them");
        *g = (now, Arc::new(IgnoreRules::load(&self.dir)));
        true
    }

    /// The local path of a remote path (using the on-disk name if known).
    pub fn local_path(&self, path: &RemotePath, view: &LocalView) -> PathBuf {
        let rel = view
            .files
            .get(path)
            .and_then(|e| e.disk_name.clone())
            .unwrap_or_else(|| path.to_string());
        self.dir.join(rel)
    }

    /// Scans the whole folder. With `settle`, a file modified less than that
    /// long ago is left alone this time (it may still be being written).
    ///
    /// With a `sink`, files are hashed and handed on slice by slice while
    /// the walk goes on; the view returned holds them all the same, and
    /// no contents.
    ///
    /// The old view is taken by value and its entries move into the new
    /// one as the walk meets them (see [`Known`]).
    pub fn full(
        &self,
        old: LocalView,
        base: &BaseReader,
        settle: Option<Duration>,
        mut sink: Option<SliceSink>,
    ) -> LocalView {
        let mut view = LocalView::default();
        let mut known = Known::new(old.files, base, true);
        let mut to_hash = ToHash::default();
        self.walk(
            "",
            &mut known,
            settle,
            &mut view,
            &mut to_hash,
            sink.as_mut(),
        );
        match &mut sink {
            Some(sink) => sink.flush(&self.dir, &known, &mut view, &mut to_hash),
            None => to_hash.finish(&self.dir, &known, &mut view, KEEP_TOTAL_MAX),
        }
        // What the base holds and the walk did not meet as it records it
        // (nor took into the view) is gone, or unreadable now. (A base
        // that cannot be read is what the walk's look-ups met too: those
        // files were hashed and are in the view; the rest stop the pass.)
        let met = std::mem::take(&mut known.met);
        drop(known);
        let mut deleted = BTreeSet::new();
        let walked = base.each_path(|p| {
            if !view.files.contains_key(p) && !met.contains(&digest(p)) {
                deleted.insert(p.clone());
            }
        });
        if let Err(e) = walked {
            view.root_error = Some(format!(
                "{}: the sync state cannot be read: {e}",
                self.dir.display()
            ));
        }
        view.deleted = deleted;
        view
    }

    /// Re-reads just the given paths (relative, as on disk): files,
    /// folders (recursively) or paths that no longer exist.
    pub fn refresh(
        &self,
        view: &mut LocalView,
        rels: &BTreeSet<String>,
        base: &BaseReader,
        settle: Option<Duration>,
    ) {
        view.busy = false;
        view.busy_paths.clear();
        view.parts.clear();
        view.root_error = None;
        view.examined = 0;
        // Take out what was known at or under each path (no copy of the
        // rest), then read those paths afresh. Found by a range query on
        // the path (a name on disk normalizes to it, folder by folder), so
        // the cost follows the paths, not the size of the tree.
        let mut old = BTreeMap::new();
        // The base's paths there: each is either met again (and in the
        // view) or gone from disk (a deletion marker) after the walk.
        let mut in_base = Vec::new();
        for rel in rels {
            let under = |name: &str| name == rel || name.starts_with(&format!("{rel}/"));
            let gone: Vec<RemotePath> = match RemotePath::normalized(rel) {
                Ok(at) => distribusync_core::path::at_or_inside(&view.files, &at)
                    .filter(|(p, e)| under(e.disk_name.as_deref().unwrap_or(p.as_str())))
                    .map(|(p, _)| p.clone())
                    .collect(),
                // Not a name sync can hold: nothing was known under it.
                Err(_) => Vec::new(),
            };
            for p in gone {
                view.contents.remove(&p);
                if let Some(e) = view.files.remove(&p) {
                    old.insert(p, e);
                }
            }
            // Files as the base records them are not in the view between
            // passes: taken out of the base here, so the walk reuses
            // their hashes (and a rename finds them by stat).
            if let Ok(at) = RemotePath::normalized(rel) {
                match base.inside_entries(&at) {
                    Ok(entries) => {
                        for (p, b) in entries {
                            if !under(p.as_str()) {
                                continue;
                            }
                            if !view.deleted.remove(&p) && !old.contains_key(&p) {
                                old.insert(
                                    p.clone(),
                                    LocalEntry {
                                        size: b.size,
                                        stat: b.stat,
                                        hash: b.hash,
                                        disk_name: None,
                                    },
                                );
                            }
                            in_base.push(p);
                        }
                    }
                    Err(e) => {
                        view.root_error = Some(format!(
                            "{}: the sync state cannot be read: {e}",
                            self.dir.display()
                        ));
                    }
                }
            }
            view.unreadable.retain(|p| !under(p.as_str()));
        }
        view.held_peak = 0;
        let mut known = Known::new(old, base, false);
        let mut to_hash = ToHash::default();
        // A folder's walk covers everything inside it.
        let covered = |rel: &str| {
            rels.iter().any(|r| {
                rel.len() > r.len()
                    && rel.starts_with(r.as_str())
                    && rel.as_bytes()[r.len()] == b'/'
            })
        };
        let rules = self.ignore();
        for rel in rels.iter().filter(|r| !covered(r)) {
            if rules.is_ignored(rel, false) {
                continue;
            }
            view.examined += 1;
            match fs::symlink_metadata(self.dir.join(rel)) {
                Ok(m) if m.is_dir() => self.walk(rel, &mut known, settle, view, &mut to_hash, None),
                // A path from an event is already settled (its writer closed it,
                // or it has been quiet long enough).
                Ok(m) if m.is_file() => {
                    let (stat, modified) = (stat_of(&m), m.modified().ok());
                    self.add_file(rel, stat, modified, &mut known, None, view, &mut to_hash);
                }
                _ => {}
            }
        }
        to_hash.finish(&self.dir, &known, view, KEEP_TOTAL_MAX);
        for p in in_base {
            if !view.files.contains_key(&p) {
                view.deleted.insert(p);
            }
        }
    }

    fn walk(
        &self,
        rel: &str,
        known: &mut Known<'_>,
        settle: Option<Duration>,
        view: &mut LocalView,
        to_hash: &mut ToHash,
        mut sink: Option<&mut SliceSink>,
    ) {
        use rayon::prelude::*;
        // Level by level: the folders of one level are listed and stat-ed
        // in parallel (the syscalls are most of a scan), then their entries
        // are taken in order.
        let mut level = vec![rel.to_owned()];
        while !level.is_empty() {
            let mut next = Vec::new();
            // A few folders at a time, so a wide level of big folders is
            // never all held in memory at once.
            for folders in level.chunks(LISTED_AT_ONCE) {
                let list = || -> Vec<(&String, std::io::Result<Vec<Listed>>)> {
                    folders
                        .par_iter()
                        .map(|dir_rel| (dir_rel, self.list_dir(dir_rel)))
                        .collect()
                };
                let listed = match listing_pool() {
                    Some(pool) => pool.install(list),
                    None => list(),
                };
                for (dir_rel, listing) in listed {
                    let entries = match listing {
                        Ok(e) => e,
                        Err(e) => {
                            let dir = self.dir.join(dir_rel);
                            tracing::warn!(dir = %dir.display(), error = %e, "cannot read folder; skipped this time");
                            if dir_rel.is_empty() {
                                view.root_error = Some(format!("{}: {e}", dir.display()));
                                continue;
                            }
                            // Everything known below it stays as it was: an
                            // unreadable folder is not a deleted one. (Not
                            // knowing what that is stops the pass.)
                            if let Ok(p) = RemotePath::normalized(dir_rel) {
                                match known.inside(&p) {
                                    Some(below) => view.unreadable.extend(below),
                                    None => {
                                        view.root_error = Some(format!(
                                            "{}: {e}; and the sync state cannot be read",
                                            dir.display()
                                        ));
                                    }
                                }
                            }
                            continue;
                        }
                    };
                    view.examined += entries.len();
                    if entries.iter().any(|e| matches!(e, Listed::File(..))) {
                        known.enter(dir_rel);
                    }
                    for entry in entries {
                        match entry {
                            Listed::Dir(sub) => next.push(sub),
                            Listed::File(sub, stat, modified) => {
                                self.add_file(&sub, stat, modified, known, settle, view, to_hash);
                                view.held_peak = view
                                    .held_peak
                                    .max(view.files.len() + known.old.len() + to_hash.files.len());
                                if let Some(sink) = sink.as_deref_mut()
                                    && to_hash.files.len() >= sink.next
                                {
                                    sink.flush(&self.dir, known, view, to_hash);
                                }
                            }
                            Listed::Part(sub) => view.parts.push(sub),
                        }
                    }
                }
            }
            level = next;
        }
    }

    /// The folders and regular files directly in `dir_rel` that are not
    /// ignored, with the files' metadata.
    fn list_dir(&self, dir_rel: &str) -> std::io::Result<Vec<Listed>> {
        let dir = if dir_rel.is_empty() {
            self.dir.clone()
        } else {
            self.dir.join(dir_rel)
        };
        let rules = self.ignore();
        // Everything in an ignored folder is ignored; otherwise each entry
        // is matched alone (its folders are not ignored).
        let dir_ignored = !dir_rel.is_empty() && rules.is_ignored(dir_rel, true);
        let mut out = Vec::new();
        for entry in fs::read_dir(&dir)?.flatten() {
            let name = entry.file_name();
            let Some(name) = name.to_str() else {
                tracing::warn!(dir = %dir.display(), name = ?name, "file name is not UTF-8; not synced");
                continue;
            };
            let sub = if dir_rel.is_empty() {
                name.to_owned()
            } else {
                format!("{dir_rel}/{name}")
            };
            let Ok(meta) = entry.metadata() else { continue };
            let ft = meta.file_type();
            if dir_ignored || rules.is_ignored_entry(&sub, ft.is_dir()) {
                if ft.is_file() && name.ends_with(PART_SUFFIX) {
                    out.push(Listed::Part(sub));
                }
                continue;
            }
            if ft.is_dir() {
                out.push(Listed::Dir(sub));
            } else if ft.is_file() {
                out.push(Listed::File(sub, stat_of(&meta), meta.modified().ok()));
            } else if ft.is_symlink() {
                tracing::debug!(path = %sub, "symbolic link: not synced");
            }
        }
        Ok(out)
    }

    #[allow(clippy::too_many_arguments)]
    fn add_file(
        &self,
        rel: &str,
        stat: FileStat,
        modified: Option<SystemTime>,
        known: &mut Known<'_>,
        settle: Option<Duration>,
        view: &mut LocalView,
        to_hash: &mut ToHash,
    ) {
        let path = match RemotePath::normalized(rel) {
            Ok(p) => p,
            Err(e) => {
                tracing::warn!(error = %e, "local file not synced");
                return;
            }
        };
        let disk_name = (path.as_str() != rel).then(|| rel.to_owned());
        if known.met.contains(&digest(&path)) {
            // Met already as the base records it, under its own name.
            if path.as_str() != rel {
                tracing::warn!(%path, "two local names differ only in Unicode form; the second is not synced");
                view.unreadable.insert(path);
            }
            return;
        }
        if let Some(existing) = view.files.get(&path) {
            if existing.disk_name.as_deref().unwrap_or(path.as_str()) != rel {
                tracing::warn!(%path, "two local names differ only in Unicode form; the second is not synced");
                view.unreadable.insert(path);
            }
            return;
        }
        if to_hash.paths.contains(&path) {
            if !to_hash
                .files
                .iter()
                .any(|(p, r, _, _)| *p == path && r == rel)
            {
                tracing::warn!(%path, "two local names differ only in Unicode form; the second is not synced");
                view.unreadable.insert(path);
            }
            return;
        }
        let taken = known.take(&path, &stat);
        if taken.is_some_and(|(_, as_base)| as_base) && known.leave_base && disk_name.is_none() {
            // Exactly as the base records it: not held (see the module
            // header), only noted as met.
            known.met.insert(digest(&path));
            return;
        }
        let mut hash = taken.map(|(h, _)| h);
        if let Some(window) = settle {
            let young = modified
                .and_then(|m| SystemTime::now().duration_since(m).ok())
                .is_some_and(|age| age < window);
            if young && hash.is_none() {
                hash = known.renamed_from(&stat);
            }
            if young && hash.is_none() {
                view.unreadable.insert(path);
                view.busy = true;
                view.busy_paths.insert(rel.to_owned());
                return;
            }
        }
        match hash {
            Some(hash) => {
                view.files.insert(
                    path,
                    LocalEntry {
                        size: stat.size,
                        stat,
                        hash,
                        disk_name,
                    },
                );
            }
            None => {
                to_hash.paths.insert(path.clone());
                to_hash.files.push((path, rel.to_owned(), stat, disk_name));
            }
        }
    }
}
