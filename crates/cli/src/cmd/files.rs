//! `ls`, `put`, `get`, `rm`, `mv`, `stat`: thin fronts over [`FilesClient`].

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::Context;
use distribusync_client::{ClientError, FileInfo, FilesClient, local_tree};
use distribusync_core::RemotePath;
use futures::{StreamExt, TryStreamExt};

use crate::UsageError;
use crate::cli::{GetArgs, Global, LsArgs, MvArgs, PutArgs, RmArgs, StatArgs};
use crate::output;
use crate::progress;

/// Uploads in flight at once for `put -r`.
const PARALLEL_UPLOADS: usize = 8;

/// Downloads in flight at once for `get -r`.
const PARALLEL_DOWNLOADS: usize = 8;

pub(crate) fn remote(s: &str) -> anyhow::Result<RemotePath> {
    Ok(RemotePath::normalized(s).map_err(|e| UsageError(e.to_string()))?)
}

async fn connect(global: &Global) -> anyhow::Result<FilesClient> {
    Ok(FilesClient::connect(crate::connection::resolve(global)?)
        .await?
        .with_delta(crate::connection::delta_policy(global)))
}

pub async fn ls(global: &Global, args: LsArgs) -> anyhow::Result<()> {
    let prefix = match args.prefix.as_deref().map(|p| p.trim_end_matches('/')) {
        None | Some("") => None,
        Some(p) => Some(remote(p)?),
    };
    let client = connect(global).await?;
    let mut pages =
        client
            .list(prefix.as_ref())
            .await
            .with_context(|| match args.prefix.as_deref() {
                Some(p) => format!("ls {p}"),
                None => "ls".to_owned(),
            })?;
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    while let Some(page) = pages.next_page().await.context("ls")? {
        for f in &page {
            if args.json {
                output::json_line(&mut out, f)?;
            } else if args.long {
                output::long_line(&mut out, f)?;
            } else {
                writeln!(out, "{}", f.path)?;
            }
        }
    }
    out.flush()?;
    Ok(())
}

/// The name a local path is sent under: its own last component (a link is
/// named as the link, not its target), or for `.` and `..` the folder's.
fn local_name(local: &Path) -> anyhow::Result<String> {
    let own = local
        .file_name()
        .and_then(|n| n.to_str())
        .map(str::to_owned);
    own.or_else(|| {
        local
            .canonicalize()
            .ok()
            .as_deref()
            .and_then(Path::file_name)
            .and_then(|n| n.to_str())
            .map(str::to_owned)
    })
    .ok_or_else(|| {
        UsageError(format!(
            "{}: cannot take a remote name from this path; give REMOTE",
            local.display()
        ))
        .into()
    })
}

/// The remote path for `put LOCAL [REMOTE]`.
pub(crate) fn put_target(local: &Path, target: Option<&str>) -> anyhow::Result<RemotePath> {
    match target {
        None => remote(&local_name(local)?),
        Some(t) if t.ends_with('/') => remote(&format!(
            "{}/{}",
            t.trim_end_matches('/'),
            local_name(local)?
        )),
        Some(t) => remote(t),
    }
}

/// The local path for `get REMOTE [LOCAL]`: LOCAL, or the remote's name
/// inside LOCAL when that is a folder, or the remote's name here.
pub(crate) fn get_target(src: &RemotePath, local: Option<&Path>) -> PathBuf {
    match local {
        None => PathBuf::from(src.file_name()),
        Some(l) if l.is_dir() => l.join(src.file_name()),
        Some(l) => l.to_owned(),
    }
}

/// The remote path for `mv FROM TO`: `TO/` (a trailing slash) means into
/// that folder, as for `put`.
pub(crate) fn mv_target(from: &RemotePath, to: &str) -> anyhow::Result<RemotePath> {
    match to.strip_suffix('/') {
        Some(dir) if dir.trim_end_matches('/').is_empty() => remote(from.file_name()),
        Some(dir) => remote(&format!(
            "{}/{}",
            dir.trim_end_matches('/'),
            from.file_name()
        )),
        None => remote(to),
    }
}

/// `~` or `~/…` at the start of a local path typed by a person: their home.
pub(crate) fn expand_home(path: &str) -> PathBuf {
    match (path.strip_prefix('~'), std::env::var_os("HOME")) {
        (Some(rest), Some(home)) if rest.is_empty() || rest.starts_with('/') => {
            PathBuf::from(home).join(rest.trim_start_matches('/'))
        }
        _ => PathBuf::from(path),
    }
}

