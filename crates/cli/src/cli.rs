//! Command-line flags. Flags win over environment variables, which win over
//! defaults.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(
    name = "distribusync",
    version = distribusync_server::VERSION,
    about = "Self-hosted file sync and remote computation over gRPC",
    propagate_version = true
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

/// A client command: its own arguments plus the flags every client command
/// shares (not `serve`'s, so `serve --help` shows only what serving takes).
#[derive(Debug, Args)]
pub struct Client<T: Args> {
    #[command(flatten)]
    pub global: Global,
    #[command(flatten)]
    pub args: T,
}

/// `menu` takes only the shared client flags.
#[derive(Debug, Args)]
pub struct MenuArgs {}

/// Flags every client command shares. Where a setting comes from: flags,
/// then environment, then the saved profile (`distribusync login`), then
/// defaults.
#[derive(Debug, Args, Clone, Default)]
pub struct Global {
    /// File server to talk to: https://host:port (TLS) or http://host:port;
    /// several instances of one cluster separated by commas (the next is
    /// used when one does not answer) [default: the profile's, else
    /// http://127.0.0.1:50000]
    #[arg(long, global = true, env = "DISTRIBUSYNC_SERVER")]
    pub server: Option<String>,
    /// Saved connection profile to use (`distribusync login --profile
    /// NAME` saves one) [default: default]
    #[arg(long, global = true, env = "DISTRIBUSYNC_PROFILE")]
    pub profile: Option<String>,
    /// Trust the TLS server whose certificate has this SHA-256
    /// fingerprint (as `serve --print-fingerprint` prints it).
    #[arg(
        long,
        global = true,
        env = "DISTRIBUSYNC_FINGERPRINT",
        conflicts_with = "ca"
    )]
    pub fingerprint: Option<String>,
    /// Verify the TLS server by the CA certificates in this PEM file
    /// instead of the system's.
    #[arg(long, global = true, env = "DISTRIBUSYNC_CA")]
    pub ca: Option<PathBuf>,
    /// Read the access token from this file (else DISTRIBUSYNC_TOKEN, else
    /// the profile's).
    #[arg(long, global = true, env = "DISTRIBUSYNC_TOKEN_FILE")]
    pub token_file: Option<PathBuf>,
    /// Compute server to talk to; the --server when omitted (set it when
    /// files and compute run as separate servers).
    #[arg(long, global = true, env = "DISTRIBUSYNC_COMPUTE_SERVER")]
    pub compute_server: Option<String>,
    /// Client id that names this client's compute jobs (`jobs`); kept in
    /// the user's config folder when omitted.
    #[arg(
        long,
        global = true,
        env = "DISTRIBUSYNC_CLIENT_ID",
        hide_env_values = true
    )]
    pub client_id: Option<String>,
    /// Files at least this big go by delta transfer (only the changed
    /// chunks move) in put, get, the menu and sync; `off` never. Sizes as
    /// 8MiB, 512K [default: 8MiB]
    #[arg(long, global = true, env = "DISTRIBUSYNC_DELTA_MIN_SIZE", value_parser = parse_delta_min)]
    pub delta_min_size: Option<u64>,
}

