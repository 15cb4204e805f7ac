//! `chaos-user doctor`: what this kernel offers, found by asking it: each program is loaded,
//! each qdisc is added in a throwaway network namespace.

use std::{fs, path::Path};

use anyhow::{Context as _, Result};
use serde::Serialize;

use super::DoctorArgs;
use crate::{cgroup, loader};

#[derive(Serialize)]
struct Findings {
    schema_version: u32,
    kernel: String,
    btf: bool,
    cgroup2_mount: Option<String>,
    lockdown: String,
    lsm: String,
    features: Features,
    faults: Vec<FaultFinding>,
    programs: Vec<ProgramFinding>,
}

/// Kernel features the product's faults build on, now or as they are added.
#[derive(Serialize)]
struct Features {
    /// tcx links (6.6+); without them tc programs go through a clsact qdisc.
    tcx: bool,
    /// BPF trampolines: fentry, fexit, modify-return.
    fentry: Finding,
    /// BPF LSM programs load.
    lsm_programs: Finding,
    /// `bpf` is in the active LSM list, so loaded LSM programs run (unknown without
    /// securityfs).
    bpf_lsm_active: Option<bool>,
    /// The `fq` qdisc (departure-time delay).
    fq: Finding,
    /// The `netem` qdisc.
    netem: Finding,
}

#[derive(Serialize)]
struct Finding {
    available: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    reason: Option<String>,
}

impl Finding {
    fn from_result(result: Result<(), String>) -> Finding {
        match result {
            Ok(()) => Finding {
                available: true,
                reason: None,
            },
            Err(reason) => Finding {
                available: false,
                reason: Some(reason),
            },
        }
    }

    fn describe(&self) -> String {
        match &self.reason {
            None => "yes".into(),
            Some(r) => format!("no: {r}"),
        }
    }
}

#[derive(Serialize)]
struct FaultFinding {
    kind: &'static str,
    available: bool,
    how: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    reason: Option<String>,
}

#[derive(Serialize)]
struct ProgramFinding {
    program: &'static str,
    hook: &'static str,
    loads: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    reason: Option<String>,
}

fn read_trimmed(path: &str) -> Option<String> {
    fs::read_to_string(path).ok().map(|s| s.trim().to_string())
}

