//! `crash`: a signal to a process of the target on its Nth call of a syscall, on every Nth, or
//! at random (the raw `sys_enter` tracepoint and `bpf_send_signal`). The call itself still
//! runs; the signal arrives on the way back to user space.
//!
//! Minimum kernel: 5.3 for `bpf_send_signal`; 5.12 for the atomic fetch-add that keeps counts
//! exact across CPUs.

use aya_ebpf::{
    bindings::pt_regs,
    helpers::{bpf_get_current_ancestor_cgroup_id, bpf_probe_read_kernel, bpf_send_signal},
    macros::raw_tracepoint,
    programs::RawTracePointContext,
};
use chaos_common::{ErrorKey, MAX_CRASH_RULES};

use crate::{
    count, hooks,
    maps::{CRASH_COUNTERS, CRASH_RULES, SYSCALL_ERRORS, TARGET},
    now, scheduled,
};

#[raw_tracepoint(tracepoint = "sys_enter")]
pub fn chaos_sys_enter(ctx: RawTracePointContext) -> i32 {
    let Some(target) = TARGET.get(0) else {
        return 0;
    };
    if target.crash_rules == 0 {
        return 0;
    }
    // SAFETY: a plain helper call; the level is the target's depth.
    let cgroup = unsafe { bpf_get_current_ancestor_cgroup_id(target.level as i32) };
    if cgroup != target.cgroup_id {
        return 0;
    }
    let syscall: u64 = ctx.arg(1);
    let now = now();
    for i in 0..MAX_CRASH_RULES {
        if i >= target.crash_rules {
            break;
        }
        let Some(rule) = CRASH_RULES.get(i) else {
            break;
        };
        if u64::from(rule.syscall) != syscall {
            continue;
        }
        if rule.path_bit != 0 && under_paths(ctx.arg(0)) & rule.path_bit == 0 {
            continue;
        }
        let live = now < rule.deadline_ns;
        let act = live && scheduled(rule.mode, rule.threshold, rule.count, i);
        count(CRASH_COUNTERS.get_ptr_mut(i), live, act);
        if act {
            // SAFETY: a plain helper call: the signal goes to the calling process.
            unsafe { bpf_send_signal(rule.signal) };
        }
        return 0;
    }
    0
}

/// The `path=` bits of the file behind the call's first argument, a descriptor.
#[inline(never)]
fn under_paths(regs: *const pt_regs) -> u32 {
    let Some(fd) = first_argument(regs) else {
        return 0;
    };
    let off = hooks::offsets();
    if off.valid == 0 {
        return 0;
    }
    let start = hooks::of_file(hooks::file_of_fd(fd, &off), &off);
    if start.dentry == 0 {
        return 0;
    }
    hooks::prefixes(start.dentry, start.mnt)
}

/// The first argument of the syscall being entered, from the saved registers.
#[inline(always)]
fn first_argument(regs: *const pt_regs) -> Option<u64> {
    #[cfg(bpf_target_arch = "x86_64")]
    {
        // SAFETY: the tracepoint's first argument is the task's saved registers; the helper
        // reads them safely whatever they hold.
        unsafe { bpf_probe_read_kernel(&(*regs).rdi) }.ok()
    }
    #[cfg(not(bpf_target_arch = "x86_64"))]
    {
        let _ = regs;
        None
    }
}

/// What the target then does: every failed call of its processes, counted by syscall and
/// errno, so that a report shows the application's own errors beside the injected ones.
///
/// Minimum kernel: 4.17 (raw tracepoints).
#[raw_tracepoint(tracepoint = "sys_exit")]
pub fn chaos_sys_exit(ctx: RawTracePointContext) -> i32 {
    let Some(target) = TARGET.get(0) else {
        return 0;
    };
    // SAFETY: a plain helper call; the level is the target's depth.
    let cgroup = unsafe { bpf_get_current_ancestor_cgroup_id(target.level as i32) };
    if cgroup != target.cgroup_id {
        return 0;
    }
    let ret: i64 = ctx.arg(1);
    if !(-4095..0).contains(&ret) {
        return 0;
    }
    // -1: no syscall (a signal's return path restarting one).
    let Some(syscall) = syscall_number(ctx.arg(0)).filter(|n| *n != u32::MAX) else {
        return 0;
    };
    let key = ErrorKey {
        syscall,
        errno: (-ret) as u32,
    };
    match SYSCALL_ERRORS.get_ptr_mut(&key) {
        // SAFETY: a per-CPU map value, written only by this CPU while this program runs.
        Some(count) => unsafe { *count += 1 },
        None => {
            let _ = SYSCALL_ERRORS.insert(&key, &1, 0);
        }
    }
    0
}

/// The number of the syscall that is returning, from the saved registers.
#[inline(always)]
fn syscall_number(regs: *const pt_regs) -> Option<u32> {
    #[cfg(bpf_target_arch = "x86_64")]
    {
        // SAFETY: the tracepoint's first argument is the task's saved registers; the helper
        // reads them safely whatever they hold.
        unsafe { bpf_probe_read_kernel(&(*regs).orig_rax) }
            .ok()
            .map(|n| n as u32)
    }
    #[cfg(not(bpf_target_arch = "x86_64"))]
    {
        let _ = regs;
        None
    }
}
