//! Network faults beyond plain loss: their kernel effect on real clients in a real cgroup.
#![allow(clippy::print_stdout, reason = "tests print their measurements")]

use std::{
    collections::HashMap,
    io::{Read, Write},
    net::{Ipv4Addr, TcpListener},
    path::Path,
    process::Command,
    sync::mpsc,
    time::{Duration, Instant},
};

use chaos_tests::{
    Injector, TestCgroup, TestNetns, UdpCounter, binomial_interval, last_json, root_or_skip, run,
    skip, udp_receiver, udp_send,
};

const PROBE: &str = env!("CARGO_BIN_EXE_chaos-probe");

fn probe() -> &'static Path {
    Path::new(PROBE)
}

/// Runs the probe with `args`, in `cgroup` or here, and returns its last JSON line.
fn probe_in(cgroup: Option<&TestCgroup>, args: &[&str]) -> serde_json::Value {
    let mut cmd = Command::new(probe());
    cmd.args(args);
    if let Some(cg) = cgroup {
        cg.put(&mut cmd);
    }
    let (status, stdout, stderr) = run(&mut cmd);
    assert!(status.success(), "chaos-probe {args:?}: {status} {stderr}");
    last_json(&stdout)
}

/// How long a receiver waits for more before it takes a burst as over.
const QUIET: Duration = Duration::from_millis(300);

/// `chaos-user inject` of one fault on `target`, writing its report to `json`.
fn inject_reporting(target: &TestCgroup, fault: &str, json: &Path) -> Injector {
    Injector::start(&[
        "inject",
        "--cgroup",
        &target.name,
        "--fault",
        fault,
        "--json",
        json.to_str().expect("a UTF-8 path"),
    ])
}

fn report(path: &Path) -> serde_json::Value {
    let text = std::fs::read(path).expect("the JSON report");
    std::fs::remove_file(path).expect("remove the report");
    serde_json::from_slice(&text).expect("valid JSON")
}

fn json_path(label: &str) -> std::path::PathBuf {
    std::env::temp_dir().join(format!("chaos-{label}-{}.json", std::process::id()))
}

/// A TCP listener on loopback that accepts and holds connections on a thread.
fn listener() -> (TcpListener, u16) {
    let l = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind");
    let port = l.local_addr().expect("address").port();
    (l, port)
}

#[test]
fn connect_fails_with_the_chosen_errno_inside_only() {
    if !root_or_skip() {
        return;
    }
    let target = TestCgroup::new("target");
    let (_l, port) = listener();
    let json = json_path("connect");
    let fault = format!("connect:errno=ECONNREFUSED,dport={port}");
    let injector = Injector::start(&[
        "inject",
        "--cgroup",
        &target.name,
        "--fault",
        &fault,
        "--fault",
        "connect:errno=ENETUNREACH,dport=9",
        "--json",
        json.to_str().unwrap(),
    ]);
    let addr = format!("127.0.0.1:{port}");
    let started = Instant::now();
    let inside = probe_in(Some(&target), &["tcp-connect", &addr]);
    let took = started.elapsed();
    assert_eq!(inside["errno"], libc::ECONNREFUSED, "{inside}");
    let other = probe_in(Some(&target), &["tcp-connect", "127.0.0.1:9"]);
    assert_eq!(other["errno"], libc::ENETUNREACH, "{other}");
    // A dual-stack socket reaching the same port by the IPv4-mapped address.
    let mapped = probe_in(
        Some(&target),
        &["tcp-connect", &format!("[::ffff:127.0.0.1]:{port}")],
    );
    assert_eq!(mapped["errno"], libc::ECONNREFUSED, "{mapped}");
    let outside = probe_in(None, &["tcp-connect", &addr]);
    assert_eq!(
        outside["ok"], true,
        "outside the cgroup connect works: {outside}"
    );
    let (status, _) = injector.interrupt();
    assert!(status.success());
    println!("refused connect took {took:?}");
    let r = report(&json);
    let connects = &r["faults"][0]["connects"];
    assert_eq!(connects["matched"], 2, "{r}");
    assert_eq!(connects["injected"], 2, "{r}");
    assert_eq!(r["faults"][1]["connects"]["injected"], 1, "{r}");
    // What the target then saw, from the syscall-exit tracepoint.
    let errors = r["syscall_errors"]
        .as_array()
        .expect("the target's failed calls");
    let refused = errors
        .iter()
        .find(|e| e["syscall"] == "connect" && e["errno"] == "ECONNREFUSED")
        .unwrap_or_else(|| panic!("connect ECONNREFUSED among {errors:?}"));
    assert_eq!(refused["count"], 2, "{r}");
    // After the session connect works again from the cgroup.
    let after = probe_in(Some(&target), &["tcp-connect", &addr]);
    assert_eq!(after["ok"], true, "{after}");
}

