//! File and syscall faults at the LSM hooks (`file`, `nospace`, `fail`, `fd-limit` on files):
//! their effect on real processes and the distribution's tools in a real cgroup.
//!
//! They need BPF trampolines, which the host kernel of these machines refuses: the VM lane runs
//! them twice, with the BPF LSM active (`lsm` programs) and without it (modify-return), and says
//! which through `CHAOS_EXPECT_HOOKS`.
#![allow(clippy::print_stdout, reason = "tests print their measurements")]

use std::{
    io::Write as _,
    os::unix::process::ExitStatusExt as _,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::Duration,
};

use chaos_tests::{
    Injector, TestCgroup, chaos_user, doctor_finding, expected_hooks, last_json,
    programs_left_after, root_or_skip, run, skip,
};

const PROBE: &str = env!("CARGO_BIN_EXE_chaos-probe");

/// What the report lists for the `file_open` hook in this lane (`lsm file_open` or `fmod_ret
/// security_file_open`), or None after printing why the test is skipped.
fn hook_lane() -> Option<String> {
    if !root_or_skip() {
        return None;
    }
    let kind = match expected_hooks() {
        Some(kind) => kind,
        None => {
            // Not the VM lane: run only where this kernel loads the hooks, by the product's
            // own account, and expect the kind its LSM list calls for.
            let file = doctor_finding("file");
            if file["available"] != true {
                skip(&format!(
                    "BPF trampolines (lsm or fmod_ret programs): {}",
                    file["reason"]
                ));
                return None;
            }
            let lsm = std::fs::read_to_string("/sys/kernel/security/lsm").unwrap_or_default();
            if lsm.trim().split(',').any(|l| l == "bpf") {
                "lsm".to_string()
            } else {
                "fmod_ret".to_string()
            }
        }
    };
    Some(match kind.as_str() {
        "lsm" => "lsm file_open".to_string(),
        _ => "fmod_ret security_file_open".to_string(),
    })
}

/// A directory of the test's own, removed at the end.
struct TestDir(PathBuf);

impl TestDir {
    fn new(label: &str) -> TestDir {
        let path = std::env::temp_dir().join(format!("chaos-{label}-{}", std::process::id()));
        let _stale = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path).expect("create the test directory");
        TestDir(path)
    }

    fn file(&self, name: &str, text: &str) -> PathBuf {
        let path = self.0.join(name);
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).expect("create a directory");
        }
        std::fs::write(&path, text).expect("write a test file");
        path
    }

    fn arg(&self, name: &str) -> String {
        self.0.join(name).display().to_string()
    }
}

impl Drop for TestDir {
    fn drop(&mut self) {
        let _removed = std::fs::remove_dir_all(&self.0);
    }
}

/// Runs `cmd` in `cgroup` (or here): status, stdout, stderr.
fn run_in(cgroup: Option<&TestCgroup>, cmd: &mut Command) -> (bool, String, String) {
    if let Some(cg) = cgroup {
        cg.put(cmd);
    }
    let (status, stdout, stderr) = run(cmd);
    (status.success(), stdout, stderr)
}

/// `chaos-probe ARGS` in `cgroup` or here: its JSON line.
fn probe_in(cgroup: Option<&TestCgroup>, dir: Option<&Path>, args: &[&str]) -> serde_json::Value {
    let mut cmd = Command::new(PROBE);
    cmd.args(args);
    if let Some(dir) = dir {
        cmd.current_dir(dir);
    }
    let (ok, stdout, stderr) = run_in(cgroup, &mut cmd);
    assert!(ok, "{stderr}");
    last_json(&stdout)
}

/// A report path of this test, and the report once the session is over.
struct Report(PathBuf);

impl Report {
    fn new(label: &str) -> Report {
        Report(std::env::temp_dir().join(format!("chaos-{label}-{}.json", std::process::id())))
    }

    fn arg(&self) -> &str {
        self.0.to_str().expect("a UTF-8 path")
    }

