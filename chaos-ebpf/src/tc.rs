//! tc egress on every interface: `loss`, `delay`, `corrupt` and `duplicate`, matched by the
//! sending socket's cgroup.

use aya_ebpf::{
    bindings::{__sk_buff, BPF_F_MARK_MANGLED_0, BPF_F_RECOMPUTE_CSUM, TC_ACT_STOLEN},
    helpers::{
        bpf_clone_redirect, bpf_get_prandom_u32, bpf_l4_csum_replace, bpf_redirect,
        bpf_skb_ancestor_cgroup_id, bpf_skb_store_bytes,
    },
    macros::classifier,
    programs::TcContext,
};
use chaos_common::{
    ACTION_BANDWIDTH, ACTION_CORRUPT, ACTION_DELAY, ACTION_DUPLICATE, ACTION_LOSS, COUNTER_EGRESS,
    DIR_EGRESS, MAX_PACKET_RULES, PROTO_TCP, PacketRule, Target, VERDICT_STOLEN,
};

use crate::{
    count,
    maps::{PACKET_COUNTERS, PACKET_RULES, TARGET},
    now,
    packet::{
        DUPLICATE_MARK, MAX_CORRUPT_BYTES, Packet, TC_NEXT, decide, filter_matches, load_abs,
        load_skb, parse, rule_count,
    },
};

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
        // `corrupt` matches only packets with a payload to damage.
        let place = if rule.action == ACTION_CORRUPT {
            match payload(skb, &packet) {
                Some(place) => Some(place),
                None => continue,
            }
        } else {
            None
        };
        done |= bit;
        let live = now < rule.deadline_ns;
        let act = live && decide(rule, i, &packet);
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
            ACTION_CORRUPT => {
                if let Some(place) = place {
                    corrupt(skb, rule, &place);
                }
            }
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

/// Where a packet's transport payload lies, in offsets from the start of its data.
struct Payload {
    /// The first payload byte.
    at: u32,
    /// How many bytes it has.
    len: u32,
    /// The transport checksum, and the flags its update takes.
    csum_at: u32,
    csum_flags: u64,
}

/// The TCP or UDP payload of a packet, if it has one.
#[inline(always)]
fn payload(skb: *mut __sk_buff, packet: &Packet) -> Option<Payload> {
    if !packet.has_ports {
        return None;
    }
    // Where the network header starts: after an Ethernet header, or at once on interfaces
    // without a link layer.
    let net = if load_abs::<20>(skb, 14).is_some_and(|h| h == packet.head) {
        14
    } else if load_abs::<20>(skb, 0).is_some_and(|h| h == packet.head) {
        0
    } else {
        return None;
    };
    let l4 = net + packet.l4_offset;
    let (header_len, csum_at, csum_flags) = if packet.proto == PROTO_TCP {
        let b = load_abs::<1>(skb, l4 + 12)?;
        ((b[0] >> 4) as u32 * 4, l4 + 16, 0)
    } else {
        (8, l4 + 6, BPF_F_MARK_MANGLED_0 as u64)
    };
    // SAFETY: `skb` is this program's context.
    let total = unsafe { (*skb).len };
    let at = l4 + header_len;
    if total <= at {
        return None;
    }
    Some(Payload {
        at,
        len: total - at,
        csum_at,
        csum_flags,
    })
}

/// Flips `corrupt_bytes` consecutive payload bytes (all of them, if there are fewer) from a
/// random place, and fixes the transport checksum to match: the packet arrives, and its data
/// is wrong in exactly that many bytes.
///
/// Its own function in the object: verified once, not in every place of the rule walk.
#[inline(never)]
fn corrupt(skb: *mut __sk_buff, rule: &PacketRule, place: &Payload) {
    let count = if (rule.corrupt_bytes as u32) < place.len {
        rule.corrupt_bytes as u32
    } else {
        place.len
    };
    // SAFETY: a plain helper call without arguments.
    let start = unsafe { bpf_get_prandom_u32() }
        .checked_rem(place.len - count + 1)
        .unwrap_or(0);
    // The checksum adds 16-bit words counted from the transport header, whose length is even:
    // a byte's word starts at the even offset below it. A last odd byte is the high half of a
    // word padded with zero, done after the loop so that the loop has one path.
    let mut last_odd_byte = false;
    for i in 0..MAX_CORRUPT_BYTES {
        if i >= count {
            break;
        }
        let offset = start + i;
        let word_at = offset & !1;
        if word_at + 1 >= place.len {
            last_odd_byte = true;
            break;
        }
        let Some(old) = load_abs::<2>(skb, place.at + word_at) else {
            return;
        };
        if !flip_byte(skb, place, word_at, old, (offset - word_at) * 8, 2) {
            return;
        }
    }
    if last_odd_byte {
        let word_at = place.len - 1;
        if let Some(b) = load_abs::<1>(skb, place.at + word_at) {
            flip_byte(skb, place, word_at, [b[0], 0], 0, 1);
        }
    }
}

/// Flips the byte at bit `shift` of the word `old` at `word_at` in the payload, writes `len`
/// bytes of it back and updates the checksum. False when the packet could not be written.
#[inline(always)]
fn flip_byte(
    skb: *mut __sk_buff,
    place: &Payload,
    word_at: u32,
    old: [u8; 2],
    shift: u32,
    len: u32,
) -> bool {
    // SAFETY: a plain helper call without arguments.
    let flip = (unsafe { bpf_get_prandom_u32() } as u8) | 1;
    // Which byte of the word: chosen by arithmetic, not by index, which the verifier would see
    // as pointer arithmetic with a bit operation.
    let new = (u16::from_le_bytes(old) ^ ((flip as u16) << (shift & 8))).to_le_bytes();
    // SAFETY: the helpers write inside the packet and adjust its checksum.
    unsafe {
        if bpf_skb_store_bytes(
            skb,
            place.at + word_at,
            new.as_ptr() as *const _,
            len,
            BPF_F_RECOMPUTE_CSUM as u64,
        ) != 0
        {
            return false;
        }
        bpf_l4_csum_replace(
            skb,
            place.csum_at,
            u16::from_ne_bytes(old) as u64,
            u16::from_ne_bytes(new) as u64,
            place.csum_flags | 2,
        );
    }
    true
}
