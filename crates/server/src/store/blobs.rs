//! File contents behind a trait (issue 12): [`Blobs`], and its cluster
//! implementation [`S3Blobs`], immutable content-addressed chunks in an
//! S3-compatible bucket.
//!
//! What the trait covers: an upload is staged and verified on the
//! instance that receives it (a local staging file, hashed as it arrives:
//! the same code for both backends, `store/upload.rs`); [`Blobs::install`]
//! then makes its content durable where every instance can read it, and
//! [`Blobs::read_chunk`] reads it back by range (a file's ranges map to its
//! chunks through its manifest). The local backend's contents are the plain
//! files in MASTER, installed by a rename and read through an open handle
//! (`store/disk.rs`): its behaviour is unchanged and does not go through
//! this trait object (see docs/DESIGN.md, "Cluster backend").
//!
//! Invariants of [`S3Blobs`]:
//! - a chunk's key is `chunks/<BLAKE3 of its bytes>`; a key is written once
//!   and never rewritten (a chunk already there is not sent again), so
//!   correctness never depends on conditional writes or on read-after-
//!   overwrite consistency;
//! - every chunk read is checked against its name: bytes that no longer
//!   match are an error naming the object, never served;
//! - every chunk of a file is stored before the metadata that references it
//!   commits (the caller's order), so a committed file never names a chunk
//!   that is not there; the collector (`store/cluster.rs`) removes only
//!   chunks older than its grace period that no manifest references.

use std::fmt;
use std::os::unix::fs::FileExt;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use distribusync_core::ContentHash;
use distribusync_core::delta::{ChunkRef, Manifest};
use futures::{StreamExt, TryStreamExt};
use object_store::aws::AmazonS3Builder;
use object_store::path::Path as Key;
// The base trait's methods only: their futures are `Send` (those of
// `ObjectStoreExt` are not declared so).
use object_store::{
    BackoffConfig, ClientOptions, GetOptions, ObjectStore, PutOptions, PutPayload, RetryConfig,
};

use super::backend::BoxFuture;
use crate::error::{Result, ServiceError};

/// Chunks sent to (or read from) the bucket at once by one upload.
const PARALLEL_CHUNKS: usize = 8;

/// Bytes of chunks read from staging files and on their way to the bucket,
/// over every upload of this instance: with 8 files of a group and 8 chunks
/// of a file (up to 4 MiB each) in flight, concurrent groups would
/// otherwise hold up to 256 MiB each.
const SENDING_BUDGET: usize = 64 << 20;

/// Chunks at least this big are looked for in the bucket before they are
/// sent; smaller ones are sent (see `S3Blobs::put_chunk`).
const ASK_FIRST_FROM: u32 = 64 << 10;

/// The unit of [`SENDING_BUDGET`]'s semaphore.
const SENDING_UNIT: usize = 64 << 10;

/// The folder of the bucket chunks are kept in.
const CHUNKS: &str = "chunks";

/// What [`Blobs::install`] did. Whether a chunk sent was new to the
/// store is not known: a chunk under 64 KiB (`ASK_FIRST_FROM`) is sent without
/// asking, and the store may have had it (sending it again changes
/// nothing); so `sent` is an upper bound of what the store newly holds and
/// `skipped` a lower bound of what it reused.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Installed {
    /// Chunks sent to the store, and their bytes.
    pub sent: usize,
    pub sent_bytes: u64,
    /// Chunks not sent because the store had them already (asked first:
    /// only chunks of 64 KiB or more).
    pub skipped: usize,
}

/// A stored chunk, as [`Blobs::list_chunks`] sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StoredChunk {
    pub hash: ContentHash,
    /// When it was written, in seconds since the epoch.
    pub written: i64,
}

/// File contents, stored by content.
pub trait Blobs: Send + Sync + fmt::Debug {
    /// Makes every chunk of `manifest` durable in the store, reading the
    /// ones it lacks from `file` (the staged content, verified against
    /// `manifest.hash`). A chunk already stored is left as it is.
    ///
    /// # Errors
    /// [`ServiceError::Blobs`] when the store fails or cannot be reached;
    /// an IO error reading `file`.
    fn install<'a>(
        &'a self,
        file: Arc<std::fs::File>,
        manifest: &'a Manifest,
    ) -> BoxFuture<'a, Result<Installed>>;

    /// The bytes of one chunk, checked against its hash.
    ///
    /// # Errors
    /// [`ServiceError::Corrupt`] naming the object when its bytes do not
    /// match; [`ServiceError::Blobs`] when it cannot be read.
    fn read_chunk(&self, chunk: ChunkRef) -> BoxFuture<'_, Result<Bytes>>;

    /// Every chunk stored, for the collector.
    ///
    /// # Errors
    /// [`ServiceError::Blobs`].
    fn list_chunks(&self) -> BoxFuture<'_, Result<Vec<StoredChunk>>>;

    /// Removes a chunk (the collector's; nothing else removes one).
    ///
    /// # Errors
    /// [`ServiceError::Blobs`].
    fn delete_chunk(&self, hash: ContentHash) -> BoxFuture<'_, Result<()>>;
}

