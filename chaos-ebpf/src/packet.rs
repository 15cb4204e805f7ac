//! Packet faults: `loss` at tc egress (every interface) and cgroup_skb ingress (the target).
//!
//! Both programs read the packet from its network header with `bpf_skb_load_bytes_relative`, so
//! the same parser serves interfaces with and without a link-layer header and the cgroup hook,
//! which sees no link-layer header at all. Every error passes the packet: a fault injector must
//! never fail closed by accident.

use aya_ebpf::{
    bindings::{__sk_buff, TC_ACT_STOLEN, TC_ACT_UNSPEC, bpf_hdr_start_off::BPF_HDR_START_NET},
    helpers::{
        bpf_get_prandom_u32, bpf_ktime_get_ns, bpf_redirect, bpf_skb_ancestor_cgroup_id,
        bpf_skb_load_bytes_relative,
    },
    macros::{cgroup_skb, classifier, map},
    maps::{Array, PerCpuArray},
    programs::{SkBuffContext, TcContext},
};
use chaos_common::{
    AddrMatch, COUNTER_EGRESS, COUNTER_INGRESS, DIR_EGRESS, DIR_INGRESS, FAMILY_ANY, FAMILY_V4,
    FAMILY_V6, LossRule, MAX_LOSS_RULES, PROTO_ANY, PROTO_ICMP, PROTO_TCP, PROTO_UDP, PacketFilter,
    PortRange, RuleCounters, Target, VERDICT_STOLEN,
};

#[map]
static TARGET: Array<Target> = Array::with_max_entries(1, 0);

#[map]
static LOSS_RULES: Array<LossRule> = Array::with_max_entries(MAX_LOSS_RULES, 0);

#[map]
static LOSS_COUNTERS: PerCpuArray<RuleCounters> =
    PerCpuArray::with_max_entries(MAX_LOSS_RULES * 2, 0);

/// tcx: "go on with the next program, then the default"; under clsact the same value means
/// "no verdict", which also lets the packet through.
const TC_NEXT: i32 = TC_ACT_UNSPEC;
const CGROUP_SKB_PASS: i32 = 1;
const CGROUP_SKB_DROP: i32 = 0;
/// A protocol no filter value names; only `proto=any` matches it.
const PROTO_OTHER: u8 = 0xff;

/// What the filters look at, read once per packet.
struct Packet {
    family: u8,
    proto: u8,
    has_ports: bool,
    src: [u32; 4],
    dst: [u32; 4],
    sport: u16,
    dport: u16,
}

/// `loss` at tc egress, attached to every interface; matches by the sending socket's cgroup.
///
/// Minimum kernel: 4.18 for `bpf_skb_ancestor_cgroup_id` (CONFIG_CGROUP_BPF, CONFIG_NET_CLS_BPF
/// for clsact); tcx links need 6.6.
#[classifier]
pub fn loss_egress(ctx: TcContext) -> i32 {
    let skb = ctx.skb.skb;
    let Some(target) = TARGET.get(0) else {
        return TC_NEXT;
    };
    if target.loss_rules == 0 {
        return TC_NEXT;
    }
    // SAFETY: `skb` is the context pointer the kernel handed to this program.
    let cgroup = unsafe { bpf_skb_ancestor_cgroup_id(skb, target.level as i32) };
    if cgroup != target.cgroup_id {
        return TC_NEXT;
    }
    if !decide(skb, target, DIR_EGRESS, COUNTER_EGRESS) {
        return TC_NEXT;
    }
    if target.egress_verdict == VERDICT_STOLEN {
        TC_ACT_STOLEN
    } else {
        // SAFETY: a plain helper call; index 0 is never a device, so the kernel frees the
        // packet after this program and reports it to the sender as sent.
        unsafe { bpf_redirect(0, 0) as i32 }
    }
}

/// `loss` at cgroup_skb ingress, attached to the target cgroup (descendants inherit it).
///
/// Minimum kernel: 4.10 (CONFIG_CGROUP_BPF); links need 5.7.
#[cgroup_skb(ingress)]
pub fn loss_ingress(ctx: SkBuffContext) -> i32 {
    let Some(target) = TARGET.get(0) else {
        return CGROUP_SKB_PASS;
    };
    if target.loss_rules == 0 {
        return CGROUP_SKB_PASS;
    }
    if decide(ctx.skb.skb, target, DIR_INGRESS, COUNTER_INGRESS) {
        CGROUP_SKB_DROP
    } else {
        CGROUP_SKB_PASS
    }
}

