//! `chaos-user experiment`: scenario files run end to end.

use anyhow::Result;

use super::{ExperimentCommand, ExperimentRunArgs, report_leftovers, signals};
use crate::experiment::{self, scenario};

pub(super) fn main(command: ExperimentCommand) -> Result<i32> {
    match command {
        ExperimentCommand::Validate { file } => {
            let s = scenario::load(&file)?;
            let faults: usize = s.phases.iter().map(|p| p.faults.len()).sum();
            out!(
                "{}: valid: {} phase(s), {faults} fault(s), {} probe(s), {} verifier(s)",
                file.display(),
                s.phases.len(),
                s.probes.len(),
                s.verifiers.len()
            );
            Ok(0)
        }
        ExperimentCommand::Run(args) => run(&args),
    }
}

/// Watches the signals that end an experiment early, tells the phases as they start, and
/// keeps a progress line on a terminal.
struct Observer {
    signals: tokio::sync::mpsc::UnboundedReceiver<signals::Received>,
    phases: usize,
    /// Whether stderr is a terminal, and whether a progress line is on it now.
    terminal: bool,
    shown: bool,
}

impl Observer {
    /// Takes the progress line off the terminal, before other output.
    fn clear(&mut self) {
        if self.shown {
            use std::io::Write as _;
            let mut err = std::io::stderr().lock();
            let _w = write!(err, "\r\x1b[K");
            let _f = err.flush();
            self.shown = false;
        }
    }
}

impl experiment::Observer for Observer {
    fn interrupted(&mut self) -> bool {
        self.signals.try_recv().is_ok()
    }

    fn phase_started(&mut self, index: usize, phase: &scenario::Phase) {
        self.clear();
        let faults: Vec<&str> = phase.faults.iter().map(|(w, _)| w.as_str()).collect();
        note!(
            "chaos-user: phase {}/{} `{}` for {}: {}",
            index + 1,
            self.phases,
            phase.name,
            humantime::format_duration(phase.duration),
            if faults.is_empty() {
                "no faults".to_string()
            } else {
                faults.join(" ")
            }
        );
    }

    fn check(&mut self, faults: &[crate::spec::FaultSpec]) -> Result<()> {
        super::check_paths(faults)?;
        // The kernel's word on the programs the phase needs, before anything starts: a fault
        // this kernel refuses stops the run here, not in the middle.
        if !faults.is_empty() {
            drop(crate::session::Plan::dry(faults)?.load()?);
        }
        Ok(())
    }

    fn progress(&mut self, line: &str) {
        if !self.terminal {
            return;
        }
        use std::io::Write as _;
        let mut err = std::io::stderr().lock();
        // One line, cut to the terminal's width, rewritten in place.
        let line: String = line
            .chars()
            .take(terminal_width().saturating_sub(3))
            .collect();
        let _w = write!(err, "\r\x1b[K  {line}");
        let _f = err.flush();
        self.shown = true;
    }
}

fn run(args: &ExperimentRunArgs) -> Result<i32> {
    let scenario = scenario::load(&args.file)?;
    let faults: Vec<_> = scenario
        .phases
        .iter()
        .flat_map(|p| p.faults.iter().map(|(_, f)| f.clone()))
        .collect();

    // A report that cannot be written is known now, not after the whole run.
    for (option, path) in [
        ("--json", &args.json),
        ("--junit", &args.junit),
        ("--html", &args.html),
    ] {
        if let Some(path) = path {
            super::check_writable_as(option, path)?;
        }
    }
    let to_stdout =
        |p: &Option<std::path::PathBuf>| p.as_deref().is_some_and(|p| p.as_os_str() == "-");
    if [&args.json, &args.junit, &args.html]
        .into_iter()
        .filter(|p| to_stdout(p))
        .count()
        > 1
    {
        return Err(crate::error::UsageError {
            message: "only one of --json, --junit and --html can go to stdout (`-`)".into(),
            hint: Some("give files for the others".into()),
        }
        .into());
    }
    report_leftovers();
    if !faults.is_empty() {
        crate::loader::check_ready()?;
    }
    let metrics = match args.metrics_listen {
        Some(addr) => {
            let metrics = experiment::metrics::Metrics::new();
            let server = experiment::metrics::Server::start(addr, metrics.clone())?;
            note!("chaos-user: metrics on http://{}/metrics", server.addr);
            Some((metrics, server))
        }
        None => None,
    };
    use std::io::IsTerminal as _;
    let mut observer = Observer {
        signals: signals::watch()?,
        phases: scenario.phases.len(),
        terminal: std::io::stderr().is_terminal(),
        shown: false,
    };
    note!(
        "chaos-user: experiment `{}`: {} phase(s), {} probe(s)",
        scenario.name,
        scenario.phases.len(),
        scenario.probes.len()
    );
    let record = experiment::run(&scenario, &mut observer, metrics.as_ref().map(|(m, _)| m));
    observer.clear();
    let record = record?;
    // The summary goes to stderr when a report takes stdout.
    if [&args.json, &args.junit, &args.html]
        .into_iter()
        .any(to_stdout)
    {
        note!("{}", record.summary().trim_end());
    } else {
        out!("{}", record.summary().trim_end());
    }
    if let Some(path) = &args.json {
        record.write_json(path)?;
    }
    if let Some(path) = &args.junit {
        record.write_junit(path)?;
    }
    if let Some(path) = &args.html {
        record.write_html(path)?;
    }
    Ok(if record.passed { 0 } else { 1 })
}

/// The width of the terminal on stderr, 80 when unknown.
fn terminal_width() -> usize {
    // SAFETY: TIOCGWINSZ fills in the winsize it is given, and nothing else.
    unsafe {
        let mut size: libc::winsize = std::mem::zeroed();
        if libc::ioctl(libc::STDERR_FILENO, libc::TIOCGWINSZ, &mut size) == 0 && size.ws_col > 0 {
            usize::from(size.ws_col)
        } else {
            80
        }
    }
}