    fn read(self) -> serde_json::Value {
        let text = std::fs::read(&self.0).expect("report");
        std::fs::remove_file(&self.0).expect("remove the report");
        serde_json::from_slice(&text).expect("JSON report")
    }
}

fn inject(target: &TestCgroup, faults: &[&str], report: &Report) -> Injector {
    let mut args = vec!["inject", "--cgroup", &target.name, "--json", report.arg()];
    for f in faults {
        args.extend(["--fault", f]);
    }
    Injector::start(&args)
}

fn attachments(r: &serde_json::Value) -> Vec<String> {
    r["attachments"]
        .as_array()
        .expect("attachments")
        .iter()
        .map(|a| a.as_str().expect("text").to_string())
        .collect()
}

#[test]
fn file_open_fails_under_the_path_inside_only_whatever_the_name() {
    let Some(hook) = hook_lane() else {
        return;
    };
    let dir = TestDir::new("file-open");
    let other = TestDir::new("file-open-other");
    let secret = dir.file("sub/f", "data\n");
    let outside = other.file("o", "data\n");
    let link = other.0.join("link");
    std::os::unix::fs::symlink(&secret, &link).expect("symlink");
    let target = TestCgroup::new("target");
    let report = Report::new("file-open");
    let spec = format!("file:op=open,errno=EACCES,path={}", dir.0.display());
    let injector = inject(&target, &[&spec], &report);

    let open = |cg: Option<&TestCgroup>, path: &Path| {
        probe_in(cg, None, &["open", path.to_str().expect("UTF-8")])
    };
    assert_eq!(open(Some(&target), &secret)["errno"], libc::EACCES);
    assert_eq!(
        open(Some(&target), &link)["errno"],
        libc::EACCES,
        "through a symlink"
    );
    let relative = probe_in(Some(&target), Some(&dir.0.join("sub")), &["open", "f"]);
    assert_eq!(relative["errno"], libc::EACCES, "by a relative name");
    assert_eq!(
        open(Some(&target), &outside)["ok"],
        true,
        "outside the path"
    );
    assert_eq!(open(None, &secret)["ok"], true, "outside the cgroup");
    let (ok, _, stderr) = run_in(Some(&target), Command::new("/usr/bin/cat").arg(&secret));
    assert!(!ok && stderr.contains("Permission denied"), "cat: {stderr}");
    // An open that would create its file fails before the file exists.
    let (ok, _, stderr) = run_in(
        Some(&target),
        Command::new("/usr/bin/cp").args(["/etc/hostname", &dir.arg("made")]),
    );
    assert!(!ok && stderr.contains("Permission denied"), "cp: {stderr}");
    assert!(!dir.0.join("made").exists(), "a failed open left its file");

    let (status, lines) = injector.interrupt();
    assert!(status.success(), "{lines:?}");
    assert_eq!(
        open(Some(&target), &secret)["ok"],
        true,
        "after the session"
    );
    let r = report.read();
    assert!(attachments(&r).contains(&hook), "{hook} in {r}");
    let calls = &r["faults"][0]["calls"];
    assert_eq!(calls["injected"], 5, "three probes, cat and cp: {r}");
    assert_eq!(calls["passed"], 0, "{r}");
}

