//! Helpers for the privileged end-to-end tests: cgroups of the test's own, the chaos-user
//! binary under test, a UDP counter, and checks that nothing of chaos-user's is left.
//!
//! `cargo xtask test` runs every test as root, one at a time, in a cgroup and a runtime
//! directory of its own. A test that cannot run prints [`SKIP_MARKER`] and its reason, which the
//! runner counts.
#![allow(
    clippy::print_stdout,
    reason = "tests report skips and measurements on stdout"
)]

use std::{
    collections::HashSet,
    fs,
    io::{BufRead, BufReader},
    net::{Ipv4Addr, UdpSocket},
    os::{fd::AsRawFd, unix::process::CommandExt},
    path::{Path, PathBuf},
    process::{Child, ChildStderr, Command, ExitStatus, Stdio},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

/// What a skipping test prints before its reason.
pub const SKIP_MARKER: &str = "chaos-test: SKIP ";

/// Prints the skip marker with a reason.
pub fn skip(reason: &str) {
    println!("{SKIP_MARKER}{reason}");
}

/// True when running as root; otherwise prints the skip and returns false.
pub fn root_or_skip() -> bool {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        return true;
    }
    skip("not root: privileged tests need root (run them through `cargo xtask test`)");
    false
}

/// What `chaos-user doctor` says of one fault kind: `{"kind", "available", "how", "reason"}`.
pub fn doctor_finding(kind: &str) -> serde_json::Value {
    let (status, stdout, stderr) = run(chaos_user().args(["doctor", "--json", "-"]));
    assert!(status.success(), "doctor: {stderr}");
    let doctor: serde_json::Value = serde_json::from_str(&stdout).expect("doctor JSON");
    doctor["faults"]
        .as_array()
        .and_then(|f| f.iter().find(|f| f["kind"] == kind))
        .unwrap_or_else(|| panic!("doctor lists {kind}"))
        .clone()
}

/// The kind of LSM hook programs the VM lane runs this batch with (`CHAOS_EXPECT_HOOKS`:
/// `lsm` or `fmod_ret`), if it says.
pub fn expected_hooks() -> Option<String> {
    std::env::var("CHAOS_EXPECT_HOOKS")
        .ok()
        .filter(|k| !k.is_empty())
}

/// The chaos-user binary under test (`CHAOS_USER_BIN`, set by the runner).
pub fn chaos_user_bin() -> PathBuf {
    std::env::var_os("CHAOS_USER_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/debug/chaos-user"))
}

/// A `chaos-user` command.
pub fn chaos_user() -> Command {
    Command::new(chaos_user_bin())
}

/// The runtime directory the runner gave this test (where undo logs go).
pub fn runtime_dir() -> PathBuf {
    std::env::var_os("CHAOS_USER_RUNTIME_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/run/chaos-user"))
}

/// The cgroup2 mount point.
pub fn cgroup2_mount() -> PathBuf {
    chaos_user::cgroup::mount_point().expect("a cgroup2 mount")
}

/// The path of this process's cgroup below the mount, such as `/chaos-test-1-2`.
pub fn own_cgroup_name() -> String {
    let text = fs::read_to_string("/proc/self/cgroup").expect("read /proc/self/cgroup");
    text.lines()
        .find_map(|l| l.strip_prefix("0::"))
        .expect("a cgroup2 line")
        .to_string()
}

/// A cgroup this test creates below its own; removed on drop once empty.
pub struct TestCgroup {
    pub path: PathBuf,
    /// The path below the mount, as chaos-user's `--cgroup` takes it.
    pub name: String,
    procs: fs::File,
}

impl TestCgroup {
    /// A new cgroup below the test's own.
    pub fn new(label: &str) -> TestCgroup {
        let parent = own_cgroup_name();
        Self::create(&format!("{}/{label}", parent.trim_end_matches('/')))
    }

