//! `device`: access to device nodes of the target fails with a chosen errno (the cgroup v2
//! device hook).
//!
//! Minimum kernel: 4.15 for cgroup device programs; `bpf_set_retval` 5.18 (without it the
//! access fails with EPERM); links 5.7.

use aya_ebpf::{helpers::bpf_set_retval, macros::cgroup_device, programs::DeviceContext};
use chaos_common::{DEVICE_ANY_MINOR, MAX_DEVICE_RULES};

use crate::{
    count, draw,
    maps::{DEVICE_COUNTERS, DEVICE_RULES, TARGET},
    now,
};

const ALLOW: i32 = 1;
const REFUSE: i32 = 0;

#[cgroup_device]
pub fn chaos_device(ctx: DeviceContext) -> i32 {
    let Some(target) = TARGET.get(0) else {
        return ALLOW;
    };
    if target.device_rules == 0 {
        return ALLOW;
    }
    let dev = ctx.device;
    // SAFETY: `dev` is the context pointer the kernel handed to this program.
    let (access_type, major, minor) = unsafe { ((*dev).access_type, (*dev).major, (*dev).minor) };
    let kind = (access_type & 0xffff) as u8;
    let access = (access_type >> 16) as u8;
    let now = now();
    for i in 0..MAX_DEVICE_RULES {
        if i >= target.device_rules {
            break;
        }
        let Some(rule) = DEVICE_RULES.get(i) else {
            break;
        };
        let matches = (rule.kind == 0 || rule.kind == kind)
            && rule.major == major
            && (rule.minor == DEVICE_ANY_MINOR || rule.minor == minor)
            && (rule.access == 0 || rule.access & access != 0);
        if !matches {
            continue;
        }
        let live = now < rule.deadline_ns;
        let act = live && draw(rule.threshold);
        count(DEVICE_COUNTERS.get_ptr_mut(i), live, act);
        if act {
            // SAFETY: a plain helper call; the hook then refuses with this error.
            unsafe { bpf_set_retval(-(rule.errno as i32)) };
            return REFUSE;
        }
        return ALLOW;
    }
    ALLOW
}
