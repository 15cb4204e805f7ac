//! What a session reports: a readable summary and a versioned JSON record.

use std::{collections::BTreeMap, io::Write, path::Path, time::Duration};

use anyhow::{Context, Result};
use serde::Serialize;

use crate::{cgroup::Cgroup, session::SessionRecord, spec::FaultSpec};

/// Version of the JSON record; bumped on any change that could break a reader.
pub const SCHEMA_VERSION: u32 = 2;

/// Counters of one rule in one direction.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Counters {
    pub matched: u64,
    pub injected: u64,
    pub passed: u64,
    /// Matched after the rule's deadline (the session's end or a lapsed lease): let through.
    pub expired: u64,
}

impl From<chaos_common::RuleCounters> for Counters {
    fn from(c: chaos_common::RuleCounters) -> Self {
        Counters {
            matched: c.matched,
            injected: c.injected,
            passed: c.passed,
            expired: c.expired,
        }
    }
}

/// One `--fault` and what it did.
#[derive(Clone, Debug, Serialize)]
pub struct FaultReport {
    /// Position among the session's faults.
    pub rule: usize,
    /// The canonical spec text.
    pub spec: String,
    pub fault: FaultSpec,
    /// What the fault counted, by where: `egress` and `ingress` (packets), `connects`
    /// (connect() calls), `queries` (DNS queries), `sockets` (connections aborted).
    #[serde(flatten)]
    pub counters: BTreeMap<&'static str, Counters>,
}

/// Why a session ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum EndReason {
    /// `--duration` ran out.
    Duration,
    /// A signal that ends the session (SIGINT, SIGTERM, SIGHUP, ...).
    Signal,
    /// The command that `run` started exited.
    CommandExited,
    /// The target cgroup was removed, or replaced by another of the same name.
    TargetGone,
    /// An experiment was aborted: its abort condition, or its target or a service exited.
    Aborted,
}

/// How the command of `run` ended.
#[derive(Clone, Debug, Serialize)]
pub struct CommandReport {
    pub argv: Vec<String>,
    /// The exit status `chaos-user run` passes on.
    pub exit_status: i32,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub signal: Option<i32>,
}

/// The JSON record of one session.
#[derive(Clone, Debug, Serialize)]
pub struct Report {
    pub schema_version: u32,
    pub command: &'static str,
    /// None for faults that act on interfaces alone (`xdp-drop`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub target: Option<Cgroup>,
    pub faults: Vec<FaultReport>,
    pub attachments: Vec<String>,
    pub started_at: String,
    pub ended_at: String,
    pub elapsed_seconds: f64,
    pub end_reason: EndReason,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub run: Option<CommandReport>,
    /// What the target did: its failed calls during the session, by syscall and errno.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub syscall_errors: Vec<SyscallErrors>,
}

/// Failed calls of one syscall with one errno.
#[derive(Clone, Debug, Serialize)]
pub struct SyscallErrors {
    pub syscall: String,
    pub errno: String,
    pub count: u64,
}

impl Report {
    pub fn new(
        command: &'static str,
        target: Option<Cgroup>,
        session: SessionRecord,
        end_reason: EndReason,
    ) -> Report {
        let SessionRecord {
            started,
            ended,
            attachments,
            faults,
            syscall_errors,
        } = session;
        let syscall_errors = syscall_errors
            .into_iter()
            .map(|(syscall, errno, count)| SyscallErrors {
                syscall: crate::spec::SYSCALLS
                    .iter()
                    .find(|(_, n)| *n as u32 == syscall)
                    .map_or_else(|| format!("syscall {syscall}"), |(s, _)| s.to_string()),
                errno: crate::spec::ERRNOS
                    .iter()
                    .find(|(_, n)| *n as u32 == errno)
                    .map_or_else(|| errno.to_string(), |(s, _)| s.to_string()),
                count,
            })
            .collect();
        let elapsed = ended.duration_since(started).unwrap_or(Duration::ZERO);
        Report {
            schema_version: SCHEMA_VERSION,
            command,
            target,
            faults,
            attachments,
            started_at: humantime::format_rfc3339_millis(started).to_string(),
            ended_at: humantime::format_rfc3339_millis(ended).to_string(),
            elapsed_seconds: elapsed.as_secs_f64(),
            end_reason,
            run: None,
            syscall_errors,
        }
    }

    /// Writes the JSON record to `path`, or to stdout for `-`.
    pub fn write_json(&self, path: &Path) -> Result<()> {
        let mut text = serde_json::to_vec_pretty(self)?;
        text.push(b'\n');
        if path == Path::new("-") {
            let mut out = std::io::stdout().lock();
            out.write_all(&text)
                .context("write the JSON report to stdout")?;
            return out.flush().context("write the JSON report to stdout");
        }
        std::fs::write(path, text).with_context(|| format!("write {}", path.display()))
    }

