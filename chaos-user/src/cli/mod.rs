//! The command line: argument definitions, dispatch, and the mapping of failures to the exit
//! status table.

/// `println!` that does not panic when stdout is closed (`chaos-user doctor | head -1`): the
/// session must still clean up and exit with its own status.
macro_rules! out {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        writeln!(std::io::stdout(), $($arg)*).ok();
    }};
}

/// `eprintln!` that does not panic when stderr is closed.
macro_rules! note {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        writeln!(std::io::stderr(), $($arg)*).ok();
    }};
}

mod doctor;
mod experiment;
mod inject;
mod recover;
mod run;
mod signals;

use std::{ffi::OsString, path::PathBuf};

use clap::{Args, Parser, Subcommand};

use crate::{
    error::{UsageError, classify},
    spec::{FaultSpec, parse_duration, parse_fault},
};

/// Fault injection for one cgroup, with eBPF: the network and its dependencies misbehaving.
#[derive(Debug, Parser)]
#[command(
    name = "chaos-user",
    version,
    propagate_version = true,
    max_term_width = 100
)]
#[command(after_help = "\
Fault specs: KIND:key=value,key=value  (one --fault per fault)
  loss       packets vanish silently, like on a lossy wire
             p=FRACTION  dir=egress|ingress|both (both)
             or model=gilbert enter_bad= leave_bad= [loss_bad=1] [loss_good=0] (bursts)
  delay      egress packets leave late (needs the fq qdisc)   time=100ms [jitter=10ms]
  bandwidth  egress capped by a token bucket   rate=1mbit|200kbps [burst=64KiB]
  corrupt    payload bytes flipped, checksum fixed   p=FRACTION [bytes=1..64]
  duplicate  egress packets sent twice   p=FRACTION
  connect    connect() fails or goes elsewhere   errno=ECONNREFUSED|redirect=ADDR:PORT [p=1]
             [proto=] [dst=] [dport=]
  reset      established TCP connections aborted   [interval=2s] [src= dst= sport= dport=]
  dns        answers replaced   answer=nxdomain|servfail|refused|timeout|ADDRESS [name=GLOB] [p=1]
  xdp-drop   packets arriving on an interface dropped (no --cgroup)   dev=IFACE p=FRACTION
  pause      the whole cgroup frozen   for=200ms interval=2s [random=true]
  crash      a signal on the Nth call of a syscall   syscall=NAME nth=N|every=N|p=FRACTION
             [signal=SIGKILL] [path=PREFIX]
  file       calls on files fail   [op=open|read|write|create|unlink|any, or a+b]
             [errno=EIO] [path=PREFIX] [nth=N|every=N|p=FRACTION]
  nospace    creating and writing fail with ENOSPC, as on a full disk   [path=PREFIX]
             [nth=|every=|p=]
  fail       a syscall fails at its LSM hook   syscall=fork|mmap|rename|bind|... errno=NAME
             [path=PREFIX] [nth=|every=|p=]
  fd-limit   new files, pipes and sockets fail with EMFILE (sockets only without BPF
             trampolines)   [p=1]
  disk-fill  the filesystem of a path filled up (no --cgroup)   path=/DIR free=100MiB|use=95%
  page-cache cached pages of the files under a path dropped (no --cgroup)   path=PREFIX
             [interval=1s]
  cpu-throttle  the cgroup capped at a share of one CPU (cpu.max)   quota=20%
  cpu-hog    stressors in the cgroup, each busy a share of one CPU   [workers=1] [load=100%]
  memory-pressure  a stressor in the cgroup holding memory, or a lower limit (memory.max)
             size=512MiB | limit=256MiB
  memory-leak  a stressor in the cgroup growing   rate=10MiB/s max=1GiB [then=hold|release]
  io-stress  stressors in the cgroup writing with fsync under a path   path=/DIR [workers=1]
             [bytes=64MiB]
  corrupt-file  a file damaged once, its original saved (no --cgroup)   path=FILE
             mode=bitflip [count=1] [seed=N] | truncate to=SIZE | torn|zero-range offset= len=
             (inject --restore --fault corrupt-file:path=FILE puts the original back)
  device     device nodes fail to open   major=N [minor=N] [type=char|block] [access=rwm]
             [errno=EPERM] [p=1]
  path=PREFIX is an absolute directory (or file): what lies under it, however it is named.
  file, nospace, fail, and fd-limit beyond sockets need BPF trampolines (lsm or fmod_ret
  programs); `chaos-user doctor` tells whether this kernel runs them.
  Packet filters: proto=tcp|udp|icmp|any  src=/dst=ADDRESS[/PREFIX]  sport=/dport=PORT[-PORT]
  flows=FRACTION picks a stable share of flows instead of a share of packets.

