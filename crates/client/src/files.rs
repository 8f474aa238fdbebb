//! [`FilesClient`]: typed access to the Files service.

use std::fs::{self, File, OpenOptions};
use std::io::{Read, Seek, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::SystemTime;

use distribusync_core::{ContentHash, RemotePath, Revision, limits};
use distribusync_proto::v1::{self, files_client};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Channel;

use crate::connect::{AuthChannel, Bearer, ConnectionConfig};

use crate::error::{ClientError, Result};

/// A file on the server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileInfo {
    pub path: RemotePath,
    pub size: u64,
    pub revision: Revision,
    pub hash: ContentHash,
    pub modified: SystemTime,
}

/// The version of a file a caller already knows the server holds (from
/// the change log or a listing), so a download need not ask first.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Expected {
    pub hash: ContentHash,
    pub size: u64,
}

/// Observes a transfer (a progress bar, or nothing).
pub trait Progress: Send + Sync {
    /// The transfer will move `total` bytes, starting at `done`.
    fn start(&self, _total: u64, _done: u64) {}
    /// `n` more bytes moved.
    fn advance(&self, _n: u64) {}
}

/// No progress reporting.
impl Progress for () {}

/// What a change in the server's log did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ChangeKind {
    /// A file was created or replaced.
    Put(FileInfo),
    Delete(RemotePath),
    /// A file, or a folder with all its files (`folder`), moved.
    Rename {
        from: RemotePath,
        to: RemotePath,
        folder: bool,
        revision: Revision,
    },
}

/// One entry of the server's change log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    pub seq: u64,
    pub kind: ChangeKind,
    /// A small file's whole content, when the server sent it with the
    /// put (checked against the hash by whoever uses it).
    pub content: Option<Arc<[u8]>>,
}

/// An event of a watch stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WatchEvent {
    Change(Change),
    /// Every change up to `seq` has been sent; what follows is live.
    CaughtUp(u64),
    /// The log no longer reaches back far enough: list everything, then
    /// carry on from `seq`.
    Resync(u64),
}

/// A last check before a download replaces the local file (see
/// [`FilesClient::download_checked`]).
pub type BeforeReplace = Box<dyn FnOnce(&Path) -> Result<()> + Send>;

/// A cheap, cloneable client of the Files service.
#[derive(Debug, Clone)]
pub struct FilesClient {
    pub(crate) inner: files_client::FilesClient<AuthChannel>,
    addr: Arc<str>,
    /// When [`FilesClient::put`] and [`FilesClient::get`] go by delta.
    delta: crate::delta::DeltaPolicy,
}

pub(crate) fn protocol(what: &str) -> ClientError {
    ClientError::Protocol(format!("malformed reply from server: {what}"))
}

impl TryFrom<v1::FileInfo> for FileInfo {
    type Error = ClientError;
    fn try_from(f: v1::FileInfo) -> Result<Self> {
        Ok(Self {
            path: RemotePath::parse(&f.path).map_err(|_| protocol("path"))?,
            size: f.size,
            revision: f.revision,
            hash: ContentHash::from_slice(&f.hash).map_err(|_| protocol("hash"))?,
            modified: f
                .modified
                .as_ref()
                .and_then(distribusync_proto::system_time)
                .unwrap_or(SystemTime::UNIX_EPOCH),
        })
    }
}

fn change_from(c: v1::Change) -> Result<Change> {
    let path = RemotePath::parse(&c.path).map_err(|_| protocol("change path"))?;
    let kind = match v1::ChangeOp::try_from(c.op) {
        Ok(v1::ChangeOp::Put) => ChangeKind::Put(FileInfo {
            path,
            size: c.size,
            revision: c.revision,
            hash: ContentHash::from_slice(&c.hash).map_err(|_| protocol("change hash"))?,
            modified: c
                .modified
                .as_ref()
                .and_then(distribusync_proto::system_time)
                .unwrap_or(SystemTime::UNIX_EPOCH),
        }),
        Ok(v1::ChangeOp::Delete) => ChangeKind::Delete(path),
        Ok(v1::ChangeOp::Rename) => ChangeKind::Rename {
            from: path,
            to: RemotePath::parse(&c.new_path).map_err(|_| protocol("rename target"))?,
            folder: c.folder,
            revision: c.revision,
        },
        _ => return Err(protocol("change op")),
    };
    let content = match kind {
        ChangeKind::Put(_) => c.content.map(|b| Arc::from(&b[..])),
        _ => None,
    };
    Ok(Change {
        seq: c.seq,
        kind,
        content,
    })
}

