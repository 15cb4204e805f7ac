//! Socket faults at the cgroup socket-address hooks of the target: `connect` (fail with an
//! errno, or go elsewhere) and `dns` (the target's DNS traffic goes to chaos-user's responder,
//! and its answers appear to come from the resolver the target asked).
//!
//! Minimum kernel: 4.17 for connect4/6 and sendmsg4/6 (5.2 for recvmsg4/6, 5.7 for links);
//! `bpf_set_retval` 5.18. Where the helper is missing, a refused connect() fails with EPERM.

use aya_ebpf::{
    bindings::bpf_sock_addr,
    helpers::{bpf_get_socket_cookie, bpf_set_retval},
    macros::{cgroup_sock, cgroup_sock_addr},
    programs::{SockAddrContext, SockContext},
};
use chaos_common::{
    FAMILY_V4, FAMILY_V6, MAX_SOCK_RULES, OriginalDst, PROTO_TCP, PROTO_UDP, SOCK_CREATE, SOCK_DNS,
    SOCK_ERRNO, SOCK_REDIRECT, SockRule,
};

use crate::{
    count, draw,
    maps::{DNS_ORIGINAL, SOCK_COUNTERS, SOCK_RULES, TARGET},
    mix, now,
    packet::addr_matches,
};

const ALLOW: i32 = 1;
const REFUSE: i32 = 0;
const IPPROTO_TCP: u32 = 6;
const IPPROTO_UDP: u32 = 17;

/// `fd-limit`: socket() of the target fails with EMFILE, as when its descriptors run out.
///
/// Minimum kernel: 4.10 for sock_create; `bpf_set_retval` 5.18.
#[cgroup_sock(sock_create)]
pub fn chaos_sock_create(_ctx: SockContext) -> i32 {
    let Some(target) = TARGET.get(0) else {
        return ALLOW;
    };
    let now = now();
    for i in 0..MAX_SOCK_RULES {
        if i >= target.sock_rules {
            break;
        }
        let Some(rule) = SOCK_RULES.get(i) else {
            break;
        };
        if rule.action != SOCK_CREATE {
            continue;
        }
        let live = now < rule.deadline_ns;
        let act = live && draw(rule.threshold);
        count(SOCK_COUNTERS.get_ptr_mut(i), live, act);
        if act {
            // SAFETY: a plain helper call; the hook then refuses with this error.
            unsafe { bpf_set_retval(-(rule.errno as i32)) };
            return REFUSE;
        }
        return ALLOW;
    }
    ALLOW
}

#[cgroup_sock_addr(connect4)]
pub fn chaos_connect4(ctx: SockAddrContext) -> i32 {
    on_connect(ctx.sock_addr, FAMILY_V4, true)
}

#[cgroup_sock_addr(connect6)]
pub fn chaos_connect6(ctx: SockAddrContext) -> i32 {
    on_connect(ctx.sock_addr, FAMILY_V6, true)
}

/// A datagram sent with a destination of its own (an unconnected UDP socket): only `dns`
/// applies.
#[cgroup_sock_addr(sendmsg4)]
pub fn chaos_sendmsg4(ctx: SockAddrContext) -> i32 {
    on_connect(ctx.sock_addr, FAMILY_V4, false)
}

#[cgroup_sock_addr(sendmsg6)]
pub fn chaos_sendmsg6(ctx: SockAddrContext) -> i32 {
    on_connect(ctx.sock_addr, FAMILY_V6, false)
}

/// A datagram received: an answer from the DNS responder is shown as coming from the resolver
/// the socket asked.
#[cgroup_sock_addr(recvmsg4)]
pub fn chaos_recvmsg4(ctx: SockAddrContext) -> i32 {
    on_recvmsg(ctx.sock_addr, FAMILY_V4)
}

#[cgroup_sock_addr(recvmsg6)]
pub fn chaos_recvmsg6(ctx: SockAddrContext) -> i32 {
    on_recvmsg(ctx.sock_addr, FAMILY_V6)
}