Exit status: 0 done, 2 bad input, 3 the environment refused (privileges, kernel, a vanished
target, a target another session holds). `run` passes on its command's status (128+N for signal
N) and uses 125 in place of every status of its own (2 and 3 above), 126 when the command cannot
be executed, 127 when it is not found.

The summary goes to stdout (stderr under `run` and with --json -). Set RUST_LOG=info (or debug)
for more detail.")]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Inject faults into an existing cgroup (or on an interface or a path) until the duration
    /// ends or Ctrl-C.
    #[command(after_help = "\
Examples:
  sudo chaos-user inject --cgroup /system.slice/api.service --fault loss:p=0.2 --duration 30s
  sudo chaos-user inject --cgroup mygroup --fault connect:errno=ECONNREFUSED,dport=5432 \\
       --fault dns:name=*.example.com,answer=servfail --json -
  sudo chaos-user inject --fault xdp-drop:dev=eth0,p=0.1,dport=8080 --duration 1m")]
    Inject(InjectArgs),
    /// Start a command in a fresh cgroup and inject faults into it until it exits.
    #[command(after_help = "\
Examples:
  sudo chaos-user run --fault loss:p=0.3,proto=icmp -- ping -c 20 127.0.0.1
  sudo chaos-user run --fault loss:p=0.05,dir=egress --duration 10s --json out.json \\
       -- ./integration-tests

The command keeps running when --duration ends first; only the faults are removed. Ctrl-C
reaches the command; the summary goes to stderr.")]
    Run(RunArgs),
    /// Undo what a killed session left behind (its cgroup, tc filters and qdiscs, fq qdiscs,
    /// TCP pacing caps, a frozen cgroup, a disk-fill file), list saved originals of
    /// corrupt-file, and say what was done.
    #[command(after_help = "\
Example:
  sudo chaos-user recover

Running it again is harmless. Exit status 3 when something could not be undone yet (for example
a cgroup whose processes are still running), or when a log was left alone because it does not
parse or others could have written it: look at it, then remove it.")]
    Recover,
    /// Show what this kernel offers: version, BTF, cgroup2, lockdown, LSMs, and which of
    /// chaos-user's programs it loads.
    #[command(after_help = "\
Examples:
  sudo chaos-user doctor
  sudo chaos-user doctor --json -")]
    Doctor(DoctorArgs),
    /// Run an experiment from a scenario file: probes all along, phases of faults, verifiers
    /// at the end, and a record of the run.
    #[command(subcommand)]
    Experiment(ExperimentCommand),
    /// What a stressor of cpu-hog, memory-pressure or memory-leak runs (started by a session).
    #[command(hide = true)]
    Stress {
        #[arg(num_args = 1.., allow_hyphen_values = true)]
        work: Vec<String>,
    },
    /// What one decision of each kernel program costs, by BPF_PROG_TEST_RUN beside empty
    /// programs of the same types, as JSON (run by `cargo xtask bench`). Attaches nothing.
    #[command(hide = true)]
    BenchDecide {
        /// Runs of each program (1 to 100 000 000).
        #[arg(long, default_value_t = 1_000_000,
              value_parser = clap::value_parser!(u32).range(1..=100_000_000))]
        repeat: u32,
    },
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

/// Refuses, before anything is loaded or changed, paths the faults cannot act on.
fn check_paths(faults: &[FaultSpec]) -> anyhow::Result<()> {
    crate::session::Plan::dry(faults)?.check_paths()?;
    for f in faults {
        match f {
            FaultSpec::DiskFill(d) if !d.path.is_dir() => {
                return Err(UsageError {
                    message: format!("disk-fill: {} is not a directory", d.path.display()),
                    hint: Some("name a directory on the filesystem to fill".into()),
                }
                .into());
            }
            FaultSpec::CorruptFile(c) => crate::corrupt::check(&c.path, &c.mode)?,
            _ => {}
        }
    }
    Ok(())
}

impl FaultArgs {
    fn parse(&self) -> anyhow::Result<(Vec<FaultSpec>, Option<std::time::Duration>)> {
        let faults = self
            .faults
            .iter()
            .map(|text| {
                parse_fault(text).map_err(|e| {
                    anyhow::Error::new(e).context(format!("--fault {}", crate::spec::shown(text)))
                })
            })
            .collect::<anyhow::Result<Vec<_>>>()?;
        let duration = self
            .duration
            .as_deref()
            .map(|d| parse_duration("--duration", d))
            .transpose()?;
        // Faults that parse alone but not together (too many, two interfaces for XDP).
        let plan = crate::session::Plan::dry(&faults)?;
        if let Some(dev) = &plan.needs.xdp {
            if !crate::loader::interfaces().iter().any(|i| &i.name == dev) {
                return Err(UsageError {
                    message: format!("xdp-drop: there is no interface `{dev}` here"),
                    hint: Some("`ip link` lists the interfaces".into()),
                }
                .into());
            }
        }
        if let Some(path) = &self.json {
            check_writable(path)?;
        }
        Ok((faults, duration))
    }
}

