//! [`DavFs`]: the store as `dav-server` sees a file system, through one
//! caller's [`View`].
//!
//! Invariants: every change goes through the same [`View`] methods as the
//! gRPC service (PUT is an [`Upload`](crate::store::Upload): streamed,
//! hashed, fsynced, installed atomically, recorded in the change log), so a
//! sync client sees a WebDAV change as any other. URL paths are relative to
//! the caller's root: a token's folder appears as `/`. A file's ETag is
//! its content hash and revision, so it changes with every new version and
//! If-Match can be checked again, atomically, at commit (`if_revision`).

use std::io::SeekFrom;
use std::time::{Duration, SystemTime};

use bytes::{Buf, Bytes};
use dav_server::davpath::DavPath;
use dav_server::fs::{
    DavDirEntry, DavFile, DavFileSystem, DavMetaData, DavProp, FsError, FsFuture, FsResult,
    FsStream, OpenOptions, ReadDirMeta,
};
use distribusync_core::{ContentHash, RemotePath, Revision};
use futures::FutureExt;
use http::StatusCode;

use super::Said;
use crate::ServiceError;
use crate::store::{Entry, FileRecord, FolderTimes, Upload, UploadHeader, View};

/// Bytes read per step of a COPY.
const COPY_STEP: usize = 1 << 20;

/// The file system one request works on.
#[derive(Debug, Clone)]
pub(crate) struct DavFs {
    pub view: View,
    /// From a PUT's If-Match: checked again when the upload commits.
    pub if_revision: Option<Revision>,
    /// Where a refusal's reason goes, for the answer's body.
    pub said: Said,
    /// A LOCK request: a write it opens is the empty file a LOCK of an
    /// unmapped URL makes.
    pub lock_request: bool,
    /// The dead properties of the children of the folder this request last
    /// listed, read in one query: a PROPFIND asks for every child's.
    /// Only for a PROPFIND (which changes nothing, and sees one moment);
    /// `None` for every other method.
    pub child_props: Option<ChildPropsCache>,
}

/// See [`DavFs::child_props`].
pub(crate) type ChildPropsCache = std::sync::Arc<std::sync::Mutex<Option<ChildProps>>>;

/// The dead properties of the paths directly in `dir`, by path.
#[derive(Debug)]
pub(crate) struct ChildProps {
    dir: Option<RemotePath>,
    by_path: std::collections::HashMap<String, Vec<crate::store::DeadProp>>,
}

/// The ETag of a file: its content hash (shortened) and revision.
pub(crate) fn etag_of(f: &FileRecord) -> String {
    format!("{}-{}", &f.hash.to_hex()[..16], f.revision)
}

/// The revision an ETag made by [`etag_of`] names.
pub(crate) fn revision_of_etag(tag: &str) -> Option<Revision> {
    let tag = tag.trim().trim_start_matches("W/").trim_matches('"');
    tag.rsplit_once('-')?.1.parse().ok()
}

/// The store's path for a URL path (already percent-decoded) relative to
/// the caller's root `prefix`; `None`: the server's root.
///
/// # Errors
/// The rule the path breaks (it is echoed, bounded).
pub(crate) fn remote_path(
    decoded: &[u8],
    prefix: Option<&RemotePath>,
) -> Result<Option<RemotePath>, ServiceError> {
    let s = std::str::from_utf8(decoded).map_err(|_| {
        ServiceError::InvalidArgument(format!(
            "{}: not UTF-8",
            distribusync_core::echo(&String::from_utf8_lossy(decoded))
        ))
    })?;
    let rel = s.trim_start_matches('/');
    let rel = rel.strip_suffix('/').unwrap_or(rel);
    let full = match (prefix, rel.is_empty()) {
        (None, true) => return Ok(None),
        (Some(p), true) => return Ok(Some(p.clone())),
        (None, false) => rel.to_owned(),
        (Some(p), false) => format!("{p}/{rel}"),
    };
    // macOS sends names in NFD: stored, like everything, in NFC.
    Ok(Some(RemotePath::normalized(&full)?))
}

/// [`fs_error`], telling `said` the reason (which names the path, the
/// limit and the numbers) for the answer's body. Not for a missing path:
/// `dav-server` asks about paths that may not exist on its way to
/// success, and its answer for one that must is its own.
fn told(said: &Said, e: ServiceError) -> FsError {
    if !matches!(e, ServiceError::NotFound(_)) {
        said.say(None, e.to_string());
    }
    fs_error(e)
}

