//! Scenario files: what an experiment runs, read from TOML and checked before anything starts.
//! Every error names the file, the line and column, and the key. In commands, paths and fault
//! specs, `{dir}` stands for the scenario file's directory and `{tmp}` for a directory of the
//! run's own.

use std::{
    collections::BTreeMap,
    net::{IpAddr, SocketAddr},
    path::{Path, PathBuf},
    time::Duration,
};

use serde::Deserialize;
use toml::Spanned;

use crate::spec::FaultSpec;

/// A duration written as humans write it (`500ms`, `2s`, `1m30s`).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Dur(pub Duration);

/// The longest duration a scenario may give anything.
const MAX_DURATION: Duration = Duration::from_secs(24 * 3600);

impl Dur {
    fn parse(text: &str) -> Result<Dur, String> {
        match humantime::parse_duration(text.trim()) {
            Ok(v) if v > MAX_DURATION => Err(format!("`{text}` is longer than a day (24h)")),
            Ok(v) if !v.is_zero() => Ok(Dur(v)),
            Ok(_) => Err(format!("`{text}`: a duration must be longer than zero")),
            Err(e) => Err(format!(
                "`{text}` is not a duration ({e}); write for example 500ms, 2s or 1m"
            )),
        }
    }
}

impl<'de> Deserialize<'de> for Dur {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Dur, D::Error> {
        Dur::parse(&String::deserialize(d)?).map_err(serde::de::Error::custom)
    }
}