/// Name of the partial file a download into `local` resumes from; keyed by
/// the content hash so a partial of another version is never continued.
pub(crate) fn partial_path(local: &Path, hash: &ContentHash) -> PathBuf {
    let name = local
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    // Stay within the 255-byte name limit for long names.
    let mut cut = name.len().min(200);
    while !name.is_char_boundary(cut) {
        cut -= 1;
    }
    local.with_file_name(format!(
        ".{}.{}.distribusync-part",
        &name[..cut],
        &hash.to_hex()[..16]
    ))
}

/// Removes parts left by interrupted downloads of other versions of
/// `local` (a part is only ever continued for the version it began with);
/// best effort.
fn remove_stale_parts(local: &Path, keep: &Path) {
    let Some(keep_name) = keep.file_name().and_then(|n| n.to_str()) else {
        return;
    };
    // `.NAME.` + 16 hex digits + `.distribusync-part`
    let Some(stem) =
        keep_name.get(..keep_name.len() - ".0123456789abcdef.distribusync-part".len() + 1)
    else {
        return;
    };
    let dir = match local.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        let same_file = name.len() == keep_name.len()
            && name.starts_with(stem)
            && name.ends_with(".distribusync-part")
            && name != keep_name;
        if same_file {
            let _ = fs::remove_file(entry.path());
        }
    }
}

/// Hashes the next `len` bytes of `input` (fewer at its end, or up to the
/// piece when `stop` says so), on all cores in big pieces; returns how many
/// bytes it hashed.
fn hash_prefix(
    hasher: &mut blake3::Hasher,
    input: &mut impl Read,
    len: u64,
    stop: &dyn Fn() -> bool,
) -> std::io::Result<u64> {
    const PIECE: u64 = 16 << 20;
    let mut buf = vec![0u8; usize::try_from(len.min(PIECE)).unwrap_or(0)];
    let mut done = 0u64;
    while done < len && !stop() {
        let want = usize::try_from((len - done).min(PIECE)).unwrap_or(0);
        let mut got = 0;
        while got < want {
            match input.read(&mut buf[got..want])? {
                0 => break,
                n => got += n,
            }
        }
        hasher.update_rayon(&buf[..got]);
        done += got as u64;
        if got < want {
            break;
        }
    }
    Ok(done)
}

/// Sets its flag when dropped.
struct SetOnDrop(Arc<std::sync::atomic::AtomicBool>);

impl Drop for SetOnDrop {
    fn drop(&mut self) {
        self.0.store(true, std::sync::atomic::Ordering::Relaxed);
    }
}

/// BLAKE3 of a local file.
///
/// # Errors
/// When the file cannot be read.
pub fn hash_local(path: &Path) -> Result<(ContentHash, u64)> {
    // Memory-mapped and multi-threaded for big files (small ones are read).
    let mut hasher = blake3::Hasher::new();
    hasher
        .update_mmap_rayon(path)
        .map_err(|e| ClientError::local(path, e))?;
    Ok((hasher.finalize().into(), hasher.count()))
}

/// One file of an upload batch, in memory.
#[derive(Debug, Clone)]
pub struct BatchFile {
    pub remote: RemotePath,
    pub if_revision: Option<Revision>,
    pub data: Arc<[u8]>,
    pub modified: SystemTime,
    /// The hash of `data` when the caller knows it (else it is computed).
    pub hash: Option<ContentHash>,
}

/// Reads a small file whole for a batch, refusing one that has grown past
/// what a batch carries since it was listed.
pub(crate) fn read_batch_file(
    local: &Path,
    remote: RemotePath,
    if_revision: Option<Revision>,
) -> Result<BatchFile> {
    let file = File::open(local).map_err(|e| ClientError::local(local, e))?;
    let meta = file.metadata().map_err(|e| ClientError::local(local, e))?;
    let limit = limits::MAX_BATCH_BYTES as u64;
    let mut data = Vec::with_capacity(meta.len().min(limit) as usize);
    file.take(limit + 1)
        .read_to_end(&mut data)
        .map_err(|e| ClientError::local(local, e))?;
    if data.len() as u64 > limit {
        return Err(ClientError::LimitExceeded(format!(
            "{}: larger than the {limit} bytes an upload batch carries; upload it on its own",
            local.display()
        )));
    }
    let modified = meta.modified().map_err(|e| ClientError::local(local, e))?;
    Ok(BatchFile {
        remote,
        if_revision,
        data: data.into(),
        modified,
        hash: None,
    })
}

