//! `distribusync token create|list|revoke`: on the server's ROOT directly
//! (also while it serves: it sees the change within a second), or through
//! a server's Admin service with an admin token (`--server`).
//!
//! Exit codes: 2 for input that does not parse (a bad name, scope or
//! `--expires`), 1 for a refusal (a taken name, an unknown one, a server
//! that says no).

use std::io::Write;
use std::path::PathBuf;
use std::time::SystemTime;

use anyhow::Context;
use clap::{Args, Subcommand};
use distribusync_proto::v1::{self, admin_client::AdminClient};
use distribusync_server::auth::{NewToken, TokenRow, TokenStore, TokenStoreError};
use serde::Serialize;

use crate::UsageError;

#[derive(Debug, Args)]
pub struct TokenArgs {
    #[command(subcommand)]
    pub command: TokenCommand,
    #[command(flatten)]
    pub target: Target,
}

/// Where the token table is.
#[derive(Debug, Args)]
pub struct Target {
    /// The server's folder (as `serve --root`): work on its token table
    /// directly (unless --server or --profile is given).
    #[arg(
        long,
        global = true,
        env = "DISTRIBUSYNC_ROOT",
        default_value = "./MASTER"
    )]
    pub root: PathBuf,
    /// The cluster's token table instead (as `serve --metadata`): the
    /// PostgreSQL database every instance of the cluster uses.
    #[arg(long, global = true, env = "DISTRIBUSYNC_METADATA", value_name = "URL")]
    pub metadata: Option<String>,
    /// Whether --root was given on the command line (set by `main` from
    /// clap's matches): remotely it would be ignored, so it is refused.
    #[arg(skip)]
    pub root_on_command_line: bool,
    /// Manage a server remotely instead (with --server or --profile), with
    /// an admin token from the same connection settings as every client
    /// command (profile, --token-file, DISTRIBUSYNC_TOKEN).
    #[command(flatten)]
    pub remote: crate::cli::Global,
}

#[derive(Debug, Subcommand)]
pub enum TokenCommand {
    /// Make a token; it is printed once, on standard output, and stored
    /// nowhere.
    Create {
        /// A name for it (letters, digits, - _ .), shown in `token list`
        /// and in the server's log.
        name: String,
        /// What it may do: read, write, compute, admin (comma-separated).
        #[arg(long, required = true)]
        scopes: String,
        /// Confine it to this folder (e.g. photos/): it sees and changes
        /// nothing else.
        #[arg(long)]
        prefix: Option<String>,
        /// When it stops working: a duration (90d, 12h, 2w) or a date
        /// (2027-01-01, UTC). Default: never.
        #[arg(long)]
        expires: Option<String>,
    },
    /// List tokens: name, scopes, prefix, created, last used, expires.
    List {
        /// One JSON object per line.
        #[arg(long)]
        json: bool,
    },
    /// Revoke a token: it stops working within a second, and its open
    /// streams end.
    Revoke { name: String },
}

/// A token as listed.
#[derive(Debug, Serialize)]
struct Listed {
    name: String,
    scopes: String,
    prefix: String,
    created: Option<String>,
    last_used: Option<String>,
    expires: Option<String>,
    revoked: Option<String>,
}

fn time(t: SystemTime) -> String {
    humantime::format_rfc3339_seconds(t).to_string()
}

fn wire_time(t: Option<prost_types::Timestamp>) -> Option<String> {
    t.as_ref()
        .and_then(distribusync_proto::system_time)
        .map(time)
}

impl From<&TokenRow> for Listed {
    fn from(r: &TokenRow) -> Self {
        Listed {
            name: r.name.clone(),
            scopes: r.scopes.to_string(),
            prefix: r
                .prefix
                .as_ref()
                .map(|p| format!("{p}/"))
                .unwrap_or_default(),
            created: Some(time(r.created)),
            last_used: r.last_used.map(time),
            expires: r.expires.map(time),
            revoked: r.revoked.map(time),
        }
    }
}