pub async fn put(global: &Global, args: PutArgs) -> anyhow::Result<()> {
    let meta =
        std::fs::metadata(&args.local).with_context(|| format!("put {}", args.local.display()))?;
    if meta.is_dir() && !args.recursive {
        return Err(UsageError(format!(
            "put {}: is a folder (use -r to upload it and everything in it)",
            args.local.display()
        ))
        .into());
    }
    let client = connect(global).await?;
    let mut out = std::io::stdout().lock();
    if !meta.is_dir() {
        let target = put_target(&args.local, args.remote.as_deref())?;
        let f = client
            .put(
                &args.local,
                &target,
                None,
                progress::transfer(target.as_str()),
            )
            .await
            .with_context(|| format!("put {}", args.local.display()))?;
        return print_put(&mut out, &f, args.json);
    }
    let base = match args.remote.as_deref().map(|r| r.trim_end_matches('/')) {
        Some("") => None,
        Some(r) => Some(remote(r)?),
        None => Some(remote(&local_name(&args.local)?)?),
    };
    let (dir, under) = (args.local.clone(), base.clone());
    let tree = tokio::task::spawn_blocking(move || local_tree(&dir, under.as_ref()))
        .await?
        .with_context(|| format!("put {}", args.local.display()))?;
    let mut failed = 0usize;
    for s in &tree.skipped {
        eprintln!(
            "distribusync: put {}: {}; skipped",
            s.local.display(),
            s.why
        );
        failed += usize::from(s.failed);
    }
    let total = tree.files.len() + failed;
    let bars = progress::Transfers::new();
    let uploads = client.upload_many(tree.files, PARALLEL_UPLOADS, bars.factory());
    futures::pin_mut!(uploads);
    while let Some((local, result)) = uploads.next().await {
        match result {
            Ok(f) => print_put(&mut out, &f, args.json)?,
            Err(e) => {
                bars.suspend(|| eprintln!("distribusync: put {}: {e}", local.display()));
                failed += 1;
            }
        }
    }
    if failed > 0 {
        anyhow::bail!("put: {failed} of {total} file(s) failed");
    }
    Ok(())
}

fn print_put(out: &mut impl Write, f: &FileInfo, json: bool) -> anyhow::Result<()> {
    if json {
        output::json_line(out, f)?;
    } else {
        writeln!(out, "{}  {} bytes  revision {}", f.path, f.size, f.revision)?;
    }
    Ok(())
}

pub async fn get(global: &Global, args: GetArgs) -> anyhow::Result<()> {
    if args.recursive {
        return get_tree(global, args).await;
    }
    let src = remote(&args.remote)?;
    let dest = get_target(&src, args.local.as_deref());
    let client = connect(global).await?;
    let info = client
        .get(&src, &dest, progress::transfer(src.as_str()))
        .await
        .context("get")?;
    eprintln!("{} -> {} ({} bytes)", info.path, dest.display(), info.size);
    Ok(())
}

/// Where `get -r` puts the file `path` found under the remote folder
/// `base`: LOCAL joined with what follows `base/` (already checked: a
/// `RemotePath` has no `..`, no absolute or empty component).
pub(crate) fn tree_target(base: &RemotePath, path: &RemotePath, local: &Path) -> Option<PathBuf> {
    let rel = path
        .as_str()
        .strip_prefix(base.as_str())?
        .strip_prefix('/')?;
    Some(local.join(rel))
}

