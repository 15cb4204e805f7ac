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
    /// The system and the target cgroup, sampled all along.
    pub monitor: Vec<super::monitor::MonitorSample>,
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
        monitor: Vec<super::monitor::MonitorSample>,
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
            monitor,
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
                if probe.phases.get(i).is_some_and(|s| s.stats.samples == 0) {
                    let _w = writeln!(out, "    {:<12} no samples", probe.name);
                } else if let Some(s) = probe.phases.get(i) {
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

/// Colours of the probes' lines, in order.
const COLOURS: [&str; 6] = [
    "#1f77b4", "#9467bd", "#8c564b", "#17becf", "#bcbd22", "#7f7f7f",
];

impl Record {
    /// A page for people: the verdicts, each phase's figures, and a timeline of the fault
    /// windows against each probe's latency and error rate.
    pub fn html(&self) -> String {
        use std::fmt::Write as _;
        let e = |t: &str| quick_xml::escape::escape(t).into_owned();
        let mut out = String::new();
        let _w = write!(
            out,
            "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n\
             <title>{name}: {result}</title>\n<style>\n\
             body {{ font-family: sans-serif; margin: 2em; color: #222; }}\n\
             table {{ border-collapse: collapse; margin: 1em 0; }}\n\
             td, th {{ border: 1px solid #ccc; padding: 0.3em 0.6em; text-align: left; }}\n\
             .pass {{ color: #2a7d2a; font-weight: bold; }}\n\
             .fail {{ color: #c0392b; font-weight: bold; }}\n\
             </style>\n</head>\n<body>\n<h1>{name}</h1>\n\
             <p>Cgroup {target}, started {started}, {elapsed:.1} s: \
             <span class=\"{class}\">{result}</span></p>\n",
            name = e(&self.name),
            result = if self.passed { "passed" } else { "FAILED" },
            target = e(&self.target.name),
            started = e(&self.started_at),
            elapsed = self.elapsed_seconds,
            class = if self.passed { "pass" } else { "fail" },
        );
        if let Some(a) = &self.aborted {
            let _w = writeln!(
                out,
                "<p class=\"fail\">Aborted in phase {}: {}</p>",
                e(&a.phase),
                e(&a.reason)
            );
        }
        out.push_str(&self.timeline_svg());
        out.push_str(
            "\n<h2>Verifiers</h2>\n<table>\n<tr><th></th><th>kind</th><th>what</th>\
             <th>measured</th><th>bound</th></tr>\n",
        );
        for v in &self.verifiers {
            let _w = writeln!(
                out,
                "<tr><td class=\"{}\">{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
                if v.passed { "pass" } else { "fail" },
                if v.passed { "pass" } else { "FAIL" },
                e(v.kind),
                e(&v.name),
                e(&v.measured),
                e(&v.bound)
            );
        }
        out.push_str(
            "</table>\n<h2>Phases</h2>\n<table>\n<tr><th>phase</th><th>faults</th>\
             <th>probe</th><th>healthy</th><th>samples</th><th>p50 ms</th><th>p99 ms</th></tr>\n",
        );
        for (i, phase) in self.phases.iter().enumerate() {
            for probe in &self.probes {
                let Some(s) = probe.phases.get(i) else {
                    continue;
                };
                let _w = writeln!(
                    out,
                    "<tr><td>{}</td><td>{}</td><td>{}</td><td>{:.1}%</td><td>{}</td>\
                     <td>{:.1}</td><td>{:.1}</td></tr>",
                    e(&phase.window.name),
                    e(&phase.faults.join(" ")),
                    e(&probe.name),
                    s.stats.success_rate * 100.0,
                    s.stats.samples,
                    s.stats.latency_p50_ms,
                    s.stats.latency_p99_ms
                );
            }
        }
        out.push_str("</table>\n</body>\n</html>\n");
        out
    }

    /// The timeline: fault windows shaded, each probe's latency as a line (failed samples as
    /// red marks), and below it the error rate of all probes per half second.
    fn timeline_svg(&self) -> String {
        use std::fmt::Write as _;
        let e = |t: &str| quick_xml::escape::escape(t).into_owned();
        let (width, plot, left) = (900.0_f64, 260.0_f64, 60.0_f64);
        let rate_top = plot + 40.0;
        let rate_height = 60.0;
        let height = rate_top + rate_height + 40.0;
        let end_ms = self.phases.last().map_or(1, |p| p.window.end_ms).max(1) as f64;
        let max_latency = self
            .probes
            .iter()
            .flat_map(|p| p.samples.iter().map(|s| s.latency_ms))
            .fold(1.0_f64, f64::max);
        let x = |ms: f64| left + ms / end_ms * (width - left - 10.0);
        let y = |lat: f64| 10.0 + plot - (lat / max_latency) * plot;
        let mut svg = String::new();
        let _w = writeln!(
            svg,
            "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{width}\" height=\"{height}\" \
             viewBox=\"0 0 {width} {height}\" font-family=\"sans-serif\" font-size=\"11\">"
        );
        for phase in &self.phases {
            let (x0, x1) = (
                x(phase.window.start_ms as f64),
                x(phase.window.end_ms as f64),
            );
            if !phase.faults.is_empty() {
                let _w = writeln!(
                    svg,
                    "<rect x=\"{x0:.1}\" y=\"10\" width=\"{:.1}\" height=\"{:.1}\" \
                     fill=\"#f5b7b1\" opacity=\"0.5\"><title>{}: {}</title></rect>",
                    (x1 - x0).max(1.0),
                    rate_top + rate_height - 10.0,
                    e(&phase.window.name),
                    e(&phase.faults.join(" "))
                );
            }
            let _w = writeln!(
                svg,
                "<text x=\"{:.1}\" y=\"{:.1}\">{}</text>",
                x0 + 3.0,
                height - 8.0,
                e(&phase.window.name)
            );
        }
        let _w = writeln!(
            svg,
            "<line x1=\"{left}\" y1=\"{b}\" x2=\"{r}\" y2=\"{b}\" stroke=\"#444\"/>\
             <line x1=\"{left}\" y1=\"10\" x2=\"{left}\" y2=\"{b}\" stroke=\"#444\"/>\
             <text x=\"4\" y=\"16\">{max_latency:.0} ms</text><text x=\"4\" y=\"{b}\">0 ms</text>\
             <text x=\"4\" y=\"{rt:.1}\">errors</text>",
            b = 10.0 + plot,
            r = width - 10.0,
            rt = rate_top + 12.0,
        );
        for (i, probe) in self.probes.iter().enumerate() {
            let colour = COLOURS[i % COLOURS.len()];
            let points: Vec<String> = probe
                .samples
                .iter()
                .map(|s| format!("{:.1},{:.1}", x(s.at_ms as f64), y(s.latency_ms)))
                .collect();
            let _w = writeln!(
                svg,
                "<polyline fill=\"none\" stroke=\"{colour}\" stroke-width=\"1.2\" \
                 points=\"{}\"><title>{} latency</title></polyline>",
                points.join(" "),
                e(&probe.name)
            );
            for s in probe.samples.iter().filter(|s| !s.ok) {
                let _w = writeln!(
                    svg,
                    "<circle cx=\"{:.1}\" cy=\"{:.1}\" r=\"2\" fill=\"#c0392b\"/>",
                    x(s.at_ms as f64),
                    y(s.latency_ms)
                );
            }
            let _w = writeln!(
                svg,
                "<text x=\"{:.1}\" y=\"{:.1}\" fill=\"{colour}\">{}</text>",
                width - 150.0,
                24.0 + 14.0 * i as f64,
                e(&probe.name)
            );
        }
        // Error rate of all probes' samples per 500 ms.
        let buckets = (end_ms / 500.0).ceil().max(1.0) as usize;
        let mut counts = vec![(0u32, 0u32); buckets];
        for s in self.probes.iter().flat_map(|p| &p.samples) {
            let b = ((s.at_ms as f64 / 500.0) as usize).min(buckets - 1);
            counts[b].0 += 1;
            counts[b].1 += u32::from(!s.ok);
        }
        for (b, (all, failed)) in counts.iter().enumerate() {
            if *all == 0 || *failed == 0 {
                continue;
            }
            let rate = f64::from(*failed) / f64::from(*all);
            let h = rate * rate_height;
            let _w = writeln!(
                svg,
                "<rect x=\"{:.1}\" y=\"{:.1}\" width=\"{:.1}\" height=\"{h:.1}\" \
                 fill=\"#c0392b\"><title>{:.0}% failed</title></rect>",
                x(b as f64 * 500.0),
                rate_top + rate_height - h,
                (x(500.0) - x(0.0)).max(1.0),
                rate * 100.0
            );
        }
        svg.push_str("</svg>\n");
        svg
    }

    pub fn write_html(&self, path: &Path) -> Result<()> {
        write_out(path, self.html().as_bytes())
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