/// The status class of a store error, logged with its full text (which
/// names the path and the cause).
fn fs_error(e: ServiceError) -> FsError {
    let mapped = match &e {
        ServiceError::NotFound(_) => FsError::NotFound,
        ServiceError::AlreadyExists(_) | ServiceError::Conflict(_) => FsError::Exists,
        ServiceError::OutsidePrefix { .. }
        | ServiceError::InvalidPath(_)
        | ServiceError::InvalidArgument(_)
        | ServiceError::RevisionMismatch { .. } => FsError::Forbidden,
        ServiceError::TooLarge { .. } => FsError::TooLarge,
        ServiceError::NoSpace { .. } => FsError::InsufficientStorage,
        _ => FsError::GeneralFailure,
    };
    if mapped == FsError::NotFound {
        tracing::debug!(error = %e, "webdav");
    } else {
        tracing::warn!(error = %e, "webdav request failed");
    }
    mapped
}

/// Metadata of a file or of a folder (`file: None`).
#[derive(Debug, Clone)]
struct Meta {
    file: Option<FileRecord>,
    folder: FolderTimes,
}

impl Meta {
    fn file(f: FileRecord) -> Self {
        Self {
            file: Some(f),
            folder: FolderTimes::default(),
        }
    }

    fn folder(times: FolderTimes) -> Self {
        Self {
            file: None,
            folder: times,
        }
    }
}

fn time_of(ns: i64) -> SystemTime {
    if ns >= 0 {
        SystemTime::UNIX_EPOCH + Duration::from_nanos(ns as u64)
    } else {
        SystemTime::UNIX_EPOCH - Duration::from_nanos(ns.unsigned_abs())
    }
}

impl DavMetaData for Meta {
    fn len(&self) -> u64 {
        self.file.as_ref().map_or(0, |f| f.size)
    }

    fn modified(&self) -> FsResult<SystemTime> {
        match &self.file {
            Some(f) => Ok(time_of(f.modified_ns)),
            // A date unknown is left out rather than shown as 1970.
            None => self
                .folder
                .modified()
                .map(time_of)
                .ok_or(FsError::NotImplemented),
        }
    }

    fn created(&self) -> FsResult<SystemTime> {
        match &self.file {
            // The store keeps no creation time of a file.
            Some(_) => Err(FsError::NotImplemented),
            None => self
                .folder
                .created()
                .map(time_of)
                .ok_or(FsError::NotImplemented),
        }
    }

    fn is_dir(&self) -> bool {
        self.file.is_none()
    }

    fn etag(&self) -> Option<String> {
        self.file.as_ref().map(etag_of)
    }
}

struct DirEntry {
    name: String,
    meta: Meta,
}

impl DavDirEntry for DirEntry {
    fn name(&self) -> Vec<u8> {
        self.name.as_bytes().to_vec()
    }

