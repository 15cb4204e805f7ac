//! Two injectors on one cgroup: faults of two sessions compose, each doing its own part on
//! what the other let through, or the second session is refused with a clear message where
//! the two would undo each other. Never a silent bypass.
#![allow(clippy::print_stdout, reason = "tests print their measurements")]

use std::{
    net::{Ipv4Addr, TcpListener, TcpStream},
    path::{Path, PathBuf},
    process::Command,
};

use chaos_tests::{
    Injector, TestCgroup, UdpCounter, binomial_interval, chaos_user, root_or_skip, run, udp_send,
};

const PROBE: &str = env!("CARGO_BIN_EXE_chaos-probe");

/// `inject --cgroup TARGET --fault SPEC --json REPORT`, once it injects.
fn session(target: &TestCgroup, spec: &str, report: &Path) -> Injector {
    Injector::start(&[
        "inject",
        "--cgroup",
        &target.name,
        "--fault",
        spec,
        "--json",
        &report.display().to_string(),
    ])
}

/// The egress counters of the first fault of a report: (matched, injected).
fn egress(report: &Path) -> (u64, u64) {
    let text = std::fs::read_to_string(report).expect("the report");
    let _removed = std::fs::remove_file(report);
    let v: serde_json::Value = serde_json::from_str(&text).expect("the report's JSON");
    let c = &v["faults"][0]["egress"];
    (
        c["matched"].as_u64().expect("matched"),
        c["injected"].as_u64().expect("injected"),
    )
}

fn report_path(label: &str) -> PathBuf {
    std::env::temp_dir().join(format!("chaos-compose-{label}-{}.json", std::process::id()))
}

#[test]
fn two_loss_sessions_on_one_cgroup_each_drop_their_share() {
    if !root_or_skip() {
        return;
    }
    let target = TestCgroup::new("target");
    let qdiscs = || run(Command::new("tc").args(["qdisc", "show", "dev", "lo"])).1;
    let before = qdiscs();
    let (a_report, b_report) = (report_path("a"), report_path("b"));
    let a = session(&target, "loss:p=0.5,proto=udp,dir=egress", &a_report);
    let b = session(&target, "loss:p=0.5,proto=udp,dir=egress", &b_report);
    let rx = UdpCounter::start();
    let n = 4000u64;
    let sent = udp_send(Path::new(PROBE), Some(&target), &rx.addr(), n as u32);
    assert_eq!(sent.sent, n);
    let received = rx.finish() as u64;
    let (status, lines) = a.interrupt();
    assert!(status.success(), "{lines:?}");
    let (status, lines) = b.interrupt();
    assert!(status.success(), "{lines:?}");
    // Where the programs hang in a clsact qdisc (before tcx), the last session out removes it.
    assert_eq!(qdiscs(), before, "the qdiscs of lo are as they were");
    let (a_matched, a_lost) = egress(&a_report);
    let (b_matched, b_lost) = egress(&b_report);
    println!(
        "sent {n}, received {received}; first session {a_lost} of {a_matched}, second {b_lost} \
         of {b_matched}"
    );
    // One session sees every datagram, the other only what the first let through.
    let (first, second) = if a_matched >= b_matched {
        ((a_matched, a_lost), (b_matched, b_lost))
    } else {
        ((b_matched, b_lost), (a_matched, a_lost))
    };
    assert_eq!(first.0, n, "the first in line saw every datagram");
    assert_eq!(
        second.0,
        n - first.1,
        "the second saw what the first let through"
    );
    assert_eq!(
        received,
        n - first.1 - second.1,
        "every missing datagram was lost by one of the two"
    );
    let (low, high) = binomial_interval(n, 0.25);
    assert!(
        (low..=high).contains(&(received as f64)),
        "{received} of {n} got through; two halvings let [{low:.0}, {high:.0}] through"
    );
}

