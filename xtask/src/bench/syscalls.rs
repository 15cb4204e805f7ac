//! What the syscall hooks cost a process of the target: an open()+close() loop and a read()
//! loop in the target cgroup, with no injector, with chaos-user's `crash` rule on that very call
//! armed at p=0 (the raw syscall tracepoints: every call walks the rules and draws), and under
//! `strace` set to inject an error into that call at a count the loop never reaches (strace's
//! cheapest form: seccomp-bpf stops on the traced call only).

use std::{
    io::Read as _,
    path::Path,
    process::{Command, Stdio},
    time::Instant,
};

use anyhow::{Context as _, Result};

use super::{Cgroup, Comparison, Figure, Injector, measure, measure_command};

/// Calls per measurement on the host: below the largest count strace's `when=` takes (65535),
/// so that its injection is due but never comes.
pub(super) const CALLS: u32 = 60_000;

pub(super) const NONE: &str = "(a) no injector";
pub(super) const STRACE: &str = "(e) strace --seccomp-bpf, inject due after the loop";

/// Which fault of chaos-user stands on the call, armed at p=0.
#[derive(Clone, Copy)]
pub(super) enum Hook {
    /// `crash`: the raw syscall tracepoints (any kernel).
    Crash,
    /// `file`: the BPF LSM hooks (trampolines; the VM lane).
    File,
}

impl Hook {
    /// The variant's name; it starts with "(c)", which the goals look for.
    fn label(self) -> &'static str {
        match self {
            Hook::Crash => "(c) chaos-user `crash` on that call, p=0",
            Hook::File => "(c) chaos-user `file` on that call (BPF LSM), p=0",
        }
    }

    fn fault(self, kind: &str, syscall: &str) -> String {
        match self {
            Hook::Crash => format!("crash:syscall={syscall},p=0"),
            Hook::File => format!("file:op={kind},p=0"),
        }
    }
}

/// Nanoseconds per iteration of the loop `kind` (in the `bench-load` process).
pub(super) fn per_call_ns(kind: &str, path: &Path, calls: u32) -> Result<f64> {
    let start = Instant::now();
    match kind {
        "open" => {
            for _ in 0..calls {
                drop(std::fs::File::open(path)?);
            }
        }
        _ => {
            let mut file = std::fs::File::open(path)?;
            let mut byte = [0u8; 1];
            for _ in 0..calls {
                file.read_exact(&mut byte)?;
            }
        }
    }
    Ok(start.elapsed().as_nanos() as f64 / f64::from(calls))
}

/// Whether strace with seccomp-bpf filtering runs here.
pub(super) fn strace_runs() -> bool {
    Command::new("strace")
        .args(["-f", "-qq", "--seccomp-bpf", "-o", "/dev/null", "true"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Per call, in ns: each loop, then each variant.
pub(super) fn loops(
    chaos_user: &Path,
    target: &Cgroup,
    (rounds, calls): (usize, u32),
    hook: Hook,
    strace: bool,
) -> Result<Vec<Comparison>> {
    let file = std::env::temp_dir().join(format!("chaos-bench-open-{}", std::process::id()));
    std::fs::write(&file, b"x").with_context(|| format!("create {}", file.display()))?;
    let result = run_loops(chaos_user, target, (rounds, calls), hook, strace, &file);
    let _removed = std::fs::remove_file(&file);
    result
}

fn run_loops(
    chaos_user: &Path,
    target: &Cgroup,
    (rounds, calls): (usize, u32),
    hook: Hook,
    strace: bool,
    file: &Path,
) -> Result<Vec<Comparison>> {
    let chaos = hook.label();
    let mut variants = vec![NONE, chaos];
    if strace {
        variants.push(STRACE);
    }
    let mut out = Vec::new();
    let loops = [
        (
            "open()+close() of a file, ns per pair",
            "open",
            "openat",
            file,
        ),
        (
            "read() of 1 byte, ns per call",
            "read",
            "read",
            Path::new("/dev/zero"),
        ),
    ];
    for (title, kind, syscall, path) in loops {
        eprintln!("xtask: bench: {title}");
        let args = [
            kind.to_string(),
            path.display().to_string(),
            calls.to_string(),
        ];
        let mut per: Vec<Vec<f64>> = vec![Vec::new(); variants.len()];
        for round in 0..rounds {
            for k in 0..variants.len() {
                let i = (k + round) % variants.len();
                let ns = match variants[i] {
                    NONE => measure(target, &args)?,
                    STRACE => {
                        let mut cmd = Command::new("strace");
                        cmd.args(["-f", "-qq", "--seccomp-bpf", "-o", "/dev/null"])
                            .arg(format!("-etrace={syscall}"))
                            .arg(format!("-einject={syscall}:error=EIO:when=65535"))
                            .arg(std::env::current_exe()?)
                            .arg("bench-load")
                            .args(&args);
                        measure_command(target, cmd)?
                    }
                    _ => {
                        let fault = hook.fault(kind, syscall);
                        let _injector = Injector::start(chaos_user, &target.name, &[&fault])?;
                        measure(target, &args)?
                    }
                };
                per[i].push(ns);
            }
        }
        let figures = variants
            .iter()
            .zip(per)
            .map(|(v, s)| (v.to_string(), Figure::of(s)))
            .collect();
        out.push((title.to_string(), figures));
    }
    Ok(out)
}
