//! Saved connection profiles: what `distribusync login` remembers about a
//! server (its URL, the fingerprint the user trusted, a CA file, the token),
//! under a name, so later commands need no flags.
//!
//! Invariants: the file holds secrets, so it is written with mode 0600 (in
//! a folder of mode 0700), through a temporary file renamed into place: a
//! crash never leaves half a file, and the token is never readable by other
//! users even for an instant. The library does not read the environment:
//! the caller says where the file is (the CLI uses the user's config dir).

use std::collections::BTreeMap;
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use distribusync_core::Fingerprint;
use serde::{Deserialize, Serialize};

use crate::connect::{ConnectError, ConnectionConfig, TlsTrust, Token};

/// The profile used when none is named.
pub const DEFAULT_PROFILE: &str = "default";

/// One saved server.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Profile {
    /// `https://host:port` (or `http://`).
    pub url: String,
    /// Fingerprint of the certificate the user chose to trust.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fingerprint: Option<String>,
    /// A CA file to verify the server by instead.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca: Option<PathBuf>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
}

/// Why profiles cannot be read or written.
#[derive(Debug, thiserror::Error)]
pub enum ProfileError {
    #[error("{}: {error}", path.display())]
    Io {
        path: PathBuf,
        error: std::io::Error,
    },
    #[error("{}: not a profiles file ({why}); fix or remove it, then `distribusync login` again", path.display())]
    Malformed { path: PathBuf, why: String },
    #[error("no profile named {name:?} in {} (saved: {known}); create it with `distribusync login URL --profile {name}`", path.display())]
    Unknown {
        name: String,
        path: PathBuf,
        known: String,
    },
    #[error("profile {name:?}: {source}")]
    Invalid {
        name: String,
        #[source]
        source: ConnectError,
    },
}

/// All profiles of one file.
#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Profiles {
    #[serde(default)]
    pub profiles: BTreeMap<String, Profile>,
}

impl Profiles {
    /// Reads the profiles at `path`; none when the file does not exist.
    ///
    /// # Errors
    /// An unreadable or malformed file.
    pub fn load(path: &Path) -> Result<Self, ProfileError> {
        let text = match std::fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Self::default()),
            Err(error) => {
                return Err(ProfileError::Io {
                    path: path.to_owned(),
                    error,
                });
            }
        };
        serde_json::from_str(&text).map_err(|e| ProfileError::Malformed {
            path: path.to_owned(),
            why: e.to_string(),
        })
    }

    /// The profile `name`.
    ///
    /// # Errors
    /// [`ProfileError::Unknown`] naming the saved ones.
    pub fn get(&self, name: &str, path: &Path) -> Result<&Profile, ProfileError> {
        self.profiles
            .get(name)
            .ok_or_else(|| ProfileError::Unknown {
                name: name.to_owned(),
                path: path.to_owned(),
                known: if self.profiles.is_empty() {
                    "none".to_owned()
                } else {
                    self.profiles.keys().cloned().collect::<Vec<_>>().join(", ")
                },
            })
    }

    /// Writes all profiles to `path` (mode 0600, see the module docs).
    ///
    /// # Errors
    /// When the folder or the file cannot be written.
    pub fn save(&self, path: &Path) -> Result<(), ProfileError> {
        let io = |error| ProfileError::Io {
            path: path.to_owned(),
            error,
        };
        if let Some(dir) = path.parent() {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(dir)
                .map_err(io)?;
        }
        let text = serde_json::to_string_pretty(self).map_err(|e| io(std::io::Error::other(e)))?;
        let tmp = path.with_extension(format!("tmp{}", std::process::id()));
        let _ = std::fs::remove_file(&tmp);
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)
            .map_err(io)?;
        let written = f
            .write_all(text.as_bytes())
            .and_then(|()| f.write_all(b"\n"))
            .and_then(|()| f.sync_all())
            .and_then(|()| std::fs::rename(&tmp, path));
        if let Err(e) = written {
            let _ = std::fs::remove_file(&tmp);
            return Err(io(e));
        }
        Ok(())
    }
}

impl Profile {
    /// The profile that connects as `config` does (its file server, how
    /// it trusts it, its token): what `login` and the menu save.
    pub fn of(config: &ConnectionConfig) -> Self {
        let (fingerprint, ca) = match &config.tls {
            TlsTrust::Pinned(f) => (Some(f.to_string()), None),
            TlsTrust::Ca { path, .. } => (None, Some(path.clone())),
            TlsTrust::SystemRoots => (None, None),
        };
        Self {
            url: config.endpoint.clone(),
            fingerprint,
            ca,
            token: config.token.as_ref().map(|t| t.expose().to_owned()),
        }
    }

    /// How this profile says to trust the server.
    ///
    /// # Errors
    /// A saved fingerprint that does not parse, a CA file that cannot be
    /// read.
    pub fn trust(&self) -> Result<TlsTrust, ConnectError> {
        if let Some(f) = &self.fingerprint {
            let f: Fingerprint = f
                .parse()
                .map_err(|e: distribusync_core::FingerprintError| {
                    ConnectError::Setup(e.to_string())
                })?;
            return Ok(TlsTrust::Pinned(f));
        }
        if let Some(ca) = &self.ca {
            return TlsTrust::ca_file(ca);
        }
        Ok(TlsTrust::SystemRoots)
    }

    /// The saved token, if any.
    ///
    /// # Errors
    /// A saved token that is not one.
    pub fn token(&self) -> Result<Option<Token>, ConnectError> {
        self.token.as_deref().map(Token::new).transpose()
    }

    /// The whole profile as connection settings.
    ///
    /// # Errors
    /// As [`Profile::trust`] and [`Profile::token`].
    pub fn connection(&self) -> Result<ConnectionConfig, ConnectError> {
        Ok(ConnectionConfig::new(
            &self.url,
            self.trust()?,
            self.token()?,
        ))
    }
}