#[test]
fn nospace_fails_create_and_write_as_a_full_disk_would() {
    if hook_lane().is_none() {
        return;
    }
    let dir = TestDir::new("nospace");
    let log = dir.file("log", "x");
    let target = TestCgroup::new("target");
    let report = Report::new("nospace");
    let spec = format!("nospace:path={}", dir.0.display());
    let injector = inject(&target, &[&spec], &report);

    let (ok, _, stderr) = run_in(
        Some(&target),
        Command::new("/usr/bin/cp").args(["/etc/hostname", &dir.arg("new")]),
    );
    assert!(
        !ok && stderr.contains("No space left on device"),
        "cp: {stderr}"
    );
    // Closed inside the program: a buffered write that first meets the disk at exit fails
    // without a word.
    let append = format!("with open('{}', 'a') as f: f.write('more')", log.display());
    let (ok, _, stderr) = run_in(
        Some(&target),
        Command::new("/usr/bin/python3").args(["-c", &append]),
    );
    assert!(
        !ok && stderr.contains("No space left on device"),
        "python3: {stderr}"
    );
    let (ok, _, stderr) = run_in(
        Some(&target),
        Command::new("/usr/bin/mkdir").arg(dir.arg("sub")),
    );
    assert!(
        !ok && stderr.contains("No space left on device"),
        "mkdir: {stderr}"
    );
    let (ok, stdout, stderr) = run_in(Some(&target), Command::new("/usr/bin/cat").arg(&log));
    assert!(ok && stdout == "x", "reads still work: {stdout} {stderr}");
    let (ok, _, stderr) = run_in(
        None,
        Command::new("/usr/bin/cp").args(["/etc/hostname", &dir.arg("fine")]),
    );
    assert!(ok, "outside the cgroup: {stderr}");

    let (status, lines) = injector.interrupt();
    assert!(status.success(), "{lines:?}");
    let r = report.read();
    let injected = r["faults"][0]["calls"]["injected"].as_u64().expect("count");
    assert!(injected >= 3, "cp's create, python's write, mkdir: {r}");
    assert_eq!(std::fs::read_to_string(&log).expect("log"), "x");
}

#[test]
fn sqlite3_reports_a_disk_io_error_when_writes_fail() {
    if hook_lane().is_none() {
        return;
    }
    let dir = TestDir::new("sqlite");
    let db = dir.arg("db");
    let sql = |cg: Option<&TestCgroup>, statement: &str| {
        run_in(cg, Command::new("/usr/bin/sqlite3").args([&db, statement]))
    };
    let (ok, _, stderr) = sql(None, "create table t(x); insert into t values(1);");
    assert!(ok, "{stderr}");
    let target = TestCgroup::new("target");
    let report = Report::new("sqlite");
    let spec = format!("file:op=write,errno=EIO,path={}", dir.0.display());
    let injector = inject(&target, &[&spec], &report);

    let (ok, _, stderr) = sql(Some(&target), "insert into t values(2);");
    assert!(
        !ok && stderr.contains("disk I/O error"),
        "sqlite3: {stderr}"
    );
    let (ok, stdout, stderr) = sql(Some(&target), "select count(*) from t;");
    assert!(
        ok && stdout.trim() == "1",
        "reads work and the insert left nothing: {stdout} {stderr}"
    );

    let (status, lines) = injector.interrupt();
    assert!(status.success(), "{lines:?}");
    let (ok, _, stderr) = sql(Some(&target), "insert into t values(2);");
    assert!(ok, "after the session: {stderr}");
    let r = report.read();
    assert!(
        r["faults"][0]["calls"]["injected"].as_u64() >= Some(1),
        "{r}"
    );
}

#[test]
fn nth_and_every_count_each_process_s_calls_exactly() {
    if hook_lane().is_none() {
        return;
    }
    let dir = TestDir::new("nth");
    let a = dir.file("a", "a");
    let b = dir.file("b", "b");
    let target = TestCgroup::new("target");
    let report = Report::new("nth");
    let nth = format!("file:op=open,errno=EIO,path={},nth=3", a.display());
    let every = format!("file:op=open,errno=EIO,path={},every=2", b.display());
    let injector = inject(&target, &[&nth, &every], &report);

    let opens = |path: &Path| {
        probe_in(
            Some(&target),
            None,
            &["open-n", path.to_str().expect("UTF-8"), "6"],
        )["errnos"]
            .clone()
    };
    let eio = libc::EIO;
    for _ in 0..2 {
        // Counted per process: each new process starts again from one.
        assert_eq!(opens(&a), serde_json::json!([0, 0, eio, 0, 0, 0]));
        assert_eq!(opens(&b), serde_json::json!([0, eio, 0, eio, 0, eio]));
    }
    let (status, lines) = injector.interrupt();
    assert!(status.success(), "{lines:?}");
    let r = report.read();
    assert_eq!(r["faults"][0]["calls"]["injected"], 2, "{r}");
    assert_eq!(r["faults"][1]["calls"]["injected"], 6, "{r}");
}