/// Fails now, before anything is attached, if the report could not be written at the end.
/// Creates nothing: an existing file must be a writable regular file, a new one must have a
/// writable folder.
fn check_writable(path: &std::path::Path) -> anyhow::Result<()> {
    check_writable_as("--json", path)
}

/// [`check_writable`] for the report file of option `option`.
fn check_writable_as(option: &str, path: &std::path::Path) -> anyhow::Result<()> {
    if path.as_os_str() == "-" {
        return Ok(());
    }
    let refuse = |why: String| -> anyhow::Result<()> {
        Err(UsageError {
            message: format!("{option} {}: {why}", path.display()),
            hint: Some("give a writable file path for the report".into()),
        }
        .into())
    };
    match std::fs::metadata(path) {
        Ok(meta) if !meta.is_file() => refuse("not a regular file".into()),
        Ok(_) => match std::fs::OpenOptions::new().append(true).open(path) {
            Ok(_) => Ok(()),
            Err(e) => refuse(format!("cannot write there: {e}")),
        },
        Err(_) => {
            let parent = match path.parent() {
                Some(p) if !p.as_os_str().is_empty() => p,
                _ => std::path::Path::new("."),
            };
            if !parent.is_dir() {
                return refuse(format!("folder {} does not exist", parent.display()));
            }
            use std::os::unix::ffi::OsStrExt as _;
            let c = std::ffi::CString::new(parent.as_os_str().as_bytes())?;
            // SAFETY: access(2) on a NUL-terminated path.
            if unsafe { libc::access(c.as_ptr(), libc::W_OK) } != 0 {
                return refuse(format!("folder {} is not writable", parent.display()));
            }
            Ok(())
        }
    }
}

#[derive(Debug, Subcommand)]
enum ExperimentCommand {
    /// Run a scenario: start its services and target, sample the probes, apply each phase's
    /// faults for its duration, judge the verifiers, and write the record.
    #[command(after_help = "\
Examples:
    sudo chaos-user experiment run examples/nginx-backend-refused/scenario.toml
  sudo chaos-user experiment run scenario.toml --json run.json --junit junit.xml \\
       --html run.html

Exit status: 0 when every verifier passed, 1 when one failed or the experiment was aborted
(by its abort condition or a signal), 2 for a bad scenario, 3 when the environment refused.
Faults use the grammar of `inject --fault`; `dep=NAME` in a fault stands for the address of
the dependency NAME. See README.md, \"Experiments\", for the file format.")]
    Run(ExperimentRunArgs),
    /// Check a scenario file without running anything; the first error found, with its line,
    /// column and key.
    #[command(after_help = "\
Example:
  chaos-user experiment validate scenario.toml")]
    Validate {
        /// The scenario file (TOML).
        file: PathBuf,
    },
}

#[derive(Debug, Args)]
struct ExperimentRunArgs {
    /// The scenario file (TOML).
    file: PathBuf,
    /// Write the record of the run as JSON to FILE (`-` for stdout).
    #[arg(long, value_name = "FILE")]
    json: Option<PathBuf>,
    /// Write JUnit XML to FILE: one test case per verifier.
    #[arg(long, value_name = "FILE")]
    junit: Option<PathBuf>,
    /// Write an HTML page to FILE: the verdicts, each phase's figures, and a timeline of the
    /// fault windows against the probes' latency and error rate.
    #[arg(long, value_name = "FILE")]
    html: Option<PathBuf>,
    /// Serve the run's metrics (probes, system, target cgroup, fault counters) for Prometheus
    /// at http://ADDR/metrics while it lasts, for example 127.0.0.1:9464 (port 0: any free).
    #[arg(long, value_name = "ADDR")]
    metrics_listen: Option<std::net::SocketAddr>,
}

#[derive(Debug, Args)]
struct InjectArgs {
    /// The target: a cgroup2 directory, absolute or relative to the cgroup2 mount. Its
    /// descendant cgroups are targeted too. Every fault needs it but xdp-drop (an interface)
    /// and disk-fill, page-cache and corrupt-file (a path).
    #[arg(long, value_name = "PATH")]
    cgroup: Option<String>,

    #[command(flatten)]
    faults: FaultArgs,

    /// Load and verify the programs and print the plan, attaching nothing.
    #[arg(long)]
    dry_run: bool,

    /// Allow the root cgroup, chaos-user's own cgroup or its ancestors, and PID 1's cgroup.
    #[arg(long)]
    force: bool,

