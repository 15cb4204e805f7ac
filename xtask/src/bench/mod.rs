//! `cargo xtask bench`: what the injector costs, how exact it is and how fast it reacts, on this
//! machine, with each comparison's variants interleaved round by round and reported as medians
//! with their spread. Writes `bench/RESULTS.md` and `bench/results.json`, and appends the
//! headline figures to `bench/history.jsonl`.

use std::{
    io::{Read as _, Write as _},
    net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream, UdpSocket},
    os::unix::process::CommandExt as _,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};
use serde::Serialize;

use crate::{setup, util};

mod bursts;
mod decide;
mod guest;
mod syscalls;

pub use guest::in_guest;

/// Options of a run.
pub struct Options {
    /// Fewer rounds and shorter measurements: a check that the bench runs, not figures to keep.
    pub quick: bool,
    /// Leave out the VM lane's figures.
    pub no_guest: bool,
}

pub fn run(options: Options) -> Result<i32> {
    setup::run()?;
    // The comparison with iptables; the bench goes on without it where it cannot be had.
    util::warn_on_err(
        setup::ensure_apt_packages(&["iptables", "strace"]),
        "install iptables and strace",
    );
    let chaos_user = util::build_chaos_user(true)?;
    let mut args = vec!["bench-as-root".to_string()];
    if options.quick {
        args.push("--quick".into());
    }
    if options.no_guest {
        args.push("--no-guest".into());
    }
    if !util::is_root() {
        eprintln!("xtask: the bench attaches eBPF programs; running it through sudo");
        let status = Command::new("sudo")
            .arg(std::env::current_exe()?)
            .args(&args)
            .status()?;
        return Ok(status.code().unwrap_or(1));
    }
    as_root(&chaos_user, options)
}

/// One measurement's samples and their summary.
#[derive(Clone, Debug, Serialize, serde::Deserialize)]
struct Figure {
    median: f64,
    min: f64,
    max: f64,
    samples: Vec<f64>,
}

impl Figure {
    fn of(mut samples: Vec<f64>) -> Figure {
        samples.sort_by(f64::total_cmp);
        let n = samples.len().max(1);
        let median = if samples.is_empty() {
            0.0
        } else if n % 2 == 1 {
            samples[n / 2]
        } else {
            (samples[n / 2 - 1] + samples[n / 2]) / 2.0
        };
        Figure {
            median,
            min: samples.first().copied().unwrap_or(0.0),
            max: samples.last().copied().unwrap_or(0.0),
            samples,
        }
    }

    /// `123 456 (119 000 to 125 000)`.
    fn show(&self, digits: usize) -> String {
        format!(
            "{:.digits$} ({:.digits$} to {:.digits$})",
            self.median, self.min, self.max
        )
    }
}

/// A comparison: its title, then each variant's figure.
type Comparison = (String, Vec<(String, Figure)>);

/// A goal and whether it was met.
#[derive(Debug, Serialize)]
struct Goal {
    what: String,
    goal: String,
    measured: String,
    met: bool,
}

#[derive(Debug, Serialize)]
struct Results {
    schema_version: u32,
    date: String,
    machine: String,
    kernel: String,
    cpus: usize,
    quick: bool,
    /// Workload, then variant, then the figure (operations per second).
    datapath: Vec<Comparison>,
    /// p asked, matched, lost, the share lost, and the 99.9% binomial interval.
    accuracy: Vec<Accuracy>,
    /// Per-decision cost of each program, beside an empty one.
    decisions: Vec<decide::Decision>,
    /// Loop, then variant, then ns per call.
    syscalls: Vec<Comparison>,
    bursts: bursts::Bursts,
    bandwidth: Vec<bursts::Bandwidth>,
    /// What the VM lane measured, where it ran.
    guest: Option<guest::GuestFigures>,
    /// Milliseconds.
    reaction: Vec<(String, Figure)>,
    peak_rss_bytes: u64,
    map_bytes: u64,
    goals: Vec<Goal>,
    /// What could not be measured here, and why.
    skipped: Vec<String>,
}

#[derive(Debug, Serialize)]
struct Accuracy {
    p: f64,
    matched: u64,
    lost: u64,
    share: f64,
    interval: (f64, f64),
    inside: bool,
}

/// The variants of a datapath comparison.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Variant {
    /// No injector.
    None,
    /// The programs attached to another cgroup.
    Other,
    /// Attached to the target, faults armed at p=0.
    Target,
    /// An iptables rule matching the target cgroup with a statistic match at p=0.
    Iptables,
}

impl Variant {
    fn name(self) -> &'static str {
        match self {
            Variant::None => "(a) no injector",
            Variant::Other => "(b) programs on another cgroup",
            Variant::Target => "(c) on the target, p=0",
            Variant::Iptables => "(d) iptables statistic, p=0",
        }
    }
}

/// A cgroup of the bench's own, removed when dropped.
struct Cgroup {
    path: PathBuf,
    name: String,
}