impl From<v1::TokenInfo> for Listed {
    fn from(t: v1::TokenInfo) -> Self {
        Listed {
            name: t.name,
            scopes: t.scopes.join(","),
            prefix: t.prefix,
            created: wire_time(t.created),
            last_used: wire_time(t.last_used),
            expires: wire_time(t.expires),
            revoked: wire_time(t.revoked),
        }
    }
}

/// A table error as the command reports it: bad input is a usage error.
fn refusal(e: TokenStoreError) -> anyhow::Error {
    match e {
        TokenStoreError::Name(_)
        | TokenStoreError::Scope(_)
        | TokenStoreError::Expiry(_)
        | TokenStoreError::Prefix(_) => UsageError(format!("token: {e}")).into(),
        e => anyhow::anyhow!("token: {e}"),
    }
}

/// A server's refusal as the command reports it.
fn remote(status: tonic::Status) -> anyhow::Error {
    // Refused at the TLS level (plaintext against TLS, a changed
    // certificate): the connection's own one-line reason.
    if let Some(c) = distribusync_client::connect::find_connect_error(&status) {
        return anyhow::anyhow!("token: {c}");
    }
    match status.code() {
        tonic::Code::InvalidArgument => UsageError(format!("token: {}", status.message())).into(),
        _ => anyhow::anyhow!("token: {} ({:?})", status.message(), status.code()),
    }
}

pub async fn run(args: TokenArgs) -> anyhow::Result<()> {
    let remote = &args.target.remote;
    match remote.server.is_some() || remote.profile.is_some() {
        true if args.target.root_on_command_line => Err(UsageError(format!(
            "token: --root {} works on a server's folder directly, --server/--profile (or DISTRIBUSYNC_SERVER) through a running server: give one of them",
            args.target.root.display()
        ))
        .into()),
        true => run_remote(remote, args.command).await,
        false if args.target.metadata.is_some() => {
            let url = args.target.metadata.clone().unwrap_or_default();
            check_input(&args.command)?;
            let max_changes = distribusync_server::store::StoreConfig::default().max_changes;
            let db = distribusync_server::store::PgMetadata::open(&url, max_changes)
                .await
                .map_err(|e| anyhow::anyhow!("token: {e}"))?;
            let store = TokenStore::open_cluster(db).await.map_err(refusal)?;
            tokio::task::spawn_blocking(move || run_on(&store, args.command))
                .await
                .context("token")?
        }
        false => {
            let root = args.target.root.clone();
            tokio::task::spawn_blocking(move || run_local(&root, args.command))
                .await
                .context("token")?
        }
    }
}

fn print_created(token: &str, listed: &Listed) -> anyhow::Result<()> {
    eprintln!(
        "distribusync: token `{}` created ({}{}{}); it is shown only this once:",
        listed.name,
        listed.scopes,
        if listed.prefix.is_empty() {
            String::new()
        } else {
            format!(", only {}", listed.prefix)
        },
        listed
            .expires
            .as_ref()
            .map(|e| format!(", expires {e}"))
            .unwrap_or_default()
    );
    let mut out = std::io::stdout().lock();
    writeln!(out, "{token}")?;
    Ok(())
}

fn print_list(rows: &[Listed], json: bool) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    if json {
        for r in rows {
            serde_json::to_writer(&mut out, r)?;
            writeln!(out)?;
        }
        return Ok(());
    }
    writeln!(
        out,
        "{:<20} {:<26} {:<16} {:<20} {:<20} EXPIRES",
        "NAME", "SCOPES", "PREFIX", "CREATED", "LAST USED"
    )?;
    let dash = || "-".to_owned();
    for r in rows {
        let expires = match (&r.revoked, &r.expires) {
            (Some(t), _) => format!("revoked {t}"),
            (None, Some(t)) => t.clone(),
            (None, None) => "never".into(),
        };
        writeln!(
            out,
            "{:<20} {:<26} {:<16} {:<20} {:<20} {}",
            r.name,
            r.scopes,
            if r.prefix.is_empty() { "/" } else { &r.prefix },
            r.created.clone().unwrap_or_else(dash),
            r.last_used.clone().unwrap_or_else(dash),
            expires
        )?;
    }
    Ok(())
}

