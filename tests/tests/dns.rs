//! `dns`: glibc's resolution in the target cgroup, against a resolver on loopback that the test
//! starts, inside a mount namespace whose resolv.conf names that resolver. No query leaves
//! loopback.
#![allow(clippy::print_stdout, reason = "tests print their measurements")]

use std::{
    io::{Read, Write},
    net::{Ipv4Addr, SocketAddr, TcpListener, UdpSocket},
    path::{Path, PathBuf},
    process::Command,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use chaos_tests::{Injector, TestCgroup, TestNetns, root_or_skip, run, skip};
use hickory_proto::{
    op::{Message, MessageType},
    rr::{RData, Record, RecordType, rdata::A},
};

/// The address of the test's resolver: glibc only speaks to port 53.
const RESOLVER: &str = "127.0.0.77:53";
/// What the test's resolver answers to every A query.
const UPSTREAM_A: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 7);

/// A resolver on [`RESOLVER`], UDP and TCP, that answers every A query with [`UPSTREAM_A`] and
/// records the names it was asked.
struct Resolver {
    names: Arc<std::sync::Mutex<Vec<String>>>,
    stop: Arc<AtomicBool>,
    handle: Option<std::thread::JoinHandle<()>>,
}

impl Resolver {
    fn start() -> Option<Resolver> {
        Resolver::start_in(None)
    }

    /// Starts the resolver in the network namespace `ip netns` named, or in the test's own.
    fn start_in(netns: Option<&str>) -> Option<Resolver> {
        let names = Arc::new(std::sync::Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (seen, flag) = (names.clone(), stop.clone());
        let netns = netns.map(|n| PathBuf::from("/run/netns").join(n));
        let (bound_tx, bound_rx) = std::sync::mpsc::channel();
        let handle = std::thread::spawn(move || {
            if let Some(path) = netns {
                let file = std::fs::File::open(&path).expect("open the namespace");
                // SAFETY: setns(2) moves only this thread, which the test ends on drop.
                let rc = unsafe {
                    libc::setns(std::os::fd::AsRawFd::as_raw_fd(&file), libc::CLONE_NEWNET)
                };
                assert_eq!(rc, 0, "setns");
            }
            let addr: SocketAddr = RESOLVER.parse().expect("an address");
            let bound = UdpSocket::bind(addr).and_then(|u| Ok((u, TcpListener::bind(addr)?)));
            let (socket, listener) = match bound {
                Ok(s) => s,
                Err(e) => {
                    bound_tx.send(Err(e)).expect("report");
                    return;
                }
            };
            socket
                .set_read_timeout(Some(Duration::from_millis(50)))
                .expect("timeout");
            listener.set_nonblocking(true).expect("nonblocking");
            bound_tx.send(Ok(())).expect("report");
            let mut buf = [0u8; 4096];
            while !flag.load(Ordering::Relaxed) {
                // TCP: one query per connection is all the tests send.
                if let Ok((mut stream, _)) = listener.accept() {
                    stream.set_nonblocking(false).expect("blocking");
                    stream
                        .set_read_timeout(Some(Duration::from_secs(2)))
                        .expect("timeout");
                    let mut len = [0u8; 2];
                    if stream.read_exact(&mut len).is_ok() {
                        let mut query = vec![0u8; u16::from_be_bytes(len) as usize];
                        if stream.read_exact(&mut query).is_ok() {
                            if let Some(reply) = answer(&query, &seen) {
                                let mut framed = (reply.len() as u16).to_be_bytes().to_vec();
                                framed.extend(reply);
                                let _sent = stream.write_all(&framed);
                            }
                        }
                    }
                }
                let Ok((len, client)) = socket.recv_from(&mut buf) else {
                    continue;
                };
                if let Some(reply) = answer(&buf[..len], &seen) {
                    socket.send_to(&reply, client).expect("reply");
                }
            }
        });
        let resolver = Resolver {
            names,
            stop,
            handle: Some(handle),
        };
        match bound_rx.recv().expect("the resolver's start") {
            Ok(()) => Some(resolver),
            Err(e) => {
                skip(&format!(
                    "cannot bind the test's resolver on {RESOLVER}: {e}"
                ));
                None
            }
        }
    }

    fn asked(&self, name: &str) -> usize {
        self.names
            .lock()
            .expect("lock")
            .iter()
            .filter(|n| n.as_str() == name)
            .count()
    }
}

impl Drop for Resolver {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(h) = self.handle.take() {
            h.join().expect("resolver thread");
        }
    }
}