    /// A new cgroup right below the cgroup2 root, where the root's controllers reach (a cgroup
    /// below the test's own cannot have them: the test's process sits in its parent).
    pub fn at_root(label: &str) -> TestCgroup {
        Self::create(&format!("/chaos-{label}-{}", std::process::id()))
    }

    /// A new cgroup below this one.
    pub fn child(&self, label: &str) -> TestCgroup {
        Self::create(&format!("{}/{label}", self.name))
    }

    fn create(name: &str) -> TestCgroup {
        let path = cgroup2_mount().join(name.trim_start_matches('/'));
        fs::create_dir(&path).unwrap_or_else(|e| panic!("create {}: {e}", path.display()));
        let procs = fs::OpenOptions::new()
            .write(true)
            .open(path.join("cgroup.procs"))
            .expect("open cgroup.procs");
        TestCgroup {
            path,
            name: name.to_string(),
            procs,
        }
    }

    /// Makes `cmd` start inside this cgroup.
    pub fn put(&self, cmd: &mut Command) {
        let fd = self.procs.as_raw_fd();
        // SAFETY: runs between fork and exec and only calls write(2) on a descriptor that stays
        // open as long as `self` (which outlives the spawn).
        unsafe {
            cmd.pre_exec(move || {
                if libc::write(fd, b"0".as_ptr().cast(), 1) != 1 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
    }

    /// Starts `sleep SECONDS` inside this cgroup: a process for the faults to act on.
    pub fn sleeper(&self, seconds: u32) -> std::process::Child {
        let mut cmd = Command::new("/bin/sleep");
        cmd.arg(seconds.to_string());
        self.put(&mut cmd);
        cmd.spawn().expect("start a sleeper in the cgroup")
    }

    /// Whether any process is in it or below it.
    pub fn populated(&self) -> bool {
        fs::read_to_string(self.path.join("cgroup.events"))
            .unwrap_or_default()
            .lines()
            .any(|l| l.trim() == "populated 1")
    }
}

impl Drop for TestCgroup {
    fn drop(&mut self) {
        for _ in 0..100 {
            if fs::remove_dir(&self.path).is_ok() || !self.path.exists() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        eprintln!("warning: could not remove {}", self.path.display());
    }
}

/// Runs `cmd` to completion, returning status, stdout and stderr as text.
pub fn run(cmd: &mut Command) -> (ExitStatus, String, String) {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("start {cmd:?}: {e}"));
    (
        out.status,
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// A running `chaos-user inject` (or `run`), started once its programs are attached.
pub struct Injector {
    pub child: Child,
    stderr: Arc<Mutex<Vec<String>>>,
    reader: Option<JoinHandle<()>>,
}

impl Injector {
    /// Starts `chaos-user ARGS` and waits until it says it is injecting.
    pub fn start(args: &[&str]) -> Injector {
        let mut cmd = chaos_user();
        cmd.args(args).stdout(Stdio::piped()).stderr(Stdio::piped());
        Self::start_cmd(cmd, "injecting into")
    }

    /// Starts a prepared command and waits for `ready` on its stderr.
    pub fn start_cmd(mut cmd: Command, ready: &str) -> Injector {
        let mut child = cmd.spawn().unwrap_or_else(|e| panic!("start {cmd:?}: {e}"));
        let stderr: ChildStderr = child.stderr.take().expect("piped stderr");
        let lines = Arc::new(Mutex::new(Vec::new()));
        let (tx, rx) = std::sync::mpsc::channel();
        let shared = lines.clone();
        let ready = ready.to_string();
        let reader = std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                eprintln!("    | {line}");
                if line.contains(&ready) && tx.send(()).is_err() {
                    break;
                }
                shared.lock().expect("lock").push(line);
            }
        });
        if rx.recv_timeout(Duration::from_secs(30)).is_err() {
            let _killed = child.kill();
            let _reaped = child.wait();
            panic!(
                "chaos-user did not start injecting: {:?}",
                lines.lock().expect("lock")
            );
        }
        Injector {
            child,
            stderr: lines,
            reader: Some(reader),
        }
    }

    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    /// Sends a signal.
    pub fn signal(&self, signal: i32) {
        // SAFETY: kill(2) on the PID of a child this test started and has not reaped.
        assert_eq!(
            unsafe { libc::kill(self.pid(), signal) },
            0,
            "kill {signal}"
        );
    }

    /// Sends SIGINT and waits for the exit.
    pub fn interrupt(mut self) -> (ExitStatus, Vec<String>) {
        self.signal(libc::SIGINT);
        self.wait()
    }

    /// Waits for the exit; returns the status and its stderr lines.
    pub fn wait(&mut self) -> (ExitStatus, Vec<String>) {
        let status = self.child.wait().expect("wait for chaos-user");
        // A command that `run` started may hold the pipe open after chaos-user is gone.
        if let Some(reader) = self.reader.take() {
            let deadline = Instant::now() + Duration::from_secs(2);
            while !reader.is_finished() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(10));
            }
            if reader.is_finished() {
                reader.join().expect("stderr reader");
            }
        }
        (status, self.stderr.lock().expect("lock").clone())
    }
}

