//! The egress classifier on an interface: a tcx link from kernel 6.6, and before it a clsact
//! qdisc with a netlink filter. A tcx link dies with the process; a filter and a qdisc do not,
//! so they are written to the undo log before they are made.

use std::process::Command;

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
    netns: Option<u64>,
) -> Result<()> {
    if mode == Mode::Tcx {
        // First, for the same reason as the filter priority below.
        let options = TcAttachOptions::TcxOrder(LinkOrder::first());
        prog.attach_with_options(interface, TcAttachType::Egress, options)?;
        return Ok(());
    }

    let qdisc = Entry::ClsactQdisc {
        interface: interface.to_string(),
        netns,
    };
    undo.push(qdisc.clone())?;
    match tc::qdisc_add_clsact(interface) {
        Ok(()) => {}
        // Someone else's clsact: use it, and leave it be. An `ingress` qdisc holds the same
        // place but has no egress hook: a filter there would never see an outgoing packet.
        Err(e) if tc_errno(&e) == Some(libc::EEXIST) => {
            let clsact = has_clsact(interface);
            // Another session's, holding only chaos-user's filters: shared, and the last
            // session out removes it. Anyone else's stays.
            if !matches!(clsact, Ok(true)) || !only_ours(interface)? {
                undo.forget(&qdisc)?;
            }
            anyhow::ensure!(
                clsact?,
                "{interface} has an `ingress` qdisc, which has no egress hook; egress loss needs \
                 a clsact qdisc there (`tc qdisc del dev {interface} ingress`, then \
                 `tc qdisc add dev {interface} clsact` and re-add your ingress filters)"
            );
        }
        Err(e) => {
            undo.forget(&qdisc)?;
            return Err(e).with_context(|| format!("add a clsact qdisc to {interface}"));
        }
    }

    let program_id = prog.info()?.id();
    for priority in FIRST_PRIORITY..FIRST_PRIORITY + PRIORITY_TRIES {
        let filter = Entry::TcFilter {
            interface: interface.to_string(),
            priority,
            handle: FILTER_HANDLE,
            program_id,
            netns,
        };
        undo.push(filter.clone())?;
        let options = TcAttachOptions::Netlink(NlOptions {
            priority,
            handle: TcHandle::from(FILTER_HANDLE),
            ..Default::default()
        });
        match prog.attach_with_options(interface, TcAttachType::Egress, options) {
            Ok(id) => {
                if netns.is_some() {
                    // aya would detach this filter by interface index in whatever namespace
                    // the process is in when it lets go; the undo log removes it in its own.
                    std::mem::forget(prog.take_link(id)?);
                }
                return Ok(());
            }
            Err(e) => {
                undo.forget(&filter)?;
                // aya keeps one filter per interface index, priority and handle, whatever the
                // namespace: another namespace's interface of the same index takes the next
                // priority, as one that the kernel says is taken does.
                let taken = program_errno(&e) == Some(libc::EEXIST)
                    || matches!(e, ProgramError::AlreadyAttached);
                if !taken {
                    return Err(e.into());
                }
            }
        }
    }
    anyhow::bail!("every tc priority from {FIRST_PRIORITY} on {interface} is taken")
}

/// Removes a filter that a dead session left, if it is still the one that runs its program.
pub fn undo_filter(
    interface: &str,
    priority: u16,
    handle: u32,
    program_id: u32,
) -> Result<Outcome> {
    // Without its qdisc (or its interface) the filter is gone too.
    if !has_clsact(interface)? {
        return Ok(Outcome::AlreadyGone);
    }
    let ours = filters(interface, "egress")?.iter().any(|f| {
        f.pref == priority
            && f.options.as_ref().is_some_and(|o| {
                o.handle.as_ref().and_then(parse_handle) == Some(handle)
                    && o.prog.as_ref().is_some_and(|p| p.id == program_id)
            })
    });
    if !ours {
        return Ok(Outcome::AlreadyGone);
    }
    let link = SchedClassifierLink::attached(
        interface,
        TcAttachType::Egress,
        priority,
        TcHandle::from(handle),
        None,
    )
    .with_context(|| format!("find interface {interface}"))?;
    match link.detach() {
        Ok(()) => Ok(Outcome::Undone),
        Err(e) if program_errno(&e) == Some(libc::ENOENT) => Ok(Outcome::AlreadyGone),
        Err(e) => Err(e).with_context(|| format!("remove tc filter {priority} from {interface}")),
    }
}

/// One filter as `tc -json filter show` prints it.
#[derive(serde::Deserialize)]
struct ShownFilter {
    pref: u16,
    options: Option<ShownOptions>,
}

