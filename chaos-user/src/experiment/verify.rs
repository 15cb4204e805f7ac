//! Figures from the probes' samples, and the verifiers that judge them: each passes or fails
//! with the value it measured and the bound it held it to.

use std::time::Duration;

use serde::Serialize;

use super::{PhaseWindow, probe::Sample, scenario::Verifier};

/// A probe's figures over some window.
#[derive(Clone, Debug, Default, Serialize, PartialEq)]
pub struct Stats {
    pub samples: usize,
    pub healthy: usize,
    /// Healthy samples over all samples (0 without samples).
    pub success_rate: f64,
    pub latency_p50_ms: f64,
    pub latency_p90_ms: f64,
    pub latency_p99_ms: f64,
    pub latency_max_ms: f64,
}

impl Stats {
    pub fn of<'a>(samples: impl IntoIterator<Item = &'a Sample>) -> Stats {
        let samples: Vec<&Sample> = samples.into_iter().collect();
        if samples.is_empty() {
            return Stats::default();
        }
        let healthy = samples.iter().filter(|s| s.ok).count();
        let mut latencies: Vec<f64> = samples.iter().map(|s| s.latency_ms).collect();
        latencies.sort_by(f64::total_cmp);
        // Nearest rank: the smallest value with at least q of the samples at or below it.
        let rank = |q: f64| {
            let i = ((q * latencies.len() as f64).ceil() as usize).clamp(1, latencies.len());
            latencies[i - 1]
        };
        Stats {
            samples: samples.len(),
            healthy,
            success_rate: healthy as f64 / samples.len() as f64,
            latency_p50_ms: rank(0.50),
            latency_p90_ms: rank(0.90),
            latency_p99_ms: rank(0.99),
            latency_max_ms: latencies[latencies.len() - 1],
        }
    }
}

/// The samples taken in `[from, to)` milliseconds.
pub fn between(samples: &[Sample], from: u64, to: u64) -> impl Iterator<Item = &Sample> {
    samples
        .iter()
        .filter(move |s| s.at_ms >= from && s.at_ms < to)
}

/// What one verifier found.
#[derive(Clone, Debug, Serialize)]
pub struct Verdict {
    pub kind: &'static str,
    /// What it looked at, for people: `api after the faults`.
    pub name: String,
    pub passed: bool,
    /// The value measured, with its unit, or why there is none.
    pub measured: String,
    pub bound: String,
}

/// The phases with faults: from the start of the first to the end of the last, if any.
fn fault_span(phases: &[PhaseWindow]) -> Option<(u64, u64)> {
    let first = phases.iter().find(|p| p.has_faults)?;
    let last = phases.iter().rev().find(|p| p.has_faults)?;
    Some((first.start_ms, last.end_ms))
}

fn ms(d: Duration) -> String {
    format!("{} ms", d.as_millis())
}

fn percent(x: f64) -> String {
    format!("{:.1}%", x * 100.0)
}

