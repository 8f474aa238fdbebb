//! Before the main menu: asking for what the menu needs and nothing gave
//! (no flag, environment variable or saved profile), the way `login` asks
//! for it, and offering to save the answers as a profile.
//!
//! - No server given: asked, with the default on an empty line.
//! - An `https://` server whose trust nothing gave: its certificate's
//!   fingerprint is shown and the person decides (as `login`).
//! - No token, and the server refuses to serve without one: asked (without
//!   echo at a terminal), again while the server refuses it.
//!
//! Only what was asked is asked again; settings that came from somewhere
//! are used as they are. The steps are `login`'s ([`crate::cmd::login`]),
//! not copies.

use distribusync_client::{ClientError, ConnectionConfig, TlsTrust, Token};

use super::Leave;
use super::console::{Console, Input};
use crate::cmd::login;
use crate::connection::{DEFAULT_SERVER, Resolved};

/// How long the check whether the server wants a token may take.
const CHECK_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// How many times a refused token is asked for again.
const TOKEN_TRIES: usize = 3;

/// The connection settings the menu runs with: `resolved`, completed by
/// asking. `Err(Exit)` when the input ends (or Ctrl-D) while asking.
pub(super) fn complete(
    console: &mut Console,
    resolved: Resolved,
    compute_server: Option<&str>,
) -> Result<ConnectionConfig, Leave> {
    let Resolved {
        mut config,
        server_given,
        trust_given,
        token_given,
    } = resolved;
    let mut asked = false;
    if !server_given {
        let typed = ask(
            console,
            &format!("Server address (empty: {DEFAULT_SERVER}): "),
        )?;
        if !typed.is_empty() {
            config = ConnectionConfig::new(&login::url(&typed), config.tls, config.token)
                .with_compute(compute_server);
        }
        asked = true;
    }
    if config.is_tls() && !trust_given && !config.tls.is_explicit() {
        let url = config.endpoint.clone();
        match console.interruptible(config.fetch_fingerprint()) {
            None => return Err(Leave::Exit),
            Some(Err(e)) => report(&e),
            Some(Ok(seen)) => {
                println!("{}", login::first_contact(&url, &seen));
                if login::is_yes(&ask(console, "Trust it? [y/N] ")?) {
                    config.tls = TlsTrust::Pinned(seen);
                    asked = true;
                } else {
                    println!(
                        "Not trusted: actions will fail until you trust it (--fingerprint, --ca or `distribusync login`)."
                    );
                }
            }
        }
    }
    if !token_given {
        for _ in 0..TOKEN_TRIES {
            let check = tokio::time::timeout(CHECK_TIMEOUT, login::check(&config));
            match console.interruptible(check) {
                None => return Err(Leave::Exit),
                Some(Ok(Err(ClientError::Unauthenticated(_)))) => {}
                // Served, not reachable or hung now: the menu's header
                // shows which.
                Some(_) => break,
            }
            println!("The server at {} wants an access token.", config.endpoint);
            match ask_token(console)? {
                Some(t) => {
                    config.token = Some(t);
                    asked = true;
                }
                None => break,
            }
        }
    }
    if asked {
        offer_to_save(console, &config)?;
    }
    Ok(config)
}

/// Asks for a profile name and saves the settings under it (an empty
/// answer saves nothing).
fn offer_to_save(console: &mut Console, config: &ConnectionConfig) -> Result<(), Leave> {
    let name = ask(
        console,
        "Save these settings as a profile? Name (e.g. default; empty: do not save): ",
    )?;
    if name.is_empty() {
        return Ok(());
    }
    match login::save(&name, config) {
        Ok(path) => println!(
            "Saved profile {name:?} in {} (use it with --profile {name}).",
            path.display()
        ),
        Err(e) => eprintln!("distribusync: menu: {e:#}"),
    }
    Ok(())
}

/// The token, read without echo at a terminal, as a line from a script.
fn ask_token(console: &mut Console) -> Result<Option<Token>, Leave> {
    loop {
        let typed = if console.is_terminal() {
            match login::ask_token() {
                Ok(t) => return Ok(t),
                Err(e) => {
                    eprintln!("distribusync: menu: {e:#}");
                    continue;
                }
            }
        } else {
            ask(console, "Token (empty if the server needs none): ")?
        };
        if typed.is_empty() {
            return Ok(None);
        }
        match Token::new(&typed) {
            Ok(t) => return Ok(Some(t)),
            Err(e) => eprintln!("distribusync: menu: {e}"),
        }
    }
}

fn ask(console: &mut Console, prompt: &str) -> Result<String, Leave> {
    match console.read(prompt) {
        Input::Line(l) => Ok(l.trim().to_owned()),
        Input::Interrupted | Input::Eof => Err(Leave::Exit),
    }
}

fn report(e: &ClientError) {
    eprintln!("distribusync: menu: {e}");
}
