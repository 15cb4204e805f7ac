//! Stressors: child processes of chaos-user placed in the target cgroup (`cpu-hog`,
//! `memory-pressure`, `memory-leak`). Each asks the kernel to kill it when chaos-user dies,
//! and the session kills and reaps them at its end.

use std::{
    fs,
    os::unix::process::CommandExt as _,
    path::Path,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result};

/// What one stressor does.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Work {
    /// Busy for `load` percent of every 100 ms.
    Cpu { load: f64 },
    /// Touches memory at `rate` bytes per second (0: all at once) up to `max`, then holds it,
    /// or frees it when `release`.
    Memory { rate: u64, max: u64, release: bool },
    /// Writes `bytes` to `file` with fsync, empties it, and again.
    Io { bytes: u64 },
}

impl Work {
    /// The arguments of the hidden `stress` subcommand.
    fn args(&self) -> Vec<String> {
        match *self {
            Work::Io { bytes } => vec!["io".into(), bytes.to_string()],
            Work::Cpu { load } => vec!["cpu".into(), load.to_string()],
            Work::Memory { rate, max, release } => vec![
                "memory".into(),
                rate.to_string(),
                max.to_string(),
                if release { "release" } else { "hold" }.into(),
            ],
        }
    }

    fn parse(args: &[String]) -> Option<Work> {
        match args {
            [kind, load] if kind == "cpu" => Some(Work::Cpu {
                load: load.parse().ok()?,
            }),
            [kind, bytes] if kind == "io" => Some(Work::Io {
                bytes: bytes.parse().ok()?,
            }),
            [kind, rate, max, then] if kind == "memory" => Some(Work::Memory {
                rate: rate.parse().ok()?,
                max: max.parse().ok()?,
                release: then == "release",
            }),
            _ => None,
        }
    }
}

/// Starts a stressor in the cgroup at `cgroup` (a cgroup2 directory) and in the v1 groups
/// `v1` (hybrid layouts); `io` stressors write to `file`.
pub fn spawn(cgroup: &Path, v1: &[&Path], work: Work, file: Option<&Path>) -> Result<Child> {
    let exe = std::env::current_exe().context("find chaos-user's own binary")?;
    let mut cmd = Command::new(exe);
    cmd.arg("stress").args(work.args());
    if let Some(file) = file {
        cmd.arg(file);
    }
    cmd.stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let groups = crate::cgroup::JoinOnStart::new(cgroup, v1)?;
    // SAFETY: runs between fork and exec and only calls write(2) and prctl(2); `groups` stays
    // open until the spawn returns.
    unsafe {
        let join = groups.hook();
        cmd.pre_exec(move || {
            join()?;
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let child = cmd.spawn().context("start a stressor")?;
    drop(groups);
    Ok(child)
}

/// Bytes `pid` caused to be written to storage so far (`/proc/PID/io`).
pub fn written(pid: u32) -> u64 {
    fs::read_to_string(format!("/proc/{pid}/io"))
        .ok()
        .and_then(|io| {
            io.lines()
                .find_map(|l| l.strip_prefix("write_bytes: "))
                .and_then(|v| v.trim().parse().ok())
        })
        .unwrap_or(0)
}

/// CPU time used so far, in milliseconds, and the peak resident memory in bytes, of `pid`.
pub fn usage(pid: u32) -> (u64, u64) {
    // SAFETY: sysconf has no preconditions.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
    let cpu = fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|stat| {
            // Fields after the command name, which may hold spaces, closed by the last ')'.
            let rest = stat.rsplit_once(')')?.1;
            let fields: Vec<&str> = rest.split_whitespace().collect();
            let utime: u64 = fields.get(11)?.parse().ok()?;
            let stime: u64 = fields.get(12)?.parse().ok()?;
            Some((utime + stime) * 1000 / ticks)
        })
        .unwrap_or(0);
    let peak = fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|status| {
            let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
            let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
            Some(kib * 1024)
        })
        .unwrap_or(0);
    (cpu, peak)
}

/// The hidden `stress` subcommand: what a stressor runs. Never returns while its parent lives.
pub fn main(args: &[String]) -> i32 {
    let (work, file) = match Work::parse(args) {
        Some(work) => (work, None),
        // An io stressor's last argument is its file.
        None => match args.split_last() {
            Some((file, rest)) => match Work::parse(rest) {
                Some(work @ Work::Io { .. }) => (work, Some(std::path::PathBuf::from(file))),
                _ => return 2,
            },
            None => return 2,
        },
    };
    // The parent may have died between fork and prctl.
    // SAFETY: getppid has no preconditions.
    if unsafe { libc::getppid() } == 1 {
        return 0;
    }
    match (work, file) {
        (Work::Cpu { load }, _) => cpu(load),
        (Work::Memory { rate, max, release }, _) => memory(rate, max, release),
        (Work::Io { bytes }, Some(file)) => io(&file, bytes),
        (Work::Io { .. }, None) => 2,
    }
}

fn io(path: &Path, bytes: u64) -> i32 {
    use std::io::Write as _;
    let chunk = vec![0x5au8; 1 << 20];
    loop {
        let Ok(mut file) = fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .open(path)
        else {
            return 1;
        };
        let mut left = bytes;
        while left > 0 {
            let n = left.min(chunk.len() as u64) as usize;
            if file.write_all(&chunk[..n]).is_err() {
                break;
            }
            left -= n as u64;
        }
        let _synced = file.sync_all();
    }
}

fn cpu(load: f64) -> ! {
    let period = Duration::from_millis(100);
    let busy = period.mul_f64((load / 100.0).clamp(0.0, 1.0));
    loop {
        let started = Instant::now();
        let mut spin = 0u64;
        while started.elapsed() < busy {
            spin = std::hint::black_box(spin.wrapping_add(1));
        }
        if let Some(rest) = period.checked_sub(started.elapsed()) {
            std::thread::sleep(rest);
        }
    }
}

fn memory(rate: u64, max: u64, release: bool) -> ! {
    const STEP: Duration = Duration::from_millis(100);
    let mut held: Vec<Vec<u8>> = Vec::new();
    let mut total = 0u64;
    let per_step = if rate == 0 {
        max
    } else {
        (rate / 10).max(4096)
    };
    let started = Instant::now();
    let mut steps = 0u32;
    while total < max {
        let n = per_step.min(max - total) as usize;
        let mut chunk = vec![0u8; n];
        // Touch every page, so the memory is really taken.
        for at in (0..n).step_by(4096) {
            chunk[at] = 1;
        }
        total += n as u64;
        held.push(std::hint::black_box(chunk));
        steps += 1;
        if rate > 0 {
            if let Some(rest) = (STEP * steps).checked_sub(started.elapsed()) {
                std::thread::sleep(rest);
            }
        }
    }
    if release {
        drop(held);
    } else {
        std::hint::black_box(&held);
    }
    loop {
        std::thread::sleep(Duration::from_secs(3600));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn work_travels_as_arguments() {
        for work in [
            Work::Cpu { load: 80.0 },
            Work::Memory {
                rate: 10 << 20,
                max: 1 << 30,
                release: true,
            },
            Work::Memory {
                rate: 0,
                max: 512 << 20,
                release: false,
            },
        ] {
            assert_eq!(Work::parse(&work.args()), Some(work));
        }
        assert_eq!(Work::parse(&["disk".into()]), None);
        let io = Work::Io { bytes: 1 << 20 };
        assert_eq!(Work::parse(&io.args()), Some(io));
    }
}