impl FilesClient {
    /// Connects now to the file server of `config` (a [`ConnectionConfig`],
    /// or just an address: `http://host:port`, `https://…` or `host:port`).
    ///
    /// # Errors
    /// [`ClientError::Unreachable`] when no server answers,
    /// [`ClientError::Connect`] when TLS refuses it.
    pub async fn connect(config: impl Into<ConnectionConfig>) -> Result<Self> {
        let config = config.into();
        Ok(Self::with_channel(
            config.connect().await?,
            &config.endpoint,
        ))
    }

    /// A client that connects on first use and reconnects after failures
    /// (for long-running clients that must survive a server restart).
    ///
    /// # Errors
    /// [`ClientError::BadAddress`], or a TLS set-up that cannot be used.
    pub fn lazy(config: impl Into<ConnectionConfig>) -> Result<Self> {
        let config = config.into();
        Ok(Self::with_channel(config.connect_lazy()?, &config.endpoint))
    }

    /// A client over an existing channel, sending no token.
    pub fn new(channel: Channel, addr: &str) -> Self {
        Self::with_channel(
            AuthChannel::new(channel, Bearer::default()),
            &crate::normalize_addr(addr),
        )
    }

    /// A client over a channel from [`ConnectionConfig`] (token attached).
    /// `addr` is only used in messages.
    pub fn with_channel(channel: AuthChannel, addr: &str) -> Self {
        Self {
            inner: files_client::FilesClient::new(channel)
                .max_decoding_message_size(limits::MAX_MESSAGE_SIZE)
                .max_encoding_message_size(limits::MAX_MESSAGE_SIZE),
            addr: addr.into(),
            delta: crate::delta::DeltaPolicy::default(),
        }
    }

    /// This client with another [`crate::delta::DeltaPolicy`].
    #[must_use]
    pub fn with_delta(mut self, policy: crate::delta::DeltaPolicy) -> Self {
        self.delta = policy;
        self
    }

    /// When [`FilesClient::put`] and [`FilesClient::get`] go by delta.
    pub fn delta_policy(&self) -> crate::delta::DeltaPolicy {
        self.delta
    }

    pub fn addr(&self) -> &str {
        &self.addr
    }

    pub(crate) fn err(&self, s: tonic::Status) -> ClientError {
        ClientError::from_status(s, &self.addr)
    }

    /// Uploads the local file at `local` as `remote`, reading it once: the
    /// content hash is computed while sending and follows the data. With
    /// `if_revision`, the server refuses if the file's current revision
    /// differs (0: it must not exist yet).
    ///
    /// An upload of at least [`limits::RESUME_MIN_BYTES`] that broke off
    /// earlier resumes where the server stopped receiving, provided the
    /// local file has the same size and modified time; `progress` then
    /// starts part-way. Should the server have lost that part, or the whole
    /// not hash right, the file is sent again from the start.
    ///
    /// # Errors
    /// Local read errors, a file that changed while it was being sent
    /// ([`ClientError::Stale`]), a revision mismatch, or any refusal of the
    /// server.
    pub async fn upload(
        &self,
        local: &Path,
        remote: &RemotePath,
        if_revision: Option<Revision>,
        progress: Arc<dyn Progress>,
    ) -> Result<FileInfo> {
        let path = local.to_owned();
        let before = tokio::task::spawn_blocking(move || {
            fs::metadata(&path).map_err(|e| ClientError::local(&path, e))
        })
        .await
        .map_err(|e| ClientError::local(local, std::io::Error::other(e)))??;
        let size = before.len();
        let modified = before
            .modified()
            .map_err(|e| ClientError::local(local, e))?;
        let offset = if size >= limits::RESUME_MIN_BYTES {
            self.upload_offset(remote, size, modified).await?
        } else {
            0
        };
        let header = v1::UploadHeader {
            path: remote.to_string(),
            size,
            hash: Vec::new(), // follows the data
            modified: Some(distribusync_proto::timestamp(modified)),
            if_revision,
            offset,
        };
        match self
            .upload_from(local, header.clone(), &before, progress.clone())
            .await
        {
            Err(ClientError::Restart(why)) if offset > 0 => {
                tracing::info!(path = %remote, %why, "cannot resume; sending the whole file");
                let header = v1::UploadHeader {
                    offset: 0,
                    ..header
                };
                self.upload_from(local, header, &before, progress).await
            }
            done => done,
        }
    }

