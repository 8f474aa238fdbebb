//! `add`, `sort`, `job`, `jobs`: thin fronts over [`ComputeClient`].
//!
//! "This client's jobs" across invocations: every command uses one client id,
//! taken from `--client-id` / DISTRIBUSYNC_CLIENT_ID, else from the file
//! `$XDG_CONFIG_HOME/distribusync/client-id` (or `~/.config/...`), created
//! with a fresh UUID the first time. `jobs --all` lists every client's jobs.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use clap::{Args, Subcommand};
use distribusync_client::compute::{ComputeClient, ComputeError, JobInfo, JobOutput, JobRequest};
use distribusync_core::compute::{Number, Numbers, Order, parse_number, parse_numbers};
use serde_json::json;

use crate::UsageError;
use crate::cli::Global;
use crate::output::rfc3339;

/// How a job is run: wait for it, push it back, or leave it.
#[derive(Debug, Args)]
pub struct JobFlags {
    /// Run as a job: print "accepted job ID" on stderr at once, then the
    /// result when the server pushes it back.
    #[arg(long = "async")]
    pub run_async: bool,
    /// With --async: print the job id and exit; fetch the result later
    /// with `distribusync job ID`.
    #[arg(long, requires = "run_async")]
    pub detach: bool,
    /// With --async: time the job has to finish (e.g. 30s, 5m); the
    /// server's default when omitted.
    #[arg(long, requires = "run_async", value_parser = humantime::parse_duration)]
    pub deadline: Option<Duration>,
}

#[derive(Debug, Args)]
pub struct AddArgs {
    /// Two or more numbers: integers (exact 64-bit) or decimals.
    #[arg(allow_negative_numbers = true, value_name = "N")]
    pub numbers: Vec<String>,
    /// Print {"sum": N} as JSON.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub job: JobFlags,
}

#[derive(Debug, Args)]
pub struct SortArgs {
    /// Numbers to sort (integers or decimals).
    #[arg(
        allow_negative_numbers = true,
        value_name = "N",
        conflicts_with = "file"
    )]
    pub numbers: Vec<String>,
    /// Largest first.
    #[arg(long)]
    pub desc: bool,
    /// Read the numbers from FILE ('-': standard input), separated by
    /// whitespace or newlines.
    #[arg(long, short)]
    pub file: Option<PathBuf>,
    /// Print {"sorted": [...]} as JSON.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub job: JobFlags,
}