impl Cgroup {
    fn new(label: &str) -> Result<Cgroup> {
        let mount = util::cgroup2_mount()?;
        let name = format!("chaos-bench-{label}-{}", std::process::id());
        let path = mount.join(&name);
        std::fs::create_dir(&path).with_context(|| format!("create {}", path.display()))?;
        Ok(Cgroup {
            path,
            name: format!("/{name}"),
        })
    }

    /// Starts `xtask bench-load ARGS` inside this cgroup.
    fn spawn_load(&self, args: &[String]) -> Result<Child> {
        let mut cmd = Command::new(std::env::current_exe()?);
        cmd.arg("bench-load").args(args);
        self.spawn(cmd)
    }

    /// Starts a command inside this cgroup, its stdout piped.
    fn spawn(&self, mut cmd: Command) -> Result<Child> {
        let procs = std::fs::OpenOptions::new()
            .write(true)
            .open(self.path.join("cgroup.procs"))?;
        let fd = std::os::fd::AsRawFd::as_raw_fd(&procs);
        cmd.stdout(Stdio::piped());
        // SAFETY: runs between fork and exec and only calls write(2) on a descriptor opened
        // before the fork, which `procs` keeps open until the spawn returns.
        unsafe {
            cmd.pre_exec(move || {
                if libc::write(fd, b"0".as_ptr().cast(), 1) != 1 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = cmd.spawn()?;
        drop(procs);
        Ok(child)
    }
}

impl Drop for Cgroup {
    fn drop(&mut self) {
        for _ in 0..100 {
            if std::fs::remove_dir(&self.path).is_ok() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        eprintln!("xtask: warning: could not remove {}", self.path.display());
    }
}

/// A running `chaos-user inject`, stopped (SIGINT) and reaped when dropped.
struct Injector(Child);

impl Injector {
    fn start(chaos_user: &Path, cgroup: &str, faults: &[&str]) -> Result<Injector> {
        Injector::start_with(chaos_user, cgroup, faults, &[])
    }

    /// `inject --cgroup CGROUP --fault ... EXTRA`, once it says it is injecting.
    fn start_with(
        chaos_user: &Path,
        cgroup: &str,
        faults: &[&str],
        extra: &[&std::ffi::OsStr],
    ) -> Result<Injector> {
        let mut cmd = Command::new(chaos_user);
        cmd.args(["inject", "--cgroup", cgroup]).args(extra);
        for f in faults {
            cmd.args(["--fault", f]);
        }
        let child = cmd.stdout(Stdio::null()).stderr(Stdio::piped()).spawn()?;
        // Dropped on failure: stopped and reaped.
        let mut injector = Injector(child);
        wait_for(&mut injector.0, "injecting into")?;
        Ok(injector)
    }

    fn pid(&self) -> i32 {
        self.0.id() as i32
    }

    fn stop(mut self, signal: i32) -> Result<()> {
        // SAFETY: kill(2) on our own child, not yet reaped.
        unsafe { libc::kill(self.pid(), signal) };
        self.0.wait()?;
        Ok(())
    }
}

impl Drop for Injector {
    fn drop(&mut self) {
        if matches!(self.0.try_wait(), Ok(None)) {
            // SAFETY: kill(2) on our own child, not yet reaped.
            unsafe { libc::kill(self.pid(), libc::SIGINT) };
            let _reaped = self.0.wait();
        }
    }
}

/// An iptables rule, deleted when dropped.
struct IptablesRule(Vec<String>);

impl IptablesRule {
    fn add(spec: Vec<String>) -> Result<IptablesRule> {
        util::run(Command::new("iptables").arg("-I").args(&spec))?;
        Ok(IptablesRule(spec))
    }
}

impl Drop for IptablesRule {
    fn drop(&mut self) {
        util::warn_on_err(
            util::run(Command::new("iptables").arg("-D").args(&self.0)),
            "delete the bench's iptables rule",
        );
    }
}

/// Servers on loopback that the workloads talk to: a UDP sink, a TCP echo of one byte, and a
/// TCP sink.
struct Servers {
    udp: SocketAddr,
    echo: SocketAddr,
    sink: SocketAddr,
}

impl Servers {
    fn start() -> Result<Servers> {
        let udp = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0))?;
        let udp_addr = udp.local_addr()?;
        std::thread::spawn(move || {
            let mut buf = [0u8; 2048];
            while udp.recv(&mut buf).is_ok() {}
        });
        let echo = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?;
        let echo_addr = echo.local_addr()?;
        std::thread::spawn(move || {
            for mut s in echo.incoming().flatten() {
                std::thread::spawn(move || {
                    let _set = s.set_nodelay(true);
                    let mut b = [0u8; 1];
                    while s.read_exact(&mut b).is_ok() && s.write_all(&b).is_ok() {}
                });
            }
        });
        let sink = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?;
        let sink_addr = sink.local_addr()?;
        std::thread::spawn(move || {
            for mut s in sink.incoming().flatten() {
                std::thread::spawn(move || {
                    let mut b = vec![0u8; 1 << 16];
                    while matches!(s.read(&mut b), Ok(n) if n > 0) {}
                });
            }
        });
        Ok(Servers {
            udp: udp_addr,
            echo: echo_addr,
            sink: sink_addr,
        })
    }
}

/// What `bench-load` does, in the target cgroup: prints one number when done.
pub fn load(args: &[String]) -> Result<i32> {
    let arg = |i: usize| args.get(i).map(String::as_str).unwrap_or("");
    let secs: f64 = arg(2).parse().unwrap_or(1.0);
    let end = Instant::now() + Duration::from_secs_f64(secs);
    let done = || Instant::now() >= end;
    let count: u64 = match arg(0) {
        // 64-byte datagrams, as fast as they go; the count sent.
        "udp" => {
            let s = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0))?;
            s.connect(arg(1))?;
            let payload = [0u8; 64];
            let mut n = 0u64;
            while !done() {
                for _ in 0..256 {
                    if s.send(&payload).is_ok() {
                        n += 1;
                    }
                }
            }
            n
        }
        // One-byte request, one-byte answer; the transactions done.
        "rr" => {
            let mut s = TcpStream::connect(arg(1))?;
            s.set_nodelay(true)?;
            let mut b = [1u8; 1];
            let mut n = 0u64;
            while !done() {
                s.write_all(&b)?;
                s.read_exact(&mut b)?;
                n += 1;
            }
            n
        }
        // 64 KiB writes; the bytes sent.
        "bulk" => {
            let mut s = TcpStream::connect(arg(1))?;
            let chunk = vec![0u8; 1 << 16];
            let mut n = 0u64;
            while !done() {
                s.write_all(&chunk)?;
                n += chunk.len() as u64;
            }
            n
        }
        // Exactly N datagrams, paced in bursts; the count sent.
        "udp-n" => {
            let s = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0))?;
            s.connect(arg(1))?;
            let total: u64 = arg(2).parse().unwrap_or(0);
            for i in 0..total {
                s.send(&i.to_be_bytes())?;
                if i % 1000 == 999 {
                    std::thread::sleep(Duration::from_millis(1));
                }
            }
            total
        }
        // A datagram each millisecond until killed, each carrying the monotonic time it left.
        "udp-ticks" => {
            let s = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0))?;
            s.connect(arg(1))?;
            loop {
                let _sent = s.send(&monotonic_ns().to_be_bytes());
                std::thread::sleep(Duration::from_millis(1));
            }
        }
        // The monotonic time it started at.
        "stamp" => monotonic_ns(),
        "rtt" => {
            let pings: u32 = arg(2).parse().context("the number of pings")?;
            println!("{}", guest::rtt_ms(arg(1), pings)?);
            return Ok(0);
        }
        "open" | "read" => {
            let calls: u32 = arg(2).parse().context("the number of calls")?;
            println!(
                "{}",
                syscalls::per_call_ns(arg(0), Path::new(arg(1)), calls)?
            );
            return Ok(0);
        }
        other => bail!("unknown load `{other}`"),
    };
    println!("{count}");
    Ok(0)
}

fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid timespec for the call to fill in.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// Runs a load to its end and returns the number it printed.
fn measure(cgroup: &Cgroup, args: &[String]) -> Result<f64> {
    let mut cmd = Command::new(std::env::current_exe()?);
    cmd.arg("bench-load").args(args);
    measure_command(cgroup, cmd)
}

/// Runs a command (a `bench-load`, perhaps under another program) in the cgroup to its end and
/// returns the number it printed.
fn measure_command(cgroup: &Cgroup, cmd: Command) -> Result<f64> {
    let args = format!("{cmd:?}");
    let child = cgroup.spawn(cmd)?;
    let out = child.wait_with_output()?;
    if !out.status.success() {
        bail!("{args} failed");
    }
    String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .context("bench-load's count")
}

/// The machine's name for the results: CPU model and count.
fn machine() -> (String, usize) {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("model name"))
        .and_then(|l| l.split_once(':'))
        .map_or("unknown CPU".to_string(), |(_, m)| m.trim().to_string());
    let cpus = std::thread::available_parallelism().map_or(1, usize::from);
    (model, cpus)
}

/// The figures of the bench, as root.
pub fn as_root(chaos_user: &Path, options: Options) -> Result<i32> {
    let (rounds, secs) = if options.quick { (2, 0.5) } else { (5, 2.0) };
    let servers = Servers::start()?;
    let target = Cgroup::new("target")?;
    let other = Cgroup::new("other")?;
    let mut skipped = Vec::new();
    let mut variants = vec![Variant::None, Variant::Other, Variant::Target];
    let iptables_ok = Command::new("iptables")
        .args(["-m", "cgroup", "-h"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if iptables_ok {
        variants.push(Variant::Iptables);
    } else {
        skipped.push("(d) iptables: no iptables with the cgroup match here".to_string());
    }
    let workloads: [(&str, SocketAddr, &str); 3] = [
        ("UDP 64-byte datagrams/s", servers.udp, "udp"),
        ("TCP 1-byte transactions/s", servers.echo, "rr"),
        ("TCP bulk MB/s", servers.sink, "bulk"),
    ];
    let mut datapath = Vec::new();
    for (title, addr, kind) in workloads {
        eprintln!("xtask: bench: {title}");
        let mut per: Vec<Vec<f64>> = vec![Vec::new(); variants.len()];
        for round in 0..rounds {
            // A different order each round, so that drift spreads over every variant.
            for k in 0..variants.len() {
                let i = (k + round) % variants.len();
                let variant = variants[i];
                let _injector = match variant {
                    Variant::Other => Some(Injector::start(
                        chaos_user,
                        &other.name,
                        &["loss:p=0", "corrupt:p=0", "duplicate:p=0"],
                    )?),
                    Variant::Target => Some(Injector::start(
                        chaos_user,
                        &target.name,
                        &["loss:p=0", "corrupt:p=0", "duplicate:p=0"],
                    )?),
                    _ => None,
                };
                let _rule = match variant {
                    Variant::Iptables => Some(IptablesRule::add(vec![
                        "OUTPUT".into(),
                        "-m".into(),
                        "cgroup".into(),
                        "--path".into(),
                        target.name.trim_start_matches('/').into(),
                        "-m".into(),
                        "statistic".into(),
                        "--mode".into(),
                        "random".into(),
                        "--probability".into(),
                        "0".into(),
                        "-j".into(),
                        "DROP".into(),
                    ])?),
                    _ => None,
                };
                let n = measure(&target, &[kind.into(), addr.to_string(), secs.to_string()])?;
                let per_sec = n / secs;
                per[i].push(if kind == "bulk" {
                    per_sec / 1e6
                } else {
                    per_sec
                });
            }
        }
        let figures: Vec<(String, Figure)> = variants
            .iter()
            .zip(per)
            .map(|(v, s)| (v.name().to_string(), Figure::of(s)))
            .collect();
        datapath.push((title.to_string(), figures));
    }

    let decisions = decide::decisions(chaos_user, if options.quick { 100_000 } else { 1_000_000 })?;
    let strace = syscalls::strace_runs();
    if !strace {
        skipped.push("(e) strace: no strace with --seccomp-bpf here".to_string());
    }
    let syscalls = syscalls::loops(
        chaos_user,
        &target,
        (rounds, syscalls::CALLS),
        syscalls::Hook::Crash,
        strace,
    )?;
    skipped.push(
        "file, nospace, fail and fd-limit (BPF LSM and trampolines), and delay (the fq qdisc): \
         this kernel refuses them; the VM lane runs them"
            .to_string(),
    );

    eprintln!("xtask: bench: loss accuracy");
    let mut accuracy = Vec::new();
    let packets: u64 = if options.quick { 20_000 } else { 100_000 };
    for p in [0.01, 0.1, 0.5] {
        let report =
            std::env::temp_dir().join(format!("chaos-bench-report-{}.json", std::process::id()));
        let injector = Injector::start_with(
            chaos_user,
            &target.name,
            &[&format!("loss:p={p},proto=udp,dir=egress")],
            &["--json".as_ref(), report.as_os_str()],
        )?;
        measure(
            &target,
            &["udp-n".into(), servers.udp.to_string(), packets.to_string()],
        )?;
        injector.stop(libc::SIGINT)?;
        let text = std::fs::read_to_string(&report)?;
        let _removed = std::fs::remove_file(&report);
        let json: serde_json::Value = serde_json::from_str(&text)?;
        let c = &json["faults"][0]["egress"];
        let matched = c["matched"].as_u64().unwrap_or(0);
        let lost = c["injected"].as_u64().unwrap_or(0);
        let share = lost as f64 / matched.max(1) as f64;
        let interval = binomial_interval(matched, p);
        accuracy.push(Accuracy {
            p,
            matched,
            lost,
            share,
            interval,
            inside: (interval.0..=interval.1).contains(&share),
        });
    }

    let bursts = bursts::gilbert(chaos_user, &target, packets)?;
    let bandwidth = bursts::bandwidth(chaos_user, &target, secs.max(1.0) * 2.0)?;

    eprintln!("xtask: bench: reaction times");
    let mut cold = Vec::new();
    let mut stop = Vec::new();
    let mut kill = Vec::new();
    for _ in 0..rounds {
        cold.push(cold_start(chaos_user)?);
        stop.push(stop_reaction(chaos_user, &target, libc::SIGINT)?);
        kill.push(stop_reaction(chaos_user, &target, libc::SIGKILL)?);
    }
    let reaction = vec![
        (
            "start to first fault (cold, `run`)".to_string(),
            Figure::of(cold),
        ),
        (
            "SIGINT to the first clean packet".to_string(),
            Figure::of(stop),
        ),
        (
            "SIGKILL to the first clean packet".to_string(),
            Figure::of(kill),
        ),
    ];

    eprintln!("xtask: bench: footprint");
    let (peak_rss_bytes, map_bytes) = footprint(chaos_user, &target)?;

    let guest = if options.no_guest {
        skipped.push("the VM lane: --no-guest".to_string());
        None
    } else {
        match guest::figures(options.quick) {
            Ok(g) => Some(g),
            Err(e) => {
                eprintln!("xtask: bench: the VM lane: {e:#}");
                skipped.push(format!("the VM lane: {e:#}"));
                None
            }
        }
    };

    let mut goals = goals(&datapath, &accuracy, &reaction, peak_rss_bytes);
    goals.extend(more_goals(&decisions, &syscalls, &bursts, &bandwidth));
    if let Some(g) = &guest {
        goals.extend(guest_goals(g));
    }
    let (model, cpus) = machine();
    let results = Results {
        schema_version: 1,
        date: util::output(Command::new("date").args(["-u", "+%Y-%m-%d %H:%M UTC"]))
            .unwrap_or_default()
            .trim()
            .to_string(),
        machine: model,
        kernel: util::output(Command::new("uname").arg("-r"))
            .unwrap_or_default()
            .trim()
            .to_string(),
        cpus,
        quick: options.quick,
        datapath,
        accuracy,
        decisions,
        syscalls,
        bursts,
        bandwidth,
        guest,
        reaction,
        peak_rss_bytes,
        map_bytes,
        goals,
        skipped,
    };
    write_results(&results)?;
    let missed = results.goals.iter().filter(|g| !g.met).count();
    eprintln!(
        "xtask: bench: {} goals met, {missed} missed; bench/RESULTS.md",
        results.goals.len() - missed
    );
    Ok(0)
}

/// Reads a child's stderr until `text` shows, then drains the rest in the background.
fn wait_for(child: &mut Child, text: &str) -> Result<()> {
    let mut err = child.stderr.take().context("stderr")?;
    let mut seen = Vec::new();
    let mut buf = [0u8; 512];
    while !String::from_utf8_lossy(&seen).contains(text) {
        let n = err.read(&mut buf)?;
        if n == 0 {
            bail!("chaos-user ended: {}", String::from_utf8_lossy(&seen));
        }
        seen.extend_from_slice(&buf[..n]);
    }
    std::thread::spawn(move || {
        let mut sink = Vec::new();
        let _read = err.read_to_end(&mut sink);
    });
    Ok(())
}

/// Milliseconds from starting `chaos-user run` to its command starting, the faults attached.
fn cold_start(chaos_user: &Path) -> Result<f64> {
    let before = monotonic_ns();
    let out = Command::new(chaos_user)
        .args(["run", "--fault", "loss:p=1,proto=udp", "--"])
        .arg(std::env::current_exe()?)
        .args(["bench-load", "stamp"])
        .stderr(Stdio::null())
        .output()?;
    let started: u64 = String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .context("the command's start time")?;
    Ok(started.saturating_sub(before) as f64 / 1e6)
}

/// Milliseconds from a signal to the injector to the first datagram of the target that gets
/// through, with `loss:p=1` on before.
fn stop_reaction(chaos_user: &Path, target: &Cgroup, signal: i32) -> Result<f64> {
    let sink = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0))?;
    sink.set_read_timeout(Some(Duration::from_secs(5)))?;
    let injector = Injector::start(chaos_user, &target.name, &["loss:p=1,proto=udp"])?;
    let mut ticks = target.spawn_load(&["udp-ticks".into(), sink.local_addr()?.to_string()])?;
    std::thread::sleep(Duration::from_millis(200));
    let signalled = monotonic_ns();
    let stopper = std::thread::spawn(move || injector.stop(signal));
    let mut buf = [0u8; 16];
    let arrived = loop {
        match sink.recv(&mut buf) {
            Ok(8) => {
                let sent = u64::from_be_bytes(buf[..8].try_into().expect("8 bytes"));
                if sent >= signalled {
                    break monotonic_ns();
                }
            }
            Ok(_) => {}
            Err(e) => {
                let _killed = ticks.kill();
                let _reaped = ticks.wait();
                bail!("no datagram got through after the signal: {e}");
            }
        }
    };
    let _killed = ticks.kill();
    let _reaped = ticks.wait();
    stopper
        .join()
        .map_err(|_| anyhow::anyhow!("the stopper"))??;
    if signal == libc::SIGKILL {
        // What a killed session leaves for `recover` (nothing for packet faults).
        util::run(
            Command::new(chaos_user)
                .arg("recover")
                .stdout(Stdio::null()),
        )?;
    }
    Ok(arrived.saturating_sub(signalled) as f64 / 1e6)
}