impl Drop for Injector {
    fn drop(&mut self) {
        if self.reader.is_some() {
            let _killed = self.child.kill();
            let _reaped = self.child.wait();
        }
    }
}

/// Counts the distinct datagrams that reach a UDP socket on 127.0.0.1, draining as they come.
pub struct UdpCounter {
    pub port: u16,
    stop: Arc<AtomicBool>,
    handle: JoinHandle<(usize, Instant)>,
}

impl UdpCounter {
    pub fn start() -> UdpCounter {
        let (socket, _, port) = udp_receiver(Duration::from_millis(20));
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let handle = std::thread::spawn(move || {
            let mut seen = HashSet::new();
            let mut last = Instant::now();
            let mut buf = [0u8; 2048];
            while !flag.load(Ordering::Relaxed) {
                if let Ok(n) = socket.recv(&mut buf) {
                    last = Instant::now();
                    if n >= 4 {
                        seen.insert(u32::from_le_bytes([buf[0], buf[1], buf[2], buf[3]]));
                    }
                }
            }
            (seen.len(), last)
        });
        UdpCounter { port, stop, handle }
    }

    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Stops once nothing has arrived for a quiet spell; returns the distinct datagrams seen.
    pub fn finish(self) -> usize {
        std::thread::sleep(Duration::from_millis(300));
        self.stop.store(true, Ordering::Relaxed);
        self.handle.join().expect("receiver").0
    }
}

/// A UDP socket on 127.0.0.1 with a receive buffer large enough for a burst and a read
/// timeout that ends the burst; with its address and port.
pub fn udp_receiver(timeout: Duration) -> (UdpSocket, String, u16) {
    let socket = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind a UDP socket");
    let size: libc::c_int = 32 << 20;
    // SAFETY: setsockopt with a pointer to an int and its size.
    unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVBUFFORCE,
            (&size as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        );
    }
    socket.set_read_timeout(Some(timeout)).expect("timeout");
    let local = socket.local_addr().expect("address");
    (socket, local.to_string(), local.port())
}

/// The result line of `chaos-probe udp-send`.
#[derive(Debug)]
pub struct Sent {
    pub sent: u64,
    pub errors: u64,
}

/// Parses the JSON line a probe prints last.
pub fn last_json(stdout: &str) -> serde_json::Value {
    let line = stdout
        .lines()
        .rev()
        .find(|l| l.starts_with('{'))
        .unwrap_or_else(|| {
            panic!("no JSON line in the probe's output: {stdout:?}");
        });
    serde_json::from_str(line).expect("the probe's JSON")
}

