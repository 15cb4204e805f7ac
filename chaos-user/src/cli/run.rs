//! `chaos-user run`: a command in a fresh cgroup, with faults, until it exits.

use std::{
    io::ErrorKind,
    os::unix::process::ExitStatusExt as _,
    path::{Path, PathBuf},
    time::Duration,
};

use anyhow::Result;
use tokio::time::{MissedTickBehavior, interval, sleep_until};

use super::{RunArgs, report_leftovers, signals};
use crate::{
    cgroup::{self, Cgroup},
    error::UsageError,
    loader,
    report::{CommandReport, EndReason, Report},
    session::{Deadline, Session, TICK},
    undo::{Outcome, UndoLog},
};

pub(super) fn main(args: RunArgs) -> Result<i32> {
    let (faults, duration) = args.faults.parse()?;
    super::check_paths(&faults)?;
    if args
        .faults
        .json
        .as_deref()
        .is_some_and(|p| p.as_os_str() == "-")
    {
        return Err(UsageError {
            message: "--json - is not available under run: stdout belongs to the command".into(),
            hint: Some("give a file, for example --json report.json".into()),
        }
        .into());
    }
    let program = match crate::program::find(&args.command[0]) {
        Ok(p) => p,
        Err(status) => {
            let what = if status == 127 {
                "command not found"
            } else {
                "not executable"
            };
            note!("chaos-user: {}: {what}", args.command[0].to_string_lossy());
            return Ok(status);
        }
    };
    let mount = cgroup::mount_point()?;
    report_leftovers();
    loader::check_ready()?;

    let mut undo = UndoLog::new()?;
    let (target, entry) = cgroup::make_run_cgroup(&mount, &mut undo, "", false)?;
    let path = target.path.clone();
    let result = run_in(&args, duration, faults, &program, target, &mut undo);
    // Whatever path led here, nothing of the session's may stay behind but the cgroup.
    undo.undo_where(|e| e != &entry)?;
    let (status, abandon) = match result {
        Ok(ran) => ran,
        Err(e) => {
            undo.undo(&entry)?;
            return Err(e);
        }
    };
    if !abandon {
        match undo.undo(&entry)? {
            Outcome::Undone | Outcome::AlreadyGone | Outcome::Kept(_) => {}
            Outcome::Pending(why) => note!(
                "chaos-user: cgroup {} stays ({why}); `chaos-user recover` removes it later",
                path.display()
            ),
        }
    } else {
        note!(
            "chaos-user: left cgroup {} with processes in it; `chaos-user recover` removes it once \
             they are gone",
            path.display()
        );
    }
    Ok(status)
}

