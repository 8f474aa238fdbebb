//! The delta RPCs of the Files service: DeltaUpload (one bidirectional
//! stream: manifest in, missing-chunk bitmap out, chunk bytes in, file out)
//! and GetManifest. The store does the work (`store/delta.rs`); this is the
//! protocol and its checks.
//!
//! Invariant: nothing from the client is used before it is checked — the
//! chunk count against the limit before any chunk is received (so a
//! manifest of 10 million chunks is refused at its header), the manifest
//! with [`Manifest::validate`] before anything is planned, every chunk's
//! bytes against its hash as it arrives. Any failure drops the assembly,
//! which removes its staging file; the current version is never touched.

use std::time::{Duration, SystemTime};

use distribusync_core::delta::{Manifest, ManifestLimits, PARAMS_V1};
use distribusync_proto::delta::{ManifestReceiver, ManifestWireError};
use distribusync_proto::v1;
use prost::Message;
use tokio::sync::mpsc;
use tonic::{Status, Streaming};

use crate::error::ServiceError;
use crate::stats::TransferStats;
use crate::store::{DeltaHeader, FileRecord, View};

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
    let sources = view.delta_plan(&h).await?;
    let missing = sources.plan.missing_bitmap();
    let need = v1::DeltaNeed {
        missing: missing.as_bytes().to_vec(),
        bytes: sources.literal_bytes(),
    };
    tracing::debug!(path = %h.path, chunks = h.manifest.chunks.len(), missing = sources.plan.missing_chunks().len(), bytes = need.bytes, "delta upload planned");
    if tx
        .send(Ok(v1::DeltaUploadResponse {
            msg: Some(v1::delta_upload_response::Msg::Need(need)),
        }))
        .await
        .is_err()
    {
        return Err(Status::cancelled("the client went away"));
    }
    let mut write = view.begin_delta(h, sources).await?;
    let mut carry: Vec<u8> = Vec::new();
    while let Some(len) = write.next_literal().await? {
        let len = len as usize;
        while carry.len() < len {
            match next(&mut stream, idle, stats).await? {
                Some(Msg::Data(d)) => carry.extend_from_slice(&d),
                Some(_) => return Err(protocol("got a manifest page among the data")),
                None => {
                    return Err(ServiceError::InvalidArgument(
                        "the delta upload ended before every chunk asked for arrived".into(),
                    )
                    .into());
                }
            }
        }
        let rest = carry.split_off(len);
        write.literal(std::mem::replace(&mut carry, rest)).await?;
    }
    if !carry.is_empty() {
        return Err(protocol("got more data than was asked for"));
    }
    Ok(write.finish().await?)
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
