//! Kill torture: `chaos-user inject` killed with SIGKILL at a random moment of its life, for
//! every fault kind this kernel runs: while it loads and verifies, while it attaches, while it
//! injects, or while it tears down after SIGINT. After each trial `chaos-user recover` runs if
//! an undo log is left, and then nothing of ours may remain: no program or link, qdisc, XDP
//! program, cgroup, stressor, fill file, frozen cgroup, limit or undo log.
//!
//! The trials are seeded: each failure prints its seed, and `CHAOS_TORTURE_SEED=N` replays
//! the run. A short seeded run is part of `cargo xtask test`; `--long` runs at least 100 trials.
#![allow(clippy::print_stdout, reason = "tests print their trials")]

use std::{
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use chaos_tests::{
    TestCgroup, chaos_user, programs_left_after, root_or_skip, run, skip, undo_logs,
};

/// A small deterministic generator (xorshift64*): the trials replay from their seed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// Uniform in `0..n`.
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

/// When the trial kills the injector.
#[derive(Debug, Clone, Copy)]
enum Moment {
    /// This long after the start: loading, attaching or injecting, as it falls.
    After(Duration),
    /// Once it injects, SIGINT, then SIGKILL this long into the teardown.
    Teardown(Duration),
}

/// What the trials need of the machine: a target with a process in it, a filesystem to fill.
struct Scene {
    target: TestCgroup,
    sleeper: Child,
    fill_dir: PathBuf,
    file: PathBuf,
    qdiscs: String,
    limits: Vec<(PathBuf, String)>,
}

impl Scene {
    fn new() -> Option<Scene> {
        let fill_dir =
            std::env::temp_dir().join(format!("chaos-torture-{}.mnt", std::process::id()));
        std::fs::create_dir_all(&fill_dir).expect("create the mount point");
        let (status, _, stderr) = run(Command::new("mount")
            .args(["-t", "tmpfs", "-o", "size=64m", "chaos-torture"])
            .arg(&fill_dir));
        if !status.success() {
            let _removed = std::fs::remove_dir(&fill_dir);
            skip(&format!("a tmpfs to fill: {stderr}"));
            return None;
        }
        let target = TestCgroup::new("torture");
        let sleeper = target.sleeper(600);
        let file = fill_dir.join("data");
        std::fs::write(&file, vec![7u8; 1 << 16]).expect("write a file");
        let limits = ["cpu.max", "memory.max", "cgroup.freeze"]
            .iter()
            .map(|f| target.path.join(f))
            .filter_map(|p| Some((p.clone(), std::fs::read_to_string(&p).ok()?)))
            .collect();
        Some(Scene {
            target,
            sleeper,
            fill_dir,
            file,
            qdiscs: qdiscs(),
            limits,
        })
    }

    /// Every fault kind this kernel runs, as `inject` arguments; the others are skipped with
    /// their reason.
    fn faults(&self) -> Vec<(String, Vec<String>)> {
        let cgroup = ["--cgroup".to_string(), self.target.name.clone()];
        let dir = self.fill_dir.display();
        let file = self.file.display();
        let specs = [
            "loss:p=0.5".to_string(),
            "delay:time=10ms".into(),
            "bandwidth:rate=10mbit".into(),
            "corrupt:p=0.1".into(),
            "duplicate:p=0.1".into(),
            "connect:errno=ECONNREFUSED,dport=1".into(),
            "reset:interval=200ms,dport=1".into(),
            "dns:name=torture.invalid,answer=nxdomain".into(),
            "pause:for=100ms,interval=300ms".into(),
            "device:major=1,minor=5,errno=EIO".into(),
            "fd-limit:p=0.5".into(),
            "crash:syscall=getppid,p=0.5".into(),
            "file:op=open,p=0.5".into(),
            "nospace:p=0.5".into(),
            "fail:syscall=fsync,errno=EIO".into(),
            format!("disk-fill:path={dir},free=8MiB"),
            format!("page-cache:path={file},interval=200ms"),
            "cpu-throttle:quota=20%".into(),
            "cpu-hog:workers=1,load=10%".into(),
            "memory-pressure:size=16MiB".into(),
            "memory-pressure:limit=64MiB".into(),
            "memory-leak:rate=20MiB/s,max=32MiB".into(),
            format!("io-stress:path={dir},workers=1,bytes=1MiB"),
            "xdp-drop:dev=lo,p=0.01".into(),
        ];
        let (status, stdout, stderr) = run(chaos_user().args(["doctor", "--json", "-"]));
        assert!(status.success(), "doctor: {stderr}");
        let doctor: serde_json::Value = serde_json::from_str(&stdout).expect("doctor's JSON");
        let mut out = Vec::new();
        for spec in specs {
            let kind = spec.split(':').next().unwrap_or_default().to_string();
            let finding = doctor["faults"]
                .as_array()
                .and_then(|f| f.iter().find(|f| f["kind"] == kind.as_str()))
                .unwrap_or_else(|| panic!("doctor lists {kind}"));
            if finding["available"] != true {
                skip(&format!(
                    "torture of {kind}: {}",
                    finding["reason"].as_str().unwrap_or("not on this kernel")
                ));
                continue;
            }
            let mut args = vec!["inject".to_string()];
            if kind != "xdp-drop" && kind != "disk-fill" && kind != "page-cache" {
                args.extend(cgroup.iter().cloned());
            }
            args.extend(["--fault".to_string(), spec]);
            out.push((kind, args));
        }
        out
    }

    /// What of ours remains; empty when nothing does.
    fn leftovers(&self) -> Vec<String> {
        let mut left = Vec::new();
        let programs = programs_left_after(Duration::from_secs(3));
        if !programs.is_empty() {
            left.push(format!("programs {programs:?}"));
        }
        let logs = undo_logs();
        if !logs.is_empty() {
            left.push(format!("undo logs {logs:?}"));
        }
        let now = qdiscs();
        if now != self.qdiscs {
            left.push(format!("qdiscs changed:\n{}\nnow:\n{now}", self.qdiscs));
        }
        let (_, link, _) = run(Command::new("ip").args(["link", "show", "dev", "lo"]));
        if link.contains("xdp") {
            left.push(format!("XDP on lo: {link}"));
        }
        for (path, before) in &self.limits {
            let now = std::fs::read_to_string(path).unwrap_or_default();
            if &now != before {
                left.push(format!("{} is {now:?}, was {before:?}", path.display()));
            }
        }
        let fills: Vec<String> = std::fs::read_dir(&self.fill_dir)
            .map(|d| {
                d.filter_map(|e| e.ok())
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .filter(|n| n != "data")
                    .collect()
            })
            .unwrap_or_default();
        if !fills.is_empty() {
            left.push(format!("files in the filled filesystem: {fills:?}"));
        }
        let procs =
            std::fs::read_to_string(self.target.path.join("cgroup.procs")).unwrap_or_default();
        let others: Vec<&str> = procs
            .split_whitespace()
            .filter(|p| *p != self.sleeper.id().to_string())
            .collect();
        if !others.is_empty() {
            left.push(format!(
                "processes in the target besides its own: {others:?}"
            ));
        }
        let groups = ours_below(&chaos_tests::cgroup2_mount());
        if !groups.is_empty() {
            left.push(format!("cgroups {groups:?}"));
        }
        for v1 in ["cpu", "memory"] {
            let groups = ours_below(&Path::new("/sys/fs/cgroup").join(v1));
            if !groups.is_empty() {
                left.push(format!("v1 cgroups {groups:?}"));
            }
        }
        left
    }
}

impl Drop for Scene {
    fn drop(&mut self) {
        let _killed = self.sleeper.kill();
        let _reaped = self.sleeper.wait();
        let _unmounted = run(Command::new("umount").arg(&self.fill_dir));
        let _removed = std::fs::remove_dir(&self.fill_dir);
    }
}

/// The qdiscs of every interface, as `tc` lists them.
fn qdiscs() -> String {
    run(Command::new("tc").args(["qdisc", "show"])).1
}

/// Cgroups that chaos-user makes (`chaos-user-*`), anywhere below `dir`.
fn ours_below(dir: &Path) -> Vec<String> {
    let mut found = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in entries.flatten() {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                if e.file_name().to_string_lossy().starts_with("chaos-user-") {
                    found.push(e.path().display().to_string());
                }
                stack.push(e.path());
            }
        }
    }
    found
}

