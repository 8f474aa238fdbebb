//! The server's side: following its change log, reconnecting with backoff.

use std::time::Duration;

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::files::{Change, FileInfo, FilesClient, WatchEvent};

/// What the remote follower tells the engine.
#[derive(Debug)]
pub enum RemoteMsg {
    Change(Change),
    /// Everything up to `seq` has been delivered; the server is reachable.
    CaughtUp,
    /// The log no longer reached back: here is the whole server, as of `seq`.
    Snapshot(Vec<FileInfo>, u64),
    /// The server went away; the follower is retrying.
    Offline(String),
}

/// Retry delays: 0.5 s doubling up to 30 s.
pub fn backoff(attempt: u32) -> Duration {
    Duration::from_millis(500u64.saturating_mul(1 << attempt.min(6))).min(Duration::from_secs(30))
}

/// Follows the change log from `since` until cancelled or the engine goes.
pub async fn follow(
    client: FilesClient,
    mut since: u64,
    tx: mpsc::Sender<RemoteMsg>,
    cancel: CancellationToken,
) {
    let mut attempt = 0;
    loop {
        let result = tokio::select! {
            () = cancel.cancelled() => return,
            r = stream_once(&client, &mut since, &tx, &mut attempt) => r,
        };
        match result {
            Ok(()) => return, // the engine went away
            Err(e) => {
                if tx.send(RemoteMsg::Offline(e.to_string())).await.is_err() {
                    return;
                }
                let delay = backoff(attempt);
                attempt += 1;
                tracing::debug!(?delay, error = %e, "server unreachable; retrying");
                tokio::select! {
                    () = cancel.cancelled() => return,
                    () = tokio::time::sleep(delay) => {}
                }
            }
        }
    }
}

/// One watch stream; Ok when the engine is gone, Err when the stream broke.
async fn stream_once(
    client: &FilesClient,
    since: &mut u64,
    tx: &mpsc::Sender<RemoteMsg>,
    attempt: &mut u32,
) -> crate::Result<()> {
    let mut w = client.watch(*since).await?;
    loop {
        let msg = match w.next().await? {
            None => {
                return Err(crate::ClientError::Unreachable {
                    addr: client.addr().to_owned(),
                });
            }
            Some(WatchEvent::Change(c)) => {
                *since = c.seq;
                RemoteMsg::Change(c)
            }
            Some(WatchEvent::CaughtUp(_)) => {
                *attempt = 0;
                RemoteMsg::CaughtUp
            }
            Some(WatchEvent::Resync(seq)) => {
                let all = client.list_all(None).await?;
                *since = seq;
                RemoteMsg::Snapshot(all, seq)
            }
        };
        if tx.send(msg).await.is_err() {
            return Ok(());
        }
    }
}
