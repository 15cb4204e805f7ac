//! Experiments: a target, probes sampling it all along, phases of faults, verifiers at the end,
//! and a record of the whole run.

pub mod metrics;
pub mod monitor;
pub mod probe;
pub mod record;
pub mod scenario;
pub mod verify;

use std::{
    os::unix::process::CommandExt as _,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result};
use serde::Serialize;
use sha2::Digest as _;

use crate::{
    cgroup::{self, Cgroup},
    report::{EndReason, Report},
    session::{Deadline, Session, TICK},
    undo::{Entry, UndoLog},
};
use scenario::{Scenario, TargetKind, Verifier};
use verify::Verdict;

/// When a phase began and ended, in milliseconds since the experiment started.
#[derive(Clone, Debug, Serialize)]
pub struct PhaseWindow {
    pub name: String,
    pub start_ms: u64,
    pub end_ms: u64,
    pub has_faults: bool,
}

/// Why an experiment stopped before its last phase ended.
#[derive(Clone, Debug, Serialize)]
pub struct Aborted {
    pub phase: String,
    pub reason: String,
}

/// The caller's part in a run: it says when a signal ends the experiment early, and hears
/// when each phase starts.
pub trait Observer {
    fn interrupted(&mut self) -> bool;
    /// Phase `index` (from 0) has its faults on and starts now.
    fn phase_started(&mut self, index: usize, phase: &scenario::Phase);
    /// How the run stands, every half second: the phase, the time left, live counters.
    fn progress(&mut self, line: &str);
    /// Checks one phase's faults against this machine before anything starts (paths that
    /// must exist, a file to damage), once the run's own directory exists.
    fn check(&mut self, faults: &[crate::spec::FaultSpec]) -> Result<()>;
}

/// Runs a checked scenario to its end; the record says what happened. Nothing of the
/// experiment's stays behind, whatever path leads out.
pub fn run(
    scenario: &Scenario,
    observer: &mut dyn Observer,
    metrics: Option<&metrics::Metrics>,
) -> Result<record::Record> {
    let mut undo = UndoLog::new()?;
    let mut started = Started::default();
    let dir = Entry::RunDir {
        path: scenario.tmp.clone(),
    };
    undo.push(dir.clone())?;
    if let Err(e) = std::fs::create_dir(&scenario.tmp) {
        undo.forget(&dir)?;
        return Err(e).with_context(|| format!("create {}", scenario.tmp.display()));
    }
    let result = run_with(scenario, observer, metrics, &mut undo, &mut started);
    let stopped = started.stop(&mut undo);
    // The run's own directory goes last, with the logs in it.
    undo.undo_where(|e| e != &dir)?;
    undo.undo(&dir)?;
    let record = result?;
    stopped?;
    Ok(record)
}

/// The processes the experiment started and the cgroups it made for them, to stop and remove
/// at the end: the target command in its cgroup, the services in another.
#[derive(Default)]
struct Started {
    services: Vec<(String, Child)>,
    services_cgroup: Option<(PathBuf, Entry)>,
    target: Option<Child>,
    cgroup: Option<(PathBuf, Entry)>,
}

impl Started {
    fn stop(&mut self, undo: &mut UndoLog) -> Result<()> {
        if let Some(child) = &mut self.target {
            stop_child(child);
        }
        if let Some((path, entry)) = &self.cgroup {
            // What the target command left in its cgroup goes with it.
            cgroup::empty(path, Duration::from_secs(5));
            undo.undo(entry)?;
        }
        for (_, child) in &mut self.services {
            stop_child(child);
        }
        if let Some((path, entry)) = &self.services_cgroup {
            cgroup::empty(path, Duration::from_secs(5));
            undo.undo(entry)?;
        }
        Ok(())
    }

    /// Why the run cannot go on: the target command's cgroup is empty, or a service exited.
    fn gone(&mut self, tmp: &Path) -> Option<String> {
        if let (Some(child), Some((path, _))) = (&mut self.target, &self.cgroup) {
            if cgroup::processes_below(path).is_empty() {
                let status = child
                    .try_wait()
                    .ok()
                    .flatten()
                    .map_or_else(String::new, |s| format!(" ({s})"));
                return Some(format!(
                    "the target command exited{status}{}",
                    last_words(tmp, "target")
                ));
            }
        }
        for (name, child) in &mut self.services {
            if let Ok(Some(status)) = child.try_wait() {
                return Some(format!(
                    "service `{name}` exited ({status}){}",
                    last_words(tmp, name)
                ));
            }
        }
        None
    }
}