#[derive(serde::Deserialize)]
struct ShownOptions {
    /// `"0x1"` from some versions of iproute2, `1` from others.
    handle: Option<serde_json::Value>,
    prog: Option<ShownProgram>,
}

#[derive(serde::Deserialize)]
struct ShownProgram {
    id: u32,
    name: Option<String>,
}

/// Whether the clsact qdisc of `interface` holds filters, all of them chaos-user's (another
/// session's egress program at its handle).
fn only_ours(interface: &str) -> Result<bool> {
    let mut all = filters(interface, "egress")?;
    all.extend(filters(interface, "ingress")?);
    // `tc` lists each filter's priority once without options, then each handle with them.
    let handles: Vec<&ShownOptions> = all.iter().filter_map(|f| f.options.as_ref()).collect();
    Ok(!handles.is_empty()
        && handles.iter().all(|o| {
            o.handle.as_ref().and_then(parse_handle) == Some(FILTER_HANDLE)
                && o.prog
                    .as_ref()
                    .and_then(|p| p.name.as_deref())
                    .is_some_and(|n| n == "chaos_egress")
        }))
}

fn parse_handle(value: &serde_json::Value) -> Option<u32> {
    match value {
        serde_json::Value::String(text) => {
            u32::from_str_radix(text.trim_start_matches("0x"), 16).ok()
        }
        other => other.as_u64().and_then(|n| u32::try_from(n).ok()),
    }
}

/// The filters of one direction of an interface's clsact qdisc (through iproute2's `tc`: aya
/// cannot list them).
fn filters(interface: &str, direction: &str) -> Result<Vec<ShownFilter>> {
    let out = Command::new("tc")
        .args(["-json", "filter", "show", "dev", interface, direction])
        .output()
        .context("run `tc` (iproute2) to list filters")?;
    anyhow::ensure!(
        out.status.success(),
        "tc filter show dev {interface} {direction}: {}",
        String::from_utf8_lossy(&out.stderr).trim()
    );
    let text = String::from_utf8_lossy(&out.stdout);
    if text.trim().is_empty() {
        return Ok(Vec::new());
    }
    serde_json::from_str(&text).context("parse the output of `tc -json filter show`")
}

