//! Bad input: one clear line, exit status 2 (125 under `run`), nothing attached or created.
#![allow(clippy::print_stdout, reason = "tests print their measurements")]

use std::{os::unix::process::CommandExt, process::Command};

use chaos_tests::{
    TestCgroup, chaos_user, our_programs_loaded, own_cgroup_name, root_or_skip, run, run_cgroups,
    undo_logs,
};

fn assert_refused(cmd: &mut Command, want_status: i32, want_text: &str) {
    let (status, stdout, stderr) = run(cmd);
    let lines: Vec<&str> = stderr.lines().filter(|l| !l.contains("warning:")).collect();
    println!("{cmd:?} -> {status}: {stderr}");
    assert_eq!(status.code(), Some(want_status), "{cmd:?}: {stderr}");
    assert_eq!(lines.len(), 1, "one line, not {lines:?}");
    assert!(
        lines[0].contains(want_text),
        "{cmd:?}: want `{want_text}` in `{}`",
        lines[0]
    );
    assert!(stdout.is_empty(), "nothing on stdout: {stdout}");
    assert!(
        our_programs_loaded().is_empty(),
        "nothing attached after {cmd:?}"
    );
    assert!(run_cgroups().is_empty(), "no cgroup left after {cmd:?}");
    assert!(undo_logs().is_empty(), "no undo log after {cmd:?}");
}

#[test]
fn bad_specs_and_arguments() {
    if !root_or_skip() {
        return;
    }
    let target = TestCgroup::new("target");
    let specs: &[(&str, &str)] = &[
        ("latency:time=10ms", "unknown fault kind `latency`"),
        ("delay:for=10ms", "unknown key `for` for `delay`"),
        ("delay:time=10ms,jitter=1s", "cannot be larger than time"),
        ("bandwidth:rate=fast", "bad value `fast` for `rate`"),
        ("corrupt:p=0.1,bytes=100", "bad value `100` for `bytes`"),
        ("connect:errno=ENOPE", "bad value `ENOPE` for `errno`"),
        ("connect:errno=EIO,redirect=127.0.0.1:9", "not both"),
        ("reset:interval=soon", "bad value `soon` for `interval`"),
        ("dns:answer=maybe", "bad value `maybe` for `answer`"),
        ("xdp-drop:p=1", "`xdp-drop` needs `dev`"),
        (
            "loss:model=gilbert,enter_bad=0.1",
            "`loss` needs `leave_bad`",
        ),
        ("loss:p=0.1,flows=0", "a share of flows above 0"),
        ("loss:p=0.1,colour=red", "unknown key `colour`"),
        ("loss:p=1.5", "bad value `1.5` for `p`"),
        ("loss:p=-1", "bad value `-1` for `p`"),
        (
            "loss:p=0.1,dst=10.0.0.0/40",
            "bad value `10.0.0.0/40` for `dst`",
        ),
        ("loss:p=0.1,dport=99999", "bad value `99999` for `dport`"),
        ("loss", "`loss` needs `p`"),
        ("loss:p=1e-10", "resolution"),
        ("loss:p=1,dst=::ffff:127.0.0.1", "write 127.0.0.1"),
    ];
    for (spec, want) in specs {
        assert_refused(
            chaos_user().args(["inject", "--cgroup", &target.name, "--fault", spec]),
            2,
            want,
        );
        assert_refused(
            chaos_user().args(["run", "--fault", spec, "--", "/bin/true"]),
            125,
            want,
        );
    }
    // Faults that parse alone but not together.
    let mut nine: Vec<&str> = Vec::new();
    for _ in 0..9 {
        nine.extend(["--fault", "duplicate:p=0.1"]);
    }
    assert_refused(
        chaos_user()
            .args(["inject", "--cgroup", &target.name])
            .args(&nine),
        2,
        "at most 8",
    );
    assert_refused(
        chaos_user().args([
            "inject",
            "--cgroup",
            &target.name,
            "--fault",
            "cpu-throttle:quota=20%",
            "--fault",
            "cpu-throttle:quota=30%",
        ]),
        2,
        "a cgroup has one limit of each kind",
    );
    assert_refused(
        chaos_user().args([
            "inject",
            "--fault",
            "xdp-drop:dev=lo,p=1",
            "--fault",
            "xdp-drop:dev=eth0,p=1",
        ]),
        2,
        "one interface per session",
    );
    assert_refused(
        chaos_user().args(["inject", "--fault", "loss:p=1"]),
        2,
        "--cgroup is needed",
    );
    let duration = ["--fault", "loss:p=0.1", "--duration", "10"];
    assert_refused(
        chaos_user()
            .args(["inject", "--cgroup", &target.name])
            .args(duration),
        2,
        "--duration",
    );
    assert_refused(
        chaos_user()
            .arg("run")
            .args(duration)
            .args(["--", "/bin/true"]),
        125,
        "--duration",
    );
    assert_refused(
        chaos_user().args([
            "inject",
            "--cgroup",
            &target.name,
            "--fault",
            "loss:p=0.1",
            "--bogus",
        ]),
        2,
        "--bogus",
    );
    assert_refused(
        chaos_user().args(["run", "--fault", "loss:p=0.1", "--bogus", "--", "/bin/true"]),
        125,
        "--bogus",
    );
    assert_refused(
        chaos_user().args([
            "run",
            "--fault",
            "loss:p=0.1",
            "--json",
            "-",
            "--",
            "/bin/true",
        ]),
        125,
        "--json -",
    );
    let target_args = ["inject", "--cgroup", &target.name];
    let long = ["--fault", "loss:p=0.1", "--duration", "400d"];
    assert_refused(
        chaos_user().args(target_args).args(long),
        2,
        "at most a year",
    );
    let json = [
        "--fault",
        "loss:p=0.1",
        "--json",
        "/nonexistent/report.json",
    ];
    assert_refused(
        chaos_user().args(target_args).args(json),
        2,
        "does not exist",
    );
    assert_refused(
        chaos_user().arg("run").args(json).args(["--", "/bin/true"]),
        125,
        "does not exist",
    );
    let nine: Vec<&str> = std::iter::repeat_n(["--fault", "loss:p=0.1"], 9)
        .flatten()
        .collect();
    assert_refused(
        chaos_user().args(target_args).arg("--dry-run").args(&nine),
        2,
        "at most 8",
    );
    let empty = ["inject", "--cgroup", "", "--fault", "loss:p=0.1"];
    assert_refused(chaos_user().args(empty), 2, "--cgroup is empty");
    assert_refused(chaos_user().args(target_args), 2, "--fault");
}

