//! `cargo xtask demo`: a real workload loses packets in a fresh cgroup while the same workload
//! outside it, at the same time, loses none.

use std::{
    io::{Read, Write},
    net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream},
    os::fd::AsRawFd,
    process::{Command, Stdio},
    time::Instant,
};

use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize};

use crate::{setup, util};

const FAULTS: &[&str] = &["loss:p=0.2,proto=icmp", "loss:p=0.05,proto=tcp"];
const PINGS: &str = "50";
const TCP_BYTES: usize = 16 << 20;

#[derive(Debug, clap::Args)]
pub struct WorkloadArgs {
    /// Port of the demo's TCP sink on 127.0.0.1.
    #[arg(long)]
    tcp_port: u16,
}

/// What the workload saw, in its own words.
#[derive(Debug, Serialize, Deserialize)]
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
    let me = std::env::current_exe()?;
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
    inside.arg("--json").arg(&report).arg("--").arg(&me);
    inside.args(["demo-workload", "--tcp-port", &port.to_string()]);
    let inside = inside
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    let outside = Command::new(&me)
        .args(["demo-workload", "--tcp-port", &port.to_string()])
        .stdout(Stdio::piped())
        .spawn()?;

    let inside = inside.wait_with_output()?;
    let outside = outside.wait_with_output()?;
    let injector = String::from_utf8_lossy(&inside.stderr).into_owned();
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

fn drain(mut stream: TcpStream) {
    let mut buf = vec![0u8; 1 << 16];
    while stream.read(&mut buf).is_ok_and(|n| n > 0) {}
}

/// The hidden `demo-workload` task: ping, then a TCP transfer; prints what it saw as JSON.
pub fn workload(args: WorkloadArgs) -> Result<i32> {
    let ping = Command::new("ping")
        .args(["-c", PINGS, "-i", "0.02", "-W", "1", "-q", "127.0.0.1"])
        .output()?;
    let ping = String::from_utf8_lossy(&ping.stdout)
        .lines()
        .find(|l| l.contains("packet loss"))
        .map(|l| {
            l.split(", ")
                .filter(|p| p.contains("received") || p.contains("loss"))
                .collect::<Vec<_>>()
                .join(", ")
        })
        .unwrap_or_else(|| "ping printed no summary".into());

    let started = Instant::now();
    let mut stream = TcpStream::connect(SocketAddr::from((Ipv4Addr::LOCALHOST, args.tcp_port)))?;
    let chunk = vec![0x5au8; 1 << 16];
    let mut sent = 0;
    while sent < TCP_BYTES {
        stream.write_all(&chunk)?;
        sent += chunk.len();
    }
    stream.flush()?;
    stream.shutdown(std::net::Shutdown::Write)?;
    let mut rest = Vec::new();
    stream.read_to_end(&mut rest)?;
    let seen = Seen {
        ping,
        tcp_retransmits: total_retransmits(&stream)?,
        tcp_seconds: started.elapsed().as_secs_f64(),
    };
    println!("{}", serde_json::to_string(&seen)?);
    Ok(0)
}

/// `tcpi_total_retrans` of TCP_INFO: segments the kernel sent again.
fn total_retransmits(stream: &TcpStream) -> Result<u32> {
    // SAFETY: tcp_info is plain data; getsockopt fills at most `len` bytes of it.
    unsafe {
        let mut info: libc::tcp_info = std::mem::zeroed();
        let mut len = std::mem::size_of::<libc::tcp_info>() as libc::socklen_t;
        let rc = libc::getsockopt(
            stream.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_INFO,
            (&mut info as *mut libc::tcp_info).cast(),
            &mut len,
        );
        if rc != 0 {
            return Err(std::io::Error::last_os_error()).context("getsockopt TCP_INFO");
        }
        Ok(info.tcpi_total_retrans)
    }
}
