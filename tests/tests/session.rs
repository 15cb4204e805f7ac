//! Sessions: `run` and its exit statuses, clean exits, SIGKILL, frozen injectors, `recover`.
#![allow(clippy::print_stdout, reason = "tests print their measurements")]

use std::{
    path::Path,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use chaos_tests::{
    Injector, TestCgroup, UdpCounter, chaos_user, our_programs_loaded, programs_left_after,
    root_or_skip, run, run_cgroups, skip, udp_send, undo_logs,
};

const PROBE: &str = env!("CARGO_BIN_EXE_chaos-probe");

#[test]
fn run_ping_under_total_loss_fails_as_ping_does() {
    if !root_or_skip() {
        return;
    }
    let mut inside = chaos_user();
    inside.args([
        "run", "--fault", "loss:p=1", "--", "ping", "-c", "4", "-i", "0.2", "-W", "1",
    ]);
    inside.arg("127.0.0.1");
    let inside = inside
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start run");
    // The same ping outside the cgroup, at the same time.
    std::thread::sleep(Duration::from_millis(200));
    let (outside, out_stdout, _) =
        run(Command::new("ping").args(["-c", "3", "-i", "0.2", "-W", "1", "127.0.0.1"]));
    let inside = inside.wait_with_output().expect("wait for run");
    let stdout = String::from_utf8_lossy(&inside.stdout);
    println!("inside: {stdout}\noutside: {out_stdout}");
    assert_eq!(
        inside.status.code(),
        Some(1),
        "ping's own status for no reply: {stdout}"
    );
    assert!(stdout.contains("100% packet loss"), "{stdout}");
    assert!(
        outside.success(),
        "ping outside the cgroup works: {out_stdout}"
    );
    assert!(run_cgroups().is_empty(), "run removed its cgroup");
}

#[test]
fn run_passes_on_the_command_status() {
    if !root_or_skip() {
        return;
    }
    let not_executable = std::env::temp_dir().join(format!("chaos-noexec-{}", std::process::id()));
    std::fs::write(&not_executable, "#!/bin/sh\nexit 0\n").expect("write a script");
    let not_executable = not_executable.to_str().expect("UTF-8 path").to_string();
    let cases: &[(&[&str], i32)] = &[
        (&["/bin/sh", "-c", "exit 7"], 7),
        (&["/bin/sh", "-c", "kill -TERM $$"], 128 + libc::SIGTERM),
        (&["/bin/true"], 0),
        (&["no-such-command-anywhere"], 127),
        (&[&not_executable], 126),
    ];
    for (argv, want) in cases {
        let (status, _, stderr) = run(chaos_user()
            .args(["run", "--fault", "loss:p=0.1", "--"])
            .args(*argv));
        assert_eq!(status.code(), Some(*want), "{argv:?}: {stderr}");
    }
    std::fs::remove_file(&not_executable).expect("remove the script");
    assert!(
        run_cgroups().is_empty(),
        "no cgroup left: {:?}",
        run_cgroups()
    );
    assert!(
        undo_logs().is_empty(),
        "no undo log left: {:?}",
        undo_logs()
    );
}

#[test]
fn run_duration_removes_faults_and_the_command_runs_on() {
    if !root_or_skip() {
        return;
    }
    let rx = UdpCounter::start();
    let json = std::env::temp_dir().join(format!("chaos-run-{}.json", std::process::id()));
    // 300 datagrams 10 ms apart: 3 s, of which the first second is under total loss.
    let (status, stdout, stderr) = run(chaos_user()
        .args(["run", "--fault", "loss:p=1", "--duration", "1s", "--json"])
        .arg(&json)
        .args(["--", PROBE, "udp-send", &rx.addr(), "300", "10000"]));
    assert!(status.success(), "{stderr}");
    assert!(stdout.contains("\"errors\":0"), "{stdout}");
    let received = rx.finish();
    let report: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&json).expect("report")).expect("JSON");
    std::fs::remove_file(&json).expect("remove the report");
    println!("received {received} of 300; {report}");
    assert_eq!(report["end_reason"], "duration");
    let lost = report["faults"][0]["egress"]["injected"]
        .as_u64()
        .expect("injected");
    assert!(lost > 50, "the first second lost its datagrams: {lost}");
    assert_eq!(
        received as u64 + lost,
        300,
        "after the duration everything arrives"
    );
    assert_eq!(report["run"]["exit_status"], 0);
}

