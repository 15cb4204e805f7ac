//! The embedded kernel object: loading it, writing the rule records, attaching the programs
//! the plan needs, and reading the counters back.

use std::{fs, os::fd::AsFd as _};

use anyhow::Context as _;

use aya::{
    Ebpf, EbpfError,
    maps::{Array, HashMap, Map, MapData, MapError, PerCpuArray},
    programs::{
        CgroupAttachMode, CgroupDevice, CgroupSkb, CgroupSkbAttachType, CgroupSock, CgroupSockAddr,
        ProgramError, RawTracePoint, SchedClassifier, SockOps, Xdp, XdpMode,
    },
    util::KernelVersion,
};
use chaos_common::{
    COUNTER_EGRESS, COUNTER_INGRESS, MAX_CRASH_RULES, MAX_DEVICE_RULES, MAX_PACKET_RULES,
    MAX_SOCK_RULES, OriginalDst, PeerKey, RuleCounters, Target,
};

use crate::{
    cgroup::Cgroup,
    error::{Class, Classify},
    netns::Netns,
    plan::Plan,
    tc::{self, Mode},
    undo::UndoLog,
};

/// The kernel programs, built by build.rs from `chaos-ebpf`. Empty when the eBPF toolchain was
/// missing at build time.
static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/chaos.bpf.o"));

/// Names of the programs in the object, as the kernel lists them.
pub const PROGRAMS: &[(&str, &str)] = &[
    ("chaos_egress", "tc classifier"),
    ("chaos_ingress", "cgroup_skb ingress"),
    ("chaos_cg_egress", "cgroup_skb egress"),
    ("chaos_sock_ops", "cgroup sock_ops"),
    ("chaos_connect4", "cgroup connect4"),
    ("chaos_connect6", "cgroup connect6"),
    ("chaos_sendmsg4", "cgroup sendmsg4"),
    ("chaos_sendmsg6", "cgroup sendmsg6"),
    ("chaos_recvmsg4", "cgroup recvmsg4"),
    ("chaos_recvmsg6", "cgroup recvmsg6"),
    ("chaos_getpeer4", "cgroup getpeername4"),
    ("chaos_getpeer6", "cgroup getpeername6"),
    ("chaos_xdp", "xdp"),
    ("chaos_device", "cgroup device"),
    ("chaos_sock_create", "cgroup sock_create"),
    ("chaos_sys_enter", "raw tracepoint sys_enter"),
    ("probe_fentry", "fentry security_file_open"),
    ("probe_lsm", "lsm file_open"),
];

/// The cgroup socket-address programs of `connect`, and those `dns` adds.
const CONNECT_PROGRAMS: &[&str] = &["chaos_connect4", "chaos_connect6"];
const DNS_PROGRAMS: &[&str] = &[
    "chaos_sendmsg4",
    "chaos_sendmsg6",
    "chaos_recvmsg4",
    "chaos_recvmsg6",
    "chaos_getpeer4",
    "chaos_getpeer6",
];

/// Which programs a session needs.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Needs {
    /// tc egress on every interface (`loss` egress, `delay`, `corrupt`, `duplicate`).
    pub tc_egress: bool,
    /// cgroup_skb ingress (`loss` ingress).
    pub cg_ingress: bool,
    /// cgroup_skb egress (`bandwidth`, and `dns` bookkeeping).
    pub cg_egress: bool,
    /// sock_ops (`bandwidth` pacing of TCP).
    pub sock_ops: bool,
    /// connect4/6 (`connect`, `dns`).
    pub connect: bool,
    /// sendmsg4/6 and recvmsg4/6 (`dns`).
    pub dns: bool,
    /// XDP on this interface (`xdp-drop`).
    pub xdp: Option<String>,
    /// The cgroup device hook (`device`).
    pub device: bool,
    /// The socket-creation hook (`fd-limit`).
    pub sock_create: bool,
    /// The syscall-entry tracepoint (`crash`).
    pub sys_enter: bool,
}

impl Needs {
    /// The programs to load, by name.
    pub fn programs(&self) -> Vec<&'static str> {
        let mut names = Vec::new();
        if self.tc_egress {
            names.push("chaos_egress");
        }
        if self.cg_ingress {
            names.push("chaos_ingress");
        }
        if self.cg_egress {
            names.push("chaos_cg_egress");
        }
        if self.sock_ops {
            names.push("chaos_sock_ops");
        }
        if self.connect {
            names.extend(CONNECT_PROGRAMS);
        }
        if self.dns {
            names.extend(DNS_PROGRAMS);
        }
        if self.xdp.is_some() {
            names.push("chaos_xdp");
        }
        if self.device {
            names.push("chaos_device");
        }
        if self.sock_create {
            names.push("chaos_sock_create");
        }
        if self.sys_enter {
            names.push("chaos_sys_enter");
        }
        names
    }

    /// Whether any program is attached to the target cgroup.
    pub fn cgroup(&self) -> bool {
        self.cg_ingress
            || self.cg_egress
            || self.sock_ops
            || self.connect
            || self.dns
            || self.device
            || self.sock_create
    }
}