#[test]
fn connect_redirect_lands_on_the_other_address() {
    if !root_or_skip() {
        return;
    }
    let target = TestCgroup::new("target");
    let (_asked, asked_port) = listener();
    let (other, other_port) = listener();
    other.set_nonblocking(true).expect("nonblocking");
    let fault = format!("connect:redirect=127.0.0.1:{other_port},dport={asked_port}");
    let injector = Injector::start(&["inject", "--cgroup", &target.name, "--fault", &fault]);
    let v = probe_in(
        Some(&target),
        &["tcp-connect", &format!("127.0.0.1:{asked_port}")],
    );
    assert_eq!(v["ok"], true, "{v}");
    assert!(
        other.accept().is_ok(),
        "the connection reached the redirect's listener"
    );
    let v = probe_in(
        Some(&target),
        &["tcp-connect", &format!("[::ffff:127.0.0.1]:{asked_port}")],
    );
    assert_eq!(v["ok"], true, "{v}");
    assert!(
        other.accept().is_ok(),
        "a dual-stack socket is redirected too"
    );
    let (status, _) = injector.interrupt();
    assert!(status.success());
}

#[test]
fn reset_aborts_established_connections_of_the_cgroup() {
    if !root_or_skip() {
        return;
    }
    let target = TestCgroup::new("target");
    let (l, port) = listener();
    let addr = format!("127.0.0.1:{port}");
    // The client: connected, blocked in read.
    let mut cmd = Command::new(probe());
    cmd.args(["tcp-hold", &addr, "20"])
        .stdout(std::process::Stdio::piped());
    target.put(&mut cmd);
    let client = cmd.spawn().expect("start the client");
    let (mut server_side, _) = l.accept().expect("accept");
    // A connection from outside the cgroup to the same port, which must survive.
    let mut outside = std::net::TcpStream::connect(&addr).expect("connect from outside");
    let (mut outside_peer, _) = l.accept().expect("accept");

    let json = json_path("reset");
    let fault = format!("reset:dport={port}");
    let injector = Injector::start(&[
        "inject",
        "--cgroup",
        &target.name,
        "--fault",
        &fault,
        "--duration",
        "1s",
        "--json",
        json.to_str().unwrap(),
    ]);
    let out = client.wait_with_output().expect("the client ends");
    let v = last_json(&String::from_utf8_lossy(&out.stdout));
    assert_eq!(
        v["errno"],
        libc::ECONNABORTED,
        "the client sees ECONNABORTED: {v}"
    );
    server_side
        .set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    let mut buf = [0u8; 16];
    let err = server_side
        .read(&mut buf)
        .expect_err("the peer sees a reset");
    assert_eq!(err.raw_os_error(), Some(libc::ECONNRESET), "{err}");
    outside
        .write_all(b"still here")
        .expect("the outside connection lives");
    let n = outside_peer.read(&mut buf).expect("read");
    assert_eq!(&buf[..n], b"still here");
    let mut injector = injector;
    let (status, _) = injector.wait();
    assert!(status.success());
    let r = report(&json);
    assert_eq!(r["faults"][0]["sockets"]["injected"], 1, "{r}");
}

/// Receives one TCP connection and measures its throughput from the first byte to the last.
fn receive_rate(l: TcpListener) -> mpsc::Receiver<(usize, f64)> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let (mut s, _) = l.accept().expect("accept");
        let mut buf = vec![0u8; 1 << 16];
        let mut total = 0;
        let mut first = None;
        let mut last = Instant::now();
        loop {
            match s.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    first.get_or_insert_with(Instant::now);
                    total += n;
                    last = Instant::now();
                }
            }
        }
        let secs = first.map_or(0.0, |f| last.duration_since(f).as_secs_f64());
        tx.send((total, secs))
            .expect("the test waits for the measure");
    });
    rx
}

