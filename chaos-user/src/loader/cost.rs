//! What one decision of a kernel program costs, measured in the kernel: each program is loaded
//! and armed for the caller's own cgroup with faults at p=0 (every rule walked, every draw made,
//! nothing done), then run by BPF_PROG_TEST_RUN on a synthetic packet or call, beside an empty
//! program of the same type. `chaos-user bench-decide` prints the figures; `cargo xtask bench`
//! tables them. Nothing is attached.

use std::{path::Path, time::Duration};

use anyhow::Context as _;
use aya::{
    Ebpf,
    programs::{
        CgroupSkb, RawTracePoint, RawTracePointRunOptions, SchedClassifier, TestRun as _,
        TestRunOptions, Xdp,
    },
    sys::{Stats, enable_stats},
};
use serde::Serialize;

use crate::{cgroup::Cgroup, plan::Plan, spec::parse_fault};

/// One program's figure.
#[derive(Debug, Serialize)]
pub struct Cost {
    /// The program, as the kernel lists it.
    pub program: &'static str,
    /// The faults it was armed with.
    pub faults: Vec<&'static str>,
    /// Nanoseconds per run, of the program and of the empty one of its type.
    pub ns: f64,
    pub empty_ns: f64,
    /// How the time was taken: `test_run` (the kernel's average over `repeat` runs of one
    /// BPF_PROG_TEST_RUN) or `run_time` (the kernel's run-time statistics over one call each,
    /// where the program type has no repeat).
    pub measured_by: &'static str,
    pub runs: u32,
    /// The instructions the verifier went through to accept the program (kernel 5.16).
    pub verified_insns: Option<u32>,
}

/// What a case feeds the program.
#[derive(Clone, Copy)]
enum Input {
    /// An Ethernet frame: IPv4, UDP from 127.0.0.1:40000 to 127.0.0.1:9, 64 bytes of payload.
    Frame,
    /// A raw tracepoint's arguments: no saved registers, the second argument as given.
    Args(u64),
}

struct Case {
    program: &'static str,
    empty: &'static str,
    faults: &'static [&'static str],
    input: Input,
}

const CASES: &[Case] = &[
    Case {
        program: "chaos_egress",
        empty: "empty_tc",
        faults: &["loss:p=0,dir=egress", "corrupt:p=0", "duplicate:p=0"],
        input: Input::Frame,
    },
    Case {
        program: "chaos_ingress",
        empty: "empty_skb",
        faults: &["loss:p=0,dir=ingress"],
        input: Input::Frame,
    },
    Case {
        program: "chaos_cg_egress",
        empty: "empty_skb",
        faults: &["bandwidth:rate=100gbit"],
        input: Input::Frame,
    },
    Case {
        program: "chaos_xdp",
        empty: "empty_xdp",
        faults: &["xdp-drop:dev=lo,p=0"],
        input: Input::Frame,
    },
    Case {
        program: "chaos_sys_enter",
        empty: "empty_raw_tp",
        faults: &["crash:syscall=getpid,p=0"],
        input: Input::Args(libc::SYS_getpid as u64),
    },
    Case {
        program: "chaos_sys_exit",
        empty: "empty_raw_tp",
        faults: &["crash:syscall=getpid,p=0"],
        // A call that succeeded, as most do.
        input: Input::Args(0),
    },
];

/// Measures every program this kernel runs through BPF_PROG_TEST_RUN, `repeat` runs each.
pub fn measure(mount: &Path, repeat: u32) -> anyhow::Result<Vec<Cost>> {
    let own = Cgroup::of_process(mount, "self")?;
    let mut empty = super::open_object()?;
    for name in ["empty_tc", "empty_skb", "empty_xdp", "empty_raw_tp"] {
        load(&mut empty, name)?;
    }
    // Run-time statistics, for the program types that take no repeat; off again when the
    // descriptor closes.
    let _stats = enable_stats(Stats::RunTime).context("BPF_ENABLE_STATS")?;
    let mut costs = Vec::new();
    for case in CASES {
        let faults = case
            .faults
            .iter()
            .map(|f| parse_fault(f))
            .collect::<Result<Vec<_>, _>>()?;
        let mut plan = Plan::dry(&faults)?;
        // Live for the whole measurement: a rule past its deadline skips the draw.
        for rule in &mut plan.packet {
            rule.deadline_ns = u64::MAX;
        }
        for rule in &mut plan.crash {
            rule.deadline_ns = u64::MAX;
        }
        let mut programs = plan.load()?;
        programs.configure(Some(&own), &plan)?;
        let (ns, measured_by) = run(programs.ebpf(), case.program, case.input, repeat)?;
        let (empty_ns, _) = run(&empty, case.empty, case.input, repeat)?;
        let verified_insns = programs
            .ebpf()
            .program(case.program)
            .and_then(|p| p.info().ok())
            .and_then(|i| i.verified_instruction_count());
        costs.push(Cost {
            program: case.program,
            faults: case.faults.to_vec(),
            ns,
            empty_ns,
            measured_by,
            runs: repeat,
            verified_insns,
        });
    }
    Ok(costs)
}

