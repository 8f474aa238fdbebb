//! `distribusync login URL`: decide to trust a server, check it answers and
//! takes the token, and save all that as a profile (see
//! [`distribusync_client::profile`]) the other commands use.
//!
//! Trust, as ssh does on first contact: the certificate's fingerprint is
//! shown and the person says yes (or passes `--fingerprint`, compared, not
//! asked; or `--ca`, verified by that CA). Nothing is saved until the
//! server has answered over the trusted connection.
//!
//! The steps ([`url`], [`first_contact`], [`check`], [`save`]) are shared
//! with the menu, which asks for the same things when nothing gave them.

use std::io::{BufRead, IsTerminal, Write};
use std::path::PathBuf;

use anyhow::Context;
use distribusync_client::{
    ClientError, ConnectionConfig, FilesClient, Profile, Profiles, TlsTrust, Token,
};
use distribusync_core::{Fingerprint, RemotePath};

use crate::UsageError;
use crate::cli::LoginArgs;
use crate::connection::{self, parse_fingerprint, token_from_env};

pub async fn run(args: LoginArgs) -> anyhow::Result<()> {
    let path = profiles_path()?;
    let url = url(&args.url);
    let trust = if let Some(f) = &args.fingerprint {
        TlsTrust::Pinned(parse_fingerprint(f)?)
    } else if let Some(ca) = &args.ca {
        let ca = std::path::absolute(ca).unwrap_or_else(|_| ca.clone());
        TlsTrust::ca_file(&ca)?
    } else {
        TlsTrust::SystemRoots
    };
    let mut config = ConnectionConfig::new(&url, trust, None);
    if config.is_tls() && !config.tls.is_explicit() {
        let seen = config
            .fetch_fingerprint()
            .await
            .with_context(|| format!("login {url}"))?;
        eprintln!("{}", first_contact(&url, &seen));
        if !args.yes && !confirm("Trust it? [y/N] ")? {
            anyhow::bail!("login {url}: certificate not trusted; nothing saved");
        }
        config.tls = TlsTrust::Pinned(seen);
    }
    config.token = token(&args)?;
    check(&config)
        .await
        .with_context(|| format!("login {url}"))?;
    save(&args.profile, &config)?;
    eprintln!(
        "distribusync: saved profile {:?} for {url} in {}",
        args.profile,
        path.display()
    );
    Ok(())
}

/// A server as typed: `https://` when no scheme is given.
pub fn url(typed: &str) -> String {
    let typed = typed.trim();
    if typed.contains("://") {
        typed.to_owned()
    } else {
        format!("https://{typed}")
    }
}

/// What a person is shown before deciding to trust a certificate.
pub fn first_contact(url: &str, seen: &Fingerprint) -> String {
    format!(
        "The server at {url} presents a certificate with SHA-256 fingerprint\n  {seen}\n\
         Check it on the server with `distribusync serve --print-fingerprint`."
    )
}

/// The profiles file, or why there is none.
fn profiles_path() -> anyhow::Result<PathBuf> {
    Ok(connection::profiles_path().ok_or_else(|| {
        UsageError("login: no HOME or XDG_CONFIG_HOME to save the profile in".into())
    })?)
}

/// Saves `config` as the profile `name` (replacing one of that name);
/// returns the file it is in.
///
/// # Errors
/// No config folder, a profiles file that cannot be read or written.
pub fn save(name: &str, config: &ConnectionConfig) -> anyhow::Result<PathBuf> {
    let path = profiles_path()?;
    let mut all = Profiles::load(&path)?;
    all.profiles.insert(name.to_owned(), Profile::of(config));
    all.save(&path)?;
    Ok(path)
}

/// The token: `--token-file`, else DISTRIBUSYNC_TOKEN, else asked for
/// without echo when there is a terminal (empty: none).
fn token(args: &LoginArgs) -> anyhow::Result<Option<Token>> {
    if let Some(file) = &args.token_file {
        return Ok(Some(Token::from_file(file)?));
    }
    if let Some(t) = token_from_env()? {
        return Ok(Some(t));
    }
    if !std::io::stdin().is_terminal() {
        return Ok(None);
    }
    ask_token()
}

/// Asks for a token at the terminal, without echo (empty: none).
///
/// # Errors
/// The terminal cannot be read; what was typed is not a token.
pub fn ask_token() -> anyhow::Result<Option<Token>> {
    let typed = rpassword::prompt_password("Token (empty if the server needs none): ")
        .context("reading the token")?;
    if typed.trim().is_empty() {
        return Ok(None);
    }
    Ok(Some(Token::new(&typed)?))
}

/// Reads a yes from standard input.
fn confirm(prompt: &str) -> anyhow::Result<bool> {
    eprint!("{prompt}");
    std::io::stderr().flush()?;
    let mut line = String::new();
    std::io::stdin().lock().read_line(&mut line)?;
    Ok(is_yes(&line))
}

/// Whether an answer says yes.
pub fn is_yes(answer: &str) -> bool {
    matches!(answer.trim().to_lowercase().as_str(), "y" | "yes")
}

/// The server answers over the trusted connection, and does not refuse the
/// token: a Stat of a name nobody uses is NOT_FOUND for a good token (or
/// PERMISSION_DENIED for one without read access: still a valid token),
/// UNAUTHENTICATED for a bad one.
///
/// # Errors
/// [`ClientError::Unauthenticated`] for a refused (or missing) token;
/// connection errors as every client call has them.
pub async fn check(config: &ConnectionConfig) -> Result<(), ClientError> {
    let client = FilesClient::connect(config).await?;
    let probe = RemotePath::parse("distribusync-login-check")?;
    match client.stat(&probe).await {
        Ok(_)
        | Err(
            ClientError::NotFound(_) | ClientError::PermissionDenied(_) | ClientError::Server(_),
        ) => Ok(()),
        Err(e) => Err(e),
    }
}