/// Where the cluster's contents live: `--blobs s3://BUCKET` and
/// `--s3-endpoint URL`; credentials from `AWS_ACCESS_KEY_ID` and
/// `AWS_SECRET_ACCESS_KEY`, the region from `AWS_REGION` (else
/// `us-east-1`, which S3-compatible servers accept).
#[derive(Clone, PartialEq, Eq)]
pub struct BlobsConfig {
    pub bucket: String,
    pub endpoint: Option<String>,
    pub region: String,
    pub access_key_id: String,
    pub secret_access_key: String,
}

impl fmt::Debug for BlobsConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BlobsConfig")
            .field("bucket", &self.bucket)
            .field("endpoint", &self.endpoint)
            .field("region", &self.region)
            .finish_non_exhaustive()
    }
}

impl BlobsConfig {
    /// The configuration `--blobs url` and `--s3-endpoint endpoint` name,
    /// with the credentials from the environment.
    ///
    /// # Errors
    /// [`ServiceError::InvalidArgument`], one line saying what to fix.
    pub fn from_url(url: &str, endpoint: Option<&str>) -> Result<Self> {
        let shown = distribusync_core::echo(url);
        let Some(rest) = url.strip_prefix("s3://") else {
            return Err(ServiceError::InvalidArgument(format!(
                "--blobs {shown}: not an S3 URL; expected s3://BUCKET"
            )));
        };
        let bucket = rest.trim_end_matches('/');
        let valid = (3..=63).contains(&bucket.len())
            && bucket
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.');
        if !valid {
            return Err(ServiceError::InvalidArgument(format!(
                "--blobs {shown}: {} is not a bucket name (3 to 63 lowercase letters, digits, '-' \
                 or '.'; no folder after it); expected s3://BUCKET",
                distribusync_core::echo(bucket)
            )));
        }
        if let Some(e) = endpoint
            && !(e.starts_with("http://") || e.starts_with("https://"))
        {
            return Err(ServiceError::InvalidArgument(format!(
                "--s3-endpoint {}: expected a URL such as http://s3.internal:8333",
                distribusync_core::echo(e)
            )));
        }
        let var = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
        let (Some(access_key_id), Some(secret_access_key)) =
            (var("AWS_ACCESS_KEY_ID"), var("AWS_SECRET_ACCESS_KEY"))
        else {
            return Err(ServiceError::InvalidArgument(format!(
                "--blobs {shown}: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY to the bucket's credentials"
            )));
        };
        Ok(Self {
            bucket: bucket.to_owned(),
            endpoint: endpoint.map(|e| e.trim_end_matches('/').to_owned()),
            region: var("AWS_REGION").unwrap_or_else(|| "us-east-1".to_owned()),
            access_key_id,
            secret_access_key,
        })
    }

    /// The bucket, as printed.
    pub fn shown(&self) -> String {
        match &self.endpoint {
            Some(e) => format!("s3://{} at {e}", self.bucket),
            None => format!("s3://{}", self.bucket),
        }
    }
}

/// `e` and its causes on one line.
fn chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut next = e.source();
    while let Some(cause) = next {
        let s = cause.to_string();
        if !out.contains(&s) {
            out.push_str(": ");
            out.push_str(&s);
        }
        next = cause.source();
    }
    out.replace('\n', "; ")
}

/// Contents in an S3-compatible bucket; a cheap clone.
#[derive(Clone)]
pub struct S3Blobs {
    store: Arc<dyn ObjectStore>,
    shown: Arc<str>,
    /// [`SENDING_BUDGET`] in units of [`SENDING_UNIT`].
    sending: Arc<tokio::sync::Semaphore>,
    /// The most units of it ever held at once (see [`Self::sending_peak`]).
    sending_peak: Arc<std::sync::atomic::AtomicUsize>,
}

impl fmt::Debug for S3Blobs {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("S3Blobs")
            .field("bucket", &self.shown)
            .finish_non_exhaustive()
    }
}

fn key(hash: &ContentHash) -> Key {
    Key::from(format!("{CHUNKS}/{hash}"))
}

