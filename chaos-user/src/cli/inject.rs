//! `chaos-user inject`: faults on an existing cgroup.

use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use tokio::time::{MissedTickBehavior, interval, sleep_until};

use super::{InjectArgs, report_leftovers, signals};
use crate::{
    cgroup::{self, Cgroup},
    loader,
    report::{EndReason, Report},
    session::{Deadline, Plan, Session, TICK},
    spec::FaultSpec,
    undo::UndoLog,
};

pub(super) fn main(args: InjectArgs) -> Result<i32> {
    let (faults, duration) = args.faults.parse()?;
    if args.cgroup.trim().is_empty() {
        return Err(crate::error::UsageError {
            message: "--cgroup is empty".into(),
            hint: Some("name a cgroup; the root cgroup is `/` (with --force)".into()),
        }
        .into());
    }
    let mount = cgroup::mount_point()?;
    let target = Cgroup::resolve(&mount, &args.cgroup).context("--cgroup")?;
    cgroup::check_guardrails(&mount, &target, args.force)?;
    report_leftovers();
    loader::check_ready()?;

    if args.dry_run {
        return dry_run(&args, target, &faults);
    }

    let mut undo = UndoLog::new()?;
    let result = inject(&args, target, faults, duration, &mut undo);
    // Whatever path led here, nothing the kernel keeps may stay behind.
    undo.undo_where(|_| true)?;
    result
}

fn inject(
    args: &InjectArgs,
    target: Cgroup,
    faults: Vec<FaultSpec>,
    duration: Option<Duration>,
    undo: &mut UndoLog,
) -> Result<i32> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let mut signals = signals::watch()?;
    let deadline = duration.map_or(Deadline::Lease, Deadline::At);
    let mut session = Session::start(target.clone(), faults, deadline, undo)?;
    note!(
        "chaos-user: injecting into cgroup {} ({}); Ctrl-C to stop",
        target.name,
        session.attachments().join(", ")
    );

    let end = duration.map(|d| tokio::time::Instant::from_std(Instant::now() + d));
    let reason: Result<EndReason> = runtime.block_on(async {
        let mut tick = interval(TICK);
        tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => {
                    if !session.target().exists() {
                        return Ok(EndReason::TargetGone);
                    }
                    for name in session.tick(undo)? {
                        log::info!("attached to new interface {name}");
                    }
                }
                () = sleep_until(end.unwrap_or_else(tokio::time::Instant::now)), if end.is_some() => {
                    return Ok(EndReason::Duration);
                }
                Some(_) = signals.recv() => return Ok(EndReason::Signal),
            }
        }
    });
    let reason = match reason {
        Ok(r) => r,
        Err(e) => {
            session.stop(undo)?;
            return Err(e);
        }
    };

    let record = session.stop(undo)?;
    let report = Report::new("inject", target, record, reason);
    let to_stdout = args
        .faults
        .json
        .as_deref()
        .is_some_and(|p| p.as_os_str() == "-");
    if to_stdout {
        note!("{}", report.summary().trim_end());
    } else {
        out!("{}", report.summary().trim_end());
    }
    if let Some(path) = &args.faults.json {
        report.write_json(path)?;
    }
    if reason == EndReason::TargetGone {
        note!(
            "chaos-user: error: the target cgroup {} was removed or replaced",
            report.target.name
        );
        return Ok(3);
    }
    Ok(0)
}

/// The plan of a `--dry-run`, as JSON.
#[derive(serde::Serialize)]
struct DryRun {
    schema_version: u32,
    command: &'static str,
    target: Cgroup,
    faults: Vec<String>,
    would_attach: Vec<String>,
}

/// Loads and verifies the programs the faults need and says where they would go.
fn dry_run(args: &InjectArgs, target: Cgroup, faults: &[FaultSpec]) -> Result<i32> {
    let plan = Plan::new(faults);
    plan.load()?;
    let mut would_attach = Vec::new();
    if plan.egress {
        let mode = crate::tc::Mode::detect().name();
        for interface in loader::interfaces() {
            would_attach.push(format!(
                "loss_egress at {mode} egress of {}",
                interface.name
            ));
        }
    }
    if plan.ingress {
        would_attach.push(format!(
            "loss_ingress at cgroup_skb ingress of {}",
            target.name
        ));
    }
    let plan = DryRun {
        schema_version: crate::report::SCHEMA_VERSION,
        command: "dry-run",
        target,
        faults: faults.iter().map(|f| f.to_string()).collect(),
        would_attach,
    };
    let json_to_stdout = args
        .faults
        .json
        .as_deref()
        .is_some_and(|p| p.as_os_str() == "-");
    let mut text = format!(
        "dry run: programs load and verify; nothing attached\ntarget: cgroup {} (id {}, level {})\n",
        plan.target.name, plan.target.id, plan.target.level
    );
    for f in &plan.faults {
        text += &format!("fault: {f}\n");
    }
    for a in &plan.would_attach {
        text += &format!("would attach: {a}\n");
    }
    if json_to_stdout {
        note!("{}", text.trim_end());
    } else {
        out!("{}", text.trim_end());
    }
    if let Some(path) = &args.faults.json {
        let json = serde_json::to_string_pretty(&plan)? + "\n";
        if json_to_stdout {
            out!("{}", json.trim_end());
        } else {
            std::fs::write(path, json).with_context(|| format!("write {}", path.display()))?;
        }
    }
    Ok(0)
}
