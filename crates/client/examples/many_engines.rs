//! Benchmark harness (bench/sync-scale.sh, part 4): one process running
//! one sync engine per folder given, each with its own connection to the
//! server (its own TCP connection and Watch stream), as that many `sync`
//! daemons would, without a process and a runtime each. The server's work
//! per client is the same either way; what this leaves out is the cost of
//! a hundred processes sharing the machine.
//!
//!   many_engines SERVER_URL DIR...      (runs until killed)

use std::time::Duration;

use distribusync_client::sync::{SyncEngine, SyncOptions};
use distribusync_client::{FilesClient, lazy_channel};
use tokio_util::sync::CancellationToken;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let addr = args.next().ok_or("usage: many_engines SERVER_URL DIR...")?;
    let stop = CancellationToken::new();
    let mut tasks = Vec::new();
    for dir in args {
        let client = FilesClient::new(lazy_channel(&addr)?, &addr);
        let mut opts = SyncOptions::new(&dir);
        opts.rescan_every = Duration::from_secs(3600);
        let engine = SyncEngine::open(opts, client)?;
        tasks.push(tokio::spawn(engine.run(stop.clone())));
    }
    eprintln!("many_engines: {} engines running", tasks.len());
    for t in tasks {
        if let Err(e) = t.await? {
            eprintln!("many_engines: {e}");
        }
    }
    Ok(())
}