/// Peak resident memory of chaos-user with several faults on, and the memory its maps lock.
fn footprint(chaos_user: &Path, target: &Cgroup) -> Result<(u64, u64)> {
    let injector = Injector::start(
        chaos_user,
        &target.name,
        &[
            "loss:p=0.1",
            "corrupt:p=0.1",
            "duplicate:p=0.1",
            "bandwidth:rate=100mbit",
            "connect:errno=ECONNREFUSED,dport=1",
            "reset:interval=1s,dport=1",
            "dns:name=bench.invalid,answer=nxdomain",
        ],
    )?;
    std::thread::sleep(Duration::from_secs(2));
    let pid = injector.pid();
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let peak = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
        .unwrap_or(0)
        * 1024;
    let mut maps = 0;
    for entry in std::fs::read_dir(format!("/proc/{pid}/fdinfo"))?.flatten() {
        let info = std::fs::read_to_string(entry.path()).unwrap_or_default();
        if info.contains("map_type:") {
            maps += info
                .lines()
                .find_map(|l| l.strip_prefix("memlock:"))
                .and_then(|v| v.trim().parse::<u64>().ok())
                .unwrap_or(0);
        }
    }
    injector.stop(libc::SIGINT)?;
    Ok((peak, maps))
}

/// The 99.9% interval of the share of `n` draws at `p` (normal approximation).
fn binomial_interval(n: u64, p: f64) -> (f64, f64) {
    let sd = (p * (1.0 - p) / n.max(1) as f64).sqrt();
    (p - 3.29 * sd, p + 3.29 * sd)
}