/// The last line a started command wrote, from its log in the run's directory.
fn last_words(tmp: &Path, name: &str) -> String {
    std::fs::read_to_string(log_file(tmp, name))
        .ok()
        .and_then(|t| {
            t.lines()
                .rev()
                .find(|l| !l.trim().is_empty())
                .map(str::to_string)
        })
        .map_or_else(String::new, |l| format!("; its last words: {}", l.trim()))
}

/// Where the output of the target command or of a service goes.
fn log_file(tmp: &Path, name: &str) -> PathBuf {
    let safe: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' {
                c
            } else {
                '_'
            }
        })
        .collect();
    tmp.join(format!("{safe}.log"))
}

/// SIGTERM, then SIGKILL after 5 s, to a child of ours, and reaps it.
fn stop_child(child: &mut Child) {
    if matches!(child.try_wait(), Ok(Some(_))) {
        return;
    }
    // SAFETY: kill(2) on the PID of our own child, not yet reaped.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline {
        if matches!(child.try_wait(), Ok(Some(_))) {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _killed = child.kill();
    let _reaped = child.wait();
}

/// Starts a command in a cgroup the experiment made, its output in `log`; it gets SIGTERM
/// if chaos-user dies, and `recover` kills what is left of it.
fn spawn(argv: &[String], join: &cgroup::JoinOnStart, log: &Path) -> Result<Child> {
    let out = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .with_context(|| format!("open {}", log.display()))?;
    let mut cmd = Command::new(&argv[0]);
    cmd.args(&argv[1..])
        .stdin(Stdio::null())
        .stdout(out.try_clone()?)
        .stderr(out);
    let hook = join.hook();
    // SAFETY: runs between fork and exec and only calls write(2) (in the hook) and prctl(2).
    unsafe {
        cmd.pre_exec(move || {
            hook()?;
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    cmd.spawn().with_context(|| format!("start {}", argv[0]))
}

/// Waits until `addr` accepts connections; fails when `what` exits first, the time is up,
/// or a signal comes.
fn wait_ready(
    what: &str,
    child: Option<&mut Child>,
    addr: std::net::SocketAddr,
    timeout: Duration,
    observer: &mut dyn Observer,
    tmp: &Path,
    log: &str,
) -> Result<()> {
    let deadline = Instant::now() + timeout;
    let mut child = child;
    loop {
        if probe::connects(addr) {
            return Ok(());
        }
        if let Some(status) = child.as_mut().and_then(|c| c.try_wait().ok().flatten()) {
            anyhow::bail!(
                "{what} exited ({status}) before it accepted connections on {addr}{}",
                last_words(tmp, log)
            );
        }
        if observer.interrupted() {
            anyhow::bail!("interrupted while waiting for {what} to accept connections on {addr}");
        }
        if Instant::now() >= deadline {
            anyhow::bail!(
                "{what} did not accept connections on {addr} within {}{}",
                humantime::format_duration(timeout),
                last_words(tmp, log)
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Starts the services that come before the target (`after_target` false) or after it, in
/// the cgroup of the experiment's services, each waited for when it has `ready`.
fn start_services(
    scenario: &Scenario,
    after_target: bool,
    mount: &Path,
    undo: &mut UndoLog,
    started: &mut Started,
    observer: &mut dyn Observer,
) -> Result<()> {
    for service in scenario
        .services
        .iter()
        .filter(|s| s.after_target == after_target)
    {
        if started.services_cgroup.is_none() {
            let (group, entry) = cgroup::make_run_cgroup(mount, undo, "-services", true)?;
            started.services_cgroup = Some((group.path.clone(), entry));
        }
        let group = started
            .services_cgroup
            .as_ref()
            .map(|(p, _)| p.clone())
            .expect("made above");
        let join = cgroup::JoinOnStart::new(&group, &[])?;
        let log = log_file(&scenario.tmp, &service.name);
        let child = spawn(&service.command, &join, &log)
            .with_context(|| format!("service `{}`", service.name))?;
        started.services.push((service.name.clone(), child));
        if let Some(addr) = service.ready {
            let child = started.services.last_mut().map(|(_, c)| c);
            wait_ready(
                &format!("service `{}`", service.name),
                child,
                addr,
                service.ready_timeout,
                observer,
                &scenario.tmp,
                &service.name,
            )?;
        }
    }
    Ok(())
}

/// SHA-256 of a file, in hex; None when it cannot be read.
fn checksum(path: &Path) -> Option<String> {
    let bytes = std::fs::read(path).ok()?;
    Some(
        sha2::Sha256::digest(&bytes)
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect(),
    )
}

fn run_with(
    scenario: &Scenario,
    observer: &mut dyn Observer,
    metrics: Option<&metrics::Metrics>,
    undo: &mut UndoLog,
    started: &mut Started,
) -> Result<record::Record> {
    let started_at = std::time::SystemTime::now();
    // Checksums of the files an integrity verifier watches, before anything happens.
    let before: Vec<Vec<(PathBuf, Option<String>)>> = scenario
        .verifiers
        .iter()
        .map(|v| match v {
            Verifier::Integrity { files, .. } => {
                files.iter().map(|f| (f.clone(), checksum(f))).collect()
            }
            _ => Vec::new(),
        })
        .collect();

    for phase in &scenario.phases {
        let faults: Vec<_> = phase.faults.iter().map(|(_, f)| f.clone()).collect();
        observer
            .check(&faults)
            .with_context(|| format!("phase `{}`", phase.name))?;
    }
    let mount = cgroup::mount_point()?;
    if let TargetKind::Cgroup(name) = &scenario.target.kind {
        let target = Cgroup::resolve(&mount, name).context("target.cgroup")?;
        cgroup::check_guardrails(&mount, &target, scenario.target.force)
            .context("target.cgroup (`force = true` in [target] allows it)")?;
    }
    start_services(scenario, false, &mount, undo, started, observer)?;
    let target = match &scenario.target.kind {
        TargetKind::Cgroup(name) => Cgroup::resolve(&mount, name).context("target.cgroup")?,
        TargetKind::Command(argv) => {
            let (cgroup, entry) = cgroup::make_run_cgroup(&mount, undo, "", true)?;
            started.cgroup = Some((cgroup.path.clone(), entry));
            let join = cgroup::JoinOnStart::new(&cgroup.path, &[])?;
            let log = log_file(&scenario.tmp, "target");
            started.target = Some(spawn(argv, &join, &log).context("target.command")?);
            cgroup
        }
    };
    if let Some(addr) = scenario.target.ready {
        wait_ready(
            "the target",
            started.target.as_mut(),
            addr,
            scenario.target.ready_timeout,
            observer,
            &scenario.tmp,
            "target",
        )?;
    }
    start_services(scenario, true, &mount, undo, started, observer)?;
    if let Some(why) = started.gone(&scenario.tmp) {
        anyhow::bail!("{why}, before the first phase");
    }

    let zero = Instant::now();
    let since = |t: Instant| t.duration_since(zero).as_millis() as u64;
    let current = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
    let probes = probe::Probes::start(&scenario.probes, zero, metrics.cloned(), current.clone())?;
    let monitor = monitor::Monitor::start(
        target.clone(),
        zero,
        scenario.monitor_interval,
        metrics.cloned(),
    )?;
    let mut windows: Vec<PhaseWindow> = Vec::new();
    let mut sessions: Vec<Option<Report>> = Vec::new();
    let mut aborted: Option<Aborted> = None;
    let abort_probe = scenario
        .abort
        .as_ref()
        .and_then(|a| scenario.probes.iter().position(|p| p.name == a.probe));

    for (index, phase) in scenario.phases.iter().enumerate() {
        let faults: Vec<_> = phase.faults.iter().map(|(_, f)| f.clone()).collect();
        if let Ok(mut c) = current.lock() {
            c.clone_from(&phase.name);
        }
        let mut session = if faults.is_empty() {
            None
        } else {
            log::info!("phase `{}`: {} fault(s)", phase.name, faults.len());
            Some(
                Session::start(
                    Some(target.clone()),
                    faults,
                    // Renewed each tick and ended by the stop at the phase's end, so that the
                    // faults last exactly as long as the phase's window.
                    Deadline::Lease,
                    undo,
                )
                .with_context(|| format!("phase `{}`", phase.name))?,
            )
        };
        // The phase starts when its faults are on: loading programs takes a while.
        observer.phase_started(index, phase);
        if let Some(m) = metrics {
            let previous = index
                .checked_sub(1)
                .map(|i| scenario.phases[i].name.as_str());
            m.phase(previous, &phase.name);
        }
        let mut next_progress = Instant::now();
        let begin = Instant::now();
        let end = begin + phase.duration;
        let mut next_tick = begin + TICK;
        let mut reason = EndReason::Duration;
        while Instant::now() < end {
            std::thread::sleep(Duration::from_millis(20).min(end - Instant::now()));
            if observer.interrupted() {
                aborted = Some(Aborted {
                    phase: phase.name.clone(),
                    reason: "interrupted by a signal".into(),
                });
                reason = EndReason::Signal;
                break;
            }
            if !target.exists() {
                aborted = Some(Aborted {
                    phase: phase.name.clone(),
                    reason: format!("the target cgroup {} was removed", target.name),
                });
                reason = EndReason::TargetGone;
                break;
            }
            if let Some(why) = started.gone(&scenario.tmp) {
                aborted = Some(Aborted {
                    phase: phase.name.clone(),
                    reason: why,
                });
                reason = EndReason::Aborted;
                break;
            }
            if let (Some(a), Some(i)) = (&scenario.abort, abort_probe) {
                let now = since(Instant::now());
                let recent = probes.samples(i);
                let from = now.saturating_sub(a.window.as_millis() as u64);
                let stats = verify::Stats::of(verify::between(&recent, from, u64::MAX));
                // Two samples at least, so that one failure alone never ends a run.
                if stats.samples >= 2 && 1.0 - stats.success_rate >= a.failure_rate {
                    aborted = Some(Aborted {
                        phase: phase.name.clone(),
                        reason: format!(
                            "probe `{}` failed {:.0}% of {} samples in the last {} (abort at \
                             {:.0}%)",
                            a.probe,
                            (1.0 - stats.success_rate) * 100.0,
                            stats.samples,
                            humantime::format_duration(a.window),
                            a.failure_rate * 100.0
                        ),
                    });
                    reason = EndReason::Aborted;
                    break;
                }
            }
            if Instant::now() >= next_progress {
                next_progress += Duration::from_millis(500);
                let reports = match &session {
                    Some(s) => s.fault_reports()?,
                    None => Vec::new(),
                };
                if let Some(m) = metrics {
                    m.faults(&phase.name, &reports);
                }
                observer.progress(&progress_line(
                    scenario,
                    index,
                    end.saturating_duration_since(Instant::now()),
                    &probes,
                    &reports,
                ));
            }
            if let Some(s) = session.as_mut() {
                if Instant::now() >= next_tick {
                    next_tick += TICK;
                    s.tick(undo)?;
                }
                if s.next_due().is_some_and(|d| d <= Instant::now()) {
                    s.due()?;
                }
            }
        }
        let report = match session.take() {
            Some(s) => {
                let record = s.stop(undo)?;
                if let Some(m) = metrics {
                    m.faults(&phase.name, &record.faults);
                }
                Some(Report::new(
                    "experiment",
                    Some(target.clone()),
                    record,
                    reason,
                ))
            }
            None => None,
        };
        windows.push(PhaseWindow {
            name: phase.name.clone(),
            start_ms: since(begin),
            end_ms: since(Instant::now()),
            has_faults: !phase.faults.is_empty(),
        });
        sessions.push(report);
        if aborted.is_some() {
            break;
        }
    }
    let samples = probes.stop();
    let monitored = monitor.stop();

    let mut verdicts: Vec<Verdict> = Vec::new();
    for (i, verifier) in scenario.verifiers.iter().enumerate() {
        let samples_of = |name: &str| -> &[probe::Sample] {
            scenario
                .probes
                .iter()
                .position(|p| p.name == name)
                .map_or(&[][..], |i| &samples[i][..])
        };
        if let Some(v) = verify::judge(verifier, &windows, samples_of) {
            verdicts.push(v);
            continue;
        }
        match verifier {
            Verifier::Integrity {
                command,
                expect,
                timeout,
                ..
            } => verdicts.push(integrity(
                command.as_deref(),
                expect.as_deref(),
                *timeout,
                &before[i],
                observer,
            )),
            Verifier::NothingLeft => verdicts.push(nothing_left(undo, started)),
            _ => {}
        }
    }

    Ok(record::Record::new(
        scenario, target, started_at, windows, sessions, samples, monitored, verdicts, aborted,
    ))
}

/// The progress line: the phase, the time left, each probe's health in the last 2 s, and what
/// each fault injected so far.
fn progress_line(
    scenario: &Scenario,
    index: usize,
    left: Duration,
    probes: &probe::Probes,
    reports: &[crate::report::FaultReport],
) -> String {
    let phase = &scenario.phases[index];
    let mut parts = vec![format!(
        "phase {}/{} `{}`: {:.1}s left",
        index + 1,
        scenario.phases.len(),
        phase.name,
        left.as_secs_f64()
    )];
    for (i, p) in scenario.probes.iter().enumerate() {
        let samples = probes.samples(i);
        let now = samples.last().map_or(0, |s| s.at_ms);
        let recent = verify::Stats::of(verify::between(
            &samples,
            now.saturating_sub(2000),
            u64::MAX,
        ));
        if recent.samples > 0 {
            parts.push(format!(
                "{} {:.0}% healthy",
                p.name,
                recent.success_rate * 100.0
            ));
        }
    }
    for r in reports {
        for (place, c) in &r.counters {
            parts.push(format!(
                "{} {} {place} injected",
                r.fault.kind(),
                c.injected
            ));
        }
    }
    parts.join("; ")
}

/// The integrity verifier: the command exits 0 (with `expect` in its output) and the files'
/// checksums are those from before the experiment.
fn integrity(
    command: Option<&[String]>,
    expect: Option<&str>,
    timeout: Duration,
    before: &[(PathBuf, Option<String>)],
    observer: &mut dyn Observer,
) -> Verdict {
    let mut problems = Vec::new();
    let mut checked = Vec::new();
    for (file, sum) in before {
        checked.push(file.display().to_string());
        match (sum, checksum(file)) {
            (None, _) => problems.push(format!("{} could not be read before", file.display())),
            (Some(_), None) => problems.push(format!("{} cannot be read", file.display())),
            (Some(a), Some(b)) if a != &b => problems.push(format!("{} changed", file.display())),
            _ => {}
        }
    }
    if let Some(argv) = command {
        checked.push(format!("`{}`", argv.join(" ")));
        let stop = std::sync::atomic::AtomicBool::new(false);
        let mut interrupted = || observer.interrupted();
        match probe::run_bounded(argv, timeout, &stop, true, Some(&mut interrupted)) {
            Err(e) => problems.push(format!("`{}` {e}", argv[0])),
            Ok(stdout) => {
                if let Some(want) = expect {
                    if !stdout.contains(want) {
                        let got = stdout.lines().next().unwrap_or("").trim().to_string();
                        problems.push(format!("`{}` printed `{got}`, not `{want}`", argv[0]));
                    }
                }
            }
        }
    }
    let mut bound = Vec::new();
    if !before.is_empty() {
        bound.push("the checksums from before the experiment");
    }
    if command.is_some() {
        bound.push(if expect.is_some() {
            "the command exits 0 and prints what is expected"
        } else {
            "the command exits 0"
        });
    }
    Verdict {
        kind: "integrity",
        name: format!("data intact: {}", checked.join(", ")),
        passed: problems.is_empty(),
        measured: if problems.is_empty() {
            "intact".into()
        } else {
            problems.join("; ")
        },
        bound: bound.join("; "),
    }
}

/// The nothing-left verifier, after the last session: no BPF object held by this process and
/// nothing in its undo log but the experiment's own cgroups and directory.
fn nothing_left(undo: &UndoLog, started: &Started) -> Verdict {
    let held: Vec<String> = std::fs::read_dir("/proc/self/fd")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| std::fs::read_link(e.path()).ok())
        .map(|l| l.to_string_lossy().into_owned())
        .filter(|l| l.starts_with("anon_inode:bpf"))
        .collect();
    // The experiment's own cgroups and directory go at its very end, not with the faults.
    let own: Vec<&Entry> = [&started.cgroup, &started.services_cgroup]
        .into_iter()
        .flatten()
        .map(|(_, e)| e)
        .collect();
    let entries: Vec<String> = undo
        .entries()
        .iter()
        .filter(|e| !own.contains(e) && !matches!(e, Entry::RunDir { .. }))
        .map(ToString::to_string)
        .collect();
    let passed = held.is_empty() && entries.is_empty();
    Verdict {
        kind: "nothing-left",
        name: "nothing of the faults left attached".into(),
        passed,
        measured: if passed {
            "no BPF program, link or map held; nothing to undo".into()
        } else {
            format!(
                "{} BPF object(s) held; to undo: {}",
                held.len(),
                if entries.is_empty() {
                    "nothing".to_string()
                } else {
                    entries.join(", ")
                }
            )
        },
        bound: "nothing".into(),
    }
}