/// Checks the input of `command` before a table is opened (or made).
fn check_input(command: &TokenCommand) -> anyhow::Result<()> {
    if let TokenCommand::Create {
        name,
        scopes,
        prefix,
        expires,
    } = command
    {
        NewToken::parse(
            name,
            scopes,
            prefix.as_deref(),
            expires.as_deref(),
            SystemTime::now(),
        )
        .map_err(refusal)?;
    }
    Ok(())
}

fn run_local(root: &std::path::Path, command: TokenCommand) -> anyhow::Result<()> {
    check_input(&command)?;
    let store = TokenStore::open(root).map_err(refusal)?;
    run_on(&store, command)
}

fn run_on(store: &TokenStore, command: TokenCommand) -> anyhow::Result<()> {
    let now = SystemTime::now();
    match command {
        TokenCommand::Create {
            name,
            scopes,
            prefix,
            expires,
        } => {
            let new = NewToken::parse(&name, &scopes, prefix.as_deref(), expires.as_deref(), now)
                .map_err(refusal)?;
            let (token, row) = store.create(&new, now).map_err(refusal)?;
            tracing::info!(by = "local", token = %row.name, scopes = %row.scopes, "token created");
            print_created(token.reveal(), &Listed::from(&row))
        }
        TokenCommand::List { json } => {
            let rows: Vec<Listed> = store
                .list()
                .map_err(refusal)?
                .iter()
                .map(Listed::from)
                .collect();
            print_list(&rows, json)
        }
        TokenCommand::Revoke { name } => {
            let row = store.revoke(&name, now).map_err(refusal)?;
            tracing::info!(by = "local", token = %row.name, "token revoked");
            eprintln!("distribusync: token `{}` revoked", row.name);
            Ok(())
        }
    }
}

async fn run_remote(conn: &crate::cli::Global, command: TokenCommand) -> anyhow::Result<()> {
    let channel = crate::connection::resolve(conn)?.connect().await?;
    let mut client = AdminClient::new(channel);
    match command {
        TokenCommand::Create {
            name,
            scopes,
            prefix,
            expires,
        } => {
            // Checked here too, so a typo is a usage error without a round trip.
            NewToken::parse(
                &name,
                &scopes,
                prefix.as_deref(),
                expires.as_deref(),
                SystemTime::now(),
            )
            .map_err(refusal)?;
            let r = client
                .create_token(v1::CreateTokenRequest {
                    name,
                    scopes: scopes.split(',').map(|s| s.trim().to_owned()).collect(),
                    prefix: prefix.unwrap_or_default(),
                    expires: expires.unwrap_or_default(),
                })
                .await
                .map_err(remote)?
                .into_inner();
            let info = r.info.unwrap_or_default();
            print_created(&r.token, &Listed::from(info))
        }
        TokenCommand::List { json } => {
            let r = client
                .list_tokens(v1::ListTokensRequest {})
                .await
                .map_err(remote)?
                .into_inner();
            let rows: Vec<Listed> = r.tokens.into_iter().map(Listed::from).collect();
            print_list(&rows, json)
        }
        TokenCommand::Revoke { name } => {
            let r = client
                .revoke_token(v1::RevokeTokenRequest { name })
                .await
                .map_err(remote)?
                .into_inner();
            eprintln!(
                "distribusync: token `{}` revoked",
                r.info.map(|i| i.name).unwrap_or_default()
            );
            Ok(())
        }
    }
}
