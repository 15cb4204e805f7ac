//! The record of an experiment: versioned JSON, JUnit XML (one test case per verifier), and the
//! summary on the terminal.

use std::{io::Write as _, path::Path};

use anyhow::{Context as _, Result};
use quick_xml::{
    Writer,
    events::{BytesDecl, BytesEnd, BytesStart, BytesText, Event},
};
use serde::Serialize;

use super::{
    Aborted, PhaseWindow,
    probe::Sample,
    scenario::{Check, Scenario},
    verify::{Stats, Verdict, between},
};
use crate::{cgroup::Cgroup, report::Report};

/// Version of the experiment record's format.
pub const SCHEMA_VERSION: u32 = 1;

#[derive(Debug, Serialize)]
pub struct Record {
    pub schema_version: u32,
    pub kind: &'static str,
    pub name: String,
    pub scenario: String,
    pub target: Cgroup,
    pub started_at: String,
    pub elapsed_seconds: f64,
    /// True when every verifier passed and the experiment was not aborted.
    pub passed: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub aborted: Option<Aborted>,
    pub phases: Vec<PhaseRecord>,
    pub probes: Vec<ProbeRecord>,
    pub verifiers: Vec<Verdict>,
}

#[derive(Debug, Serialize)]
pub struct PhaseRecord {
    #[serde(flatten)]
    pub window: PhaseWindow,
    /// The faults as the scenario wrote them.
    pub faults: Vec<String>,
    /// The session of the phase's faults: counters, attachments, the target's failed calls.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub session: Option<Report>,
}

#[derive(Debug, Serialize)]
pub struct ProbeRecord {
    pub name: String,
    pub check: String,
    /// Figures per phase, in the order of the phases.
    pub phases: Vec<ProbePhase>,
    pub samples: Vec<Sample>,
}

#[derive(Debug, Serialize)]
pub struct ProbePhase {
    pub phase: String,
    #[serde(flatten)]
    pub stats: Stats,
}

