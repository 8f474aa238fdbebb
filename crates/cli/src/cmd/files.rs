//! `ls`, `put`, `get`, `rm`, `mv`, `stat`: thin fronts over [`FilesClient`].

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::Context;
use distribusync_client::{ClientError, FileInfo, FilesClient};
use distribusync_core::{RemotePath, limits};
use futures::StreamExt;

use crate::UsageError;
use crate::cli::{GetArgs, Global, LsArgs, MvArgs, PutArgs, RmArgs, StatArgs};
use crate::output;
use crate::progress;

/// Uploads in flight at once for `put -r`.
const PARALLEL_UPLOADS: usize = 8;

pub(crate) fn remote(s: &str) -> anyhow::Result<RemotePath> {
    Ok(RemotePath::normalized(s).map_err(|e| UsageError(e.to_string()))?)
}

async fn connect(global: &Global) -> anyhow::Result<FilesClient> {
    Ok(FilesClient::connect(&global.server).await?)
}

pub async fn ls(global: &Global, args: LsArgs) -> anyhow::Result<()> {
    let prefix = match args.prefix.as_deref().map(|p| p.trim_end_matches('/')) {
        None | Some("") => None,
        Some(p) => Some(remote(p)?),
    };
    let client = connect(global).await?;
    let mut pages = client
        .list(prefix.as_ref())
        .await
        .with_context(|| format!("ls {}", args.prefix.as_deref().unwrap_or("")))?;
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

fn local_name(local: &Path) -> anyhow::Result<String> {
    local
        .canonicalize()
        .ok()
        .as_deref()
        .and_then(Path::file_name)
        .and_then(|n| n.to_str())
        .map(str::to_owned)
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
    let jobs: Vec<(PathBuf, RemotePath)> = if meta.is_dir() {
        let base = match args.remote.as_deref().map(|r| r.trim_end_matches('/')) {
            Some("") => None,
            Some(r) => Some(remote(r)?),
            None => Some(remote(&local_name(&args.local)?)?),
        };
        folder_files(&args.local, base.as_ref())?
    } else {
        vec![(
            args.local.clone(),
            put_target(&args.local, args.remote.as_deref())?,
        )]
    };
    // Small files go many to a request (one group commit on the server);
    // the rest stream one by one with a progress bar.
    type Results = Vec<anyhow::Result<FileInfo>>;
    let sized: Vec<(PathBuf, RemotePath, Option<u64>)> = jobs
        .into_iter()
        .map(|(local, remote)| {
            let size = std::fs::metadata(&local).ok().map(|m| m.len());
            (local, remote, size)
        })
        .collect();
    let (small, big): (Vec<_>, Vec<_>) = sized
        .into_iter()
        .partition(|(_, _, size)| size.is_some_and(|s| s <= limits::BATCH_FILE_MAX));
    let sizes: Vec<u64> = small.iter().map(|(_, _, s)| s.unwrap_or(0)).collect();
    let mut work: Vec<futures::future::BoxFuture<'static, Results>> = Vec::new();
    for range in limits::batches(&sizes) {
        let chunk = &small[range];
        let client = client.clone();
        let items: Vec<_> = chunk
            .iter()
            .map(|(l, r, _)| (l.clone(), r.clone(), None))
            .collect();
        let locals: Vec<PathBuf> = chunk.iter().map(|(l, _, _)| l.clone()).collect();
        work.push(Box::pin(async move {
            match client.upload_batch(items).await {
                Ok(results) => results
                    .into_iter()
                    .zip(locals)
                    .map(|(r, l)| r.with_context(|| format!("put {}", l.display())))
                    .collect(),
                // The whole batch failed: every file in it did, and the
                // count of failures says so.
                Err(e) => locals
                    .iter()
                    .map(|l| Err(anyhow::anyhow!("put {}: {e}", l.display())))
                    .collect(),
            }
        }));
    }
    for (local, target, _) in big {
        let client = client.clone();
        work.push(Box::pin(async move {
            let label = target.to_string();
            vec![
                client
                    .upload(&local, &target, None, progress::transfer(&label))
                    .await
                    .with_context(|| format!("put {}", local.display())),
            ]
        }));
    }
    let uploads = futures::stream::iter(work)
        .buffer_unordered(PARALLEL_UPLOADS)
        .flat_map(futures::stream::iter);
    futures::pin_mut!(uploads);
    let mut out = std::io::stdout().lock();
    let mut failed = 0usize;
    while let Some(result) = uploads.next().await {
        match result {
            Ok(f) if args.json => output::json_line(&mut out, &f)?,
            Ok(f) => writeln!(out, "{}  {} bytes  revision {}", f.path, f.size, f.revision)?,
            Err(e) => {
                eprintln!("distribusync: {e:#}");
                failed += 1;
            }
        }
    }
    if failed > 0 {
        anyhow::bail!("put: {failed} file(s) failed");
    }
    Ok(())
}

/// Every file under `dir`, paired with its remote path under `base`.
fn folder_files(
    dir: &Path,
    base: Option<&RemotePath>,
) -> anyhow::Result<Vec<(PathBuf, RemotePath)>> {
    let mut out = Vec::new();
    let mut stack = vec![(dir.to_owned(), String::new())];
    while let Some((d, rel)) = stack.pop() {
        for entry in std::fs::read_dir(&d).with_context(|| format!("put {}", d.display()))? {
            let entry = entry.with_context(|| format!("put {}", d.display()))?;
            let name = entry.file_name();
            let name = name.to_str().ok_or_else(|| {
                anyhow::anyhow!("put {}: name is not UTF-8", entry.path().display())
            })?;
            let sub = if rel.is_empty() {
                name.to_owned()
            } else {
                format!("{rel}/{name}")
            };
            let ft = entry.file_type()?;
            if ft.is_dir() {
                stack.push((entry.path(), sub));
            } else if ft.is_file() {
                let target = match base {
                    Some(b) => format!("{b}/{sub}"),
                    None => sub,
                };
                out.push((entry.path(), remote(&target)?));
            } else {
                eprintln!(
                    "distribusync: put {}: not a regular file; skipped",
                    entry.path().display()
                );
            }
        }
    }
    out.sort_by(|a, b| a.1.cmp(&b.1));
    Ok(out)
}

pub async fn get(global: &Global, args: GetArgs) -> anyhow::Result<()> {
    let src = remote(&args.remote)?;
    let dest = match args.local {
        None => PathBuf::from(src.file_name()),
        Some(l) if l.is_dir() => l.join(src.file_name()),
        Some(l) => l,
    };
    let client = connect(global).await?;
    let info = client
        .download(&src, &dest, progress::transfer(src.as_str()))
        .await
        .context("get")?;
    eprintln!("{} -> {} ({} bytes)", info.path, dest.display(), info.size);
    Ok(())
}

pub async fn rm(global: &Global, args: RmArgs) -> anyhow::Result<()> {
    let p = remote(&args.remote)?;
    let client = connect(global).await?;
    client.delete(&p, None).await.context("rm")?;
    Ok(())
}

pub async fn mv(global: &Global, args: MvArgs) -> anyhow::Result<()> {
    let from = remote(args.from.trim_end_matches('/'))?;
    let to = remote(args.to.trim_end_matches('/'))?;
    let client = connect(global).await?;
    client
        .rename(&from, &to, args.force, None)
        .await
        .map_err(|e| match e {
            ClientError::AlreadyExists(m) => anyhow::anyhow!("{m} (use --force to replace it)"),
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