/// getpeername() of a socket redirected to the DNS responder names the resolver it asked for
/// (over TCP, the only way a client sees its peer).
#[cgroup_sock_addr(getpeername4)]
pub fn chaos_getpeer4(ctx: SockAddrContext) -> i32 {
    on_recvmsg(ctx.sock_addr, FAMILY_V4)
}

#[cgroup_sock_addr(getpeername6)]
pub fn chaos_getpeer6(ctx: SockAddrContext) -> i32 {
    on_recvmsg(ctx.sock_addr, FAMILY_V6)
}

/// The destination as the hook carries it: address words in packet byte order and the port in
/// host order.
#[inline(always)]
fn destination(sa: *mut bpf_sock_addr, family: u8) -> ([u32; 4], u16) {
    // SAFETY: `sa` is the context pointer the kernel handed to this program; each field read is
    // one the hook allows.
    unsafe {
        let addr = if family == FAMILY_V4 {
            [(*sa).user_ip4, 0, 0, 0]
        } else {
            [
                core::ptr::read_volatile(&(*sa).user_ip6[0]),
                core::ptr::read_volatile(&(*sa).user_ip6[1]),
                core::ptr::read_volatile(&(*sa).user_ip6[2]),
                core::ptr::read_volatile(&(*sa).user_ip6[3]),
            ]
        };
        (addr, u16::from_be((*sa).user_port as u16))
    }
}

#[inline(always)]
fn set_destination(sa: *mut bpf_sock_addr, family: u8, addr: &[u32; 4], port_be: u16) {
    // SAFETY: as above; the hook allows writing the destination.
    unsafe {
        if family == FAMILY_V4 {
            (*sa).user_ip4 = addr[0];
        } else {
            // One store per word: the verifier allows no pointer arithmetic on the context.
            core::ptr::write_volatile(&mut (*sa).user_ip6[0], addr[0]);
            core::ptr::write_volatile(&mut (*sa).user_ip6[1], addr[1]);
            core::ptr::write_volatile(&mut (*sa).user_ip6[2], addr[2]);
            core::ptr::write_volatile(&mut (*sa).user_ip6[3], addr[3]);
        }
        (*sa).user_port = port_be as u32;
    }
}

/// The third word of an IPv4-mapped IPv6 address (`::ffff:a.b.c.d`), in packet byte order.
const MAPPED: u32 = u32::from_ne_bytes([0, 0, 0xff, 0xff]);

/// The address as the rules see it: an IPv4-mapped address on an IPv6 socket (a dual-stack
/// socket talking IPv4, as Java's are) is the IPv4 address it stands for.
#[inline(always)]
fn unmapped(family: u8, addr: &[u32; 4]) -> (u8, [u32; 4]) {
    if family == FAMILY_V6 && addr[0] == 0 && addr[1] == 0 && addr[2] == MAPPED {
        (FAMILY_V4, [addr[3], 0, 0, 0])
    } else {
        (family, *addr)
    }
}

/// Sends the socket to a rule's address: as it is, or IPv4-mapped on an IPv6 socket.
#[inline(always)]
fn redirect(sa: *mut bpf_sock_addr, family: u8, rule: &SockRule) {
    if family == FAMILY_V6 && rule.redirect_family == FAMILY_V4 {
        let mapped = [0, 0, MAPPED, rule.redirect_addr[0]];
        set_destination(sa, family, &mapped, rule.redirect_port);
    } else {
        set_destination(sa, family, &rule.redirect_addr, rule.redirect_port);
    }
}

