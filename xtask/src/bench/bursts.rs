//! Accuracy where a share is not the whole story: the bursts of the Gilbert-Elliott loss model
//! against its theory, and `bandwidth` against the rate asked.

use std::{
    io::Read as _,
    net::{Ipv4Addr, TcpListener, UdpSocket},
    os::fd::AsRawFd as _,
    path::Path,
    sync::mpsc,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};
use serde::Serialize;

use super::{Cgroup, Injector, measure};

/// The model's parameters: into the bad state with 1%, out of it with 25% after each packet;
/// every packet lost in the bad state, none in the good one.
const ENTER_BAD: f64 = 0.01;
const LEAVE_BAD: f64 = 0.25;

#[derive(Debug, Serialize)]
pub(super) struct Bursts {
    pub enter_bad: f64,
    pub leave_bad: f64,
    pub sent: u64,
    /// Lost by the injector's own count, and missing at the receiver.
    pub injected: u64,
    pub missing: u64,
    pub share: f64,
    pub share_theory: f64,
    pub share_interval: (f64, f64),
    pub bursts: u64,
    pub mean_burst: f64,
    pub mean_burst_theory: f64,
    pub mean_burst_interval: (f64, f64),
    /// Burst length 1..=5, then 6 and longer: the share of bursts measured, and in theory.
    pub lengths: Vec<(String, f64, f64)>,
}

impl Bursts {
    /// Every datagram the receiver missed was one the injector lost.
    pub fn accounted(&self) -> bool {
        self.injected == self.missing
    }
}

