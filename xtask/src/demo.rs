//! `cargo xtask demo`: a real workload loses packets in a fresh cgroup while the same workload
//! outside it, at the same time, loses none.

use std::{
    io::Read,
    net::{Ipv4Addr, TcpListener, TcpStream},
    process::{Command, Stdio},
};

use anyhow::{Context, Result, bail};
use serde::Deserialize;

use crate::{setup, util};

const FAULTS: &[&str] = &["loss:p=0.2,proto=icmp", "loss:p=0.05,proto=tcp"];
const PINGS: &str = "50";
const TCP_BYTES: usize = 16 << 20;

/// What the workload saw, in its own words.
#[derive(Debug, Deserialize)]
struct Seen {
    ping: String,
    tcp_retransmits: u32,
    tcp_seconds: f64,
}

pub fn run() -> Result<i32> {
    setup::run()?;
    let chaos_user = util::build_chaos_user(false)?;
    if !util::is_root() {
        eprintln!("xtask: the demo attaches eBPF programs; running it through sudo");
        let status = Command::new("sudo")
            .arg(std::env::current_exe()?)
            .arg("demo-as-root")
            .status();
        // Older sudo setups may refuse; say what to run instead.
        return match status {
            Ok(s) if s.success() => Ok(0),
            _ => bail!(
                "run `sudo {} demo-as-root` as root",
                std::env::current_exe()?.display()
            ),
        };
    }
    demo_as_root(&chaos_user)
}

/// The demo proper; needs root.
pub fn demo_as_root(chaos_user: &std::path::Path) -> Result<i32> {
    let sink = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?;
    let port = sink.local_addr()?.port();
    std::thread::spawn(move || {
        for stream in sink.incoming().flatten() {
            std::thread::spawn(move || drain(stream));
        }
    });
    let probe = build_probe()?;
    let workload = |cmd: &mut Command| {
        cmd.args(["demo", &format!("127.0.0.1:{port}"), PINGS]);
        cmd.arg(TCP_BYTES.to_string());
    };
    let report = std::env::temp_dir().join(format!("chaos-demo-{}.json", std::process::id()));

    println!("chaos-user demo: one workload inside a fresh cgroup with faults, the same workload");
    println!(
        "outside it at the same time. Faults: {}\n",
        FAULTS.join("  ")
    );

    let mut inside = Command::new(chaos_user);
    inside.arg("run");
    for f in FAULTS {
        inside.args(["--fault", f]);
    }
    inside.arg("--json").arg(&report).arg("--").arg(&probe);
    workload(&mut inside);
    let inside = inside
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    let mut outside = Command::new(&probe);
    workload(&mut outside);
    let outside = outside.stdout(Stdio::piped()).spawn()?;

    let inside = inside.wait_with_output()?;
    let outside = outside.wait_with_output()?;
    let injector: String = String::from_utf8_lossy(&inside.stderr)
        .lines()
        .filter(|l| !l.contains("injecting into"))
        .map(|l| format!("{l}\n"))
        .collect();
    if !inside.status.success() {
        bail!("chaos-user run failed ({}):\n{injector}", inside.status);
    }
    let seen_in: Seen = serde_json::from_slice(&inside.stdout).context("the workload's report")?;
    let seen_out: Seen =
        serde_json::from_slice(&outside.stdout).context("the workload's report")?;
    util::warn_on_err(
        std::fs::remove_file(&report),
        format!("remove {}", report.display()),
    );

    println!("{:<30} {:<40} outside", "", "inside the cgroup");
    println!(
        "{:<30} {:<40} {}",
        format!("ping -c {PINGS} 127.0.0.1"),
        seen_in.ping,
        seen_out.ping
    );
    let tcp = |s: &Seen| format!("{} retransmitted, {:.2}s", s.tcp_retransmits, s.tcp_seconds);
    let label = format!("TCP {} MiB to 127.0.0.1", TCP_BYTES >> 20);
    println!("{label:<30} {:<40} {}", tcp(&seen_in), tcp(&seen_out));
    println!("\nThe injector's counters (exact, from per-CPU maps):\n{injector}");
    Ok(0)
}

/// The workload: `chaos-probe demo` from the tests crate.
fn build_probe() -> Result<std::path::PathBuf> {
    util::run(util::cargo().args([
        "build",
        "--quiet",
        "--package",
        "chaos-tests",
        "--bin",
        "chaos-probe",
    ]))?;
    Ok(util::root().join("target/debug/chaos-probe"))
}

fn drain(mut stream: TcpStream) {
    let mut buf = vec![0u8; 1 << 16];
    while stream.read(&mut buf).is_ok_and(|n| n > 0) {}
}
