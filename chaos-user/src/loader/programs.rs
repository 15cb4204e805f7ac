//! One session's programs: loaded, given their rules, attached, and read back.

use std::{fs, os::fd::AsFd as _};

use anyhow::Context as _;

use aya::{
    Ebpf,
    maps::{Array, HashMap, Map, MapData, PerCpuArray, PerCpuHashMap},
    programs::{
        CgroupAttachMode, CgroupDevice, CgroupSkb, CgroupSkbAttachType, CgroupSock, CgroupSockAddr,
        Lsm, ProgramError, RawTracePoint, SchedClassifier, SockOps, Xdp, XdpMode,
    },
};
use chaos_common::{
    COUNTER_EGRESS, COUNTER_INGRESS, ErrorKey, KernelOffsets, MAX_CALL_RULES, MAX_CRASH_RULES,
    MAX_DEVICE_RULES, MAX_PACKET_RULES, MAX_SOCK_RULES, OriginalDst, PathKey, PeerKey,
    RuleCounters, Target, op,
};

use crate::{
    cgroup::Cgroup,
    netns::Netns,
    plan::Plan,
    tc::{self, Mode},
    undo::UndoLog,
};

use super::{
    hooks::{self, Hook, HookKind, ModifyReturn},
    *,
};

/// The kernel programs of one session, loaded; attachments live as long as this value.
pub struct Programs {
    ebpf: Ebpf,
    mode: Mode,
    needs: Needs,
    /// By network namespace (None: the injector's own).
    egress_interfaces: Vec<(Option<u64>, Interface)>,
    cgroup_attached: Vec<&'static str>,
    /// The interface index and the link of `xdp-drop`.
    xdp_attached: Option<(u32, aya::programs::xdp::XdpLinkId)>,
    tracepoints: Vec<&'static str>,
    /// The LSM hooks, and how they run here.
    calls: Option<CallHooks>,
    /// What the path walk reads, when a rule has `path=`.
    offsets: Option<KernelOffsets>,
}

/// The loaded LSM hook programs of a session.
struct CallHooks {
    kind: HookKind,
    hooks: Vec<&'static Hook>,
    /// Modify-return programs, which chaos-user loads and links itself.
    modify_return: Vec<ModifyReturn>,
    /// `lsm` programs attached so far, through aya.
    lsm_attached: Vec<&'static str>,
}

/// The responder's view of `DNS_PEERS`: where each redirected client meant to send its query.
pub type DnsPeers = HashMap<MapData, PeerKey, OriginalDst>;

impl Programs {
    /// Parses the object and loads (verifies) the programs `needs` names, attaching nothing.
    pub fn load(needs: &Needs) -> Result<Programs, LoadError> {
        check_ready()?;
        if needs.xdp.is_some() {
            require_kernel(
                "xdp-drop (bpf_xdp_load_bytes and XDP links)",
                (5, 18),
                "5.18",
            )?;
        }
        if needs.connect {
            require_kernel("connect and dns (bpf_set_retval)", (5, 18), "5.18")?;
        }
        let mut ebpf = super::open_object()?;
        let mut needs = needs.clone();
        // `open` reads `f_mode` too, to tell an open that created its file.
        let offsets = if needs.paths || needs.calls & op::OPEN != 0 {
            Some(hooks::kernel_offsets(&hooks::kernel_btf()?)?)
        } else {
            None
        };
        let calls = if needs.calls != 0 || needs.fd_limit {
            let with_files = needs.calls | if needs.fd_limit { op::FILE_ALLOC } else { 0 };
            match load_calls(&mut ebpf, with_files) {
                Ok(calls) => Some(calls),
                // Without trampolines, fd-limit still fails socket creation.
                Err(e) if needs.calls == 0 => {
                    log::info!("fd-limit covers sockets only: {e}");
                    needs.sock_create = true;
                    None
                }
                Err(e) => return Err(e),
            }
        } else {
            None
        };
        for name in needs.programs() {
            let refused = |source| LoadError::Refused {
                program: name,
                source,
            };
            match ebpf.program_mut(name).ok_or(LoadError::Missing(name))? {
                aya::programs::Program::SchedClassifier(p) => p.load().map_err(refused)?,
                aya::programs::Program::CgroupSkb(p) => p.load().map_err(refused)?,
                aya::programs::Program::CgroupSockAddr(p) => p.load().map_err(refused)?,
                aya::programs::Program::Xdp(p) => p.load().map_err(refused)?,
                aya::programs::Program::SockOps(p) => p.load().map_err(refused)?,
                aya::programs::Program::CgroupDevice(p) => p.load().map_err(refused)?,
                aya::programs::Program::CgroupSock(p) => p.load().map_err(refused)?,
                aya::programs::Program::RawTracePoint(p) => p.load().map_err(refused)?,
                _ => return Err(LoadError::Missing(name)),
            }
        }
        Ok(Programs {
            ebpf,
            mode: Mode::detect(),
            needs,
            egress_interfaces: Vec::new(),
            cgroup_attached: Vec::new(),
            xdp_attached: None,
            tracepoints: Vec::new(),
            calls,
            offsets,
        })
    }

