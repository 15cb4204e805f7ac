//! Monitoring during an experiment: the system (CPU, memory, disk and network I/O, TCP
//! connections) and the target cgroup (CPU, memory, I/O, processes, its TCP connections by
//! state and their retransmits), sampled on an interval in a thread of its own.

use std::{
    collections::BTreeMap,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use serde::Serialize;

use super::metrics::Metrics;
use crate::cgroup::Cgroup;

/// One sample of the system and the target.
#[derive(Clone, Debug, Default, Serialize)]
pub struct MonitorSample {
    /// Milliseconds since the experiment started.
    pub at_ms: u64,
    pub system: SystemSample,
    pub target: TargetSample,
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct SystemSample {
    /// All CPUs' busy share since the previous sample, in percent of one CPU times their
    /// number (100 = every CPU busy).
    pub cpu_percent: f32,
    pub memory_used_bytes: u64,
    pub memory_total_bytes: u64,
    /// Bytes received and sent on every interface since the experiment started.
    pub network_received_bytes: u64,
    pub network_transmitted_bytes: u64,
    /// Bytes read and written on every disk since the experiment started.
    pub disk_read_bytes: u64,
    pub disk_written_bytes: u64,
    /// TCP sockets of the whole machine, listeners included (/proc/net/tcp and tcp6).
    pub tcp_sockets: usize,
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct TargetSample {
    /// CPU time of the cgroup's processes since the experiment started (cgroup2 `cpu.stat`).
    pub cpu_usec: u64,
    /// `memory.current`; where memory is a v1 controller, the resident memory of its processes.
    pub memory_bytes: u64,
    /// Bytes read and written by the cgroup (cgroup2 `io.stat`), where the io controller is on.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub io_read_bytes: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub io_written_bytes: Option<u64>,
    pub processes: usize,
    /// Its TCP connections by state (sock_diag, filtered to the cgroup).
    pub tcp_connections: BTreeMap<String, usize>,
    /// Segments its open connections retransmitted so far (`tcpi_total_retrans`).
    pub tcp_retransmits: u64,
}

/// The monitor running; its samples so far.
pub struct Monitor {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
    samples: Arc<Mutex<Vec<MonitorSample>>>,
}

impl Monitor {
    /// Samples every `interval` from now; `zero` is the experiment's time zero.
    pub fn start(
        target: Cgroup,
        zero: Instant,
        interval: Duration,
        metrics: Option<Metrics>,
    ) -> anyhow::Result<Monitor> {
        let stop = Arc::new(AtomicBool::new(false));
        let samples = Arc::new(Mutex::new(Vec::new()));
        let (s, out) = (stop.clone(), samples.clone());
        let thread = std::thread::Builder::new()
            .name("monitor".into())
            .spawn(move || {
                let mut sampler = Sampler::new(target);
                while !s.load(Ordering::Relaxed) {
                    let began = Instant::now();
                    let sample = sampler.sample(began.duration_since(zero));
                    if let Some(m) = &metrics {
                        m.monitor(&sample);
                    }
                    if let Ok(mut v) = out.lock() {
                        v.push(sample);
                    }
                    while !s.load(Ordering::Relaxed) && began.elapsed() < interval {
                        std::thread::sleep(Duration::from_millis(20));
                    }
                }
            })?;
        Ok(Monitor {
            stop,
            thread: Some(thread),
            samples,
        })
    }

    pub fn stop(mut self) -> Vec<MonitorSample> {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _joined = t.join();
        }
        self.samples.lock().map(|s| s.clone()).unwrap_or_default()
    }
}

/// What one sample is measured against: the counters at the start.
struct Sampler {
    target: Cgroup,
    system: sysinfo::System,
    networks: sysinfo::Networks,
    disks: sysinfo::Disks,
    /// Network and disk byte counters, and the target's CPU time, at the first sample.
    base: Option<(u64, u64, u64, u64, u64)>,
}

impl Sampler {
    fn new(target: Cgroup) -> Sampler {
        // CPU usage is a difference between two readings: the first is taken now, and the
        // first sample waits the least time that makes the difference mean something.
        let mut system = sysinfo::System::new();
        system.refresh_cpu_usage();
        std::thread::sleep(sysinfo::MINIMUM_CPU_UPDATE_INTERVAL);
        Sampler {
            target,
            system,
            networks: sysinfo::Networks::new_with_refreshed_list(),
            disks: sysinfo::Disks::new_with_refreshed_list(),
            base: None,
        }
    }

    fn sample(&mut self, at: Duration) -> MonitorSample {
        self.system.refresh_cpu_usage();
        self.system.refresh_memory();
        self.networks.refresh(true);
        self.disks.refresh(true);
        let (rx, tx) = self.networks.iter().fold((0, 0), |(r, t), (_, n)| {
            (r + n.total_received(), t + n.total_transmitted())
        });
        let (read, written) = self.disks.iter().fold((0, 0), |(r, w), d| {
            let u = d.usage();
            (r + u.total_read_bytes, w + u.total_written_bytes)
        });
        let dir = &self.target.path;
        let cpu = crate::cgroup::cpu_usage_usec(dir);
        let base = *self.base.get_or_insert((rx, tx, read, written, cpu));
        let pids = crate::cgroup::processes_below(dir);
        let memory = std::fs::read_to_string(dir.join("memory.current"))
            .ok()
            .and_then(|t| t.trim().parse().ok())
            .unwrap_or_else(|| pids.iter().map(|&p| resident(p)).sum());
        let (io_read, io_written) = io_bytes(dir);
        let ids = self.target.with_descendants();
        let sockets = crate::sockdiag::list_tcp(&ids, &crate::sockdiag::SocketFilter::default())
            .unwrap_or_default();
        let mut states = BTreeMap::new();
        for s in &sockets {
            *states.entry(format!("{:?}", s.state)).or_insert(0) += 1;
        }
        MonitorSample {
            at_ms: at.as_millis() as u64,
            system: SystemSample {
                cpu_percent: self.system.global_cpu_usage(),
                memory_used_bytes: self.system.used_memory(),
                memory_total_bytes: self.system.total_memory(),
                network_received_bytes: rx.saturating_sub(base.0),
                network_transmitted_bytes: tx.saturating_sub(base.1),
                disk_read_bytes: read.saturating_sub(base.2),
                disk_written_bytes: written.saturating_sub(base.3),
                tcp_sockets: ["/proc/net/tcp", "/proc/net/tcp6"]
                    .iter()
                    .map(|f| {
                        std::fs::read_to_string(f)
                            .map_or(0, |t| t.lines().count().saturating_sub(1))
                    })
                    .sum(),
            },
            target: TargetSample {
                cpu_usec: cpu.saturating_sub(base.4),
                memory_bytes: memory,
                io_read_bytes: io_read,
                io_written_bytes: io_written,
                processes: pids.len(),
                tcp_connections: states,
                tcp_retransmits: sockets
                    .iter()
                    .map(|s| u64::from(s.retransmits.unwrap_or(0)))
                    .sum(),
            },
        }
    }
}

/// The `rbytes` and `wbytes` of every device in the cgroup's `io.stat`.
fn io_bytes(cgroup: &std::path::Path) -> (Option<u64>, Option<u64>) {
    let Ok(text) = std::fs::read_to_string(cgroup.join("io.stat")) else {
        return (None, None);
    };
    let (mut r, mut w) = (0, 0);
    for field in text.split_whitespace() {
        if let Some(v) = field.strip_prefix("rbytes=") {
            r += v.parse::<u64>().unwrap_or(0);
        } else if let Some(v) = field.strip_prefix("wbytes=") {
            w += v.parse::<u64>().unwrap_or(0);
        }
    }
    (Some(r), Some(w))
}

/// Resident memory of a process in bytes (`VmRSS`), 0 when it is gone.
fn resident(pid: i32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            let line = s.lines().find(|l| l.starts_with("VmRSS:"))?.to_string();
            line.split_whitespace().nth(1)?.parse::<u64>().ok()
        })
        .map_or(0, |kib| kib * 1024)
}