/// Starts `chaos-probe after-line WHAT` in `cgroup` (or here), waiting for its line.
fn waiting_probe(cgroup: Option<&TestCgroup>, what: &str) -> std::process::Child {
    let mut cmd = Command::new(PROBE);
    cmd.args(["after-line", what])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped());
    if let Some(cg) = cgroup {
        cg.put(&mut cmd);
    }
    cmd.spawn().expect("start chaos-probe")
}

/// Lets a waiting probe go on; its JSON line.
fn release(mut child: std::process::Child) -> serde_json::Value {
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(b"go\n")
        .expect("write the line");
    let out = child.wait_with_output().expect("wait for chaos-probe");
    assert!(out.status.success());
    last_json(&String::from_utf8_lossy(&out.stdout))
}

#[test]
fn fd_limit_fails_files_pipes_and_sockets_inside_only() {
    if hook_lane().is_none() {
        return;
    }
    let target = TestCgroup::new("target");
    // Started before the fault: a process that could not open its own binary never runs.
    let inside = waiting_probe(Some(&target), "files");
    let outside = waiting_probe(None, "files");
    let report = Report::new("fd-limit");
    let injector = inject(&target, &["fd-limit"], &report);
    let emfile = libc::EMFILE;
    assert_eq!(
        release(inside),
        serde_json::json!({"open": emfile, "pipe": emfile, "socket": emfile})
    );
    assert_eq!(
        release(outside),
        serde_json::json!({"open": 0, "pipe": 0, "socket": 0})
    );
    let (status, lines) = injector.interrupt();
    assert!(status.success(), "{lines:?}");
    let after = waiting_probe(Some(&target), "files");
    assert_eq!(
        release(after),
        serde_json::json!({"open": 0, "pipe": 0, "socket": 0}),
        "after the session"
    );
    let r = report.read();
    assert!(
        r["faults"][0]["files"]["injected"].as_u64() >= Some(3),
        "{r}"
    );
}

#[test]
fn fail_fails_fork_and_mkdir_with_the_chosen_errno() {
    if hook_lane().is_none() {
        return;
    }
    let dir = TestDir::new("fail");
    let other = TestDir::new("fail-other");
    let target = TestCgroup::new("target");
    let forker = waiting_probe(Some(&target), "fork");
    let report = Report::new("fail");
    let mkdir = format!("fail:syscall=mkdir,errno=EROFS,path={}", dir.0.display());
    let rename = format!("fail:syscall=rename,errno=EBUSY,path={}", dir.0.display());
    let stays = dir.file("stays", "s");
    let comes = other.file("comes", "c");
    let injector = inject(
        &target,
        &["fail:syscall=fork,errno=EAGAIN", &mkdir, &rename],
        &report,
    );
    assert_eq!(release(forker), serde_json::json!({"fork": libc::EAGAIN}));
    let (ok, _, stderr) = run_in(
        Some(&target),
        Command::new("/usr/bin/mkdir").arg(dir.arg("x")),
    );
    assert!(
        !ok && stderr.contains("Read-only file system"),
        "mkdir: {stderr}"
    );
    let (ok, _, stderr) = run_in(
        Some(&target),
        Command::new("/usr/bin/mkdir").arg(other.arg("x")),
    );
    assert!(ok, "outside the path: {stderr}");
    let (ok, _, stderr) = run_in(None, Command::new("/usr/bin/mkdir").arg(dir.arg("y")));
    assert!(ok, "outside the cgroup: {stderr}");
    // Either name of a rename under the path: out of the directory, and into it.
    for (from, to) in [(&stays, other.0.join("went")), (&comes, dir.0.join("came"))] {
        let (ok, _, stderr) = run_in(
            Some(&target),
            Command::new("/usr/bin/mv").arg(from).arg(&to),
        );
        assert!(
            !ok && stderr.contains("busy"),
            "mv {}: {stderr}",
            from.display()
        );
        assert!(from.exists(), "{} stays", from.display());
    }
    let (status, lines) = injector.interrupt();
    assert!(status.success(), "{lines:?}");
    let r = report.read();
    assert_eq!(r["faults"][0]["calls"]["injected"], 1, "{r}");
    assert_eq!(r["faults"][1]["calls"]["injected"], 1, "{r}");
    assert_eq!(r["faults"][2]["calls"]["injected"], 2, "{r}");
    let errors = r["syscall_errors"].to_string();
    assert!(errors.contains("EROFS"), "the target's own view: {errors}");
}

