//! Records shared by the kernel programs (`chaos-ebpf`) and the user side (`chaos-user`).
//!
//! Every type here is a map key or value: `#[repr(C)]`, padding spelled out as fields so that
//! no byte of a record is ever uninitialised, and its size pinned by a compile-time assert so
//! that the two sides cannot drift apart silently.
#![no_std]

/// How many packet rules (`loss`, `delay`, `corrupt`, `duplicate`, `bandwidth`, `xdp-drop`) one
/// session can hold. The programs walk them in order, so the bound also bounds the per-packet
/// cost.
pub const MAX_PACKET_RULES: u32 = 8;
/// How many socket rules (`connect`, `dns`) one session can hold.
pub const MAX_SOCK_RULES: u32 = 8;
/// How many `device` rules one session can hold.
pub const MAX_DEVICE_RULES: u32 = 8;
/// How many `crash` rules one session can hold.
pub const MAX_CRASH_RULES: u32 = 8;
/// How many `file`, `nospace`, `fd-limit` (files) and `fail` rules one session can hold.
pub const MAX_CALL_RULES: u32 = 8;
/// How many distinct `path=` prefixes the call rules of one session can name.
pub const MAX_PATHS: u32 = 8;
/// How many directory levels above a file the kernel walks looking for a `path=` prefix.
pub const MAX_PATH_DEPTH: u32 = 48;
/// `CrashRule::mode` and `CallRule::mode`: act on the `count`-th matching call of each process,
/// once.
pub const SCHEDULE_NTH: u8 = 1;
/// The same: on every `count`-th matching call of each process.
pub const SCHEDULE_EVERY: u8 = 2;
/// The same: on each matching call with the rule's probability.
pub const SCHEDULE_DRAW: u8 = 3;
/// `DeviceRule::minor` that matches every minor number.
pub const DEVICE_ANY_MINOR: u32 = u32::MAX;

/// What a packet rule does to a packet it matches (`PacketRule::action`).
pub const ACTION_LOSS: u8 = 1;
/// Hold the packet back: departure time stamped for the `fq` qdisc.
pub const ACTION_DELAY: u8 = 2;
/// Flip bytes of the payload, checksum fixed.
pub const ACTION_CORRUPT: u8 = 3;
/// Send the packet twice.
pub const ACTION_DUPLICATE: u8 = 4;
/// Cap the rate with a token bucket.
pub const ACTION_BANDWIDTH: u8 = 5;

/// Loss model values (`PacketRule::model`): independent draws.
pub const MODEL_BERNOULLI: u8 = 0;
/// Gilbert-Elliott: a good and a bad state per flow, each with its own loss probability.
pub const MODEL_GILBERT: u8 = 1;

/// What a socket rule does (`SockRule::action`): connect() fails with `errno`.
pub const SOCK_ERRNO: u8 = 1;
/// connect() goes to `redirect` instead.
pub const SOCK_REDIRECT: u8 = 2;
/// DNS traffic goes to chaos-user's responder at `redirect`, which answers or forwards.
pub const SOCK_DNS: u8 = 3;
/// socket() fails with `errno` (`fd-limit`); matched at socket creation, not at connect().
pub const SOCK_CREATE: u8 = 4;

/// Rule direction bits.
pub const DIR_EGRESS: u8 = 1;
/// Rule direction bits.
pub const DIR_INGRESS: u8 = 2;
/// Rule direction bits: ingress at XDP on one interface, whatever the cgroup.
pub const DIR_XDP: u8 = 4;

/// Index of a direction in the counter maps: `rule * 2 + COUNTER_*`.
pub const COUNTER_EGRESS: u32 = 0;
/// Index of a direction in the counter maps: `rule * 2 + COUNTER_*`.
pub const COUNTER_INGRESS: u32 = 1;

/// Protocol filter values (`PacketFilter::proto`).
pub const PROTO_ANY: u8 = 0;
/// TCP.
pub const PROTO_TCP: u8 = 1;
/// UDP.
pub const PROTO_UDP: u8 = 2;
/// ICMP for IPv4 and ICMPv6 for IPv6.
pub const PROTO_ICMP: u8 = 3;

