//! What a session reports: a readable summary and a versioned JSON record.

use std::{io::Write, path::Path, time::Duration};

use anyhow::{Context, Result};
use serde::Serialize;

use crate::{cgroup::Cgroup, session::SessionRecord, spec::FaultSpec};

/// Version of the JSON record; bumped on any change that could break a reader.
pub const SCHEMA_VERSION: u32 = 1;

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
    pub egress: Counters,
    pub ingress: Counters,
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
    pub target: Cgroup,
    pub faults: Vec<FaultReport>,
    pub attachments: Vec<String>,
    pub started_at: String,
    pub ended_at: String,
    pub elapsed_seconds: f64,
    pub end_reason: EndReason,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub run: Option<CommandReport>,
}

impl Report {
    pub fn new(
        command: &'static str,
        target: Cgroup,
        session: SessionRecord,
        end_reason: EndReason,
    ) -> Report {
        let SessionRecord {
            started,
            ended,
            attachments,
            faults,
        } = session;
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
        };
        let mut s = format!(
            "chaos-user: faults on cgroup {} for {:.1}s ({reason}); nothing left attached\n",
            self.target.name, self.elapsed_seconds
        );
        let width = self.faults.iter().map(|f| f.spec.len()).max().unwrap_or(0);
        for f in &self.faults {
            for (dir, c, applies) in [
                ("egress", f.egress, direction_applies(&f.fault, true)),
                ("ingress", f.ingress, direction_applies(&f.fault, false)),
            ] {
                if !applies {
                    continue;
                }
                let expired = if c.expired > 0 {
                    format!("  after the deadline {}", c.expired)
                } else {
                    String::new()
                };
                s += &format!(
                    "  {:<width$}  {dir:<7}  matched {:>9}  lost {:>9}  passed {:>9}{expired}{}\n",
                    f.spec,
                    c.matched,
                    c.injected,
                    c.passed,
                    ratio(c),
                );
            }
        }
        s
    }
}

fn direction_applies(fault: &FaultSpec, egress: bool) -> bool {
    match fault {
        FaultSpec::Loss(l) => {
            if egress {
                l.dir.egress()
            } else {
                l.dir.ingress()
            }
        }
    }
}

/// The share lost among the packets a live rule decided on.
fn ratio(c: Counters) -> String {
    let decided = c.injected + c.passed;
    if decided == 0 {
        String::new()
    } else {
        format!(
            "  ({:.1}% lost)",
            100.0 * c.injected as f64 / decided as f64
        )
    }
}
