//! The delta RPCs of the Files service: DeltaUpload (one bidirectional
//! stream: manifest in, missing-chunk bitmap out, [fine pieces of the
//! missing chunks in, missing-piece bitmap out,] bytes in, file out),
//! GetManifest, GetPieces and FindChunks. The store does the work (`store/delta.rs`); this is the
//! protocol and its checks.
//!
//! Invariant: nothing from the client is used before it is checked — the
//! chunk count against the limit before any chunk is received (so a
//! manifest of 10 million chunks is refused at its header), the manifest
//! with [`Manifest::validate`] before anything is planned, every chunk's
//! bytes against its hash as it arrives. Any failure drops the assembly,
//! which removes its staging file; the current version is never touched.
//! An upload whose stream breaks or ends early keeps what it assembled as
//! the file's kept part (bounded with the parts of whole uploads), which
//! the next attempt copies from instead of receiving it again.

use std::time::{Duration, SystemTime};

use distribusync_core::delta::{Manifest, ManifestLimits, PARAMS_V1};
use distribusync_proto::delta::{ManifestReceiver, ManifestWireError, pieces_of_page};
use distribusync_proto::v1;
use prost::Message;
use tokio::sync::mpsc;
use tonic::{Status, Streaming};

use crate::error::ServiceError;
use crate::stats::TransferStats;
use crate::store::{DeltaHeader, DeltaWrite, FileRecord, View};

fn wire_error(e: ManifestWireError) -> ServiceError {
    match e {
        ManifestWireError::TooManyChunks { count, limit } => ServiceError::TooLarge {
            what: format!("a manifest of {count} chunks"),
            limit: format!("{limit} chunks per manifest"),
        },
        e => ServiceError::InvalidArgument(e.to_string()),
    }
}

fn protocol(what: &str) -> Status {
    ServiceError::InvalidArgument(format!(
        "a delta upload carries a DeltaBegin, its manifest's pages, then the bytes asked for; {what}"
    ))
    .into()
}

/// Reads the next request, counting its bytes.
async fn next(
    stream: &mut Streaming<v1::DeltaUploadRequest>,
    idle: Duration,
    stats: &TransferStats,
) -> Result<Option<v1::delta_upload_request::Msg>, Status> {
    let msg = crate::transport::next_message(stream, idle, "delta upload").await?;
    Ok(msg.map(|m| {
        stats.add_received(m.encoded_len() as u64);
        m.msg
    }))
    .and_then(|m| match m {
        Some(None) => Err(protocol("got an empty message")),
        Some(Some(m)) => Ok(Some(m)),
        None => Ok(None),
    })
}

/// Sends one answer of a delta upload, counting its bytes.
async fn reply(
    tx: &mpsc::Sender<Result<v1::DeltaUploadResponse, Status>>,
    stats: &TransferStats,
    msg: v1::delta_upload_response::Msg,
) -> Result<(), Status> {
    let msg = v1::DeltaUploadResponse { msg: Some(msg) };
    stats.add_sent(msg.encoded_len() as u64);
    tx.send(Ok(msg))
        .await
        .map_err(|_| Status::cancelled("the client went away"))
}