fn goals(
    datapath: &[Comparison],
    accuracy: &[Accuracy],
    reaction: &[(String, Figure)],
    peak_rss: u64,
) -> Vec<Goal> {
    let mut out = Vec::new();
    for (title, figures) in datapath.iter().take(2) {
        let of = |name: &str| {
            figures
                .iter()
                .find(|(n, _)| n.starts_with(name))
                .map(|(_, f)| f.median)
        };
        let Some(none) = of("(a)") else { continue };
        for (variant, bound) in [("(b)", 0.99), ("(c)", 0.97)] {
            if let Some(v) = of(variant) {
                let ratio = v / none;
                out.push(Goal {
                    what: format!("{title}: {variant} against (a)"),
                    goal: format!("≥ {bound:.2}×"),
                    measured: format!("{ratio:.3}×"),
                    met: ratio >= bound,
                });
            }
        }
        if let (Some(c), Some(d)) = (of("(c)"), of("(d)")) {
            out.push(Goal {
                what: format!("{title}: (c) against iptables (d)"),
                goal: "(c) ahead".into(),
                measured: format!("{:.3}× of (d)", c / d),
                met: c > d,
            });
        }
    }
    for a in accuracy {
        out.push(Goal {
            what: format!("loss p={} over {} packets", a.p, a.matched),
            goal: format!("inside [{:.4}, {:.4}]", a.interval.0, a.interval.1),
            measured: format!("{:.4}", a.share),
            met: a.inside,
        });
    }
    for (what, figure) in reaction {
        let bound = if what.starts_with("start") {
            200.0
        } else {
            50.0
        };
        out.push(Goal {
            what: what.clone(),
            goal: format!("< {bound} ms"),
            measured: format!("{:.1} ms", figure.median),
            met: figure.median < bound,
        });
    }
    out.push(Goal {
        what: "peak RSS of chaos-user".into(),
        goal: "< 30 MB".into(),
        measured: format!("{:.1} MB", peak_rss as f64 / 1e6),
        met: peak_rss < 30_000_000,
    });
    out
}