#[test]
fn sigint_detaches_everything() {
    if !root_or_skip() {
        return;
    }
    let target = TestCgroup::new("target");
    let injector = Injector::start(&["inject", "--cgroup", &target.name, "--fault", "loss:p=1"]);
    assert!(
        !our_programs_loaded().is_empty(),
        "programs are loaded while injecting"
    );
    let (status, lines) = injector.interrupt();
    assert!(status.success(), "{lines:?}");
    assert!(
        programs_left_after(Duration::from_secs(2)).is_empty(),
        "programs left after exit"
    );
    let rx = UdpCounter::start();
    udp_send(Path::new(PROBE), Some(&target), &rx.addr(), 200);
    assert_eq!(rx.finish(), 200, "traffic flows after exit");
}

#[test]
fn sigkill_of_inject_leaves_nothing_attached() {
    if !root_or_skip() {
        return;
    }
    let target = TestCgroup::new("target");
    let mut injector =
        Injector::start(&["inject", "--cgroup", &target.name, "--fault", "loss:p=1"]);
    let rx = UdpCounter::start();
    udp_send(Path::new(PROBE), Some(&target), &rx.addr(), 100);
    assert_eq!(rx.finish(), 0, "loss is on before the kill");

    injector.signal(libc::SIGKILL);
    let (status, _) = injector.wait();
    assert_eq!(status.code(), None, "killed by a signal");
    if chaos_user::loader::has_tcx() {
        let rx = UdpCounter::start();
        udp_send(Path::new(PROBE), Some(&target), &rx.addr(), 200);
        assert_eq!(
            rx.finish(),
            200,
            "immediately after SIGKILL the cgroup's traffic flows"
        );
        assert!(
            programs_left_after(Duration::from_secs(2)).is_empty(),
            "no program left"
        );
        assert!(undo_logs().is_empty(), "tcx links leave nothing to undo");
        return;
    }

    // Without tcx the clsact filter outlives the process: the rule's lease ends the loss, and
    // the undo log lets `recover` remove the filter and the qdisc.
    assert_eq!(
        undo_logs().len(),
        1,
        "the filter and qdisc are in the undo log"
    );
    std::thread::sleep(chaos_user::session::LEASE + Duration::from_secs(1));
    let rx = UdpCounter::start();
    udp_send(Path::new(PROBE), Some(&target), &rx.addr(), 200);
    assert_eq!(
        rx.finish(),
        200,
        "after the lease the left-over filter drops nothing"
    );
    let (status, stdout, _) = run(chaos_user().arg("recover"));
    assert!(status.success(), "{stdout}");
    assert!(
        stdout.contains("removed tc filter") && stdout.contains("removed clsact qdisc"),
        "{stdout}"
    );
    assert!(!has_clsact("lo"), "recover removed the qdisc");
    assert!(
        programs_left_after(Duration::from_secs(2)).is_empty(),
        "no program left"
    );
    assert!(undo_logs().is_empty());
}

/// Whether `interface` has a clsact qdisc.
fn has_clsact(interface: &str) -> bool {
    let (_, stdout, _) = run(Command::new("tc").args(["qdisc", "show", "dev", interface]));
    stdout.contains("qdisc clsact")
}

#[test]
fn frozen_injector_goes_inert_after_its_lease() {
    if !root_or_skip() {
        return;
    }
    let target = TestCgroup::new("target");
    let injector = Injector::start(&["inject", "--cgroup", &target.name, "--fault", "loss:p=1"]);
    let rx = UdpCounter::start();
    udp_send(Path::new(PROBE), Some(&target), &rx.addr(), 100);
    assert_eq!(rx.finish(), 0, "loss is on while the lease is renewed");

    injector.signal(libc::SIGSTOP);
    // The lease is 5 s; the last renewal was at most 1 s before the stop.
    std::thread::sleep(Duration::from_secs(6));
    assert!(
        !our_programs_loaded().is_empty(),
        "the frozen injector still holds its programs"
    );
    let rx = UdpCounter::start();
    udp_send(Path::new(PROBE), Some(&target), &rx.addr(), 200);
    assert_eq!(
        rx.finish(),
        200,
        "an expired rule drops nothing though its links are held"
    );

    injector.signal(libc::SIGCONT);
    let (status, lines) = injector.interrupt();
    assert!(status.success(), "{lines:?}");
}

