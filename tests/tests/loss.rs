//! `loss`: its kernel effect on real UDP and TCP traffic of processes in a real cgroup.
#![allow(clippy::print_stdout, reason = "tests print their measurements")]

use std::{
    io::Read,
    net::{Ipv4Addr, TcpListener},
    path::Path,
    process::Command,
    sync::mpsc,
    time::Duration,
};

use chaos_tests::{
    Injector, TestCgroup, UdpCounter, binomial_interval, last_json, root_or_skip, run, udp_send,
};

const PROBE: &str = env!("CARGO_BIN_EXE_chaos-probe");

fn probe() -> &'static Path {
    Path::new(PROBE)
}

fn report(path: &Path) -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(path).expect("the JSON report")).expect("valid JSON")
}

#[test]
fn udp_loss_rate_is_binomial_and_silent() {
    if !root_or_skip() {
        return;
    }
    let target = TestCgroup::new("target");
    let receiver = UdpCounter::start();
    let json = std::env::temp_dir().join(format!("chaos-udp-{}.json", std::process::id()));
    let fault = format!("loss:p=0.3,dir=egress,proto=udp,dport={}", receiver.port);
    let injector = Injector::start(&[
        "inject",
        "--cgroup",
        &target.name,
        "--fault",
        &fault,
        "--json",
        json.to_str().unwrap(),
    ]);

    let n = 10_000u32;
    let sent = udp_send(probe(), Some(&target), &receiver.addr(), n);
    let received = receiver.finish() as u64;
    let (status, _) = injector.interrupt();
    assert!(status.success(), "inject exited with {status}");

    assert_eq!(sent.errors, 0, "every sendto must succeed: loss is silent");
    let lost = u64::from(n) - received;
    let (lo, hi) = binomial_interval(u64::from(n), 0.3);
    println!(
        "sent {n}, received {received}, lost {lost}; 99.9% interval for lost: {lo:.0}..{hi:.0}"
    );
    assert!(
        (lo..=hi).contains(&(lost as f64)),
        "lost {lost} outside {lo:.0}..{hi:.0}"
    );

    let r = report(&json);
    std::fs::remove_file(&json).expect("remove the report");
    let egress = &r["faults"][0]["egress"];
    assert_eq!(egress["matched"], u64::from(n), "{r}");
    assert_eq!(egress["injected"], lost, "the counters are exact: {r}");
    assert_eq!(egress["passed"], received, "{r}");
    assert_eq!(r["schema_version"], 2);
}

#[test]
fn total_loss_inside_and_none_outside() {
    if !root_or_skip() {
        return;
    }
    let target = TestCgroup::new("target");
    let outside = TestCgroup::new("outside");
    let injector = Injector::start(&["inject", "--cgroup", &target.name, "--fault", "loss:p=1"]);

    let inside_rx = UdpCounter::start();
    let sent = udp_send(probe(), Some(&target), &inside_rx.addr(), 1000);
    assert_eq!(sent.errors, 0, "loss must not show as a send error");
    assert_eq!(
        inside_rx.finish(),
        0,
        "p=1 loses every datagram from the cgroup"
    );

    let outside_rx = UdpCounter::start();
    udp_send(probe(), Some(&outside), &outside_rx.addr(), 1000);
    assert_eq!(
        outside_rx.finish(),
        1000,
        "traffic of another cgroup is untouched"
    );

    let (status, _) = injector.interrupt();
    assert!(status.success());
}

#[test]
fn filters_leave_other_traffic_alone() {
    if !root_or_skip() {
        return;
    }
    let target = TestCgroup::new("target");
    let a = UdpCounter::start();
    let b = UdpCounter::start();
    let fault = format!("loss:p=1,proto=udp,dport={}", a.port);
    let injector = Injector::start(&["inject", "--cgroup", &target.name, "--fault", &fault]);
    udp_send(probe(), Some(&target), &a.addr(), 500);
    udp_send(probe(), Some(&target), &b.addr(), 500);
    assert_eq!(a.finish(), 0, "the filtered port loses everything");
    assert_eq!(b.finish(), 500, "another port is untouched");
    assert!(injector.interrupt().0.success());

    // A rule for another protocol leaves UDP alone.
    let c = UdpCounter::start();
    let injector = Injector::start(&[
        "inject",
        "--cgroup",
        &target.name,
        "--fault",
        "loss:p=1,proto=tcp",
    ]);
    udp_send(probe(), Some(&target), &c.addr(), 500);
    assert_eq!(c.finish(), 500, "proto=tcp leaves UDP alone");
    assert!(injector.interrupt().0.success());

    // Rules of one kind apply in order: the first match decides.
    let d = UdpCounter::start();
    let e = UdpCounter::start();
    let first = format!("loss:p=0,dport={}", d.port);
    let injector = Injector::start(&[
        "inject",
        "--cgroup",
        &target.name,
        "--fault",
        &first,
        "--fault",
        "loss:p=1",
    ]);
    udp_send(probe(), Some(&target), &d.addr(), 300);
    udp_send(probe(), Some(&target), &e.addr(), 300);
    assert_eq!(d.finish(), 300, "the first matching rule (p=0) decides");
    assert_eq!(
        e.finish(),
        0,
        "other traffic falls to the second rule (p=1)"
    );
    assert!(injector.interrupt().0.success());
}