/// The goals of the per-decision cost, the syscall loops, bursts and bandwidth.
fn more_goals(
    decisions: &[decide::Decision],
    syscalls: &[Comparison],
    bursts: &bursts::Bursts,
    bandwidth: &[bursts::Bandwidth],
) -> Vec<Goal> {
    let mut out = Vec::new();
    for d in decisions {
        let ratio = d.ns / d.empty_ns.max(f64::MIN_POSITIVE);
        out.push(Goal {
            what: format!("one decision of {} against an empty program", d.program),
            goal: "≤ 2×".into(),
            measured: format!("{ratio:.2}× ({:.0} ns against {:.0} ns)", d.ns, d.empty_ns),
            met: ratio <= 2.0,
        });
    }
    out.extend(loop_goals(syscalls, ""));
    out.push(Goal {
        what: format!(
            "Gilbert loss share (enter_bad={}, leave_bad={})",
            bursts.enter_bad, bursts.leave_bad
        ),
        goal: format!(
            "inside [{:.4}, {:.4}], every loss the injector's",
            bursts.share_interval.0, bursts.share_interval.1
        ),
        measured: format!(
            "{:.4} ({} missing, {} injected)",
            bursts.share, bursts.missing, bursts.injected
        ),
        met: bursts.accounted()
            && (bursts.share_interval.0..=bursts.share_interval.1).contains(&bursts.share),
    });
    out.push(Goal {
        what: "Gilbert mean burst length".into(),
        goal: format!(
            "inside [{:.2}, {:.2}]",
            bursts.mean_burst_interval.0, bursts.mean_burst_interval.1
        ),
        measured: format!("{:.2} over {} bursts", bursts.mean_burst, bursts.bursts),
        met: (bursts.mean_burst_interval.0..=bursts.mean_burst_interval.1)
            .contains(&bursts.mean_burst),
    });
    for b in bandwidth {
        out.push(Goal {
            what: format!("bandwidth rate={}: goodput against the rate", b.rate),
            goal: "0.90× to 1.02×".into(),
            measured: format!("{:.3}× ({:.2} MB/s)", b.ratio(), b.measured_mbytes),
            met: (0.90..=1.02).contains(&b.ratio()),
        });
    }
    out
}