pub(super) fn main(args: DoctorArgs) -> Result<i32> {
    if let Some(path) = &args.json {
        super::check_writable(path)?;
    }
    super::report_leftovers();
    let securityfs = "unknown (securityfs is not mounted at /sys/kernel/security)";
    let lsm = read_trimmed("/sys/kernel/security/lsm");
    let programs = probe_programs();
    let loads = |name: &str| -> Result<(), String> {
        let p = programs
            .iter()
            .find(|p| p.program == name)
            .expect("a probed program");
        p.reason
            .clone()
            .map_or(Ok(()), |r| Err(format!("{name}: {r}")))
    };
    let features = Features {
        tcx: loader::has_tcx(),
        fentry: Finding::from_result(loads("probe_fentry")),
        lsm_programs: Finding::from_result(loads("probe_lsm")),
        bpf_lsm_active: lsm.as_deref().map(|l| l.split(',').any(|m| m == "bpf")),
        fq: Finding::from_result(crate::tc::probe_qdisc("fq")),
        netem: Finding::from_result(crate::tc::probe_qdisc("netem")),
    };
    let tc = if features.tcx { "tcx" } else { "clsact qdisc" };
    let hooks = loader::probe_hooks().map_err(|e| format!("{:#}", anyhow::Error::new(e)));
    let hook_kind = match &hooks {
        Ok(kind) => kind.name(),
        Err(_) => "lsm or fmod_ret programs",
    };
    let sock_diag = crate::cgroup::mount_point()
        .map_err(|e| e.to_string())
        .and_then(|m| crate::cgroup::Cgroup::of_process(&m, "self").map_err(|e| e.to_string()))
        .and_then(|own| {
            crate::sockdiag::list_tcp(&[own.id], &Default::default()).map_err(|e| e.to_string())
        })
        .map(|_| ());
    let fq = features
        .fq
        .reason
        .clone()
        .map_or(Ok(()), |r| Err(format!("fq qdisc: {r}")));
    let faults = vec![
        fault(
            "loss",
            format!("egress: tc classifier via {tc}; ingress: cgroup_skb"),
            [loads("chaos_egress"), loads("chaos_ingress")],
        ),
        fault(
            "delay",
            format!("tc classifier via {tc} stamping departure times for fq"),
            [loads("chaos_egress"), fq],
        ),
        fault(
            "bandwidth",
            "cgroup_skb egress token bucket".into(),
            [loads("chaos_cg_egress")],
        ),
        fault(
            "corrupt",
            format!("tc classifier via {tc}"),
            [loads("chaos_egress")],
        ),
        fault(
            "duplicate",
            format!("tc classifier via {tc}"),
            [loads("chaos_egress")],
        ),
        fault(
            "connect",
            "cgroup connect4/6 with bpf_set_retval".into(),
            [loads("chaos_connect4"), loads("chaos_connect6")],
        ),
        fault(
            "reset",
            "sock_diag socket destroy with a cgroup filter".into(),
            [sock_diag],
        ),
        fault(
            "dns",
            "cgroup connect/sendmsg/recvmsg redirect to a responder".into(),
            [
                loads("chaos_connect4"),
                loads("chaos_sendmsg4"),
                loads("chaos_recvmsg4"),
                loads("chaos_cg_egress"),
            ],
        ),
        fault(
            "xdp-drop",
            "xdp on one interface".into(),
            [loads("chaos_xdp")],
        ),
        fault(
            "crash",
            "raw tracepoint sys_enter with bpf_send_signal and atomic counts".into(),
            [loads("chaos_sys_enter")],
        ),
        match &hooks {
            Ok(kind) => fault(
                "fd-limit",
                format!(
                    "{} on file_alloc_security: every new file (open, socket, pipe, accept) \
                     fails with EMFILE",
                    kind.name()
                ),
                [Ok(())],
            ),
            Err(why) => fault(
                "fd-limit",
                format!(
                    "sockets only: cgroup sock_create with bpf_set_retval (files, pipes and \
                     accepted connections need the file allocation hook, which needs BPF \
                     trampolines: {why})"
                ),
                [loads("chaos_sock_create")],
            ),
        },
        fault(
            "file",
            format!(
                "{hook_kind} on file_open, file_permission, path_mknod and path_unlink; path= \
                 matched by walking the dentries, with struct offsets from the kernel's BTF"
            ),
            [hooks.clone().map(|_| ())],
        ),
        fault(
            "nospace",
            format!("{hook_kind} on path_mknod and file_permission, failing with ENOSPC"),
            [hooks.clone().map(|_| ())],
        ),
        fault(
            "fail",
            format!(
                "{hook_kind} on the LSM hook each syscall passes (task_alloc for fork and \
                 clone, mmap_file, path_rename, socket_bind, ...)"
            ),
            [hooks.clone().map(|_| ())],
        ),
        fault(
            "device",
            "cgroup device hook with bpf_set_retval".into(),
            [loads("chaos_device")],
        ),
        fault(
            "disk-fill",
            "a file on the path's filesystem (fallocate, or zeros where it is missing), in the \
             undo log before it exists"
                .into(),
            [Ok(())],
        ),
        fault(
            "cpu-throttle",
            limit_place("cpu", "cpu.max", "cpu.cfs_quota_us"),
            [Ok(())],
        ),
        fault(
            "cpu-hog",
            "stressor processes of chaos-user in the target cgroup".into(),
            [Ok(())],
        ),
        fault(
            "memory-pressure",
            format!(
                "size: a stressor process of chaos-user in the target cgroup, holding the \
                 memory; limit: {}",
                limit_place("memory", "memory.max", "memory.limit_in_bytes")
            ),
            [Ok(())],
        ),
        fault(
            "memory-leak",
            "a stressor process of chaos-user in the target cgroup, growing at the rate".into(),
            [Ok(())],
        ),
        fault(
            "io-stress",
            "stressor processes of chaos-user in the target cgroup, writing with fsync".into(),
            [Ok(())],
        ),
        fault(
            "corrupt-file",
            "writes to the file, its original saved first in the runtime folder".into(),
            [Ok(())],
        ),
        fault(
            "page-cache",
            "posix_fadvise(DONTNEED) on every file under the path".into(),
            [Ok(())],
        ),
        fault(
            "pause",
            "the cgroup v2 freezer (cgroup.freeze)".into(),
            [freezer()],
        ),
    ];
    // In the order users see the kinds everywhere else.
    let mut faults = faults;
    faults.sort_by_key(|f| crate::spec::KINDS.iter().position(|k| *k == f.kind));
    let findings = Findings {
        schema_version: crate::report::SCHEMA_VERSION,
        kernel: read_trimmed("/proc/sys/kernel/osrelease").unwrap_or_default(),
        btf: Path::new("/sys/kernel/btf/vmlinux").exists(),
        cgroup2_mount: cgroup::mount_point().ok().map(|p| p.display().to_string()),
        lockdown: read_trimmed("/sys/kernel/security/lockdown")
            .unwrap_or_else(|| securityfs.into()),
        lsm: lsm.unwrap_or_else(|| securityfs.into()),
        features,
        faults,
        programs,
    };
    let to_stdout = args.json.as_deref().is_some_and(|p| p.as_os_str() == "-");
    if !to_stdout {
        print_findings(&findings);
    }
    if let Some(path) = &args.json {
        let mut text = serde_json::to_string_pretty(&findings)?;
        text.push('\n');
        if to_stdout {
            out!("{}", text.trim_end());
        } else {
            fs::write(path, text).with_context(|| format!("write {}", path.display()))?;
        }
    }
    Ok(0)
}