    /// The programs this session loads, as this kernel decided (`fd-limit` may fall back to
    /// the socket hook).
    pub fn needs(&self) -> &Needs {
        &self.needs
    }

    /// The loaded object, for test runs (`bench-decide`).
    pub(super) fn ebpf(&self) -> &Ebpf {
        &self.ebpf
    }

    /// Where the LSM hook programs go (attached or not yet).
    pub fn hook_attachments(&self) -> Vec<String> {
        let Some(calls) = &self.calls else {
            return Vec::new();
        };
        calls
            .hooks
            .iter()
            .map(|h| match calls.kind {
                HookKind::Lsm => format!("lsm {}", h.lsm),
                HookKind::ModifyReturn => format!("fmod_ret {}", h.function),
            })
            .collect()
    }

    /// How the LSM hooks run here, if the plan has any and this kernel runs them.
    pub fn hook_kind(&self) -> Option<HookKind> {
        self.calls.as_ref().map(|c| c.kind)
    }

    /// Whether `fd-limit` fails every new file (else sockets only).
    pub fn fd_limit_covers_files(&self) -> bool {
        self.calls
            .as_ref()
            .is_some_and(|c| c.hooks.iter().any(|h| h.ops & op::FILE_ALLOC != 0))
    }

    /// Writes the rules and then the target record that makes them live.
    pub fn configure(&mut self, target: Option<&Cgroup>, plan: &Plan) -> Result<(), LoadError> {
        for (family, max, given) in [
            ("packet", MAX_PACKET_RULES, plan.packet.len()),
            ("connect and dns", MAX_SOCK_RULES, plan.sock.len()),
            ("device", MAX_DEVICE_RULES, plan.device.len()),
            ("crash", MAX_CRASH_RULES, plan.crash.len()),
            (
                "file, nospace, fail and fd-limit",
                MAX_CALL_RULES,
                plan.call.len(),
            ),
        ] {
            if given > max as usize {
                return Err(LoadError::TooManyRules { family, max, given });
            }
        }
        self.write_rules(plan)?;
        if let Some(offsets) = self.offsets {
            self.write("OFFSETS", &[offsets])?;
            let mut keys: Vec<(PathKey, u32)> = Vec::new();
            for (i, path) in plan.call_paths.iter().enumerate() {
                let key = hooks::path_key(path).map_err(|source| LoadError::Path {
                    path: path.display().to_string(),
                    source,
                })?;
                match keys.iter_mut().find(|(k, _)| *k == key) {
                    Some((_, bits)) => *bits |= 1 << i,
                    None => keys.push((key, 1 << i)),
                }
            }
            let name = "PATHS";
            let map = self.ebpf.map_mut(name).ok_or(LoadError::Missing(name))?;
            let mut paths: HashMap<_, PathKey, u32> =
                HashMap::try_from(map).map_err(map_error("open", name))?;
            for (key, bits) in keys {
                paths
                    .insert(key, bits, 0)
                    .map_err(map_error("write", name))?;
            }
        }
        let record = Target {
            cgroup_id: target.map_or(0, |t| t.id),
            level: target.map_or(0, |t| t.level),
            egress_verdict: self.mode.verdict(),
            packet_rules: plan.packet.len() as u32,
            sock_rules: plan.sock.len() as u32,
            device_rules: plan.device.len() as u32,
            crash_rules: plan.crash.len() as u32,
            call_rules: plan.call.len() as u32,
            _pad: 0,
        };
        self.write("TARGET", &[record])
    }