#[inline(always)]
fn on_connect(sa: *mut bpf_sock_addr, family: u8, connect: bool) -> i32 {
    let Some(target) = TARGET.get(0) else {
        return ALLOW;
    };
    if target.sock_rules == 0 {
        return ALLOW;
    }
    // SAFETY: as in `destination`.
    let proto = match unsafe { (*sa).protocol } {
        IPPROTO_TCP => PROTO_TCP,
        IPPROTO_UDP => PROTO_UDP,
        _ => return ALLOW,
    };
    let (addr, port) = destination(sa, family);
    let (seen_family, seen) = unmapped(family, &addr);
    let hash = mix(&[seen[0], seen[1], seen[2], seen[3], port as u32]);
    let now = now();
    for i in 0..MAX_SOCK_RULES {
        if i >= target.sock_rules {
            break;
        }
        let Some(rule) = SOCK_RULES.get(i) else {
            break;
        };
        if rule.action == SOCK_CREATE
            || !rule_matches(rule, seen_family, proto, &seen, port)
            || (!connect && rule.action != SOCK_DNS)
        {
            continue;
        }
        let live = now < rule.deadline_ns;
        let act = live && (hash as u64) < rule.flow_threshold && draw(rule.threshold);
        count(SOCK_COUNTERS.get_ptr_mut(i), live, act);
        if !act {
            return ALLOW;
        }
        return match rule.action {
            SOCK_ERRNO => {
                // SAFETY: a plain helper call; the hook then refuses with this error.
                unsafe { bpf_set_retval(-(rule.errno as i32)) };
                REFUSE
            }
            SOCK_REDIRECT if rule.redirect_family == seen_family => {
                redirect(sa, family, rule);
                ALLOW
            }
            SOCK_DNS if rule.redirect_family == seen_family => {
                let original = OriginalDst {
                    addr,
                    port: port.to_be(),
                    family,
                    _pad: 0,
                };
                // SAFETY: `sa` is this program's context; the cookie is that of its socket.
                let cookie = unsafe { bpf_get_socket_cookie(sa as *mut _) };
                if DNS_ORIGINAL.insert(&cookie, &original, 0).is_ok() {
                    redirect(sa, family, rule);
                }
                ALLOW
            }
            _ => ALLOW,
        };
    }
    ALLOW
}

#[inline(always)]
fn rule_matches(rule: &SockRule, family: u8, proto: u8, addr: &[u32; 4], port: u16) -> bool {
    (rule.proto == 0 || rule.proto == proto)
        && addr_matches(&rule.dst, family, addr)
        && rule.dport.lo <= port
        && port <= rule.dport.hi
}

#[inline(always)]
fn on_recvmsg(sa: *mut bpf_sock_addr, family: u8) -> i32 {
    let Some(target) = TARGET.get(0) else {
        return ALLOW;
    };
    if target.sock_rules == 0 {
        return ALLOW;
    }
    // SAFETY: `sa` is this program's context; the cookie is that of its socket.
    let cookie = unsafe { bpf_get_socket_cookie(sa as *mut _) };
    // SAFETY: a plain map read; the value is copied out at once.
    let Some(original) = (unsafe { DNS_ORIGINAL.get(&cookie) }).copied() else {
        return ALLOW;
    };
    let (addr, port) = destination(sa, family);
    let (seen_family, seen) = unmapped(family, &addr);
    for i in 0..MAX_SOCK_RULES {
        if i >= target.sock_rules {
            break;
        }
        let Some(rule) = SOCK_RULES.get(i) else {
            break;
        };
        if rule.action == SOCK_DNS
            && rule.redirect_family == seen_family
            && rule.redirect_addr == seen
            && u16::from_be(rule.redirect_port) == port
        {
            // A dual-stack socket's datagram to an IPv4-mapped resolver passes the IPv4 hooks
            // on the way out: its original is IPv4, shown mapped again on the way in.
            if original.family == family {
                set_destination(sa, family, &original.addr, original.port);
            } else if family == FAMILY_V6 && original.family == FAMILY_V4 {
                let mapped = [0, 0, MAPPED, original.addr[0]];
                set_destination(sa, family, &mapped, original.port);
            }
            break;
        }
    }
    ALLOW
}
