//! The egress classifier on an interface: a tcx link from kernel 6.6, and before it a clsact
//! qdisc with a netlink filter. A tcx link dies with the process; a filter and a qdisc do not,
//! so they are written to the undo log before they are made.

use std::{io, process::Command};

use anyhow::{Context, Result};
use aya::programs::{
    LinkOrder, ProgramError, SchedClassifier, TcAttachType,
    links::Link as _,
    tc::{self, NlOptions, SchedClassifierLink, TcAttachOptions, TcError, TcHandle},
};
use chaos_common::{VERDICT_REDIRECT_NOWHERE, VERDICT_STOLEN};

use crate::undo::{Entry, Outcome, UndoLog};

/// First tc priority tried for a filter; later ones when another holds it. Filters run in
/// priority order and one that returns a verdict ends the walk, so a fault goes first: ours
/// returns "no verdict" for every packet it does not drop, and the others still run.
const FIRST_PRIORITY: u16 = 1;
const PRIORITY_TRIES: u16 = 64;
const FILTER_HANDLE: u32 = 1;

/// How the egress program is attached on this kernel.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// tcx links (kernel 6.6 and later).
    Tcx,
    /// A clsact qdisc and a direct-action filter over netlink (older kernels).
    Clsact,
}

impl Mode {
    /// tcx where the kernel has it.
    pub fn detect() -> Mode {
        if crate::loader::has_tcx() {
            Mode::Tcx
        } else {
            Mode::Clsact
        }
    }

    /// How the program makes a packet vanish silently in this mode (see `chaos-common`).
    pub fn verdict(self) -> u32 {
        match self {
            Mode::Tcx => VERDICT_REDIRECT_NOWHERE,
            Mode::Clsact => VERDICT_STOLEN,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Mode::Tcx => "tcx",
            Mode::Clsact => "clsact",
        }
    }
}

/// Attaches `prog` at egress of `interface`.
pub fn attach(
    prog: &mut SchedClassifier,
    interface: &str,
    mode: Mode,
    undo: &mut UndoLog,
) -> Result<()> {
    if mode == Mode::Tcx {
        // First, for the same reason as the filter priority below.
        let options = TcAttachOptions::TcxOrder(LinkOrder::first());
        prog.attach_with_options(interface, TcAttachType::Egress, options)?;
        return Ok(());
    }

    let qdisc = Entry::ClsactQdisc {
        interface: interface.to_string(),
    };
    undo.push(qdisc.clone())?;
    match tc::qdisc_add_clsact(interface) {
        Ok(()) => {}
        // Someone else's clsact: use it, and leave it be.
        Err(e) if tc_errno(&e) == Some(libc::EEXIST) => undo.forget(&qdisc)?,
        Err(e) => {
            undo.forget(&qdisc)?;
            return Err(e).with_context(|| format!("add a clsact qdisc to {interface}"));
        }
    }

    for priority in FIRST_PRIORITY..FIRST_PRIORITY + PRIORITY_TRIES {
        let filter = Entry::TcFilter {
            interface: interface.to_string(),
            priority,
            handle: FILTER_HANDLE,
        };
        undo.push(filter.clone())?;
        let options = TcAttachOptions::Netlink(NlOptions {
            priority,
            handle: TcHandle::from(FILTER_HANDLE),
            ..Default::default()
        });
        match prog.attach_with_options(interface, TcAttachType::Egress, options) {
            Ok(_) => return Ok(()),
            Err(e) => {
                undo.forget(&filter)?;
                if program_errno(&e) != Some(libc::EEXIST) {
                    return Err(e.into());
                }
            }
        }
    }
    anyhow::bail!("every tc priority from {FIRST_PRIORITY} on {interface} is taken")
}

/// Removes a filter that a dead session left.
pub fn undo_filter(interface: &str, priority: u16, handle: u32) -> Result<Outcome> {
    // Without its qdisc (or its interface) the filter is gone too.
    if !has_clsact(interface)? {
        return Ok(Outcome::AlreadyGone);
    }
    let link = match SchedClassifierLink::attached(
        interface,
        TcAttachType::Egress,
        priority,
        TcHandle::from(handle),
        None,
    ) {
        Ok(link) => link,
        // The interface is gone, and its filters with it.
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Outcome::AlreadyGone),
        Err(e) => return Err(e).with_context(|| format!("find interface {interface}")),
    };
    match link.detach() {
        Ok(()) => Ok(Outcome::Undone),
        Err(e) if program_errno(&e) == Some(libc::ENOENT) => Ok(Outcome::AlreadyGone),
        Err(e) => Err(e).with_context(|| format!("remove tc filter {priority} from {interface}")),
    }
}

/// Removes a clsact qdisc that a session created (with iproute2's `tc`: aya has no call for it).
pub fn undo_qdisc(interface: &str) -> Result<Outcome> {
    if !has_clsact(interface)? {
        return Ok(Outcome::AlreadyGone);
    }
    let status = Command::new("tc")
        .args(["qdisc", "del", "dev", interface, "clsact"])
        .status()
        .context("run `tc` (iproute2)")?;
    anyhow::ensure!(
        status.success(),
        "tc qdisc del dev {interface} clsact: {status}"
    );
    Ok(Outcome::Undone)
}

/// Whether `interface` exists and has a clsact qdisc.
fn has_clsact(interface: &str) -> Result<bool> {
    let out = Command::new("tc")
        .args(["qdisc", "show", "dev", interface])
        .output()
        .context("run `tc` (iproute2) to look for a clsact qdisc")?;
    // A failure here means no such device, and so no qdisc.
    Ok(out.status.success() && String::from_utf8_lossy(&out.stdout).contains("qdisc clsact"))
}

fn tc_errno(e: &TcError) -> Option<i32> {
    match e {
        TcError::NetlinkError(n) => n.raw_os_error(),
        TcError::IoError(io) => io.raw_os_error(),
        _ => None,
    }
}

fn program_errno(e: &ProgramError) -> Option<i32> {
    match e {
        ProgramError::TcError(tc) => tc_errno(tc),
        ProgramError::NetlinkError(n) => n.raw_os_error(),
        ProgramError::IOError(io) => io.raw_os_error(),
        _ => None,
    }
}