    /// Makes every rule inert at once (the target record says none is live), so that counters
    /// read afterwards are final.
    pub fn disable(&mut self) -> Result<(), LoadError> {
        let mut array = self.array::<Target>("TARGET")?;
        let mut record = array.get(&0, 0).map_err(map_error("read", "TARGET"))?;
        record.packet_rules = 0;
        record.sock_rules = 0;
        record.device_rules = 0;
        record.crash_rules = 0;
        record.call_rules = 0;
        array
            .set(0, record, 0)
            .map_err(map_error("write", "TARGET"))
    }

    /// Rewrites the rule records (to renew their deadlines).
    pub fn write_rules(&mut self, plan: &Plan) -> Result<(), LoadError> {
        self.write("PACKET_RULES", &plan.packet)?;
        self.write("SOCK_RULES", &plan.sock)?;
        self.write("DEVICE_RULES", &plan.device)?;
        self.write("CRASH_RULES", &plan.crash)?;
        self.write("CALL_RULES", &plan.call)
    }

    /// Writes `values` at the start of an array map.
    fn write<T: aya::Pod>(&mut self, name: &'static str, values: &[T]) -> Result<(), LoadError> {
        let mut array = self.array::<T>(name)?;
        for (i, value) in values.iter().enumerate() {
            array
                .set(i as u32, *value, 0)
                .map_err(map_error("write", name))?;
        }
        Ok(())
    }

    fn array<T: aya::Pod>(
        &mut self,
        name: &'static str,
    ) -> Result<Array<&mut aya::maps::MapData, T>, LoadError> {
        let map = self.ebpf.map_mut(name).ok_or(LoadError::Missing(name))?;
        Array::try_from(map).map_err(map_error("open", name))
    }

    /// Takes `DNS_PEERS` out of the object, for the DNS responder to read.
    pub fn take_dns_peers(&mut self) -> Result<DnsPeers, LoadError> {
        let name = "DNS_PEERS";
        let map: Map = self.ebpf.take_map(name).ok_or(LoadError::Missing(name))?;
        HashMap::try_from(map).map_err(map_error("open", name))
    }

    /// Attaches the tc egress program to every interface of the injector's network namespace,
    /// or of `netns`, not yet attached; returns the new ones. Without tcx, the qdiscs and
    /// filters go into `undo` before they are made.
    pub fn attach_egress_everywhere(
        &mut self,
        undo: &mut UndoLog,
        netns: Option<&Netns>,
    ) -> anyhow::Result<Vec<String>> {
        if !self.needs.tc_egress {
            return Ok(Vec::new());
        }
        match netns {
            None => self.attach_egress_here(undo, None),
            Some(ns) => ns
                .run(|| self.attach_egress_here(undo, Some(ns.inode)))
                .with_context(|| format!("enter network namespace {}", ns.inode))?,
        }
    }

    fn attach_egress_here(
        &mut self,
        undo: &mut UndoLog,
        netns: Option<u64>,
    ) -> anyhow::Result<Vec<String>> {
        let mut added = Vec::new();
        for interface in interfaces() {
            // Known by index too: an interface deleted and made again under the same name is a
            // new one, without the program.
            let key = (netns, interface);
            if self.egress_interfaces.contains(&key) {
                continue;
            }
            let (_, interface) = key;
            let name = &interface.name;
            let prog: &mut SchedClassifier = program(&mut self.ebpf, "chaos_egress")?;
            match tc::attach(prog, name, self.mode, undo, netns) {
                Ok(()) => {}
                // The interface went away between listing and attaching.
                Err(_) if !interfaces().contains(&interface) => continue,
                Err(e) => {
                    let mode = self.mode.name();
                    return Err(e).with_context(|| {
                        format!("attach `chaos_egress` to {mode} egress of {name}")
                    });
                }
            }
            self.egress_interfaces
                .retain(|(ns, i)| *ns != netns || i.name != interface.name);
            added.push(match netns {
                None => interface.name.clone(),
                Some(inode) => format!("{} (network namespace {inode})", interface.name),
            });
            self.egress_interfaces.push((netns, interface));
        }
        Ok(added)
    }