impl S3Blobs {
    /// Connects to the bucket and checks that it is there and that the
    /// credentials may list it.
    ///
    /// # Errors
    /// [`ServiceError::Blobs`], one line naming the bucket and what is
    /// wrong (unreachable, no such bucket, refused credentials).
    pub async fn open(config: &BlobsConfig) -> Result<Self> {
        // TLS to the endpoint is rustls with the ring provider, as the
        // rest of the server (docs/DESIGN.md, "S3 client"); installing it
        // fails harmlessly when it already is.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let shown = config.shown();
        let mut builder = AmazonS3Builder::new()
            .with_bucket_name(&config.bucket)
            .with_region(&config.region)
            .with_access_key_id(&config.access_key_id)
            .with_secret_access_key(&config.secret_access_key)
            .with_client_options(
                ClientOptions::new()
                    .with_connect_timeout(Duration::from_secs(5))
                    .with_timeout(Duration::from_secs(60))
                    .with_allow_http(true),
            )
            // A few quick retries: a request that still fails reaches the
            // client (UNAVAILABLE), which retries it, rather than holding
            // it for minutes.
            .with_retry(RetryConfig {
                backoff: BackoffConfig {
                    init_backoff: Duration::from_millis(100),
                    max_backoff: Duration::from_secs(2),
                    base: 2.0,
                },
                max_retries: 3,
                retry_timeout: Duration::from_secs(20),
            });
        if let Some(e) = &config.endpoint {
            builder = builder.with_endpoint(e);
        }
        let store = builder
            .build()
            .map_err(|e| ServiceError::Blobs(format!("blob store {shown}: {}", chain(&e))))?;
        let blobs = Self {
            store: Arc::new(store),
            shown: shown.into(),
            sending: Arc::new(tokio::sync::Semaphore::new(SENDING_BUDGET / SENDING_UNIT)),
            sending_peak: Arc::default(),
        };
        blobs.check().await?;
        tracing::info!(bucket = %blobs.shown, "contents in S3");
        Ok(blobs)
    }

    /// The most bytes of chunks this instance has held at once on their
    /// way to the bucket (bounded by [`SENDING_BUDGET`], 64 MiB).
    pub fn sending_peak(&self) -> usize {
        self.sending_peak.load(std::sync::atomic::Ordering::Relaxed) * SENDING_UNIT
    }

    /// The most [`Self::sending_peak`] may reach.
    pub const SENDING_BUDGET: usize = SENDING_BUDGET;

    /// The bucket, as printed.
    pub fn bucket(&self) -> &str {
        &self.shown
    }

    fn fail(&self, what: &str, e: &object_store::Error) -> ServiceError {
        ServiceError::Blobs(format!("blob store {}: {what}: {}", self.shown, chain(e)))
    }

    /// Lists (at most a page of) the chunks' folder: the bucket exists and
    /// the credentials may read it.
    async fn check(&self) -> Result<()> {
        let prefix = Key::from(CHUNKS);
        match self.store.list_with_delimiter(Some(&prefix)).await {
            Ok(_) => Ok(()),
            Err(e) => {
                let text = chain(&e);
                let why = if text.contains("NoSuchBucket") {
                    "no such bucket; create it first".to_owned()
                } else if matches!(
                    e,
                    object_store::Error::Unauthenticated { .. }
                        | object_store::Error::PermissionDenied { .. }
                ) || text.contains("AccessDenied")
                    || text.contains("InvalidAccessKeyId")
                    || text.contains("SignatureDoesNotMatch")
                {
                    format!(
                        "the credentials (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY) are refused: {text}"
                    )
                } else {
                    format!("cannot reach it: {text}")
                };
                Err(ServiceError::Blobs(format!(
                    "blob store {}: {why}",
                    self.shown
                )))
            }
        }
    }

    /// Stores one chunk unless it is there already; true when it was sent.
    async fn put_chunk(
        &self,
        file: Arc<std::fs::File>,
        offset: u64,
        chunk: ChunkRef,
    ) -> Result<bool> {
        let k = key(&chunk.hash);
        // A small chunk is sent without asking first: the question costs a
        // round trip like the answer, and sending it again writes the key
        // with the very bytes it is named after (no reader can tell).
        if chunk.len >= ASK_FIRST_FROM {
            match self
                .store
                .get_opts(&k, GetOptions::new().with_head(true))
                .await
            {
                Ok(_) => return Ok(false),
                Err(object_store::Error::NotFound { .. }) => {}
                Err(e) => return Err(self.fail(&format!("chunk {}", chunk.hash), &e)),
            }
        }
        let len = chunk.len as usize;
        // Held until the chunk is in the bucket (a chunk is at most the
        // budget: FastCDC's maximum is 4 MiB).
        let units = len
            .div_ceil(SENDING_UNIT)
            .clamp(1, SENDING_BUDGET / SENDING_UNIT);
        let _sending = self.sending.acquire_many(units as u32).await.map_err(|_| {
            ServiceError::Blobs(format!("blob store {}: shutting down", self.shown))
        })?;
        let held = SENDING_BUDGET / SENDING_UNIT - self.sending.available_permits();
        self.sending_peak
            .fetch_max(held, std::sync::atomic::Ordering::Relaxed);
        let bytes = tokio::task::spawn_blocking(move || {
            let mut buf = vec![0u8; len];
            file.read_exact_at(&mut buf, offset).map(|()| buf)
        })
        .await
        .map_err(|e| ServiceError::io("staging file", std::io::Error::other(e)))?
        .map_err(|e| ServiceError::io("staging file", e))?;
        // The staged file was verified as a whole; a chunk is checked again
        // here so that a key never holds bytes that do not match its name.
        if ContentHash::of(&bytes) != chunk.hash {
            return Err(ServiceError::io(
                "staging file",
                std::io::Error::other(format!("chunk {} changed while it was stored", chunk.hash)),
            ));
        }
        self.store
            .put_opts(&k, PutPayload::from(bytes), PutOptions::default())
            .await
            .map_err(|e| self.fail(&format!("storing chunk {}", chunk.hash), &e))?;
        Ok(true)
    }
}

