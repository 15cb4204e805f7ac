//! The figures that need the VM lane's kernel: the syscall loops with `file` on the BPF LSM
//! hooks (trampolines), and `delay` (held by the fq qdisc) next to netem doing the same delay.
//! The host boots the guest with `xtask bench-guest`, which writes its figures to a file the
//! host then reads. The guest is emulated (TCG) where the host has no KVM: its absolute times
//! are slow, its ratios still compare.

use std::{
    net::{Ipv4Addr, UdpSocket},
    path::Path,
    process::Command,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result};
use serde::{Deserialize, Serialize};

use super::{Cgroup, Comparison, Figure, Injector, measure, syscalls};
use crate::{
    util,
    vm::{CgroupLayout, Guest},
};

/// The delay asked of chaos-user and of netem.
const DELAY_MS: f64 = 20.0;
/// Calls per loop in the guest: an emulated guest runs strace's stops slowly.
const GUEST_CALLS: u32 = 5_000;

#[derive(Debug, Deserialize, Serialize)]
pub(super) struct GuestFigures {
    pub kernel: String,
    /// ns per call, as on the host.
    pub file_hooks: Vec<Comparison>,
    /// The round trip without delay, in ms.
    pub base_rtt_ms: Figure,
    /// Per delayed packet: the extra round-trip time, in ms, of each way of delaying.
    pub delay: Vec<(String, Figure)>,
    pub delay_asked_ms: f64,
}

/// Boots the guest, runs the guest's part there, and reads its figures.
pub(super) fn figures(quick: bool) -> Result<GuestFigures> {
    eprintln!("xtask: bench: the VM lane (file hooks, delay against netem)");
    let out = util::root().join("target/bench-guest.json");
    let _removed = std::fs::remove_file(&out);
    let mut command = vec![
        std::env::current_exe()?.display().to_string(),
        "bench-guest".into(),
        "--out".into(),
        out.display().to_string(),
    ];
    if quick {
        command.push("--quick".into());
    }
    let status = Guest::prepare()?.run(
        &command,
        None,
        CgroupLayout::V2,
        Duration::from_secs(40 * 60),
    )?;
    anyhow::ensure!(status == 0, "the guest's bench exited with {status}");
    let text = std::fs::read_to_string(&out).with_context(|| format!("read {}", out.display()))?;
    Ok(serde_json::from_str(&text)?)
}

/// In the guest, as root: measures and writes the figures to `out`.
pub fn in_guest(out: &Path, quick: bool) -> Result<i32> {
    let chaos_user = util::root().join("target/release/chaos-user");
    let rounds = if quick { 2 } else { 5 };
    let target = Cgroup::new("target")?;
    let strace = syscalls::strace_runs();
    let file_hooks = syscalls::loops(
        &chaos_user,
        &target,
        (rounds, GUEST_CALLS),
        syscalls::Hook::File,
        strace,
    )?;
    let (base_rtt_ms, delay) = delay(&chaos_user, &target, rounds, if quick { 20 } else { 50 })?;
    let figures = GuestFigures {
        kernel: util::output(Command::new("uname").arg("-r"))
            .unwrap_or_default()
            .trim()
            .to_string(),
        file_hooks,
        base_rtt_ms,
        delay,
        delay_asked_ms: DELAY_MS,
    };
    std::fs::write(out, serde_json::to_string_pretty(&figures)?)?;
    Ok(0)
}

/// netem on loopback, removed when dropped.
struct Netem;

impl Netem {
    fn add(delay_ms: f64) -> Result<Netem> {
        util::run(Command::new("tc").args([
            "qdisc",
            "add",
            "dev",
            "lo",
            "root",
            "netem",
            "delay",
            &format!("{delay_ms}ms"),
        ]))?;
        Ok(Netem)
    }
}

impl Drop for Netem {
    fn drop(&mut self) {
        util::warn_on_err(
            util::run(Command::new("tc").args(["qdisc", "del", "dev", "lo", "root"])),
            "remove the bench's netem",
        );
    }
}

const NONE: &str = "(a) no delay";
pub(super) const CHAOS: &str = "(c) chaos-user `delay` (fq, the target's egress)";
pub(super) const NETEM: &str = "(f) netem on loopback (both directions, halved)";

/// The round trip without delay, and the extra time per delayed packet, in ms: chaos-user
/// delays the target's requests only; netem on loopback delays the answers too, so its extra
/// time is halved.
fn delay(
    chaos_user: &Path,
    target: &Cgroup,
    rounds: usize,
    pings: u32,
) -> Result<(Figure, Vec<(String, Figure)>)> {
    eprintln!("xtask: bench: delay against netem");
    let echo = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0))?;
    let addr = echo.local_addr()?;
    std::thread::spawn(move || {
        let mut buf = [0u8; 64];
        while let Ok((n, from)) = echo.recv_from(&mut buf) {
            let _sent = echo.send_to(&buf[..n], from);
        }
    });
    let args = ["rtt".to_string(), addr.to_string(), pings.to_string()];
    let variants = [NONE, CHAOS, NETEM];
    let mut per: Vec<Vec<f64>> = vec![Vec::new(); variants.len()];
    for round in 0..rounds {
        for k in 0..variants.len() {
            let i = (k + round) % variants.len();
            let rtt = match variants[i] {
                CHAOS => {
                    let fault = format!("delay:time={DELAY_MS}ms");
                    let _injector = Injector::start(chaos_user, &target.name, &[&fault])?;
                    measure(target, &args)?
                }
                NETEM => {
                    let _netem = Netem::add(DELAY_MS)?;
                    measure(target, &args)?
                }
                _ => measure(target, &args)?,
            };
            per[i].push(rtt);
        }
    }
    // Each round's extra time against the same round's undelayed figure.
    let base = per[0].clone();
    let extra = |samples: &[f64], packets: f64| -> Vec<f64> {
        samples
            .iter()
            .zip(&base)
            .map(|(s, b)| (s - b) / packets)
            .collect()
    };
    Ok((
        Figure::of(base.clone()),
        vec![
            (CHAOS.to_string(), Figure::of(extra(&per[1], 1.0))),
            (NETEM.to_string(), Figure::of(extra(&per[2], 2.0))),
        ],
    ))
}

/// The median round-trip time of `pings` datagrams to an echo, in ms (run as a `bench-load`).
pub(super) fn rtt_ms(addr: &str, pings: u32) -> Result<f64> {
    let s = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0))?;
    s.connect(addr)?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    let mut times = Vec::new();
    let mut buf = [0u8; 16];
    for i in 0..pings {
        let sent = Instant::now();
        s.send(&i.to_be_bytes())?;
        loop {
            let n = s.recv(&mut buf).context("no echo")?;
            if buf[..n] == i.to_be_bytes() {
                break;
            }
        }
        times.push(sent.elapsed().as_secs_f64() * 1e3);
    }
    Ok(Figure::of(times).median)
}