/// The goal of each syscall loop: (c) against (a), strace's ratio beside it.
fn loop_goals(loops: &[Comparison], lane: &str) -> Vec<Goal> {
    let mut out = Vec::new();
    for (title, figures) in loops {
        let find = |prefix: &str| {
            figures
                .iter()
                .find(|(n, _)| n.starts_with(prefix))
                .map(|(_, f)| f.median)
        };
        let (Some(none), Some(chaos)) = (find("(a)"), find("(c)")) else {
            continue;
        };
        let strace = find("(e)")
            .map(|s| format!("; strace {:.2}×", s / none))
            .unwrap_or_default();
        out.push(Goal {
            what: format!("{title}{lane}: (c) against (a)"),
            goal: "≤ 1.10×".into(),
            measured: format!("{:.3}×{strace}", chaos / none),
            met: chaos / none <= 1.10,
        });
    }
    out
}

/// The goals of the VM lane: the `file` hooks' loops, and `delay` against the time asked.
fn guest_goals(g: &guest::GuestFigures) -> Vec<Goal> {
    let mut out = loop_goals(&g.file_hooks, " (VM lane, `file`)");
    let of = |name: &str| {
        g.delay
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, f)| f.median)
    };
    if let Some(chaos) = of(guest::CHAOS) {
        let netem = of(guest::NETEM)
            .map(|n| format!("; netem {n:.2} ms"))
            .unwrap_or_default();
        let asked = g.delay_asked_ms;
        out.push(Goal {
            what: format!("delay time={asked}ms (VM lane): extra time per packet"),
            goal: format!("{:.1} to {:.1} ms", asked * 0.95, asked * 1.05 + 1.0),
            measured: format!("{chaos:.2} ms{netem}"),
            met: (asked * 0.95..=asked * 1.05 + 1.0).contains(&chaos),
        });
    }
    out
}

fn write_results(r: &Results) -> Result<()> {
    use std::fmt::Write as _;
    let dir = util::root().join("bench");
    std::fs::create_dir_all(&dir)?;
    std::fs::write(dir.join("results.json"), serde_json::to_string_pretty(r)?)?;
    let mut history = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join("history.jsonl"))?;
    let headline: Vec<(&str, &str, String)> = r
        .goals
        .iter()
        .map(|g| (g.what.as_str(), g.goal.as_str(), g.measured.clone()))
        .collect();
    writeln!(
        history,
        "{}",
        serde_json::json!({"date": r.date, "kernel": r.kernel, "quick": r.quick, "goals": headline})
    )?;
    let mut md = String::new();
    let _w = writeln!(md, "# Benchmarks\n");
    let _w = writeln!(
        md,
        "Written by `cargo xtask bench`{} on {}: {} ({} CPUs), kernel {}. Medians of {} \
         interleaved rounds, with the lowest and highest in brackets. Figures of a shared, \
         noisy machine: compare ratios, not absolute rates.\n",
        if r.quick { " --quick" } else { "" },
        r.date,
        r.machine,
        r.cpus,
        r.kernel,
        r.datapath
            .first()
            .and_then(|(_, f)| f.first())
            .map_or(0, |(_, f)| f.samples.len())
    );
    let _w = writeln!(
        md,
        "## Goals\n\n| what | goal | measured | |\n|---|---|---|---|"
    );
    for g in &r.goals {
        let _w = writeln!(
            md,
            "| {} | {} | {} | {} |",
            g.what,
            g.goal,
            g.measured,
            if g.met { "met" } else { "**missed**" }
        );
    }
    let _w = writeln!(md, "\n## Datapath, from inside the target cgroup\n");
    for (title, figures) in &r.datapath {
        comparison(&mut md, title, figures, 0);
    }
    let _w = writeln!(
        md,
        "## Loss accuracy\n\n| p | matched | lost | share | 99.9% interval |\n|---|---|---|---|---|"
    );
    for a in &r.accuracy {
        let _w = writeln!(
            md,
            "| {} | {} | {} | {:.4} | {:.4} to {:.4} |",
            a.p, a.matched, a.lost, a.share, a.interval.0, a.interval.1
        );
    }
    write_more(&mut md, r);
    let _w = writeln!(
        md,
        "\n## Reaction times (ms)\n\n| from | median (range) |\n|---|---|"
    );
    for (what, f) in &r.reaction {
        let _w = writeln!(md, "| {what} | {} |", f.show(1));
    }
    let _w = writeln!(
        md,
        "\n## Footprint\n\nPeak RSS of chaos-user with seven faults on: {:.1} MB. Memory its maps \
         lock: {:.1} MB.",
        r.peak_rss_bytes as f64 / 1e6,
        r.map_bytes as f64 / 1e6
    );
    if !r.skipped.is_empty() {
        let _w = writeln!(md, "\n## Not measured here\n");
        for s in &r.skipped {
            let _w = writeln!(md, "- {s}");
        }
    }
    let _w = writeln!(
        md,
        "\n## History\n\nEvery run appends its goals to `bench/history.jsonl`; the last runs:\n"
    );
    let lines = std::fs::read_to_string(dir.join("history.jsonl")).unwrap_or_default();
    for line in lines.lines().rev().take(10) {
        let Ok(v) = serde_json::from_str::<serde_json::Value>(line) else {
            continue;
        };
        let measured: Vec<String> = v["goals"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|g| {
                format!(
                    "{}: {}",
                    g[0].as_str().unwrap_or(""),
                    g[2].as_str().unwrap_or("")
                )
            })
            .collect();
        let _w = writeln!(
            md,
            "- {} (kernel {}{}): {}",
            v["date"].as_str().unwrap_or(""),
            v["kernel"].as_str().unwrap_or(""),
            if v["quick"] == true { ", quick" } else { "" },
            measured.join("; ")
        );
    }
    std::fs::write(dir.join("RESULTS.md"), md)?;
    Ok(())
}