impl Blobs for S3Blobs {
    fn install<'a>(
        &'a self,
        file: Arc<std::fs::File>,
        manifest: &'a Manifest,
    ) -> BoxFuture<'a, Result<Installed>> {
        Box::pin(async move {
            let sent: Vec<Option<u64>> = futures::stream::iter(manifest.offsets())
                .map(|(offset, chunk)| {
                    let file = file.clone();
                    async move {
                        let len = u64::from(chunk.len);
                        let sent = self.put_chunk(file, offset, chunk).await?;
                        Ok::<_, ServiceError>(sent.then_some(len))
                    }
                })
                .buffer_unordered(PARALLEL_CHUNKS)
                .try_collect()
                .await?;
            let done = sent.iter().flatten();
            Ok(Installed {
                sent: done.clone().count(),
                sent_bytes: done.sum(),
                skipped: sent.iter().filter(|s| s.is_none()).count(),
            })
        })
    }

    fn read_chunk(&self, chunk: ChunkRef) -> BoxFuture<'_, Result<Bytes>> {
        Box::pin(async move {
            let k = key(&chunk.hash);
            let got = self.store.get_opts(&k, GetOptions::new()).await;
            let bytes = match got {
                Ok(r) => r.bytes().await,
                Err(e) => Err(e),
            };
            let bytes = match bytes {
                Ok(b) => b,
                Err(e @ object_store::Error::NotFound { .. }) => {
                    return Err(ServiceError::Corrupt(format!(
                        "blob store {}: object {k} is missing: {}",
                        self.shown,
                        chain(&e)
                    )));
                }
                Err(e) => return Err(self.fail(&format!("reading object {k}"), &e)),
            };
            if bytes.len() != chunk.len as usize || ContentHash::of(&bytes) != chunk.hash {
                return Err(ServiceError::Corrupt(format!(
                    "blob store {}: object {k} no longer holds the bytes it is named after \
                     ({} bytes, expected {}); the file cannot be served",
                    self.shown,
                    bytes.len(),
                    chunk.len
                )));
            }
            Ok(bytes)
        })
    }

    fn list_chunks(&self) -> BoxFuture<'_, Result<Vec<StoredChunk>>> {
        Box::pin(async move {
            let prefix = Key::from(CHUNKS);
            let mut out = Vec::new();
            let mut listing = self.store.list(Some(&prefix));
            while let Some(meta) = listing.next().await {
                let meta = meta.map_err(|e| self.fail("listing chunks", &e))?;
                let Some(name) = meta.location.filename() else {
                    continue;
                };
                // Anything else in the folder is not ours to judge.
                let Ok(hash) = blake3::Hash::from_hex(name) else {
                    continue;
                };
                out.push(StoredChunk {
                    hash: hash.into(),
                    written: meta.last_modified.timestamp(),
                });
            }
            Ok(out)
        })
    }

    fn delete_chunk(&self, hash: ContentHash) -> BoxFuture<'_, Result<()>> {
        Box::pin(async move {
            let k = key(&hash);
            let one = futures::stream::iter([Ok(k.clone())]).boxed();
            let done = self.store.delete_stream(one).next().await;
            match done {
                None | Some(Ok(_) | Err(object_store::Error::NotFound { .. })) => Ok(()),
                Some(Err(e)) => Err(self.fail(&format!("removing object {k}"), &e)),
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_blobs_url_is_checked_before_anything_connects() {
        let bad = |url: &str, endpoint: Option<&str>| {
            BlobsConfig::from_url(url, endpoint)
                .map(|_| ())
                .unwrap_err()
                .to_string()
        };
        assert!(bad("http://bucket", None).contains("expected s3://BUCKET"));
        assert!(bad("s3://B", None).contains("is not a bucket name"));
        assert!(bad("s3://bucket/folder", None).contains("is not a bucket name"));
        assert!(bad("s3://bucket", Some("s3.internal:8333")).contains("expected a URL"));
    }
}