/// The resolver's answer to `query`: every A query gets [`UPSTREAM_A`]; the name is recorded.
fn answer(query: &[u8], seen: &std::sync::Mutex<Vec<String>>) -> Option<Vec<u8>> {
    let query = Message::from_vec(query).ok()?;
    let question = query.queries().first()?.clone();
    seen.lock()
        .expect("lock")
        .push(question.name().to_ascii().trim_end_matches('.').to_string());
    let mut reply = Message::new();
    reply
        .set_id(query.id())
        .set_message_type(MessageType::Response)
        .set_recursion_desired(query.recursion_desired())
        .set_recursion_available(true)
        .add_query(question.clone());
    if question.query_type() == RecordType::A {
        let a = RData::A(A(UPSTREAM_A));
        reply.add_answer(Record::from_rdata(question.name().clone(), 60, a));
    }
    reply.to_vec().ok()
}

/// A resolv.conf that names the test's resolver, with short timeouts; removed when dropped.
struct ResolvConf(PathBuf);

impl std::ops::Deref for ResolvConf {
    type Target = Path;

    fn deref(&self) -> &Path {
        &self.0
    }
}

impl Drop for ResolvConf {
    fn drop(&mut self) {
        let _removed = std::fs::remove_file(&self.0);
    }
}

fn resolv_conf() -> ResolvConf {
    let path = std::env::temp_dir().join(format!("chaos-resolv-{}.conf", std::process::id()));
    std::fs::write(
        &path,
        "nameserver 127.0.0.77\noptions timeout:1 attempts:1\n",
    )
    .expect("write resolv.conf");
    ResolvConf(path)
}

/// `getent hosts NAME` (AAAA, then A) in a private mount namespace that sees `conf` as /etc/resolv.conf,
/// in `cgroup` or here. Returns the exit code, the first address printed and the time taken.
fn resolve(cgroup: Option<&TestCgroup>, conf: &Path, name: &str) -> (i32, Option<String>, f64) {
    resolve_in(None, cgroup, conf, name)
}

/// As [`resolve`], in the network namespace `ip netns` named.
fn resolve_in(
    netns: Option<&str>,
    cgroup: Option<&TestCgroup>,
    conf: &Path,
    name: &str,
) -> (i32, Option<String>, f64) {
    let mut cmd = match netns {
        Some(ns) => {
            let mut cmd = Command::new("ip");
            cmd.args(["netns", "exec", ns, "unshare"]);
            cmd
        }
        None => Command::new("unshare"),
    };
    cmd.args(["--mount", "--propagation", "private", "sh", "-c"])
        .arg("mount --bind \"$0\" /etc/resolv.conf && exec getent hosts \"$1\"")
        .arg(conf)
        .arg(name);
    if let Some(cg) = cgroup {
        cg.put(&mut cmd);
    }
    let started = Instant::now();
    let (status, stdout, stderr) = run(&mut cmd);
    let took = started.elapsed().as_secs_f64();
    let code = status.code().unwrap_or(-1);
    assert!(code == 0 || code == 2, "getent {name}: {status} {stderr}");
    let addr = stdout.split_whitespace().next().map(str::to_string);
    println!("getent hosts {name}: exit {code}, {addr:?}, {took:.2}s");
    (code, addr, took)
}

