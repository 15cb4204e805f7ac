//! Runs the privileged test binaries as root, one test at a time, each in a cgroup and a
//! runtime directory of its own, and checks after each that nothing of chaos-user's is left:
//! no process, no cgroup, no undo log, no loaded program.

use std::{
    fs,
    io::{BufRead, BufReader, Read},
    os::{fd::AsRawFd, unix::process::CommandExt},
    path::{Path, PathBuf},
    process::{Command, Stdio},
    sync::mpsc,
    time::{Duration, Instant},
};

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

use crate::util::{self, cgroup2_mount, is_root, warn_on_err};

/// The marker a test prints when it skips, followed by the reason.
pub const SKIP_MARKER: &str = "chaos-test: SKIP ";
/// The reason a test prints when it is not root.
pub const NOT_ROOT: &str = "not root";
/// The prefix of the programs chaos-user loads, as the kernel names them.
const OUR_PROGRAMS: &str = "chaos_";
const TEST_TIMEOUT: Duration = Duration::from_secs(600);

#[derive(Clone, Debug, clap::Args)]
pub struct Args {
    /// Test binaries.
    #[arg(long = "bin", required = true)]
    pub bins: Vec<PathBuf>,
    /// The chaos-user binary under test.
    #[arg(long)]
    pub chaos_user: PathBuf,
    /// Run only tests whose name contains one of these (all when none is given).
    #[arg(long = "filter")]
    pub filters: Vec<String>,
    #[arg(long)]
    pub long: bool,
    /// Write the tally as JSON here.
    #[arg(long)]
    pub tally: Option<PathBuf>,
}

impl Args {
    pub fn to_cli(&self) -> Vec<String> {
        let mut out = Vec::new();
        for b in &self.bins {
            out.push("--bin".to_string());
            out.push(b.display().to_string());
        }
        out.push("--chaos-user".into());
        out.push(self.chaos_user.display().to_string());
        for f in &self.filters {
            out.push("--filter".into());
            out.push(f.clone());
        }
        if self.long {
            out.push("--long".into());
        }
        out
    }
}

#[derive(Debug, Default, Serialize, Deserialize)]
pub struct Tally {
    /// Every test that ran and did not skip.
    pub ran: Vec<String>,
    pub passed: usize,
    pub failed: usize,
    pub skipped: Vec<(String, String)>,
    pub failures: Vec<String>,
}

/// The hidden `privileged` task: runs everything and writes the tally for the caller.
pub fn run(args: Args) -> Result<i32> {
    let tally = run_all(&args)?;
    if let Some(path) = &args.tally {
        fs::write(path, serde_json::to_vec(&tally)?)?;
    }
    Ok(if tally.failed == 0 { 0 } else { 1 })
}

pub fn run_all(args: &Args) -> Result<Tally> {
    let mount = cgroup2_mount()?;
    let mut tally = Tally::default();
    let mut index = 0;
    for bin in &args.bins {
        for name in list_tests(bin)? {
            if !args.filters.is_empty() && !args.filters.iter().any(|f| name.contains(f.as_str())) {
                continue;
            }
            index += 1;
            // Test binaries are named `FILE-HASH`: keep the file's name.
            let file = bin.file_name().unwrap_or_default().to_string_lossy();
            let label = format!("{}::{name}", file.split('-').next().unwrap_or_default());
            eprintln!("\n=== {label}");
            let outcome = run_one(args, &mount, bin, &name, index)
                .unwrap_or_else(|e| Outcome::Failed(format!("the runner failed: {e:#}")));
            match outcome {
                Outcome::Passed => {
                    eprintln!("=== {label}: ok");
                    tally.passed += 1;
                    tally.ran.push(label);
                }
                Outcome::Skipped(reason) => {
                    eprintln!("=== {label}: SKIPPED ({reason})");
                    tally.skipped.push((label, reason));
                }
                Outcome::Failed(why) => {
                    eprintln!("=== {label}: FAILED ({why})");
                    tally.failed += 1;
                    tally.failures.push(format!("{label}: {why}"));
                    tally.ran.push(label);
                }
            }
        }
    }
    Ok(tally)
}

enum Outcome {
    Passed,
    Skipped(String),
    Failed(String),
}

