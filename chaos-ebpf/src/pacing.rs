//! `bandwidth` for TCP: the kernel's own pacing, set per connection from sock_ops.

use core::ptr::read_volatile;

use aya_ebpf::{
    bindings::{
        BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB, BPF_SOCK_OPS_PASSIVE_ESTABLISHED_CB,
        BPF_SOCK_OPS_RTT_CB, BPF_SOCK_OPS_RTT_CB_FLAG, SO_MAX_PACING_RATE, SOL_SOCKET,
    },
    helpers::bpf_setsockopt,
    macros::sock_ops,
    programs::SockOpsContext,
};
use chaos_common::{ACTION_BANDWIDTH, FAMILY_V4, FAMILY_V6, MAX_PACKET_RULES, PROTO_TCP};

use crate::{
    maps::{PACKET_RULES, TARGET},
    now,
    packet::{AF_INET, AF_INET6, Packet, filter_matches, in_share, rule_count},
};

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
                && in_share(rule, &packet)
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