/// Removes a clsact qdisc that a session created (with iproute2's `tc`: aya has no call for it).
/// Filters of others (another session's, or added since) keep it: it is theirs now.
pub fn undo_qdisc(interface: &str) -> Result<Outcome> {
    if !has_clsact(interface)? {
        return Ok(Outcome::AlreadyGone);
    }
    if !filters(interface, "egress")?.is_empty() || !filters(interface, "ingress")?.is_empty() {
        return Ok(Outcome::Kept("other filters use it now".into()));
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

/// Fails, naming the cause, unless this kernel has the `fq` qdisc that `delay` needs.
pub fn check_fq() -> Result<(), FqMissing> {
    probe_qdisc("fq").map_err(FqMissing)
}

/// The kernel lacks `fq`; the text is what `tc` said.
#[derive(Debug, thiserror::Error)]
#[error("delay needs the fq qdisc (CONFIG_NET_SCH_FQ), which this kernel refused: {0}")]
pub struct FqMissing(String);

impl crate::error::Classify for FqMissing {
    fn class(&self) -> crate::error::Class {
        crate::error::Class::Environment
    }

    fn hint(&self) -> Option<String> {
        Some("load the module (`modprobe sch_fq`) or use a kernel built with it".into())
    }
}

/// Adds the qdisc to `lo` of a network namespace that lives as long as one `tc` command, to
/// learn whether this kernel has it without touching any interface of the host.
pub fn probe_qdisc(kind: &str) -> Result<(), String> {
    use std::os::unix::process::CommandExt as _;
    let mut tc = Command::new("tc");
    tc.args(["qdisc", "add", "dev", "lo", "root", kind]);
    // SAFETY: unshare(2) between fork and exec touches only the child's own namespaces.
    unsafe {
        tc.pre_exec(|| {
            if libc::unshare(libc::CLONE_NEWNET) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    match tc.output() {
        Ok(out) if out.status.success() => Ok(()),
        Ok(out) => Err(String::from_utf8_lossy(&out.stderr).trim().to_string()),
        Err(e) => Err(format!(
            "cannot run `tc` (iproute2) in a new network namespace: {e}"
        )),
    }
}

/// The major handle of this session's `fq` qdiscs: one per process, so that a qdisc is only
/// ever removed by the session (or the recovery of the session) that made it.
fn fq_handle() -> u16 {
    0xc000 | (std::process::id() & 0x0fff) as u16
}

/// One qdisc as `tc -json qdisc show` prints it.
#[derive(serde::Deserialize)]
struct ShownQdisc {
    kind: String,
    handle: String,
}

/// The root qdisc of `interface`, or None when the interface is gone.
fn root_qdisc(interface: &str) -> Result<Option<ShownQdisc>> {
    let out = Command::new("tc")
        .args(["-json", "qdisc", "show", "dev", interface, "root"])
        .output()
        .context("run `tc` (iproute2) to read a root qdisc")?;
    if !out.status.success() {
        return Ok(None);
    }
    let shown: Vec<ShownQdisc> =
        serde_json::from_slice(&out.stdout).context("parse the output of `tc -json qdisc show`")?;
    Ok(shown.into_iter().next())
}

/// Puts an `fq` root qdisc on every interface that lacks this session's, deep enough for
/// `max_delay` at high rates; each goes into `undo` first. A root qdisc that someone set up
/// (anything but the kernel's default) is refused rather than replaced.
pub fn install_fq_everywhere(
    undo: &mut UndoLog,
    max_delay: std::time::Duration,
    netns: Option<u64>,
) -> Result<()> {
    let handle = fq_handle();
    let ours = format!("{handle:x}:");
    for interface in crate::loader::interfaces() {
        let name = &interface.name;
        let Some(root) = root_qdisc(name)? else {
            continue;
        };
        if root.kind == "fq" && root.handle == ours {
            continue;
        }
        let sessions = u16::from_str_radix(root.handle.trim_end_matches(':'), 16)
            .is_ok_and(|major| major & 0xf000 == 0xc000);
        anyhow::ensure!(
            !(root.kind == "fq" && sessions),
            "another chaos-user session delays packets on {name} (its fq qdisc {}): one session \
             at a time may use delay; wait for it to end, or add this delay to that session",
            root.handle
        );
        anyhow::ensure!(
            root.handle == "0:",
            "{name} has a root qdisc `{} {}` that someone set up; delay would have to replace \
             it with fq. Remove it (`tc qdisc del dev {name} root`) or leave delay out",
            root.kind,
            root.handle
        );
        let entry = Entry::FqQdisc {
            interface: name.clone(),
            handle,
            netns,
        };
        undo.push(entry.clone())?;
        // A horizon past the longest delay, and room for a full window of packets per flow.
        let horizon = format!("{}s", max_delay.as_secs() + 10);
        let out = Command::new("tc")
            .args([
                "qdisc", "replace", "dev", name, "root", "handle", &ours, "fq",
            ])
            .args([
                "limit",
                "1000000",
                "flow_limit",
                "100000",
                "horizon",
                &horizon,
            ])
            .arg("horizon_cap")
            .output()
            .context("run `tc` (iproute2) to add an fq qdisc")?;
        if !out.status.success() {
            undo.forget(&entry)?;
            // The interface went away between listing and adding.
            if root_qdisc(name)?.is_none() {
                continue;
            }
            anyhow::bail!(
                "tc qdisc replace dev {name} root fq: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
    }
    Ok(())
}

/// Removes an `fq` root qdisc a session made, if it is still there; the interface gets its
/// default qdisc back.
pub fn undo_fq(interface: &str, handle: u16) -> Result<Outcome> {
    let Some(root) = root_qdisc(interface)? else {
        return Ok(Outcome::AlreadyGone);
    };
    if root.kind != "fq" || root.handle != format!("{handle:x}:") {
        return Ok(Outcome::AlreadyGone);
    }
    let out = Command::new("tc")
        .args(["qdisc", "del", "dev", interface, "root"])
        .output()
        .context("run `tc` (iproute2)")?;
    anyhow::ensure!(
        out.status.success(),
        "tc qdisc del dev {interface} root: {}",
        String::from_utf8_lossy(&out.stderr).trim()
    );
    Ok(Outcome::Undone)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_tc_json_of_either_iproute2() {
        let text = r#"[{"protocol":"all","pref":1,"kind":"bpf","chain":0},
            {"protocol":"all","pref":1,"kind":"bpf","chain":0,"options":{"handle":"0x1",
             "bpf_name":"chaos_egress","prog":{"id":5,"name":"chaos_egress"}}},
            {"protocol":"all","pref":7,"kind":"matchall","chain":0,"options":{"handle":1}}]"#;
        let shown: Vec<ShownFilter> = serde_json::from_str(text).unwrap();
        let handles: Vec<Option<u32>> = shown
            .iter()
            .map(|f| {
                f.options
                    .as_ref()
                    .and_then(|o| o.handle.as_ref())
                    .and_then(parse_handle)
            })
            .collect();
        assert_eq!(handles, [None, Some(1), Some(1)]);
        assert_eq!(
            shown[1].options.as_ref().unwrap().prog.as_ref().unwrap().id,
            5
        );
    }
}