/// The file as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Raw {
    name: Option<String>,
    target: Spanned<RawTarget>,
    #[serde(default)]
    dependencies: BTreeMap<String, Spanned<String>>,
    #[serde(default)]
    services: Vec<Spanned<RawService>>,
    #[serde(default)]
    probes: Vec<Spanned<RawProbe>>,
    #[serde(default)]
    phases: Vec<Spanned<RawPhase>>,
    abort: Option<RawAbort>,
    #[serde(default)]
    verifiers: Vec<Spanned<RawVerifier>>,
    monitor: Option<RawMonitor>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawMonitor {
    interval: Option<Dur>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTarget {
    cgroup: Option<String>,
    command: Option<Vec<String>>,
    ready: Option<Spanned<String>>,
    ready_timeout: Option<Dur>,
    #[serde(default)]
    force: bool,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawService {
    name: String,
    command: Vec<String>,
    ready: Option<Spanned<String>>,
    ready_timeout: Option<Dur>,
    #[serde(default)]
    after_target: bool,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawProbe {
    name: String,
    http: Option<Spanned<String>>,
    tcp: Option<Spanned<String>>,
    command: Option<Vec<String>>,
    status: Option<u16>,
    body: Option<String>,
    timeout: Option<Dur>,
    interval: Option<Dur>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPhase {
    name: String,
    duration: Dur,
    #[serde(default)]
    faults: Vec<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAbort {
    probe: Spanned<String>,
    failure_rate: Spanned<f64>,
    window: Option<Dur>,
}

#[derive(Debug, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case", deny_unknown_fields)]
enum RawVerifier {
    RecoveryTime {
        probe: String,
        consecutive: Option<u32>,
        within: String,
    },
    HealthRestored {
        probe: String,
        tolerance: Option<f64>,
    },
    FailFast {
        probe: String,
        phase: String,
        within: String,
    },
    StaysHealthy {
        probe: String,
        phase: Option<String>,
        min_success: Option<f64>,
    },
    Integrity {
        command: Option<Vec<String>>,
        files: Option<Vec<String>>,
        expect: Option<String>,
        timeout: Option<String>,
    },
    NothingLeft {},
}

/// A checked scenario.
#[derive(Clone, Debug)]
pub struct Scenario {
    pub name: String,
    pub file: PathBuf,
    /// The run's own directory, `{tmp}` in the file: made when the run starts, removed at its
    /// end.
    pub tmp: PathBuf,
    pub target: Target,
    pub services: Vec<Service>,
    pub probes: Vec<Probe>,
    pub phases: Vec<Phase>,
    pub abort: Option<Abort>,
    pub verifiers: Vec<Verifier>,
    /// How often the system and the target are sampled (`[monitor] interval`, 1 s).
    pub monitor_interval: Duration,
}

#[derive(Clone, Debug)]
pub enum TargetKind {
    Cgroup(String),
    Command(Vec<String>),
}

#[derive(Clone, Debug)]
pub struct Target {
    pub kind: TargetKind,
    /// A TCP address that accepts connections once the target is up.
    pub ready: Option<SocketAddr>,
    pub ready_timeout: Duration,
    pub force: bool,
}

/// A process the experiment starts beside the target (outside its cgroup) and stops at the end.
#[derive(Clone, Debug)]
pub struct Service {
    pub name: String,
    pub command: Vec<String>,
    pub ready: Option<SocketAddr>,
    pub ready_timeout: Duration,
    /// Started once the target is ready (a load generator), not before it (a dependency).
    pub after_target: bool,
}

#[derive(Clone, Debug)]
pub enum Check {
    Http {
        url: String,
        status: Option<u16>,
        body: Option<String>,
    },
    Tcp(SocketAddr),
    Command(Vec<String>),
}

#[derive(Clone, Debug)]
pub struct Probe {
    pub name: String,
    pub check: Check,
    pub timeout: Duration,
    pub interval: Duration,
}

#[derive(Clone, Debug)]
pub struct Phase {
    pub name: String,
    pub duration: Duration,
    /// The faults as written (dependencies named) and as parsed.
    pub faults: Vec<(String, FaultSpec)>,
}

#[derive(Clone, Debug)]
pub struct Abort {
    pub probe: String,
    pub failure_rate: f64,
    pub window: Duration,
}

#[derive(Clone, Debug)]
pub enum Verifier {
    RecoveryTime {
        probe: String,
        consecutive: u32,
        within: Duration,
    },
    HealthRestored {
        probe: String,
        tolerance: f64,
    },
    FailFast {
        probe: String,
        phase: String,
        within: Duration,
    },
    StaysHealthy {
        probe: String,
        phase: Option<String>,
        min_success: f64,
    },
    Integrity {
        command: Option<Vec<String>>,
        files: Vec<PathBuf>,
        expect: Option<String>,
        /// How long the command may take (1 min by default).
        timeout: Duration,
    },
    NothingLeft,
}

impl Verifier {
    /// The verifier's kind as the file names it.
    pub fn kind(&self) -> &'static str {
        match self {
            Verifier::RecoveryTime { .. } => "recovery-time",
            Verifier::HealthRestored { .. } => "health-restored",
            Verifier::FailFast { .. } => "fail-fast",
            Verifier::StaysHealthy { .. } => "stays-healthy",
            Verifier::Integrity { .. } => "integrity",
            Verifier::NothingLeft => "nothing-left",
        }
    }
}

/// A scenario that cannot be used, with where in the file.
#[derive(Debug, thiserror::Error)]
#[error("{file}:{line}:{column}: {message}")]
pub struct ScenarioError {
    pub file: String,
    pub line: usize,
    pub column: usize,
    pub message: String,
}

impl crate::error::Classify for ScenarioError {
    fn class(&self) -> crate::error::Class {
        crate::error::Class::BadInput
    }
}

/// Reads and checks a scenario file.
pub fn load(file: &Path) -> anyhow::Result<Scenario> {
    let text = std::fs::read_to_string(file).map_err(|e| crate::error::UsageError {
        message: format!("cannot read scenario {}: {e}", file.display()),
        hint: None,
    })?;
    Ok(parse(file, &text)?)
}

/// Checks a scenario given as text; `file` names it in errors and anchors `{dir}`.
pub fn parse(file: &Path, text: &str) -> Result<Scenario, ScenarioError> {
    let at = |span: std::ops::Range<usize>, message: String| {
        let before = &text[..span.start.min(text.len())];
        let line = before.matches('\n').count() + 1;
        let column = before.len() - before.rfind('\n').map_or(0, |i| i + 1) + 1;
        ScenarioError {
            file: crate::spec::printable(&file.display().to_string()),
            line,
            column,
            message: crate::spec::printable(&message),
        }
    };
    let raw: Raw = toml::from_str(text).map_err(|e| {
        let span = e.span().unwrap_or(0..0);
        let message = e.message().trim().to_string();
        // Name the key written on the line, when the message does not.
        let line = text[..span.start.min(text.len())]
            .rsplit('\n')
            .next()
            .unwrap_or("");
        let key = line.split_once('=').map(|(k, _)| k.trim()).filter(|k| {
            !k.is_empty() && !k.starts_with('[') && !message.contains(&format!("`{k}`"))
        });
        match key {
            Some(k) => at(span, format!("{k}: {message}")),
            None => at(span, message),
        }
    })?;

    let dir = file
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let dir = std::path::absolute(dir).unwrap_or_else(|_| dir.to_path_buf());
    let tmp = std::env::temp_dir().join(format!("chaos-experiment-{}", std::process::id()));
    let expand = |s: &str| {
        s.replace("{dir}", &dir.to_string_lossy())
            .replace("{tmp}", &tmp.to_string_lossy())
    };
    let expand_all = |v: &[String]| v.iter().map(|s| expand(s)).collect::<Vec<_>>();
    let addr = |s: &Spanned<String>, key: &str| {
        s.get_ref().parse::<SocketAddr>().map_err(|_| {
            at(
                s.span(),
                format!(
                    "{key}: `{}` is not an address and port (such as 127.0.0.1:8080)",
                    s.get_ref()
                ),
            )
        })
    };
    let nonempty = |v: &Option<Vec<String>>, span: std::ops::Range<usize>, key: &str| match v {
        Some(v) if v.is_empty() || v[0].is_empty() => {
            Err(at(span, format!("{key}: the command is empty")))
        }
        _ => Ok(()),
    }; // Names show in summaries, metrics labels and file names: one line of printable text.
    let named = |name: &str, span: std::ops::Range<usize>, what: &str| {
        if name.trim().is_empty() || name.chars().any(char::is_control) {
            Err(at(
                span,
                format!(
                    "{what}: the name `{}` is empty or has control characters",
                    name.escape_debug()
                ),
            ))
        } else {
            Ok(())
        }
    };
    // A program missing now is bad input; one under {tmp} is made by the run itself.
    let tmp_text = tmp.to_string_lossy().into_owned();
    let runnable = |argv: &[String], span: std::ops::Range<usize>, key: &str| {
        if argv[0].contains(&tmp_text) {
            return Ok(());
        }
        match crate::program::find(std::ffi::OsStr::new(&argv[0])) {
            Ok(_) => Ok(()),
            Err(126) => Err(at(span, format!("{key}: `{}` is not executable", argv[0]))),
            Err(_) => Err(at(
                span,
                format!(
                    "{key}: there is no program `{}` (in PATH, or at that path)",
                    argv[0]
                ),
            )),
        }
    };
    const READY_TIMEOUT: Duration = Duration::from_secs(10);
    let target_span = raw.target.span();
    let rt = raw.target.into_inner();
    nonempty(&rt.command, target_span.clone(), "target.command")?;
    let kind = match (rt.cgroup, rt.command) {
        (Some(c), None) => TargetKind::Cgroup(c),
        (None, Some(cmd)) => {
            let cmd = expand_all(&cmd);
            runnable(&cmd, target_span.clone(), "target.command")?;
            TargetKind::Command(cmd)
        }
        _ => {
            return Err(at(
                target_span,
                "target: give one of `cgroup` (an existing cgroup) or `command` (started in a \
                 fresh cgroup)"
                    .into(),
            ));
        }
    };
    let target = Target {
        kind,
        ready: rt
            .ready
            .as_ref()
            .map(|r| addr(r, "target.ready"))
            .transpose()?,
        ready_timeout: rt.ready_timeout.map_or(READY_TIMEOUT, |d| d.0),
        force: rt.force,
    };

    let mut dependencies = BTreeMap::new();
    for (name, value) in &raw.dependencies {
        named(name, value.span(), "dependencies")?;
        let v = value.get_ref();
        let parsed = v
            .parse::<SocketAddr>()
            .map(|a| (a.ip(), Some(a.port())))
            .or_else(|_| v.parse::<IpAddr>().map(|ip| (ip, None)))
            .map_err(|_| {
                at(
                    value.span(),
                    format!(
                        "dependencies.{name}: `{v}` is not an address (such as 127.0.0.1:5432 or \
                         ::1)"
                    ),
                )
            })?;
        dependencies.insert(name.clone(), parsed);
    }

    let mut services = Vec::new();
    for s in &raw.services {
        let span = s.span();
        let s = s.get_ref();
        named(&s.name, span.clone(), "services")?;
        if s.command.is_empty() || s.command[0].is_empty() {
            return Err(at(
                span,
                format!("services `{}`: the command is empty", s.name),
            ));
        }
        runnable(
            &expand_all(&s.command),
            span.clone(),
            &format!("services `{}`", s.name),
        )?;
        if services.iter().any(|o: &Service| o.name == s.name) {
            return Err(at(span, format!("services: `{}` is named twice", s.name)));
        }
        services.push(Service {
            name: s.name.clone(),
            command: expand_all(&s.command),
            ready: s
                .ready
                .as_ref()
                .map(|r| addr(r, "services.ready"))
                .transpose()?,
            ready_timeout: s.ready_timeout.map_or(READY_TIMEOUT, |d| d.0),
            after_target: s.after_target,
        });
    }

    let mut probes: Vec<Probe> = Vec::new();
    for p in &raw.probes {
        let span = p.span();
        let p = p.get_ref();
        named(&p.name, span.clone(), "probes")?;
        if probes.iter().any(|o| o.name == p.name) {
            return Err(at(span, format!("probes: `{}` is named twice", p.name)));
        }
        nonempty(&p.command, span.clone(), "probes.command")?;
        let check = match (&p.http, &p.tcp, &p.command) {
            (Some(url), None, None) => {
                let parsed = url.get_ref().parse::<ureq::http::Uri>().ok();
                let host = parsed.as_ref().and_then(|u| u.host()).unwrap_or(""); // The port as written: the parser takes any digits.
                let port_ok = parsed.as_ref().and_then(|u| u.authority()).is_none_or(|a| {
                    match a.as_str().rsplit_once(':') {
                        Some((_, port)) if !port.contains(']') => {
                            port.parse::<u16>().is_ok_and(|n| n > 0)
                        }
                        _ => true,
                    }
                });
                let scheme_ok = parsed.as_ref().and_then(|u| u.scheme_str()) == Some("http");
                if !scheme_ok || host.is_empty() || !port_ok {
                    return Err(at(
                        url.span(),
                        format!(
                            "probes `{}`: http: `{}` is not an http:// URL with a host and a port \
                             up to 65535",
                            p.name,
                            url.get_ref()
                        ),
                    ));
                }
                if let Some(st) = p.status.filter(|st| !(100..=599).contains(st)) {
                    return Err(at(
                        span,
                        format!(
                            "probes `{}`: status: {st} is not an HTTP status (100 to 599)",
                            p.name
                        ),
                    ));
                }
                Check::Http {
                    url: url.get_ref().clone(),
                    status: p.status,
                    body: p.body.clone(),
                }
            }
            (None, Some(tcp), None) => Check::Tcp(addr(tcp, "probes.tcp")?),
            (None, None, Some(cmd)) => {
                let cmd = expand_all(cmd);
                runnable(&cmd, span.clone(), &format!("probes `{}`", p.name))?;
                Check::Command(cmd)
            }
            _ => {
                return Err(at(
                    span,
                    format!(
                        "probes `{}`: give one of `http` (a URL), `tcp` (an address) or \
                         `command`",
                        p.name
                    ),
                ));
            }
        };
        if (p.status.is_some() || p.body.is_some()) && !matches!(check, Check::Http { .. }) {
            return Err(at(
                span,
                format!(
                    "probes `{}`: `status` and `body` are for http probes",
                    p.name
                ),
            ));
        }
        probes.push(Probe {
            name: p.name.clone(),
            check,
            timeout: p.timeout.map_or(Duration::from_secs(1), |d| d.0),
            interval: p.interval.map_or(Duration::from_millis(250), |d| d.0),
        });
    }

    if raw.phases.is_empty() {
        return Err(at(
            0..0,
            "no [[phases]]: give at least one, for example a baseline, a phase with faults and \
             a recovery"
                .into(),
        ));
    }
    let mut phases: Vec<Phase> = Vec::new();
    for ph in &raw.phases {
        let span = ph.span();
        let ph = ph.get_ref();
        named(&ph.name, span.clone(), "phases")?;
        if phases.iter().any(|o| o.name == ph.name) {
            return Err(at(span, format!("phases: `{}` is named twice", ph.name)));
        }
        let mut faults = Vec::new();
        for f in &ph.faults {
            let written = f.get_ref();
            let text = with_dependencies(written, &dependencies)
                .map_err(|m| at(f.span(), format!("phases `{}`: {m}", ph.name)))?;
            let spec: FaultSpec = expand(&text)
                .parse()
                .map_err(|e| at(f.span(), format!("phases `{}`: {e}", ph.name)))?;
            faults.push((written.clone(), spec));
        }
        // What one session can hold, for each phase alone.
        let specs: Vec<FaultSpec> = faults.iter().map(|(_, f)| f.clone()).collect();
        crate::session::Plan::dry(&specs)
            .map_err(|e| at(span.clone(), format!("phases `{}`: {e}", ph.name)))?;
        phases.push(Phase {
            name: ph.name.clone(),
            duration: ph.duration.0,
            faults,
        });
    }

    let probe_named = |name: &str, span: std::ops::Range<usize>, key: &str| {
        if probes.iter().any(|p| p.name == name) {
            Ok(name.to_string())
        } else {
            Err(at(span, format!("{key}: there is no probe named `{name}`")))
        }
    };
    let phase_named = |name: &str, span: std::ops::Range<usize>, key: &str| {
        if phases.iter().any(|p| p.name == name) {
            Ok(name.to_string())
        } else {
            Err(at(span, format!("{key}: there is no phase named `{name}`")))
        }
    };

    let abort = match raw.abort {
        None => None,
        Some(a) => {
            let rate = *a.failure_rate.get_ref();
            if !(rate > 0.0 && rate <= 1.0) {
                return Err(at(
                    a.failure_rate.span(),
                    format!("abort.failure_rate: {rate} is not in (0, 1]"),
                ));
            }
            let probe = probe_named(a.probe.get_ref(), a.probe.span(), "abort.probe")?;
            let window = a.window.map_or(Duration::from_secs(2), |d| d.0);
            let interval = probes
                .iter()
                .find(|p| p.name == probe)
                .map_or(Duration::ZERO, |p| p.interval);
            if window < interval * 2 {
                return Err(at(
                    a.probe.span(),
                    format!(
                        "abort.window: {} holds fewer than two samples of `{probe}` (one every \
                         {}); make it at least {}",
                        humantime::format_duration(window),
                        humantime::format_duration(interval),
                        humantime::format_duration(interval * 2)
                    ),
                ));
            }
            Some(Abort {
                probe,
                failure_rate: rate,
                window,
            })
        }
    };

    let share = |v: Option<f64>, default: f64, span: std::ops::Range<usize>, key: &str| {
        let v = v.unwrap_or(default);
        if (0.0..=1.0).contains(&v) {
            Ok(v)
        } else {
            Err(at(span, format!("{key}: {v} is not between 0 and 1")))
        }
    }; // Verifiers that compare with what came before or after the faults need those phases.
    let first_fault = phases.iter().position(|p| !p.faults.is_empty());
    let last_fault = phases.iter().rposition(|p| !p.faults.is_empty());
    let around_faults =
        |span: std::ops::Range<usize>, kind: &str, before: bool| match (first_fault, last_fault) {
            (Some(first), Some(last)) => {
                if before && first == 0 {
                    Err(at(
                        span,
                        format!(
                            "{kind}: needs a phase without faults before the first with faults"
                        ),
                    ))
                } else if last + 1 == phases.len() {
                    Err(at(
                        span,
                        format!("{kind}: needs a phase without faults after the last with faults"),
                    ))
                } else {
                    Ok(())
                }
            }
            _ => Err(at(span, format!("{kind}: no phase has faults"))),
        };
    let mut verifiers = Vec::new();
    for v in &raw.verifiers {
        let span = v.span();
        let within = |text: &str, key: &str| {
            Dur::parse(text)
                .map(|d| d.0)
                .map_err(|m| at(span.clone(), format!("{key}: {m}")))
        };
        verifiers.push(match v.get_ref() {
            RawVerifier::RecoveryTime {
                probe,
                consecutive,
                within: within_text,
            } => {
                if *consecutive == Some(0) {
                    return Err(at(span, "recovery-time.consecutive: at least 1".into()));
                }
                around_faults(span.clone(), "recovery-time", false)?;
                Verifier::RecoveryTime {
                    probe: probe_named(probe, span.clone(), "recovery-time.probe")?,
                    consecutive: consecutive.unwrap_or(3),
                    within: within(within_text, "recovery-time.within")?,
                }
            }
            RawVerifier::HealthRestored { probe, tolerance } => {
                around_faults(span.clone(), "health-restored", true)?;
                Verifier::HealthRestored {
                    probe: probe_named(probe, span.clone(), "health-restored.probe")?,
                    tolerance: share(*tolerance, 0.05, span, "health-restored.tolerance")?,
                }
            }
            RawVerifier::FailFast {
                probe,
                phase,
                within: within_text,
            } => Verifier::FailFast {
                probe: probe_named(probe, span.clone(), "fail-fast.probe")?,
                phase: phase_named(phase, span.clone(), "fail-fast.phase")?,
                within: within(within_text, "fail-fast.within")?,
            },
            RawVerifier::StaysHealthy {
                probe,
                phase,
                min_success,
            } => Verifier::StaysHealthy {
                probe: probe_named(probe, span.clone(), "stays-healthy.probe")?,
                phase: phase
                    .as_ref()
                    .map(|p| phase_named(p, span.clone(), "stays-healthy.phase"))
                    .transpose()?,
                min_success: share(*min_success, 0.99, span, "stays-healthy.min_success")?,
            },
            RawVerifier::Integrity {
                command,
                files,
                expect,
                timeout,
            } => {
                nonempty(command, span.clone(), "integrity.command")?;
                if expect.is_some() && command.is_none() {
                    return Err(at(
                        span,
                        "integrity.expect: is what `command` prints; give the command".into(),
                    ));
                }
                if let Some(cmd) = command {
                    runnable(&expand_all(cmd), span.clone(), "integrity.command")?;
                }
                let files: Vec<PathBuf> = files
                    .iter()
                    .flatten()
                    .map(|f| PathBuf::from(expand(f)))
                    .collect();
                if command.is_none() && files.is_empty() {
                    return Err(at(
                        span,
                        "integrity: give `command` (exit 0 means intact), `files` (their \
                         checksums must not change), or both"
                            .into(),
                    ));
                }
                Verifier::Integrity {
                    command: command.as_deref().map(expand_all),
                    files,
                    expect: expect.clone(),
                    timeout: match timeout {
                        Some(t) => within(t, "integrity.timeout")?,
                        None => Duration::from_secs(60),
                    },
                }
            }
            RawVerifier::NothingLeft {} => Verifier::NothingLeft,
        });
    }

    let name = raw.name.unwrap_or_else(|| {
        file.file_stem()
            .map_or("experiment".into(), |s| s.to_string_lossy().into_owned())
    });
    Ok(Scenario {
        name,
        file: file.to_path_buf(),
        tmp: tmp.clone(),
        target,
        services,
        probes,
        phases,
        abort,
        verifiers,
        monitor_interval: raw
            .monitor
            .and_then(|m| m.interval)
            .map_or(Duration::from_secs(1), |d| d.0),
    })
}

/// Puts the address of `dep=NAME` in a fault spec: `dst=IP` and, with a port, `dport=PORT`.
fn with_dependencies(
    spec: &str,
    dependencies: &BTreeMap<String, (IpAddr, Option<u16>)>,
) -> Result<String, String> {
    let Some((kind, keys)) = spec.split_once(':') else {
        return Ok(spec.to_string());
    };
    let mut out = Vec::new();
    let count = |key: &str| {
        keys.split(',')
            .filter(|p| p.split_once('=').is_some_and(|(k, _)| k.trim() == key))
            .count()
    };
    if count("dep") == 0 {
        return Ok(spec.to_string());
    }
    if !crate::spec::keys_of(kind.trim()).contains(&"dst") {
        return Err(format!(
            "`{spec}`: dep= stands for dst= (and dport=), which `{}` does not take",
            kind.trim()
        ));
    }
    if count("dep") > 1 {
        return Err(format!(
            "`{spec}`: dep= given twice; one dependency per fault"
        ));
    }
    if count("dst") + count("dport") > 0 {
        return Err(format!(
            "`{spec}`: dep= stands for dst= and dport=; give either, not both"
        ));
    }
    for pair in keys.split(',') {
        match pair.split_once('=').map(|(k, v)| (k.trim(), v)) {
            Some(("dep", name)) => {
                let Some((ip, port)) = dependencies.get(name.trim()) else {
                    let known: Vec<&str> = dependencies.keys().map(String::as_str).collect();
                    return Err(if known.is_empty() {
                        format!("`{spec}`: dep={name}, but there is no [dependencies] table")
                    } else {
                        format!(
                            "`{spec}`: there is no dependency named `{name}` (there are: {})",
                            known.join(", ")
                        )
                    });
                };
                out.push(format!("dst={ip}"));
                if let Some(port) = port {
                    out.push(format!("dport={port}"));
                }
            }
            _ => out.push(pair.to_string()),
        }
    }
    Ok(format!("{kind}:{}", out.join(",")))
}

#[cfg(test)]
mod tests;
