//! What every packet program shares: the parser, the filters, the rule walk and the draw.
//!
//! The skb programs read the packet from its network header with
//! `bpf_skb_load_bytes_relative`, so one parser serves interfaces with and without a
//! link-layer header and the cgroup hooks, which see no link-layer header at all. Every error
//! passes the packet: a fault injector must never fail closed by accident.

use aya_ebpf::{
    bindings::{__sk_buff, TC_ACT_UNSPEC, bpf_hdr_start_off::BPF_HDR_START_NET},
    helpers::{bpf_skb_load_bytes, bpf_skb_load_bytes_relative},
};
use chaos_common::{
    ACTION_LOSS, AddrMatch, FAMILY_ANY, FAMILY_V4, FAMILY_V6, FlowKey, MAX_PACKET_RULES,
    MODEL_GILBERT, PROTO_ANY, PROTO_ICMP, PROTO_TCP, PROTO_UDP, PacketFilter, PacketRule,
    PortRange, Target,
};

use crate::{
    count, draw,
    maps::{FLOW_STATE, PACKET_COUNTERS, PACKET_RULES},
    mix, now,
};

/// tcx: "go on with the next program, then the default"; under clsact the same value means
/// "no verdict", which also lets the packet through.
pub(crate) const TC_NEXT: i32 = TC_ACT_UNSPEC;
pub(crate) const CGROUP_SKB_PASS: i32 = 1;
pub(crate) const CGROUP_SKB_DROP: i32 = 0;
/// cgroup_skb egress: bit 1 of the verdict tells TCP of congestion, as a full queue would.
pub(crate) const CGROUP_SKB_CONGESTED: i32 = 2;
pub(crate) const AF_INET: u32 = 2;
pub(crate) const AF_INET6: u32 = 10;
/// A protocol no filter value names; only `proto=any` matches it.
pub(crate) const PROTO_OTHER: u8 = 0xff;
/// Marks the copy that `duplicate` sends, so that the copy is not acted on again.
pub(crate) const DUPLICATE_MARK: u32 = 0xc4a0_5d0b;
/// The most bytes `corrupt` flips in one packet (the spec grammar enforces it too).
pub(crate) const MAX_CORRUPT_BYTES: u32 = 64;

/// What the filters look at, read once per packet.
pub(crate) struct Packet {
    pub(crate) family: u8,
    pub(crate) proto: u8,
    pub(crate) has_ports: bool,
    pub(crate) src: [u32; 4],
    pub(crate) dst: [u32; 4],
    pub(crate) sport: u16,
    pub(crate) dport: u16,
    /// Offset of the transport header from the network header.
    pub(crate) l4_offset: u32,
    /// The packet's first 20 bytes from the network header, to find where that header starts.
    pub(crate) head: [u8; 20],
}

impl Packet {
    /// The flow's hash: addresses, ports and protocol, the same for every packet of a flow.
    #[inline(always)]
    pub(crate) fn flow_hash(&self) -> u32 {
        let ports = ((self.sport as u32) << 16) | self.dport as u32;
        mix(&[
            self.src[0],
            self.src[1],
            self.src[2],
            self.src[3],
            self.dst[0],
            self.dst[1],
            self.dst[2],
            self.dst[3],
            ports,
            self.proto as u32,
        ])
    }
}

/// Finds the first loss rule of this direction whose filter matches, counts, and decides.
#[inline(always)]
pub(crate) fn lose_first_match(target: &Target, packet: &Packet, dir: u8, counter: u32) -> bool {
    let now = now();
    for i in 0..MAX_PACKET_RULES {
        if i >= rule_count(target) {
            break;
        }
        let Some(rule) = PACKET_RULES.get(i) else {
            return false;
        };
        if rule.dirs & dir == 0
            || rule.action != ACTION_LOSS
            || !filter_matches(&rule.filter, packet)
        {
            continue;
        }
        let live = now < rule.deadline_ns;
        let lose = live && decide(rule, i, packet);
        count(PACKET_COUNTERS.get_ptr_mut(i * 2 + counter), live, lose);
        return lose;
    }
    false
}

/// Whether the packet's flow is in the rule's share; the flow's hash is worked out only for a
/// rule with a share (`flows=`).
#[inline(always)]
pub(crate) fn in_share(rule: &PacketRule, packet: &Packet) -> bool {
    rule.flow_threshold >= 1 << 32 || (packet.flow_hash() as u64) < rule.flow_threshold
}