/// Why the kernel side could not be set up. Every variant is the environment's refusal.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// The binary has no programs in it.
    #[error("this chaos-user was built without its eBPF programs")]
    NotBuilt,
    /// Not root.
    #[error("loading eBPF programs needs root (CAP_BPF, CAP_NET_ADMIN and CAP_SYS_ADMIN)")]
    NotPrivileged,
    /// The object does not parse.
    #[error("parse the embedded eBPF object")]
    Object(#[source] EbpfError),
    /// The object lacks a program or map this build expects.
    #[error("the embedded eBPF object has no {0}")]
    Missing(&'static str),
    /// The kernel refused a program; the source carries the verifier log.
    #[error("the kernel refused to load program `{program}`")]
    Refused {
        program: &'static str,
        #[source]
        source: ProgramError,
    },
    /// A program loaded but could not be attached.
    #[error("attach `{program}` to {to}")]
    Attach {
        program: &'static str,
        to: String,
        #[source]
        source: ProgramError,
    },
    /// A map operation failed.
    #[error("{op} map {map}")]
    Map {
        op: &'static str,
        map: &'static str,
        #[source]
        source: MapError,
    },
    /// More rules of one family than the programs walk.
    #[error("at most {max} {family} faults per session; {given} were given")]
    TooManyRules {
        family: &'static str,
        max: u32,
        given: usize,
    },
    /// The interface already runs an XDP program.
    #[error("interface {dev} already has an XDP program attached")]
    XdpBusy { dev: String },
    /// The kernel is too old for a program the plan needs.
    #[error("{what} needs kernel {need} or later; this is {have}")]
    KernelTooOld {
        what: &'static str,
        need: &'static str,
        have: String,
    },
}

impl Classify for LoadError {
    fn class(&self) -> Class {
        match self {
            LoadError::TooManyRules { .. } => Class::BadInput,
            _ => Class::Environment,
        }
    }

    fn hint(&self) -> Option<String> {
        match self {
            LoadError::NotBuilt => Some(
                "run `cargo xtask setup` to install the eBPF toolchain, then build again".into(),
            ),
            LoadError::NotPrivileged => Some("run it with sudo".into()),
            LoadError::Object(_) => Some(
                "the kernel refused to create the maps: root needs CAP_BPF and CAP_SYS_ADMIN \
                 (in a container, run it privileged)"
                    .into(),
            ),
            LoadError::Refused { .. } => {
                Some("`chaos-user doctor` shows which programs this kernel loads".into())
            }
            LoadError::XdpBusy { dev } => Some(format!(
                "another session's xdp-drop, or a program of the system, holds it \
                 (`ip link show dev {dev}` shows it): stop that first"
            )),
            _ => None,
        }
    }
}

/// Whether this binary carries its programs.
pub fn built_with_programs() -> bool {
    !OBJECT.is_empty()
}

/// Fails unless the binary has its programs and runs as root.
pub fn check_ready() -> Result<(), LoadError> {
    if !built_with_programs() {
        return Err(LoadError::NotBuilt);
    }
    // SAFETY: geteuid has no preconditions and cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        return Err(LoadError::NotPrivileged);
    }
    Ok(())
}