/// Address family values (`AddrMatch::family`).
pub const FAMILY_ANY: u8 = 0;
/// IPv4.
pub const FAMILY_V4: u8 = 4;
/// IPv6.
pub const FAMILY_V6: u8 = 6;

/// How the tc egress program makes a packet vanish without telling the sender.
///
/// tcx (kernel 6.6+) knows only next, pass, drop and redirect, so a lost packet is redirected to
/// an interface index that does not exist: the kernel frees it and reports it as sent. Under a
/// clsact qdisc `TC_ACT_STOLEN` does the same. A plain drop (`TC_ACT_SHOT`) would be reported
/// to the sender as a local drop, which TCP resends at once without counting a loss.
pub const VERDICT_REDIRECT_NOWHERE: u32 = 0;
/// See [`VERDICT_REDIRECT_NOWHERE`].
pub const VERDICT_STOLEN: u32 = 1;

/// The one target of a loaded object: which cgroup, and how many rules are live.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Target {
    /// Inode number of the target's cgroup2 directory (what the kernel calls the cgroup id).
    pub cgroup_id: u64,
    /// Depth of the target below the cgroup2 root (the root is level 0).
    pub level: u32,
    /// One of the `VERDICT_*` values.
    pub egress_verdict: u32,
    /// Number of valid entries at the start of the `PACKET_RULES` map.
    pub packet_rules: u32,
    /// Number of valid entries at the start of the `SOCK_RULES` map.
    pub sock_rules: u32,
    /// Number of valid entries at the start of the `DEVICE_RULES` map.
    pub device_rules: u32,
    /// Number of valid entries at the start of the `CRASH_RULES` map.
    pub crash_rules: u32,
    /// Number of valid entries at the start of the `CALL_RULES` map.
    pub call_rules: u32,
    pub _pad: u32,
}

/// An address filter: matches when `(address & mask) == addr` word by word, in the byte order
/// the packet carries. IPv4 uses the first word only.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct AddrMatch {
    pub addr: [u32; 4],
    pub mask: [u32; 4],
    /// `FAMILY_ANY` matches every packet, whatever its family.
    pub family: u8,
    pub _pad: [u8; 3],
}

/// An inclusive port range; `0..=65535` matches packets without ports too.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PortRange {
    pub lo: u16,
    pub hi: u16,
}

impl PortRange {
    /// The range that matches everything.
    pub const ANY: PortRange = PortRange {
        lo: 0,
        hi: u16::MAX,
    };

    /// Whether this range matches every packet.
    #[inline(always)]
    pub fn is_any(&self) -> bool {
        self.lo == 0 && self.hi == u16::MAX
    }
}

impl Default for PortRange {
    fn default() -> Self {
        Self::ANY
    }
}

/// The filter keys every packet fault shares.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PacketFilter {
    pub src: AddrMatch,
    pub dst: AddrMatch,
    pub sport: PortRange,
    pub dport: PortRange,
    /// One of the `PROTO_*` values.
    pub proto: u8,
    pub _pad: [u8; 7],
}

/// One packet rule. Which fields count depends on `action`; the rest are zero.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PacketRule {
    /// `bpf_ktime_get_ns()` (CLOCK_MONOTONIC) after which the rule is inert.
    pub deadline_ns: u64,
    /// The rule acts on a packet when `bpf_get_prandom_u32() < threshold`; `1 << 32` acts on
    /// every one. Unused by `bandwidth` and by the Gilbert model.
    pub threshold: u64,
    /// Only flows whose 5-tuple hash is below this take part; `1 << 32` is every flow.
    pub flow_threshold: u64,
    /// `delay`: how long, and the half-width of the uniform jitter around it.
    pub delay_ns: u64,
    pub jitter_ns: u64,
    /// `bandwidth`: bytes per second and the bucket's depth in bytes.
    pub rate_bytes: u64,
    pub burst_bytes: u64,
    /// Gilbert model thresholds, as `threshold`: good to bad, bad to good, loss in bad, loss
    /// in good.
    pub enter_bad: u64,
    pub leave_bad: u64,
    pub loss_bad: u64,
    pub loss_good: u64,
    pub filter: PacketFilter,
    /// One of the `ACTION_*` values.
    pub action: u8,
    /// `DIR_EGRESS`, `DIR_INGRESS`, `DIR_XDP`.
    pub dirs: u8,
    /// One of the `MODEL_*` values (`loss` only).
    pub model: u8,
    /// `corrupt`: how many payload bytes to flip.
    pub corrupt_bytes: u8,
    pub _pad: [u8; 4],
}