    /// How many bytes of an interrupted upload of a file with this size and
    /// modified time the server kept for `remote` (0: none, or a server
    /// that does not resume uploads).
    ///
    /// # Errors
    /// An unreachable server or an invalid request.
    pub async fn upload_offset(
        &self,
        remote: &RemotePath,
        size: u64,
        modified: SystemTime,
    ) -> Result<u64> {
        let request = v1::UploadOffsetRequest {
            path: remote.to_string(),
            size,
            modified: Some(distribusync_proto::timestamp(modified)),
        };
        match self.inner.clone().upload_offset(request).await {
            Ok(r) => Ok(r.into_inner().offset.min(size)),
            Err(s) if s.code() == tonic::Code::Unimplemented => Ok(0),
            Err(s) => Err(self.err(s)),
        }
    }

    /// One attempt of [`Self::upload`]: sends `local` from `header.offset`
    /// on, hashing the bytes before it without sending them.
    async fn upload_from(
        &self,
        local: &Path,
        header: v1::UploadHeader,
        before: &fs::Metadata,
        progress: Arc<dyn Progress>,
    ) -> Result<FileInfo> {
        let path = local.to_owned();
        let file = tokio::task::spawn_blocking(move || {
            File::open(&path).map_err(|e| ClientError::local(&path, e))
        })
        .await
        .map_err(|e| ClientError::local(local, std::io::Error::other(e)))??;
        let (size, offset) = (header.size, header.offset);
        let before_modified = before.modified().ok();
        progress.start(size, offset);
        let (tx, rx) = mpsc::channel(4);
        let path = local.to_owned();
        // The request body outlives this future if it is dropped (the
        // caller gave up: Ctrl-C in the menu, a timeout); the reader then
        // stops sending, and the stream ends without the hash, which the
        // server refuses.
        let abandoned = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let _abandon_on_drop = SetOnDrop(abandoned.clone());
        // Reads, hashes and sends; the hash goes last, and only if the file
        // did not change while it was read (else the stream just ends and
        // the server refuses it).
        let reader = tokio::task::spawn_blocking(move || -> Result<()> {
            let gone = || abandoned.load(std::sync::atomic::Ordering::Relaxed);
            use v1::upload_request::Msg;
            let send = |msg| {
                tx.blocking_send(v1::UploadRequest { msg: Some(msg) })
                    .is_ok()
            };
            // The header goes first, so the server re-reads the part it kept
            // while the same part is hashed here (not sent).
            if !send(Msg::Header(header)) {
                return Ok(());
            }
            let mut file = std::io::BufReader::with_capacity(limits::CHUNK_SIZE, file);
            let mut hasher = blake3::Hasher::new();
            // Given up (dropped, or the stream closed): stop reading at once.
            let stop = || gone() || tx.is_closed();
            let skipped = hash_prefix(&mut hasher, &mut file, offset, &stop)
                .map_err(|e| ClientError::local(&path, e))?;
            if stop() {
                return Ok(());
            }
            let mut left = size.saturating_sub(skipped);
            while left > 0 && skipped == offset {
                let n = usize::try_from(left)
                    .unwrap_or(usize::MAX)
                    .min(limits::CHUNK_SIZE);
                let mut buf = vec![0; n];
                let got = file
                    .read(&mut buf)
                    .map_err(|e| ClientError::local(&path, e))?;
                if got == 0 {
                    break;
                }
                buf.truncate(got);
                hasher.update(&buf);
                left -= got as u64;
                progress.advance(got as u64);
                if gone() || !send(Msg::Chunk(buf)) {
                    return Ok(());
                }
            }
            if gone() {
                return Ok(());
            }
            let after = file
                .get_ref()
                .metadata()
                .map_err(|e| ClientError::local(&path, e))?;
            let changed = left > 0
                || skipped != offset
                || after.len() != size
                || after.modified().ok() != before_modified;
            if changed {
                // A hash nothing matches: the server drops what it got
                // rather than keep a part no later upload can resume.
                send(Msg::TrailerHash(vec![0; 32]));
                return Err(ClientError::Stale(format!(
                    "{}: changed while it was being sent; send it again",
                    path.display()
                )));
            }
            send(Msg::TrailerHash(hasher.finalize().as_bytes().to_vec()));
            Ok(())
        });
        let mut inner = self.inner.clone();
        let reply = inner.upload(ReceiverStream::new(rx)).await;
        // A local problem explains a refusal better than the refusal does.
        reader
            .await
            .map_err(|e| ClientError::local(local, std::io::Error::other(e)))??;
        reply
            .map_err(|s| self.err(s))?
            .into_inner()
            .file
            .ok_or_else(|| protocol("upload reply without file"))?
            .try_into()
    }