#[test]
fn bandwidth_caps_a_tcp_transfer_near_the_rate() {
    if !root_or_skip() {
        return;
    }
    let target = TestCgroup::new("target");
    let (l, port) = listener();
    let rx = receive_rate(l);
    let injector = Injector::start(&[
        "inject",
        "--cgroup",
        &target.name,
        "--fault",
        "bandwidth:rate=16mbit",
    ]);
    let bytes = 6 << 20;
    let v = probe_in(
        Some(&target),
        &["tcp-send", &format!("127.0.0.1:{port}"), &bytes.to_string()],
    );
    let (total, secs) = rx.recv().expect("the receiver's measure");
    let (status, lines) = injector.interrupt();
    assert!(status.success(), "{lines:?}");
    let rate = total as f64 / secs;
    let want = 16e6 / 8.0;
    println!(
        "{total} bytes in {secs:.2}s: {:.3} MB/s, want {:.3} MB/s; retransmits {}",
        rate / 1e6,
        want / 1e6,
        v["retransmits"]
    );
    assert_eq!(total, bytes);
    assert!(
        (rate - want).abs() <= want * 0.10,
        "throughput {rate:.0} B/s is not within 10% of {want:.0} B/s"
    );
}

/// Sends `n` numbered datagrams from the cgroup to a receiver here; returns which arrived.
fn udp_sequence(target: &TestCgroup, n: u32, interval_us: u32) -> Vec<bool> {
    let (socket, addr, _) = udp_receiver(QUIET);
    let handle = std::thread::spawn(move || {
        let mut seen = vec![false; n as usize];
        let mut buf = [0u8; 64];
        while let Ok(len) = socket.recv(&mut buf) {
            if len >= 4 {
                let seq = u32::from_le_bytes([buf[0], buf[1], buf[2], buf[3]]) as usize;
                if seq < seen.len() {
                    seen[seq] = true;
                }
            }
        }
        seen
    });
    let mut cmd = Command::new(probe());
    cmd.args(["udp-send", &addr, &n.to_string(), &interval_us.to_string()]);
    target.put(&mut cmd);
    let (status, stdout, stderr) = run(&mut cmd);
    assert!(status.success(), "{stderr}");
    assert_eq!(last_json(&stdout)["errors"], 0, "loss is silent");
    handle.join().expect("receiver")
}

#[test]
fn gilbert_loss_matches_its_theory() {
    if !root_or_skip() {
        return;
    }
    let target = TestCgroup::new("target");
    let (enter, leave) = (0.01, 0.25);
    let fault = format!("loss:model=gilbert,enter_bad={enter},leave_bad={leave},dir=egress");
    let injector = Injector::start(&["inject", "--cgroup", &target.name, "--fault", &fault]);
    let n = 100_000u32;
    let seen = udp_sequence(&target, n, 10);
    let (status, _) = injector.interrupt();
    assert!(status.success());
    let lost = seen.iter().filter(|s| !**s).count();
    let bursts = seen.windows(2).filter(|w| w[0] && !w[1]).count() + usize::from(!seen[0]);
    let mean_loss = lost as f64 / f64::from(n);
    let mean_burst = lost as f64 / bursts.max(1) as f64;
    let want_loss = enter / (enter + leave);
    let want_burst = 1.0 / leave;
    println!(
        "seed: the kernel's bpf_get_prandom_u32 (not seedable); {n} datagrams, {lost} lost in \
         {bursts} bursts: mean loss {mean_loss:.4} (theory {want_loss:.4}), mean burst \
         {mean_burst:.2} (theory {want_burst:.2})"
    );
    assert!(
        (mean_loss - want_loss).abs() <= want_loss * 0.2,
        "mean loss {mean_loss:.4} is not within 20% of {want_loss:.4}"
    );
    assert!(
        (mean_burst - want_burst).abs() <= want_burst * 0.15,
        "mean burst {mean_burst:.2} is not within 15% of {want_burst:.2}"
    );
}