/// One socket rule: what connect() (and, for `dns`, sendmsg and recvmsg) of the target meets.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SockRule {
    /// As `PacketRule::deadline_ns`.
    pub deadline_ns: u64,
    /// As `PacketRule::threshold`.
    pub threshold: u64,
    /// Only destinations whose hash is below this take part; `1 << 32` is every one.
    pub flow_threshold: u64,
    pub dst: AddrMatch,
    pub dport: PortRange,
    /// Where `SOCK_REDIRECT` and `SOCK_DNS` send the socket, in the byte order of the
    /// packet; IPv4 uses the first word.
    pub redirect_addr: [u32; 4],
    /// `SOCK_ERRNO`: the error number connect() returns (positive).
    pub errno: u32,
    /// In network byte order, as the hook's context carries it.
    pub redirect_port: u16,
    /// One of the `PROTO_*` values; `PROTO_ICMP` is not used here.
    pub proto: u8,
    /// One of the `SOCK_*` values.
    pub action: u8,
    /// `FAMILY_V4` or `FAMILY_V6`; a redirect applies only to sockets of that family.
    pub redirect_family: u8,
    pub _pad: [u8; 7],
}

/// One `device` rule: access to matching device nodes fails with `errno`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DeviceRule {
    /// As `PacketRule::deadline_ns`.
    pub deadline_ns: u64,
    /// As `PacketRule::threshold`.
    pub threshold: u64,
    pub major: u32,
    /// `DEVICE_ANY_MINOR` for every minor number.
    pub minor: u32,
    /// The error number the access fails with (positive).
    pub errno: u32,
    /// `BPF_DEVCG_DEV_BLOCK` (1) or `BPF_DEVCG_DEV_CHAR` (2); 0 for both.
    pub kind: u8,
    /// `BPF_DEVCG_ACC_*` bits (mknod 1, read 2, write 4); 0 for every access.
    pub access: u8,
    pub _pad: [u8; 2],
}

/// One `crash` rule: a signal to a process of the target on some of its calls of a syscall.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CrashRule {
    /// As `PacketRule::deadline_ns`.
    pub deadline_ns: u64,
    /// `SCHEDULE_DRAW`: as `PacketRule::threshold`.
    pub threshold: u64,
    /// `SCHEDULE_NTH` and `SCHEDULE_EVERY`: which call, counted per process from 1.
    pub count: u64,
    /// The syscall's number on this architecture.
    pub syscall: u32,
    /// The signal to send.
    pub signal: u32,
    /// One of the `SCHEDULE_*` modes.
    pub mode: u8,
    pub _pad: [u8; 3],
    /// As `CallRule::path_bit`: only calls on a descriptor (the first argument) of a file
    /// under that path.
    pub path_bit: u32,
}