/// `--delta-min-size`: a byte size, or `off`.
fn parse_delta_min(text: &str) -> Result<u64, String> {
    if text.trim().eq_ignore_ascii_case("off") {
        return Ok(u64::MAX);
    }
    distribusync_core::size::parse_byte_size(text).map_err(|e| e.to_string())
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the server: serve the folder ROOT (MASTER) over gRPC.
    Serve(ServeArgs),
    /// Print the settings `serve` would use (flags, environment, --config
    /// file, defaults) as a TOML file, each with where it came from.
    Config(ServeArgs),
    /// List files under PREFIX (a file or folder), recursively.
    Ls(Client<LsArgs>),
    /// Upload a file (or a folder with -r).
    Put(Client<PutArgs>),
    /// Download a file; an interrupted download resumes.
    Get(Client<GetArgs>),
    /// Delete a file on the server.
    Rm(Client<RmArgs>),
    /// Rename or move a file or folder on the server.
    Mv(Client<MvArgs>),
    /// Show one file's metadata.
    Stat(Client<StatArgs>),
    /// Show the bytes the server's Files service received and sent since
    /// it started (needs the admin scope).
    Traffic(Client<MenuArgs>),
    /// Add two or more numbers on the compute server.
    Add(Client<crate::cmd::compute::AddArgs>),
    /// Sort numbers on the compute server, one per line.
    Sort(Client<crate::cmd::compute::SortArgs>),
    /// Show a compute job (status and result), or cancel one.
    Job(Client<crate::cmd::compute::JobArgs>),
    /// List this client's recent compute jobs.
    Jobs(Client<crate::cmd::compute::JobsArgs>),
    /// Keep a local folder in sync with the server (until Ctrl-C).
    Sync(Client<SyncArgs>),
    /// What the server is and holds (version, uptime, files, streams,
    /// jobs), or with --sync DIR what that folder's sync daemon is doing.
    Status(Client<crate::cmd::status::StatusArgs>),
    /// Make, list and revoke access tokens (on the server's ROOT, or
    /// remotely with --server and an admin token).
    Token(crate::cmd::token::TokenArgs),
    /// The numbered menu: files, compute, async jobs and auto-sync in one
    /// place (for a person, or a script feeding standard input).
    Menu(Client<MenuArgs>),
    /// Trust a server and save how to reach it (URL, certificate
    /// fingerprint, token) as a profile the other commands use.
    Login(LoginArgs),
    /// Print a shell completion script, e.g.
    /// `distribusync completions bash > /etc/bash_completion.d/distribusync`.
    Completions { shell: clap_complete::Shell },
    /// Print the manual page (roff), e.g. `distribusync man | man -l -`.
    Man,
}

#[derive(Debug, Args)]
pub struct LoginArgs {
    /// The server, e.g. https://server.example:50000 (https:// when no
    /// scheme is given).
    pub url: String,
    /// Name to save the profile under.
    #[arg(long, env = "DISTRIBUSYNC_PROFILE", default_value = distribusync_client::DEFAULT_PROFILE)]
    pub profile: String,
    /// Trust the certificate with this SHA-256 fingerprint (no prompt).
    #[arg(long, conflicts_with = "ca")]
    pub fingerprint: Option<String>,
    /// Verify the server by the CA certificates in this PEM file (no
    /// prompt); the profile remembers the file.
    #[arg(long)]
    pub ca: Option<PathBuf>,
    /// Read the token from this file (else DISTRIBUSYNC_TOKEN, else it is
    /// asked for).
    #[arg(long, env = "DISTRIBUSYNC_TOKEN_FILE")]
    pub token_file: Option<PathBuf>,
    /// Trust the certificate the server presents without asking.
    #[arg(long, short)]
    pub yes: bool,
}

