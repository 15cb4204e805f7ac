//! The embedded kernel object: loading it, writing the rule records, attaching the programs
//! the plan needs, and reading the counters back.

pub mod cost;
mod error;
mod hooks;
mod programs;

pub use error::LoadError;
pub use hooks::{HOOKS, HookKind, kernel_btf, kernel_offsets};
pub use programs::{DnsPeers, Programs};

use aya::{Ebpf, maps::MapError, programs::ProgramError, util::KernelVersion};

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
    ("chaos_sys_exit", "raw tracepoint sys_exit"),
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
    /// The socket-creation hook (`fd-limit` where the file allocation hook does not run; the
    /// loader sets it).
    pub sock_create: bool,
    /// `fd-limit`: the file allocation hook, or socket creation where that does not run.
    pub fd_limit: bool,
    /// `op::*` bits the LSM hooks must see (`file`, `nospace`, `fail`).
    pub calls: u64,
    /// Some rule has `path=`: the walk needs the kernel's struct offsets.
    pub paths: bool,
    /// The syscall-entry tracepoint (`crash`).
    pub sys_enter: bool,
    /// The syscall-exit tracepoint: the target's failed calls, for the report.
    pub sys_exit: bool,
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
        if self.sys_exit {
            names.push("chaos_sys_exit");
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
    let missing = missing_capabilities();
    if !missing.is_empty() {
        return Err(LoadError::MissingCapabilities(missing.join(", ")));
    }
    Ok(())
}

/// The capabilities the programs need that this process does not have in effect (root whose
/// bounding set was narrowed, a container that drops them).
fn missing_capabilities() -> Vec<&'static str> {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let Some(effective) = status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
    else {
        return Vec::new();
    };
    // CAP_BPF exists from kernel 5.8; before, CAP_SYS_ADMIN covers it.
    let last = std::fs::read_to_string("/proc/sys/kernel/cap_last_cap")
        .ok()
        .and_then(|v| v.trim().parse::<u32>().ok())
        .unwrap_or(40);
    [
        ("CAP_BPF", 39),
        ("CAP_NET_ADMIN", 12),
        ("CAP_SYS_ADMIN", 21),
    ]
    .into_iter()
    .filter(|&(_, bit)| bit <= last && effective & (1 << bit) == 0)
    .map(|(name, _)| name)
    .collect()
}

/// Whether this kernel has tcx links (6.6 and later), which make egress loss silent.
pub fn has_tcx() -> bool {
    KernelVersion::current().is_ok_and(|v| v >= KernelVersion::new(6, 6, 0))
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

pub(crate) fn map_error(op: &'static str, map: &'static str) -> impl FnOnce(MapError) -> LoadError {
    move |source| LoadError::Map { op, map, source }
}

pub(crate) fn program<'a, T>(ebpf: &'a mut Ebpf, name: &'static str) -> Result<&'a mut T, LoadError>
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

/// Parses the embedded object and creates its maps. The kernel's BTF is not read for it: the
/// programs have no CO-RE relocations (the struct offsets that the hook programs need come from
/// user space through a map), and reading it cost a tenth of a second and megabytes at every
/// start.
pub(crate) fn open_object() -> Result<Ebpf, LoadError> {
    aya::EbpfLoader::new()
        .btf(None)
        .load(OBJECT)
        .map_err(LoadError::Object)
}

/// Loads the `file_open` hook program of the kind this kernel runs, attaching nothing: what
/// `file`, `nospace`, `fail` and `fd-limit` beyond sockets need.
pub fn probe_hooks() -> Result<HookKind, LoadError> {
    check_ready()?;
    let mut ebpf = open_object()?;
    programs::probe_calls(&mut ebpf)
}

/// Loads one program of the object alone, attaching nothing, to see whether this kernel takes it.
pub fn probe(name: &'static str) -> Result<(), LoadError> {
    check_ready()?;
    let mut ebpf = open_object()?;
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