fn load(ebpf: &mut Ebpf, name: &'static str) -> anyhow::Result<()> {
    let program = ebpf
        .program_mut(name)
        .with_context(|| format!("{name} is not in the object"))?;
    match program {
        aya::programs::Program::SchedClassifier(p) => p.load()?,
        aya::programs::Program::CgroupSkb(p) => p.load()?,
        aya::programs::Program::Xdp(p) => p.load()?,
        aya::programs::Program::RawTracePoint(p) => p.load()?,
        _ => anyhow::bail!("{name}: no test run for its type"),
    }
    Ok(())
}

/// Nanoseconds per run of one loaded program, and how they were taken.
fn run(
    ebpf: &Ebpf,
    name: &'static str,
    input: Input,
    repeat: u32,
) -> anyhow::Result<(f64, &'static str)> {
    let program = ebpf
        .program(name)
        .with_context(|| format!("{name} is not in the object"))?;
    let frame = frame();
    let opts = || TestRunOptions {
        data_in: Some(&frame),
        repeat,
        ..TestRunOptions::new()
    };
    let per_run = |d: Duration| d.as_nanos() as f64;
    let ns = match (program, input) {
        (aya::programs::Program::SchedClassifier(p), Input::Frame) => {
            per_run(<SchedClassifier>::test_run(p, opts())?.duration)
        }
        (aya::programs::Program::CgroupSkb(p), Input::Frame) => {
            per_run(<CgroupSkb>::test_run(p, opts())?.duration)
        }
        (aya::programs::Program::Xdp(p), Input::Frame) => {
            per_run(<Xdp>::test_run(p, opts())?.duration)
        }
        (aya::programs::Program::RawTracePoint(p), Input::Args(arg)) => {
            return Ok((raw_tp_run_time(p, arg, repeat)?, "run_time"));
        }
        _ => anyhow::bail!("{name}: no test run for this input"),
    };
    Ok((ns, "test_run"))
}

/// A raw tracepoint program's average run time over `repeat` test runs of one call each.
fn raw_tp_run_time(p: &RawTracePoint, arg: u64, repeat: u32) -> anyhow::Result<f64> {
    let before = p.info()?;
    for _ in 0..repeat {
        let mut opts = RawTracePointRunOptions::new();
        opts.args[1] = arg;
        p.test_run(opts)?;
    }
    let after = p.info()?;
    let runs = after.run_count().saturating_sub(before.run_count());
    anyhow::ensure!(
        runs > 0,
        "no run-time statistics (kernel.bpf_stats_enabled)"
    );
    let time = after.run_time().saturating_sub(before.run_time());
    Ok(time.as_nanos() as f64 / runs as f64)
}

/// The synthetic packet: Ethernet, IPv4 and UDP headers and 64 bytes of payload, loopback to
/// loopback.
fn frame() -> Vec<u8> {
    let payload = 64usize;
    let ip_len = (20 + 8 + payload) as u16;
    let mut f = Vec::with_capacity(14 + usize::from(ip_len));
    f.extend_from_slice(&[0, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 2, 0x08, 0x00]);
    f.extend_from_slice(&[0x45, 0, 0, 0, 0, 0, 0x40, 0, 64, 17, 0, 0]);
    f[16..18].copy_from_slice(&ip_len.to_be_bytes());
    f.extend_from_slice(&[127, 0, 0, 1, 127, 0, 0, 1]);
    f.extend_from_slice(&40000u16.to_be_bytes());
    f.extend_from_slice(&9u16.to_be_bytes());
    f.extend_from_slice(&(8 + payload as u16).to_be_bytes());
    f.extend_from_slice(&[0, 0]);
    f.resize(14 + usize::from(ip_len), 0xab);
    f
}