#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Read settings from this TOML file: its keys are these flags' names
    /// without the dashes (`max-file-size = "1GiB"`). Flags win over the
    /// environment, which wins over the file.
    #[arg(long, env = "DISTRIBUSYNC_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Address to listen on.
    #[arg(long, env = "DISTRIBUSYNC_LISTEN", default_value = "127.0.0.1:50000")]
    pub listen: SocketAddr,
    /// Also serve the web page (browse, upload, share, compute) on this
    /// address; off unless given. TLS and tokens as for --listen.
    #[arg(long, env = "DISTRIBUSYNC_WEB_LISTEN", value_name = "ADDR")]
    pub web_listen: Option<SocketAddr>,
    /// Also serve the files over WebDAV on this address (off by default):
    /// same tokens (HTTP Basic: any user name, the token as password), same
    /// TLS, same store. See docs/DESIGN.md, "WebDAV".
    #[arg(long, env = "DISTRIBUSYNC_WEBDAV_LISTEN")]
    pub webdav_listen: Option<SocketAddr>,
    /// The folder the server owns (created if missing). With --metadata
    /// and --blobs, only this instance's own state (staging, kept parts,
    /// TLS identity, tokens): the files are in the cluster.
    #[arg(long, env = "DISTRIBUSYNC_ROOT", default_value = "./MASTER")]
    pub root: PathBuf,
    /// Serve the cluster backend: metadata in this PostgreSQL database
    /// (postgres://USER:PASSWORD@HOST:PORT/DATABASE), shared by every
    /// instance given the same; needs --blobs. See docs/DESIGN.md,
    /// "Cluster backend".
    #[arg(
        long,
        env = "DISTRIBUSYNC_METADATA",
        value_name = "URL",
        requires = "blobs"
    )]
    pub metadata: Option<String>,
    /// The cluster backend's contents: chunks in this S3 bucket
    /// (s3://BUCKET), credentials from AWS_ACCESS_KEY_ID and
    /// AWS_SECRET_ACCESS_KEY; needs --metadata.
    #[arg(
        long,
        env = "DISTRIBUSYNC_BLOBS",
        value_name = "URL",
        requires = "metadata"
    )]
    pub blobs: Option<String>,
    /// The S3 endpoint of --blobs (an S3-compatible server such as
    /// SeaweedFS or MinIO: http://s3.internal:8333); AWS when not given.
    #[arg(
        long,
        env = "DISTRIBUSYNC_S3_ENDPOINT",
        value_name = "URL",
        requires = "blobs"
    )]
    pub s3_endpoint: Option<String>,
    /// Largest file accepted, in bytes.
    #[arg(long, env = "DISTRIBUSYNC_MAX_FILE_SIZE", default_value_t = distribusync_core::limits::DEFAULT_MAX_FILE_SIZE)]
    pub max_file_size: u64,
    /// Most parts of interrupted uploads kept for resuming (the oldest are
    /// removed first).
    #[arg(long, env = "DISTRIBUSYNC_MAX_KEPT_PARTS", default_value_t = distribusync_server::store::StoreConfig::default().max_kept_parts)]
    pub max_kept_parts: usize,
    /// Most bytes those parts may hold together.
    #[arg(long, env = "DISTRIBUSYNC_MAX_KEPT_BYTES", default_value_t = distribusync_server::store::StoreConfig::default().max_kept_bytes)]
    pub max_kept_bytes: u64,
    /// Services this process hosts: files, compute, or files,compute (one
    /// port for both). Dedicated servers: one process each.
    #[arg(
        long,
        env = "DISTRIBUSYNC_SERVICES",
        default_value = "files,compute",
        value_delimiter = ',',
        value_enum
    )]
    pub services: Vec<Service>,
    /// Most numbers one add, sort or job may carry.
    #[arg(long, env = "DISTRIBUSYNC_MAX_NUMBERS", default_value_t = distribusync_server::ComputeConfig::default().max_numbers)]
    pub max_numbers: usize,
    /// Memory the compute service may hold for numbers (sorts in flight,
    /// job inputs, kept results, result and callback streams), e.g. 1GiB,
    /// 512MiB. Past it requests are refused (RESOURCE_EXHAUSTED) after kept
    /// results are evicted, oldest first.
    #[arg(long, env = "DISTRIBUSYNC_COMPUTE_MEMORY", default_value = "1GiB", value_parser = distribusync_core::size::parse_byte_size)]
    pub compute_memory: u64,
    /// Most compute jobs queued or running at once.
    #[arg(long, env = "DISTRIBUSYNC_JOB_QUEUE", default_value_t = distribusync_server::ComputeConfig::default().job_queue_capacity)]
    pub job_queue: usize,
    /// Compute jobs running at once (default: one per core).
    #[arg(long, env = "DISTRIBUSYNC_JOB_WORKERS")]
    pub job_workers: Option<usize>,
    /// Deadline of a job that asks for none.
    #[arg(long, env = "DISTRIBUSYNC_JOB_DEADLINE", default_value = "60s", value_parser = humantime::parse_duration)]
    pub job_deadline: std::time::Duration,
    /// Longest deadline a job may ask for.
    #[arg(long, env = "DISTRIBUSYNC_MAX_JOB_DEADLINE", default_value = "1h", value_parser = humantime::parse_duration)]
    pub max_job_deadline: std::time::Duration,
    /// Cluster backend: how long a job claimed by an instance stays its
    /// without a renewal (renewed every third of it while the job runs);
    /// the jobs of an instance that dies run again elsewhere after this.
    #[arg(long, env = "DISTRIBUSYNC_JOB_LEASE", default_value = "30s", value_parser = humantime::parse_duration)]
    pub job_lease: std::time::Duration,
    /// Cluster backend: most tries of a job whose instances keep dying
    /// mid-job; past them the job fails, saying so.
    #[arg(long, env = "DISTRIBUSYNC_JOB_ATTEMPTS", default_value_t = distribusync_server::ComputeConfig::default().job_attempts, value_parser = clap::value_parser!(u32).range(1..))]
    pub job_attempts: u32,
    /// Test only: on the cluster backend, claim jobs and hold them
    /// without computing (so a test can kill the instance mid-job).
    #[arg(long, env = "DISTRIBUSYNC_TEST_HOLD_JOBS", hide = true)]
    pub test_hold_jobs: bool,
    /// How long finished job results are kept for `job ID`.
    #[arg(long, env = "DISTRIBUSYNC_RESULT_TTL", default_value = "10m", value_parser = humantime::parse_duration)]
    pub result_ttl: std::time::Duration,
    /// A new connection that has not sent its HTTP/2 handshake in this
    /// time is closed.
    #[arg(long, env = "DISTRIBUSYNC_HANDSHAKE_TIMEOUT", default_value = "10s", value_parser = humantime::parse_duration)]
    pub handshake_timeout: std::time::Duration,
    /// An upload that sends nothing for this long ends (a resumable one
    /// keeps what arrived).
    #[arg(long, env = "DISTRIBUSYNC_IDLE_TIMEOUT", default_value = "60s", value_parser = humantime::parse_duration)]
    pub idle_timeout: std::time::Duration,
    /// Interval of HTTP/2 keepalive pings; a client that does not answer
    /// one in 20 s is disconnected. 0 turns pings off.
    #[arg(long, env = "DISTRIBUSYNC_KEEPALIVE", default_value = "30s", value_parser = humantime::parse_duration)]
    pub keepalive: std::time::Duration,
    /// Most client connections open at once; more are closed as they
    /// arrive (default: half the open-file limit, `ulimit -n`).
    #[arg(long, env = "DISTRIBUSYNC_MAX_CONNECTIONS")]
    pub max_connections: Option<usize>,
    /// When calls need a token: auto (when listening beyond loopback, or
    /// once any token was created on ROOT), on, or off.
    #[arg(long, env = "DISTRIBUSYNC_AUTH", value_enum, default_value_t = AuthArg::Auto)]
    pub auth: AuthArg,
    /// TLS: auto (on unless every listen address is loopback), on, off.
    #[arg(long, env = "DISTRIBUSYNC_TLS", value_enum, default_value_t = TlsMode::Auto)]
    pub tls: TlsMode,
    /// PEM certificate chain to serve (leaf first), e.g. from an ACME
    /// client; with --tls-key. Default: a self-signed certificate made once
    /// and kept under ROOT/.distribusync/tls/.
    #[arg(long, env = "DISTRIBUSYNC_TLS_CERT", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key of --tls-cert.
    #[arg(long, env = "DISTRIBUSYNC_TLS_KEY", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// A name (DNS name or IP address) the self-signed certificate is made
    /// for; repeat for several [default: the host name, localhost and the
    /// listen address].
    #[arg(
        long = "tls-name",
        env = "DISTRIBUSYNC_TLS_NAMES",
        value_delimiter = ','
    )]
    pub tls_names: Vec<String>,
    /// Serve Prometheus metrics on http://ADDR/metrics (plain HTTP, no
    /// token: keep it on loopback or a private network). Off when omitted.
    #[arg(long, env = "DISTRIBUSYNC_METRICS_LISTEN")]
    pub metrics_listen: Option<SocketAddr>,
    /// Print the SHA-256 fingerprint of the server's certificate and exit
    /// (making the self-signed one first if there is none).
    #[arg(long)]
    pub print_fingerprint: bool,
    /// Serve beyond loopback without TLS (traffic can be read and changed
    /// by anyone on the way) or without tokens (--auth off); warns at every
    /// start.
    #[arg(long, env = "DISTRIBUSYNC_INSECURE")]
    pub insecure: bool,
    /// Log lines as plain text (for a person) or JSON, one object a line
    /// (for a log collector).
    #[arg(long, env = "DISTRIBUSYNC_LOG_FORMAT", value_enum, default_value_t = LogFormat::Plain)]
    pub log_format: LogFormat,
}

