//! `GET /api/events`: the change log pushed to the page as server-sent
//! events, following the same feed as Watch (the live broadcast, gaps and
//! lag filled from the log in order, each change filtered through the
//! session's [`View`](crate::store::View)).
//!
//! Events: `change` (one JSON change), `resync` (the page should reload
//! its listing: it missed changes), and a comment every
//! [`KEEPALIVE`] so proxies keep the stream open. The stream ends at
//! shutdown and when the session's token is revoked.

use std::convert::Infallible;
use std::time::Duration;

use axum::extract::State;
use axum::response::sse::{Event, KeepAlive, Sse};
use futures::Stream;
use serde::Serialize;
use tokio::sync::{broadcast, mpsc};
use tokio_stream::wrappers::ReceiverStream;

use super::session::Signed;
use super::{ApiResult, Web, need};
use crate::error::ServiceError;
use crate::store::{ChangeOp, ChangeRecord, View};

const KEEPALIVE: Duration = Duration::from_secs(15);

#[derive(Debug, Serialize)]
struct Change<'a> {
    seq: u64,
    op: &'static str,
    path: &'a str,
    new_path: Option<&'a str>,
    folder: bool,
}

fn event(c: &ChangeRecord) -> Event {
    let op = match c.op {
        ChangeOp::Put => "put",
        ChangeOp::Delete => "delete",
        ChangeOp::Rename => "rename",
    };
    let body = Change {
        seq: c.seq,
        op,
        path: c.path.as_str(),
        new_path: c.new_path.as_ref().map(|p| p.as_str()),
        folder: c.folder,
    };
    Event::default()
        .event("change")
        .json_data(body)
        .unwrap_or_else(|_| Event::default().event("resync").data("{}"))
}

type Tx = mpsc::Sender<Result<Event, Infallible>>;

/// Sends what `view` may see of `c`; false when the page has gone.
async fn send(view: &View, c: ChangeRecord, tx: &Tx) -> Result<bool, ServiceError> {
    for c in view.visible(c).await? {
        if tx.send(Ok(event(&c))).await.is_err() {
            return Ok(false);
        }
    }
    Ok(true)
}

async fn catch_up(view: &View, last: &mut u64, tx: &Tx) -> Result<bool, ServiceError> {
    loop {
        let batch = view.store().changes_since(*last, 1000).await?;
        if batch.is_empty() {
            return Ok(true);
        }
        for c in batch {
            let seq = c.seq;
            if !send(view, c, tx).await? {
                return Ok(false);
            }
            *last = seq;
        }
    }
}

async fn feed(
    view: View,
    mut live: broadcast::Receiver<ChangeRecord>,
    mut last: u64,
    tx: Tx,
) -> Result<(), ServiceError> {
    loop {
        match live.recv().await {
            Ok(c) if c.seq <= last => {}
            Ok(c) if c.seq == last + 1 => {
                let seq = c.seq;
                if !send(&view, c, &tx).await? {
                    return Ok(());
                }
                last = seq;
            }
            Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) => {
                if !catch_up(&view, &mut last, &tx).await? {
                    return Ok(());
                }
            }
            Err(broadcast::error::RecvError::Closed) => return Ok(()),
        }
    }
}

pub(crate) async fn events(
    State(web): State<Web>,
    s: Signed,
) -> ApiResult<Sse<impl Stream<Item = Result<Event, Infallible>>>> {
    need(&s.0.identity, "Files/Watch")?;
    let store = web.store()?.clone();
    let view = store.view(s.0.identity.clone());
    // Subscribe before reading where the log ends, so nothing falls between.
    let live = store.subscribe();
    let (_, newest) = store.log_bounds().await?;
    let (tx, rx) = mpsc::channel(64);
    let shutdown = web.shutdown.clone();
    let revoked = s.0.identity.revoked();
    tokio::spawn(async move {
        // The page lists the folder after it opens the stream: tell it the
        // stream is ready.
        let ready = Event::default().event("ready").data(newest.to_string());
        if tx.send(Ok(ready)).await.is_err() {
            return;
        }
        tokio::select! {
            () = shutdown.cancelled() => {}
            () = revoked => {
                let _ = tx.send(Ok(Event::default().event("signedout").data("{}"))).await;
            }
            r = feed(view, live, newest, tx.clone()) => {
                if let Err(e) = r {
                    tracing::warn!(error = %e, "web: change feed failed");
                    let _ = tx.send(Ok(Event::default().event("resync").data("{}"))).await;
                }
            }
        }
    });
    Ok(Sse::new(ReceiverStream::new(rx)).keep_alive(KeepAlive::new().interval(KEEPALIVE)))
}