#[test]
fn different_kinds_from_two_sessions_both_act() {
    if !root_or_skip() {
        return;
    }
    let target = TestCgroup::new("target");
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("listen");
    let port = listener.local_addr().expect("address").port();
    let (a_report, b_report) = (report_path("loss"), report_path("connect"));
    let a = session(&target, "loss:p=1,proto=udp,dir=egress", &a_report);
    let b = session(
        &target,
        &format!("connect:errno=ECONNREFUSED,dport={port}"),
        &b_report,
    );
    let rx = UdpCounter::start();
    udp_send(Path::new(PROBE), Some(&target), &rx.addr(), 200);
    assert_eq!(rx.finish(), 0, "the loss session dropped every datagram");
    let mut connect = Command::new(PROBE);
    connect.args(["tcp-connect", &format!("127.0.0.1:{port}")]);
    target.put(&mut connect);
    let (_, stdout, stderr) = run(&mut connect);
    println!("{stdout}{stderr}");
    assert!(
        stdout.contains(&format!("\"errno\":{}", libc::ECONNREFUSED)),
        "the connect session refused the connection: {stdout} {stderr}"
    );
    // Outside the target, the same connection goes through.
    TcpStream::connect(("127.0.0.1", port)).expect("connect from outside the target");
    for injector in [a, b] {
        let (status, lines) = injector.interrupt();
        assert!(status.success(), "{lines:?}");
    }
    let _removed = std::fs::remove_file(&a_report);
    let _removed = std::fs::remove_file(&b_report);
}

#[test]
fn a_second_session_of_an_exclusive_kind_is_refused() {
    if !root_or_skip() {
        return;
    }
    // At the root, where the cpu and memory controllers reach on a pure cgroup2 machine.
    let target = TestCgroup::at_root("exclusive");
    let mut sleeper = target.sleeper(120);
    // Claims live in PID 1's network namespace, which some sandboxes hide.
    let pid1_netns = std::fs::File::open("/proc/1/ns/net").is_ok();
    if !pid1_netns {
        chaos_tests::skip(
            "a second session from another network namespace: PID 1's network namespace \
             cannot be opened here",
        );
    }
    for (kind, spec) in [
        ("dns", "dns:name=compose.invalid,answer=nxdomain"),
        ("pause", "pause:for=100ms,interval=1s"),
        ("cpu-throttle", "cpu-throttle:quota=50%"),
        ("memory-pressure:limit=", "memory-pressure:limit=512MiB"),
    ] {
        let first = Injector::start(&["inject", "--cgroup", &target.name, "--fault", spec]);
        let second = [
            "inject",
            "--cgroup",
            &target.name,
            "--fault",
            spec,
            "--duration",
            "1s",
        ];
        // The same from another network namespace, where abstract socket names differ.
        let mut elsewhere = Command::new("unshare");
        elsewhere
            .arg("-n")
            .arg(chaos_tests::chaos_user_bin())
            .args(second);
        let mut here = chaos_user();
        here.args(second);
        let mut cmds = vec![&mut here];
        if pid1_netns {
            cmds.push(&mut elsewhere);
        }
        for cmd in cmds {
            let (status, stdout, stderr) = run(cmd);
            println!("{spec}: {status}\n{stdout}{stderr}");
            assert_eq!(status.code(), Some(3), "{spec}: {stderr}");
            assert!(
                stderr.contains(&format!("another chaos-user session already runs `{kind}`")),
                "{spec}: {stderr}"
            );
        }
        let (status, lines) = first.interrupt();
        assert!(
            status.success(),
            "{spec}: the first session ends well: {lines:?}"
        );
    }
    let _killed = sleeper.kill();
    let _reaped = sleeper.wait();
}

#[test]
fn a_second_delay_session_is_refused_by_name() {
    if !root_or_skip() {
        return;
    }
    let finding = chaos_tests::doctor_finding("delay");
    if finding["available"] != true {
        chaos_tests::skip(&format!(
            "delay: {}",
            finding["reason"].as_str().unwrap_or("not on this kernel")
        ));
        return;
    }
    let target = TestCgroup::new("target");
    let other = TestCgroup::new("other");
    let first = Injector::start(&[
        "inject",
        "--cgroup",
        &target.name,
        "--fault",
        "delay:time=10ms",
    ]);
    // The fq qdiscs serve every cgroup: a second delay anywhere would take them over.
    let (status, stdout, stderr) = run(chaos_user().args([
        "inject",
        "--cgroup",
        &other.name,
        "--fault",
        "delay:time=20ms",
        "--duration",
        "1s",
    ]));
    println!("{status}\n{stdout}{stderr}");
    assert_eq!(status.code(), Some(3), "{stderr}");
    assert!(
        stderr.contains("another chaos-user session delays packets on"),
        "{stderr}"
    );
    let (status, lines) = first.interrupt();
    assert!(status.success(), "{lines:?}");
}