/// `--log-format` of `serve` and `sync`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum LogFormat {
    #[default]
    Plain,
    Json,
}

/// `serve --auth`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum AuthArg {
    Auto,
    On,
    Off,
}

/// `serve --tls`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum TlsMode {
    Auto,
    On,
    Off,
}

/// A service `serve` can host.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Service {
    Files,
    Compute,
}

#[derive(Debug, Args)]
pub struct LsArgs {
    /// A file or folder on the server; everything when omitted.
    pub prefix: Option<String>,
    /// Long format: size, revision, modified time, path.
    #[arg(short, long)]
    pub long: bool,
    /// JSON Lines: path, size, revision, hash, modified.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct PutArgs {
    /// Local file (or folder with -r).
    pub local: PathBuf,
    /// Remote path; defaults to the local name. Ending in '/' puts the file
    /// into that folder.
    pub remote: Option<String>,
    /// Upload a folder and everything in it.
    #[arg(short, long)]
    pub recursive: bool,
    /// Print the uploaded files as JSON Lines.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct GetArgs {
    /// Remote file (or folder with -r).
    pub remote: String,
    /// Local destination (a file, or an existing folder); defaults to the
    /// remote file's name in the current folder. With -r: the folder the
    /// remote folder's files go into (created if missing), as `put -r`.
    pub local: Option<PathBuf>,
    /// Download a folder and everything in it.
    #[arg(short, long)]
    pub recursive: bool,
}