    /// The readable summary.
    pub fn summary(&self) -> String {
        let reason = match self.end_reason {
            EndReason::Duration => "the duration ended",
            EndReason::Signal => "interrupted",
            EndReason::CommandExited => "the command exited",
            EndReason::TargetGone => "the target cgroup was removed or replaced",
            EndReason::Aborted => "the experiment was aborted",
        };
        let on = self.target.as_ref().map_or_else(
            || FaultSpec::scope(self.faults.iter().map(|f| &f.fault)).to_string(),
            |t| format!("cgroup {}", t.name),
        );
        let mut s = format!(
            "chaos-user: faults on {on} for {:.1}s ({reason}); nothing left attached\n",
            self.elapsed_seconds
        );
        let width = self.faults.iter().map(|f| f.spec.len()).max().unwrap_or(0);
        for f in &self.faults {
            for (place, c) in &f.counters {
                let expired = if c.expired > 0 {
                    format!("  after the deadline {}", c.expired)
                } else {
                    String::new()
                };
                let acted = verb(&f.fault);
                s += &format!(
                    "  {:<width$}  {place:<8}  matched {:>9}  {acted} {:>9}  passed {:>9}{expired}{}\n",
                    f.spec,
                    c.matched,
                    c.injected,
                    c.passed,
                    ratio(&f.fault, *c, acted),
                );
                if let FaultSpec::CorruptFile(c) = &f.fault {
                    s += &format!(
                        "    the damage stays; the original is saved: chaos-user inject \
                         --restore --fault corrupt-file:path={} puts it back\n",
                        c.path.display()
                    );
                }
                if matches!(f.fault, FaultSpec::FdLimit(_)) && *place == "sockets" {
                    s += "    (sockets only: this kernel runs no BPF trampolines, so files, pipes \
                          and accepted connections are left alone)\n";
                }
            }
        }
        if !self.syscall_errors.is_empty() {
            let shown: Vec<String> = self
                .syscall_errors
                .iter()
                .take(12)
                .map(|e| format!("{} {} x{}", e.syscall, e.errno, e.count))
                .collect();
            s += &format!("  the target's failed calls: {}\n", shown.join(", "));
        }
        s
    }
}

/// What the summary calls an injection of this fault.
fn verb(fault: &FaultSpec) -> &'static str {
    match fault {
        FaultSpec::Loss(_) | FaultSpec::XdpDrop(_) => "lost",
        FaultSpec::Delay(_) => "delayed",
        FaultSpec::Bandwidth(_) => "dropped",
        FaultSpec::Corrupt(_) => "corrupted",
        FaultSpec::Duplicate(_) => "duplicated",
        FaultSpec::Connect(c) => match c.outcome {
            crate::spec::ConnectOutcome::Errno(_) => "failed",
            crate::spec::ConnectOutcome::Redirect(_) => "redirected",
        },
        FaultSpec::Reset(_) => "aborted",
        FaultSpec::Dns(_) => "faked",
        FaultSpec::Pause(_) => "frozen",
        FaultSpec::Device(_)
        | FaultSpec::FdLimit(_)
        | FaultSpec::File(_)
        | FaultSpec::Nospace(_)
        | FaultSpec::Fail(_) => "failed",
        FaultSpec::DiskFill(_) => "filled",
        FaultSpec::PageCache(_) => "dropped",
        FaultSpec::CorruptFile(_) => "damaged",
        FaultSpec::CpuHog(_) | FaultSpec::CpuThrottle(_) => "used",
        FaultSpec::IoStress(_) => "written",
        FaultSpec::MemoryPressure(_) | FaultSpec::MemoryLeak(_) => "held",
        FaultSpec::Crash(_) => "signalled",
    }
}

/// The share lost among the packets a live rule decided on; for limits and stressors, what was
/// used or held against what the fault allows or asks for.
fn ratio(fault: &FaultSpec, c: Counters, acted: &str) -> String {
    let of = match fault {
        FaultSpec::CpuThrottle(_) => Some("of what the quota allows"),
        FaultSpec::MemoryPressure(crate::spec::MemoryPressureSpec::Limit(_)) => {
            Some("of the limit")
        }
        FaultSpec::CpuHog(_) | FaultSpec::MemoryPressure(_) | FaultSpec::MemoryLeak(_) => {
            Some("of what was asked")
        }
        _ => None,
    };
    if let Some(of) = of {
        return if c.matched == 0 {
            String::new()
        } else {
            format!(
                "  ({:.1}% {of})",
                100.0 * c.injected as f64 / c.matched as f64
            )
        };
    }
    let decided = c.injected + c.passed;
    if decided == 0 {
        String::new()
    } else {
        format!(
            "  ({:.1}% {acted})",
            100.0 * c.injected as f64 / decided as f64
        )
    }
}
