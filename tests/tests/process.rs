//! Process faults: their effect on real processes in a real cgroup.
#![allow(clippy::print_stdout, reason = "tests print their measurements")]

use std::{os::unix::process::ExitStatusExt as _, path::Path, process::Command, time::Duration};

use chaos_tests::{
    Injector, TestCgroup, chaos_user, doctor_finding, expected_hooks, last_json, root_or_skip, run,
    skip, undo_logs,
};

const PROBE: &str = env!("CARGO_BIN_EXE_chaos-probe");

/// The seconds `chaos-probe sleep-loop 100 10` takes, here or under `chaos-user run`'s faults.
fn sleep_loop(faults: &[&str], json: Option<&Path>) -> f64 {
    let mut cmd = chaos_user();
    if faults.is_empty() {
        cmd = Command::new(PROBE);
    } else {
        cmd.arg("run");
        for f in faults {
            cmd.args(["--fault", f]);
        }
        if let Some(json) = json {
            cmd.arg("--json").arg(json);
        }
        cmd.args(["--", PROBE]);
    }
    cmd.args(["sleep-loop", "100", "10"]);
    let (status, stdout, stderr) = run(&mut cmd);
    assert!(status.success(), "{stderr}");
    last_json(&stdout)["seconds"].as_f64().expect("seconds")
}

#[test]
fn pause_stretches_a_timed_loop_by_the_time_frozen() {
    if !root_or_skip() {
        return;
    }
    let baseline = sleep_loop(&[], None);
    let json = std::env::temp_dir().join(format!("chaos-pause-{}.json", std::process::id()));
    let paused = sleep_loop(&["pause:for=200ms,interval=500ms"], Some(&json));
    let r: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&json).expect("report")).expect("JSON");
    std::fs::remove_file(&json).expect("remove the report");
    let rounds = r["faults"][0]["pauses"]["injected"]
        .as_u64()
        .expect("rounds");
    let frozen = rounds as f64 * 0.2;
    let stretch = paused - baseline;
    println!(
        "baseline {baseline:.3}s, paused {paused:.3}s: {stretch:.3}s longer; {rounds} pauses of \
         200ms = {frozen:.3}s"
    );
    assert!(rounds >= 2, "{r}");
    // The last pause may come after the loop ended, before `run` saw its command exit.
    let during_loop = [frozen, frozen - 0.2];
    assert!(
        during_loop.iter().any(|f| (stretch - f).abs() <= 0.1),
        "the loop took {stretch:.3}s longer, the pauses were {frozen:.3}s"
    );
}

#[test]
fn a_cgroup_frozen_when_chaos_user_is_killed_is_thawed_by_recover() {
    if !root_or_skip() {
        return;
    }
    let target = TestCgroup::new("target");
    let mut sleeper = target.sleeper(30);
    let mut injector = Injector::start(&[
        "inject",
        "--cgroup",
        &target.name,
        "--fault",
        "pause:for=5s,interval=5500ms",
    ]);
    std::thread::sleep(Duration::from_millis(1200));
    let events = || std::fs::read_to_string(target.path.join("cgroup.events")).expect("events");
    assert!(events().contains("frozen 1"), "frozen by now: {}", events());
    injector.signal(libc::SIGKILL);
    injector.wait();
    assert!(
        events().contains("frozen 1"),
        "a killed session leaves it frozen"
    );
    assert_eq!(undo_logs().len(), 1, "the undo log knows");
    let (status, stdout, stderr) = run(chaos_user().arg("recover"));
    assert!(status.success(), "{stdout} {stderr}");
    assert!(stdout.contains("the freeze of cgroup"), "{stdout}");
    std::thread::sleep(Duration::from_millis(100));
    assert!(events().contains("frozen 0"), "thawed: {}", events());
    assert!(undo_logs().is_empty());
    let _killed = sleeper.kill();
    let _reaped = sleeper.wait();
}

/// `chaos-probe open PATH` in `cgroup` or here: its JSON line.
fn open_in(cgroup: Option<&TestCgroup>, path: &str) -> serde_json::Value {
    let mut cmd = Command::new(PROBE);
    cmd.args(["open", path]);
    if let Some(cg) = cgroup {
        cg.put(&mut cmd);
    }
    let (status, stdout, stderr) = run(&mut cmd);
    assert!(status.success(), "{stderr}");
    last_json(&stdout)
}

#[test]
fn device_opens_fail_with_the_chosen_errno_inside_only() {
    if !root_or_skip() {
        return;
    }
    let target = TestCgroup::new("target");
    let json = std::env::temp_dir().join(format!("chaos-device-{}.json", std::process::id()));
    // /dev/zero is character device 1:5; /dev/null, 1:3, stays usable.
    let injector = Injector::start(&[
        "inject",
        "--cgroup",
        &target.name,
        "--fault",
        "device:major=1,minor=5,errno=EIO",
        "--json",
        json.to_str().expect("a UTF-8 path"),
    ]);
    assert_eq!(open_in(Some(&target), "/dev/zero")["errno"], libc::EIO);
    assert_eq!(open_in(Some(&target), "/dev/null")["ok"], true);
    assert_eq!(open_in(None, "/dev/zero")["ok"], true, "outside the cgroup");
    let (status, _) = injector.interrupt();
    assert!(status.success());
    assert_eq!(
        open_in(Some(&target), "/dev/zero")["ok"],
        true,
        "after the session"
    );
    let r: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&json).expect("report")).expect("JSON");
    std::fs::remove_file(&json).expect("remove the report");
    assert_eq!(r["faults"][0]["accesses"]["injected"], 1, "{r}");
}

