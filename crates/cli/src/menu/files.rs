//! Menu item 1, Files: the same [`FilesClient`](distribusync_client::FilesClient)
//! calls and remote-name rules as `put`, `get`, `rm`, `mv` and `ls`.

use std::sync::Arc;

use distribusync_client::{ClientError, Progress};

use super::{Leave, Menu, report};
use crate::cmd::files::{expand_home, get_target, mv_target, put_target, remote};
use crate::{output, progress};

pub(super) fn menu(m: &mut Menu) -> Result<(), Leave> {
    loop {
        let choice = m.submenu(
            "Files",
            &[
                "Upload a file",
                "Download a file",
                "Delete a file",
                "Rename or move",
                "List files",
            ],
        )?;
        match choice {
            1 => upload(m)?,
            2 => download(m)?,
            3 => delete(m)?,
            4 => rename(m)?,
            _ => list(m)?,
        }
    }
}

/// A bar in a terminal; when a script drives the menu, only a line when a
/// transfer resumes.
fn bar(m: &Menu, label: &str) -> Arc<dyn Progress> {
    if m.console.is_terminal() {
        progress::transfer(label)
    } else {
        progress::quiet(label)
    }
}

fn upload(m: &mut Menu) -> Result<(), Leave> {
    let local = m.ask("local file: ")?;
    if local.is_empty() {
        return Ok(());
    }
    let local = expand_home(&local);
    if let Err(e) = std::fs::metadata(&local) {
        report(&format!("upload {}", local.display()), e);
        return Ok(());
    }
    if local.is_dir() {
        report(
            &format!("upload {}", local.display()),
            "is a folder; upload its files one by one, or use `distribusync put -r`",
        );
        return Ok(());
    }
    let default = match put_target(&local, None) {
        Ok(t) => t,
        Err(e) => {
            report(
                &format!("upload {}", local.display()),
                format_args!("{e:#}"),
            );
            return Ok(());
        }
    };
    let answer = m.ask(&format!("remote name (Enter: {default}): "))?;
    let target = if answer.is_empty() {
        Ok(default)
    } else {
        put_target(&local, Some(&answer))
    };
    let target = match target {
        Ok(t) => t,
        Err(e) => {
            report("upload", format_args!("{e:#}"));
            return Ok(());
        }
    };
    let progress = bar(m, target.as_str());
    let files = m.files.clone();
    let sent = m.act("upload", async {
        files.put(&local, &target, None, progress).await
    });
    match sent {
        None => {}
        Some(Ok(f)) => println!(
            "uploaded {}  {} bytes  revision {}",
            f.path, f.size, f.revision
        ),
        Some(Err(e)) => report(&format!("upload {}", local.display()), e),
    }
    Ok(())
}

fn download(m: &mut Menu) -> Result<(), Leave> {
    let Some(src) = ask_remote(m, "remote file: ", "download")? else {
        return Ok(());
    };
    let answer = m.ask(&format!("save as (Enter: {}): ", src.file_name()))?;
    let dest = get_target(
        &src,
        (!answer.is_empty())
            .then(|| expand_home(&answer))
            .as_deref(),
    );
    if dest.is_file() {
        let replace = m.ask(&format!("{} exists; replace it? [y/N]: ", dest.display()))?;
        if !replace.eq_ignore_ascii_case("y") {
            println!("nothing downloaded");
            return Ok(());
        }
    }
    let progress = bar(m, src.as_str());
    let files = m.files.clone();
    let got = m.act("download", async { files.get(&src, &dest, progress).await });
    match got {
        None => {}
        Some(Ok(f)) => println!(
            "downloaded {} -> {} ({} bytes)",
            f.path,
            dest.display(),
            f.size
        ),
        Some(Err(e)) => report(&format!("download {src}"), e),
    }
    Ok(())
}

fn delete(m: &mut Menu) -> Result<(), Leave> {
    let Some(p) = ask_remote(m, "remote file: ", "delete")? else {
        return Ok(());
    };
    let files = m.files.clone();
    match m.act("delete", async { files.delete(&p, None).await }) {
        None => {}
        Some(Ok(_)) => println!("deleted {p}"),
        Some(Err(e)) => report(&format!("delete {p}"), e),
    }
    Ok(())
}

fn rename(m: &mut Menu) -> Result<(), Leave> {
    let Some(from) = ask_remote(m, "rename: ", "rename")? else {
        return Ok(());
    };
    let answer = m.ask("to (a name, or FOLDER/ to move into it): ")?;
    if answer.is_empty() {
        return Ok(());
    }
    let to = match mv_target(&from, &answer) {
        Ok(t) => t,
        Err(e) => {
            report("rename", format_args!("{e:#}"));
            return Ok(());
        }
    };
    let mut force = false;
    loop {
        let files = m.files.clone();
        let renamed = m.act("rename", async {
            files.rename(&from, &to, force, None).await
        });
        let Some(renamed) = renamed else {
            return Ok(());
        };
        match renamed {
            Ok(_) => {
                println!("renamed {from} -> {to}");
                return Ok(());
            }
            Err(ClientError::AlreadyExists(msg)) if !force => {
                println!("{msg}");
                if !m.ask("replace it? [y/N]: ")?.eq_ignore_ascii_case("y") {
                    println!("nothing renamed");
                    return Ok(());
                }
                force = true;
            }
            Err(e) => {
                report(&format!("rename {from}"), e);
                return Ok(());
            }
        }
    }
}

fn list(m: &mut Menu) -> Result<(), Leave> {
    let prefix = m.ask("folder or file (Enter: everything): ")?;
    let prefix = match prefix.trim_end_matches('/') {
        "" => None,
        p => match remote(p) {
            Ok(p) => Some(p),
            Err(e) => {
                report("list", format_args!("{e:#}"));
                return Ok(());
            }
        },
    };
    let files = m.files.clone();
    let listed = m.act("list", async move {
        let mut pages = files.list(prefix.as_ref()).await?;
        let mut out = Vec::new();
        let mut count = 0usize;
        while let Some(page) = pages.next_page().await? {
            for f in &page {
                // Writing to a Vec cannot fail.
                let _ = output::long_line(&mut out, f);
                count += 1;
            }
        }
        Ok::<_, ClientError>((out, count))
    });
    match listed {
        None => {}
        Some(Ok((_, 0))) => println!("(no files)"),
        Some(Ok((text, count))) => {
            print!("{}", String::from_utf8_lossy(&text));
            println!("{count} file(s)");
        }
        Some(Err(e)) => report("list", e),
    }
    Ok(())
}

/// Asks for a remote path; an invalid one is reported and gives `None`.
fn ask_remote(
    m: &mut Menu,
    prompt: &str,
    what: &str,
) -> Result<Option<distribusync_core::RemotePath>, Leave> {
    let answer = m.ask(prompt)?;
    let answer = answer.trim_end_matches('/');
    if answer.is_empty() {
        return Ok(None);
    }
    match remote(answer) {
        Ok(p) => Ok(Some(p)),
        Err(e) => {
            report(what, format_args!("{e:#}"));
            Ok(None)
        }
    }
}
