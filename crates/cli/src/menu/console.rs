//! Where the menu reads its input and prints what arrives in the background.
//!
//! In a terminal (stdin and stdout both are one) lines are read with
//! rustyline, and background messages (async results) go through its
//! external printer, which clears the prompt, prints the message and
//! redraws the prompt with whatever the person had typed. Otherwise (a
//! script drives the menu) prompts and messages are plain text: a message
//! that arrives while a prompt is showing starts on a fresh line and the
//! prompt is printed again after it.

use std::io::{BufRead, IsTerminal, Write};
use std::sync::{Arc, Mutex};

/// What one read at a prompt gave.
#[derive(Debug)]
pub enum Input {
    Line(String),
    /// Ctrl-C at the prompt.
    Interrupted,
    /// Ctrl-D, or the end of standard input.
    Eof,
}

type TermPrinter = Box<dyn rustyline::ExternalPrinter + Send>;

/// Prints whole lines from any thread without garbling the prompt. Cheap
/// to clone.
#[derive(Clone)]
pub struct Printer(PrinterKind);

#[derive(Clone)]
enum PrinterKind {
    // std Mutex: held only while one message is written, never across .await.
    Term(Arc<Mutex<TermPrinter>>),
    /// The prompt now showing, if any (plain mode).
    Plain(Arc<Mutex<Option<String>>>),
}

impl std::fmt::Debug for Printer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self.0 {
            PrinterKind::Term(_) => "Printer(terminal)",
            PrinterKind::Plain(_) => "Printer(plain)",
        })
    }
}

impl Printer {
    /// Prints `msg` as its own line(s).
    pub fn line(&self, msg: &str) {
        match &self.0 {
            PrinterKind::Term(p) => {
                let mut p = p.lock().unwrap_or_else(|e| e.into_inner());
                // Outside a readline the printer writes straight to the
                // terminal, so the line needs its own ending.
                if p.print(format!("{msg}\n")).is_err() {
                    println!("{msg}");
                }
            }
            PrinterKind::Plain(prompt) => {
                let prompt = prompt.lock().unwrap_or_else(|e| e.into_inner());
                let mut out = std::io::stdout().lock();
                let _ = match prompt.as_deref() {
                    Some(p) => write!(out, "\n{msg}\n{p}"),
                    None => writeln!(out, "{msg}"),
                };
                let _ = out.flush();
            }
        }
    }
}

/// The menu's input.
pub struct Console {
    kind: ConsoleKind,
    printer: Printer,
}

enum ConsoleKind {
    Term(Box<rustyline::DefaultEditor>),
    Plain(std::io::Lines<std::io::StdinLock<'static>>),
}

impl std::fmt::Debug for Console {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Console")
            .field("terminal", &self.is_terminal())
            .finish()
    }
}

impl Console {
    /// A line editor when stdin and stdout are a terminal, plain lines
    /// otherwise.
    pub fn open() -> Self {
        if std::io::stdin().is_terminal()
            && std::io::stdout().is_terminal()
            && let Ok(mut editor) = rustyline::DefaultEditor::new()
            && let Ok(printer) = editor.create_external_printer()
        {
            let printer: TermPrinter = Box::new(printer);
            return Self {
                kind: ConsoleKind::Term(Box::new(editor)),
                printer: Printer(PrinterKind::Term(Arc::new(Mutex::new(printer)))),
            };
        }
        Self {
            kind: ConsoleKind::Plain(std::io::stdin().lock().lines()),
            printer: Printer(PrinterKind::Plain(Arc::default())),
        }
    }

    /// True in a terminal (progress bars, line editing).
    pub fn is_terminal(&self) -> bool {
        matches!(self.kind, ConsoleKind::Term(_))
    }

    pub fn printer(&self) -> Printer {
        self.printer.clone()
    }

    /// Shows `prompt` and reads one line (without its ending).
    pub fn read(&mut self, prompt: &str) -> Input {
        match &mut self.kind {
            ConsoleKind::Term(editor) => match editor.readline(prompt) {
                Ok(line) => {
                    if !line.trim().is_empty() {
                        let _ = editor.add_history_entry(line.as_str());
                    }
                    Input::Line(line)
                }
                Err(rustyline::error::ReadlineError::Interrupted) => Input::Interrupted,
                Err(rustyline::error::ReadlineError::Eof) => Input::Eof,
                Err(e) => {
                    eprintln!("distribusync: menu: cannot read the terminal: {e}");
                    Input::Eof
                }
            },
            ConsoleKind::Plain(lines) => {
                let PrinterKind::Plain(showing) = &self.printer.0 else {
                    unreachable!("a plain console has a plain printer")
                };
                {
                    let mut showing = showing.lock().unwrap_or_else(|e| e.into_inner());
                    let mut out = std::io::stdout().lock();
                    let _ = write!(out, "{prompt}");
                    let _ = out.flush();
                    *showing = Some(prompt.to_owned());
                }
                let line = lines.next();
                {
                    let mut showing = showing.lock().unwrap_or_else(|e| e.into_inner());
                    *showing = None;
                    // Nobody's Enter echoed on stdout: end the prompt's line
                    // so every output line is whole.
                    println!();
                }
                match line {
                    Some(Ok(line)) => Input::Line(line.trim_end_matches('\r').to_owned()),
                    Some(Err(e)) => {
                        eprintln!("distribusync: menu: cannot read standard input: {e}");
                        Input::Eof
                    }
                    None => Input::Eof,
                }
            }
        }
    }
}
