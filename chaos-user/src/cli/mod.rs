//! The command line: argument definitions, dispatch, and the mapping of failures to the exit
#![allow(
    clippy::print_stdout,
    reason = "the command line is what prints to stdout"
)]
//! status table.

mod doctor;
mod inject;
mod recover;
mod run;
mod signals;

use std::{ffi::OsString, path::PathBuf};

use clap::{Args, Parser, Subcommand};

use crate::{
    error::classify,
    spec::{FaultSpec, parse_duration, parse_fault},
};

/// Makes the network, the disk or the kernel say no to one cgroup, with eBPF.
#[derive(Debug, Parser)]
#[command(
    name = "chaos-user",
    version,
    propagate_version = true,
    max_term_width = 100
)]
#[command(after_help = "\
Fault specs: KIND:key=value,key=value  (one --fault per fault)
  loss   packets vanish silently, like on a lossy wire
         p=FRACTION (0..1, required)  dir=egress|ingress|both (both)
         proto=tcp|udp|icmp|any  src=/dst=ADDRESS[/PREFIX]  sport=/dport=PORT[-PORT]

Exit status: 0 done, 2 bad input, 3 the environment refused (privileges, kernel, a vanished
target). `run` passes on its command's status (128+N for signal N) and uses 125 for its own
failures, 126 when the command cannot be executed, 127 when it is not found.

Set RUST_LOG=info (or debug) for more detail.")]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Inject faults into an existing cgroup until the duration ends or Ctrl-C.
    #[command(after_help = "\
Examples:
  sudo chaos-user inject --cgroup /system.slice/api.service --fault loss:p=0.2 --duration 30s
  sudo chaos-user inject --cgroup mygroup --fault loss:p=1,proto=udp,dport=53 \\
       --fault loss:p=0.05,dir=egress --json -")]
    Inject(InjectArgs),
    /// Start a command in a fresh cgroup and inject faults into it until it exits.
    #[command(after_help = "\
Examples:
  sudo chaos-user run --fault loss:p=0.3,proto=icmp -- ping -c 20 127.0.0.1
  sudo chaos-user run --fault loss:p=0.05,dir=egress --duration 10s --json out.json -- ./integration-tests

The command keeps running when --duration ends first; only the faults are removed. Ctrl-C
reaches the command; the summary goes to stderr.")]
    Run(RunArgs),
    /// Undo what a killed session left behind (cgroups it created), and say what was done.
    #[command(after_help = "\
Example:
  sudo chaos-user recover

Running it again is harmless. Exit status 3 when something could not be undone yet (for example
a cgroup whose processes are still running).")]
    Recover,
    /// Show what this kernel offers: version, BTF, cgroup2, lockdown, LSMs, and which of
    /// chaos-user's programs it loads.
    #[command(after_help = "\
Examples:
  sudo chaos-user doctor
  sudo chaos-user doctor --json -")]
    Doctor(DoctorArgs),
}

#[derive(Debug, Args)]
struct FaultArgs {
    /// A fault, as KIND:key=value,... (repeat for several; rules of one kind apply in order,
    /// the first matching one deciding).
    #[arg(long = "fault", value_name = "SPEC", required = true)]
    faults: Vec<String>,

    /// How long to inject (with a unit: 500ms, 30s, 5m). Without it, until Ctrl-C (inject)
    /// or until the command exits (run).
    #[arg(long, value_name = "DURATION")]
    duration: Option<String>,

    /// Write a JSON report to PATH (`-` for stdout, except under run).
    #[arg(long, value_name = "PATH")]
    json: Option<PathBuf>,
}

impl FaultArgs {
    fn parse(&self) -> anyhow::Result<(Vec<FaultSpec>, Option<std::time::Duration>)> {
        let faults = self
            .faults
            .iter()
            .map(|text| {
                parse_fault(text)
                    .map_err(|e| anyhow::Error::new(e).context(format!("--fault {text}")))
            })
            .collect::<anyhow::Result<Vec<_>>>()?;
        let duration = self
            .duration
            .as_deref()
            .map(|d| parse_duration("--duration", d))
            .transpose()?;
        Ok((faults, duration))
    }
}

#[derive(Debug, Args)]
struct InjectArgs {
    /// The target: a cgroup2 directory, absolute or relative to the cgroup2 mount. Its
    /// descendant cgroups are targeted too.
    #[arg(long, value_name = "PATH")]
    cgroup: String,

    #[command(flatten)]
    faults: FaultArgs,

    /// Load and verify the programs and print the plan, attaching nothing.
    #[arg(long)]
    dry_run: bool,

    /// Allow the root cgroup, chaos-user's own cgroup or its ancestors, and PID 1's cgroup.
    #[arg(long)]
    force: bool,
}

#[derive(Debug, Args)]
struct RunArgs {
    #[command(flatten)]
    faults: FaultArgs,

    /// The command and its arguments.
    #[arg(last = true, required = true, value_name = "CMD")]
    command: Vec<OsString>,
}

#[derive(Debug, Args)]
struct DoctorArgs {
    /// Write the findings as JSON to PATH (`-` for stdout).
    #[arg(long, value_name = "PATH")]
    json: Option<PathBuf>,
}

/// Runs the command line and returns the exit status.
pub fn main() -> i32 {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("warn"))
        .format_timestamp(None)
        .init();
    let args: Vec<OsString> = std::env::args_os().collect();
    let under_run = args.get(1).is_some_and(|a| a == "run");
    let cli = match Cli::try_parse_from(&args) {
        Ok(cli) => cli,
        Err(e) if !e.use_stderr() => {
            // --help and --version.
            return if e.print().is_ok() { 0 } else { 2 };
        }
        Err(e) => {
            let rendered = e.render().to_string();
            let first = rendered.lines().next().unwrap_or("bad arguments");
            let first = first.strip_prefix("error: ").unwrap_or(first);
            eprintln!("chaos-user: error: {first} (see --help)");
            return if under_run { 125 } else { 2 };
        }
    };
    let result = match cli.command {
        Command::Inject(a) => inject::main(a),
        Command::Run(a) => run::main(a),
        Command::Recover => recover::main(),
        Command::Doctor(a) => doctor::main(a),
    };
    match result {
        Ok(status) => status,
        Err(err) => {
            let (class, hint) = classify(&err);
            print_error(&err, hint.as_deref());
            if under_run { 125 } else { class.exit_status() }
        }
    }
}

/// Prints the whole chain on one line, the hint after it; a verifier log follows on its own
/// lines because it cannot be shortened without losing the reason.
fn print_error(err: &anyhow::Error, hint: Option<&str>) {
    let chain: Vec<String> = err.chain().map(|c| c.to_string()).collect();
    let mut line = chain.join(": ");
    if let Some(hint) = hint {
        line += &format!(" ({hint})");
    }
    eprintln!("chaos-user: error: {line}");
}

/// Warns about what dead sessions left behind; called at every start.
fn report_leftovers() {
    match crate::undo::leftovers() {
        Ok(found) => {
            for left in found {
                for entry in &left.entries {
                    eprintln!(
                        "chaos-user: warning: a session that died (pid {}) left {entry}; \
                         `chaos-user recover` undoes it",
                        left.pid
                    );
                }
            }
        }
        Err(e) => log::warn!("cannot read the undo logs: {e:#}"),
    }
}
