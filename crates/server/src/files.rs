//! `FilesService`: the gRPC face of the [`Store`].

use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use distribusync_core::{ContentHash, RemotePath, limits};
use distribusync_proto::v1::{self, files_server::Files};
use futures::{Stream, StreamExt};
use tokio::sync::{broadcast, mpsc};
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status, Streaming};

use crate::auth::Identity;
use crate::error::ServiceError;
use crate::stats::TransferStats;
use crate::store::{ChangeOp, ChangeRecord, FileRecord, Store, UploadHeader, View};

type Stream2<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

/// Implements the `distribusync.v1.Files` service over a [`Store`].
#[derive(Debug, Clone)]
pub struct FilesService {
    store: Store,
    stats: Arc<TransferStats>,
    shutdown: CancellationToken,
    /// An upload stream that brings nothing for this long ends.
    idle_timeout: Duration,
    /// Small files' content sent with their changes, read once for every
    /// watching client (see `inline`).
    inline: Arc<crate::inline::InlineCache>,
}

impl FilesService {
    /// `shutdown` ends long-lived Watch streams when the server stops.
    pub fn new(store: Store, shutdown: CancellationToken) -> Self {
        Self {
            store,
            stats: Arc::default(),
            shutdown,
            idle_timeout: crate::TransportConfig::default().idle_timeout,
            inline: Arc::default(),
        }
    }

    /// The bytes this service moved (see [`TransferStats`]).
    pub fn stats(&self) -> Arc<TransferStats> {
        self.stats.clone()
    }

    /// The store as the caller of `request` sees it (see [`View`]).
    fn view<T>(&self, request: &Request<T>) -> View {
        self.store.view(Identity::of(request))
    }

    /// Sets how long an upload stream may bring nothing before it ends.
    #[must_use]
    pub fn with_idle_timeout(mut self, idle_timeout: Duration) -> Self {
        self.idle_timeout = idle_timeout;
        self
    }
}

fn path(s: &str) -> Result<RemotePath, ServiceError> {
    Ok(RemotePath::parse(s)?)
}

fn file_info(f: &FileRecord) -> v1::FileInfo {
    v1::FileInfo {
        path: f.path.to_string(),
        size: f.size,
        revision: f.revision,
        hash: f.hash.0.to_vec(),
        modified: Some(distribusync_proto::timestamp(
            distribusync_proto::from_unix_nanos(f.modified_ns),
        )),
    }
}

fn change(c: &ChangeRecord) -> v1::Change {
    v1::Change {
        seq: c.seq,
        op: match c.op {
            ChangeOp::Put => v1::ChangeOp::Put,
            ChangeOp::Delete => v1::ChangeOp::Delete,
            ChangeOp::Rename => v1::ChangeOp::Rename,
        } as i32,
        path: c.path.to_string(),
        new_path: c
            .new_path
            .as_ref()
            .map(ToString::to_string)
            .unwrap_or_default(),
        revision: c.revision,
        size: c.size,
        hash: c.hash.map(|h| h.0.to_vec()).unwrap_or_default(),
        modified: Some(distribusync_proto::timestamp(
            distribusync_proto::from_unix_nanos(c.modified_ns),
        )),
        folder: c.folder,
        content: None,
    }
}

fn content_hash(path: &RemotePath, bytes: &[u8]) -> Result<ContentHash, ServiceError> {
    ContentHash::from_slice(bytes)
        .map_err(|e| ServiceError::InvalidArgument(format!("{}: {e}", path.shown())))
}

/// The error of a modified time the server cannot keep as given.
fn modified_out_of_range(path: &RemotePath, t: &prost_types::Timestamp) -> ServiceError {
    ServiceError::InvalidArgument(format!(
        "{}: modified time out of range (seconds {}, nanos {}): the server keeps times \
         from {} to {} seconds after 1970-01-01 (September 1677 to April 2262), nanos 0 to \
         999999999",
        path.shown(),
        t.seconds,
        t.nanos,
        distribusync_proto::MIN_TIMESTAMP_SECONDS,
        distribusync_proto::MAX_TIMESTAMP_SECONDS
    ))
}