#[test]
fn dns_answers_change_for_matching_names_only() {
    if !root_or_skip() {
        return;
    }
    let Some(resolver) = Resolver::start() else {
        return;
    };
    let conf = resolv_conf();
    let target = TestCgroup::new("target");
    // Before: the test's resolver answers everything.
    assert_eq!(
        resolve(Some(&target), &conf, "spoof.test").1.as_deref(),
        Some("192.0.2.7")
    );
    let json = std::env::temp_dir().join(format!("chaos-dns-{}.json", std::process::id()));
    let injector = Injector::start(&[
        "inject",
        "--cgroup",
        &target.name,
        "--fault",
        "dns:name=*.fail.test,answer=nxdomain",
        "--fault",
        "dns:name=spoof.test,answer=198.51.100.9",
        "--fault",
        "dns:name=slow.test,answer=timeout",
        "--json",
        json.to_str().unwrap(),
    ]);
    let (code, _, _) = resolve(Some(&target), &conf, "a.fail.test");
    assert_eq!(code, 2, "NXDOMAIN: not found");
    assert_eq!(
        resolver.asked("a.fail.test"),
        0,
        "an injected answer never asks upstream"
    );
    let (_, addr, _) = resolve(Some(&target), &conf, "spoof.test");
    assert_eq!(addr.as_deref(), Some("198.51.100.9"), "the spoofed address");
    let (code, _, took) = resolve(Some(&target), &conf, "slow.test");
    assert_eq!(code, 2, "no answer at all");
    assert!(took >= 0.9, "glibc waited for its timeout: {took:.2}s");
    assert_eq!(
        resolver.asked("slow.test"),
        0,
        "a timeout never asks upstream"
    );
    let (_, addr, _) = resolve(Some(&target), &conf, "other.test");
    assert_eq!(
        addr.as_deref(),
        Some("192.0.2.7"),
        "other names go to the real resolver"
    );
    assert!(resolver.asked("other.test") >= 1);
    // Outside the cgroup nothing changes.
    let (_, addr, _) = resolve(None, &conf, "spoof.test");
    assert_eq!(addr.as_deref(), Some("192.0.2.7"));

    let (status, lines) = injector.interrupt();
    assert!(status.success(), "{lines:?}");
    let r: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&json).expect("report")).expect("JSON");
    std::fs::remove_file(&json).expect("remove the report");
    // getent asks for AAAA, then A: two queries each.
    for (i, want) in [(0, 2), (1, 2), (2, 2)] {
        assert_eq!(r["faults"][i]["queries"]["injected"], want, "{r}");
    }
    // After: the real answers again, from inside the cgroup.
    assert_eq!(
        resolve(Some(&target), &conf, "spoof.test").1.as_deref(),
        Some("192.0.2.7")
    );
}

#[test]
fn dns_reaches_a_target_in_another_network_namespace() {
    if !root_or_skip() {
        return;
    }
    let ns = TestNetns::new("dns");
    let name = ns.name.clone();
    // An IPv4 address besides loopback: glibc asks for A records only when the host has one.
    for args in [
        "link add chaos0 type veth peer name chaos1",
        "addr add 10.200.0.1/24 dev chaos0",
        "link set chaos0 up",
        "link set chaos1 up",
    ] {
        let (status, _, stderr) = run(ns.command(&["ip"]).args(args.split(' ')));
        assert!(status.success(), "ip {args}: {stderr}");
    }
    let Some(resolver) = Resolver::start_in(Some(&name)) else {
        return;
    };
    let conf = resolv_conf();
    let target = TestCgroup::new("target");
    let mut holder = Command::new("ip");
    holder.args(["netns", "exec", &name, "sleep", "30"]);
    target.put(&mut holder);
    let mut holder = holder
        .spawn()
        .expect("a process of the target in the namespace");
    std::thread::sleep(Duration::from_millis(200));
    let injector = Injector::start(&[
        "inject",
        "--cgroup",
        &target.name,
        "--fault",
        "dns:name=spoof.test,answer=198.51.100.9",
    ]);
    let (_, addr, _) = resolve_in(Some(&name), Some(&target), &conf, "spoof.test");
    assert_eq!(
        addr.as_deref(),
        Some("198.51.100.9"),
        "spoofed inside the namespace"
    );
    let (_, addr, _) = resolve_in(Some(&name), Some(&target), &conf, "other.test");
    assert_eq!(
        addr.as_deref(),
        Some("192.0.2.7"),
        "forwarded inside the namespace"
    );
    assert!(resolver.asked("other.test") >= 1);
    let (status, lines) = injector.interrupt();
    assert!(status.success(), "{lines:?}");
    let _killed = holder.kill();
    let _reaped = holder.wait();
}

