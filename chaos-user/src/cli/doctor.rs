//! `chaos-user doctor`: what this kernel offers, found by asking it.

use std::{fs, path::Path};

use anyhow::Result;
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
    tcx: bool,
    programs: Vec<ProgramFinding>,
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
    super::report_leftovers();
    let securityfs = "unknown (securityfs is not mounted at /sys/kernel/security)";
    let findings = Findings {
        schema_version: crate::report::SCHEMA_VERSION,
        kernel: read_trimmed("/proc/sys/kernel/osrelease").unwrap_or_default(),
        btf: Path::new("/sys/kernel/btf/vmlinux").exists(),
        cgroup2_mount: cgroup::mount_point().ok().map(|p| p.display().to_string()),
        lockdown: read_trimmed("/sys/kernel/security/lockdown")
            .unwrap_or_else(|| securityfs.into()),
        lsm: read_trimmed("/sys/kernel/security/lsm").unwrap_or_else(|| securityfs.into()),
        tcx: loader::has_tcx(),
        programs: probe_programs(),
    };
    let to_stdout = args.json.as_deref().is_some_and(|p| p.as_os_str() == "-");
    if !to_stdout {
        print_findings(&findings);
    }
    if let Some(path) = &args.json {
        let mut text = serde_json::to_string_pretty(&findings)?;
        text.push('\n');
        if to_stdout {
            print!("{text}");
        } else {
            fs::write(path, text)?;
        }
    }
    Ok(0)
}

fn print_findings(f: &Findings) {
    let yes = |b: bool| if b { "yes" } else { "no" };
    println!("kernel        {}", f.kernel);
    println!("BTF           {}", yes(f.btf));
    println!(
        "cgroup2       {}",
        f.cgroup2_mount.as_deref().unwrap_or("not mounted")
    );
    println!("lockdown      {}", f.lockdown);
    println!("LSMs          {}", f.lsm);
    println!(
        "tcx links     {}",
        if f.tcx {
            "yes (6.6+)"
        } else {
            "no (needs 6.6): egress loss is refused"
        }
    );
    for p in &f.programs {
        match &p.reason {
            None => println!("program       {:<14} {:<22} loads", p.program, p.hook),
            Some(r) => println!(
                "program       {:<14} {:<22} refused: {r}",
                p.program, p.hook
            ),
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
