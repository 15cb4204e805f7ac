//! Packet faults: `loss`, `delay`, `corrupt` and `duplicate` at tc egress (every interface),
//! `loss` at cgroup_skb ingress (the target), `bandwidth` at cgroup_skb egress (the target),
//! and `xdp-drop` at XDP on one interface.
//!
//! The skb programs read the packet from its network header with
//! `bpf_skb_load_bytes_relative`, so one parser serves interfaces with and without a
//! link-layer header and the cgroup hooks, which see no link-layer header at all. Every error
//! passes the packet: a fault injector must never fail closed by accident.

use aya_ebpf::{
    bindings::{
        __sk_buff, BPF_F_MARK_MANGLED_0, BPF_F_RECOMPUTE_CSUM, BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB,
        BPF_SOCK_OPS_PASSIVE_ESTABLISHED_CB, BPF_SOCK_OPS_RTT_CB, BPF_SOCK_OPS_RTT_CB_FLAG,
        SO_MAX_PACING_RATE, SOL_SOCKET, TC_ACT_STOLEN, TC_ACT_UNSPEC,
        bpf_hdr_start_off::BPF_HDR_START_NET, xdp_action,
    },
    helpers::{
        bpf_clone_redirect, bpf_get_prandom_u32, bpf_get_socket_cookie, bpf_l4_csum_replace,
        bpf_redirect, bpf_setsockopt, bpf_skb_ancestor_cgroup_id, bpf_skb_load_bytes,
        bpf_skb_load_bytes_relative, bpf_skb_store_bytes, bpf_xdp_load_bytes,
    },
    macros::{cgroup_skb, classifier, sock_ops, xdp},
    programs::{SkBuffContext, SockOpsContext, TcContext, XdpContext},
};
use core::ptr::read_volatile;

use chaos_common::{
    ACTION_BANDWIDTH, ACTION_CORRUPT, ACTION_DELAY, ACTION_DUPLICATE, ACTION_LOSS, AddrMatch,
    COUNTER_EGRESS, COUNTER_INGRESS, DIR_EGRESS, DIR_INGRESS, DIR_XDP, FAMILY_ANY, FAMILY_V4,
    FAMILY_V6, FlowKey, MAX_PACKET_RULES, MAX_SOCK_RULES, MODEL_GILBERT, PROTO_ANY, PROTO_ICMP,
    PROTO_TCP, PROTO_UDP, PacketFilter, PacketRule, PeerKey, PortRange, SOCK_DNS, Target,
    VERDICT_STOLEN,
};

use crate::{
    count, draw,
    maps::{
        BUCKETS, DNS_ORIGINAL, DNS_PEERS, FLOW_STATE, PACKET_COUNTERS, PACKET_RULES, SOCK_RULES,
        TARGET,
    },
    mix, now,
};

/// tcx: "go on with the next program, then the default"; under clsact the same value means
/// "no verdict", which also lets the packet through.
const TC_NEXT: i32 = TC_ACT_UNSPEC;
const CGROUP_SKB_PASS: i32 = 1;
const CGROUP_SKB_DROP: i32 = 0;
/// cgroup_skb egress: bit 1 of the verdict tells TCP of congestion, as a full queue would.
const CGROUP_SKB_CONGESTED: i32 = 2;
const AF_INET: u32 = 2;
const AF_INET6: u32 = 10;
/// A protocol no filter value names; only `proto=any` matches it.
const PROTO_OTHER: u8 = 0xff;
/// Marks the copy that `duplicate` sends, so that the copy is not acted on again.
const DUPLICATE_MARK: u32 = 0xc4a0_5d0b;
/// The most bytes `corrupt` flips in one packet (the spec grammar enforces it too).
const MAX_CORRUPT_BYTES: u32 = 64;

/// What the filters look at, read once per packet.
struct Packet {
    family: u8,
    proto: u8,
    has_ports: bool,
    src: [u32; 4],
    dst: [u32; 4],
    sport: u16,
    dport: u16,
    /// Offset of the transport header from the network header.
    l4_offset: u32,
    /// The packet's first 20 bytes from the network header, to find where that header starts.
    head: [u8; 20],
}