/// Sends `count` numbered datagrams to `to` with the probe, in `cgroup` (or here), and waits.
pub fn udp_send(probe: &Path, cgroup: Option<&TestCgroup>, to: &str, count: u32) -> Sent {
    let mut cmd = Command::new(probe);
    cmd.args(["udp-send", to, &count.to_string(), "50"]);
    if let Some(cg) = cgroup {
        cg.put(&mut cmd);
    }
    let (status, stdout, stderr) = run(&mut cmd);
    assert!(status.success(), "udp-send failed: {status} {stderr}");
    let v = last_json(&stdout);
    Sent {
        sent: v["sent"].as_u64().expect("sent"),
        errors: v["errors"].as_u64().expect("errors"),
    }
}

/// Names of chaos-user's programs that the kernel still holds.
pub fn our_programs_loaded() -> Vec<String> {
    aya::programs::loaded_programs()
        .filter_map(Result::ok)
        .filter_map(|p| p.name_as_str().map(str::to_string))
        .filter(|n| n.starts_with("chaos_"))
        .collect()
}

/// Waits up to `limit` for the kernel to free chaos-user's programs; returns what is left.
pub fn programs_left_after(limit: Duration) -> Vec<String> {
    let deadline = Instant::now() + limit;
    loop {
        let left = our_programs_loaded();
        if left.is_empty() || Instant::now() > deadline {
            return left;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Files in the runtime directory (undo logs).
pub fn undo_logs() -> Vec<String> {
    fs::read_dir(runtime_dir())
        .map(|d| {
            d.filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default()
}

/// The 99.9% interval (normal approximation) for the number of successes in `n` draws at `p`.
pub fn binomial_interval(n: u64, p: f64) -> (f64, f64) {
    let mean = n as f64 * p;
    let sd = (n as f64 * p * (1.0 - p)).sqrt();
    (mean - 3.29 * sd, mean + 3.29 * sd)
}

/// Cgroups named like `run`'s transient ones, below this test's cgroup (where a `run` that the
/// test starts makes them).
pub fn run_cgroups() -> Vec<String> {
    fs::read_dir(cgroup2_mount().join(own_cgroup_name().trim_start_matches('/')))
        .map(|d| {
            d.filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.starts_with(chaos_user::cgroup::RUN_CGROUP_PREFIX))
                .collect()
        })
        .unwrap_or_default()
}

/// A network namespace the test creates (with `ip netns`), loopback up; deleted on drop.
pub struct TestNetns {
    pub name: String,
}

impl TestNetns {
    pub fn new(label: &str) -> TestNetns {
        let name = format!("chaos-{label}-{}", std::process::id());
        let (status, _, stderr) = run(Command::new("ip").args(["netns", "add", &name]));
        assert!(status.success(), "ip netns add: {stderr}");
        let (status, _, stderr) =
            run(Command::new("ip").args(["-n", &name, "link", "set", "lo", "up"]));
        assert!(status.success(), "lo up: {stderr}");
        TestNetns { name }
    }

    /// A veth pair: `host` here with 10.SUBNET.0.1/24, its peer `chaos-peer` in this
    /// namespace with 10.SUBNET.0.2/24, both up.
    pub fn veth_pair(&self, host: &str, subnet: u8) {
        for args in [
            format!(
                "link add {host} type veth peer name chaos-peer netns {}",
                self.name
            ),
            format!("addr add 10.{subnet}.0.1/24 dev {host}"),
            format!("link set {host} up"),
        ] {
            let (status, _, stderr) = run(Command::new("ip").args(args.split(' ')));
            assert!(status.success(), "ip {args}: {stderr}");
        }
        for args in [
            format!("addr add 10.{subnet}.0.2/24 dev chaos-peer"),
            "link set chaos-peer up".to_string(),
        ] {
            let (status, _, stderr) = run(self.command(&["ip"]).args(args.split(' ')));
            assert!(status.success(), "ip {args}: {stderr}");
        }
    }

    /// `ip netns exec NAME` followed by `args`.
    pub fn command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.name]).args(args);
        cmd
    }
}

impl Drop for TestNetns {
    fn drop(&mut self) {
        let _deleted = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}