    /// Attaches the cgroup programs the plan needs to the target cgroup.
    pub fn attach_cgroup(&mut self, target: &Cgroup) -> Result<(), LoadError> {
        let mut names = Vec::new();
        if self.needs.cg_ingress {
            names.push(("chaos_ingress", Some(CgroupSkbAttachType::Ingress)));
        }
        if self.needs.cg_egress {
            names.push(("chaos_cg_egress", Some(CgroupSkbAttachType::Egress)));
        }
        if self.needs.sock_ops {
            names.push(("chaos_sock_ops", None));
        }
        if self.needs.device {
            names.push(("chaos_device", None));
        }
        if self.needs.sock_create {
            names.push(("chaos_sock_create", None));
        }
        if self.needs.connect {
            names.extend(CONNECT_PROGRAMS.iter().map(|n| (*n, None)));
        }
        if self.needs.dns {
            names.extend(DNS_PROGRAMS.iter().map(|n| (*n, None)));
        }
        for (name, skb) in names {
            let attach_err = |source| LoadError::Attach {
                program: name,
                to: format!("cgroup {}", target.name),
                source,
            };
            let dir =
                fs::File::open(&target.path).map_err(|e| attach_err(ProgramError::IOError(e)))?;
            match skb {
                Some(kind) => {
                    let prog: &mut CgroupSkb = program(&mut self.ebpf, name)?;
                    prog.attach(dir.as_fd(), kind, CgroupAttachMode::Single)
                        .map_err(attach_err)?;
                }
                None if name == "chaos_sock_create" => {
                    let prog: &mut CgroupSock = program(&mut self.ebpf, name)?;
                    prog.attach(dir.as_fd(), CgroupAttachMode::Single)
                        .map_err(attach_err)?;
                }
                None if name == "chaos_device" => {
                    let prog: &mut CgroupDevice = program(&mut self.ebpf, name)?;
                    prog.attach(dir.as_fd(), CgroupAttachMode::Single)
                        .map_err(attach_err)?;
                }
                None if name == "chaos_sock_ops" => {
                    let prog: &mut SockOps = program(&mut self.ebpf, name)?;
                    prog.attach(dir.as_fd(), CgroupAttachMode::Single)
                        .map_err(attach_err)?;
                }
                None => {
                    let prog: &mut CgroupSockAddr = program(&mut self.ebpf, name)?;
                    prog.attach(dir.as_fd(), CgroupAttachMode::Single)
                        .map_err(attach_err)?;
                }
            }
            self.cgroup_attached.push(name);
        }
        Ok(())
    }

    /// Attaches the syscall tracepoints the plan needs; they filter by cgroup themselves.
    pub fn attach_tracepoints(&mut self) -> Result<(), LoadError> {
        for (wanted, name, tracepoint) in [
            (self.needs.sys_enter, "chaos_sys_enter", "sys_enter"),
            (self.needs.sys_exit, "chaos_sys_exit", "sys_exit"),
        ] {
            if !wanted {
                continue;
            }
            let prog: &mut RawTracePoint = program(&mut self.ebpf, name)?;
            prog.attach(tracepoint)
                .map_err(|source| LoadError::Attach {
                    program: name,
                    to: format!("raw tracepoint {tracepoint}"),
                    source,
                })?;
            self.tracepoints.push(tracepoint);
        }
        Ok(())
    }

