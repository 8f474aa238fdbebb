//! `serve --config FILE`: a TOML file for every serve setting, and
//! `distribusync config`, which prints the effective settings and where
//! each came from.
//!
//! Invariants: the file's keys *are* `serve`'s long flag names (`listen`,
//! `max-file-size`, `tls-name`, …), read from the clap definition at run
//! time, so a flag added to `ServeArgs` is a key at once, with the same
//! parser, the same checks and the same help; nothing here lists them.
//! Precedence is flags > environment > file > defaults: a file value is
//! applied only where clap says the value came from its default (or from
//! nowhere), by parsing the command line again with the file's values
//! appended as flags. Every file value is checked with the flag's own
//! parser first, so a mistake names the file, the line and the key.

use std::collections::HashMap;
use std::ffi::{OsStr, OsString};
use std::path::{Path, PathBuf};

use clap::parser::ValueSource;
use clap::{ArgAction, ArgMatches, CommandFactory, FromArgMatches};

use crate::UsageError;
use crate::cli::Cli;

/// Long flags of `serve` that are not settings.
const NOT_SETTINGS: &[&str] = &["config", "print-fingerprint", "help", "version"];

/// Subcommands that take the serve settings.
const WITH_SETTINGS: &[&str] = &["serve", "config"];

/// One setting read from the file.
#[derive(Debug, Clone)]
struct FileSetting {
    key: String,
    /// As flag arguments; empty for a flag set to `true`.
    values: Vec<String>,
    /// `false` for a flag set to `false` (nothing to pass).
    present: bool,
    /// A flag (`true`/`false`), passed without a value.
    flag: bool,
    line: usize,
}

/// Where each setting the file gave came from: key → (file, line).
pub type FromFile = HashMap<String, (PathBuf, usize)>;

/// The parsed command line, with the config file's settings applied.
#[derive(Debug)]
pub struct Parsed {
    pub cli: Cli,
    pub matches: ArgMatches,
    pub from_file: FromFile,
}

/// `serve`'s clap definition (shared by `config`).
pub fn serve_command() -> clap::Command {
    let mut cli = Cli::command();
    cli.build();
    cli.find_subcommand("serve")
        .cloned()
        .unwrap_or_else(|| clap::Command::new("serve"))
}

/// The settings' args, in definition order (hidden ones, for tests only,
/// are not settings).
fn settings(serve: &clap::Command) -> impl Iterator<Item = &clap::Arg> {
    serve.get_arguments().filter(|a| {
        a.get_long()
            .is_some_and(|l| !NOT_SETTINGS.contains(&l) && !a.is_positional() && !a.is_hide_set())
    })
}

/// Parses `argv` as clap does (exiting on a clap error, as before), then
/// applies the `--config` file of `serve` / `config`.
///
/// # Errors
/// A [`UsageError`] naming the file (and line) for a missing or unreadable
/// file, bad TOML, an unknown key or a value of the wrong type.
pub fn parse(argv: Vec<OsString>) -> anyhow::Result<Parsed> {
    let matches = Cli::command().get_matches_from(argv.clone());
    apply(argv, matches)
}

/// As [`parse`], but a clap error is returned (one line), not printed with
/// an exit: for a reload, which must keep serving whatever is wrong.
///
/// # Errors
/// As [`parse`], and a command line clap refuses.
pub fn try_parse(argv: Vec<OsString>) -> anyhow::Result<Parsed> {
    let matches = Cli::command()
        .try_get_matches_from(argv.clone())
        .map_err(|e| UsageError(first_line(&e)))?;
    apply(argv, matches)
}