    /// Uploads many small files in one request (see the UploadBatch RPC):
    /// one result per file, in order. Each file is read whole into memory,
    /// so callers keep batches within [`limits::MAX_BATCH_FILES`] files and
    /// [`limits::MAX_BATCH_BYTES`] bytes.
    ///
    /// # Errors
    /// The outer error fails the whole batch (unreachable server, a batch
    /// over the limits); inner errors are per file.
    pub async fn upload_batch(
        &self,
        items: Vec<(PathBuf, RemotePath, Option<Revision>)>,
    ) -> Result<Vec<Result<FileInfo>>> {
        let read = tokio::task::spawn_blocking(move || {
            items
                .into_iter()
                .map(|(local, remote, if_revision)| read_batch_file(&local, remote, if_revision))
                .collect::<Vec<Result<_>>>()
        })
        .await
        .map_err(|e| ClientError::Protocol(e.to_string()))?;
        self.upload_batch_files(read).await
    }

    /// As [`FilesClient::upload_batch`], for files already in memory (the
    /// sync engine keeps small files it has just read to hash them). An
    /// `Err` item is a file that could not be read: it is answered with its
    /// own error, in its place, and not sent.
    ///
    /// # Errors
    /// As [`FilesClient::upload_batch`].
    pub async fn upload_batch_files(
        &self,
        files: Vec<Result<BatchFile>>,
    ) -> Result<Vec<Result<FileInfo>>> {
        use v1::upload_request::Msg;
        let mut messages = Vec::new();
        let mut slots: Vec<Option<Result<FileInfo>>> = Vec::with_capacity(files.len());
        for item in files {
            match item {
                Ok(f) => {
                    let hash = f.hash.unwrap_or_else(|| ContentHash::of(&f.data));
                    messages.push(v1::UploadRequest {
                        msg: Some(Msg::Header(v1::UploadHeader {
                            path: f.remote.to_string(),
                            size: f.data.len() as u64,
                            hash: hash.0.to_vec(),
                            modified: Some(distribusync_proto::timestamp(f.modified)),
                            if_revision: f.if_revision,
                            offset: 0,
                        })),
                    });
                    if !f.data.is_empty() {
                        messages.push(v1::UploadRequest {
                            msg: Some(Msg::Chunk(f.data.to_vec())),
                        });
                    }
                    slots.push(None);
                }
                Err(e) => slots.push(Some(Err(e))),
            }
        }
        let mut inner = self.inner.clone();
        let reply = inner
            .upload_batch(tokio_stream::iter(messages))
            .await
            .map_err(|s| self.err(s))?
            .into_inner();
        let mut results = reply.results.into_iter();
        slots
            .into_iter()
            .map(|slot| match slot {
                Some(local_error) => Ok(local_error),
                None => match results.next().and_then(|r| r.result) {
                    Some(v1::upload_result::Result::File(f)) => Ok(f.try_into()),
                    Some(v1::upload_result::Result::Error(e)) => {
                        let mut status = tonic::Status::new(tonic::Code::from(e.code), e.message);
                        if let Some(rev) = e.current_revision
                            && let Ok(v) = rev.to_string().parse()
                        {
                            status
                                .metadata_mut()
                                .insert(crate::error::CURRENT_REVISION_KEY, v);
                        }
                        Ok(Err(self.err(status)))
                    }
                    None => Err(protocol("batch reply has fewer results than files")),
                },
            })
            .collect()
    }

