//! `distribusync login URL`: decide to trust a server, check it answers and
//! takes the token, and save all that as a profile (see
//! [`distribusync_client::profile`]) the other commands use.
//!
//! Trust, as ssh does on first contact: the certificate's fingerprint is
//! shown and the person says yes (or passes `--fingerprint`, compared, not
//! asked; or `--ca`, verified by that CA). Nothing is saved until the
//! server has answered over the trusted connection.

use std::io::{BufRead, IsTerminal, Write};

use anyhow::Context;
use distribusync_client::{
    ClientError, ConnectionConfig, FilesClient, Profile, Profiles, TlsTrust, Token,
};
use distribusync_core::RemotePath;

use crate::UsageError;
use crate::cli::LoginArgs;
use crate::connection::{self, parse_fingerprint, token_from_env};

pub async fn run(args: LoginArgs) -> anyhow::Result<()> {
    let path = connection::profiles_path().ok_or_else(|| {
        UsageError("login: no HOME or XDG_CONFIG_HOME to save the profile in".into())
    })?;
    let url = if args.url.contains("://") {
        args.url.clone()
    } else {
        format!("https://{}", args.url)
    };
    let mut profile = Profile {
        url: url.clone(),
        ..Profile::default()
    };
    let trust = if let Some(f) = &args.fingerprint {
        let f = parse_fingerprint(f)?;
        profile.fingerprint = Some(f.to_string());
        TlsTrust::Pinned(f)
    } else if let Some(ca) = &args.ca {
        let ca = std::path::absolute(ca).unwrap_or_else(|_| ca.clone());
        profile.ca = Some(ca.clone());
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
        eprintln!("The server at {url} presents a certificate with SHA-256 fingerprint\n  {seen}");
        if !args.yes {
            eprintln!("Check it on the server with `distribusync serve --print-fingerprint`.");
            if !confirm("Trust it? [y/N] ")? {
                anyhow::bail!("login {url}: certificate not trusted; nothing saved");
            }
        }
        profile.fingerprint = Some(seen.to_string());
        config.tls = TlsTrust::Pinned(seen);
    }
    config.token = token(&args)?;
    profile.token = config.token.as_ref().map(|t| t.expose().to_owned());
    check(&config)
        .await
        .with_context(|| format!("login {url}"))?;

    let mut all = Profiles::load(&path)?;
    all.profiles.insert(args.profile.clone(), profile);
    all.save(&path)?;
    eprintln!(
        "distribusync: saved profile {:?} for {url} in {}",
        args.profile,
        path.display()
    );
    Ok(())
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
    Ok(matches!(line.trim().to_lowercase().as_str(), "y" | "yes"))
}

/// The server answers over the trusted connection, and does not refuse the
/// token: a Stat of a name nobody uses is NOT_FOUND for a good token (or
/// PERMISSION_DENIED for one without read access: still a valid token),
/// UNAUTHENTICATED for a bad one.
async fn check(config: &ConnectionConfig) -> anyhow::Result<()> {
    let client = FilesClient::connect(config).await?;
    let probe = RemotePath::parse("distribusync-login-check").context("probe path")?;
    match client.stat(&probe).await {
        Ok(_)
        | Err(
            ClientError::NotFound(_) | ClientError::PermissionDenied(_) | ClientError::Server(_),
        ) => Ok(()),
        Err(e @ ClientError::Unauthenticated(_)) => Err(e.into()),
        Err(e) => Err(e.into()),
    }
}