impl Packet {
    /// The flow's hash: addresses, ports and protocol, the same for every packet of a flow.
    #[inline(always)]
    fn flow_hash(&self) -> u32 {
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

/// Packet faults at tc egress, attached to every interface; matches by the sending socket's
/// cgroup.
///
/// Minimum kernel: 4.18 for `bpf_skb_ancestor_cgroup_id` (CONFIG_CGROUP_BPF, CONFIG_NET_CLS_BPF
/// for clsact); tcx links need 6.6.
#[classifier]
pub fn chaos_egress(ctx: TcContext) -> i32 {
    let skb = ctx.skb.skb;
    // SAFETY: `skb` is the context pointer the kernel handed to this program; `cb` is scratch
    // space that the tc layer leaves to programs.
    unsafe {
        if (*skb).cb[0] == DUPLICATE_MARK {
            (*skb).cb[0] = 0;
            return TC_NEXT;
        }
    }
    let Some(target) = TARGET.get(0) else {
        return TC_NEXT;
    };
    if target.packet_rules == 0 {
        return TC_NEXT;
    }
    // SAFETY: as above.
    let cgroup = unsafe { bpf_skb_ancestor_cgroup_id(skb, target.level as i32) };
    if cgroup != target.cgroup_id {
        return TC_NEXT;
    }
    let Some(packet) = parse(|offset, buf: &mut [u8]| load_skb(skb, offset, buf)) else {
        return TC_NEXT;
    };
    let hash = packet.flow_hash();
    let now = now();
    // One rule per action: the first whose filter matches.
    let mut done = 0u32;
    for i in 0..MAX_PACKET_RULES {
        if i >= rule_count(target) {
            break;
        }
        let Some(rule) = PACKET_RULES.get(i) else {
            break;
        };
        let bit = 1u32 << (rule.action & 31);
        if rule.dirs & DIR_EGRESS == 0
            || rule.action == ACTION_BANDWIDTH
            || done & bit != 0
            || !filter_matches(&rule.filter, &packet)
        {
            continue;
        }
        done |= bit;
        let live = now < rule.deadline_ns;
        let act = live && decide(rule, i, hash);
        count(
            PACKET_COUNTERS.get_ptr_mut(i * 2 + COUNTER_EGRESS),
            live,
            act,
        );
        if !act {
            continue;
        }
        match rule.action {
            ACTION_LOSS => return lost(target),
            ACTION_DELAY => delay(skb, rule, now),
            ACTION_CORRUPT => corrupt(skb, rule, &packet),
            ACTION_DUPLICATE => duplicate(skb),
            _ => {}
        }
    }
    TC_NEXT
}

/// The verdict that makes a packet vanish while its sender is told it left.
#[inline(always)]
fn lost(target: &Target) -> i32 {
    if target.egress_verdict == VERDICT_STOLEN {
        return TC_ACT_STOLEN;
    }
    // SAFETY: a plain helper call; index 0 is never a device, so the kernel frees the packet
    // after this program and reports it to the sender as sent.
    unsafe { bpf_redirect(0, 0) as i32 }
}

/// Stamps a departure time `delay ± jitter` from now (or from the time the stack already
/// stamped, whichever is later); the `fq` qdisc holds the packet until then.
#[inline(always)]
fn delay(skb: *mut __sk_buff, rule: &PacketRule, now: u64) {
    let mut wait = rule.delay_ns;
    if rule.jitter_ns > 0 {
        let span = rule.jitter_ns * 2 + 1;
        // SAFETY: a plain helper call without arguments.
        let offset = (unsafe { bpf_get_prandom_u32() } as u64)
            .checked_rem(span)
            .unwrap_or(0);
        wait = wait + offset - rule.jitter_ns;
    }
    // SAFETY: `skb` is this program's context; tc egress may write the departure time.
    unsafe {
        let stamped = (*skb).tstamp;
        let base = if stamped > now { stamped } else { now };
        (*skb).tstamp = base + wait;
    }
}

/// Sends a copy of the packet out of the same interface; the copy carries a mark so that this
/// program lets it pass untouched.
#[inline(always)]
fn duplicate(skb: *mut __sk_buff) {
    // SAFETY: `skb` is this program's context; the helper clones it and queues the clone.
    unsafe {
        (*skb).cb[0] = DUPLICATE_MARK;
        bpf_clone_redirect(skb, (*skb).ifindex, 0);
        (*skb).cb[0] = 0;
    }
}

/// Flips `corrupt_bytes` bytes of the transport payload at random places and fixes the
/// transport checksum to match, so that the packet arrives and its data is wrong.
#[inline(always)]
fn corrupt(skb: *mut __sk_buff, rule: &PacketRule, packet: &Packet) {
    if !packet.has_ports {
        return;
    }
    // Where the network header starts: after an Ethernet header, or at once on interfaces
    // without a link layer.
    let net = if load_abs::<20>(skb, 14).is_some_and(|h| h == packet.head) {
        14
    } else if load_abs::<20>(skb, 0).is_some_and(|h| h == packet.head) {
        0
    } else {
        return;
    };
    let l4 = net + packet.l4_offset;
    let (header_len, csum_at, flags) = if packet.proto == PROTO_TCP {
        let Some(b) = load_abs::<1>(skb, l4 + 12) else {
            return;
        };
        ((b[0] >> 4) as u32 * 4, l4 + 16, 0)
    } else {
        (8, l4 + 6, BPF_F_MARK_MANGLED_0 as u64)
    };
    // SAFETY: `skb` is this program's context.
    let len = unsafe { (*skb).len };
    let payload = l4 + header_len;
    if len <= payload + 1 {
        return;
    }
    let words = (len - payload) / 2;
    for i in 0..MAX_CORRUPT_BYTES {
        if i >= rule.corrupt_bytes as u32 {
            break;
        }
        // SAFETY: plain helper calls without arguments.
        let (r1, r2) = unsafe { (bpf_get_prandom_u32(), bpf_get_prandom_u32()) };
        // Words counted from the transport header, where the checksum's words start.
        let at = payload + r1.checked_rem(words).unwrap_or(0) * 2;
        let Some(old) = load_abs::<2>(skb, at) else {
            return;
        };
        let flip = ((r2 >> 8) as u8) | 1;
        // Which byte of the word: chosen by arithmetic, not by index, which the verifier
        // would see as pointer arithmetic with a bit operation.
        let word = u16::from_ne_bytes(old) ^ ((flip as u16) << ((r2 & 1) * 8));
        let new = word.to_ne_bytes();
        // SAFETY: the helpers write two bytes inside the packet and adjust its checksum.
        unsafe {
            if bpf_skb_store_bytes(
                skb,
                at,
                new.as_ptr() as *const _,
                2,
                BPF_F_RECOMPUTE_CSUM as u64,
            ) != 0
            {
                return;
            }
            bpf_l4_csum_replace(
                skb,
                csum_at,
                u16::from_ne_bytes(old) as u64,
                u16::from_ne_bytes(new) as u64,
                flags | 2,
            );
        }
    }
}

/// `loss` at cgroup_skb ingress, attached to the target cgroup (descendants inherit it).
///
/// Minimum kernel: 4.10 (CONFIG_CGROUP_BPF); links need 5.7.
#[cgroup_skb(ingress)]
pub fn chaos_ingress(ctx: SkBuffContext) -> i32 {
    let skb = ctx.skb.skb;
    let Some(target) = TARGET.get(0) else {
        return CGROUP_SKB_PASS;
    };
    if target.packet_rules == 0 {
        return CGROUP_SKB_PASS;
    }
    let Some(packet) = parse(|offset, buf: &mut [u8]| load_skb(skb, offset, buf)) else {
        return CGROUP_SKB_PASS;
    };
    if lose_first_match(target, &packet, DIR_INGRESS, COUNTER_INGRESS) {
        CGROUP_SKB_DROP
    } else {
        CGROUP_SKB_PASS
    }
}

/// `bandwidth` at cgroup_skb egress of the target, and the bookkeeping that lets the DNS
/// responder find the resolver a redirected query was meant for.
///
/// Minimum kernel: 4.10 (CONFIG_CGROUP_BPF); the congestion verdict 5.0; links need 5.7.
#[cgroup_skb(egress)]
pub fn chaos_cg_egress(ctx: SkBuffContext) -> i32 {
    let skb = ctx.skb.skb;
    let Some(target) = TARGET.get(0) else {
        return CGROUP_SKB_PASS;
    };
    let Some(packet) = parse(|offset, buf: &mut [u8]| load_skb(skb, offset, buf)) else {
        return CGROUP_SKB_PASS;
    };
    if target.sock_rules > 0 {
        note_dns_peer(skb, target, &packet);
    }
    if target.packet_rules == 0 {
        return CGROUP_SKB_PASS;
    }
    let hash = packet.flow_hash();
    let now = now();
    for i in 0..MAX_PACKET_RULES {
        if i >= rule_count(target) {
            break;
        }
        let Some(rule) = PACKET_RULES.get(i) else {
            break;
        };
        if rule.action != ACTION_BANDWIDTH || !filter_matches(&rule.filter, &packet) {
            continue;
        }
        let live = now < rule.deadline_ns;
        let in_share = (hash as u64) < rule.flow_threshold;
        // SAFETY: `skb` is this program's context.
        let len = unsafe { (*skb).len } as u64;
        let verdict = if live && in_share {
            police(rule, i, now, len, packet.proto == PROTO_TCP)
        } else {
            CGROUP_SKB_PASS
        };
        let held = verdict != CGROUP_SKB_PASS;
        count(
            PACKET_COUNTERS.get_ptr_mut(i * 2 + COUNTER_EGRESS),
            live,
            held,
        );
        return verdict;
    }
    CGROUP_SKB_PASS
}

/// `bandwidth` for TCP: a connection of the target that matches a live rule paces itself at
/// the rate (the kernel's own TCP pacing, which needs no qdisc), so that it fits the token
/// bucket instead of stalling on its drops. Once no live rule matches (the deadline passed),
/// the next round-trip callback lifts the cap.
///
/// Minimum kernel: 4.13 (sock_ops and SO_MAX_PACING_RATE; internal pacing 4.20); links 5.7.
#[sock_ops]
pub fn chaos_sock_ops(ctx: SockOpsContext) -> u32 {
    let op = ctx.op();
    if op != BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB
        && op != BPF_SOCK_OPS_PASSIVE_ESTABLISHED_CB
        && op != BPF_SOCK_OPS_RTT_CB
    {
        return 1;
    }
    let family = match ctx.family() {
        AF_INET => FAMILY_V4,
        AF_INET6 => FAMILY_V6,
        _ => return 1,
    };
    let ops = ctx.ops;
    // SAFETY: `ops` is this program's context. Each field is read on its own, at a fixed
    // offset: the verifier refuses a context pointer that the compiler has moved.
    let (src, dst, sport, dport) = unsafe {
        let (src, dst) = if family == FAMILY_V4 {
            (
                [read_volatile(&(*ops).local_ip4), 0, 0, 0],
                [read_volatile(&(*ops).remote_ip4), 0, 0, 0],
            )
        } else {
            (
                [
                    read_volatile(&(*ops).local_ip6[0]),
                    read_volatile(&(*ops).local_ip6[1]),
                    read_volatile(&(*ops).local_ip6[2]),
                    read_volatile(&(*ops).local_ip6[3]),
                ],
                [
                    read_volatile(&(*ops).remote_ip6[0]),
                    read_volatile(&(*ops).remote_ip6[1]),
                    read_volatile(&(*ops).remote_ip6[2]),
                    read_volatile(&(*ops).remote_ip6[3]),
                ],
            )
        };
        (
            src,
            dst,
            read_volatile(&(*ops).local_port),
            read_volatile(&(*ops).remote_port),
        )
    };
    let packet = Packet {
        family,
        proto: PROTO_TCP,
        has_ports: true,
        src,
        dst,
        sport: sport as u16,
        // The remote port in network byte order, in the upper half of the word.
        dport: u16::from_be((dport >> 16) as u16),
        l4_offset: 0,
        head: [0; 20],
    };
    let mut rate: u32 = u32::MAX;
    if let Some(target) = TARGET.get(0) {
        let hash = packet.flow_hash();
        let now = now();
        for i in 0..MAX_PACKET_RULES {
            if i >= rule_count(target) {
                break;
            }
            let Some(rule) = PACKET_RULES.get(i) else {
                break;
            };
            if rule.action == ACTION_BANDWIDTH
                && now < rule.deadline_ns
                && (hash as u64) < rule.flow_threshold
                && filter_matches(&rule.filter, &packet)
            {
                rate = if rule.rate_bytes < u32::MAX as u64 {
                    rule.rate_bytes as u32
                } else {
                    u32::MAX - 1
                };
                break;
            }
        }
    }
    if op == BPF_SOCK_OPS_RTT_CB && rate != u32::MAX {
        return 1;
    }
    if op != BPF_SOCK_OPS_RTT_CB && rate == u32::MAX {
        return 1;
    }
    // SAFETY: `ctx.ops` is this program's context; the option value lives on this stack.
    unsafe {
        bpf_setsockopt(
            ctx.ops as *mut _,
            SOL_SOCKET as i32,
            SO_MAX_PACING_RATE as i32,
            &mut rate as *mut u32 as *mut _,
            4,
        );
    }
    // Round-trip callbacks while capped, so that the cap goes when the rule does.
    let flags = if rate == u32::MAX {
        0
    } else {
        BPF_SOCK_OPS_RTT_CB_FLAG as i32
    };
    let _ = ctx.set_cb_flags(flags);
    1
}

/// The token bucket: bytes are paid for at `rate` per second, `burst` bytes may be sent ahead
/// of time. A packet that finds the bucket empty is dropped; TCP is told of congestion too, and
/// may run a little into debt while it slows down.
#[inline(always)]
fn police(rule: &PacketRule, i: u32, now: u64, len: u64, tcp: bool) -> i32 {
    let Some(bucket) = BUCKETS.get_ptr_mut(i) else {
        return CGROUP_SKB_PASS;
    };
    let rate = rule.rate_bytes;
    // The spec grammar bounds the burst to 1 GiB and a packet is at most 4 GiB: no overflow.
    let burst_ns = (rule.burst_bytes * 1_000_000_000)
        .checked_div(rate)
        .unwrap_or(0);
    let cost_ns = (len * 1_000_000_000).checked_div(rate).unwrap_or(0);
    // SAFETY: an array map value of this rule; a race between CPUs can only let a packet
    // through early or late, never make the program misbehave.
    let bucket = unsafe { &mut *bucket };
    let floor = now.saturating_sub(burst_ns);
    let paid = if bucket.paid_until_ns < floor {
        floor
    } else {
        bucket.paid_until_ns
    };
    if paid <= now {
        bucket.paid_until_ns = paid + cost_ns;
        return CGROUP_SKB_PASS;
    }
    if tcp && paid - now <= burst_ns {
        bucket.paid_until_ns = paid + cost_ns;
        return CGROUP_SKB_PASS;
    }
    if tcp {
        CGROUP_SKB_DROP | CGROUP_SKB_CONGESTED
    } else {
        CGROUP_SKB_DROP
    }
}

/// When a packet goes to the DNS responder, records by the client's port where its socket
/// meant to send it.
#[inline(always)]
fn note_dns_peer(skb: *mut __sk_buff, target: &Target, packet: &Packet) {
    if !packet.has_ports {
        return;
    }
    for i in 0..MAX_SOCK_RULES {
        if i >= target.sock_rules {
            break;
        }
        let Some(rule) = SOCK_RULES.get(i) else {
            return;
        };
        if rule.action != SOCK_DNS
            || rule.redirect_family != packet.family
            || u16::from_be(rule.redirect_port) != packet.dport
            || rule.redirect_addr != packet.dst
        {
            continue;
        }
        // SAFETY: `skb` is this program's context; the cookie is that of its socket.
        let cookie = unsafe { bpf_get_socket_cookie(skb as *mut _) };
        // SAFETY: a plain map read; the value is copied out at once.
        let Some(original) = (unsafe { DNS_ORIGINAL.get(&cookie) }).copied() else {
            return;
        };
        let key = PeerKey {
            port: packet.sport,
            proto: packet.proto,
            family: packet.family,
        };
        let _ = DNS_PEERS.insert(&key, &original, 0);
        return;
    }
}

/// `xdp-drop`: loss at XDP on one interface, for traffic that no cgroup sends.
///
/// Minimum kernel: 5.18 for `bpf_xdp_load_bytes`.
#[xdp]
pub fn chaos_xdp(ctx: XdpContext) -> u32 {
    let md = ctx.ctx;
    let Some(target) = TARGET.get(0) else {
        return xdp_action::XDP_PASS;
    };
    if target.packet_rules == 0 {
        return xdp_action::XDP_PASS;
    }
    let Some(packet) = parse(|offset, buf: &mut [u8]| {
        // SAFETY: the helper writes at most `buf.len()` bytes into `buf`.
        let ret = unsafe {
            bpf_xdp_load_bytes(
                md,
                14 + offset,
                buf.as_mut_ptr() as *mut _,
                buf.len() as u32,
            )
        };
        ret == 0
    }) else {
        return xdp_action::XDP_PASS;
    };
    if lose_first_match(target, &packet, DIR_XDP, COUNTER_INGRESS) {
        xdp_action::XDP_DROP
    } else {
        xdp_action::XDP_PASS
    }
}

/// Finds the first loss rule of this direction whose filter matches, counts, and decides.
#[inline(always)]
fn lose_first_match(target: &Target, packet: &Packet, dir: u8, counter: u32) -> bool {
    let hash = packet.flow_hash();
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
        let lose = live && decide(rule, i, hash);
        count(PACKET_COUNTERS.get_ptr_mut(i * 2 + counter), live, lose);
        return lose;
    }
    false
}

/// Whether a live rule acts on this packet: the flow must be in the rule's share, then the
/// draw (or the Gilbert model's state) decides.
#[inline(always)]
fn decide(rule: &PacketRule, i: u32, hash: u32) -> bool {
    if (hash as u64) >= rule.flow_threshold {
        return false;
    }
    if rule.model != MODEL_GILBERT {
        return draw(rule.threshold);
    }
    let key = FlowKey { rule: i, hash };
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
fn rule_count(target: &Target) -> u32 {
    if target.packet_rules < MAX_PACKET_RULES {
        target.packet_rules
    } else {
        MAX_PACKET_RULES
    }
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
fn port_matches(range: &PortRange, has_ports: bool, port: u16) -> bool {
    range.is_any() || (has_ports && range.lo <= port && port <= range.hi)
}

/// Reads `buf.len()` bytes at `offset` from the network header.
#[inline(always)]
fn load_skb(skb: *mut __sk_buff, offset: u32, buf: &mut [u8]) -> bool {
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
fn load_abs<const N: usize>(skb: *mut __sk_buff, offset: u32) -> Option<[u8; N]> {
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
fn word(b: &[u8], at: usize) -> u32 {
    u32::from_ne_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

/// Reads the IP header and, when the packet carries one, the start of the TCP or UDP header,
/// through `load(offset from the network header, buffer)`. Non-IP packets, and IPv6 packets
/// behind extension headers, have no ports.
#[inline(always)]
fn parse(load: impl Fn(u32, &mut [u8]) -> bool) -> Option<Packet> {
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