/// Whether this kernel has tcx links (6.6 and later), which make egress loss silent.
pub fn has_tcx() -> bool {
    KernelVersion::current().is_ok_and(|v| v >= KernelVersion::new(6, 6, 0))
}

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
    tracepoint_attached: bool,
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
        let mut ebpf = Ebpf::load(OBJECT).map_err(LoadError::Object)?;
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
            needs: needs.clone(),
            egress_interfaces: Vec::new(),
            cgroup_attached: Vec::new(),
            xdp_attached: None,
            tracepoint_attached: false,
        })
    }

    /// Writes the rules and then the target record that makes them live.
    pub fn configure(&mut self, target: Option<&Cgroup>, plan: &Plan) -> Result<(), LoadError> {
        for (family, max, given) in [
            ("packet", MAX_PACKET_RULES, plan.packet.len()),
            ("connect and dns", MAX_SOCK_RULES, plan.sock.len()),
            ("device", MAX_DEVICE_RULES, plan.device.len()),
            ("crash", MAX_CRASH_RULES, plan.crash.len()),
        ] {
            if given > max as usize {
                return Err(LoadError::TooManyRules { family, max, given });
            }
        }
        self.write_rules(plan)?;
        let record = Target {
            cgroup_id: target.map_or(0, |t| t.id),
            level: target.map_or(0, |t| t.level),
            egress_verdict: self.mode.verdict(),
            packet_rules: plan.packet.len() as u32,
            sock_rules: plan.sock.len() as u32,
            device_rules: plan.device.len() as u32,
            crash_rules: plan.crash.len() as u32,
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
        array
            .set(0, record, 0)
            .map_err(map_error("write", "TARGET"))
    }

    /// Rewrites the rule records (to renew their deadlines).
    pub fn write_rules(&mut self, plan: &Plan) -> Result<(), LoadError> {
        self.write("PACKET_RULES", &plan.packet)?;
        self.write("SOCK_RULES", &plan.sock)?;
        self.write("DEVICE_RULES", &plan.device)?;
        self.write("CRASH_RULES", &plan.crash)
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

    /// Attaches the syscall-entry tracepoint `crash` needs; it filters by cgroup itself.
    pub fn attach_tracepoints(&mut self) -> Result<(), LoadError> {
        if !self.needs.sys_enter {
            return Ok(());
        }
        let prog: &mut RawTracePoint = program(&mut self.ebpf, "chaos_sys_enter")?;
        prog.attach("sys_enter")
            .map_err(|source| LoadError::Attach {
                program: "chaos_sys_enter",
                to: "raw tracepoint sys_enter".into(),
                source,
            })?;
        self.tracepoint_attached = true;
        Ok(())
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
        if self.tracepoint_attached {
            out.push("raw tracepoint sys_enter".to_string());
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

fn require_kernel(
    what: &'static str,
    (major, minor): (u8, u8),
    need: &'static str,
) -> Result<(), LoadError> {
    match KernelVersion::current() {
        Ok(v) if v < KernelVersion::new(major, minor, 0) => Err(LoadError::KernelTooOld {
            what,
            need,
            have: format!("{v}"),
        }),
        _ => Ok(()),
    }
}

fn map_error(op: &'static str, map: &'static str) -> impl FnOnce(MapError) -> LoadError {
    move |source| LoadError::Map { op, map, source }
}

fn program<'a, T>(ebpf: &'a mut Ebpf, name: &'static str) -> Result<&'a mut T, LoadError>
where
    &'a mut T: TryFrom<&'a mut aya::programs::Program>,
{
    ebpf.program_mut(name)
        .and_then(|p| p.try_into().ok())
        .ok_or(LoadError::Missing(name))
}

/// A network interface: its name and its index, which a recreated interface does not keep.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Interface {
    pub name: String,
    pub index: u32,
}

/// The network interfaces of the network namespace this process is in.
pub fn interfaces() -> Vec<Interface> {
    let mut found = Vec::new();
    // SAFETY: if_nameindex returns an array ended by a zeroed entry, or null; every name is a
    // NUL-terminated string; the array is freed once, after it has been copied.
    unsafe {
        let list = libc::if_nameindex();
        if list.is_null() {
            return found;
        }
        let mut entry = list;
        while (*entry).if_index != 0 && !(*entry).if_name.is_null() {
            let name = std::ffi::CStr::from_ptr((*entry).if_name)
                .to_string_lossy()
                .into_owned();
            found.push(Interface {
                name,
                index: (*entry).if_index,
            });
            entry = entry.add(1);
        }
        libc::if_freenameindex(list);
    }
    found.sort_by(|a, b| a.name.cmp(&b.name));
    found
}

/// Loads one program of the object alone, attaching nothing, to see whether this kernel takes it.
pub fn probe(name: &'static str) -> Result<(), LoadError> {
    check_ready()?;
    let mut ebpf = Ebpf::load(OBJECT).map_err(LoadError::Object)?;
    let refused = |source| LoadError::Refused {
        program: name,
        source,
    };
    let btf = || aya::Btf::from_sys_fs().map_err(|e| refused(ProgramError::Btf(e)));
    match ebpf.program_mut(name).ok_or(LoadError::Missing(name))? {
        aya::programs::Program::SchedClassifier(p) => p.load().map_err(refused),
        aya::programs::Program::CgroupSkb(p) => p.load().map_err(refused),
        aya::programs::Program::CgroupSockAddr(p) => p.load().map_err(refused),
        aya::programs::Program::Xdp(p) => p.load().map_err(refused),
        aya::programs::Program::SockOps(p) => p.load().map_err(refused),
        aya::programs::Program::CgroupDevice(p) => p.load().map_err(refused),
        aya::programs::Program::CgroupSock(p) => p.load().map_err(refused),
        aya::programs::Program::RawTracePoint(p) => p.load().map_err(refused),
        aya::programs::Program::FEntry(p) => p.load("security_file_open", &btf()?).map_err(refused),
        aya::programs::Program::Lsm(p) => p.load("file_open", &btf()?).map_err(refused),
        _ => Err(LoadError::Missing(name)),
    }
}