/// Operations that the LSM hooks see (`CallRule::ops` bits). One hook may serve several: the
/// file permission hook tells reads from writes.
pub mod op {
    pub const OPEN: u64 = 1 << 0;
    pub const READ: u64 = 1 << 1;
    pub const WRITE: u64 = 1 << 2;
    pub const CREATE: u64 = 1 << 3;
    pub const UNLINK: u64 = 1 << 4;
    /// A new file of any kind: the file allocation hook (`fd-limit`).
    pub const FILE_ALLOC: u64 = 1 << 5;
    /// fork, vfork, clone, and new threads.
    pub const TASK_ALLOC: u64 = 1 << 6;
    pub const MMAP: u64 = 1 << 7;
    pub const MPROTECT: u64 = 1 << 8;
    pub const IOCTL: u64 = 1 << 9;
    pub const RENAME: u64 = 1 << 10;
    pub const MKDIR: u64 = 1 << 11;
    pub const RMDIR: u64 = 1 << 12;
    pub const LINK: u64 = 1 << 13;
    pub const SYMLINK: u64 = 1 << 14;
    pub const CHMOD: u64 = 1 << 15;
    pub const CHOWN: u64 = 1 << 16;
    pub const TRUNCATE: u64 = 1 << 17;
    pub const BIND: u64 = 1 << 18;
    pub const LISTEN: u64 = 1 << 19;
    pub const ACCEPT: u64 = 1 << 20;
    pub const SENDMSG: u64 = 1 << 21;
    pub const RECVMSG: u64 = 1 << 22;
    pub const KILL: u64 = 1 << 23;
    pub const SETUID: u64 = 1 << 24;
    pub const SETGID: u64 = 1 << 25;
    pub const LOCK: u64 = 1 << 26;
}

/// One rule of the LSM hooks (`file`, `nospace`, `fd-limit` on files, `fail`): calls of the
/// target doing one of `ops`, under one of the rule's paths, fail with `errno`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CallRule {
    /// As `PacketRule::deadline_ns`.
    pub deadline_ns: u64,
    /// `SCHEDULE_DRAW`: as `PacketRule::threshold`.
    pub threshold: u64,
    /// `SCHEDULE_NTH` and `SCHEDULE_EVERY`: which call, counted per process from 1.
    pub count: u64,
    /// `op::*` bits.
    pub ops: u64,
    /// Positive; the hook returns its negation. 0 with `signal` set: the call goes on.
    pub errno: u32,
    /// Bit `1 << k` of the masks in `PATHS` that this rule's prefix sets; 0 for every path.
    pub path_bit: u32,
    /// `crash` with `path=`: the signal sent to the calling process instead of an errno.
    pub signal: u32,
    /// One of the `SCHEDULE_*` modes.
    pub mode: u8,
    pub _pad: [u8; 3],
}

/// Key of `PATHS`: a directory (or file) by device and inode number, as `stat` shows them
/// (the device in the kernel's own encoding, `major << 20 | minor`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct PathKey {
    pub ino: u64,
    pub dev: u32,
    pub _pad: u32,
}

/// Offsets of the kernel struct fields the path walk reads, from the running kernel's BTF
/// (Rust emits no CO-RE relocations, so they cannot be compiled in).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct KernelOffsets {
    /// `struct file`: `f_path`.
    pub file_path: u32,
    /// `struct path`: `mnt`, `dentry`.
    pub path_mnt: u32,
    pub path_dentry: u32,
    /// `struct dentry`: `d_parent`, `d_inode`.
    pub dentry_parent: u32,
    pub dentry_inode: u32,
    /// `struct inode`: `i_ino`, `i_sb`.
    pub inode_ino: u32,
    pub inode_sb: u32,
    /// `struct super_block`: `s_dev`.
    pub sb_dev: u32,
    /// `struct mount`: `mnt` (the embedded `vfsmount`), `mnt_parent`, `mnt_mountpoint`.
    pub mount_mnt: u32,
    pub mount_parent: u32,
    pub mount_mountpoint: u32,
    /// `struct task_struct`: `files`; `struct files_struct`: `fdt`; `struct fdtable`:
    /// `max_fds`, `fd` (a descriptor's file, for `crash` with `path=`).
    pub task_files: u32,
    pub files_fdt: u32,
    pub fdt_max_fds: u32,
    pub fdt_fd: u32,
    /// `struct file`: `f_mode` (`FMODE_CREATED` tells an open that made its file).
    pub file_mode: u32,
    /// Nonzero once the user side has filled the record in.
    pub valid: u32,
    pub _pad: [u32; 3],
}