/// The sections of the per-decision cost, the syscall loops, bursts and bandwidth.
fn write_more(md: &mut String, r: &Results) {
    use std::fmt::Write as _;
    let _w = writeln!(
        md,
        "\n## One decision of each program (BPF_PROG_TEST_RUN)\n\nArmed for the caller's \
         cgroup with faults at p=0, on a 106-byte UDP frame or a syscall's arguments, beside an \
         empty program of the same type. `test_run`: the kernel's average over the runs of one \
         call; `run_time`: its run-time statistics, where the type takes no repeat.\n\n\
         | program | faults | ns | empty, ns | against empty | by | verified instructions \
         |\n|---|---|---|---|---|---|---|"
    );
    for d in &r.decisions {
        let _w = writeln!(
            md,
            "| {} | `{}` | {:.1} | {:.1} | {:.2}× | {} × {} | {} |",
            d.program,
            d.faults.join("` `"),
            d.ns,
            d.empty_ns,
            d.ns / d.empty_ns.max(f64::MIN_POSITIVE),
            d.measured_by,
            d.runs,
            d.verified_insns.map_or("?".into(), |n| n.to_string())
        );
    }
    let _w = writeln!(md, "\n## Syscall loops, from inside the target cgroup\n");
    for (title, figures) in &r.syscalls {
        comparison(md, title, figures, 1);
    }
    if let Some(g) = &r.guest {
        let _w = writeln!(
            md,
            "## The VM lane (kernel {})\n\nWhat this host's kernel does not run, in the guest \
             (emulated where the host has no KVM: slow, so compare ratios). The syscall loops \
             with `file` on the BPF LSM hooks:\n",
            g.kernel
        );
        for (title, figures) in &g.file_hooks {
            comparison(md, title, figures, 1);
        }
        let _w = writeln!(
            md,
            "`delay:time={}ms` on the target's egress against netem on loopback, the extra \
             round-trip time per delayed packet (the round trip without delay: {} ms):\n\n\
             | delayed by | ms, median (range) |\n|---|---|",
            g.delay_asked_ms,
            g.base_rtt_ms.show(2)
        );
        for (who, f) in &g.delay {
            let _w = writeln!(md, "| {who} | {} |", f.show(2));
        }
        let _w = writeln!(md);
    }
    let b = &r.bursts;
    let _w = writeln!(
        md,
        "## Burst loss (Gilbert-Elliott)\n\n`loss:model=gilbert,enter_bad={},leave_bad={}` on \
         {} numbered datagrams of one flow: {} missing at the receiver, {} lost by the \
         injector's count. Loss share {:.4} (theory {:.4}); {} bursts, mean length {:.2} \
         (theory {:.2}).\n\n| burst length | share of bursts | theory |\n|---|---|---|",
        b.enter_bad,
        b.leave_bad,
        b.sent,
        b.missing,
        b.injected,
        b.share,
        b.share_theory,
        b.bursts,
        b.mean_burst,
        b.mean_burst_theory
    );
    for (k, measured, theory) in &b.lengths {
        let _w = writeln!(md, "| {k} | {measured:.3} | {theory:.3} |");
    }
    let _w = writeln!(
        md,
        "\n## Bandwidth\n\nBulk TCP from the target, goodput at the receiver after the first \
         quarter.\n\n| rate | asked MB/s | measured MB/s | ratio |\n|---|---|---|---|"
    );
    for bw in &r.bandwidth {
        let _w = writeln!(
            md,
            "| {} | {:.2} | {:.2} | {:.3}× |",
            bw.rate,
            bw.asked_mbytes,
            bw.measured_mbytes,
            bw.ratio()
        );
    }
}

/// A comparison's table: each variant's median and range, and its ratio to the first.
fn comparison(md: &mut String, title: &str, figures: &[(String, Figure)], digits: usize) {
    use std::fmt::Write as _;
    let _w = writeln!(
        md,
        "| {title} | median (range) | against (a) |\n|---|---|---|"
    );
    let none = figures
        .first()
        .map_or(1.0, |(_, f)| f.median.max(f64::MIN_POSITIVE));
    for (name, f) in figures {
        let _w = writeln!(
            md,
            "| {name} | {} | {:.3}× |",
            f.show(digits),
            f.median / none
        );
    }
    let _w = writeln!(md);
}
