//! Menu item 4, Auto-sync: the real [`SyncEngine`] (as `distribusync sync` runs it),
//! spawned as a task of this process and stopped through its token.

use std::path::PathBuf;
use std::time::Duration;

use distribusync_client::sync::{SyncEngine, SyncError, SyncOptions, SyncStatus};
use tokio::runtime::Handle;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::{Leave, Menu, report};

/// How long stopping waits for the transfer in flight to finish.
const STOP_TIMEOUT: Duration = Duration::from_secs(30);

/// The folder offered when the person just presses Enter: the same default
/// (and environment variable) as `distribusync sync`.
pub(super) fn default_dir() -> PathBuf {
    std::env::var_os("DISTRIBUSYNC_SYNC_DIR")
        .filter(|v| !v.is_empty())
        .map_or_else(|| PathBuf::from("./SYNCHRONIZED"), PathBuf::from)
}

#[derive(Debug, Default)]
pub(super) struct AutoSync {
    running: Option<Running>,
}

#[derive(Debug)]
struct Running {
    dir: PathBuf,
    stop: CancellationToken,
    status: watch::Receiver<SyncStatus>,
    task: JoinHandle<Result<(), SyncError>>,
}

impl AutoSync {
    /// `off`, or `on (<dir>)`.
    pub(super) fn summary(&self) -> String {
        match &self.running {
            Some(r) if !r.task.is_finished() => format!("on ({})", r.dir.display()),
            Some(r) => format!("stopped ({}; see 4 → Status)", r.dir.display()),
            None => "off".to_owned(),
        }
    }

    /// Stops a running engine and waits for it (at most [`STOP_TIMEOUT`]).
    fn stop(&mut self, rt: &Handle) -> Option<(PathBuf, Result<(), String>)> {
        let r = self.running.take()?;
        r.stop.cancel();
        let ended = rt.block_on(async { tokio::time::timeout(STOP_TIMEOUT, r.task).await });
        let outcome = match ended {
            Ok(Ok(Ok(()))) => Ok(()),
            Ok(Ok(Err(e))) => Err(e.to_string()),
            Ok(Err(e)) => Err(format!("the sync task failed: {e}")),
            Err(_) => Err("did not stop in time; left running until exit".to_owned()),
        };
        Some((r.dir, outcome))
    }

    pub(super) fn stop_quietly(&mut self, rt: &Handle) {
        if let Some((dir, Err(e))) = self.stop(rt) {
            report(&format!("auto-sync {}", dir.display()), e);
        }
    }
}

pub(super) fn menu(m: &mut Menu) -> Result<(), Leave> {
    loop {
        match m.submenu("Auto-sync", &["Start", "Stop", "Status"])? {
            1 => start(m)?,
            2 => match m.autosync.stop(&m.rt) {
                Some((dir, Ok(()))) => println!("auto-sync of {} stopped", dir.display()),
                Some((dir, Err(e))) => report(&format!("auto-sync {}", dir.display()), e),
                None => println!("auto-sync is off"),
            },
            _ => status(m),
        }
    }
}

fn start(m: &mut Menu) -> Result<(), Leave> {
    if let Some(r) = &m.autosync.running
        && !r.task.is_finished()
    {
        println!(
            "auto-sync already runs for {}; stop it first",
            r.dir.display()
        );
        return Ok(());
    }
    // A run that ended by itself: forget it (its error was in Status).
    m.autosync.stop_quietly(&m.rt);
    let default = default_dir();
    let answer = m.ask(&format!("folder (Enter: {}): ", default.display()))?;
    let dir = if answer.is_empty() {
        default
    } else {
        crate::cmd::files::expand_home(&answer)
    };
    let opened = {
        let _runtime = m.rt.enter();
        SyncEngine::open(SyncOptions::new(&dir), m.files.clone())
    };
    let engine = match opened {
        Ok(e) => e,
        Err(e) => {
            report(&format!("auto-sync {}", dir.display()), e);
            return Ok(());
        }
    };
    let status = engine.status();
    let stop = CancellationToken::new();
    let task = m.rt.spawn(engine.run(stop.clone()));
    println!(
        "auto-sync started: {} <-> {} (runs while the menu is open)",
        dir.display(),
        m.files_addr
    );
    m.autosync.running = Some(Running {
        dir,
        stop,
        status,
        task,
    });
    Ok(())
}

fn status(m: &mut Menu) {
    let Some(r) = &mut m.autosync.running else {
        println!("auto-sync: off");
        return;
    };
    let s = r.status.borrow().clone();
    if r.task.is_finished() {
        println!("auto-sync of {}: stopped", r.dir.display());
        if let Some((dir, Err(e))) = m.autosync.stop(&m.rt) {
            println!("  stopped because: {e} ({})", dir.display());
        }
    } else {
        println!("auto-sync of {}: {}", r.dir.display(), s.phase);
    }
    println!(
        "  last action: {}",
        s.last_action.as_deref().unwrap_or("(none yet)")
    );
    println!(
        "  last error:  {}",
        s.last_error.as_deref().unwrap_or("(none)")
    );
    println!(
        "  uploaded {}, downloaded {}, passes {}",
        s.uploaded, s.downloaded, s.passes
    );
}
