//! Menu items 2, Compute, and 3, Async: [`ComputeClient`](distribusync_client::ComputeClient)
//! `add`/`sort` (wait for the answer) and `add_async_with`/`sort_async_with`
//! (the answer is printed by the callback when the server pushes it).

use std::sync::atomic::Ordering;

use distribusync_client::compute::{ComputeError, JobOutput};
use distribusync_core::compute::{Number, Numbers, Order, parse_numbers};

use super::{Leave, Menu, report};

/// How the answer comes back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Wait {
    /// Wait at the prompt for it.
    Answer,
    /// Go on; a callback prints it when it arrives.
    Callback,
}

pub(super) fn menu(m: &mut Menu, wait: Wait) -> Result<(), Leave> {
    let title = match wait {
        Wait::Answer => "Compute",
        Wait::Callback => "Async",
    };
    loop {
        let choice = m.submenu(title, &["Add numbers", "Sort numbers"])?;
        let Some(numbers) = ask_numbers(m)? else {
            continue;
        };
        let job = if choice == 1 {
            Job::Add
        } else {
            let answer = m.ask("largest first? [y/N]: ")?;
            Job::Sort(if answer.eq_ignore_ascii_case("y") {
                Order::Descending
            } else {
                Order::Ascending
            })
        };
        match wait {
            Wait::Answer => run(m, job, numbers),
            Wait::Callback => submit(m, job, numbers),
        }
    }
}

#[derive(Debug, Clone, Copy)]
enum Job {
    Add,
    Sort(Order),
}

impl Job {
    fn name(self) -> &'static str {
        match self {
            Job::Add => "add",
            Job::Sort(_) => "sort",
        }
    }
}

/// Reads a list of numbers with the same parser as `sort --file`; an
/// invalid list is reported and gives `None`.
fn ask_numbers(m: &mut Menu) -> Result<Option<Numbers>, Leave> {
    let text = m.ask("numbers (separated by spaces or commas): ")?;
    match parse_numbers(&text) {
        Ok(n) if n.is_empty() => {
            println!("no numbers given");
            Ok(None)
        }
        Ok(n) => Ok(Some(n)),
        Err(e) => {
            report("numbers", e);
            Ok(None)
        }
    }
}

fn run(m: &mut Menu, job: Job, numbers: Numbers) {
    let client = m.compute.clone();
    let result = m.act(job.name(), async move {
        match job {
            Job::Add => client.add(numbers).await.map(JobOutput::Sum),
            Job::Sort(order) => client.sort(numbers, order).await.map(JobOutput::Sorted),
        }
    });
    match result {
        None => {}
        Some(Ok(out)) => println!("{}", show(&out)),
        Some(Err(e)) => report(job.name(), e),
    }
}

fn submit(m: &mut Menu, job: Job, numbers: Numbers) {
    let client = m.compute.clone();
    let printer = m.printer.clone();
    let pending = m.pending_jobs.clone();
    pending.fetch_add(1, Ordering::SeqCst);
    let callback = {
        let pending = pending.clone();
        move |id: String, result: Result<JobOutput, ComputeError>| {
            printer.line(&match result {
                Ok(out) => format!("[job {id}] {} done: {}", job.name(), show(&out)),
                Err(e) => format!("[job {id}] {} failed: {e}", job.name()),
            });
            // Only once it is printed: leaving waits for this count.
            pending.fetch_sub(1, Ordering::SeqCst);
        }
    };
    let submitted = m.act(job.name(), async move {
        let handle = match job {
            Job::Add => client.add_async(numbers).await?,
            Job::Sort(order) => client.sort_async(numbers, order).await?,
        };
        let id = handle.id().to_owned();
        // The acknowledgment prints before the callback is registered, so
        // an answer that comes back at once never shows up before it.
        println!("accepted job {id}; the answer prints here when it arrives");
        handle.on_result(move |r| callback(id, r));
        Ok::<_, ComputeError>(())
    });
    match submitted {
        Some(Ok(())) => {}
        Some(Err(e)) => {
            pending.fetch_sub(1, Ordering::SeqCst);
            report(job.name(), e);
        }
        None => {
            pending.fetch_sub(1, Ordering::SeqCst);
        }
    }
}

/// One line: `sum: 6` or `sorted: 1 2 3`.
fn show(output: &JobOutput) -> String {
    match output {
        JobOutput::Sum(n) => format!("sum: {n}"),
        JobOutput::Sorted(Numbers::Ints(v)) => {
            format!("sorted: {}", join(v.iter().copied().map(Number::Int)))
        }
        JobOutput::Sorted(Numbers::Floats(v)) => {
            format!("sorted: {}", join(v.iter().copied().map(Number::Float)))
        }
    }
}

fn join(numbers: impl Iterator<Item = Number>) -> String {
    numbers.map(|n| n.to_string()).collect::<Vec<_>>().join(" ")
}