/// Whether a live rule acts on this packet: the flow must be in the rule's share, then the
/// draw (or the Gilbert model's state) decides.
#[inline(always)]
pub(crate) fn decide(rule: &PacketRule, i: u32, packet: &Packet) -> bool {
    if !in_share(rule, packet) {
        return false;
    }
    if rule.model != MODEL_GILBERT {
        return draw(rule.threshold);
    }
    let key = FlowKey {
        rule: i,
        hash: packet.flow_hash(),
    };
    // SAFETY: a plain map read; the value is copied out at once.
    let bad = unsafe { FLOW_STATE.get(&key) }.is_some_and(|s| *s != 0);
    let lose = draw(if bad { rule.loss_bad } else { rule.loss_good });
    let next = if bad {
        !draw(rule.leave_bad)
    } else {
        draw(rule.enter_bad)
    };
    if next != bad {
        let _ = FLOW_STATE.insert(&key, &(next as u32), 0);
    }
    lose
}

#[inline(always)]
pub(crate) fn rule_count(target: &Target) -> u32 {
    if target.packet_rules < MAX_PACKET_RULES {
        target.packet_rules
    } else {
        MAX_PACKET_RULES
    }
}

#[inline(always)]
pub(crate) fn filter_matches(filter: &PacketFilter, packet: &Packet) -> bool {
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
pub(crate) fn addr_matches(want: &AddrMatch, family: u8, addr: &[u32; 4]) -> bool {
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
pub(crate) fn port_matches(range: &PortRange, has_ports: bool, port: u16) -> bool {
    range.is_any() || (has_ports && range.lo <= port && port <= range.hi)
}

/// Reads `buf.len()` bytes at `offset` from the network header.
#[inline(always)]
pub(crate) fn load_skb(skb: *mut __sk_buff, offset: u32, buf: &mut [u8]) -> bool {
    // SAFETY: the helper writes at most `buf.len()` bytes into `buf`.
    let ret = unsafe {
        bpf_skb_load_bytes_relative(
            skb as *const _,
            offset,
            buf.as_mut_ptr() as *mut _,
            buf.len() as u32,
            BPF_HDR_START_NET,
        )
    };
    ret == 0
}

/// Reads `N` bytes at `offset` from the start of the packet's data.
#[inline(always)]
pub(crate) fn load_abs<const N: usize>(skb: *mut __sk_buff, offset: u32) -> Option<[u8; N]> {
    let mut buf = [0u8; N];
    // SAFETY: the helper writes at most `N` bytes into `buf`.
    let ret = unsafe {
        bpf_skb_load_bytes(
            skb as *const _,
            offset,
            buf.as_mut_ptr() as *mut _,
            N as u32,
        )
    };
    if ret == 0 { Some(buf) } else { None }
}

#[inline(always)]
pub(crate) fn word(b: &[u8], at: usize) -> u32 {
    u32::from_ne_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

/// Reads the IP header and, when the packet carries one, the start of the TCP or UDP header,
/// through `load(offset from the network header, buffer)`. Non-IP packets, and IPv6 packets
/// behind extension headers, have no ports.
#[inline(always)]
pub(crate) fn parse(load: impl Fn(u32, &mut [u8]) -> bool) -> Option<Packet> {
    // Every IP header has at least 20 bytes: one load serves IPv4 whole and tells IPv6 apart.
    let mut h = [0u8; 20];
    if !load(0, &mut h) {
        return None;
    }
    let mut packet = Packet {
        family: 0,
        proto: PROTO_OTHER,
        has_ports: false,
        src: [0; 4],
        dst: [0; 4],
        sport: 0,
        dport: 0,
        l4_offset: 0,
        head: h,
    };
    let (l4, first_fragment) = match h[0] >> 4 {
        4 => {
            packet.family = FAMILY_V4;
            packet.src[0] = word(&h, 12);
            packet.dst[0] = word(&h, 16);
            packet.l4_offset = ((h[0] & 0x0f) as u32) * 4;
            let fragment_offset = u16::from_be_bytes([h[6], h[7]]) & 0x1fff;
            (h[9], fragment_offset == 0)
        }
        6 => {
            let mut h6 = [0u8; 40];
            if !load(0, &mut h6) {
                return None;
            }
            packet.family = FAMILY_V6;
            for i in 0..4 {
                packet.src[i] = word(&h6, 8 + i * 4);
                packet.dst[i] = word(&h6, 24 + i * 4);
            }
            packet.l4_offset = 40;
            (h6[6], true)
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
        let mut ports = [0u8; 4];
        if load(packet.l4_offset, &mut ports) {
            packet.has_ports = true;
            packet.sport = u16::from_be_bytes([ports[0], ports[1]]);
            packet.dport = u16::from_be_bytes([ports[2], ports[3]]);
        }
    }
    Some(packet)
}
