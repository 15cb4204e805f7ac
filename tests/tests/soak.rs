//! Soak: the highest datagram rate this machine makes, from two senders in the target, through
//! armed programs for 10 s (60 s with `cargo xtask test --long`). The counters must stay
//! consistent with each other and with what was sent: every datagram matched once, each
//! decision either passed or injected, the second rule seeing exactly what the first let
//! through, the share lost where the draw puts it, and nothing said of errors.
#![allow(clippy::print_stdout, reason = "tests print their measurements")]

use std::{
    net::{Ipv4Addr, UdpSocket},
    process::Command,
    time::Duration,
};

use chaos_tests::{Injector, TestCgroup, binomial_interval, last_json, root_or_skip, run};

const PROBE: &str = env!("CARGO_BIN_EXE_chaos-probe");

#[test]
fn counters_stay_exact_at_the_highest_packet_rate() {
    if !root_or_skip() {
        return;
    }
    let seconds = if std::env::var_os("CHAOS_TEST_LONG").is_some() {
        60
    } else {
        10
    };
    let target = TestCgroup::new("soak");
    let sink = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind the sink");
    sink.set_read_timeout(Some(Duration::from_millis(200)))
        .expect("timeout");
    let addr = sink.local_addr().expect("address").to_string();
    std::thread::spawn(move || {
        let mut buf = [0u8; 64];
        let mut quiet = 0;
        while quiet < 50 {
            match sink.recv(&mut buf) {
                Ok(_) => quiet = 0,
                Err(_) => quiet += 1,
            }
        }
    });
    let report = std::env::temp_dir().join(format!("chaos-soak-{}.json", std::process::id()));
    let injector = Injector::start(&[
        "inject",
        "--cgroup",
        &target.name,
        "--fault",
        "loss:p=0.1,proto=udp,dir=egress",
        "--fault",
        "corrupt:p=0.01,proto=udp",
        "--json",
        &report.display().to_string(),
    ]);
    let floods: Vec<_> = (0..2)
        .map(|_| {
            let mut cmd = Command::new(PROBE);
            cmd.args(["udp-flood", &addr, &seconds.to_string()]);
            target.put(&mut cmd);
            std::thread::spawn(move || run(&mut cmd))
        })
        .collect();
    let mut sent = 0;
    for flood in floods {
        let (status, stdout, stderr) = flood.join().expect("a flood");
        assert!(status.success(), "{stderr}");
        sent += last_json(&stdout)["sent"].as_u64().expect("sent");
    }
    let (status, lines) = injector.interrupt();
    assert!(status.success(), "{lines:?}");
    let said: Vec<&String> = lines
        .iter()
        .filter(|l| l.contains("error") || l.contains("warning"))
        .collect();
    assert!(said.is_empty(), "the injector said: {said:?}");
    let text = std::fs::read_to_string(&report).expect("the report");
    let _removed = std::fs::remove_file(&report);
    let v: serde_json::Value = serde_json::from_str(&text).expect("the report's JSON");
    let counters = |i: usize| {
        let c = &v["faults"][i]["egress"];
        let get = |k: &str| c[k].as_u64().unwrap_or_else(|| panic!("{k} in {c}"));
        (get("matched"), get("passed"), get("injected"))
    };
    let (loss_matched, loss_passed, lost) = counters(0);
    let (corrupt_matched, corrupt_passed, corrupted) = counters(1);
    println!(
        "{sent} datagrams in {seconds} s ({:.0}/s): loss {lost} of {loss_matched}, corrupt \
         {corrupted} of {corrupt_matched}",
        sent as f64 / f64::from(seconds)
    );
    assert_eq!(
        loss_matched, sent,
        "every datagram the kernel took was matched once"
    );
    assert_eq!(
        loss_matched,
        loss_passed + lost,
        "each decision passed or lost"
    );
    assert_eq!(
        corrupt_matched, loss_passed,
        "the second rule saw exactly what the first let through"
    );
    assert_eq!(corrupt_matched, corrupt_passed + corrupted);
    let (low, high) = binomial_interval(loss_matched, 0.1);
    assert!(
        (low..=high).contains(&(lost as f64)),
        "{lost} of {loss_matched} lost at p=0.1; [{low:.0}, {high:.0}] expected"
    );
    let (low, high) = binomial_interval(corrupt_matched, 0.01);
    assert!(
        (low..=high).contains(&(corrupted as f64)),
        "{corrupted} of {corrupt_matched} corrupted at p=0.01; [{low:.0}, {high:.0}] expected"
    );
}