#[test]
fn bad_targets() {
    if !root_or_skip() {
        return;
    }
    let inject = |cgroup: &str| {
        let mut cmd = chaos_user();
        cmd.args(["inject", "--cgroup", cgroup, "--fault", "loss:p=0.1"]);
        cmd
    };
    assert_refused(&mut inject("/no/such/cgroup"), 2, "does not exist");
    assert_refused(&mut inject("/tmp"), 2, "not a cgroup2 directory");
    assert_refused(&mut inject("/"), 2, "the root cgroup");
    assert_refused(
        &mut inject(&own_cgroup_name()),
        2,
        "chaos-user's own cgroup",
    );

    // chaos-user running in a child of the target: the target is its ancestor.
    let parent = TestCgroup::new("parent");
    let inner = parent.child("inner");
    let mut cmd = inject(&parent.name);
    inner.put(&mut cmd);
    assert_refused(&mut cmd, 2, "an ancestor of chaos-user's own cgroup");

    let pid1 = std::fs::read_to_string("/proc/1/cgroup").expect("PID 1's cgroup");
    let pid1 = pid1
        .lines()
        .find_map(|l| l.strip_prefix("0::"))
        .expect("cgroup2 line");
    assert_refused(&mut inject(pid1), 2, "refusing to target");

    // --force with --dry-run: verified and planned, nothing attached.
    let (status, stdout, stderr) = run(chaos_user().args([
        "inject",
        "--cgroup",
        "/",
        "--force",
        "--dry-run",
        "--fault",
        "loss:p=1",
    ]));
    assert!(status.success(), "{stderr}");
    assert!(stdout.contains("nothing attached"), "{stdout}");
    assert!(our_programs_loaded().is_empty());
}

#[test]
fn missing_privileges_is_the_environment() {
    if !root_or_skip() {
        return;
    }
    let target = TestCgroup::new("target");
    let nobody = |cmd: &mut Command| {
        cmd.uid(65534).gid(65534);
    };
    let mut inject = chaos_user();
    inject.args(["inject", "--cgroup", &target.name, "--fault", "loss:p=0.1"]);
    nobody(&mut inject);
    assert_refused(&mut inject, 3, "needs root");
    let mut runner = chaos_user();
    runner.args(["run", "--fault", "loss:p=0.1", "--", "/bin/true"]);
    nobody(&mut runner);
    assert_refused(&mut runner, 125, "needs root");

    // Root without some capabilities: named, before anything is loaded.
    let mut narrowed = Command::new("setpriv");
    narrowed
        .arg("--bounding-set=-bpf,-sys_admin")
        .arg(chaos_tests::chaos_user_bin())
        .args(["inject", "--cgroup", &target.name, "--fault", "loss:p=0.1"]);
    assert_refused(
        &mut narrowed,
        3,
        "this process lacks CAP_BPF, CAP_SYS_ADMIN",
    );
}