/// Judges the verifiers that read the probes; `samples_of` gives a probe's samples by name.
/// `integrity` and `nothing-left` are judged where their facts are (see `super`).
pub fn judge<'a>(
    verifier: &Verifier,
    phases: &[PhaseWindow],
    samples_of: impl Fn(&str) -> &'a [Sample],
) -> Option<Verdict> {
    let end = phases.last().map_or(0, |p| p.end_ms);
    Some(match verifier {
        Verifier::RecoveryTime {
            probe,
            consecutive,
            within,
        } => {
            let name = format!("{probe} recovers after the faults");
            let bound = format!("≤ {} ({consecutive} healthy samples in a row)", ms(*within));
            let Some((_, faults_end)) = fault_span(phases) else {
                return Some(no_faults(verifier.kind(), name, bound));
            };
            let after: Vec<&Sample> = between(samples_of(probe), faults_end, end).collect();
            let n = *consecutive as usize;
            let first = (0..after.len())
                .find(|&i| i + n <= after.len() && after[i..i + n].iter().all(|s| s.ok));
            match first {
                Some(i) => {
                    let took = after[i].at_ms.saturating_sub(faults_end);
                    Verdict {
                        kind: verifier.kind(),
                        name,
                        passed: Duration::from_millis(took) <= *within,
                        measured: format!("{took} ms"),
                        bound,
                    }
                }
                None => Verdict {
                    kind: verifier.kind(),
                    name,
                    passed: false,
                    measured: format!(
                        "not recovered in the {} ms after the faults ({} samples)",
                        end.saturating_sub(faults_end),
                        after.len()
                    ),
                    bound,
                },
            }
        }
        Verifier::HealthRestored { probe, tolerance } => {
            let name = format!("{probe} is as available after the faults as before");
            let Some((faults_start, faults_end)) = fault_span(phases) else {
                let bound = format!("the rate before the faults, less {}", percent(*tolerance));
                return Some(no_faults(verifier.kind(), name, bound));
            };
            let before = Stats::of(between(samples_of(probe), 0, faults_start));
            let after = Stats::of(between(samples_of(probe), faults_end, end));
            let bound = format!(
                "≥ {} (the {} before the faults, less {})",
                percent((before.success_rate - tolerance).max(0.0)),
                percent(before.success_rate),
                percent(*tolerance)
            );
            let (passed, measured) = if before.samples == 0 || after.samples == 0 {
                (
                    false,
                    format!(
                        "no samples {} the faults: add a phase without faults there",
                        if before.samples == 0 {
                            "before"
                        } else {
                            "after"
                        }
                    ),
                )
            } else {
                (
                    after.success_rate >= before.success_rate - tolerance,
                    healthy_share(&after),
                )
            };
            Verdict {
                kind: verifier.kind(),
                name,
                passed,
                measured,
                bound,
            }
        }
        Verifier::FailFast {
            probe,
            phase,
            within,
        } => {
            let window = phases.iter().find(|p| &p.name == phase)?;
            let stats = Stats::of(between(samples_of(probe), window.start_ms, window.end_ms));
            let name = format!("{probe} answers fast during `{phase}`");
            let bound = format!("p99 latency ≤ {}", ms(*within));
            let (passed, measured) = if stats.samples == 0 {
                (false, "no samples in the phase".to_string())
            } else {
                (
                    stats.latency_p99_ms <= within.as_secs_f64() * 1000.0,
                    format!(
                        "p99 {:.1} ms, max {:.1} ms over {} samples ({} healthy)",
                        stats.latency_p99_ms, stats.latency_max_ms, stats.samples, stats.healthy
                    ),
                )
            };
            Verdict {
                kind: verifier.kind(),
                name,
                passed,
                measured,
                bound,
            }
        }
        Verifier::StaysHealthy {
            probe,
            phase,
            min_success,
        } => {
            let (name, from, to) = match phase {
                Some(phase) => {
                    let w = phases.iter().find(|p| &p.name == phase)?;
                    (
                        format!("{probe} stays healthy during `{phase}`"),
                        w.start_ms,
                        w.end_ms,
                    )
                }
                None => {
                    let name = format!("{probe} stays healthy during the faults");
                    match fault_span(phases) {
                        Some((from, to)) => (name, from, to),
                        None => {
                            let bound = format!("≥ {} healthy", percent(*min_success));
                            return Some(no_faults(verifier.kind(), name, bound));
                        }
                    }
                }
            };
            let stats = Stats::of(between(samples_of(probe), from, to));
            let bound = format!("≥ {} healthy", percent(*min_success));
            let (passed, measured) = if stats.samples == 0 {
                (false, "no samples in the window".to_string())
            } else {
                (stats.success_rate >= *min_success, healthy_share(&stats))
            };
            Verdict {
                kind: verifier.kind(),
                name,
                passed,
                measured,
                bound,
            }
        }
        Verifier::Integrity { .. } | Verifier::NothingLeft => return None,
    })
}