fn apply(argv: Vec<OsString>, matches: ArgMatches) -> anyhow::Result<Parsed> {
    let command = Cli::command();
    let file = match matches.subcommand() {
        Some((name, sub)) if WITH_SETTINGS.contains(&name) => sub.get_one::<PathBuf>("config"),
        _ => None,
    };
    let Some(file) = file.cloned() else {
        let cli = Cli::from_arg_matches(&matches).map_err(|e| UsageError(e.to_string()))?;
        return Ok(Parsed {
            cli,
            matches,
            from_file: FromFile::new(),
        });
    };
    let serve = serve_command();
    let read = read_file(&file, &serve)?;
    let sub = matches
        .subcommand()
        .map(|(_, m)| m)
        .expect("checked above: a subcommand with settings");
    let mut argv = argv;
    let mut from_file = FromFile::new();
    for s in &read {
        let Some(arg) = settings(&serve).find(|a| a.get_long() == Some(s.key.as_str())) else {
            continue;
        };
        let id = arg.get_id().as_str();
        if matches!(
            sub.value_source(id),
            Some(ValueSource::CommandLine | ValueSource::EnvVariable)
        ) {
            continue;
        }
        from_file.insert(s.key.clone(), (file.clone(), s.line));
        if !s.present {
            continue;
        }
        if s.flag {
            argv.push(format!("--{}", s.key).into());
        }
        for v in &s.values {
            argv.push(format!("--{}", s.key).into());
            argv.push(v.into());
        }
    }
    let matches = command
        .try_get_matches_from(argv)
        .map_err(|e| UsageError(format!("config {}: {}", file.display(), first_line(&e))))?;
    let cli = Cli::from_arg_matches(&matches).map_err(|e| UsageError(e.to_string()))?;
    Ok(Parsed {
        cli,
        matches,
        from_file,
    })
}

/// A clap error's first line, without its `error: ` prefix.
fn first_line(e: &clap::Error) -> String {
    let text = e.to_string();
    let line = text.lines().next().unwrap_or_default();
    line.strip_prefix("error: ").unwrap_or(line).to_owned()
}

/// The 1-based line of byte `offset` in `text`.
fn line_of(text: &str, offset: usize) -> usize {
    text[..offset.min(text.len())].matches('\n').count() + 1
}

/// Reads and checks the file against `serve`'s settings.
fn read_file(path: &Path, serve: &clap::Command) -> Result<Vec<FileSetting>, UsageError> {
    let shown = path.display();
    let text = std::fs::read_to_string(path)
        .map_err(|e| UsageError(format!("config {shown}: cannot read it: {e}")))?;
    let doc = toml_edit::Document::parse(text.clone()).map_err(|e| {
        let line = e.span().map_or(1, |s| line_of(&text, s.start));
        let msg = e.message().lines().next().unwrap_or("not TOML").to_owned();
        UsageError(format!("config {shown}:{line}: {msg}"))
    })?;
    let table = doc.as_table();
    let mut out = Vec::new();
    for (key, item) in table.iter() {
        let line = table
            .key(key)
            .and_then(toml_edit::Key::span)
            .map_or(1, |s| line_of(&text, s.start));
        let at = format!("config {shown}:{line}");
        let Some(arg) = settings(serve).find(|a| a.get_long() == Some(key)) else {
            return Err(UsageError(format!(
                "{at}: unknown key `{key}` (the keys are serve's flags without the dashes; \
                 `distribusync config` lists them)"
            )));
        };
        let Some(value) = item.as_value() else {
            return Err(UsageError(format!(
                "{at}: `{key}` must be a value, not a table"
            )));
        };
        let is_flag = matches!(arg.get_action(), ArgAction::SetTrue);
        let mut setting = FileSetting {
            key: key.to_owned(),
            values: Vec::new(),
            present: true,
            flag: is_flag,
            line,
        };
        if is_flag {
            let Some(b) = value.as_bool() else {
                return Err(UsageError(format!(
                    "{at}: `{key}` must be true or false, not {}",
                    value.type_name()
                )));
            };
            setting.present = b;
            out.push(setting);
            continue;
        }
        let many = matches!(arg.get_action(), ArgAction::Append);
        let scalars: Vec<&toml_edit::Value> = match value.as_array() {
            Some(a) if many => a.iter().collect(),
            Some(_) => {
                return Err(UsageError(format!(
                    "{at}: `{key}` takes one value, not an array"
                )));
            }
            None => vec![value],
        };
        for v in scalars {
            let s = match v {
                toml_edit::Value::String(s) => s.value().clone(),
                toml_edit::Value::Integer(i) => i.value().to_string(),
                toml_edit::Value::Float(f) => f.value().to_string(),
                other => {
                    return Err(UsageError(format!(
                        "{at}: `{key}` must be a string or a number, not {}",
                        other.type_name()
                    )));
                }
            };
            // The flag's own parser judges the value (a size, a
            // duration, an address, one of a list).
            let parts: Vec<String> = match arg.get_value_delimiter() {
                Some(d) => s.split(d).map(str::to_owned).collect(),
                None => vec![s.clone()],
            };
            let check = clap::Command::new("check").no_binary_name(true).arg(
                clap::Arg::new("value")
                    .long("value")
                    .value_name("VALUE")
                    .action(ArgAction::Set)
                    .allow_hyphen_values(true)
                    .value_parser(arg.get_value_parser().clone()),
            );
            for part in &parts {
                check
                    .clone()
                    .try_get_matches_from([OsStr::new("--value"), OsStr::new(part)])
                    .map_err(|e| {
                        let why = first_line(&e).replace(" for '--value <VALUE>'", "");
                        UsageError(format!("{at}: `{key}` = {s:?}: {why}"))
                    })?;
            }
            setting.values.push(s);
        }
        out.push(setting);
    }
    Ok(out)
}