    /// Attaches the LSM hook programs (`lsm` through aya, modify-return by hand). They filter
    /// by cgroup themselves.
    pub fn attach_hooks(&mut self) -> Result<(), LoadError> {
        let Some(calls) = self.calls.as_mut() else {
            return Ok(());
        };
        for program in &mut calls.modify_return {
            program.attach()?;
        }
        if calls.kind == HookKind::Lsm {
            for hook in calls.hooks.clone() {
                if calls.lsm_attached.contains(&hook.lsm_program) {
                    continue;
                }
                let prog: &mut Lsm = program(&mut self.ebpf, hook.lsm_program)?;
                prog.attach().map_err(|source| LoadError::Attach {
                    program: hook.lsm_program,
                    to: format!("LSM hook {}", hook.lsm),
                    source,
                })?;
                calls.lsm_attached.push(hook.lsm_program);
            }
        }
        Ok(())
    }

    /// Counters of call rule `rule`, summed over CPUs.
    pub fn call_counters(&self, rule: u32) -> Result<RuleCounters, LoadError> {
        self.sum("CALL_COUNTERS", rule)
    }

    /// The target's failed calls so far: (syscall, errno, count), summed over CPUs.
    pub fn syscall_errors(&self) -> Result<Vec<(u32, u32, u64)>, LoadError> {
        if !self.needs.sys_exit {
            return Ok(Vec::new());
        }
        let name = "SYSCALL_ERRORS";
        let map = self.ebpf.map(name).ok_or(LoadError::Missing(name))?;
        let errors: PerCpuHashMap<_, ErrorKey, u64> =
            PerCpuHashMap::try_from(map).map_err(map_error("open", name))?;
        let mut out = Vec::new();
        for entry in errors.iter() {
            let (key, counts) = entry.map_err(map_error("read", name))?;
            out.push((key.syscall, key.errno, counts.iter().sum::<u64>()));
        }
        out.sort_by(|a, b| b.2.cmp(&a.2).then(a.0.cmp(&b.0)));
        Ok(out)
    }

    /// Counters of crash rule `rule`, summed over CPUs.
    pub fn crash_counters(&self, rule: u32) -> Result<RuleCounters, LoadError> {
        self.sum("CRASH_COUNTERS", rule)
    }

    /// Attaches the XDP program to the interface `xdp-drop` names, and again whenever that
    /// interface is made anew (a new index). Returns what changed, for the log.
    pub fn attach_xdp(&mut self) -> Result<Option<String>, LoadError> {
        let Some(dev) = self.needs.xdp.clone() else {
            return Ok(None);
        };
        let index = interfaces()
            .into_iter()
            .find(|i| i.name == dev)
            .map(|i| i.index);
        let attached = self.xdp_attached.as_ref().map(|(index, _)| *index);
        if index == attached {
            return Ok(None);
        }
        let prog: &mut Xdp = program(&mut self.ebpf, "chaos_xdp")?;
        if let Some((_, link)) = self.xdp_attached.take() {
            // The old interface is gone, and its link with it; what is left to free is ours.
            if let Err(e) = prog.detach(link) {
                log::debug!("detach chaos_xdp from the old {dev}: {e}");
            }
        }
        let Some(index) = index else {
            return Ok(Some(format!(
                "interface {dev} is gone; xdp-drop waits for it"
            )));
        };
        let link = prog
            .attach_to_if_index(index, XdpMode::default())
            .map_err(|source| {
                let busy = std::error::Error::source(&source)
                    .and_then(|e| e.downcast_ref::<std::io::Error>())
                    .is_some_and(|e| e.raw_os_error() == Some(libc::EBUSY));
                if busy {
                    LoadError::XdpBusy { dev: dev.clone() }
                } else {
                    LoadError::Attach {
                        program: "chaos_xdp",
                        to: format!("interface {dev}"),
                        source,
                    }
                }
            })?;
        let change = attached.map(|_| format!("xdp-drop attached to {dev} again (a new index)"));
        self.xdp_attached = Some((index, link));
        Ok(change)
    }