    /// Downloads `remote` into `local`, atomically: the data goes to a
    /// partial file beside `local`, is verified against the server's hash,
    /// fsynced, then renamed over `local`. An interrupted download resumes
    /// from its partial file when the server still has the same version.
    ///
    /// # Errors
    /// NotFound, local write errors, or a hash mismatch.
    pub async fn download(
        &self,
        remote: &RemotePath,
        local: &Path,
        progress: Arc<dyn Progress>,
    ) -> Result<FileInfo> {
        self.download_attempt(remote, local, None, progress, Box::new(|_| Ok(())), 3, true)
            .await
            .map(|(info, _)| info)
    }

    /// As [`FilesClient::download`], but `check` runs just before the
    /// verified data replaces `local`; an error from it leaves `local`
    /// untouched (the sync engine uses it to never clobber a fresh edit).
    /// Also returns the new local file's metadata, read from the open file
    /// before it took the name (so a later edit cannot be mistaken for it).
    ///
    /// With `expect`, the version the caller already knows the server has
    /// (a sync plan's, from the change log): no `Stat` first, a round trip
    /// saved per file. The download still starts with the server's own
    /// header and is verified against it; a header naming another version
    /// falls back to asking first.
    ///
    /// # Errors
    /// As [`FilesClient::download`], or what `check` returns.
    pub async fn download_checked(
        &self,
        remote: &RemotePath,
        local: &Path,
        expect: Option<Expected>,
        progress: Arc<dyn Progress>,
        check: BeforeReplace,
    ) -> Result<(FileInfo, fs::Metadata)> {
        // Not clearing other versions' parts here: that lists the whole
        // folder, once per file a sync pass downloads into it.
        self.download_attempt(remote, local, expect, progress, check, 3, false)
            .await
    }

