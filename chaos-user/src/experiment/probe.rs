//! Probes: each in a thread of its own, sampling its check on an interval for the whole
//! experiment, each sample stamped with the time since the experiment started.

use std::{
    net::{SocketAddr, TcpStream},
    process::{Command, Stdio},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use serde::Serialize;

use super::scenario::{Check, Probe};

/// One sample of a probe.
#[derive(Clone, Debug, Serialize)]
pub struct Sample {
    /// Milliseconds since the experiment started, when the check began.
    pub at_ms: u64,
    pub ok: bool,
    /// How long the check took, in milliseconds (up to its timeout).
    pub latency_ms: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// The probes running; their samples so far.
pub struct Probes {
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
    samples: Vec<Arc<Mutex<Vec<Sample>>>>,
}

impl Probes {
    /// Starts a thread per probe; `start` is the experiment's time zero.
    /// Each sample also goes to `metrics`, under the phase `phase` names at the time.
    pub fn start(
        probes: &[Probe],
        start: Instant,
        metrics: Option<super::metrics::Metrics>,
        phase: Arc<Mutex<String>>,
    ) -> anyhow::Result<Probes> {
        let stop = Arc::new(AtomicBool::new(false));
        let mut threads = Vec::new();
        let mut samples = Vec::new();
        for probe in probes {
            let out = Arc::new(Mutex::new(Vec::new()));
            samples.push(out.clone());
            let (probe, stop) = (probe.clone(), stop.clone());
            let (metrics, phase) = (metrics.clone(), phase.clone());
            threads.push(
                std::thread::Builder::new()
                    .name(format!("probe {}", probe.name))
                    .spawn(move || {
                        sample_until(&probe, start, &stop, &out, |s: &Sample| {
                            if let (Some(m), Ok(p)) = (&metrics, phase.lock()) {
                                let latency = Duration::from_secs_f64(s.latency_ms / 1000.0);
                                m.sample(&probe.name, &p, s.ok, latency);
                            }
                        });
                    })?,
            );
        }
        Ok(Probes {
            stop,
            threads,
            samples,
        })
    }

    /// The samples of probe `index` so far.
    pub fn samples(&self, index: usize) -> Vec<Sample> {
        self.samples[index]
            .lock()
            .map(|s| s.clone())
            .unwrap_or_default()
    }

    /// Stops every probe (each finishes the check it is in) and returns all the samples.
    pub fn stop(self) -> Vec<Vec<Sample>> {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads {
            let _joined = t.join();
        }
        self.samples
            .into_iter()
            .map(|s| s.lock().map(|s| s.clone()).unwrap_or_default())
            .collect()
    }
}

fn sample_until(
    probe: &Probe,
    start: Instant,
    stop: &AtomicBool,
    out: &Mutex<Vec<Sample>>,
    also: impl Fn(&Sample),
) {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .timeout_global(Some(probe.timeout))
        .http_status_as_error(false)
        // Probes go where the file says, never through a proxy from the environment.
        .proxy(None)
        .build()
        .into();
    let mut next = Instant::now();
    while !stop.load(Ordering::Relaxed) {
        let began = Instant::now();
        let result = check(&agent, &probe.check, probe.timeout, stop);
        if stop.load(Ordering::Relaxed) {
            // Cut short by the end of the run: not a sample of the service.
            break;
        }
        let sample = Sample {
            at_ms: began.duration_since(start).as_millis() as u64,
            ok: result.is_ok(),
            latency_ms: began.elapsed().as_secs_f64() * 1000.0,
            error: result.err(),
        };
        also(&sample);
        if let Ok(mut s) = out.lock() {
            s.push(sample);
        }
        next += probe.interval;
        let now = Instant::now();
        if next < now {
            // A check longer than the interval: the next one starts now, not in a burst.
            next = now;
        }
        while !stop.load(Ordering::Relaxed) && Instant::now() < next {
            std::thread::sleep((next - Instant::now()).min(Duration::from_millis(50)));
        }
    }
}

/// Runs a check once; the error says what failed.
fn check(
    agent: &ureq::Agent,
    check: &Check,
    timeout: Duration,
    stop: &AtomicBool,
) -> Result<(), String> {
    match check {
        Check::Tcp(addr) => tcp(*addr, timeout),
        Check::Http { url, status, body } => {
            let mut response = agent.get(url).call().map_err(|e| match e {
                ureq::Error::Timeout(_) => {
                    format!("no answer within {}", humantime::format_duration(timeout))
                }
                e => e.to_string(),
            })?;
            let got = response.status().as_u16();
            let status_ok = match status {
                Some(want) => got == *want,
                None => (200..300).contains(&got),
            };
            if !status_ok {
                let want = status.map_or_else(|| "2xx".to_string(), |w| w.to_string());
                return Err(format!("status {got}, not {want}"));
            }
            if let Some(want) = body {
                let text = response
                    .body_mut()
                    .read_to_string()
                    .map_err(|e| format!("read the body: {e}"))?;
                if !text.contains(want.as_str()) {
                    return Err(format!("the body has no `{want}`"));
                }
            }
            Ok(())
        }
        Check::Command(argv) => run_bounded(argv, timeout, stop, false, None).map(drop),
    }
}

fn tcp(addr: SocketAddr, timeout: Duration) -> Result<(), String> {
    TcpStream::connect_timeout(&addr, timeout)
        .map(drop)
        .map_err(|e| e.to_string())
}

/// Runs a command to its end, its timeout or `stop` (then kills it, with every process it
/// started: it leads a process group of its own); exit status 0 is healthy. With `capture`,
/// returns what it printed on stdout. `interrupted` is asked too, when given.
pub fn run_bounded(
    argv: &[String],
    timeout: Duration,
    stop: &AtomicBool,
    capture: bool,
    mut interrupted: Option<&mut dyn FnMut() -> bool>,
) -> Result<String, String> {
    use std::os::unix::process::CommandExt as _;
    let mut child = Command::new(&argv[0])
        .args(&argv[1..])
        .stdin(Stdio::null())
        .stdout(if capture {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stderr(Stdio::null())
        .process_group(0)
        .spawn()
        .map_err(|e| format!("cannot start: {e}"))?;
    let reader = child.stdout.take().map(|mut out| {
        std::thread::spawn(move || {
            let mut text = String::new();
            let _read = std::io::Read::read_to_string(&mut out, &mut text);
            text
        })
    });
    let deadline = Instant::now() + timeout;
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break Ok(status),
            Ok(None) => {
                let asked = interrupted.as_mut().is_some_and(|f| f());
                let why = if stop.load(Ordering::Relaxed) || asked {
                    Some("stopped: the experiment ended".to_string())
                } else if Instant::now() >= deadline {
                    Some(format!(
                        "no answer within {}",
                        humantime::format_duration(timeout)
                    ))
                } else {
                    None
                };
                if let Some(why) = why {
                    // SAFETY: kill(2) on the process group of our own child, which leads it
                    // and is not yet reaped, so the group id is still its.
                    unsafe { libc::kill(-(child.id() as i32), libc::SIGKILL) };
                    let _reaped = child.wait();
                    break Err(why);
                }
                std::thread::sleep(Duration::from_millis(10));
            }
            Err(e) => break Err(e.to_string()),
        }
    };
    let stdout = reader.and_then(|r| r.join().ok()).unwrap_or_default();
    match status? {
        s if s.success() => Ok(stdout),
        s => Err(format!("exited with {s}")),
    }
}

/// Whether `addr` accepts a TCP connection now.
pub fn connects(addr: SocketAddr) -> bool {
    tcp(addr, Duration::from_millis(200)).is_ok()
}