/// The cgroup v2 freezer: every cgroup but the root has `cgroup.freeze` from kernel 5.2.
fn freezer() -> Result<(), String> {
    cgroup::mount_point().map_err(|e| e.to_string())?;
    match aya::util::KernelVersion::current() {
        Ok(v) if v < aya::util::KernelVersion::new(5, 2, 0) => Err(format!(
            "the cgroup v2 freezer needs kernel 5.2; this is {v}"
        )),
        _ => Ok(()),
    }
}

/// A fault is available when everything it builds on is; the first refusal is the reason.
fn fault<const N: usize>(
    kind: &'static str,
    how: String,
    needs: [Result<(), String>; N],
) -> FaultFinding {
    let reason = needs.into_iter().find_map(Result::err);
    FaultFinding {
        kind,
        available: reason.is_none(),
        how,
        reason,
    }
}

fn print_findings(f: &Findings) {
    let yes = |b: bool| if b { "yes" } else { "no" };
    out!("kernel          {}", f.kernel);
    out!("BTF             {}", yes(f.btf));
    out!(
        "cgroup2         {}",
        f.cgroup2_mount.as_deref().unwrap_or("not mounted")
    );
    out!("lockdown        {}", f.lockdown);
    out!("LSMs            {}", f.lsm);
    out!();
    let tcx = if f.features.tcx {
        "yes"
    } else {
        "no (6.6+): tc programs use a clsact qdisc"
    };
    out!("tcx links       {tcx}");
    out!("fentry          {}", f.features.fentry.describe());
    out!("lsm programs    {}", f.features.lsm_programs.describe());
    let active = f
        .features
        .bpf_lsm_active
        .map_or("unknown (no securityfs)", yes);
    out!("BPF LSM active  {active}");
    out!("fq qdisc        {}", f.features.fq.describe());
    out!("netem qdisc     {}", f.features.netem.describe());
    out!();
    for fault in &f.faults {
        match &fault.reason {
            None => out!("fault {:<9} yes ({})", fault.kind, fault.how),
            Some(r) => out!("fault {:<9} no: {r}", fault.kind),
        }
    }
    out!();
    for p in &f.programs {
        match &p.reason {
            None => out!("program {:<14} {:<28} loads", p.program, p.hook),
            Some(r) => out!("program {:<14} {:<28} refused: {r}", p.program, p.hook),
        }
    }
}

/// Loads each program of the object, one at a time, attaching nothing.
fn probe_programs() -> Vec<ProgramFinding> {
    loader::PROGRAMS
        .iter()
        .map(|&(program, hook)| {
            let reason = loader::probe(program).err().map(|e| {
                let chain: Vec<String> = anyhow::Error::new(e)
                    .chain()
                    .map(|c| c.to_string())
                    .collect();
                chain.join(": ")
            });
            ProgramFinding {
                program,
                hook,
                loads: reason.is_none(),
                reason,
            }
        })
        .collect()
}

/// Where a limit on `controller` goes on this machine: the target's cgroup2 file, or on a
/// hybrid layout the v1 file of a group the session moves the target's processes into.
fn limit_place(controller: &str, v2: &str, v1: &str) -> String {
    match crate::cgroup::v1::hierarchy(controller) {
        Some(mount) => format!(
            "{controller} is a cgroup v1 controller here ({}): the target's processes are moved \
             into a v1 group of the session's own and its {v1} is set; the group and the limit \
             in the undo log first, the processes moved back at the end",
            mount.display()
        ),
        None => format!(
            "the target's cgroup v2 {v2} (the {controller} controller enabled for it), in the \
             undo log first"
        ),
    }
}