#[derive(Debug, Args)]
#[command(args_conflicts_with_subcommands = true, subcommand_negates_reqs = true)]
pub struct JobArgs {
    #[command(subcommand)]
    pub action: Option<JobAction>,
    /// Job id: prints its status, and its result once done.
    #[arg(required = true)]
    pub id: Option<String>,
    /// Print the job as one JSON object.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Subcommand)]
pub enum JobAction {
    /// Cancel a queued or running job.
    Cancel {
        /// Job id.
        id: String,
    },
}

#[derive(Debug, Args)]
pub struct JobsArgs {
    /// Every client's jobs, not only this client's.
    #[arg(long)]
    pub all: bool,
    /// JSON Lines.
    #[arg(long)]
    pub json: bool,
}

async fn connect(global: &Global) -> anyhow::Result<ComputeClient> {
    let client = ComputeClient::connect(crate::connection::resolve(global)?).await?;
    Ok(client.with_client_id(client_id(global)))
}

/// The persisted client id (see the module docs).
pub(crate) fn client_id(global: &Global) -> String {
    if let Some(id) = &global.client_id {
        return id.clone();
    }
    let Some(path) = client_id_file() else {
        tracing::warn!("no HOME or XDG_CONFIG_HOME: `jobs` will not see earlier runs' jobs");
        return uuid::Uuid::new_v4().to_string();
    };
    match std::fs::read_to_string(&path) {
        Ok(s) if !s.trim().is_empty() => return s.trim().to_owned(),
        _ => {}
    }
    let id = uuid::Uuid::new_v4().to_string();
    let saved = path
        .parent()
        .map_or(Ok(()), std::fs::create_dir_all)
        .and_then(|()| std::fs::write(&path, format!("{id}\n")));
    if let Err(e) = saved {
        tracing::warn!(path = %path.display(), error = %e, "cannot save the client id");
    }
    id
}

fn client_id_file() -> Option<PathBuf> {
    crate::connection::config_dir().map(|d| d.join("client-id"))
}

/// Numbers from the command line; a token that is not one is a usage error
/// naming it.
fn parse_args(what: &str, tokens: &[String]) -> anyhow::Result<Numbers> {
    let numbers = tokens
        .iter()
        .map(|t| parse_number(t).map_err(|e| UsageError(format!("{what}: {e}"))))
        .collect::<Result<Vec<Number>, _>>()?;
    Ok(Numbers::from_numbers(&numbers))
}

pub async fn add(global: &Global, args: AddArgs) -> anyhow::Result<()> {
    let numbers = parse_args("add", &args.numbers)?;
    if numbers.len() < 2 {
        return Err(UsageError(format!(
            "add: needs at least two numbers, got {}",
            numbers.len()
        ))
        .into());
    }
    let client = connect(global).await?;
    if args.job.run_async {
        let job = JobRequest::add(numbers);
        let output = run_job(&client, job, &args.job).await.context("add")?;
        return match output {
            Some(o) => print_output(&o, args.json),
            None => Ok(()),
        };
    }
    let sum = client.add(numbers).await.context("add")?;
    print_output(&JobOutput::Sum(sum), args.json)
}

pub async fn sort(global: &Global, args: SortArgs) -> anyhow::Result<()> {
    let numbers = match &args.file {
        Some(path) => read_numbers(path)?,
        None => parse_args("sort", &args.numbers)?,
    };
    let order = if args.desc {
        Order::Descending
    } else {
        Order::Ascending
    };
    let client = connect(global).await?;
    if args.job.run_async {
        let job = JobRequest::sort(numbers, order);
        let output = run_job(&client, job, &args.job).await.context("sort")?;
        return match output {
            Some(o) => print_output(&o, args.json),
            None => Ok(()),
        };
    }
    let sorted = client.sort(numbers, order).await.context("sort")?;
    print_output(&JobOutput::Sorted(sorted), args.json)
}

fn read_numbers(path: &Path) -> anyhow::Result<Numbers> {
    let mut text = String::new();
    if path == Path::new("-") {
        std::io::stdin()
            .read_to_string(&mut text)
            .context("sort: reading standard input")?;
    } else {
        text = std::fs::read_to_string(path)
            .with_context(|| format!("sort: cannot read {}", path.display()))?;
    }
    parse_numbers(&text).with_context(|| format!("sort: {}", path.display()))
}

/// Submits a job. Detached: prints its id and returns `None`. Otherwise
/// prints the acknowledgment on stderr and waits for the pushed result.
async fn run_job(
    client: &ComputeClient,
    mut job: JobRequest,
    flags: &JobFlags,
) -> Result<Option<JobOutput>, ComputeError> {
    if let Some(d) = flags.deadline {
        job = job.deadline(d);
    }
    if flags.detach {
        let id = client.submit_detached(job).await?;
        println!("{id}");
        return Ok(None);
    }
    let handle = client.submit(job).await?;
    eprintln!("accepted job {}", handle.id());
    handle.await.map(Some)
}

fn print_output(output: &JobOutput, as_json: bool) -> anyhow::Result<()> {
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    if as_json {
        serde_json::to_writer(&mut out, &output_json(output))?;
        writeln!(out)?;
    } else {
        write_plain(&mut out, output)?;
    }
    out.flush()?;
    Ok(())
}

fn write_plain(out: &mut impl Write, output: &JobOutput) -> std::io::Result<()> {
    match output {
        JobOutput::Sum(n) => writeln!(out, "{n}"),
        JobOutput::Sorted(Numbers::Ints(v)) => v.iter().try_for_each(|x| writeln!(out, "{x}")),
        JobOutput::Sorted(Numbers::Floats(v)) => v
            .iter()
            .try_for_each(|x| writeln!(out, "{}", Number::Float(*x))),
    }
}

fn number_json(n: Number) -> serde_json::Value {
    match n {
        Number::Int(i) => json!(i),
        Number::Float(x) => json!(x),
    }
}

fn output_json(output: &JobOutput) -> serde_json::Value {
    match output {
        JobOutput::Sum(n) => json!({ "sum": number_json(*n) }),
        JobOutput::Sorted(Numbers::Ints(v)) => json!({ "sorted": v }),
        JobOutput::Sorted(Numbers::Floats(v)) => json!({ "sorted": v }),
    }
}

fn job_json(job: &JobInfo) -> serde_json::Value {
    let mut v = json!({
        "id": job.id,
        "client_id": job.client_id,
        "kind": job.kind.to_string(),
        "state": job.state.to_string(),
        "count": job.count,
        "submitted": job.submitted.map(rfc3339),
        "deadline": job.deadline.map(rfc3339),
        "finished": job.finished.map(rfc3339),
    });
    if let Some(o) = &job.output
        && let (Some(obj), serde_json::Value::Object(extra)) = (v.as_object_mut(), output_json(o))
    {
        obj.extend(extra);
    }
    if let Some((_, e)) = &job.error {
        v["error"] = json!(e);
    }
    v
}

pub async fn job(global: &Global, args: JobArgs) -> anyhow::Result<()> {
    let client = connect(global).await?;
    if let Some(JobAction::Cancel { id }) = args.action {
        let info = client
            .cancel_job(&id)
            .await
            .with_context(|| format!("job cancel {}", distribusync_core::echo(&id)))?;
        println!("job {}: {}", info.id, info.state);
        return Ok(());
    }
    let id = args
        .id
        .ok_or_else(|| UsageError("job: give a job id (or `job cancel ID`)".into()))?;
    let info = client
        .get_job(&id)
        .await
        .with_context(|| format!("job {}", distribusync_core::echo(&id)))?;
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    if args.json {
        serde_json::to_writer(&mut out, &job_json(&info))?;
        writeln!(out)?;
    } else {
        write!(out, "job {}  {}  {}", info.id, info.kind, info.state)?;
        match &info.error {
            Some((_, e)) => writeln!(out, ": {e}")?,
            None => writeln!(out)?,
        }
        if let Some(o) = &info.output {
            write_plain(&mut out, o)?;
        }
    }
    out.flush()?;
    Ok(())
}

pub async fn jobs(global: &Global, args: JobsArgs) -> anyhow::Result<()> {
    let client = connect(global).await?;
    let client = if args.all {
        client.with_client_id(String::new())
    } else {
        client
    };
    let jobs = client.list_jobs().await.context("jobs")?;
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    for j in &jobs {
        if args.json {
            serde_json::to_writer(&mut out, &job_json(j))?;
            writeln!(out)?;
        } else {
            writeln!(
                out,
                "{}  {:<4}  {:<17}  {:>9} numbers  {}",
                j.id,
                j.kind,
                j.state,
                j.count,
                j.submitted
                    .map(|t| humantime::format_rfc3339_seconds(t).to_string())
                    .unwrap_or_default()
            )?;
        }
    }
    out.flush()?;
    Ok(())
}