/// Finds the first rule of this direction whose filter matches, counts, and draws.
/// Returns whether the packet is to be lost.
#[inline(always)]
fn decide(skb: *mut __sk_buff, target: &Target, dir: u8, counter: u32) -> bool {
    let Some(packet) = parse(skb) else {
        return false;
    };
    let count = if target.loss_rules < MAX_LOSS_RULES {
        target.loss_rules
    } else {
        MAX_LOSS_RULES
    };
    for i in 0..MAX_LOSS_RULES {
        if i >= count {
            break;
        }
        let Some(rule) = LOSS_RULES.get(i) else {
            return false;
        };
        if rule.dirs & dir == 0 || !filter_matches(&rule.filter, &packet) {
            continue;
        }
        // SAFETY: a plain helper call without arguments.
        let live = unsafe { bpf_ktime_get_ns() } < rule.deadline_ns;
        // SAFETY: as above; the draw is taken only for a live rule.
        let lose = live && (unsafe { bpf_get_prandom_u32() } as u64) < rule.threshold;
        if let Some(counters) = LOSS_COUNTERS.get_ptr_mut(i * 2 + counter) {
            // SAFETY: a per-CPU map value, written only by this CPU while this program runs.
            let counters = unsafe { &mut *counters };
            counters.matched += 1;
            if lose {
                counters.injected += 1;
            } else if live {
                counters.passed += 1;
            } else {
                counters.expired += 1;
            }
        }
        return lose;
    }
    false
}

#[inline(always)]
fn filter_matches(filter: &PacketFilter, packet: &Packet) -> bool {
    if filter.proto != PROTO_ANY && filter.proto != packet.proto {
        return false;
    }
    if !addr_matches(&filter.src, packet.family, &packet.src)
        || !addr_matches(&filter.dst, packet.family, &packet.dst)
    {
        return false;
    }
    port_matches(&filter.sport, packet.has_ports, packet.sport)
        && port_matches(&filter.dport, packet.has_ports, packet.dport)
}

#[inline(always)]
fn addr_matches(want: &AddrMatch, family: u8, addr: &[u32; 4]) -> bool {
    if want.family == FAMILY_ANY {
        return true;
    }
    if want.family != family {
        return false;
    }
    (addr[0] & want.mask[0]) == want.addr[0]
        && (addr[1] & want.mask[1]) == want.addr[1]
        && (addr[2] & want.mask[2]) == want.addr[2]
        && (addr[3] & want.mask[3]) == want.addr[3]
}

#[inline(always)]
fn port_matches(range: &PortRange, has_ports: bool, port: u16) -> bool {
    range.is_any() || (has_ports && range.lo <= port && port <= range.hi)
}

#[inline(always)]
fn load<const N: usize>(skb: *mut __sk_buff, offset: u32) -> Option<[u8; N]> {
    let mut buf = [0u8; N];
    // SAFETY: the helper writes at most `N` bytes into `buf`, which lives on this stack frame.
    let ret = unsafe {
        bpf_skb_load_bytes_relative(
            skb as *const _,
            offset,
            buf.as_mut_ptr() as *mut _,
            N as u32,
            BPF_HDR_START_NET,
        )
    };
    if ret == 0 { Some(buf) } else { None }
}

#[inline(always)]
fn word(b: &[u8], at: usize) -> u32 {
    u32::from_ne_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

/// Reads the IP header and, when the packet carries one, the start of the TCP or UDP header.
/// Non-IP packets, and IPv6 packets behind extension headers, have no ports.
#[inline(always)]
fn parse(skb: *mut __sk_buff) -> Option<Packet> {
    // Every IP header has at least 20 bytes: one load serves IPv4 whole and tells IPv6 apart.
    let h: [u8; 20] = load(skb, 0)?;
    let mut packet = Packet {
        family: 0,
        proto: PROTO_OTHER,
        has_ports: false,
        src: [0; 4],
        dst: [0; 4],
        sport: 0,
        dport: 0,
    };
    let (l4, l4_offset, first_fragment) = match h[0] >> 4 {
        4 => {
            packet.family = FAMILY_V4;
            packet.src[0] = word(&h, 12);
            packet.dst[0] = word(&h, 16);
            let fragment_offset = u16::from_be_bytes([h[6], h[7]]) & 0x1fff;
            (h[9], ((h[0] & 0x0f) as u32) * 4, fragment_offset == 0)
        }
        6 => {
            let h: [u8; 40] = load(skb, 0)?;
            packet.family = FAMILY_V6;
            for i in 0..4 {
                packet.src[i] = word(&h, 8 + i * 4);
                packet.dst[i] = word(&h, 24 + i * 4);
            }
            (h[6], 40, true)
        }
        _ => return None,
    };
    packet.proto = match l4 {
        6 => PROTO_TCP,
        17 => PROTO_UDP,
        1 if packet.family == FAMILY_V4 => PROTO_ICMP,
        58 if packet.family == FAMILY_V6 => PROTO_ICMP,
        _ => PROTO_OTHER,
    };
    if (packet.proto == PROTO_TCP || packet.proto == PROTO_UDP) && first_fragment {
        if let Some(ports) = load::<4>(skb, l4_offset) {
            packet.has_ports = true;
            packet.sport = u16::from_be_bytes([ports[0], ports[1]]);
            packet.dport = u16::from_be_bytes([ports[2], ports[3]]);
        }
    }
    Some(packet)
}