/// Runs the command in `target` with the faults; returns its exit status and whether the
/// cgroup was abandoned with processes still in it.
fn run_in(
    args: &RunArgs,
    duration: Option<Duration>,
    faults: Vec<crate::spec::FaultSpec>,
    program: &Path,
    target: Cgroup,
    undo: &mut UndoLog,
) -> Result<(i32, bool)> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let mut signals = signals::watch()?;
    let deadline = duration.map_or(Deadline::Lease, Deadline::At);
    let mut session = Some(Session::start(
        Some(target.clone()),
        faults,
        deadline,
        undo,
    )?);
    if let Some(s) = &session {
        note!(
            "chaos-user: injecting into cgroup {} ({}); starting {}",
            target.name,
            s.attachments().join(", "),
            program.display()
        );
    }

    // The command starts in its cgroup and in the session's v1 groups, if a limit made any.
    let v1 = session.as_ref().map(Session::v1_groups).unwrap_or_default();
    let v1: Vec<&Path> = v1.iter().map(PathBuf::as_path).collect();
    let groups = cgroup::JoinOnStart::new(&target.path, &v1)?;
    let mut command = tokio::process::Command::new(program);
    command.arg0(&args.command[0]).args(&args.command[1..]);
    // SAFETY: the hook runs in the child between fork and exec and only calls write(2), which
    // is async-signal-safe, on descriptors opened before the fork.
    unsafe {
        command.pre_exec(groups.hook());
    }

    runtime.block_on(async move {
        let mut child = match command.spawn() {
            Ok(child) => child,
            Err(e) => {
                let status = if e.kind() == ErrorKind::NotFound {
                    127
                } else {
                    126
                };
                // The file was found before: ENOENT now means its interpreter is missing.
                let why = if status == 127 {
                    " (is its #! interpreter missing?)"
                } else {
                    ""
                };
                note!("chaos-user: cannot run {}: {e}{why}", program.display());
                return Ok((status, false));
            }
        };
        drop(groups);
        let child_pid = child.id().map(|p| p as i32);
        let end = duration.map(|d| tokio::time::Instant::now() + d);
        let mut tick = interval(TICK);
        tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let mut stopped = None;
        let mut end_reason = EndReason::CommandExited;
        let status = loop {
            tokio::select! {
                status = child.wait() => break status?,
                _ = tick.tick() => {
                    if session.as_ref().is_some_and(|s| s.target().is_some_and(|t| !t.exists())) {
                        if let Some(s) = session.take() {
                            stopped = Some(s.stop(undo)?);
                            end_reason = EndReason::TargetGone;
                            note!(
                                "chaos-user: the command's cgroup was removed; faults removed, \
                                 the command runs on"
                            );
                        }
                    }
                    if let Some(s) = session.as_mut() {
                        s.tick(undo)?;
                    }
                }
                () = super::inject::wake_at(session.as_ref().and_then(|s| s.next_due())),
                    if session.as_ref().is_some_and(|s| s.next_due().is_some()) => {
                    if let Some(s) = session.as_mut() {
                        s.due()?;
                    }
                }
                () = sleep_until(end.unwrap_or_else(tokio::time::Instant::now)),
                    if end.is_some() && session.is_some() => {
                    if let Some(s) = session.take() {
                        stopped = Some(s.stop(undo)?);
                        end_reason = EndReason::Duration;
                        note!("chaos-user: --duration ended; faults removed, the command runs on");
                    }
                }
                Some(sig) = signals.recv() => {
                    // Ctrl-C from the terminal has reached the command already.
                    if !sig.from_terminal {
                        if let Some(pid) = child_pid {
                            // SAFETY: kill(2) on the PID of the child this process started and
                            // has not yet reaped.
                            unsafe { libc::kill(pid, sig.signal) };
                        }
                    }
                }
            }
        };
        let record = match (session.take(), stopped) {
            (Some(s), _) => s.stop(undo)?,
            (None, Some(record)) => record,
            (None, None) => unreachable!("a stopped session leaves its record"),
        };
        let exit_status = status
            .code()
            .unwrap_or_else(|| 128 + status.signal().unwrap_or(0));
        let mut report = Report::new("run", Some(target.clone()), record, end_reason);
        report.run = Some(CommandReport {
            argv: args
                .command
                .iter()
                .map(|a| a.to_string_lossy().into_owned())
                .collect(),
            exit_status,
            signal: status.signal(),
        });
        note!("{}", report.summary().trim_end());
        if let Some(path) = &args.faults.json {
            // The command's status matters more to the caller than the report.
            if let Err(e) = report.write_json(path) {
                note!("chaos-user: warning: {e:#}; the command's exit status stands");
            }
        }
        let abandon = wait_until_empty(&target, &mut signals).await?;
        Ok((exit_status, abandon))
    })
}

/// Waits for processes the command left in its cgroup; a signal abandons the wait.
async fn wait_until_empty(
    target: &Cgroup,
    signals: &mut tokio::sync::mpsc::UnboundedReceiver<signals::Received>,
) -> Result<bool> {
    let mut told = false;
    let mut poll = interval(Duration::from_millis(50));
    for round in 0u32.. {
        // A cgroup someone removed holds nothing.
        if !target.exists() || !target.populated()? {
            return Ok(false);
        }
        if round == 20 && !told {
            told = true;
            note!(
                "chaos-user: waiting for processes the command left in cgroup {} (Ctrl-C to leave \
                 them)",
                target.name
            );
        }
        tokio::select! {
            _ = poll.tick() => {}
            Some(_) = signals.recv() => return Ok(true),
        }
    }
    Ok(true)
}