#[test]
fn descendant_cgroups_are_targeted() {
    if !root_or_skip() {
        return;
    }
    let target = TestCgroup::new("target");
    let child = target.child("worker");
    let rx = UdpCounter::start();
    let injector = Injector::start(&[
        "inject",
        "--cgroup",
        &target.name,
        "--fault",
        "loss:p=1,proto=udp",
    ]);
    let sent = udp_send(probe(), Some(&child), &rx.addr(), 500);
    assert_eq!(sent.errors, 0);
    assert_eq!(
        rx.finish(),
        0,
        "a process in a child cgroup of the target loses its packets"
    );
    assert!(injector.interrupt().0.success());
    drop(child);
}

#[test]
fn ingress_loss_drops_what_arrives() {
    if !root_or_skip() {
        return;
    }
    let target = TestCgroup::new("target");
    for (dir, expect_all) in [("ingress", false), ("egress", true)] {
        let mut cmd = Command::new(PROBE);
        cmd.args(["udp-recv", "3"])
            .stdout(std::process::Stdio::piped());
        let fault = format!("loss:p=1,proto=udp,dir={dir}");
        let injector = Injector::start(&["inject", "--cgroup", &target.name, "--fault", &fault]);
        target.put(&mut cmd);
        let mut recv = cmd.spawn().expect("start udp-recv");
        let mut stdout = recv.stdout.take().expect("piped");
        let port = read_port(&mut stdout);
        // Sent from outside the target: only ingress loss can touch it.
        let sent = udp_send(probe(), None, &format!("127.0.0.1:{port}"), 300);
        assert_eq!(sent.errors, 0);
        let mut rest = String::new();
        stdout.read_to_string(&mut rest).expect("read udp-recv");
        assert!(recv.wait().expect("udp-recv").success());
        let received = last_json(&rest)["received"].as_u64().expect("received");
        if expect_all {
            assert_eq!(received, 300, "dir=egress leaves arriving datagrams alone");
        } else {
            assert_eq!(received, 0, "dir=ingress drops every arriving datagram");
        }
        assert!(injector.interrupt().0.success());
    }
}

fn read_port(stdout: &mut impl Read) -> u16 {
    let mut line = Vec::new();
    let mut byte = [0u8; 1];
    while stdout.read(&mut byte).expect("read") == 1 && byte[0] != b'\n' {
        line.push(byte[0]);
    }
    let v: serde_json::Value = serde_json::from_slice(&line).expect("the port line");
    v["port"].as_u64().expect("port") as u16
}

#[test]
fn tcp_retransmits_under_egress_loss() {
    if !root_or_skip() {
        return;
    }
    let target = TestCgroup::new("target");
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("listen");
    let port = listener.local_addr().expect("address").port();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let (mut stream, _) = listener.accept().expect("accept");
        let mut total = 0usize;
        let mut buf = vec![0u8; 1 << 16];
        loop {
            match stream.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => total += n,
            }
        }
        tx.send(total).expect("report the bytes");
    });
    let injector = Injector::start(&[
        "inject",
        "--cgroup",
        &target.name,
        "--fault",
        "loss:p=0.05,dir=egress,proto=tcp",
    ]);
    let bytes = 20usize << 20;
    let mut cmd = Command::new(PROBE);
    cmd.args(["tcp-send", &format!("127.0.0.1:{port}"), &bytes.to_string()]);
    target.put(&mut cmd);
    let (status, stdout, stderr) = run(&mut cmd);
    assert!(status.success(), "tcp-send: {stderr}");
    let v = last_json(&stdout);
    let received = rx
        .recv_timeout(Duration::from_secs(60))
        .expect("the sink's count");
    assert!(injector.interrupt().0.success());
    println!("TCP: {v}, received {received}");
    assert_eq!(received, bytes, "TCP delivers everything despite the loss");
    assert!(
        v["retransmits"].as_u64().expect("retransmits") > 0,
        "TCP saw real loss: {v}"
    );
}