/// Key of the target's failed calls, counted by syscall and errno.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct ErrorKey {
    pub syscall: u32,
    /// Positive.
    pub errno: u32,
}

/// Key of the per-process call counts of `crash` (`rule` below `MAX_CRASH_RULES`) and of the
/// call rules (`CALL_COUNT_BASE + rule`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CallKey {
    pub rule: u32,
    /// The process (thread group) id.
    pub tgid: u32,
}

/// Where the call rules' counts start in `CallKey::rule`.
pub const CALL_COUNT_BASE: u32 = 256;

/// Where a socket redirected to the DNS responder meant to go: keyed by socket cookie in
/// `DNS_ORIGINAL`, and by the client's port in `DNS_PEERS` for the responder to read.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct OriginalDst {
    /// In the byte order of the packet; IPv4 uses the first word.
    pub addr: [u32; 4],
    /// In network byte order.
    pub port: u16,
    /// `FAMILY_V4` or `FAMILY_V6`.
    pub family: u8,
    pub _pad: u8,
}

/// Key of `DNS_PEERS`: the responder finds a query's original resolver by the client's port.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct PeerKey {
    /// The client's port, in host byte order.
    pub port: u16,
    /// `PROTO_TCP` or `PROTO_UDP`.
    pub proto: u8,
    /// `FAMILY_V4` or `FAMILY_V6`.
    pub family: u8,
}

/// Key of the per-flow state of the Gilbert model.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FlowKey {
    pub rule: u32,
    pub hash: u32,
}

/// The token bucket of one `bandwidth` rule: the time, on the `bpf_ktime_get_ns` clock, at
/// which the bytes already let through are paid for.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Bucket {
    pub paid_until_ns: u64,
}

/// Per-rule, per-direction counters, kept per CPU and summed by the user side.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RuleCounters {
    /// Packets of the target that this rule's filter matched (first match of its kind).
    pub matched: u64,
    /// Matched packets the rule acted on.
    pub injected: u64,
    /// Matched packets the draw let through.
    pub passed: u64,
    /// Matched packets let through because the rule's deadline had passed (the session ended
    /// or its lease ran out).
    pub expired: u64,
}

const _: () = assert!(core::mem::size_of::<Target>() == 40);
const _: () = assert!(core::mem::size_of::<CallRule>() == 48);
const _: () = assert!(core::mem::size_of::<PathKey>() == 16);
const _: () = assert!(core::mem::size_of::<KernelOffsets>() == 80);
const _: () = assert!(core::mem::size_of::<DeviceRule>() == 32);
const _: () = assert!(core::mem::size_of::<CrashRule>() == 40);
const _: () = assert!(core::mem::size_of::<CallKey>() == 8);
const _: () = assert!(core::mem::size_of::<ErrorKey>() == 8);
const _: () = assert!(core::mem::size_of::<AddrMatch>() == 36);
const _: () = assert!(core::mem::size_of::<PacketFilter>() == 88);
const _: () = assert!(core::mem::size_of::<PacketRule>() == 184);
const _: () = assert!(core::mem::align_of::<PacketRule>() == 8);
const _: () = assert!(core::mem::size_of::<SockRule>() == 96);
const _: () = assert!(core::mem::size_of::<OriginalDst>() == 20);
const _: () = assert!(core::mem::size_of::<PeerKey>() == 4);
const _: () = assert!(core::mem::size_of::<FlowKey>() == 8);
const _: () = assert!(core::mem::size_of::<Bucket>() == 8);
const _: () = assert!(core::mem::size_of::<RuleCounters>() == 32);

#[cfg(feature = "user")]
mod pod {
    // SAFETY: each type is `#[repr(C)]`, `Copy`, built only of integers and arrays of integers,
    // with every padding byte spelled out as a field, so every bit pattern is a valid value.
    unsafe impl aya::Pod for super::Target {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::PacketRule {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::SockRule {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::DeviceRule {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::CrashRule {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::ErrorKey {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::CallRule {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::PathKey {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::KernelOffsets {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::OriginalDst {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::PeerKey {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::RuleCounters {}
}