/// `distribusync config`: the effective settings as a TOML file would
/// hold them, each with where it came from.
pub fn print(parsed: &Parsed) -> anyhow::Result<()> {
    use std::io::Write;
    let serve = serve_command();
    let Some((_, sub)) = parsed.matches.subcommand() else {
        return Ok(());
    };
    let mut out = std::io::stdout().lock();
    for arg in settings(&serve) {
        let key = arg.get_long().unwrap_or_default();
        let id = arg.get_id().as_str();
        let source = match parsed.from_file.get(key) {
            Some((file, line)) => format!("file {}:{line}", file.display()),
            None => match sub.value_source(id) {
                Some(ValueSource::CommandLine) => format!("flag --{key}"),
                Some(ValueSource::EnvVariable) => format!(
                    "env {}",
                    arg.get_env()
                        .map_or_else(String::new, |e| e.to_string_lossy().into_owned())
                ),
                _ => "default".to_owned(),
            },
        };
        let raw: Vec<String> = sub
            .get_raw(id)
            .map(|vs| vs.map(|v| v.to_string_lossy().into_owned()).collect())
            .unwrap_or_default();
        let value = if matches!(arg.get_action(), ArgAction::SetTrue) {
            sub.get_flag(id).to_string()
        } else if matches!(arg.get_action(), ArgAction::Append) {
            let items: Vec<String> = raw
                .iter()
                .flat_map(|v| match arg.get_value_delimiter() {
                    Some(d) => v.split(d).map(str::to_owned).collect::<Vec<_>>(),
                    None => vec![v.clone()],
                })
                .map(|v| toml_value(&v))
                .collect();
            format!("[{}]", items.join(", "))
        } else if let Some(v) = raw.first() {
            toml_value(v)
        } else {
            writeln!(out, "# {key} (unset)  # {source}")?;
            continue;
        };
        writeln!(out, "{key} = {value}  # {source}")?;
    }
    Ok(())
}

/// A value as TOML: an integer stays one, anything else is a string.
fn toml_value(v: &str) -> String {
    if v.parse::<i64>().is_ok() {
        v.to_owned()
    } else {
        toml_edit::Value::from(v).to_string().trim().to_owned()
    }
}