#[test]
fn flows_share_is_stable_per_flow() {
    if !root_or_skip() {
        return;
    }
    let target = TestCgroup::new("target");
    let (socket, addr, port) = udp_receiver(QUIET);
    let fault = format!("loss:p=1,flows=0.3,proto=udp,dport={port}");
    let injector = Injector::start(&["inject", "--cgroup", &target.name, "--fault", &fault]);
    let flows = 400usize;
    let per_flow = 10u32;
    let handle = std::thread::spawn(move || {
        let mut by_source: HashMap<u16, u32> = HashMap::new();
        let mut buf = [0u8; 16];
        while let Ok((_, from)) = socket.recv_from(&mut buf) {
            *by_source.entry(from.port()).or_default() += 1;
        }
        by_source
    });
    probe_in(
        Some(&target),
        &[
            "udp-flows",
            &addr,
            &flows.to_string(),
            &per_flow.to_string(),
        ],
    );
    let by_source = handle.join().expect("receiver");
    let (status, _) = injector.interrupt();
    assert!(status.success());
    let partial = by_source.values().filter(|c| **c != per_flow).count();
    assert_eq!(
        partial, 0,
        "a flow is either lost whole or not at all: {by_source:?}"
    );
    let lost_flows = (flows - by_source.len()) as f64;
    let (lo, hi) = binomial_interval(flows as u64, 0.3);
    println!("{lost_flows} of {flows} flows lost; 99.9% interval {lo:.0}..{hi:.0}");
    assert!((lo..=hi).contains(&lost_flows));
}

#[test]
fn corrupt_flips_payload_bytes_and_the_datagram_still_arrives() {
    if !root_or_skip() {
        return;
    }
    let target = TestCgroup::new("target");
    // Three probe runs: under emulation each start can take longer than a quiet spell.
    let (socket, addr, port) = udp_receiver(Duration::from_secs(3));
    let json = json_path("corrupt");
    let fault = format!("corrupt:p=1,bytes=3,proto=udp,dport={port}");
    let injector = inject_reporting(&target, &fault, &json);
    let handle = std::thread::spawn(move || {
        let mut damaged = Vec::new();
        let mut buf = [0u8; 64];
        while let Ok(len) = socket.recv(&mut buf) {
            // Every payload leaves as zeros: what is not zero was flipped.
            damaged.push((len, buf[..len].iter().filter(|b| **b != 0).count()));
        }
        damaged
    });
    // Payloads of 32 bytes, of 2 (fewer than `bytes`), and empty ones (nothing to damage).
    for (count, size) in [("200", "32"), ("20", "2"), ("10", "0")] {
        probe_in(Some(&target), &["udp-zeros", &addr, count, size]);
    }
    let damaged = handle.join().expect("receiver");
    let (status, _) = injector.interrupt();
    assert!(status.success());
    assert_eq!(damaged.len(), 230, "every corrupted datagram still arrives");
    for (len, flipped) in &damaged {
        assert_eq!(
            *flipped,
            (*len).min(3),
            "exactly bytes=3, or the whole payload: {damaged:?}"
        );
    }
    let r = report(&json);
    let egress = &r["faults"][0]["egress"];
    assert_eq!(
        egress["matched"], 220,
        "empty payloads are not matched: {r}"
    );
    assert_eq!(egress["injected"], 220, "{r}");
}

#[test]
fn duplicate_sends_matching_datagrams_twice() {
    if !root_or_skip() {
        return;
    }
    let target = TestCgroup::new("target");
    let (socket, addr, port) = udp_receiver(QUIET);
    let json = json_path("duplicate");
    let fault = format!("duplicate:p=0.5,proto=udp,dport={port}");
    let injector = inject_reporting(&target, &fault, &json);
    let n = 2000u32;
    let handle = std::thread::spawn(move || {
        let mut count = 0u64;
        let mut buf = [0u8; 64];
        while socket.recv(&mut buf).is_ok() {
            count += 1;
        }
        count
    });
    udp_send(probe(), Some(&target), &addr, n);
    let received = handle.join().expect("receiver");
    let (status, _) = injector.interrupt();
    assert!(status.success());
    let r = report(&json);
    let copies = r["faults"][0]["egress"]["injected"]
        .as_u64()
        .expect("count");
    println!("{n} sent, {received} received, {copies} copies counted");
    assert_eq!(
        received,
        u64::from(n) + copies,
        "each counted copy arrived: {r}"
    );
    let (lo, hi) = binomial_interval(u64::from(n), 0.5);
    assert!((lo..=hi).contains(&(copies as f64)));
}

#[test]
fn xdp_drop_on_loopback_drops_what_arrives_for_the_port() {
    if !root_or_skip() {
        return;
    }
    let a = UdpCounter::start();
    let b = UdpCounter::start();
    let fault = format!("xdp-drop:dev=lo,p=1,proto=udp,dport={}", a.port);
    // No --cgroup: the fault acts on an interface.
    let injector = Injector::start(&["inject", "--fault", &fault]);
    let sent_a = udp_send(probe(), None, &a.addr(), 300);
    udp_send(probe(), None, &b.addr(), 300);
    assert_eq!(sent_a.errors, 0);
    assert_eq!(
        a.finish(),
        0,
        "every datagram to the port is dropped at XDP"
    );
    assert_eq!(b.finish(), 300, "other ports pass");
    let (status, lines) = injector.interrupt();
    assert!(status.success(), "{lines:?}");
}

