//! `--metrics-listen`: what an experiment measures, as it goes, in the OpenMetrics text format
//! that Prometheus scrapes, served over HTTP for as long as the run lasts.

use std::{
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    thread::JoinHandle,
    time::Duration,
};

use anyhow::Context as _;
use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{counter::Counter, family::Family, gauge::Gauge, histogram::Histogram},
    registry::Registry,
};

use super::monitor::MonitorSample;
use crate::report::FaultReport;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PhaseLabel {
    phase: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SampleLabels {
    probe: String,
    phase: String,
    result: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ProbeLabel {
    probe: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StateLabel {
    state: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct FaultLabels {
    phase: String,
    fault: String,
    place: String,
}

type FloatGauge = Gauge<f64, AtomicU64>;

/// The metrics of one run; cheap to clone, every clone updates the same values.
#[derive(Clone)]
pub struct Metrics {
    registry: Arc<Registry>,
    phase: Family<PhaseLabel, Gauge>,
    samples: Family<SampleLabels, Counter>,
    latency: Family<ProbeLabel, Histogram>,
    system: [FloatGauge; 8],
    target: [FloatGauge; 6],
    tcp_states: Family<StateLabel, Gauge>,
    fault_matched: Family<FaultLabels, Gauge>,
    fault_injected: Family<FaultLabels, Gauge>,
    fault_passed: Family<FaultLabels, Gauge>,
    fault_expired: Family<FaultLabels, Gauge>,
}

/// The system gauges: name and help, in the order of [`Metrics::system`].
const SYSTEM: [(&str, &str); 8] = [
    ("chaos_system_cpu_usage_percent", "Busy share of all CPUs"),
    ("chaos_system_memory_used_bytes", "Memory in use"),
    ("chaos_system_memory_total_bytes", "Memory in all"),
    (
        "chaos_system_network_received_bytes",
        "Bytes received on every interface since the run started",
    ),
    (
        "chaos_system_network_transmitted_bytes",
        "Bytes sent on every interface since the run started",
    ),
    (
        "chaos_system_disk_read_bytes",
        "Bytes read from every disk since the run started",
    ),
    (
        "chaos_system_disk_written_bytes",
        "Bytes written to every disk since the run started",
    ),
    (
        "chaos_system_tcp_sockets",
        "TCP sockets of the machine, listeners included",
    ),
];

/// The target gauges, in the order of [`Metrics::target`].
const TARGET: [(&str, &str); 6] = [
    (
        "chaos_target_cpu_seconds",
        "CPU time of the target cgroup since the run started",
    ),
    ("chaos_target_memory_bytes", "Memory of the target cgroup"),
    (
        "chaos_target_io_read_bytes",
        "Bytes the target cgroup read (cgroup2 io.stat)",
    ),
    (
        "chaos_target_io_written_bytes",
        "Bytes the target cgroup wrote (cgroup2 io.stat)",
    ),
    ("chaos_target_processes", "Processes in the target cgroup"),
    (
        "chaos_target_tcp_retransmits",
        "Segments the target's open TCP connections retransmitted",
    ),
];

impl Metrics {
    pub fn new() -> Metrics {
        let mut registry = Registry::default();
        let phase = Family::<PhaseLabel, Gauge>::default();
        registry.register(
            "chaos_experiment_phase",
            "1 for the phase that runs now",
            phase.clone(),
        );
        let samples = Family::<SampleLabels, Counter>::default();
        registry.register(
            "chaos_probe_samples",
            "Probe samples by phase and result",
            samples.clone(),
        );
        let latency = Family::<ProbeLabel, Histogram>::new_with_constructor(|| {
            Histogram::new([0.001, 0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0])
        });
        registry.register(
            "chaos_probe_latency_seconds",
            "How long each probe's check took",
            latency.clone(),
        );
        let system: [FloatGauge; 8] = Default::default();
        for ((name, help), g) in SYSTEM.iter().zip(&system) {
            registry.register(*name, *help, g.clone());
        }
        let target: [FloatGauge; 6] = Default::default();
        for ((name, help), g) in TARGET.iter().zip(&target) {
            registry.register(*name, *help, g.clone());
        }
        let tcp_states = Family::<StateLabel, Gauge>::default();
        registry.register(
            "chaos_target_tcp_connections",
            "The target's TCP connections by state",
            tcp_states.clone(),
        );
        let fault_matched = Family::<FaultLabels, Gauge>::default();
        registry.register(
            "chaos_fault_matched",
            "What each fault matched (packets, calls, ...)",
            fault_matched.clone(),
        );
        let fault_injected = Family::<FaultLabels, Gauge>::default();
        registry.register(
            "chaos_fault_injected",
            "What each fault injected",
            fault_injected.clone(),
        );
        let fault_expired = Family::<FaultLabels, Gauge>::default();
        registry.register(
            "chaos_fault_expired",
            "What each fault matched after its deadline (matched = injected + passed + expired)",
            fault_expired.clone(),
        );
        let fault_passed = Family::<FaultLabels, Gauge>::default();
        registry.register(
            "chaos_fault_passed",
            "What each fault's draw let through",
            fault_passed.clone(),
        );
        Metrics {
            registry: Arc::new(registry),
            phase,
            samples,
            latency,
            system,
            target,
            tcp_states,
            fault_matched,
            fault_injected,
            fault_passed,
            fault_expired,
        }
    }

    /// The text a scrape gets.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing to a String cannot fail.
        let _w = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }

    /// Phase `name` runs now; `previous` no longer does.
    pub fn phase(&self, previous: Option<&str>, name: &str) {
        if let Some(p) = previous {
            self.phase
                .get_or_create(&PhaseLabel { phase: p.into() })
                .set(0);
        }
        self.phase
            .get_or_create(&PhaseLabel { phase: name.into() })
            .set(1);
    }

    pub fn sample(&self, probe: &str, phase: &str, ok: bool, latency: Duration) {
        self.samples
            .get_or_create(&SampleLabels {
                probe: probe.into(),
                phase: phase.into(),
                result: if ok { "ok" } else { "failed" }.into(),
            })
            .inc();
        self.latency
            .get_or_create(&ProbeLabel {
                probe: probe.into(),
            })
            .observe(latency.as_secs_f64());
    }

    pub fn monitor(&self, m: &MonitorSample) {
        let s = &m.system;
        let values = [
            f64::from(s.cpu_percent),
            s.memory_used_bytes as f64,
            s.memory_total_bytes as f64,
            s.network_received_bytes as f64,
            s.network_transmitted_bytes as f64,
            s.disk_read_bytes as f64,
            s.disk_written_bytes as f64,
            s.tcp_sockets as f64,
        ];
        for (g, v) in self.system.iter().zip(values) {
            g.set(v);
        }
        let t = &m.target;
        let values = [
            t.cpu_usec as f64 / 1e6,
            t.memory_bytes as f64,
            t.io_read_bytes.unwrap_or(0) as f64,
            t.io_written_bytes.unwrap_or(0) as f64,
            t.processes as f64,
            t.tcp_retransmits as f64,
        ];
        for (g, v) in self.target.iter().zip(values) {
            g.set(v);
        }
        self.tcp_states.clear();
        for (state, n) in &t.tcp_connections {
            self.tcp_states
                .get_or_create(&StateLabel {
                    state: state.clone(),
                })
                .set(*n as i64);
        }
    }

    /// The counters of the phase's faults as they stand.
    pub fn faults(&self, phase: &str, faults: &[FaultReport]) {
        for f in faults {
            for (place, c) in &f.counters {
                let labels = FaultLabels {
                    phase: phase.into(),
                    fault: f.spec.clone(),
                    place: (*place).into(),
                };
                let v = |x: u64| i64::try_from(x).unwrap_or(i64::MAX);
                self.fault_matched.get_or_create(&labels).set(v(c.matched));
                self.fault_injected
                    .get_or_create(&labels)
                    .set(v(c.injected));
                self.fault_passed.get_or_create(&labels).set(v(c.passed));
                self.fault_expired.get_or_create(&labels).set(v(c.expired));
            }
        }
    }
}

impl Default for Metrics {
    fn default() -> Metrics {
        Metrics::new()
    }
}

/// The HTTP endpoint: `GET /metrics` gets the text; stopped when dropped.
pub struct Server {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
    pub addr: SocketAddr,
}

impl Server {
    pub fn start(addr: SocketAddr, metrics: Metrics) -> anyhow::Result<Server> {
        let server = tiny_http::Server::http(addr)
            .map_err(|e| anyhow::anyhow!("{e}"))
            .with_context(|| format!("--metrics-listen: listen on {addr}"))?;
        let addr = server
            .server_addr()
            .to_ip()
            .context("--metrics-listen: not an IP address")?;
        let stop = Arc::new(AtomicBool::new(false));
        let s = stop.clone();
        let thread = std::thread::Builder::new()
            .name("metrics".into())
            .spawn(move || {
                while !s.load(Ordering::Relaxed) {
                    let Ok(Some(request)) = server.recv_timeout(Duration::from_millis(100)) else {
                        continue;
                    };
                    let response = if request.url() == "/metrics" {
                        let header = tiny_http::Header::from_bytes(
                            "Content-Type",
                            "application/openmetrics-text; version=1.0.0; charset=utf-8",
                        )
                        .expect("a valid header");
                        tiny_http::Response::from_string(metrics.encode()).with_header(header)
                    } else {
                        tiny_http::Response::from_string("chaos-user serves /metrics\n")
                            .with_status_code(404)
                    };
                    let _sent = request.respond(response);
                }
            })?;
        Ok(Server {
            stop,
            thread: Some(thread),
            addr,
        })
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _joined = t.join();
        }
    }
}