    /// Put back the saved originals of the files that the `corrupt-file` faults name, instead
    /// of damaging them (`recover` lists what is saved).
    #[arg(long, conflicts_with_all = ["dry_run", "cgroup"])]
    restore: bool,
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
        Err(e) => {
            use clap::error::ErrorKind;
            let status = if under_run { 125 } else { 2 };
            match e.kind() {
                // --help and --version.
                ErrorKind::DisplayHelp | ErrorKind::DisplayVersion => {
                    e.print().ok();
                    return 0;
                }
                // A bare `chaos-user`: the help is the clearest answer.
                ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand
                | ErrorKind::MissingSubcommand => {
                    e.print().ok();
                    return status;
                }
                _ => {
                    let mut line = one_line(&e.render().to_string());
                    if under_run && e.kind() == ErrorKind::UnknownArgument {
                        line += "; the command goes after `--`";
                    }
                    note!("chaos-user: error: {line} (see --help)");
                    return status;
                }
            }
        }
    };
    if let Err(e) = check_runtime_dir_variable() {
        let (_, hint) = classify(&e);
        print_error(&e, hint.as_deref());
        return if under_run { 125 } else { 2 };
    }
    let result = match cli.command {
        Command::Inject(a) => inject::main(a),
        Command::Run(a) => run::main(a),
        Command::Recover => recover::main(),
        Command::Doctor(a) => doctor::main(a),
        Command::Experiment(c) => experiment::main(c),
        Command::Stress { work } => Ok(crate::stress::main(&work)),
        Command::BenchDecide { repeat } => bench_decide(repeat),
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

/// A clap error on one line: its first paragraph and its tips.
fn one_line(rendered: &str) -> String {
    let first: Vec<&str> = rendered
        .lines()
        .map(str::trim)
        .take_while(|l| !l.is_empty())
        .collect();
    let mut line = first.join(" ");
    if let Some(rest) = line.strip_prefix("error: ") {
        line = rest.to_string();
    }
    for tip in rendered
        .lines()
        .map(str::trim)
        .filter(|l| l.starts_with("tip:"))
    {
        line += "; ";
        line += tip;
    }
    line
}

/// Prints the whole chain on one line, the hint after it; a verifier log follows on its own
/// lines because it cannot be shortened without losing the reason.
fn print_error(err: &anyhow::Error, hint: Option<&str>) {
    let chain: Vec<String> = err.chain().map(|c| c.to_string()).collect();
    let mut line = chain.join(": ");
    if let Some(hint) = hint {
        line += &format!(" ({hint})");
    }
    note!("chaos-user: error: {line}");
}

/// Warns about what dead sessions left behind; called at every start.
fn report_leftovers() {
    let found = match crate::undo::leftovers() {
        Ok(found) => found,
        Err(e) => {
            note!("chaos-user: warning: cannot read the undo logs: {e:#}");
            return;
        }
    };
    for left in found.leftovers {
        for entry in &left.entries {
            note!(
                "chaos-user: warning: a session that died (pid {}) left {entry}; \
                 `chaos-user recover` undoes it",
                left.pid
            );
        }
    }
    warn_unreadable(&found.unreadable);
}

/// Names the files in the runtime directory that are left alone, and why.
fn warn_unreadable(unreadable: &[(PathBuf, String)]) {
    for (file, why) in unreadable {
        note!(
            "chaos-user: warning: {} is left alone, {why}; look at it, and remove it if \
             chaos-user did not write it",
            file.display()
        );
    }
}

/// `bench-decide`: the figures of [`crate::loader::cost::measure`] on stdout.
fn bench_decide(repeat: u32) -> anyhow::Result<i32> {
    crate::loader::check_ready()?;
    let mount = crate::cgroup::mount_point()?;
    let costs = crate::loader::cost::measure(&mount, repeat)?;
    out!("{}", serde_json::to_string_pretty(&costs)?);
    Ok(0)
}

/// `CHAOS_USER_RUNTIME_DIR`, when set, must be an absolute path: a relative one would name a
/// different directory from each working directory, and `recover` would miss what a session
/// logged.
fn check_runtime_dir_variable() -> anyhow::Result<()> {
    match std::env::var_os("CHAOS_USER_RUNTIME_DIR") {
        Some(dir) if !dir.is_empty() && !std::path::Path::new(&dir).is_absolute() => {
            Err(UsageError {
                message: format!(
                    "CHAOS_USER_RUNTIME_DIR={} is not an absolute path",
                    std::path::Path::new(&dir).display()
                ),
                hint: Some("name the directory from /, for example /run/chaos-user".into()),
            }
            .into())
        }
        _ => Ok(()),
    }
}