/// Runs one delta upload to its end: the new file's record, or why not.
pub(crate) async fn delta_upload(
    view: View,
    mut stream: Streaming<v1::DeltaUploadRequest>,
    idle: Duration,
    stats: &TransferStats,
    tx: &mpsc::Sender<Result<v1::DeltaUploadResponse, Status>>,
    max_file_size: u64,
) -> Result<FileRecord, Status> {
    use v1::delta_upload_request::Msg;
    let Some(Msg::Begin(begin)) = next(&mut stream, idle, stats).await? else {
        return Err(protocol("it must start with a DeltaBegin"));
    };
    let path = distribusync_core::RemotePath::parse(&begin.path).map_err(ServiceError::from)?;
    let header = begin.manifest.ok_or_else(|| {
        ServiceError::InvalidArgument(format!("{}: the DeltaBegin has no manifest", path.shown()))
    })?;
    if header.size > max_file_size {
        return Err(ServiceError::TooLarge {
            what: format!("{}: size {} bytes", path.shown(), header.size),
            limit: format!("{max_file_size} bytes (max file size)"),
        }
        .into());
    }
    let limits = ManifestLimits::default();
    let mut receiver = ManifestReceiver::new(&header, &limits).map_err(wire_error)?;
    while !receiver.is_complete() {
        match next(&mut stream, idle, stats).await? {
            Some(Msg::Page(p)) => receiver.add(p).map_err(wire_error)?,
            Some(_) => return Err(protocol("got data before the whole manifest")),
            None => break,
        }
    }
    let manifest: Manifest = receiver.finish().map_err(wire_error)?;
    manifest
        .validate(&PARAMS_V1, &limits)
        .map_err(|e| ServiceError::InvalidArgument(format!("{}: {e}", path.shown())))?;
    let modified = match begin.modified {
        None => SystemTime::now(),
        Some(t) => distribusync_proto::system_time(&t).ok_or_else(|| {
            ServiceError::InvalidArgument(format!("{}: modified time out of range", path.shown()))
        })?,
    };
    let h = DeltaHeader {
        path,
        manifest,
        modified,
        if_revision: begin.if_revision,
        base_revision: begin.base_revision,
        locks: Default::default(),
    };
    let mut sources = view.delta_plan(&h).await?;
    let missing = sources.plan.missing_bitmap();
    // The fine round, for a client that offers it and where it can help.
    let regions = if begin.fine {
        sources.regions_to_refine(&h.manifest)
    } else {
        Vec::new()
    };
    let need = v1::DeltaNeed {
        missing: missing.as_bytes().to_vec(),
        bytes: sources.literal_bytes(),
        pieces: !regions.is_empty(),
    };
    tracing::debug!(path = %h.path, chunks = h.manifest.chunks.len(), missing = sources.plan.missing_chunks().len(), bytes = need.bytes, refine = need.pieces, "delta upload planned");
    reply(tx, stats, v1::delta_upload_response::Msg::Need(need)).await?;
    if !regions.is_empty() {
        let limit = PARAMS_V1.max_fine_per_chunk();
        let count = sources.plan.missing_chunks().len();
        let mut lists = Vec::with_capacity(count);
        while lists.len() < count {
            match next(&mut stream, idle, stats).await? {
                Some(Msg::Pieces(p)) => lists.push(pieces_of_page(p, limit).map_err(wire_error)?),
                Some(_) => return Err(protocol("the pieces of every missing chunk come first")),
                None => {
                    return Err(ServiceError::InvalidArgument(format!(
                        "{}: the delta upload ended after {} of the {count} piece lists",
                        h.path.shown(),
                        lists.len()
                    ))
                    .into());
                }
            }
        }
        sources = view
            .refine_delta(sources, regions, lists)
            .await
            .map_err(|e| match e {
                ServiceError::InvalidArgument(m) => {
                    ServiceError::InvalidArgument(format!("{}: {m}", h.path.shown()))
                }
                e => e,
            })?;
        let missing = sources
            .plan
            .missing_pieces_bitmap()
            .ok_or_else(|| protocol("no pieces were refined"))?;
        let need = v1::PiecesNeed {
            missing: missing.as_bytes().to_vec(),
            bytes: sources.literal_bytes(),
        };
        tracing::debug!(path = %h.path, pieces = missing.len(), bytes = need.bytes, "delta upload refined");
        reply(tx, stats, v1::delta_upload_response::Msg::PiecesNeed(need)).await?;
    }
    let mut write = view.begin_delta(h, sources).await?;
    match receive_data(&mut write, &mut stream, idle, stats).await {
        Ok(()) => Ok(write.finish().await?),
        Err(Broken { status, keep }) => {
            if keep {
                write.keep().await;
            }
            Err(status)
        }
    }
}

/// Why the data of a delta upload stopped coming; with `keep`, what was
/// assembled (verified) is kept for a retry: the connection broke or went
/// idle, or a source changed; not a client that ended the stream (it gave
/// up) or sent what it should not.
struct Broken {
    status: Status,
    keep: bool,
}

