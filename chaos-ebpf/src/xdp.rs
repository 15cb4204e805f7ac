//! `xdp-drop`: loss at XDP on one interface, whatever the cgroup.

use aya_ebpf::{
    bindings::xdp_action, helpers::bpf_xdp_load_bytes, macros::xdp, programs::XdpContext,
};
use chaos_common::{COUNTER_INGRESS, DIR_XDP};

use crate::{
    maps::TARGET,
    packet::{lose_first_match, parse},
};

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