/// Round-trip times of `count` pings from `cgroup` to 127.0.0.1, in milliseconds.
fn ping_rtt(cgroup: &TestCgroup, count: u32) -> f64 {
    let mut cmd = Command::new("ping");
    cmd.args(["-c", &count.to_string(), "-i", "0.2", "-q", "127.0.0.1"]);
    cgroup.put(&mut cmd);
    let (status, stdout, stderr) = run(&mut cmd);
    assert!(status.success(), "ping: {stdout} {stderr}");
    // rtt min/avg/max/mdev = 0.030/0.045/0.060/0.010 ms
    let line = stdout
        .lines()
        .find(|l| l.contains("min/avg/max"))
        .expect("ping's summary");
    let numbers = line.split('=').nth(1).expect("values");
    numbers
        .trim()
        .split('/')
        .nth(1)
        .expect("avg")
        .parse()
        .expect("a number")
}

#[test]
fn delay_adds_its_time_to_the_round_trip() {
    if !root_or_skip() {
        return;
    }
    if let Err(why) = chaos_user::tc::check_fq() {
        skip(&format!("the fq qdisc (CONFIG_NET_SCH_FQ): {why}"));
        return;
    }
    let target = TestCgroup::new("target");
    let baseline = ping_rtt(&target, 10);
    let injector = Injector::start(&[
        "inject",
        "--cgroup",
        &target.name,
        "--fault",
        "delay:time=100ms,proto=icmp",
    ]);
    let delayed = ping_rtt(&target, 10);
    let (status, lines) = injector.interrupt();
    assert!(status.success(), "{lines:?}");
    let added = delayed - baseline;
    println!("baseline {baseline:.2} ms, with delay {delayed:.2} ms: added {added:.2} ms");
    assert!(
        (added - 100.0).abs() <= 10.0,
        "the added round trip {added:.2} ms is not within 10% of 100 ms"
    );
    let qdiscs = run(Command::new("tc").args(["qdisc", "show", "dev", "lo"])).1;
    assert!(!qdiscs.contains("fq "), "the fq qdisc is gone: {qdiscs}");
}

#[test]
fn delay_is_refused_where_fq_is_missing() {
    if !root_or_skip() {
        return;
    }
    if chaos_user::tc::check_fq().is_ok() {
        skip("this kernel has fq; the refusal is for kernels without it");
        return;
    }
    let target = TestCgroup::new("target");
    let (status, _, stderr) = run(chaos_tests::chaos_user().args([
        "inject",
        "--cgroup",
        &target.name,
        "--fault",
        "delay:time=100ms",
        "--duration",
        "1s",
    ]));
    assert_eq!(status.code(), Some(3), "{stderr}");
    assert!(stderr.contains("fq"), "{stderr}");
    assert_eq!(stderr.trim().lines().count(), 1, "one line: {stderr}");
}

