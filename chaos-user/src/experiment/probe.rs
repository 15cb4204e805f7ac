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
        let result = check(&agent, &probe.check, probe.timeout);
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
fn check(agent: &ureq::Agent, check: &Check, timeout: Duration) -> Result<(), String> {
    match check {
        Check::Tcp(addr) => tcp(*addr, timeout),
        Check::Http { url, status, body } => {
            let mut response = agent.get(url).call().map_err(|e| e.to_string())?;
            let got = response.status().as_u16();
            let status_ok = match status {
                Some(want) => got == *want,
                None => (200..300).contains(&got),
            };
            if !status_ok {
                return Err(format!("status {got}"));
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
        Check::Command(argv) => command(argv, timeout),
    }
}

fn tcp(addr: SocketAddr, timeout: Duration) -> Result<(), String> {
    TcpStream::connect_timeout(&addr, timeout)
        .map(drop)
        .map_err(|e| e.to_string())
}

/// Runs a command to its end or its timeout (then kills it); exit status 0 is healthy.
pub fn command(argv: &[String], timeout: Duration) -> Result<(), String> {
    let mut child = Command::new(&argv[0])
        .args(&argv[1..])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| format!("start {}: {e}", argv[0]))?;
    let deadline = Instant::now() + timeout;
    loop {
        match child.try_wait() {
            Ok(Some(status)) if status.success() => return Ok(()),
            Ok(Some(status)) => return Err(format!("exited with {status}")),
            Ok(None) if Instant::now() >= deadline => {
                // Ours, not yet reaped: its PID cannot belong to another process.
                let _killed = child.kill();
                let _reaped = child.wait();
                return Err(format!(
                    "no answer within {}",
                    humantime::format_duration(timeout)
                ));
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(10)),
            Err(e) => return Err(e.to_string()),
        }
    }
}

/// Waits until `addr` accepts a TCP connection, for at most `timeout`.
pub fn wait_ready(addr: SocketAddr, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if tcp(addr, Duration::from_millis(200)).is_ok() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    false
}