/// A wire header as the store's; with `trailer`, an empty hash means "it
/// follows the data" (returned as `true`).
fn upload_header(h: v1::UploadHeader, trailer: bool) -> Result<(UploadHeader, bool), ServiceError> {
    let path = path(&h.path)?;
    let in_trailer = trailer && h.hash.is_empty();
    // Until the trailer arrives, the hash is unknown; it is set before use.
    let hash = if in_trailer {
        ContentHash([0; 32])
    } else {
        content_hash(&path, &h.hash)?
    };
    // Without a modified time no later request can name this upload, so an
    // interrupted one is not kept for resuming (see `UploadHeader::resumable`).
    let resumable = h.modified.is_some();
    let modified = match h.modified {
        None => SystemTime::now(),
        Some(t) => {
            distribusync_proto::system_time(&t).ok_or_else(|| modified_out_of_range(&path, &t))?
        }
    };
    Ok((
        UploadHeader {
            path,
            size: h.size,
            hash,
            modified,
            if_revision: h.if_revision,
            offset: h.offset,
            resumable,
            locks: Default::default(),
        },
        in_trailer,
    ))
}

#[tonic::async_trait]
impl Files for FilesService {
    #[tracing::instrument(skip_all)]
    async fn upload(
        &self,
        request: Request<Streaming<v1::UploadRequest>>,
    ) -> Result<Response<v1::UploadResponse>, Status> {
        use v1::upload_request::Msg;
        let view = self.view(&request);
        let mut stream = request.into_inner();
        let idle = self.idle_timeout;
        let stats = self.stats.clone();
        let counted = |m: Option<v1::UploadRequest>| {
            if let Some(m) = &m {
                stats.add_received(prost::Message::encoded_len(m) as u64);
            }
            m
        };
        let (header, in_trailer) =
            match counted(crate::transport::next_message(&mut stream, idle, "upload").await?) {
                Some(v1::UploadRequest {
                    msg: Some(Msg::Header(h)),
                }) => upload_header(h, true)?,
                _ => {
                    return Err(ServiceError::InvalidArgument(
                        "an upload must start with a header".into(),
                    )
                    .into());
                }
            };
        let path = header.path.clone();
        let mut upload = view.begin_upload(header).await?;
        let mut got_trailer = false;
        // A stream that breaks (`?` on `message()`) keeps what arrived for
        // resuming; a client that breaks the protocol does not.
        while let Some(msg) =
            counted(crate::transport::next_message(&mut stream, idle, "upload").await?)
        {
            let step = match msg.msg {
                Some(Msg::Chunk(data)) if !got_trailer => upload.write(data).await,
                Some(Msg::TrailerHash(h)) if in_trailer && !got_trailer => content_hash(&path, &h)
                    .map(|h| {
                        upload.set_hash(h);
                        got_trailer = true;
                    }),
                _ => Err(ServiceError::InvalidArgument(
                    "an upload carries one header, then chunks, then (if the header had \
                     no hash) the trailer hash"
                        .into(),
                )),
            };
            if let Err(e) = step {
                upload.discard();
                return Err(e.into());
            }
        }
        if in_trailer && !got_trailer {
            // A client that gave up part way (Ctrl-C, a stopped sync) ends
            // the stream early: what arrived is kept for resuming, as after
            // a broken connection (the final hash still guards the whole).
            // All data but no hash is a client that refused its own file.
            if upload.received() == upload.size() {
                upload.discard();
            }
            return Err(ServiceError::InvalidArgument(format!(
                "{}: the upload ended without its content hash",
                path.shown()
            ))
            .into());
        }
        let record = upload.finish().await?;
        Ok(Response::new(v1::UploadResponse {
            file: Some(file_info(&record)),
        }))
    }