#[test]
fn egress_loss_reaches_a_target_in_another_network_namespace() {
    if !root_or_skip() {
        return;
    }
    let target = TestCgroup::new("target");
    let ns = TestNetns::new("loss");
    // A process of the target inside the namespace, so that the injector finds it there.
    let mut holder = ns.command(&["sleep", "30"]);
    target.put(&mut holder);
    let mut holder = holder.spawn().expect("start a process in the namespace");
    std::thread::sleep(Duration::from_millis(200));
    let injector = Injector::start(&[
        "inject",
        "--cgroup",
        &target.name,
        "--fault",
        "loss:p=1,dir=egress,proto=udp",
    ]);
    let receive = |count: u32, cgroup: Option<&TestCgroup>| -> u64 {
        let mut rx = ns.command(&[PROBE, "udp-recv", "2"]);
        rx.stdout(std::process::Stdio::piped());
        let mut rx = rx.spawn().expect("start the receiver");
        let mut out = std::io::BufReader::new(rx.stdout.take().expect("stdout"));
        let mut first = String::new();
        std::io::BufRead::read_line(&mut out, &mut first).expect("the receiver's port");
        let port = serde_json::from_str::<serde_json::Value>(&first).expect("JSON")["port"]
            .as_u64()
            .expect("port");
        let mut tx = ns.command(&[
            PROBE,
            "udp-send",
            &format!("127.0.0.1:{port}"),
            &count.to_string(),
            "100",
        ]);
        if let Some(cg) = cgroup {
            cg.put(&mut tx);
        }
        let (status, _, stderr) = run(&mut tx);
        assert!(status.success(), "{stderr}");
        let mut rest = String::new();
        std::io::Read::read_to_string(&mut out, &mut rest).expect("the receiver's count");
        rx.wait().expect("receiver");
        last_json(&rest)["received"].as_u64().expect("received")
    };
    assert_eq!(
        receive(200, Some(&target)),
        0,
        "the target's datagrams are lost"
    );
    assert_eq!(receive(200, None), 200, "others in the namespace are not");
    let (status, lines) = injector.interrupt();
    assert!(status.success(), "{lines:?}");
    assert!(
        lines.iter().any(|l| l.contains("network namespace")),
        "the attachments name the namespace: {lines:?}"
    );
    let _killed = holder.kill();
    let _reaped = holder.wait();
}

#[test]
fn sigkill_leaves_nothing_of_any_network_fault() {
    if !root_or_skip() {
        return;
    }
    let target = TestCgroup::new("target");
    let (_l, port) = listener();
    let refused = format!("connect:errno=ECONNREFUSED,dport={port}");
    let mut faults = vec![
        refused.as_str(),
        "dns:name=*.test,answer=nxdomain",
        "bandwidth:rate=100mbit",
        "corrupt:p=0.01,proto=udp,dport=9",
        "duplicate:p=0.01,proto=udp,dport=9",
        "loss:model=gilbert,enter_bad=0.01,leave_bad=0.5,proto=udp,dport=9",
        "reset:interval=1s,dport=9",
        "xdp-drop:dev=lo,p=1,proto=udp,dport=9",
    ];
    let fq = chaos_user::tc::check_fq().is_ok();
    if fq {
        faults.push("delay:time=10ms,proto=udp,dport=9");
    }
    let mut args = vec!["inject", "--cgroup", &target.name];
    for f in &faults {
        args.extend(["--fault", f]);
    }
    let mut injector = Injector::start(&args);
    let addr = format!("127.0.0.1:{port}");
    let v = probe_in(Some(&target), &["tcp-connect", &addr]);
    assert_eq!(v["errno"], libc::ECONNREFUSED, "on before the kill: {v}");
    if fq {
        let qdiscs = run(Command::new("tc").args(["qdisc", "show", "dev", "lo"])).1;
        assert!(qdiscs.contains("qdisc fq "), "delay put fq on lo: {qdiscs}");
    }

    injector.signal(libc::SIGKILL);
    let (status, _) = injector.wait();
    assert_eq!(status.code(), None, "killed by a signal");
    let v = probe_in(Some(&target), &["tcp-connect", &addr]);
    assert_eq!(v["ok"], true, "right after SIGKILL connect works: {v}");
    if chaos_user::loader::has_tcx() {
        assert!(
            chaos_tests::programs_left_after(Duration::from_secs(2)).is_empty(),
            "links die with the process"
        );
    }
    // What the kernel does not undo by itself is in the undo log: recover undoes it.
    let (status, stdout, stderr) = run(chaos_tests::chaos_user().arg("recover"));
    assert!(status.success(), "{stdout} {stderr}");
    println!("{stdout}");
    if fq {
        assert!(stdout.contains("fq root qdisc"), "{stdout}");
    }
    let qdiscs = run(Command::new("tc").args(["qdisc", "show", "dev", "lo"])).1;
    assert!(!qdiscs.contains("qdisc fq "), "no fq qdisc left: {qdiscs}");
    assert!(
        chaos_tests::undo_logs().is_empty(),
        "the undo log is cleared"
    );
    assert!(
        chaos_tests::programs_left_after(Duration::from_secs(2)).is_empty(),
        "no program left"
    );
}

