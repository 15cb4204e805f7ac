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
    if args.restore {
        return restore(&faults);
    }
    // Refused here, before anything is loaded.
    super::check_paths(&faults)?;
    let target = match args.cgroup.as_deref() {
        Some(path) if path.trim().is_empty() => {
            return Err(crate::error::UsageError {
                message: "--cgroup is empty".into(),
                hint: Some("name a cgroup; the root cgroup is `/` (with --force)".into()),
            }
            .into());
        }
        Some(path) => {
            let mount = cgroup::mount_point()?;
            let target = Cgroup::resolve(&mount, path).context("--cgroup")?;
            cgroup::check_guardrails(&mount, &target, args.force)?;
            Some(target)
        }
        None => {
            if let Some(f) = faults.iter().find(|f| f.needs_cgroup()) {
                return Err(crate::error::UsageError {
                    message: format!("`{}` acts on a cgroup: --cgroup is needed", f.kind()),
                    hint: Some(
                        "name the target, for example --cgroup system.slice/nginx.service".into(),
                    ),
                }
                .into());
            }
            None
        }
    };
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
    target: Option<Cgroup>,
    faults: Vec<FaultSpec>,
    duration: Option<Duration>,
    undo: &mut UndoLog,
) -> Result<i32> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let mut signals = signals::watch()?;
    let deadline = duration.map_or(Deadline::Lease, Deadline::At);
    let scope = FaultSpec::scope(&faults);
    let mut session = Session::start(target.clone(), faults, deadline, undo)?;
    let what = target
        .as_ref()
        .map_or_else(|| scope.to_string(), |t| format!("cgroup {}", t.name));
    note!(
        "chaos-user: injecting into {what} ({}); Ctrl-C to stop",
        session.attachments().join(", ")
    );

    let end = duration.map(|d| tokio::time::Instant::from_std(Instant::now() + d));
    let reason: Result<EndReason> = runtime.block_on(async {
        let mut tick = interval(TICK);
        tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => {
                    if session.target().is_some_and(|t| !t.exists()) {
                        return Ok(EndReason::TargetGone);
                    }
                    for name in session.tick(undo)? {
                        log::info!("attached to new interface {name}");
                    }
                }
                () = wake_at(session.next_due()), if session.next_due().is_some() => {
                    session.due()?;
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
            report.target.as_ref().map_or("", |t| t.name.as_str())
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
    #[serde(skip_serializing_if = "Option::is_none")]
    target: Option<Cgroup>,
    faults: Vec<String>,
    would_attach: Vec<String>,
}

/// Loads and verifies the programs the faults need and says where they would go.
fn dry_run(args: &InjectArgs, target: Option<Cgroup>, faults: &[FaultSpec]) -> Result<i32> {
    let plan = Plan::dry(faults)?;
    let programs = plan.load()?;
    let mut would_attach = Vec::new();
    if plan.fq {
        crate::tc::check_fq()?;
        would_attach.push("fq root qdisc on every interface".to_string());
    }
    if plan.needs.tc_egress {
        let mode = crate::tc::Mode::detect().name();
        for interface in loader::interfaces() {
            would_attach.push(format!(
                "chaos_egress at {mode} egress of {}",
                interface.name
            ));
        }
    }
    for name in programs.needs().programs() {
        let Some(&(_, hook)) = loader::PROGRAMS.iter().find(|(n, _)| *n == name) else {
            continue;
        };
        match (&target, name) {
            (_, "chaos_egress") => {}
            (_, "chaos_sys_enter") => would_attach.push(
                "chaos_sys_enter at raw tracepoint sys_enter (every process's calls; it acts on \
                 the target's)"
                    .to_string(),
            ),
            (_, "chaos_xdp") => would_attach.push(format!(
                "chaos_xdp at xdp of {}",
                plan.needs.xdp.as_deref().unwrap_or_default()
            )),
            (Some(t), _) => would_attach.push(format!("{name} at {hook} of {}", t.name)),
            (None, _) => {}
        }
    }
    would_attach.extend(
        programs
            .hook_attachments()
            .into_iter()
            .map(|h| format!("{h} (every process's calls; it acts on the target's)")),
    );
    if let (true, Some(t)) = (
        faults.iter().any(|f| matches!(f, FaultSpec::Pause(_))),
        &target,
    ) {
        crate::pause::is_frozen(&t.path).with_context(|| format!("pause cgroup {}", t.name))?;
        would_attach.push(format!("the cgroup freezer of {}", t.name));
    }
    if faults.iter().any(|f| matches!(f, FaultSpec::Dns(_))) {
        would_attach.push("a DNS responder on 127.0.0.1 and ::1".to_string());
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
    let mut text = "dry run: programs load and verify; nothing attached\n".to_string();
    if let Some(t) = &plan.target {
        text += &format!(
            "target: cgroup {} (id {}, level {})\n",
            t.name, t.id, t.level
        );
    }
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

/// Sleeps until the next `reset` is due.
pub(super) async fn wake_at(at: Option<Instant>) {
    match at {
        Some(at) => sleep_until(tokio::time::Instant::from_std(at)).await,
        None => std::future::pending().await,
    }
}

/// `inject --restore`: the saved originals of the `corrupt-file` faults' files put back.
fn restore(faults: &[FaultSpec]) -> Result<i32> {
    let mut paths = Vec::new();
    for f in faults {
        match f {
            FaultSpec::CorruptFile(c) => paths.push(c.path.clone()),
            other => {
                return Err(crate::error::UsageError {
                    message: format!(
                        "--restore puts back what corrupt-file damaged; `{}` has nothing to \
                         restore",
                        other.kind()
                    ),
                    hint: Some(
                        "give only --fault corrupt-file:path=FILE (other keys are ignored)".into(),
                    ),
                }
                .into());
            }
        }
    }
    for path in paths {
        let saved = crate::corrupt::restore(&path)?;
        out!(
            "restored {} from the original saved at {} ({} bytes)",
            saved.path.display(),
            humantime::format_rfc3339_seconds(
                std::time::UNIX_EPOCH + Duration::from_secs(saved.saved_at)
            ),
            saved.size
        );
    }
    Ok(0)
}
