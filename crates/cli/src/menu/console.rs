//! Where the menu reads its input and prints what arrives in the background.
//!
//! In a terminal (stdin and stdout both are one) lines are read with
//! rustyline, and background messages (async results) go through its
//! external printer, which clears the prompt, prints the message and
//! redraws the prompt with whatever the person had typed. Otherwise (a
//! script drives the menu) prompts and messages are plain text: a message
//! that arrives while a prompt is showing starts on a fresh line and the
//! prompt is printed again after it; lines are read ahead by a thread, so
//! a script's input is never lost and Ctrl-C can interrupt a prompt.
//!
//! Ctrl-C (SIGINT) never kills the menu: at a prompt it is an answer
//! ([`Input::Interrupted`]), during an action it cancels the action
//! ([`Console::interruptible`]).

use std::io::{BufRead, IsTerminal, Write};
use std::sync::{Arc, Mutex};

use tokio::runtime::Handle;
use tokio::signal::unix::{Signal, SignalKind, signal};
use tokio::sync::mpsc;

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
    rt: Handle,
    /// SIGINT, caught for as long as the menu runs.
    interrupts: Option<Signal>,
    /// Lines pasted into one prompt, answering the prompts after it.
    queued: std::collections::VecDeque<String>,
}

/// One line read by the plain-mode reader thread.
type PlainLine = std::io::Result<Vec<u8>>;

enum ConsoleKind {
    Term(Box<rustyline::DefaultEditor>),
    Plain(mpsc::UnboundedReceiver<PlainLine>),
}

/// Longest line the menu takes; a longer one is refused whole (a list of
/// numbers that big belongs in a file: `distribusync sort --file`).
pub const MAX_LINE: usize = 4 << 20;

/// Reads stdin line by line into `tx` until it ends (or the menu goes). A
/// line longer than [`MAX_LINE`] is passed on cut at `MAX_LINE + 1` bytes
/// (to be refused), and the rest of it skipped without being held.
fn read_lines(tx: mpsc::UnboundedSender<PlainLine>) {
    let mut stdin = std::io::stdin().lock();
    loop {
        let mut line = Vec::new();
        let read =
            std::io::Read::take(&mut stdin, MAX_LINE as u64 + 1).read_until(b'\n', &mut line);
        match read {
            Ok(0) => return,
            Ok(_) => {
                let cut = line.len() > MAX_LINE && line.last() != Some(&b'\n');
                if cut && let Err(e) = skip_line(&mut stdin) {
                    let _ = tx.send(Err(e));
                    return;
                }
                if tx.send(Ok(line)).is_err() {
                    return;
                }
            }
            Err(e) => {
                let _ = tx.send(Err(e));
                return;
            }
        }
    }
}