/// One trial: start, kill at the moment, recover where a log is left. The injector's output.
fn trial(args: &[String], moment: Moment) -> String {
    let log = std::env::temp_dir().join(format!("chaos-torture-{}.log", std::process::id()));
    let out = std::fs::File::create(&log).expect("create the log");
    let mut child = chaos_user()
        .args(args)
        .stdout(Stdio::null())
        .stderr(out)
        .spawn()
        .expect("start chaos-user");
    let pid = child.id() as i32;
    match moment {
        Moment::After(d) => std::thread::sleep(d),
        Moment::Teardown(d) => {
            let deadline = Instant::now() + Duration::from_secs(30);
            while !std::fs::read_to_string(&log)
                .unwrap_or_default()
                .contains("injecting into")
                && Instant::now() < deadline
                && matches!(child.try_wait(), Ok(None))
            {
                std::thread::sleep(Duration::from_millis(10));
            }
            // SAFETY: kill(2) on the PID of our own child, not yet reaped.
            unsafe { libc::kill(pid, libc::SIGINT) };
            std::thread::sleep(d);
        }
    }
    // SAFETY: as above.
    unsafe { libc::kill(pid, libc::SIGKILL) };
    let _reaped = child.wait();
    let mut text = std::fs::read_to_string(&log).unwrap_or_default();
    let _removed = std::fs::remove_file(&log);
    if !undo_logs().is_empty() {
        let (status, stdout, stderr) = run(chaos_user().arg("recover"));
        text += &format!("recover: {status}\n{stdout}{stderr}");
    }
    text
}

#[test]
fn sigkill_at_any_moment_leaves_nothing_once_recovered() {
    if !root_or_skip() {
        return;
    }
    let Some(scene) = Scene::new() else {
        return;
    };
    let seed = std::env::var("CHAOS_TORTURE_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(1, |d| d.as_nanos() as u64)
                | 1
        });
    let long = std::env::var_os("CHAOS_TEST_LONG").is_some();
    let faults = scene.faults();
    let per_kind = if long {
        100usize.div_ceil(faults.len().max(1)).max(4)
    } else {
        1
    };
    println!(
        "torture seed {seed}: {} kinds × {per_kind} trials (CHAOS_TORTURE_SEED={seed} replays)",
        faults.len()
    );
    let mut rng = Rng(seed);
    let mut trials = 0;
    for round in 0..per_kind {
        for (kind, args) in &faults {
            let moment = if rng.below(4) == 0 {
                Moment::Teardown(Duration::from_millis(rng.below(300)))
            } else {
                Moment::After(Duration::from_millis(rng.below(1500)))
            };
            trials += 1;
            println!("trial {trials} ({kind}, round {round}): kill at {moment:?}");
            let output = trial(args, moment);
            let left = scene.leftovers();
            assert!(
                left.is_empty(),
                "seed {seed}, trial {trials} ({kind}, {moment:?}): left behind:\n{}\n\
                 chaos-user said:\n{output}",
                left.join("\n")
            );
        }
    }
    println!("{trials} trials, nothing left behind");
}