#[derive(Debug, Args)]
pub struct RmArgs {
    /// Remote file.
    pub remote: String,
}

#[derive(Debug, Args)]
pub struct MvArgs {
    pub from: String,
    pub to: String,
    /// Replace an existing file at TO.
    #[arg(short, long)]
    pub force: bool,
}

#[derive(Debug, Args)]
pub struct StatArgs {
    pub remote: String,
    /// One JSON object: path, size, revision, hash, modified.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct SyncArgs {
    /// The folder to keep in sync (created if missing).
    #[arg(env = "DISTRIBUSYNC_SYNC_DIR", default_value = "./SYNCHRONIZED")]
    pub dir: PathBuf,
    /// One full pass, then exit (0 when in sync).
    #[arg(long)]
    pub once: bool,
    /// two-way (default), push (the folder is the truth), pull (the server is).
    #[arg(long, value_enum, default_value_t = SyncMode::TwoWay)]
    pub mode: SyncMode,
    /// Seconds between full rescans.
    #[arg(long, default_value_t = 300)]
    pub rescan_secs: u64,
    /// Transfers (single files or batches of small ones) in flight at once.
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u16).range(1..=256))]
    pub transfers: u16,
    /// Log lines as plain text or JSON (one object a line). In a
    /// terminal, plain text also shows a live status line.
    #[arg(long, env = "DISTRIBUSYNC_LOG_FORMAT", value_enum, default_value_t = LogFormat::Plain)]
    pub log_format: LogFormat,
    /// Serve the daemon's Prometheus metrics (pending files and bytes,
    /// transfers in flight, last pass, conflicts, errors, bytes moved) on
    /// http://ADDR/metrics: plain HTTP, no token, so keep it on loopback
    /// or a private network. Off when omitted.
    #[arg(
        long,
        env = "DISTRIBUSYNC_SYNC_METRICS_LISTEN",
        value_name = "ADDR",
        conflicts_with = "once"
    )]
    pub metrics_listen: Option<SocketAddr>,
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum SyncMode {
    TwoWay,
    Push,
    Pull,
}