impl From<ServiceError> for Broken {
    fn from(e: ServiceError) -> Self {
        let keep = !matches!(e, ServiceError::InvalidArgument(_));
        Broken {
            status: e.into(),
            keep,
        }
    }
}

/// Receives the bytes asked for and hands them to `write` op by op.
async fn receive_data(
    write: &mut DeltaWrite,
    stream: &mut Streaming<v1::DeltaUploadRequest>,
    idle: Duration,
    stats: &TransferStats,
) -> Result<(), Broken> {
    use v1::delta_upload_request::Msg;
    let refused = |status: Status| Broken {
        status,
        keep: false,
    };
    let mut carry: Vec<u8> = Vec::new();
    while let Some(len) = write.next_literal().await? {
        let len = len as usize;
        while carry.len() < len {
            let msg = next(stream, idle, stats).await.map_err(|status| Broken {
                keep: status.code() != tonic::Code::InvalidArgument,
                status,
            })?;
            match msg {
                Some(Msg::Data(d)) => carry.extend_from_slice(&d),
                Some(_) => return Err(refused(protocol("got a manifest page among the data"))),
                // A clean end is a client that gave up (it declined to
                // send that much): nothing is kept for it.
                None => {
                    return Err(refused(
                        ServiceError::InvalidArgument(
                            "the delta upload ended before every chunk asked for arrived".into(),
                        )
                        .into(),
                    ));
                }
            }
        }
        let rest = carry.split_off(len);
        write.literal(std::mem::replace(&mut carry, rest)).await?;
    }
    if !carry.is_empty() {
        return Err(refused(protocol("got more data than was asked for")));
    }
    Ok(())
}

/// Most chunks one FindChunks request may ask about.
const FIND_CHUNKS_MAX: usize = 64;

/// Answers FindChunks: which of the chunks asked about the server holds in
/// files the caller may read.
pub(crate) async fn find_chunks(
    view: &View,
    req: v1::FindChunksRequest,
) -> Result<v1::FindChunksResponse, Status> {
    if req.params != PARAMS_V1.id() {
        return Err(ServiceError::InvalidArgument(format!(
            "chunks cut with parameters v{}; this server cuts with v{}",
            req.params,
            PARAMS_V1.id()
        ))
        .into());
    }
    let page = req.chunks.ok_or_else(|| {
        ServiceError::InvalidArgument("a FindChunks request names no chunks".into())
    })?;
    let chunks = pieces_of_page(page, FIND_CHUNKS_MAX).map_err(|e| match e {
        ManifestWireError::TooManyPieces { count, limit } => ServiceError::InvalidArgument(
            format!("FindChunks asks about {count} chunks; at most {limit} per request"),
        ),
        e => wire_error(e),
    })?;
    let known = view.find_chunks(chunks).await?;
    Ok(v1::FindChunksResponse {
        known: distribusync_core::delta::Bitmap::from_bools(known)
            .as_bytes()
            .to_vec(),
    })
}

/// The messages of a GetPieces answer: one page per chunk.
pub(crate) fn pieces_messages(
    lists: &[Vec<distribusync_core::delta::ChunkRef>],
) -> Vec<v1::GetPiecesResponse> {
    lists
        .iter()
        .map(|l| v1::GetPiecesResponse {
            pieces: Some(distribusync_proto::delta::pieces_page(l)),
        })
        .collect()
}

/// The messages of a GetManifest answer: the file, the header, the pages.
pub(crate) fn manifest_messages(file: v1::FileInfo, m: &Manifest) -> Vec<v1::GetManifestResponse> {
    use v1::get_manifest_response::Msg;
    let mut out = vec![
        v1::GetManifestResponse {
            msg: Some(Msg::File(file)),
        },
        v1::GetManifestResponse {
            msg: Some(Msg::Header(distribusync_proto::delta::manifest_header(m))),
        },
    ];
    out.extend(
        distribusync_proto::delta::manifest_pages(m).map(|p| v1::GetManifestResponse {
            msg: Some(Msg::Page(p)),
        }),
    );
    out
}