/// One query with the probe, in `cgroup`: its JSON line.
fn query(cgroup: &TestCgroup, name: &str, mode: &str) -> serde_json::Value {
    query_server(cgroup, RESOLVER, name, mode)
}

/// As [`query`], to `server`.
fn query_server(cgroup: &TestCgroup, server: &str, name: &str, mode: &str) -> serde_json::Value {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_chaos-probe"));
    cmd.args(["dns-query", server, name, mode]);
    cgroup.put(&mut cmd);
    let (status, stdout, stderr) = run(&mut cmd);
    assert!(status.success(), "{stderr}");
    let v = chaos_tests::last_json(&stdout);
    println!("{mode} {name}: {v}");
    v
}

#[test]
fn dns_over_tcp_and_unconnected_udp_too() {
    if !root_or_skip() {
        return;
    }
    let Some(resolver) = Resolver::start() else {
        return;
    };
    let target = TestCgroup::new("target");
    let injector = Injector::start(&[
        "inject",
        "--cgroup",
        &target.name,
        "--fault",
        "dns:name=spoof.test,answer=198.51.100.9",
    ]);
    for mode in ["udp", "udp-unconnected", "tcp"] {
        let v = query(&target, "spoof.test", mode);
        assert_eq!(v["addr"], "198.51.100.9", "{mode}: {v}");
        assert_eq!(
            v["from"], RESOLVER,
            "{mode}: the answer comes from the resolver asked"
        );
    }
    for mode in ["udp", "udp-unconnected", "tcp"] {
        let v = query(&target, "other.test", mode);
        assert_eq!(v["addr"], "192.0.2.7", "{mode}: forwarded: {v}");
        assert_eq!(v["from"], RESOLVER, "{mode}: {v}");
    }
    assert_eq!(resolver.asked("other.test"), 3);
    // A dual-stack socket asking the resolver by its IPv4-mapped address.
    let mapped = "[::ffff:127.0.0.77]:53";
    for name in ["spoof.test", "other.test"] {
        let v = query_server(&target, mapped, name, "udp-unconnected");
        let want = if name == "spoof.test" {
            "198.51.100.9"
        } else {
            "192.0.2.7"
        };
        assert_eq!(v["addr"], want, "{v}");
        assert_eq!(v["from"], mapped, "{v}");
    }
    assert_eq!(resolver.asked("spoof.test"), 0);
    let (status, lines) = injector.interrupt();
    assert!(status.success(), "{lines:?}");
}

#[test]
fn a_second_dns_session_on_the_same_target_is_refused() {
    if !root_or_skip() {
        return;
    }
    let target = TestCgroup::new("target");
    let child = target.child("child");
    let first = Injector::start(&[
        "inject",
        "--cgroup",
        &target.name,
        "--fault",
        "dns:name=a.test,answer=nxdomain",
    ]);
    for cgroup in [&target.name, &child.name] {
        let (status, _, stderr) = run(chaos_tests::chaos_user().args([
            "inject",
            "--cgroup",
            cgroup,
            "--fault",
            "dns:name=b.test,answer=nxdomain",
            "--duration",
            "1s",
        ]));
        assert_eq!(status.code(), Some(3), "{stderr}");
        assert!(stderr.contains("already runs `dns`"), "{stderr}");
        assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
    }
    // Other kinds compose with it.
    let (status, _, stderr) = run(chaos_tests::chaos_user().args([
        "inject",
        "--cgroup",
        &target.name,
        "--fault",
        "loss:p=0.1,dport=9",
        "--duration",
        "1s",
    ]));
    assert!(status.success(), "{stderr}");
    let (status, _) = first.interrupt();
    assert!(status.success());
    // Once the first is gone, the target is free again.
    let (status, _, stderr) = run(chaos_tests::chaos_user().args([
        "inject",
        "--cgroup",
        &target.name,
        "--fault",
        "dns:name=b.test,answer=nxdomain",
        "--duration",
        "1s",
    ]));
    assert!(status.success(), "{stderr}");
}