/// `get -r REMOTE [LOCAL]`: every file under the remote folder, into LOCAL
/// (default: the folder's name here), [`PARALLEL_DOWNLOADS`] at a time
/// over one connection. A file that fails is named and the rest go on.
async fn get_tree(global: &Global, args: GetArgs) -> anyhow::Result<()> {
    let base = remote(args.remote.trim_end_matches('/'))?;
    let local = args
        .local
        .clone()
        .unwrap_or_else(|| PathBuf::from(base.file_name()));
    let client = connect(global).await?;
    let pages = client
        .list(Some(&base))
        .await
        .with_context(|| format!("get {}", args.remote))?;
    // The listing is read a page at a time as downloads take files from
    // it (`buffer_unordered` pulls the next file only when one of its
    // places is free): memory holds one page and the transfers under
    // way, however many files the folder has.
    let listing = futures::stream::try_unfold(pages, |mut pages| async move {
        Ok::<_, ClientError>(pages.next_page().await?.map(|page| (page, pages)))
    })
    .map_ok(|page| futures::stream::iter(page.into_iter().map(Ok::<_, ClientError>)))
    .try_flatten()
    // The folder's files (a file named as the folder itself is not one).
    .try_filter(|f| futures::future::ready(tree_target(&base, &f.path, &local).is_some()));
    let bars = progress::Transfers::new();
    let progress_for = bars.factory();
    let downloads = listing
        .map(|listed| {
            let (client, local, base) = (&client, &local, &base);
            let listed = listed.map(|f| (progress_for(&f.path), f));
            async move {
                let (progress, f) = listed.map_err(Fetched::Listing)?;
                let result = async {
                    let dest = tree_target(base, &f.path, local)
                        .ok_or_else(|| anyhow::anyhow!("{}: not under {}", f.path, base))?;
                    if let Some(parent) = dest.parent() {
                        tokio::fs::create_dir_all(parent)
                            .await
                            .with_context(|| format!("creating {}", parent.display()))?;
                    }
                    let info = client.get(&f.path, &dest, progress).await?;
                    anyhow::Ok((info, dest))
                }
                .await;
                result.map_err(|e| Fetched::File(f.path, e))
            }
        })
        .buffer_unordered(PARALLEL_DOWNLOADS);
    futures::pin_mut!(downloads);
    let (mut total, mut failed) = (0usize, 0usize);
    let mut listing_failed = None;
    while let Some(result) = downloads.next().await {
        match result {
            Ok((info, dest)) => {
                total += 1;
                bars.suspend(|| {
                    eprintln!("{} -> {} ({} bytes)", info.path, dest.display(), info.size);
                });
            }
            Err(Fetched::File(path, e)) => {
                total += 1;
                bars.suspend(|| eprintln!("distribusync: get {path}: {e:#}"));
                failed += 1;
            }
            // The listing ends at its error: the downloads under way
            // finish, then the command fails saying so.
            Err(Fetched::Listing(e)) => listing_failed = Some(e),
        }
    }
    if let Some(e) = listing_failed {
        return Err(anyhow::Error::new(e).context(format!(
            "get {}: the listing broke off after {total} file(s)",
            args.remote
        )));
    }
    if total == 0 {
        return Err(ClientError::NotFound(format!(
            "{}: no files under this folder on the server",
            base.shown()
        ))
        .into());
    }
    if failed > 0 {
        anyhow::bail!("get: {failed} of {total} file(s) failed");
    }
    Ok(())
}

/// Why one item of `get -r` came to nothing: the listing broke, or one
/// file's download failed.
enum Fetched {
    Listing(ClientError),
    File(RemotePath, anyhow::Error),
}

pub async fn rm(global: &Global, args: RmArgs) -> anyhow::Result<()> {
    let p = remote(&args.remote)?;
    let client = connect(global).await?;
    client.delete(&p, None).await.context("rm")?;
    Ok(())
}

pub async fn mv(global: &Global, args: MvArgs) -> anyhow::Result<()> {
    let from = remote(args.from.trim_end_matches('/'))?;
    // `mv FROM FOLDER/` moves into the folder, as `put` does.
    let to = match args.to.strip_suffix('/') {
        Some("") => remote(from.file_name())?,
        Some(dir) => remote(&format!(
            "{}/{}",
            dir.trim_end_matches('/'),
            from.file_name()
        ))?,
        None => remote(&args.to)?,
    };
    let client = connect(global).await?;
    client
        .rename(&from, &to, args.force, None)
        .await
        .map_err(|e| match e {
            ClientError::AlreadyExists(m) => anyhow::anyhow!("{m} (use --force to replace it)"),
            ClientError::Rejected(m) if m.contains("is a folder") && !args.to.ends_with('/') => {
                anyhow::anyhow!("{m} (end TO with / to move into it)")
            }
            e => e.into(),
        })
        .context("mv")?;
    Ok(())
}

pub async fn stat(global: &Global, args: StatArgs) -> anyhow::Result<()> {
    let p = remote(&args.remote)?;
    let client = connect(global).await?;
    let f: FileInfo = client.stat(&p).await.context("stat")?;
    let mut out = std::io::stdout().lock();
    if args.json {
        output::json_line(&mut out, &f)?;
    } else {
        writeln!(out, "path:     {}", f.path)?;
        writeln!(out, "size:     {} bytes", f.size)?;
        writeln!(out, "revision: {}", f.revision)?;
        writeln!(out, "hash:     {}", f.hash)?;
        writeln!(out, "modified: {}", output::rfc3339(f.modified))?;
    }
    Ok(())
}

/// `traffic`: the server's byte counters, one `name value` a line.
pub async fn traffic(global: &Global) -> anyhow::Result<()> {
    let client = connect(global).await?;
    let (received, sent) = client.stats().await.context("traffic")?;
    let mut out = std::io::stdout().lock();
    writeln!(out, "received {received}")?;
    writeln!(out, "sent {sent}")?;
    Ok(())
}