/// `75.0% healthy (15 of 20)`.
fn healthy_share(s: &Stats) -> String {
    format!(
        "{} healthy ({} of {})",
        percent(s.success_rate),
        s.healthy,
        s.samples
    )
}

fn no_faults(kind: &'static str, name: String, bound: String) -> Verdict {
    Verdict {
        kind,
        name,
        passed: false,
        measured: "no phase had faults".into(),
        bound,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(at_ms: u64, ok: bool, latency_ms: f64) -> Sample {
        Sample {
            at_ms,
            ok,
            latency_ms,
            error: None,
        }
    }

    fn windows() -> Vec<PhaseWindow> {
        let w = |name: &str, start_ms, end_ms, has_faults| PhaseWindow {
            name: name.into(),
            start_ms,
            end_ms,
            has_faults,
        };
        vec![
            w("baseline", 0, 1000, false),
            w("outage", 1000, 2000, true),
            w("recovery", 2000, 4000, false),
        ]
    }

    /// Healthy before 1000 ms, failing (slowly from 1500) until `back`, healthy after.
    fn samples(back: u64) -> Vec<Sample> {
        (0..40)
            .map(|i| {
                let at = i * 100;
                let ok = !(1000..back).contains(&at);
                sample(at, ok, if ok { 2.0 } else { 300.0 })
            })
            .collect()
    }

    #[test]
    fn percentiles_are_nearest_rank() {
        let s: Vec<Sample> = (1..=100).map(|i| sample(i, true, i as f64)).collect();
        let stats = Stats::of(&s);
        assert_eq!(
            (
                stats.latency_p50_ms,
                stats.latency_p90_ms,
                stats.latency_p99_ms
            ),
            (50.0, 90.0, 99.0)
        );
        assert_eq!(Stats::of(&[]).samples, 0);
    }

    #[test]
    fn recovery_time_counts_from_the_end_of_the_faults() {
        let s = samples(2500);
        let v = Verifier::RecoveryTime {
            probe: "api".into(),
            consecutive: 3,
            within: Duration::from_millis(600),
        };
        let verdict = judge(&v, &windows(), |_| &s).unwrap();
        assert_eq!(verdict.measured, "500 ms");
        assert!(verdict.passed);
        let v = Verifier::RecoveryTime {
            probe: "api".into(),
            consecutive: 3,
            within: Duration::from_millis(400),
        };
        assert!(!judge(&v, &windows(), |_| &s).unwrap().passed);
        let never = samples(9999);
        let verdict = judge(&v, &windows(), |_| &never).unwrap();
        assert!(!verdict.passed && verdict.measured.starts_with("not recovered"));
    }

    #[test]
    fn health_fail_fast_and_stays_healthy_judge_their_windows() {
        let s = samples(2500);
        let restored = Verifier::HealthRestored {
            probe: "api".into(),
            tolerance: 0.05,
        };
        // 5 of 20 samples after the faults still fail: 75% against 100% before.
        let verdict = judge(&restored, &windows(), |_| &s).unwrap();
        assert!(!verdict.passed, "{verdict:?}");
        let fast = Verifier::FailFast {
            probe: "api".into(),
            phase: "outage".into(),
            within: Duration::from_millis(500),
        };
        assert!(judge(&fast, &windows(), |_| &s).unwrap().passed);
        let slow = Verifier::FailFast {
            probe: "api".into(),
            phase: "outage".into(),
            within: Duration::from_millis(100),
        };
        assert!(!judge(&slow, &windows(), |_| &s).unwrap().passed);
        let healthy = Verifier::StaysHealthy {
            probe: "api".into(),
            phase: None,
            min_success: 0.5,
        };
        let verdict = judge(&healthy, &windows(), |_| &s).unwrap();
        assert_eq!(verdict.measured, "0.0% healthy (0 of 10)");
        assert!(!verdict.passed);
    }
}