    #[allow(clippy::too_many_arguments)]
    async fn download_attempt(
        &self,
        remote: &RemotePath,
        local: &Path,
        expect: Option<Expected>,
        progress: Arc<dyn Progress>,
        check: BeforeReplace,
        attempts: u32,
        clear_stale: bool,
    ) -> Result<(FileInfo, fs::Metadata)> {
        if local.is_dir() {
            return Err(ClientError::local(
                local,
                std::io::Error::new(
                    std::io::ErrorKind::IsADirectory,
                    "is a folder; name a file to save to, or a path inside the folder",
                ),
            ));
        }
        let (hash, size) = match expect {
            Some(e) => (e.hash, e.size),
            None => {
                let info = self.stat(remote).await?;
                (info.hash, info.size)
            }
        };
        let partial = partial_path(local, &hash);
        if clear_stale {
            remove_stale_parts(local, &partial);
        }
        let offset = match fs::metadata(&partial) {
            Ok(m) if m.len() <= size => m.len(),
            _ => 0,
        };
        let mut inner = self.inner.clone();
        let mut stream = inner
            .download(v1::DownloadRequest {
                path: remote.to_string(),
                offset,
                length: None,
            })
            .await
            .map_err(|s| self.err(s))?
            .into_inner();
        use v1::download_response::Msg;
        let head: FileInfo = match stream.message().await.map_err(|s| self.err(s))? {
            Some(v1::DownloadResponse {
                msg: Some(Msg::Info(i)),
            }) => i.try_into()?,
            _ => return Err(protocol("download did not start with file info")),
        };
        if head.hash != hash {
            // Replaced between stat (or the caller's look) and download:
            // start over, asking the server which version it has now.
            if attempts == 0 {
                return Err(ClientError::Stale(format!(
                    "{remote}: keeps changing on the server while downloading; try again later"
                )));
            }
            return Box::pin(self.download_attempt(
                remote,
                local,
                None,
                progress,
                check,
                attempts - 1,
                clear_stale,
            ))
            .await;
        }
        if let Some(dir) = local.parent().filter(|d| !d.as_os_str().is_empty()) {
            fs::create_dir_all(dir).map_err(|e| ClientError::local(dir, e))?;
        }
        let mut file = OpenOptions::new()
            .create(true)
            .read(true)
            .append(true)
            .open(&partial)
            .map_err(|e| ClientError::local(&partial, e))?;
        file.set_len(offset)
            .map_err(|e| ClientError::local(&partial, e))?;
        progress.start(head.size, offset);
        // A writer on the blocking pool hashes and writes while the next
        // chunk arrives; it starts by hashing the resumed prefix.
        let (tx, mut rx) = mpsc::channel::<Vec<u8>>(4);
        let abandoned = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let _abandon_on_drop = SetOnDrop(abandoned.clone());
        let writer =
            tokio::task::spawn_blocking(move || -> std::io::Result<(File, ContentHash)> {
                let mut hasher = blake3::Hasher::new();
                if offset > 0 {
                    // Stops at once if the download is dropped meanwhile.
                    let stop = || abandoned.load(std::sync::atomic::Ordering::Relaxed);
                    let hashed = hash_prefix(&mut hasher, &mut &file, offset, &stop)?;
                    if hashed < offset {
                        return Err(std::io::Error::other("download stopped"));
                    }
                }
                let mut since_hint = 0u64;
                while let Some(chunk) = rx.blocking_recv() {
                    hasher.update(&chunk);
                    file.write_all(&chunk)?;
                    // Start writeback as we go (as the server does for
                    // uploads), so the fsync below has little left to do.
                    since_hint += chunk.len() as u64;
                    if since_hint >= 8 << 20 {
                        let end = file.stream_position()?;
                        let range = std::num::NonZeroU64::new(since_hint);
                        let advice = rustix::fs::Advice::DontNeed;
                        let _ = rustix::fs::fadvise(&file, end - since_hint, range, advice);
                        since_hint = 0;
                    }
                }
                file.sync_all()?;
                Ok((file, hasher.finalize().into()))
            });
        while let Some(msg) = stream.message().await.map_err(|s| self.err(s))? {
            let Some(Msg::Chunk(data)) = msg.msg else {
                return Err(protocol("unexpected message in download"));
            };
            let n = data.len() as u64;
            if tx.send(data).await.is_err() {
                break; // the writer failed; its error is reported below
            }
            progress.advance(n);
        }
        drop(tx);
        let (file, hash) = writer
            .await
            .map_err(|e| ClientError::local(&partial, std::io::Error::other(e)))?
            .map_err(|e| ClientError::local(&partial, e))?;
        if hash != head.hash {
            drop(file);
            let _ = tokio::fs::remove_file(&partial).await;
            // The part kept from an earlier attempt may be what went bad:
            // once more, from the start.
            if offset > 0 && attempts > 0 {
                return Box::pin(self.download_attempt(
                    remote,
                    local,
                    None,
                    progress,
                    check,
                    attempts - 1,
                    clear_stale,
                ))
                .await;
            }
            return Err(ClientError::Corrupt {
                path: local.display().to_string(),
            });
        }
        let (partial2, local2) = (partial.clone(), local.to_owned());
        let modified = head.modified;
        let meta = tokio::task::spawn_blocking(move || -> Result<fs::Metadata> {
            file.set_modified(modified)
                .map_err(|e| ClientError::local(&partial2, e))?;
            let meta = file
                .metadata()
                .map_err(|e| ClientError::local(&partial2, e))?;
            drop(file);
            // A part that will not be renamed into place is removed, whole
            // and verified as it is: the caller's next attempt starts from
            // what is there then, and may want another version (or none).
            if let Err(e) = check(&local2) {
                let _ = fs::remove_file(&partial2);
                return Err(e);
            }
            if let Err(e) = fs::rename(&partial2, &local2) {
                let _ = fs::remove_file(&partial2);
                return Err(ClientError::local(&local2, e));
            }
            if let Some(dir) = local2.parent().filter(|d| !d.as_os_str().is_empty())
                && let Ok(d) = File::open(dir)
            {
                let _ = d.sync_all();
            }
            Ok(meta)
        })
        .await
        .map_err(|e| ClientError::local(local, std::io::Error::other(e)))??;
        Ok((head, meta))
    }

    /// Metadata of one file.
    ///
    /// # Errors
    /// NotFound when there is no such file.
    pub async fn stat(&self, remote: &RemotePath) -> Result<FileInfo> {
        let mut inner = self.inner.clone();
        inner
            .stat(v1::StatRequest {
                path: remote.to_string(),
            })
            .await
            .map_err(|s| self.err(s))?
            .into_inner()
            .try_into()
    }

