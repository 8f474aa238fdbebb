//! The one place a client command's connection settings are decided:
//! flags, then environment (clap's `env`, and DISTRIBUSYNC_TOKEN), then the
//! saved profile, then defaults. Every client command, the sync daemon and
//! the menu build their clients from what [`resolve`] returns.
//!
//! The profile applies when no server is named (`--server` /
//! DISTRIBUSYNC_SERVER), or when one is named together with an explicit
//! `--profile`: a profile's pinned fingerprint or token must never be sent
//! to some other server the user pointed at.

use std::path::{Path, PathBuf};

use anyhow::Context;
use distribusync_client::{ConnectionConfig, DEFAULT_PROFILE, Profiles, TlsTrust, Token};
use distribusync_core::Fingerprint;

use crate::UsageError;
use crate::cli::Global;

/// Where the server is when nothing says.
pub const DEFAULT_SERVER: &str = "http://127.0.0.1:50000";

/// The token's environment variable (not a flag: a flag would show it in
/// `ps` to every user of the machine).
pub const TOKEN_ENV: &str = "DISTRIBUSYNC_TOKEN";

/// The user's config folder for DistribuSync: `$XDG_CONFIG_HOME/distribusync`
/// or `~/.config/distribusync`.
pub fn config_dir() -> Option<PathBuf> {
    let base = std::env::var_os("XDG_CONFIG_HOME")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| Path::new(&h).join(".config")))?;
    Some(base.join("distribusync"))
}

/// The profiles file.
pub fn profiles_path() -> Option<PathBuf> {
    config_dir().map(|d| d.join("profiles.json"))
}

/// The token from DISTRIBUSYNC_TOKEN, if set.
pub fn token_from_env() -> anyhow::Result<Option<Token>> {
    match std::env::var(TOKEN_ENV) {
        Ok(t) if !t.trim().is_empty() => Ok(Some(Token::new(&t).context(TOKEN_ENV)?)),
        _ => Ok(None),
    }
}

/// A `--fingerprint` value.
pub fn parse_fingerprint(s: &str) -> anyhow::Result<Fingerprint> {
    Ok(s.parse::<Fingerprint>()
        .map_err(|e| UsageError(format!("--fingerprint: {e}")))?)
}

/// When transfers go by delta (`--delta-min-size`).
pub fn delta_policy(global: &Global) -> distribusync_client::DeltaPolicy {
    global
        .delta_min_size
        .map_or_else(Default::default, |min_size| {
            distribusync_client::DeltaPolicy { min_size }
        })
}

/// The connection settings of a client command (see the module docs).
///
/// # Errors
/// An unknown `--profile`, an unreadable profiles file, CA file or token
/// file, a malformed fingerprint.
pub fn resolve(global: &Global) -> anyhow::Result<ConnectionConfig> {
    Ok(resolve_given(global)?.config)
}

/// Connection settings and which of them something gave (a flag, the
/// environment, the profile) rather than a default: what the menu asks
/// for is what nothing gave.
#[derive(Debug)]
pub struct Resolved {
    pub config: ConnectionConfig,
    pub server_given: bool,
    pub trust_given: bool,
    pub token_given: bool,
}

/// As [`resolve`], saying which settings were given.
///
/// # Errors
/// As [`resolve`].
pub fn resolve_given(global: &Global) -> anyhow::Result<Resolved> {
    let profile = match (&global.server, &global.profile) {
        (Some(_), None) => None,
        (_, name) => {
            let name = name.as_deref().unwrap_or(DEFAULT_PROFILE);
            let explicit = global.profile.is_some();
            match profiles_path() {
                Some(path) => {
                    let all = Profiles::load(&path)?;
                    match all.get(name, &path) {
                        Ok(p) => Some(p.clone()),
                        Err(e) if explicit => return Err(UsageError(e.to_string()).into()),
                        Err(_) => None,
                    }
                }
                None if explicit => {
                    return Err(UsageError(
                        "--profile: no HOME or XDG_CONFIG_HOME, so no saved profiles".into(),
                    )
                    .into());
                }
                None => None,
            }
        }
    };
    let server_given = global.server.is_some() || profile.is_some();
    let trust_given = global.fingerprint.is_some() || global.ca.is_some() || profile.is_some();
    let url = global
        .server
        .clone()
        .or_else(|| profile.as_ref().map(|p| p.url.clone()))
        .unwrap_or_else(|| DEFAULT_SERVER.to_owned());
    let trust = if let Some(f) = &global.fingerprint {
        TlsTrust::Pinned(parse_fingerprint(f)?)
    } else if let Some(ca) = &global.ca {
        TlsTrust::ca_file(ca)?
    } else if let Some(p) = &profile {
        p.trust().context("the saved profile")?
    } else {
        TlsTrust::SystemRoots
    };
    let token = if let Some(file) = &global.token_file {
        Some(Token::from_file(file)?)
    } else if let Some(t) = token_from_env()? {
        Some(t)
    } else if let Some(p) = &profile {
        p.token().context("the saved profile")?
    } else {
        None
    };
    let token_given = token.is_some();
    Ok(Resolved {
        config: ConnectionConfig::new(&url, trust, token)
            .with_compute(global.compute_server.as_deref()),
        server_given,
        trust_given,
        token_given,
    })
}