    /// Where the programs are attached, for the report.
    pub fn attachments(&self) -> Vec<String> {
        let mut out: Vec<String> = self
            .egress_interfaces
            .iter()
            .map(|(ns, i)| match ns {
                None => format!("{} egress {}", self.mode.name(), i.name),
                Some(inode) => format!(
                    "{} egress {} in network namespace {inode}",
                    self.mode.name(),
                    i.name
                ),
            })
            .collect();
        for name in &self.cgroup_attached {
            let hook = PROGRAMS
                .iter()
                .find(|(n, _)| n == name)
                .map_or(*name, |(_, hook)| *hook);
            out.push(hook.to_string());
        }
        if let (Some(dev), Some(_)) = (&self.needs.xdp, &self.xdp_attached) {
            out.push(format!("xdp {dev}"));
        }
        for tracepoint in &self.tracepoints {
            out.push(format!("raw tracepoint {tracepoint}"));
        }
        if let Some(calls) = &self.calls {
            for program in &calls.modify_return {
                out.push(format!("fmod_ret {}", program.hook.function));
            }
            for name in &calls.lsm_attached {
                if let Some(hook) = calls.hooks.iter().find(|h| h.lsm_program == *name) {
                    out.push(format!("lsm {}", hook.lsm));
                }
            }
        }
        out
    }

    /// Counters of packet rule `rule`, summed over CPUs: (egress, ingress). XDP counts as
    /// ingress.
    pub fn packet_counters(&self, rule: u32) -> Result<(RuleCounters, RuleCounters), LoadError> {
        Ok((
            self.sum("PACKET_COUNTERS", rule * 2 + COUNTER_EGRESS)?,
            self.sum("PACKET_COUNTERS", rule * 2 + COUNTER_INGRESS)?,
        ))
    }

    /// Counters of socket rule `rule`, summed over CPUs.
    pub fn sock_counters(&self, rule: u32) -> Result<RuleCounters, LoadError> {
        self.sum("SOCK_COUNTERS", rule)
    }

    /// Counters of device rule `rule`, summed over CPUs.
    pub fn device_counters(&self, rule: u32) -> Result<RuleCounters, LoadError> {
        self.sum("DEVICE_COUNTERS", rule)
    }

    fn sum(&self, name: &'static str, index: u32) -> Result<RuleCounters, LoadError> {
        let map = self.ebpf.map(name).ok_or(LoadError::Missing(name))?;
        let array: PerCpuArray<_, RuleCounters> =
            PerCpuArray::try_from(map).map_err(map_error("open", name))?;
        let values = array.get(&index, 0).map_err(map_error("read", name))?;
        Ok(values
            .iter()
            .fold(RuleCounters::default(), |acc, v| RuleCounters {
                matched: acc.matched + v.matched,
                injected: acc.injected + v.injected,
                passed: acc.passed + v.passed,
                expired: acc.expired + v.expired,
            }))
    }
}

/// Loads the `file_open` hook program alone, for `doctor`.
pub(super) fn probe_calls(ebpf: &mut Ebpf) -> Result<HookKind, LoadError> {
    load_calls(ebpf, op::OPEN).map(|calls| calls.kind)
}

/// Loads the LSM hook programs that see `ops`, of the kind this kernel runs, and reads the
/// offsets their path walk needs.
fn load_calls(ebpf: &mut Ebpf, ops: u64) -> Result<CallHooks, LoadError> {
    let kind = HookKind::detect();
    let hooks: Vec<&'static Hook> = hooks::hooks_for(ops).collect();
    let btf = aya::Btf::from_sys_fs().map_err(|e| LoadError::Btf(e.to_string()))?;
    let mut modify_return = Vec::new();
    match kind {
        HookKind::ModifyReturn => {
            modify_return = hooks::load_modify_return(OBJECT, ebpf, &btf, &hooks)?;
        }
        HookKind::Lsm => {
            for hook in &hooks {
                let prog: &mut Lsm = program(ebpf, hook.lsm_program)?;
                prog.load(hook.lsm, &btf)
                    .map_err(|source| LoadError::Refused {
                        program: hook.lsm_program,
                        source,
                    })?;
            }
        }
    }
    Ok(CallHooks {
        kind,
        hooks,
        modify_return,
        lsm_attached: Vec::new(),
    })
}