#[test]
fn sigkill_of_run_is_undone_by_recover() {
    if !root_or_skip() {
        return;
    }
    let mut cmd = chaos_user();
    cmd.args(["run", "--fault", "loss:p=0.1", "--", "sleep", "30"]);
    cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
    let mut runner = Injector::start_cmd(cmd, "injecting into");
    let cgroups = run_cgroups();
    assert_eq!(cgroups.len(), 1, "{cgroups:?}");
    let own = chaos_tests::own_cgroup_name();
    let cgroup = chaos_tests::cgroup2_mount()
        .join(own.trim_start_matches('/'))
        .join(&cgroups[0]);
    let deadline = Instant::now() + Duration::from_secs(5);
    let sleeper = loop {
        let procs = std::fs::read_to_string(cgroup.join("cgroup.procs")).expect("procs");
        if let Some(pid) = procs.split_whitespace().next() {
            break pid.parse::<i32>().expect("pid");
        }
        assert!(
            Instant::now() < deadline,
            "the command never appeared in {}",
            cgroup.display()
        );
        std::thread::sleep(Duration::from_millis(20));
    };

    runner.signal(libc::SIGKILL);
    runner.wait();
    assert!(cgroup.exists(), "the cgroup outlives a killed run");
    assert_eq!(undo_logs().len(), 1, "the undo log records it");

    let (status, stdout, _) = run(chaos_user().arg("recover"));
    assert_eq!(
        status.code(),
        Some(3),
        "the command still runs, so recover must wait: {stdout}"
    );
    assert!(cgroup.exists());
    assert!(stdout.contains("kept cgroup"), "{stdout}");

    // SAFETY: kill(2) on the `sleep` that this test's `run` started.
    assert_eq!(unsafe { libc::kill(sleeper, libc::SIGKILL) }, 0);
    let deadline = Instant::now() + Duration::from_secs(5);
    while std::fs::read_to_string(cgroup.join("cgroup.events"))
        .unwrap_or_default()
        .contains("populated 1")
    {
        assert!(Instant::now() < deadline, "sleep did not die");
        std::thread::sleep(Duration::from_millis(20));
    }
    let (status, stdout, _) = run(chaos_user().arg("recover"));
    assert!(status.success(), "{stdout}");
    assert!(stdout.contains("removed cgroup"), "{stdout}");
    assert!(!cgroup.exists(), "recover removed the cgroup");
    assert!(undo_logs().is_empty());
    let (status, stdout, _) = run(chaos_user().arg("recover"));
    assert!(
        status.success() && stdout.contains("nothing to recover"),
        "twice is harmless: {stdout}"
    );
}

#[test]
fn run_keeps_the_command_below_its_callers_cgroup() {
    if !root_or_skip() {
        return;
    }
    let (status, stdout, stderr) = run(chaos_user().args([
        "run",
        "--fault",
        "loss:p=0.1",
        "--",
        "cat",
        "/proc/self/cgroup",
    ]));
    assert!(status.success(), "{stderr}");
    let own = chaos_tests::own_cgroup_name();
    let line = stdout
        .lines()
        .find_map(|l| l.strip_prefix("0::"))
        .expect("a cgroup2 line");
    let want = format!("{}/chaos-user-run-", own.trim_end_matches('/'));
    assert!(
        line.starts_with(&want),
        "the command ran in {line}, not below {own}"
    );
    assert!(run_cgroups().is_empty(), "removed after the command");
}

#[test]
fn a_replaced_target_ends_the_session() {
    if !root_or_skip() {
        return;
    }
    let target = TestCgroup::new("target");
    let path = target.path.clone();
    let mut injector =
        Injector::start(&["inject", "--cgroup", &target.name, "--fault", "loss:p=1"]);
    // What a service restart does: the cgroup goes, and another comes under the same name.
    std::fs::remove_dir(&path).expect("remove the target");
    std::fs::create_dir(&path).expect("make it again");
    let (status, lines) = injector.wait();
    assert_eq!(status.code(), Some(3), "{lines:?}");
    assert!(
        lines.iter().any(|l| l.contains("removed or replaced")),
        "{lines:?}"
    );
    assert!(programs_left_after(Duration::from_secs(2)).is_empty());
    drop(target);
}

#[test]
fn closed_output_does_not_stop_the_clean_up() {
    if !root_or_skip() {
        return;
    }
    // A pipe whose reader is gone, as in `chaos-user run ... 2>&1 | head -1`.
    let mut fds = [0; 2];
    // SAFETY: pipe(2) fills two descriptors; the read end is closed at once.
    unsafe {
        assert_eq!(libc::pipe(fds.as_mut_ptr()), 0);
        libc::close(fds[0]);
    }
    // SAFETY: fds[1] is an open descriptor that nothing else owns.
    let write_end = unsafe { <std::fs::File as std::os::fd::FromRawFd>::from_raw_fd(fds[1]) };
    let mut cmd = chaos_user();
    cmd.args(["run", "--fault", "loss:p=0.1", "--", "sh", "-c", "exit 3"]);
    cmd.stdout(write_end.try_clone().expect("dup"))
        .stderr(write_end);
    let status = cmd.status().expect("run chaos-user");
    assert_eq!(
        status.code(),
        Some(3),
        "the command's status, whatever happened to the output"
    );
    assert!(run_cgroups().is_empty(), "no cgroup left");
    assert!(undo_logs().is_empty(), "no undo log left");
}

