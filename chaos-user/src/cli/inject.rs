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
    let mount = cgroup::mount_point()?;
    let target = Cgroup::resolve(&mount, &args.cgroup).context("--cgroup")?;
    cgroup::check_guardrails(&mount, &target, args.force)?;
    report_leftovers();
    loader::check_ready()?;

    if args.dry_run {
        let plan = Plan::new(&faults);
        plan.load()?;
        println!("dry run: programs load and verify; nothing attached");
        println!(
            "target: cgroup {} (id {}, level {})",
            target.name, target.id, target.level
        );
        for f in &faults {
            println!("fault: {f}");
        }
        if plan.egress {
            println!(
                "would attach: loss_egress at tcx egress of {}",
                loader::interfaces().join(", ")
            );
        }
        if plan.ingress {
            println!(
                "would attach: loss_ingress at cgroup_skb ingress of {}",
                target.name
            );
        }
        return Ok(0);
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
    eprintln!(
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

    let started = session.started();
    let attachments = session.attachments();
    let faults = session.stop(undo)?;
    let report = Report::new("inject", target, faults, attachments, started, reason);
    let to_stdout = args
        .faults
        .json
        .as_deref()
        .is_some_and(|p| p.as_os_str() == "-");
    if to_stdout {
        eprint!("{}", report.summary());
    } else {
        print!("{}", report.summary());
    }
    if let Some(path) = &args.faults.json {
        report.write_json(path)?;
    }
    if reason == EndReason::TargetGone {
        eprintln!(
            "chaos-user: error: the target cgroup {} was removed",
            report.target.name
        );
        return Ok(3);
    }
    Ok(0)
}