/// Sends `packets` numbered datagrams from the target under the Gilbert model and finds the
/// bursts of loss in what arrives.
pub(super) fn gilbert(chaos_user: &Path, target: &Cgroup, packets: u64) -> Result<Bursts> {
    eprintln!("xtask: bench: burst loss (Gilbert-Elliott)");
    let sink = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0))?;
    // Room for every datagram: a drop at the receiver would pass for a loss.
    let size: libc::c_int = 64 << 20;
    // SAFETY: setsockopt(2) on our socket with a c_int value of the right size.
    unsafe {
        libc::setsockopt(
            sink.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVBUFFORCE,
            (&raw const size).cast(),
            size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    sink.set_read_timeout(Some(Duration::from_millis(500)))?;
    let addr = sink.local_addr()?;
    let receiver = std::thread::spawn(move || {
        let mut seen = vec![false; packets as usize];
        let mut buf = [0u8; 16];
        while let Ok(n) = sink.recv(&mut buf) {
            if n == 8 {
                let i = u64::from_be_bytes(buf[..8].try_into().expect("8 bytes"));
                if let Some(s) = seen.get_mut(i as usize) {
                    *s = true;
                }
            }
        }
        seen
    });
    let report =
        std::env::temp_dir().join(format!("chaos-bench-bursts-{}.json", std::process::id()));
    let injector = Injector::start_with(
        chaos_user,
        &target.name,
        &[&format!(
            "loss:model=gilbert,enter_bad={ENTER_BAD},leave_bad={LEAVE_BAD},proto=udp,dir=egress"
        )],
        &["--json".as_ref(), report.as_os_str()],
    )?;
    measure(
        target,
        &["udp-n".into(), addr.to_string(), packets.to_string()],
    )?;
    let seen = receiver
        .join()
        .map_err(|_| anyhow::anyhow!("the receiver"))?;
    injector.stop(libc::SIGINT)?;
    let text = std::fs::read_to_string(&report)?;
    let _removed = std::fs::remove_file(&report);
    let json: serde_json::Value = serde_json::from_str(&text)?;
    let injected = json["faults"][0]["egress"]["injected"]
        .as_u64()
        .context("the report's egress count")?;
    let mut runs = Vec::new();
    let mut run = 0u64;
    for &arrived in &seen {
        if arrived {
            if run > 0 {
                runs.push(run);
            }
            run = 0;
        } else {
            run += 1;
        }
    }
    if run > 0 {
        runs.push(run);
    }
    let missing: u64 = runs.iter().sum();
    let (a, b) = (ENTER_BAD, LEAVE_BAD);
    let share_theory = a / (a + b);
    // The loss indicator is a two-state Markov chain: its mean's variance grows by
    // (1 + λ) / (1 - λ), λ = 1 - a - b, over independent draws.
    let lambda = 1.0 - a - b;
    let share_sd =
        (share_theory * (1.0 - share_theory) * (1.0 + lambda) / (1.0 - lambda) / packets as f64)
            .sqrt();
    let mean_theory = 1.0 / b;
    let n = runs.len().max(1) as f64;
    let mean_sd = ((1.0 - b) / (b * b) / n).sqrt();
    let mut lengths = Vec::new();
    for k in 1..=6u64 {
        let measured = runs
            .iter()
            .filter(|&&r| if k < 6 { r == k } else { r >= 6 })
            .count() as f64
            / n;
        let theory = if k < 6 {
            b * (1.0 - b).powi(k as i32 - 1)
        } else {
            (1.0 - b).powi(5)
        };
        let label = if k < 6 { k.to_string() } else { "6+".into() };
        lengths.push((label, measured, theory));
    }
    Ok(Bursts {
        enter_bad: a,
        leave_bad: b,
        sent: packets,
        injected,
        missing,
        share: missing as f64 / packets as f64,
        share_theory,
        share_interval: (
            share_theory - 3.29 * share_sd,
            share_theory + 3.29 * share_sd,
        ),
        bursts: runs.len() as u64,
        mean_burst: missing as f64 / n,
        mean_burst_theory: mean_theory,
        mean_burst_interval: (mean_theory - 3.29 * mean_sd, mean_theory + 3.29 * mean_sd),
        lengths,
    })
}

#[derive(Debug, Serialize)]
pub(super) struct Bandwidth {
    pub rate: String,
    pub asked_mbytes: f64,
    pub measured_mbytes: f64,
}

impl Bandwidth {
    pub fn ratio(&self) -> f64 {
        self.measured_mbytes / self.asked_mbytes
    }
}

/// Bulk TCP from the target under `bandwidth` at each rate, measured at the receiver from a quarter
/// of the transfer (after the bucket's first burst) to its end.
pub(super) fn bandwidth(chaos_user: &Path, target: &Cgroup, secs: f64) -> Result<Vec<Bandwidth>> {
    eprintln!("xtask: bench: bandwidth accuracy");
    let mut out = Vec::new();
    for (rate, bits) in [("40mbit", 40e6), ("200mbit", 200e6)] {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?;
        let addr = listener.local_addr()?;
        let (tx, rx) = mpsc::channel();
        let receiver = std::thread::spawn(move || -> Result<()> {
            let (mut s, _) = listener.accept()?;
            let mut buf = vec![0u8; 1 << 16];
            let mut total = 0u64;
            let start = Instant::now();
            loop {
                let n = s.read(&mut buf)?;
                if n == 0 {
                    return Ok(());
                }
                total += n as u64;
                let _sent = tx.send((start.elapsed(), total));
            }
        });
        let fault = format!("bandwidth:rate={rate}");
        let injector = Injector::start(chaos_user, &target.name, &[&fault])?;
        measure(target, &["bulk".into(), addr.to_string(), secs.to_string()])?;
        injector.stop(libc::SIGINT)?;
        receiver
            .join()
            .map_err(|_| anyhow::anyhow!("the receiver"))??;
        let samples: Vec<(Duration, u64)> = rx.try_iter().collect();
        let from = Duration::from_secs_f64(secs / 4.0);
        let Some(&(t0, b0)) = samples.iter().find(|(t, _)| *t >= from) else {
            bail!("bandwidth {rate}: nothing arrived after {from:?}");
        };
        // The sender's last buffered bytes leave once the injector has stopped: not counted.
        let &(t1, b1) = samples
            .iter()
            .rev()
            .find(|(t, _)| t.as_secs_f64() <= secs)
            .context("no data")?;
        let seconds = (t1 - t0).as_secs_f64().max(1e-3);
        out.push(Bandwidth {
            rate: rate.into(),
            asked_mbytes: bits / 8.0 / 1e6,
            measured_mbytes: (b1 - b0) as f64 / seconds / 1e6,
        });
    }
    Ok(out)
}