#[test]
fn a_clsact_qdisc_already_there_is_left_alone() {
    if !root_or_skip() {
        return;
    }
    if chaos_user::loader::has_tcx() {
        skip("this kernel has tcx (6.6+): the clsact path is for older kernels");
        return;
    }
    let tc = |args: &[&str]| {
        let (status, _, stderr) = run(Command::new("tc").args(args));
        assert!(status.success(), "tc {args:?}: {stderr}");
    };
    tc(&["qdisc", "add", "dev", "lo", "clsact"]);
    tc(&[
        "filter", "add", "dev", "lo", "egress", "prio", "7", "matchall", "action", "pass",
    ]);
    let ours_intact = || {
        let (_, filters, _) =
            run(Command::new("tc").args(["filter", "show", "dev", "lo", "egress"]));
        has_clsact("lo") && filters.contains("matchall") && !filters.contains("chaos_egress")
    };
    let target = TestCgroup::new("target");

    let injector = Injector::start(&["inject", "--cgroup", &target.name, "--fault", "loss:p=1"]);
    let rx = UdpCounter::start();
    udp_send(Path::new(PROBE), Some(&target), &rx.addr(), 100);
    assert_eq!(
        rx.finish(),
        0,
        "loss works beside a filter of someone else's"
    );
    assert!(injector.interrupt().0.success());
    assert!(
        ours_intact(),
        "a clean exit leaves the qdisc and the other filter"
    );

    let mut injector =
        Injector::start(&["inject", "--cgroup", &target.name, "--fault", "loss:p=1"]);
    injector.signal(libc::SIGKILL);
    injector.wait();
    let (status, stdout, _) = run(chaos_user().arg("recover"));
    assert!(status.success(), "{stdout}");
    assert!(
        ours_intact(),
        "recover removes only its own filter: {stdout}"
    );
    assert!(
        !stdout.contains("clsact qdisc"),
        "the qdisc was not chaos-user's: {stdout}"
    );

    tc(&["qdisc", "del", "dev", "lo", "clsact"]);
    assert!(programs_left_after(Duration::from_secs(2)).is_empty());
}

#[test]
fn two_sessions_stop_independently() {
    if !root_or_skip() {
        return;
    }
    let (a, b) = (TestCgroup::new("a"), TestCgroup::new("b"));
    let egress = "loss:p=1,dir=egress";
    let first = Injector::start(&["inject", "--cgroup", &a.name, "--fault", egress]);
    let second = Injector::start(&["inject", "--cgroup", &b.name, "--fault", egress]);
    // The first session made the clsact qdisc (before 6.6) that the second's filter sits in.
    assert!(first.interrupt().0.success());

    let from_b = UdpCounter::start();
    udp_send(Path::new(PROBE), Some(&b), &from_b.addr(), 200);
    assert_eq!(
        from_b.finish(),
        0,
        "the second session still loses its target's packets"
    );
    let from_a = UdpCounter::start();
    udp_send(Path::new(PROBE), Some(&a), &from_a.addr(), 200);
    assert_eq!(from_a.finish(), 200, "the first session's target is free");

    let (status, lines) = second.interrupt();
    assert!(status.success(), "{lines:?}");
    assert!(programs_left_after(Duration::from_secs(2)).is_empty());
    assert!(undo_logs().is_empty());
    if has_clsact("lo") {
        // Neither session may remove a qdisc that another's filter used when it left; an empty
        // one stays (README, limits).
        run(Command::new("tc").args(["qdisc", "del", "dev", "lo", "clsact"]));
    }
}

#[test]
fn run_notices_its_cgroup_removed_and_passes_on_the_status() {
    if !root_or_skip() {
        return;
    }
    let mut cmd = chaos_user();
    cmd.args(["run", "--fault", "loss:p=0.1,dport=9", "--", "sleep", "3"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    let mut injector = Injector::start_cmd(cmd, "injecting into");
    std::thread::sleep(Duration::from_millis(300));
    let mount = chaos_tests::cgroup2_mount();
    let own = mount.join(chaos_tests::own_cgroup_name().trim_start_matches('/'));
    let names = run_cgroups();
    assert_eq!(names.len(), 1, "{names:?}");
    let theirs = own.join(&names[0]);
    // Move the command out, into this test's own cgroup, and remove run's.
    let pids = std::fs::read_to_string(theirs.join("cgroup.procs")).expect("procs");
    for pid in pids.split_whitespace() {
        std::fs::write(own.join("cgroup.procs"), pid).expect("move the command");
    }
    std::fs::remove_dir(&theirs).expect("remove run's cgroup");
    let (status, lines) = injector.wait();
    assert_eq!(
        status.code(),
        Some(0),
        "the command's own status: {lines:?}"
    );
    assert!(
        lines.iter().any(|l| l.contains("cgroup was removed")),
        "{lines:?}"
    );
}
