//! The cgroup_skb hooks of the target: `loss` at ingress, `bandwidth` and the DNS bookkeeping
//! at egress.

use aya_ebpf::{
    bindings::__sk_buff, helpers::bpf_get_socket_cookie, macros::cgroup_skb,
    programs::SkBuffContext,
};
use chaos_common::{
    ACTION_BANDWIDTH, COUNTER_EGRESS, COUNTER_INGRESS, DIR_INGRESS, MAX_PACKET_RULES,
    MAX_SOCK_RULES, PROTO_TCP, PacketRule, PeerKey, SOCK_DNS, Target,
};

use crate::{
    count,
    maps::{BUCKETS, DNS_ORIGINAL, DNS_PEERS, PACKET_COUNTERS, PACKET_RULES, SOCK_RULES, TARGET},
    now,
    packet::{
        CGROUP_SKB_CONGESTED, CGROUP_SKB_DROP, CGROUP_SKB_PASS, Packet, filter_matches, in_share,
        load_skb, lose_first_match, parse, rule_count,
    },
};

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
        let in_share = in_share(rule, &packet);
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
    // A drop with congestion: TCP slows down, and UDP, unless the socket asked for
    // IP_RECVERR, is told the datagram left, as a real bottleneck would.
    CGROUP_SKB_DROP | CGROUP_SKB_CONGESTED
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
