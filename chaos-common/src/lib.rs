//! Records shared by the kernel programs (`chaos-ebpf`) and the user side (`chaos-user`).
//!
//! Every type here is a map key or value: `#[repr(C)]`, padding spelled out as fields so that
//! no byte of a record is ever uninitialised, and its size pinned by a compile-time assert so
//! that the two sides cannot drift apart silently.
#![no_std]

/// How many `loss` rules one target can hold. The programs walk them in order, so the bound
/// also bounds the per-packet cost.
pub const MAX_LOSS_RULES: u32 = 8;

/// Rule direction bits.
pub const DIR_EGRESS: u8 = 1;
/// Rule direction bits.
pub const DIR_INGRESS: u8 = 2;

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
    /// Number of valid entries at the start of the `LOSS_RULES` map.
    pub loss_rules: u32,
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

/// One `loss` rule.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LossRule {
    /// `bpf_ktime_get_ns()` (CLOCK_MONOTONIC) after which the rule is inert.
    pub deadline_ns: u64,
    /// A packet is lost when `bpf_get_prandom_u32() < threshold`; `1 << 32` loses every one.
    pub threshold: u64,
    pub filter: PacketFilter,
    /// `DIR_EGRESS`, `DIR_INGRESS` or both.
    pub dirs: u8,
    pub _pad: [u8; 7],
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

const _: () = assert!(core::mem::size_of::<Target>() == 24);
const _: () = assert!(core::mem::size_of::<AddrMatch>() == 36);
const _: () = assert!(core::mem::size_of::<PacketFilter>() == 88);
const _: () = assert!(core::mem::size_of::<LossRule>() == 112);
const _: () = assert!(core::mem::align_of::<LossRule>() == 8);
const _: () = assert!(core::mem::size_of::<RuleCounters>() == 32);

#[cfg(feature = "user")]
mod pod {
    // SAFETY: each type is `#[repr(C)]`, `Copy`, built only of integers and arrays of integers,
    // with every padding byte spelled out as a field, so every bit pattern is a valid value.
    unsafe impl aya::Pod for super::Target {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::LossRule {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::RuleCounters {}
}