impl Record {
    #[allow(
        clippy::too_many_arguments,
        reason = "the parts of one run, each named"
    )]
    pub fn new(
        scenario: &Scenario,
        target: Cgroup,
        started_at: std::time::SystemTime,
        windows: Vec<PhaseWindow>,
        sessions: Vec<Option<Report>>,
        samples: Vec<Vec<Sample>>,
        verifiers: Vec<Verdict>,
        aborted: Option<Aborted>,
    ) -> Record {
        let probes = scenario
            .probes
            .iter()
            .zip(samples)
            .map(|(p, samples)| ProbeRecord {
                name: p.name.clone(),
                check: match &p.check {
                    Check::Http { url, .. } => format!("http {url}"),
                    Check::Tcp(addr) => format!("tcp {addr}"),
                    Check::Command(argv) => format!("command {}", argv.join(" ")),
                },
                phases: windows
                    .iter()
                    .map(|w| ProbePhase {
                        phase: w.name.clone(),
                        stats: Stats::of(between(&samples, w.start_ms, w.end_ms)),
                    })
                    .collect(),
                samples,
            })
            .collect();
        let phases = windows
            .into_iter()
            .zip(sessions)
            .zip(&scenario.phases)
            .map(|((window, session), phase)| PhaseRecord {
                window,
                faults: phase.faults.iter().map(|(w, _)| w.clone()).collect(),
                session,
            })
            .collect();
        let passed = aborted.is_none() && verifiers.iter().all(|v| v.passed);
        Record {
            schema_version: SCHEMA_VERSION,
            kind: "experiment",
            name: scenario.name.clone(),
            scenario: scenario.file.display().to_string(),
            target,
            started_at: humantime::format_rfc3339_seconds(started_at).to_string(),
            elapsed_seconds: started_at.elapsed().map_or(0.0, |d| d.as_secs_f64()),
            passed,
            aborted,
            phases,
            probes,
            verifiers,
        }
    }

    pub fn write_json(&self, path: &Path) -> Result<()> {
        let text = serde_json::to_string_pretty(self)?;
        write_out(path, text.as_bytes())
    }

    /// JUnit XML: one test suite, one test case per verifier, and one for an abort.
    pub fn junit(&self) -> Result<String> {
        let mut cases: Vec<(String, Option<String>)> = self
            .verifiers
            .iter()
            .map(|v| {
                let name = format!("{}: {}", v.kind, v.name);
                let failure = (!v.passed).then(|| format!("{} (bound {})", v.measured, v.bound));
                (name, failure)
            })
            .collect();
        if let Some(a) = &self.aborted {
            cases.push((
                "the experiment ran all its phases".into(),
                Some(format!("aborted in phase `{}`: {}", a.phase, a.reason)),
            ));
        }
        let failures = cases.iter().filter(|(_, f)| f.is_some()).count();
        let mut w = Writer::new_with_indent(Vec::new(), b' ', 2);
        w.write_event(Event::Decl(BytesDecl::new("1.0", Some("UTF-8"), None)))?;
        let count = cases.len().to_string();
        let failed = failures.to_string();
        let time = format!("{:.3}", self.elapsed_seconds);
        let mut suites = BytesStart::new("testsuites");
        suites.push_attribute(("name", "chaos-user"));
        suites.push_attribute(("tests", count.as_str()));
        suites.push_attribute(("failures", failed.as_str()));
        w.write_event(Event::Start(suites))?;
        let mut suite = BytesStart::new("testsuite");
        suite.push_attribute(("name", self.name.as_str()));
        suite.push_attribute(("tests", count.as_str()));
        suite.push_attribute(("failures", failed.as_str()));
        suite.push_attribute(("errors", "0"));
        suite.push_attribute(("time", time.as_str()));
        suite.push_attribute(("timestamp", self.started_at.as_str()));
        w.write_event(Event::Start(suite))?;
        let classname = format!("chaos-user.{}", self.name);
        for (name, failure) in &cases {
            let mut case = BytesStart::new("testcase");
            case.push_attribute(("name", name.as_str()));
            case.push_attribute(("classname", classname.as_str()));
            match failure {
                None => w.write_event(Event::Empty(case))?,
                Some(message) => {
                    w.write_event(Event::Start(case))?;
                    let mut f = BytesStart::new("failure");
                    f.push_attribute(("message", message.as_str()));
                    w.write_event(Event::Start(f))?;
                    w.write_event(Event::Text(BytesText::new(message)))?;
                    w.write_event(Event::End(BytesEnd::new("failure")))?;
                    w.write_event(Event::End(BytesEnd::new("testcase")))?;
                }
            }
        }
        w.write_event(Event::End(BytesEnd::new("testsuite")))?;
        w.write_event(Event::End(BytesEnd::new("testsuites")))?;
        let mut out = w.into_inner();
        out.push(b'\n');
        Ok(String::from_utf8(out)?)
    }

    pub fn write_junit(&self, path: &Path) -> Result<()> {
        write_out(path, self.junit()?.as_bytes())
    }

    /// The summary for people: each phase with each probe's figures, then the verdicts.
    pub fn summary(&self) -> String {
        use std::fmt::Write as _;
        let mut out = String::new();
        let _w = writeln!(
            out,
            "experiment `{}` on cgroup {}: {} in {:.1}s",
            self.name,
            self.target.name,
            if self.passed { "passed" } else { "FAILED" },
            self.elapsed_seconds
        );
        if let Some(a) = &self.aborted {
            let _w = writeln!(out, "  aborted in phase `{}`: {}", a.phase, a.reason);
        }
        for (i, phase) in self.phases.iter().enumerate() {
            let faults = if phase.faults.is_empty() {
                "no faults".to_string()
            } else {
                phase.faults.join(" ")
            };
            let _w = writeln!(
                out,
                "  phase {} `{}` ({:.1}s): {faults}",
                i + 1,
                phase.window.name,
                (phase.window.end_ms - phase.window.start_ms) as f64 / 1000.0
            );
            for probe in &self.probes {
                if let Some(s) = probe.phases.get(i) {
                    let _w = writeln!(
                        out,
                        "    {:<12} {:>5.1}% healthy of {:<4} p50 {:>7.1} ms  p99 {:>7.1} ms",
                        probe.name,
                        s.stats.success_rate * 100.0,
                        s.stats.samples,
                        s.stats.latency_p50_ms,
                        s.stats.latency_p99_ms
                    );
                }
            }
        }
        for v in &self.verifiers {
            let _w = writeln!(
                out,
                "  {} {}: {}: {} (bound {})",
                if v.passed { "pass" } else { "FAIL" },
                v.kind,
                v.name,
                v.measured,
                v.bound
            );
        }
        out
    }
}

/// Writes a report file, or to stdout for `-`.
fn write_out(path: &Path, bytes: &[u8]) -> Result<()> {
    if path.as_os_str() == "-" {
        let mut stdout = std::io::stdout().lock();
        stdout.write_all(bytes)?;
        return stdout.flush().context("write to stdout");
    }
    std::fs::write(path, bytes).with_context(|| format!("write {}", path.display()))
}