    /// Lists every file under `prefix` (a file or folder; all files when
    /// `None`), page by page, in path order.
    ///
    /// # Errors
    /// When the listing cannot start.
    pub async fn list(&self, prefix: Option<&RemotePath>) -> Result<ListPages> {
        let mut inner = self.inner.clone();
        let stream = inner
            .list(v1::ListRequest {
                prefix: prefix.map(ToString::to_string).unwrap_or_default(),
                page_size: 0,
            })
            .await
            .map_err(|s| self.err(s))?
            .into_inner();
        Ok(ListPages {
            stream,
            addr: self.addr.clone(),
        })
    }

    /// Every file under `prefix`, collected.
    ///
    /// # Errors
    /// As [`FilesClient::list`].
    pub async fn list_all(&self, prefix: Option<&RemotePath>) -> Result<Vec<FileInfo>> {
        let mut pages = self.list(prefix).await?;
        let mut all = Vec::new();
        while let Some(page) = pages.next_page().await? {
            all.extend(page);
        }
        Ok(all)
    }

    /// Deletes a file; returns the change's sequence number.
    ///
    /// # Errors
    /// NotFound, or a revision mismatch.
    pub async fn delete(&self, remote: &RemotePath, if_revision: Option<Revision>) -> Result<u64> {
        let mut inner = self.inner.clone();
        Ok(inner
            .delete(v1::DeleteRequest {
                path: remote.to_string(),
                if_revision,
            })
            .await
            .map_err(|s| self.err(s))?
            .into_inner()
            .seq)
    }

    /// Renames a file or a folder; returns `(seq, files moved)`.
    ///
    /// # Errors
    /// NotFound, AlreadyExists (without `overwrite`), a revision mismatch.
    pub async fn rename(
        &self,
        from: &RemotePath,
        to: &RemotePath,
        overwrite: bool,
        if_revision: Option<Revision>,
    ) -> Result<(u64, u64)> {
        let mut inner = self.inner.clone();
        let r = inner
            .rename(v1::RenameRequest {
                from: from.to_string(),
                to: to.to_string(),
                overwrite,
                if_revision,
            })
            .await
            .map_err(|s| self.err(s))?
            .into_inner();
        Ok((r.seq, r.files))
    }

    /// Streams the change log after `since`, then live changes.
    ///
    /// # Errors
    /// When the stream cannot start.
    pub async fn watch(&self, since: u64) -> Result<WatchStream> {
        let mut inner = self.inner.clone();
        let stream = inner
            .watch(v1::WatchRequest { since })
            .await
            .map_err(|s| self.err(s))?
            .into_inner();
        Ok(WatchStream {
            stream,
            addr: self.addr.clone(),
        })
    }
}

/// Pages of a listing.
#[derive(Debug)]
pub struct ListPages {
    stream: tonic::Streaming<v1::ListResponse>,
    addr: Arc<str>,
}

impl ListPages {
    /// The next page, or `None` at the end.
    ///
    /// # Errors
    /// When the stream breaks.
    pub async fn next_page(&mut self) -> Result<Option<Vec<FileInfo>>> {
        match self
            .stream
            .message()
            .await
            .map_err(|s| ClientError::from_status(s, &self.addr))?
        {
            None => Ok(None),
            Some(page) => Ok(Some(
                page.files
                    .into_iter()
                    .map(FileInfo::try_from)
                    .collect::<Result<_>>()?,
            )),
        }
    }
}

/// A watch stream.
#[derive(Debug)]
pub struct WatchStream {
    stream: tonic::Streaming<v1::WatchResponse>,
    addr: Arc<str>,
}

impl WatchStream {
    /// The next event, or `None` when the server ended the stream.
    ///
    /// # Errors
    /// When the stream breaks (the server went away).
    pub async fn next(&mut self) -> Result<Option<WatchEvent>> {
        use v1::watch_response::Event;
        let Some(msg) = self
            .stream
            .message()
            .await
            .map_err(|s| ClientError::from_status(s, &self.addr))?
        else {
            return Ok(None);
        };
        Ok(Some(match msg.event {
            Some(Event::Change(c)) => WatchEvent::Change(change_from(c)?),
            Some(Event::CaughtUp(c)) => WatchEvent::CaughtUp(c.seq),
            Some(Event::Resync(r)) => WatchEvent::Resync(r.current_seq),
            None => return Err(protocol("empty watch event")),
        }))
    }
}