    fn metadata(&'_ self) -> FsFuture<'_, Box<dyn DavMetaData>> {
        let m: Box<dyn DavMetaData> = Box::new(self.meta.clone());
        Box::pin(std::future::ready(Ok(m)))
    }
}

/// Tells the kernel a GET reads `file` from start to end: it reads ahead
/// in bigger steps, and starts on the first read of the body at once, so
/// the disk works while the headers go out (rclone downloading 1,000
/// files of 1 MiB from a flushed cache waits on the disk, not on us).
/// Advice only: a failure changes nothing.
fn advise_sequential_read(file: &std::fs::File) {
    use rustix::fs::{Advice, fadvise};
    let _ = fadvise(file, 0, None, Advice::Sequential);
    let _ = fadvise(
        file,
        0,
        std::num::NonZeroU64::new(super::READ_STEP as u64),
        Advice::WillNeed,
    );
}

/// A file opened for GET: exactly the version that was current when it
/// was opened, whatever replaces it meanwhile.
#[derive(Debug)]
struct ReadFile {
    record: FileRecord,
    file: std::sync::Arc<std::fs::File>,
    pos: u64,
}

/// A file being written by PUT.
#[derive(Debug)]
struct WriteFile {
    said: Said,
    upload: Option<Upload>,
    record: Option<FileRecord>,
    /// Body frames (often a few KiB each) gathered into steps of
    /// [`WRITE_STEP`] before they go to the upload's writer.
    pending: Vec<u8>,
}

/// Bytes handed to the upload's writer at once.
const WRITE_STEP: usize = 1 << 20;

impl DavFile for ReadFile {
    fn metadata(&'_ mut self) -> FsFuture<'_, Box<dyn DavMetaData>> {
        let m: Box<dyn DavMetaData> = Box::new(Meta::file(self.record.clone()));
        Box::pin(std::future::ready(Ok(m)))
    }

    fn write_buf(&'_ mut self, _buf: Box<dyn Buf + Send>) -> FsFuture<'_, ()> {
        Box::pin(std::future::ready(Err(FsError::Forbidden)))
    }

    fn write_bytes(&'_ mut self, _buf: Bytes) -> FsFuture<'_, ()> {
        Box::pin(std::future::ready(Err(FsError::Forbidden)))
    }

    fn read_bytes(&'_ mut self, count: usize) -> FsFuture<'_, Bytes> {
        async move {
            let (file, pos) = (self.file.clone(), self.pos);
            let data = tokio::task::spawn_blocking(move || {
                use std::os::unix::fs::FileExt;
                let mut buf = vec![0u8; count];
                let mut filled = 0;
                while filled < count {
                    match file.read_at(&mut buf[filled..], pos + filled as u64) {
                        Ok(0) => break,
                        Ok(n) => filled += n,
                        Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                        Err(e) => return Err(e),
                    }
                }
                buf.truncate(filled);
                Ok(buf)
            })
            .await
            .map_err(|_| FsError::GeneralFailure)?
            .map_err(|e| fs_error(ServiceError::io("reading a file", e)))?;
            self.pos += data.len() as u64;
            Ok(Bytes::from(data))
        }
        .boxed()
    }

    fn seek(&'_ mut self, pos: SeekFrom) -> FsFuture<'_, u64> {
        let size = self.record.size as i128;
        let new = match pos {
            SeekFrom::Start(n) => n as i128,
            SeekFrom::End(d) => size + d as i128,
            SeekFrom::Current(d) => self.pos as i128 + d as i128,
        };
        let r = u64::try_from(new).map_err(|_| FsError::GeneralFailure);
        if let Ok(n) = r {
            self.pos = n;
        }
        Box::pin(std::future::ready(r))
    }

    fn flush(&'_ mut self) -> FsFuture<'_, ()> {
        Box::pin(std::future::ready(Ok(())))
    }
}

impl DavFile for WriteFile {
    fn metadata(&'_ mut self) -> FsFuture<'_, Box<dyn DavMetaData>> {
        let r: FsResult<Box<dyn DavMetaData>> = match &self.record {
            Some(f) => Ok(Box::new(Meta::file(f.clone()))),
            None => Err(FsError::NotFound),
        };
        Box::pin(std::future::ready(r))
    }

    fn write_buf(&'_ mut self, mut buf: Box<dyn Buf + Send>) -> FsFuture<'_, ()> {
        let mut data = Vec::with_capacity(buf.remaining());
        while buf.has_remaining() {
            let chunk = buf.chunk();
            data.extend_from_slice(chunk);
            let n = chunk.len();
            buf.advance(n);
        }
        self.write_bytes(Bytes::from(data))
    }

    fn write_bytes(&'_ mut self, buf: Bytes) -> FsFuture<'_, ()> {
        async move {
            if self.pending.is_empty() && buf.len() >= WRITE_STEP {
                let upload = self.upload.as_mut().ok_or(FsError::GeneralFailure)?;
                let said = &self.said;
                return upload
                    .write(Vec::from(buf))
                    .await
                    .map_err(|e| told(said, e));
            }
            self.pending.extend_from_slice(&buf);
            if self.pending.len() >= WRITE_STEP {
                self.push_pending().await?;
            }
            Ok(())
        }
        .boxed()
    }

    fn read_bytes(&'_ mut self, _count: usize) -> FsFuture<'_, Bytes> {
        Box::pin(std::future::ready(Err(FsError::NotImplemented)))
    }

    fn seek(&'_ mut self, _pos: SeekFrom) -> FsFuture<'_, u64> {
        // A partial PUT (Content-Range) would change a file in place; the
        // store only installs whole versions.
        Box::pin(std::future::ready(Err(FsError::NotImplemented)))
    }

    fn flush(&'_ mut self) -> FsFuture<'_, ()> {
        async move {
            // dav-server flushes once, at the end of the body (also when
            // the body came short: then verify refuses it and nothing is
            // installed).
            self.push_pending().await?;
            let Some(upload) = self.upload.take() else {
                return Ok(());
            };
            let record = upload.finish().await.map_err(|e| told(&self.said, e))?;
            self.record = Some(record);
            Ok(())
        }
        .boxed()
    }
}

impl WriteFile {
    async fn push_pending(&mut self) -> FsResult<()> {
        if self.pending.is_empty() {
            return Ok(());
        }
        let data = std::mem::replace(&mut self.pending, Vec::with_capacity(WRITE_STEP));
        let upload = self.upload.as_mut().ok_or(FsError::GeneralFailure)?;
        let said = &self.said;
        upload.write(data).await.map_err(|e| told(said, e))
    }
}

/// Free bytes on the disk holding `root`, if known.
fn free_space(root: &std::path::Path) -> Option<u64> {
    let st = rustix::fs::statvfs(root).ok()?;
    Some(st.f_bavail.saturating_mul(st.f_frsize))
}

impl DavFs {
    fn child_props(&self) -> Option<std::sync::MutexGuard<'_, Option<ChildProps>>> {
        let cache = self.child_props.as_ref()?;
        Some(cache.lock().unwrap_or_else(|p| p.into_inner()))
    }

    /// `path`'s dead properties from the listing's cache, when `path` lies
    /// directly in the folder last listed (`None`: not known there).
    fn cached_props(&self, path: Option<&RemotePath>) -> Option<Vec<crate::store::DeadProp>> {
        let path = path?;
        let cache = self.child_props()?;
        let c = cache.as_ref()?;
        (path.parent() == c.dir).then(|| c.by_path.get(path.as_str()).cloned().unwrap_or_default())
    }

    /// The dead properties of `path`: from the cache or the store.
    async fn props_of(&self, path: Option<&RemotePath>) -> FsResult<Vec<crate::store::DeadProp>> {
        if let Some(found) = self.cached_props(path) {
            return Ok(found);
        }
        self.view.props(path).await.map_err(|e| self.fail(e))
    }

    fn path(&self, p: &DavPath) -> FsResult<Option<RemotePath>> {
        remote_path(p.as_bytes(), self.view.who().prefix.as_ref()).map_err(|e| self.fail(e))
    }

    /// [`told`], to this request's [`Said`].
    fn fail(&self, e: ServiceError) -> FsError {
        told(&self.said, e)
    }

    /// True for the caller's root.
    fn is_root(&self, p: Option<&RemotePath>) -> bool {
        p.is_none() || p == self.view.who().prefix.as_ref()
    }

    async fn entry(&self, p: Option<&RemotePath>) -> FsResult<Option<Entry>> {
        self.view.entry(p).await.map_err(|e| self.fail(e))
    }

    /// The folder `p` is in must exist (RFC 4918: else 409).
    async fn parent_exists(&self, p: &RemotePath) -> FsResult<()> {
        let parent = p.parent();
        if self.is_root(parent.as_ref()) {
            return Ok(());
        }
        match self.entry(parent.as_ref()).await? {
            Some(Entry::Folder(_)) => Ok(()),
            _ => Err(FsError::NotFound),
        }
    }

    async fn open_write(&self, p: RemotePath, options: OpenOptions) -> FsResult<WriteFile> {
        let exists = match self.entry(Some(&p)).await? {
            Some(Entry::Folder(_)) => return Err(FsError::Forbidden),
            Some(Entry::File(_)) => true,
            None => false,
        };
        if exists && options.create_new {
            return Err(FsError::Exists);
        }
        if !exists && !options.create {
            return Err(FsError::NotFound);
        }
        self.parent_exists(&p).await?;
        let max = self.view.store().max_file_size();
        if let Some(size) = options.size {
            if size > max {
                return Err(self.fail(ServiceError::TooLarge {
                    what: format!("{}: size {size} bytes", p.shown()),
                    limit: format!("{max} bytes (max file size)"),
                }));
            }
            // Refused before a byte is read: the body would fill the disk.
            if free_space(self.view.store().root()).is_some_and(|free| size > free) {
                return Err(self.fail(ServiceError::NoSpace {
                    disk: Some(self.view.store().root().display().to_string()),
                    context: format!("{}: {size} bytes announced", p.shown()),
                }));
            }
        }
        let header = UploadHeader {
            path: p,
            size: options.size.unwrap_or(max),
            hash: ContentHash([0; 32]),
            modified: SystemTime::now(),
            if_revision: self.if_revision,
            offset: 0,
            resumable: false,
            locks: Default::default(),
        };
        if self.lock_request {
            return self.make_empty(header).await;
        }
        let mut upload = self
            .view
            .begin_upload(header)
            .await
            .map_err(|e| self.fail(e))?;
        upload.unannounced(options.size.is_some());
        Ok(WriteFile {
            said: self.said.clone(),
            upload: Some(upload),
            record: None,
            pending: Vec::new(),
        })
    }

    /// The empty file a LOCK of an unmapped URL makes (RFC 4918 §7.3),
    /// written under the lock this request was just granted.
    async fn make_empty(&self, header: UploadHeader) -> FsResult<WriteFile> {
        let mut view = self.view.clone();
        for token in self.said.granted() {
            view = view.passing(token);
        }
        let mut upload = view
            .begin_upload(UploadHeader { size: 0, ..header })
            .await
            .map_err(|e| self.fail(e))?;
        upload.unannounced(true);
        let record = upload.finish().await.map_err(|e| self.fail(e))?;
        Ok(WriteFile {
            said: self.said.clone(),
            upload: None,
            record: Some(record),
            pending: Vec::new(),
        })
    }

    async fn copy_file(&self, from: &RemotePath, to: &RemotePath) -> FsResult<()> {
        if let Some(Entry::Folder(_)) = self.entry(Some(to)).await? {
            return Err(FsError::Exists);
        }
        let (record, file) = self.view.open_read(from).await.map_err(|e| self.fail(e))?;
        let header = UploadHeader {
            path: to.clone(),
            size: record.size,
            // The copy must hash as the original did: verified end to end.
            hash: record.hash,
            modified: time_of(record.modified_ns),
            if_revision: None,
            offset: 0,
            resumable: false,
            locks: Default::default(),
        };
        let mut upload = self
            .view
            .begin_upload(header)
            .await
            .map_err(|e| self.fail(e))?;
        let file = std::sync::Arc::new(file);
        let mut pos = 0u64;
        while pos < record.size {
            let f = file.clone();
            let chunk = tokio::task::spawn_blocking(move || {
                use std::os::unix::fs::FileExt;
                let mut buf = vec![0u8; COPY_STEP];
                let n = f.read_at(&mut buf, pos)?;
                buf.truncate(n);
                Ok::<_, std::io::Error>(buf)
            })
            .await
            .map_err(|_| FsError::GeneralFailure)?
            .map_err(|e| self.fail(ServiceError::io(from.to_string(), e)))?;
            if chunk.is_empty() {
                break;
            }
            pos += chunk.len() as u64;
            upload.write(chunk).await.map_err(|e| self.fail(e))?;
        }
        upload.finish().await.map_err(|e| self.fail(e))?;
        self.view
            .copy_props(from, to)
            .await
            .map_err(|e| self.fail(e))
    }
}

impl DavFileSystem for DavFs {
    fn open<'a>(
        &'a self,
        path: &'a DavPath,
        options: OpenOptions,
    ) -> FsFuture<'a, Box<dyn DavFile>> {
        async move {
            let p = self.path(path)?.ok_or(FsError::Forbidden)?;
            if options.write || options.append || options.create || options.truncate {
                if options.append {
                    return Err(FsError::NotImplemented);
                }
                let f: Box<dyn DavFile> = Box::new(self.open_write(p, options).await?);
                return Ok(f);
            }
            let (record, file) = self.view.open_read(&p).await.map_err(|e| self.fail(e))?;
            advise_sequential_read(&file);
            let f: Box<dyn DavFile> = Box::new(ReadFile {
                record,
                file: std::sync::Arc::new(file),
                pos: 0,
            });
            Ok(f)
        }
        .boxed()
    }

    fn read_dir<'a>(
        &'a self,
        path: &'a DavPath,
        _meta: ReadDirMeta,
    ) -> FsFuture<'a, FsStream<Box<dyn DavDirEntry>>> {
        async move {
            let p = self.path(path)?;
            match self.entry(p.as_ref()).await? {
                Some(Entry::Folder(_)) => {}
                Some(Entry::File(_)) => return Err(FsError::Forbidden),
                None => return Err(FsError::NotFound),
            }
            let (files, folders) = self
                .view
                .children(p.as_ref())
                .await
                .map_err(|e| self.fail(e))?;
            if self.child_props.is_some() {
                let by_path = self
                    .view
                    .child_props(p.as_ref())
                    .await
                    .map_err(|e| self.fail(e))?;
                if let Some(mut cache) = self.child_props() {
                    *cache = Some(ChildProps {
                        dir: p.clone(),
                        by_path,
                    });
                }
            }
            let mut entries: Vec<FsResult<Box<dyn DavDirEntry>>> =
                Vec::with_capacity(files.len() + folders.len());
            for (name, times) in folders {
                entries.push(Ok(Box::new(DirEntry {
                    name,
                    meta: Meta::folder(times),
                })));
            }
            for f in files {
                entries.push(Ok(Box::new(DirEntry {
                    name: f.path.file_name().to_owned(),
                    meta: Meta::file(f),
                })));
            }
            let s: FsStream<Box<dyn DavDirEntry>> = Box::pin(futures::stream::iter(entries));
            Ok(s)
        }
        .boxed()
    }

    fn metadata<'a>(&'a self, path: &'a DavPath) -> FsFuture<'a, Box<dyn DavMetaData>> {
        async move {
            let p = self.path(path)?;
            let m: Box<dyn DavMetaData> = match self.entry(p.as_ref()).await? {
                Some(Entry::File(f)) => Box::new(Meta::file(f)),
                Some(Entry::Folder(times)) => Box::new(Meta::folder(times)),
                None => return Err(FsError::NotFound),
            };
            Ok(m)
        }
        .boxed()
    }

    fn create_dir<'a>(&'a self, path: &'a DavPath) -> FsFuture<'a, ()> {
        async move {
            let p = self.path(path)?;
            let Some(p) = p.filter(|p| !self.is_root(Some(p))) else {
                return Err(FsError::Exists);
            };
            if self.entry(Some(&p)).await?.is_some() {
                return Err(FsError::Exists);
            }
            self.parent_exists(&p).await?;
            self.view
                .make_collection(&p)
                .await
                .map_err(|e| self.fail(e))
        }
        .boxed()
    }

    fn remove_dir<'a>(&'a self, path: &'a DavPath) -> FsFuture<'a, ()> {
        async move {
            let p = self.path(path)?;
            let Some(p) = p.filter(|p| !self.is_root(Some(p))) else {
                return Err(FsError::Forbidden);
            };
            match self.entry(Some(&p)).await? {
                Some(Entry::Folder(_)) => {}
                Some(Entry::File(_)) => return Err(FsError::Forbidden),
                None => return Err(FsError::NotFound),
            }
            // dav-server deletes the files first; one that arrived since
            // keeps the folder.
            let (files, folders) = self
                .view
                .children(Some(&p))
                .await
                .map_err(|e| self.fail(e))?;
            if !files.is_empty() || !folders.is_empty() {
                return Err(FsError::Exists);
            }
            self.view.forget_dav(&p).await.map_err(|e| self.fail(e))
        }
        .boxed()
    }

    fn remove_file<'a>(&'a self, path: &'a DavPath) -> FsFuture<'a, ()> {
        async move {
            let p = self.path(path)?.ok_or(FsError::Forbidden)?;
            // Its dead properties go in the same transaction.
            self.view.delete(&p, None).await.map_err(|e| self.fail(e))?;
            Ok(())
        }
        .boxed()
    }

    fn rename<'a>(&'a self, from: &'a DavPath, to: &'a DavPath) -> FsFuture<'a, ()> {
        async move {
            let f = self.path(from)?.ok_or(FsError::Forbidden)?;
            let t = self.path(to)?.ok_or(FsError::Forbidden)?;
            if self.is_root(Some(&f)) || self.is_root(Some(&t)) {
                return Err(FsError::Forbidden);
            }
            // A rename moves dead properties (and a folder's collections)
            // in its own transaction.
            match self.entry(Some(&f)).await? {
                None => Err(FsError::NotFound),
                Some(Entry::File(_)) => self
                    .view
                    .rename(&f, &t, true, None)
                    .await
                    .map(drop)
                    .map_err(|e| self.fail(e)),
                Some(Entry::Folder(_)) => match self.view.rename(&f, &t, false, None).await {
                    Ok(_) => Ok(()),
                    // Only (empty) collections: nothing on disk to move.
                    Err(ServiceError::NotFound(_)) => {
                        self.view.move_dav(&f, &t).await.map_err(|e| self.fail(e))
                    }
                    Err(e) => Err(self.fail(e)),
                },
            }
        }
        .boxed()
    }

    fn copy<'a>(&'a self, from: &'a DavPath, to: &'a DavPath) -> FsFuture<'a, ()> {
        async move {
            let f = self.path(from)?.ok_or(FsError::Forbidden)?;
            let t = self.path(to)?.ok_or(FsError::Forbidden)?;
            self.copy_file(&f, &t).await
        }
        .boxed()
    }

    fn have_props<'a>(
        &'a self,
        path: &'a DavPath,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = bool> + Send + 'a>> {
        // False only when the listing's cache knows there are none; when
        // unsure, `get_props` looks.
        let known_none = self
            .path(path)
            .ok()
            .and_then(|p| self.cached_props(p.as_ref()))
            .is_some_and(|found| found.is_empty());
        Box::pin(std::future::ready(!known_none))
    }

    fn patch_props<'a>(
        &'a self,
        path: &'a DavPath,
        patch: Vec<(bool, DavProp)>,
    ) -> FsFuture<'a, Vec<(StatusCode, DavProp)>> {
        async move {
            let p = self.path(path)?;
            if self.entry(p.as_ref()).await?.is_none() {
                return Err(FsError::NotFound);
            }
            let mut changes = Vec::with_capacity(patch.len());
            let mut answer = Vec::with_capacity(patch.len());
            for (set, prop) in patch {
                let ns = prop.namespace.clone().unwrap_or_default();
                let xml = if set {
                    Some(prop.xml.clone().unwrap_or_default())
                } else {
                    None
                };
                changes.push((ns, prop.name.clone(), xml));
                answer.push((StatusCode::OK, DavProp { xml: None, ..prop }));
            }
            self.view
                .patch_props(p.as_ref(), changes)
                .await
                .map_err(|e| self.fail(e))?;
            Ok(answer)
        }
        .boxed()
    }

    fn get_props<'a>(&'a self, path: &'a DavPath, do_content: bool) -> FsFuture<'a, Vec<DavProp>> {
        async move {
            let p = self.path(path)?;
            let props = self.props_of(p.as_ref()).await?;
            Ok(props
                .into_iter()
                .map(|d| DavProp {
                    name: d.name,
                    prefix: None,
                    namespace: (!d.ns.is_empty()).then_some(d.ns),
                    xml: do_content.then_some(d.xml),
                })
                .collect())
        }
        .boxed()
    }

    fn get_prop<'a>(&'a self, path: &'a DavPath, prop: DavProp) -> FsFuture<'a, Vec<u8>> {
        async move {
            let p = self.path(path)?;
            let ns = prop.namespace.unwrap_or_default();
            let props = self.props_of(p.as_ref()).await?;
            props
                .into_iter()
                .find(|d| d.ns == ns && d.name == prop.name)
                .map(|d| d.xml)
                .ok_or(FsError::NotFound)
        }
        .boxed()
    }

    fn get_quota(&'_ self) -> FsFuture<'_, (u64, Option<u64>)> {
        let root = self.view.store().root().to_owned();
        async move {
            let st = rustix::fs::statvfs(&root).map_err(|_| FsError::NotImplemented)?;
            let total = st.f_blocks.saturating_mul(st.f_frsize);
            let free = st.f_bavail.saturating_mul(st.f_frsize);
            Ok((total.saturating_sub(free), Some(total)))
        }
        .boxed()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn url_paths_map_under_the_callers_root_and_bad_ones_are_named() {
        let pre = RemotePath::parse("team").expect("valid");
        assert_eq!(remote_path(b"/", None).expect("root"), None);
        assert_eq!(
            remote_path(b"/", Some(&pre)).expect("root").as_ref(),
            Some(&pre)
        );
        assert_eq!(
            remote_path(b"/a/b/", Some(&pre))
                .expect("ok")
                .map(|p| p.to_string()),
            Some("team/a/b".to_owned())
        );
        let bad = remote_path(b"/.distribusync/index.db", None).expect_err("reserved");
        assert!(bad.to_string().contains(".distribusync"), "{bad}");
        assert!(remote_path(b"/a\x01b", None).is_err());
        assert_eq!(revision_of_etag("\"0123456789abcdef-42\""), Some(42));
    }
}