    #[tracing::instrument(skip_all)]
    async fn upload_offset(
        &self,
        request: Request<v1::UploadOffsetRequest>,
    ) -> Result<Response<v1::UploadOffsetResponse>, Status> {
        let view = self.view(&request);
        let r = request.into_inner();
        let path = path(&r.path)?;
        let Some(modified) = r.modified else {
            return Err(ServiceError::InvalidArgument(format!(
                "{}: modified time missing",
                path.shown()
            ))
            .into());
        };
        let modified = distribusync_proto::system_time(&modified)
            .ok_or_else(|| modified_out_of_range(&path, &modified))?;
        let offset = view.upload_offset(path, r.size, modified).await?;
        Ok(Response::new(v1::UploadOffsetResponse { offset }))
    }

    #[tracing::instrument(skip_all)]
    async fn upload_batch(
        &self,
        request: Request<Streaming<v1::UploadRequest>>,
    ) -> Result<Response<v1::UploadBatchResponse>, Status> {
        use v1::upload_request::Msg;
        let view = self.view(&request);
        let mut stream = request.into_inner();
        let mut files: Vec<(UploadHeader, Vec<u8>)> = Vec::new();
        let mut total = 0usize;
        while let Some(msg) =
            crate::transport::next_message(&mut stream, self.idle_timeout, "upload").await?
        {
            self.stats
                .add_received(prost::Message::encoded_len(&msg) as u64);
            match msg.msg {
                Some(Msg::Header(h)) => {
                    if files.len() >= limits::MAX_BATCH_FILES {
                        return Err(ServiceError::TooLarge {
                            what: "upload batch".into(),
                            limit: format!("{} files per batch", limits::MAX_BATCH_FILES),
                        }
                        .into());
                    }
                    let (h, _) = upload_header(h, false)?;
                    if h.offset != 0 {
                        return Err(ServiceError::InvalidArgument(format!(
                            "{}: a batch cannot resume an upload; use Upload",
                            h.path.shown()
                        ))
                        .into());
                    }
                    if files.iter().any(|(f, _)| f.path == h.path) {
                        return Err(ServiceError::InvalidArgument(format!(
                            "{}: appears twice in one batch",
                            h.path.shown()
                        ))
                        .into());
                    }
                    // The header's size is a claim: reserve no more than the
                    // batch may still hold.
                    let cap = usize::try_from(h.size)
                        .unwrap_or(usize::MAX)
                        .min(limits::MAX_BATCH_BYTES - total);
                    files.push((h, Vec::with_capacity(cap)));
                }
                Some(Msg::Chunk(data)) => {
                    let Some((h, buf)) = files.last_mut() else {
                        return Err(ServiceError::InvalidArgument(
                            "a batch must start with a header".into(),
                        )
                        .into());
                    };
                    total += data.len();
                    if total > limits::MAX_BATCH_BYTES {
                        return Err(ServiceError::TooLarge {
                            what: "upload batch".into(),
                            limit: format!("{} bytes of data per batch", limits::MAX_BATCH_BYTES),
                        }
                        .into());
                    }
                    if (buf.len() + data.len()) as u64 > h.size {
                        return Err(ServiceError::InvalidArgument(format!(
                            "{}: received more than the {} bytes announced in the header",
                            h.path.shown(),
                            h.size
                        ))
                        .into());
                    }
                    buf.extend_from_slice(&data);
                }
                Some(Msg::TrailerHash(_)) => {
                    return Err(ServiceError::InvalidArgument(
                        "a batch carries each file's hash in its header".into(),
                    )
                    .into());
                }
                None => {
                    return Err(ServiceError::InvalidArgument("empty batch message".into()).into());
                }
            }
        }
        let paths: Vec<String> = files.iter().map(|(h, _)| h.path.to_string()).collect();
        let results = view.upload_batch(files).await?;
        let results = paths
            .into_iter()
            .zip(results)
            .map(|(path, r)| v1::UploadResult {
                result: Some(match r {
                    Ok(record) => v1::upload_result::Result::File(file_info(&record)),
                    Err(e) => {
                        let current_revision = match &e {
                            ServiceError::RevisionMismatch { current, .. } => Some(*current),
                            _ => None,
                        };
                        let status = Status::from(e);
                        v1::upload_result::Result::Error(v1::UploadError {
                            path,
                            code: status.code() as i32,
                            message: status.message().to_owned(),
                            current_revision,
                        })
                    }
                }),
            })
            .collect();
        Ok(Response::new(v1::UploadBatchResponse { results }))
    }