#[test]
fn sigkill_with_a_target_in_another_namespace_is_undone_by_recover() {
    if !root_or_skip() {
        return;
    }
    let target = TestCgroup::new("target");
    let ns = TestNetns::new("kill");
    let mut holder = ns.command(&["sleep", "30"]);
    target.put(&mut holder);
    let mut holder = holder.spawn().expect("start a process in the namespace");
    std::thread::sleep(Duration::from_millis(200));
    let mut injector = Injector::start(&[
        "inject",
        "--cgroup",
        &target.name,
        "--fault",
        "loss:p=1,dir=egress,proto=udp,dport=9",
    ]);
    injector.signal(libc::SIGKILL);
    let (status, _) = injector.wait();
    assert_eq!(status.code(), None, "killed by a signal");
    let (status, stdout, stderr) = run(chaos_tests::chaos_user().arg("recover"));
    assert!(status.success(), "{stdout} {stderr}");
    println!("{stdout}");
    if !chaos_user::loader::has_tcx() {
        assert!(
            stdout.contains("in network namespace"),
            "recover entered the namespace: {stdout}"
        );
    }
    let filters = run(&mut ns.command(&["tc", "filter", "show", "dev", "lo", "egress"])).1;
    assert!(
        !filters.contains("chaos_egress"),
        "no filter left: {filters}"
    );
    let qdiscs = run(&mut ns.command(&["tc", "qdisc", "show", "dev", "lo"])).1;
    assert!(!qdiscs.contains("clsact"), "no qdisc left: {qdiscs}");
    assert!(
        chaos_tests::programs_left_after(Duration::from_secs(2)).is_empty(),
        "no program left"
    );
    assert!(chaos_tests::undo_logs().is_empty());
    let _killed = holder.kill();
    let _reaped = holder.wait();
}

#[test]
fn an_interface_that_appears_mid_session_gets_the_fault_within_a_second() {
    if !root_or_skip() {
        return;
    }
    let target = TestCgroup::new("target");
    let injector = Injector::start(&[
        "inject",
        "--cgroup",
        &target.name,
        "--fault",
        "loss:p=1,dir=egress,proto=udp,dst=10.211.0.0/24",
    ]);
    // A veth pair made after the start: this end here, the other in a namespace of the test.
    let ns = TestNetns::new("veth");
    let host_end = format!("chaos-h{}", std::process::id() % 100_000);
    ns.veth_pair(&host_end, 211);
    std::thread::sleep(Duration::from_millis(1500));
    let receive = |cgroup: Option<&TestCgroup>| -> u64 {
        let mut rx = ns.command(&[PROBE, "udp-recv", "2", "10.211.0.2"]);
        rx.stdout(std::process::Stdio::piped());
        let mut rx = rx.spawn().expect("start the receiver");
        let mut out = std::io::BufReader::new(rx.stdout.take().expect("stdout"));
        let mut first = String::new();
        std::io::BufRead::read_line(&mut out, &mut first).expect("the receiver's port");
        let port = serde_json::from_str::<serde_json::Value>(&first).expect("JSON")["port"]
            .as_u64()
            .expect("port");
        let sent = udp_send(probe(), cgroup, &format!("10.211.0.2:{port}"), 200);
        assert_eq!(sent.errors, 0);
        let mut rest = String::new();
        std::io::Read::read_to_string(&mut out, &mut rest).expect("the receiver's count");
        rx.wait().expect("receiver");
        last_json(&rest)["received"].as_u64().expect("received")
    };
    assert_eq!(
        receive(Some(&target)),
        0,
        "the new interface carries the fault"
    );
    assert_eq!(receive(None), 200, "for the target only");
    let (status, lines) = injector.interrupt();
    assert!(status.success(), "{lines:?}");
    let _deleted = Command::new("ip").args(["link", "del", &host_end]).status();
}

#[test]
fn reset_every_interval_aborts_new_connections_too() {
    if !root_or_skip() {
        return;
    }
    let target = TestCgroup::new("target");
    let (l, port) = listener();
    let addr = format!("127.0.0.1:{port}");
    std::thread::spawn(move || {
        // Accept and hold every connection until the test ends.
        let mut held = Vec::new();
        for s in l.incoming().map_while(Result::ok) {
            held.push(s);
        }
    });
    let json = json_path("reset-interval");
    let fault = format!("reset:interval=500ms,dport={port}");
    let mut injector = Injector::start(&[
        "inject",
        "--cgroup",
        &target.name,
        "--fault",
        &fault,
        "--duration",
        "4s",
        "--json",
        json.to_str().unwrap(),
    ]);
    for round in 0..2 {
        let started = Instant::now();
        let v = probe_in(Some(&target), &["tcp-hold", &addr, "5"]);
        assert_eq!(v["errno"], libc::ECONNABORTED, "round {round}: {v}");
        println!("round {round}: aborted after {:?}", started.elapsed());
        assert!(started.elapsed() < Duration::from_millis(1500));
    }
    let (status, _) = injector.wait();
    assert!(status.success());
    let r = report(&json);
    let aborted = r["faults"][0]["sockets"]["injected"]
        .as_u64()
        .expect("count");
    assert_eq!(aborted, 2, "{r}");
}