#[test]
fn crash_on_open_under_a_path_signals_from_the_hook() {
    if hook_lane().is_none() {
        return;
    }
    let dir = TestDir::new("crash-open");
    let other = TestDir::new("crash-open-other");
    let inside = dir.file("f", "f");
    let outside = other.file("f", "f");
    let target = TestCgroup::new("target");
    let report = Report::new("crash-open");
    let spec = format!(
        "crash:syscall=openat,signal=SIGABRT,nth=2,path={}",
        dir.0.display()
    );
    let injector = inject(&target, &[&spec], &report);
    let opens = |path: &Path| {
        let mut cmd = Command::new(PROBE);
        cmd.args(["open-n", path.to_str().expect("UTF-8"), "3"]);
        target.put(&mut cmd);
        run(&mut cmd).0
    };
    assert!(opens(&outside).success(), "no signal outside the path");
    assert_eq!(
        opens(&inside).signal(),
        Some(libc::SIGABRT),
        "under the path"
    );
    let (status, lines) = injector.interrupt();
    assert!(status.success(), "{lines:?}");
    let r = report.read();
    assert_eq!(r["faults"][0]["calls"]["injected"], 1, "{r}");
}

#[test]
fn sigkill_leaves_no_hook_program_behind() {
    if hook_lane().is_none() {
        return;
    }
    let dir = TestDir::new("kill");
    let f = dir.file("f", "f");
    let target = TestCgroup::new("target");
    let spec = format!("file:op=open+read,errno=EIO,path={}", dir.0.display());
    let mut injector = Injector::start(&["inject", "--cgroup", &target.name, "--fault", &spec]);
    let path = f.to_str().expect("UTF-8");
    assert_eq!(
        probe_in(Some(&target), None, &["open", path])["errno"],
        libc::EIO
    );
    injector.signal(libc::SIGKILL);
    let (status, _) = injector.wait();
    assert_eq!(status.code(), None, "killed by a signal");
    assert_eq!(
        programs_left_after(Duration::from_secs(2)),
        Vec::<String>::new(),
        "programs of ours left"
    );
    assert_eq!(probe_in(Some(&target), None, &["open", path])["ok"], true);
}

#[test]
fn file_faults_are_refused_with_the_reason_where_trampolines_do_not_run() {
    if !root_or_skip() {
        return;
    }
    if expected_hooks().is_some() || doctor_finding("file")["available"] == true {
        skip("this kernel runs BPF trampolines: nothing to refuse");
        return;
    }
    let target = TestCgroup::new("target");
    for spec in ["file:op=open", "nospace", "fail:syscall=fork,errno=EAGAIN"] {
        let (status, _, stderr) = run(chaos_user().args([
            "inject",
            "--cgroup",
            &target.name,
            "--fault",
            spec,
            "--duration",
            "1s",
        ]));
        assert_eq!(status.code(), Some(3), "{spec}: {stderr}");
        assert!(stderr.contains("BPF trampolines"), "{spec}: {stderr}");
        assert_eq!(stderr.lines().count(), 1, "one line: {stderr}");
    }
    assert_eq!(
        programs_left_after(Duration::from_secs(1)),
        Vec::<String>::new()
    );
}
