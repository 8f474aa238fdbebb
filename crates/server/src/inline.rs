//! Small files' content carried in the Watch stream (issue 16, many
//! clients): a put of a file of at most [`INLINE_MAX`] bytes is sent to
//! every watching client with its bytes, so a hundred sync clients
//! following the log need no hundred `Download` calls (each a stream, a
//! file opened and read, a header and a chunk) for one change.
//!
//! Invariant: the bytes sent with a change are the content the change
//! names (read at that revision and checked against its hash), or none.
//! They are read once per change whoever watches: the first client's task
//! reads them, the others wait for that read and share it
//! ([`InlineCache`], the last [`KEPT`] changes): every watcher's message
//! holds the same buffer (`Bytes`, counted references), not a copy.

use std::collections::VecDeque;
use std::os::unix::fs::FileExt;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use distribusync_core::{ContentHash, RemotePath};
use tokio::sync::OnceCell;

use crate::store::{ChangeOp, ChangeRecord, Content, View};

/// Files up to this size travel in the change record.
pub(crate) const INLINE_MAX: u64 = 4096;

/// Changes whose content is kept for the clients still sending them.
const KEPT: usize = 64;

type Cell = Arc<OnceCell<Option<Bytes>>>;

/// The content of the last few small puts, each read once (see the module
/// header).
#[derive(Debug, Default)]
pub(crate) struct InlineCache {
    // A std Mutex: held only to find or add a cell, never across an await.
    cells: Mutex<VecDeque<((RemotePath, u64), Cell)>>,
}

impl InlineCache {
    /// The content to send with `c`, when it is a put of a small file
    /// still at that revision.
    pub(crate) async fn content(&self, view: &View, c: &ChangeRecord) -> Option<Bytes> {
        if c.op != ChangeOp::Put || c.size > INLINE_MAX {
            return None;
        }
        let hash = c.hash?;
        let key = (c.path.clone(), c.revision);
        let cell = {
            let mut cells = match self.cells.lock() {
                Ok(g) => g,
                Err(poisoned) => poisoned.into_inner(),
            };
            match cells.iter().find(|(k, _)| *k == key) {
                Some((_, cell)) => cell.clone(),
                None => {
                    let cell = Cell::default();
                    cells.push_back((key, cell.clone()));
                    if cells.len() > KEPT {
                        cells.pop_front();
                    }
                    cell
                }
            }
        };
        let data = cell
            .get_or_init(|| read(view, &c.path, c.revision, c.size, hash))
            .await;
        data.clone()
    }
}

/// The content of `path` if the store still has it at `revision` and it
/// hashes to `hash`.
async fn read(
    view: &View,
    path: &RemotePath,
    revision: u64,
    size: u64,
    hash: ContentHash,
) -> Option<Bytes> {
    let (record, content) = view.open_content(path).await.ok()?;
    if record.revision != revision || record.size != size {
        return None;
    }
    let Content::File(file) = content else {
        // The cluster's chunks: the client downloads as before.
        return None;
    };
    let data = tokio::task::spawn_blocking(move || {
        let mut buf = vec![0; usize::try_from(size).unwrap_or(0)];
        file.read_exact_at(&mut buf, 0).map(|()| buf)
    })
    .await
    .ok()?
    .ok()?;
    (ContentHash::of(&data) == hash).then(|| Bytes::from(data))
}