/// What `ss` says of the pacing of the target's connection to `port`: the cap after a `/`.
fn pacing_of_connection_to(port: u16) -> String {
    let (_, stdout, _) = run(Command::new("ss").args([
        "-tin",
        "state",
        "established",
        "dst",
        &format!("127.0.0.1:{port}"),
    ]));
    stdout
        .split_whitespace()
        .skip_while(|w| *w != "pacing_rate")
        .nth(1)
        .unwrap_or("none")
        .to_string()
}

#[test]
fn bandwidth_caps_are_lifted_at_the_end_and_by_recover() {
    if !root_or_skip() {
        return;
    }
    let target = TestCgroup::new("target");
    let (l, port) = listener();
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for s in l.incoming().map_while(Result::ok) {
            held.push(s);
        }
    });
    let hold = |seconds: &str| {
        let mut cmd = Command::new(probe());
        cmd.args(["tcp-hold", &format!("127.0.0.1:{port}"), seconds])
            .stdout(std::process::Stdio::null());
        target.put(&mut cmd);
        let child = cmd.spawn().expect("start a client");
        std::thread::sleep(Duration::from_millis(300));
        child
    };
    for kill in [false, true] {
        let mut injector = Injector::start(&[
            "inject",
            "--cgroup",
            &target.name,
            "--fault",
            "bandwidth:rate=8mbit",
        ]);
        let mut client = hold("20");
        let capped = pacing_of_connection_to(port);
        assert!(
            capped.ends_with("/8000000bps"),
            "capped while the fault is on: {capped}"
        );
        if kill {
            injector.signal(libc::SIGKILL);
            injector.wait();
            let still = pacing_of_connection_to(port);
            assert!(
                still.contains('/'),
                "a killed session leaves the cap: {still}"
            );
            let (status, stdout, stderr) = run(chaos_tests::chaos_user().arg("recover"));
            assert!(status.success(), "{stdout} {stderr}");
            assert!(stdout.contains("TCP pacing caps"), "{stdout}");
        } else {
            let (status, _) = injector.interrupt();
            assert!(status.success());
        }
        let after = pacing_of_connection_to(port);
        assert!(
            !after.contains('/'),
            "the cap is lifted (killed: {kill}): {after}"
        );
        let _killed = client.kill();
        let _reaped = client.wait();
    }
}

#[test]
fn xdp_drop_follows_its_interface_when_it_is_made_anew() {
    if !root_or_skip() {
        return;
    }
    let ns = TestNetns::new("xdp");
    let host = format!("chaos-x{}", std::process::id() % 100_000);
    ns.veth_pair(&host, 212);
    let fault = format!("xdp-drop:dev={host},p=1,proto=udp");
    let injector = Injector::start(&["inject", "--fault", &fault]);
    let arrived = || -> usize {
        let socket = std::net::UdpSocket::bind("10.212.0.1:0").expect("bind");
        socket
            .set_read_timeout(Some(Duration::from_millis(300)))
            .expect("timeout");
        let to = socket.local_addr().expect("address").to_string();
        let (status, _, stderr) = run(ns
            .command(&[PROBE, "udp-send", &to, "50", "200"])
            .stdout(std::process::Stdio::null()));
        assert!(status.success(), "{stderr}");
        let mut buf = [0u8; 64];
        std::iter::from_fn(|| socket.recv(&mut buf).ok()).count()
    };
    assert_eq!(arrived(), 0, "dropped at XDP");
    // The interface deleted and made again: a new index.
    let (status, _, stderr) = run(Command::new("ip").args(["link", "del", &host]));
    assert!(status.success(), "{stderr}");
    ns.veth_pair(&host, 212);
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(arrived(), 0, "dropped on the new interface too");
    let (status, lines) = injector.interrupt();
    assert!(status.success(), "{lines:?}");
    assert_eq!(arrived(), 50, "nothing left attached");
    let _deleted = Command::new("ip").args(["link", "del", &host]).status();
}