#[test]
fn fd_limit_fails_socket_creation_with_emfile_inside_only() {
    if !root_or_skip() {
        return;
    }
    let covers_files = expected_hooks().is_some()
        || !doctor_finding("fd-limit")["how"]
            .to_string()
            .contains("sockets only");
    if covers_files {
        skip(
            "this kernel runs the file allocation hook, so fd-limit covers files too \
             (fd_limit_fails_files_pipes_and_sockets_inside_only)",
        );
        return;
    }
    let target = TestCgroup::new("target");
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("address").to_string();
    let injector = Injector::start(&["inject", "--cgroup", &target.name, "--fault", "fd-limit"]);
    let connect = |cgroup: Option<&TestCgroup>| {
        let mut cmd = Command::new(PROBE);
        cmd.args(["tcp-connect", &addr]);
        if let Some(cg) = cgroup {
            cg.put(&mut cmd);
        }
        let (status, stdout, stderr) = run(&mut cmd);
        assert!(status.success(), "{stderr}");
        last_json(&stdout)
    };
    assert_eq!(connect(Some(&target))["errno"], libc::EMFILE);
    assert_eq!(connect(None)["ok"], true, "outside the cgroup");
    assert_eq!(
        open_in(Some(&target), "/dev/null")["ok"],
        true,
        "sockets only"
    );
    let (status, lines) = injector.interrupt();
    assert!(status.success(), "{lines:?}");
    assert_eq!(connect(Some(&target))["ok"], true, "after the session");
}

#[test]
fn crash_with_a_path_counts_only_calls_on_files_under_it() {
    if !root_or_skip() {
        return;
    }
    let base = std::env::temp_dir().join(format!("chaos-crash-path-{}", std::process::id()));
    let (inside, outside) = (base.join("in"), base.join("out"));
    for dir in [&inside, &outside] {
        std::fs::create_dir_all(dir).expect("create a test directory");
    }
    let target = TestCgroup::new("target");
    let spec = format!(
        "crash:syscall=fsync,signal=SIGKILL,nth=2,path={}",
        inside.display()
    );
    let injector = Injector::start(&["inject", "--cgroup", &target.name, "--fault", &spec]);
    let fsyncs = |dir: &Path| {
        let mut cmd = Command::new(PROBE);
        cmd.arg("fsync-n").arg(dir.join("f")).arg("4");
        target.put(&mut cmd);
        let (status, stdout, _) = run(&mut cmd);
        (status, stdout.lines().count())
    };
    let (status, lines) = fsyncs(&outside);
    assert!(status.success(), "no signal outside the path");
    assert_eq!(lines, 5, "four calls and the total");
    let (status, lines) = fsyncs(&inside);
    assert_eq!(
        status.signal(),
        Some(libc::SIGKILL),
        "killed under the path"
    );
    assert_eq!(lines, 2, "on its second fsync");
    let (status, lines) = injector.interrupt();
    assert!(status.success(), "{lines:?}");
    std::fs::remove_dir_all(&base).expect("remove the test directories");
}

#[test]
fn crash_kills_on_exactly_the_nth_call() {
    if !root_or_skip() {
        return;
    }
    let (status, stdout, stderr) = run(chaos_user().args([
        "run",
        "--fault",
        "crash:syscall=getppid,nth=100,signal=SIGKILL",
        "--",
        PROBE,
        "getppid-loop",
        "1000",
        "1",
    ]));
    assert_eq!(status.code(), Some(128 + libc::SIGKILL), "{stderr}");
    let last = stdout.lines().last().unwrap_or_default();
    assert_eq!(last, "100", "killed on the 100th call, after announcing it");
}

#[test]
fn crash_every_nth_call_is_exact_across_threads() {
    if !root_or_skip() {
        return;
    }
    let json = std::env::temp_dir().join(format!("chaos-crash-{}.json", std::process::id()));
    let (status, stdout, stderr) = run(chaos_user().args([
        "run",
        "--fault",
        "crash:syscall=getppid,every=1000,signal=SIGRTMIN+1",
        "--json",
        json.to_str().expect("a UTF-8 path"),
        "--",
        PROBE,
        "getppid-loop",
        "10000",
        "4",
    ]));
    assert!(status.success(), "{stderr}");
    let v = last_json(&stdout);
    println!("{v}");
    assert_eq!(v["calls"], 40_000);
    assert_eq!(
        v["signals"], 40,
        "one signal per 1000 calls of the process, exactly"
    );
    let r: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&json).expect("report")).expect("JSON");
    std::fs::remove_file(&json).expect("remove the report");
    assert_eq!(r["faults"][0]["calls"]["injected"], 40, "{r}");
}