    type DownloadStream = Stream2<v1::DownloadResponse>;

    #[tracing::instrument(skip_all)]
    async fn download(
        &self,
        request: Request<v1::DownloadRequest>,
    ) -> Result<Response<Self::DownloadStream>, Status> {
        use v1::download_response::Msg;
        let view = self.view(&request);
        let req = request.into_inner();
        let p = path(&req.path)?;
        let (record, content) = view.open_content(&p).await?;
        if req.offset > record.size {
            return Err(ServiceError::OutOfRange(format!(
                "{}: offset {} is past the end of the file ({} bytes)",
                p.shown(),
                req.offset,
                record.size
            ))
            .into());
        }
        let end = match req.length {
            None => record.size,
            Some(len) => {
                let range = distribusync_core::delta::Region {
                    offset: req.offset,
                    len,
                };
                distribusync_core::delta::check_range(range, record.size)
                    .map_err(|e| ServiceError::OutOfRange(format!("{}: {e}", p.shown())))?;
                req.offset + len
            }
        };
        let first = v1::DownloadResponse {
            msg: Some(Msg::Info(file_info(&record))),
        };
        let stats = self.stats.clone();
        stats.add_sent(prost::Message::encoded_len(&first) as u64);
        let chunks = crate::download::content_chunks(p, content, req.offset, end);
        let stream = futures::stream::once(async { Ok(first) }).chain(chunks.map(move |r| {
            r.map(|data| {
                let msg = v1::DownloadResponse {
                    msg: Some(Msg::Chunk(data)),
                };
                stats.add_sent(prost::Message::encoded_len(&msg) as u64);
                msg
            })
            .map_err(Status::from)
        }));
        Ok(Response::new(Box::pin(stream)))
    }

    type DeltaUploadStream = Stream2<v1::DeltaUploadResponse>;