/// Consumes input up to and including the next newline.
fn skip_line(input: &mut impl BufRead) -> std::io::Result<()> {
    loop {
        let buf = input.fill_buf()?;
        if buf.is_empty() {
            return Ok(());
        }
        match buf.iter().position(|&b| b == b'\n') {
            Some(i) => {
                input.consume(i + 1);
                return Ok(());
            }
            None => {
                let n = buf.len();
                input.consume(n);
            }
        }
    }
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
    pub fn open(rt: Handle) -> Self {
        let interrupts = {
            let _entered = rt.enter();
            signal(SignalKind::interrupt()).ok()
        };
        if std::io::stdin().is_terminal()
            && std::io::stdout().is_terminal()
            && let Ok(mut editor) = rustyline::DefaultEditor::new()
            && let Ok(printer) = editor.create_external_printer()
        {
            let printer: TermPrinter = Box::new(printer);
            return Self {
                kind: ConsoleKind::Term(Box::new(editor)),
                printer: Printer(PrinterKind::Term(Arc::new(Mutex::new(printer)))),
                rt,
                interrupts,
                queued: Default::default(),
            };
        }
        let (tx, rx) = mpsc::unbounded_channel();
        std::thread::spawn(move || read_lines(tx));
        Self {
            kind: ConsoleKind::Plain(rx),
            printer: Printer(PrinterKind::Plain(Arc::default())),
            rt,
            interrupts,
            queued: Default::default(),
        }
    }

    /// Runs `action` on the runtime until it finishes, or until Ctrl-C
    /// (then `None`: the action is dropped, which cancels it).
    pub fn interruptible<F: std::future::Future>(&mut self, action: F) -> Option<F::Output> {
        let Some(interrupts) = self.interrupts.as_mut() else {
            return Some(self.rt.block_on(action));
        };
        // A Ctrl-C from before this action does not cancel it.
        drain(interrupts);
        let done = self.rt.block_on(async {
            tokio::select! {
                done = action => Some(done),
                Some(()) = interrupts.recv() => None,
            }
        });
        if done.is_none() {
            // The rest of a paste was meant for what Ctrl-C just stopped.
            self.queued.clear();
        }
        done
    }

    /// True in a terminal (progress bars, line editing).
    pub fn is_terminal(&self) -> bool {
        matches!(self.kind, ConsoleKind::Term(_))
    }

    pub fn printer(&self) -> Printer {
        self.printer.clone()
    }

    /// Shows `prompt` and reads one line (without its ending). A line that
    /// is not UTF-8 or is longer than [`MAX_LINE`] is refused and asked for
    /// again.
    ///
    /// Several lines pasted at one prompt (a terminal pastes them as one)
    /// answer it and the prompts that follow, one line each, as typed.
    pub fn read(&mut self, prompt: &str) -> Input {
        if let Some(line) = self.queued.pop_front() {
            println!("{prompt}{line}");
            return Input::Line(line);
        }
        loop {
            match self.read_once(prompt) {
                Ok(input) => return input,
                Err(why) => eprintln!("distribusync: menu: {why}; try again"),
            }
        }
    }

    fn read_once(&mut self, prompt: &str) -> Result<Input, String> {
        match &mut self.kind {
            ConsoleKind::Term(editor) => match editor.readline(prompt) {
                Ok(line) if line.len() > MAX_LINE => Err(too_long()),
                Ok(line) => {
                    if !line.trim().is_empty() && line.len() < 4096 {
                        let _ = editor.add_history_entry(line.as_str());
                    }
                    let line = line.replace("\r\n", "\n").replace('\r', "\n");
                    let mut lines = line.split('\n').map(str::to_owned);
                    let first = lines.next().unwrap_or_default();
                    self.queued.extend(lines);
                    if self.queued.back().is_some_and(String::is_empty) {
                        self.queued.pop_back();
                    }
                    Ok(Input::Line(first))
                }
                Err(rustyline::error::ReadlineError::Interrupted) => {
                    self.queued.clear();
                    Ok(Input::Interrupted)
                }
                Err(rustyline::error::ReadlineError::Eof) => Ok(Input::Eof),
                Err(rustyline::error::ReadlineError::Io(e))
                    if e.kind() == std::io::ErrorKind::InvalidData =>
                {
                    Err("that line is not valid UTF-8".into())
                }
                Err(e) => {
                    eprintln!("distribusync: menu: cannot read the terminal: {e}");
                    Ok(Input::Eof)
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
                let line = match self.interrupts.as_mut() {
                    Some(interrupts) => {
                        drain(interrupts);
                        self.rt.block_on(async {
                            tokio::select! {
                                line = lines.recv() => Some(line),
                                Some(()) = interrupts.recv() => None,
                            }
                        })
                    }
                    None => Some(self.rt.block_on(lines.recv())),
                };
                {
                    let mut showing = showing.lock().unwrap_or_else(|e| e.into_inner());
                    *showing = None;
                    // Nobody's Enter echoed on stdout: end the prompt's line
                    // so every output line is whole.
                    println!();
                }
                match line {
                    None => Ok(Input::Interrupted),
                    Some(None) => Ok(Input::Eof),
                    Some(Some(Ok(bytes))) if bytes.trim_ascii_end().len() > MAX_LINE => {
                        Err(too_long())
                    }
                    Some(Some(Ok(bytes))) => match String::from_utf8(bytes) {
                        Ok(line) => Ok(Input::Line(line.trim_end_matches(['\n', '\r']).to_owned())),
                        Err(_) => Err("that line is not valid UTF-8".into()),
                    },
                    Some(Some(Err(e))) => {
                        eprintln!("distribusync: menu: cannot read standard input: {e}");
                        Ok(Input::Eof)
                    }
                }
            }
        }
    }
}

fn too_long() -> String {
    format!(
        "that line is longer than the {} MiB the menu takes (for a long list of numbers, \
         use `distribusync sort --file`)",
        MAX_LINE >> 20
    )
}

/// Forgets a Ctrl-C that is waiting to be noticed.
fn drain(interrupts: &mut Signal) {
    use futures::FutureExt;
    while let Some(Some(())) = interrupts.recv().now_or_never() {}
}