fn list_tests(bin: &Path) -> Result<Vec<String>> {
    let out = Command::new(bin)
        .args(["--list", "--format", "terse"])
        .output()?;
    let text = String::from_utf8_lossy(&out.stdout);
    Ok(text
        .lines()
        .filter_map(|l| l.strip_suffix(": test"))
        .map(str::to_string)
        .collect())
}

fn run_one(args: &Args, mount: &Path, bin: &Path, name: &str, index: usize) -> Result<Outcome> {
    let tag = format!("chaos-test-{}-{index}", std::process::id());
    let cgroup = mount.join(&tag);
    let runtime = std::env::temp_dir().join(format!("{tag}-run"));
    if runtime.exists() {
        fs::remove_dir_all(&runtime)?;
    }
    fs::create_dir_all(&runtime)?;
    let in_cgroup = is_root();
    let clsact_before = clsact_devices();
    if in_cgroup {
        fs::create_dir(&cgroup).with_context(|| format!("create {}", cgroup.display()))?;
    }

    let mut cmd = Command::new(bin);
    cmd.args(["--exact", name, "--nocapture", "--test-threads", "1"])
        .env("CHAOS_USER_BIN", &args.chaos_user)
        .env("CHAOS_USER_RUNTIME_DIR", &runtime)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    if args.long {
        cmd.env("CHAOS_TEST_LONG", "1");
    }
    let procs = if in_cgroup {
        Some(
            fs::OpenOptions::new()
                .write(true)
                .open(cgroup.join("cgroup.procs"))?,
        )
    } else {
        None
    };
    if let Some(procs) = &procs {
        let fd = procs.as_raw_fd();
        // SAFETY: runs between fork and exec and only calls write(2) on an open descriptor.
        unsafe {
            cmd.pre_exec(move || {
                if libc::write(fd, b"0".as_ptr().cast(), 1) != 1 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
    }
    let mut child = cmd
        .spawn()
        .with_context(|| format!("start {}", bin.display()))?;
    drop(procs);

    let (tx, rx) = mpsc::channel::<String>();
    let readers: Vec<_> = [
        Box::new(child.stdout.take().expect("piped")) as Box<dyn Read + Send>,
        Box::new(child.stderr.take().expect("piped")),
    ]
    .into_iter()
    .map(|stream| {
        let tx = tx.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stream).lines().map_while(Result::ok) {
                eprintln!("    {line}");
                if tx.send(line).is_err() {
                    break;
                }
            }
        })
    })
    .collect();
    drop(tx);

    let started = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait()? {
            break Some(status);
        }
        if started.elapsed() > TEST_TIMEOUT {
            kill_cgroup(&cgroup);
            warn_on_err(child.kill(), "kill the test");
            warn_on_err(child.wait(), "reap the test");
            break None;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    for r in readers {
        if r.join().is_err() {
            eprintln!("xtask: warning: a reader of the test's output panicked");
        }
    }
    let lines: Vec<String> = rx.into_iter().collect();
    let skip = lines
        .iter()
        .find_map(|l| l.split_once(SKIP_MARKER).map(|(_, r)| r.trim().to_string()));

    let mut problems = leftovers(&cgroup, &runtime, in_cgroup, &clsact_before);
    warn_on_err(
        fs::remove_dir_all(&runtime),
        format!("remove {}", runtime.display()),
    );
    let outcome = match (status, skip) {
        (None, _) => Outcome::Failed(format!("timed out after {}s", TEST_TIMEOUT.as_secs())),
        (Some(s), _) if !s.success() => Outcome::Failed(format!("exited with {s}")),
        (Some(_), Some(reason)) => Outcome::Skipped(reason),
        (Some(_), None) => Outcome::Passed,
    };
    if problems.is_empty() {
        return Ok(outcome);
    }
    if let Outcome::Failed(why) = outcome {
        problems.insert(0, why);
    }
    Ok(Outcome::Failed(problems.join("; ")))
}

/// What a finished test left behind; cleans it up so that the next test starts clean.
fn leftovers(
    cgroup: &Path,
    runtime: &Path,
    in_cgroup: bool,
    clsact_before: &[String],
) -> Vec<String> {
    let mut problems = Vec::new();
    if in_cgroup {
        let events = fs::read_to_string(cgroup.join("cgroup.events")).unwrap_or_default();
        if events.lines().any(|l| l.trim() == "populated 1") {
            problems.push("left processes running in its cgroup".to_string());
            kill_cgroup(cgroup);
        }
        let children = remove_tree(cgroup);
        if !children.is_empty() {
            problems.push(format!("left cgroups: {}", children.join(", ")));
        }
    }
    let mount = cgroup.parent().unwrap_or(Path::new("/"));
    for name in run_cgroups(mount) {
        problems.push(format!("left cgroup {name}"));
        let path = mount.join(&name);
        kill_cgroup(&path);
        remove_tree(&path);
    }
    if let Ok(dir) = fs::read_dir(runtime) {
        let files: Vec<String> = dir
            .filter_map(|e| e.ok())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        if !files.is_empty() {
            problems.push(format!("left undo logs: {}", files.join(", ")));
        }
    }
    // `delay`'s fq qdiscs carry handles c000: to cfff:.
    for line in qdisc_lines() {
        if line.starts_with("qdisc fq c") {
            problems.push(format!("left a qdisc: {line}"));
        }
    }
    // A clsact qdisc that was not there before the test (the egress path before tcx).
    for device in clsact_devices() {
        if !clsact_before.contains(&device) {
            problems.push(format!("left a clsact qdisc on {device}"));
            warn_on_err(
                util::run(Command::new("tc").args(["qdisc", "del", "dev", &device, "clsact"])),
                format!("remove the clsact qdisc of {device}"),
            );
        }
    }
    // The kernel frees a program shortly after its last reference goes.
    let deadline = Instant::now() + Duration::from_secs(3);
    loop {
        let loaded = loaded_programs_of_ours();
        if loaded.is_empty() {
            break;
        }
        if Instant::now() > deadline {
            problems.push(format!("left programs loaded: {}", loaded.join(", ")));
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    problems
}

/// `tc qdisc show`, a line each.
fn qdisc_lines() -> Vec<String> {
    Command::new("tc")
        .args(["qdisc", "show"])
        .output()
        .map(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .map(str::to_string)
                .collect()
        })
        .unwrap_or_default()
}

/// The interfaces (of this network namespace) that have a clsact qdisc.
fn clsact_devices() -> Vec<String> {
    qdisc_lines()
        .iter()
        .filter(|l| l.starts_with("qdisc clsact"))
        .filter_map(|l| {
            let mut words = l.split_whitespace();
            words.find(|w| *w == "dev")?;
            words.next().map(str::to_string)
        })
        .collect()
}

fn loaded_programs_of_ours() -> Vec<String> {
    aya::programs::loaded_programs()
        .filter_map(Result::ok)
        .filter_map(|p| p.name_as_str().map(str::to_string))
        .filter(|n| n.starts_with(OUR_PROGRAMS))
        .collect()
}

/// Kills what is left in the test's own cgroup (all of it was started by this runner's test).
fn kill_cgroup(cgroup: &Path) {
    warn_on_err(
        fs::write(cgroup.join("cgroup.kill"), "1"),
        format!("kill {}", cgroup.display()),
    );
    for _ in 0..50 {
        let events = fs::read_to_string(cgroup.join("cgroup.events")).unwrap_or_default();
        if !events.lines().any(|l| l.trim() == "populated 1") {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Removes a cgroup and its descendants; returns the descendants that were there.
fn remove_tree(cgroup: &Path) -> Vec<String> {
    let mut found = Vec::new();
    if let Ok(dir) = fs::read_dir(cgroup) {
        for entry in dir.filter_map(|e| e.ok()) {
            if entry.file_type().is_ok_and(|t| t.is_dir()) {
                found.push(entry.file_name().to_string_lossy().into_owned());
                found.extend(remove_tree(&entry.path()));
            }
        }
    }
    warn_on_err(
        fs::remove_dir(cgroup),
        format!("remove {}", cgroup.display()),
    );
    found
}

/// Transient cgroups of `chaos-user run`, directly below the mount.
fn run_cgroups(mount: &Path) -> Vec<String> {
    fs::read_dir(mount)
        .map(|d| {
            d.filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.starts_with("chaos-user-run-"))
                .collect()
        })
        .unwrap_or_default()
}