    #[tracing::instrument(skip_all)]
    async fn delta_upload(
        &self,
        request: Request<Streaming<v1::DeltaUploadRequest>>,
    ) -> Result<Response<Self::DeltaUploadStream>, Status> {
        let view = self.view(&request);
        let stream = request.into_inner();
        let (tx, rx) = mpsc::channel(2);
        let (stats, idle) = (self.stats.clone(), self.idle_timeout);
        let max = self.store.max_file_size();
        tokio::spawn(async move {
            let done = crate::delta_rpc::delta_upload(view, stream, idle, &stats, &tx, max).await;
            let reply = done.map(|record| {
                tracing::info!(path = %record.path, revision = record.revision, size = record.size, "uploaded by delta");
                v1::DeltaUploadResponse {
                    msg: Some(v1::delta_upload_response::Msg::File(file_info(&record))),
                }
            });
            let _ = tx.send(reply).await;
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    type GetManifestStream = Stream2<v1::GetManifestResponse>;

    #[tracing::instrument(skip_all)]
    async fn get_manifest(
        &self,
        request: Request<v1::GetManifestRequest>,
    ) -> Result<Response<Self::GetManifestStream>, Status> {
        let view = self.view(&request);
        let p = path(&request.into_inner().path)?;
        let (record, manifest) = view.manifest_of(&p).await?;
        let msgs = crate::delta_rpc::manifest_messages(file_info(&record), &manifest);
        let bytes: usize = msgs.iter().map(prost::Message::encoded_len).sum();
        self.stats.add_sent(bytes as u64);
        Ok(Response::new(Box::pin(futures::stream::iter(
            msgs.into_iter().map(Ok),
        ))))
    }

    type GetPiecesStream = Stream2<v1::GetPiecesResponse>;

    #[tracing::instrument(skip_all)]
    async fn get_pieces(
        &self,
        request: Request<v1::GetPiecesRequest>,
    ) -> Result<Response<Self::GetPiecesStream>, Status> {
        let view = self.view(&request);
        let req = request.into_inner();
        let p = path(&req.path)?;
        let lists = view.fine_pieces(&p, req.revision, req.chunks).await?;
        let msgs = crate::delta_rpc::pieces_messages(&lists);
        let bytes: usize = msgs.iter().map(prost::Message::encoded_len).sum();
        self.stats.add_sent(bytes as u64);
        Ok(Response::new(Box::pin(futures::stream::iter(
            msgs.into_iter().map(Ok),
        ))))
    }

    #[tracing::instrument(skip_all)]
    async fn find_chunks(
        &self,
        request: Request<v1::FindChunksRequest>,
    ) -> Result<Response<v1::FindChunksResponse>, Status> {
        let view = self.view(&request);
        let req = request.into_inner();
        self.stats
            .add_received(prost::Message::encoded_len(&req) as u64);
        let reply = crate::delta_rpc::find_chunks(&view, req).await?;
        self.stats
            .add_sent(prost::Message::encoded_len(&reply) as u64);
        Ok(Response::new(reply))
    }

    async fn stats(
        &self,
        _request: Request<v1::StatsRequest>,
    ) -> Result<Response<v1::StatsResponse>, Status> {
        let s = self.stats.snapshot();
        Ok(Response::new(v1::StatsResponse {
            bytes_received: s.received,
            bytes_sent: s.sent,
        }))
    }

    async fn stat(
        &self,
        request: Request<v1::StatRequest>,
    ) -> Result<Response<v1::FileInfo>, Status> {
        let view = self.view(&request);
        let p = path(&request.into_inner().path)?;
        let record = view.stat(&p).await?;
        Ok(Response::new(file_info(&record)))
    }

    type ListStream = Stream2<v1::ListResponse>;

    async fn list(
        &self,
        request: Request<v1::ListRequest>,
    ) -> Result<Response<Self::ListStream>, Status> {
        let view = self.view(&request);
        let req = request.into_inner();
        let prefix = if req.prefix.is_empty() {
            None
        } else {
            Some(path(req.prefix.trim_end_matches('/'))?)
        };
        // Outside the caller's folder: an empty listing, as for a prefix
        // that matches nothing.
        let Some(prefix) = view.list_prefix(prefix) else {
            let empty = v1::ListResponse { files: Vec::new() };
            return Ok(Response::new(Box::pin(futures::stream::once(async {
                Ok(empty)
            }))));
        };
        let page = match req.page_size {
            0 => limits::LIST_PAGE_SIZE,
            n => n.min(limits::LIST_PAGE_SIZE),
        };
        let (tx, rx) = mpsc::channel(2);
        tokio::spawn(async move {
            let mut after: Option<String> = None;
            loop {
                let files = match view.list_page(prefix.clone(), after.clone(), page).await {
                    Ok(f) => f,
                    Err(e) => {
                        let _ = tx.send(Err(e.into())).await;
                        return;
                    }
                };
                let last = files.len() < page as usize;
                after = files.last().map(|f| f.path.to_string());
                let msg = v1::ListResponse {
                    files: files.iter().map(file_info).collect(),
                };
                if (!msg.files.is_empty() || after.is_none()) && tx.send(Ok(msg)).await.is_err() {
                    return;
                }
                if last {
                    return;
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn delete(
        &self,
        request: Request<v1::DeleteRequest>,
    ) -> Result<Response<v1::DeleteResponse>, Status> {
        let view = self.view(&request);
        let req = request.into_inner();
        let p = path(&req.path)?;
        let seq = view.delete(&p, req.if_revision).await?;
        Ok(Response::new(v1::DeleteResponse { seq }))
    }

    async fn rename(
        &self,
        request: Request<v1::RenameRequest>,
    ) -> Result<Response<v1::RenameResponse>, Status> {
        let view = self.view(&request);
        let req = request.into_inner();
        let from = path(&req.from)?;
        let to = path(&req.to)?;
        let (seq, files) = view
            .rename(&from, &to, req.overwrite, req.if_revision)
            .await?;
        Ok(Response::new(v1::RenameResponse { seq, files }))
    }

    type WatchStream = Stream2<v1::WatchResponse>;

    async fn watch(
        &self,
        request: Request<v1::WatchRequest>,
    ) -> Result<Response<Self::WatchStream>, Status> {
        let view = self.view(&request);
        let since = request.into_inner().since;
        // Subscribe before reading the backlog so nothing falls in between.
        let live = self.store.subscribe();
        let (floor, newest) = self.store.log_bounds().await?;
        let (tx, rx) = mpsc::channel(64);
        let shutdown = self.shutdown.clone();
        let revoked = view.who().revoked();
        let inline = self.inline.clone();
        tokio::spawn(async move {
            let start = if since < floor || since > newest {
                let resync = v1::watch_response::Event::Resync(v1::Resync {
                    current_seq: newest,
                });
                if tx
                    .send(Ok(v1::WatchResponse {
                        event: Some(resync),
                    }))
                    .await
                    .is_err()
                {
                    return;
                }
                newest
            } else {
                since
            };
            tokio::select! {
                () = shutdown.cancelled() => {}
                // A revoked token's watch ends at once, saying why.
                () = revoked => {
                    let _ = tx.send(Err(Identity::revoked_status())).await;
                }
                r = feed_watch(view, &inline, live, start, &tx) => {
                    if let Err(e) = r {
                        let _ = tx.send(Err(e.into())).await;
                    }
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }
}

type WatchTx = mpsc::Sender<Result<v1::WatchResponse, Status>>;

/// Sends what `view` may see of `c` (with `inline`, a small file's put
/// with its content); false when the client has gone.
async fn send_change(
    view: &View,
    inline: Option<&crate::inline::InlineCache>,
    c: ChangeRecord,
    tx: &WatchTx,
) -> Result<bool, ServiceError> {
    for c in view.visible(c).await? {
        let mut msg = change(&c);
        if let Some(inline) = inline {
            msg.content = inline.content(view, &c).await;
        }
        if !send_event(tx, v1::watch_response::Event::Change(msg)).await {
            return Ok(false);
        }
    }
    Ok(true)
}

/// Sends one event; false when the client has gone.
async fn send_event(tx: &WatchTx, event: v1::watch_response::Event) -> bool {
    tx.send(Ok(v1::WatchResponse { event: Some(event) }))
        .await
        .is_ok()
}

/// Sends every logged change after `*last`; false when the client has gone.
/// Without content: a backlog (a restart reading back thousands of its own
/// changes) is not worth reading every small file for.
async fn catch_up(view: &View, last: &mut u64, tx: &WatchTx) -> Result<bool, ServiceError> {
    loop {
        let batch = view.store().changes_since(*last, 1000).await?;
        if batch.is_empty() {
            return Ok(true);
        }
        for c in batch {
            let seq = c.seq;
            if !send_change(view, None, c, tx).await? {
                return Ok(false);
            }
            *last = seq;
        }
    }
}

/// Sends the log after `last`, then live changes, filling any gap from the
/// index. Returns when the client goes away.
async fn feed_watch(
    view: View,
    inline: &crate::inline::InlineCache,
    mut live: broadcast::Receiver<ChangeRecord>,
    mut last: u64,
    tx: &WatchTx,
) -> Result<(), ServiceError> {
    use v1::watch_response::Event;
    if !catch_up(&view, &mut last, tx).await? {
        return Ok(());
    }
    if !send_event(tx, Event::CaughtUp(v1::CaughtUp { seq: last })).await {
        return Ok(());
    }
    loop {
        match live.recv().await {
            Ok(c) if c.seq <= last => {}
            Ok(c) if c.seq == last + 1 => {
                let seq = c.seq;
                if !send_change(&view, Some(inline), c, tx).await? {
                    return Ok(());
                }
                last = seq;
            }
            // A gap (announcements raced) or a lagging receiver: the index
            // has everything, in order.
            Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) => {
                if !catch_up(&view, &mut last, tx).await? {
                    return Ok(());
                }
            }
            Err(broadcast::error::RecvError::Closed) => return Ok(()),
        }
    }
}
