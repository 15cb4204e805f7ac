//! The kernel programs of chaos-user, one module per hook family.
#![no_std]
#![no_main]
// BPF's atomic fetch-add has no counterpart in `core`: `crash` counts with inline assembly.
#![feature(asm_experimental_arch)]

mod cgroup_skb;
mod crash;
mod device;
mod hooks;
mod maps;
mod pacing;
mod packet;
mod probe;
mod sock;
mod tc;
mod xdp;

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    // The verifier rejects any program that could reach this; it exists to satisfy `no_std`.
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";

/// Counts one decision of a rule in a per-CPU counter record.
#[inline(always)]
fn count(counters: Option<*mut chaos_common::RuleCounters>, live: bool, acted: bool) {
    if let Some(counters) = counters {
        // SAFETY: a per-CPU map value, written only by this CPU while this program runs.
        let counters = unsafe { &mut *counters };
        counters.matched += 1;
        if acted {
            counters.injected += 1;
        } else if live {
            counters.passed += 1;
        } else {
            counters.expired += 1;
        }
    }
}

/// A uniform draw against a threshold out of `1 << 32`.
#[inline(always)]
fn draw(threshold: u64) -> bool {
    // SAFETY: a plain helper call without arguments.
    (unsafe { aya_ebpf::helpers::bpf_get_prandom_u32() } as u64) < threshold
}

/// `bpf_ktime_get_ns()`, the clock of every rule's deadline.
#[inline(always)]
fn now() -> u64 {
    // SAFETY: a plain helper call without arguments.
    unsafe { aya_ebpf::helpers::bpf_ktime_get_ns() }
}

/// A stable 32-bit hash of words (a flow's addresses and ports): the same flow always lands
/// on the same side of a `flows=` share.
#[inline(always)]
fn mix(words: &[u32]) -> u32 {
    let mut h: u32 = 0x9e37_79b9;
    for w in words {
        h ^= *w;
        h = h.wrapping_mul(0x85eb_ca6b);
        h ^= h >> 13;
        h = h.wrapping_mul(0xc2b2_ae35);
        h ^= h >> 16;
    }
    h
}

/// Whether a rule with this schedule (`SCHEDULE_*`) acts on this call. `counter` is the rule's
/// slot in `CALL_COUNTS`.
#[inline(always)]
fn scheduled(mode: u8, threshold: u64, every: u64, counter: u32) -> bool {
    match mode {
        chaos_common::SCHEDULE_DRAW => draw(threshold),
        chaos_common::SCHEDULE_NTH => call_number(counter) == Some(every),
        chaos_common::SCHEDULE_EVERY => {
            call_number(counter).is_some_and(|n| n.checked_rem(every) == Some(0))
        }
        _ => false,
    }
}

/// This call's number among the calling process's matching calls of rule `rule`, from 1.
#[inline(always)]
fn call_number(rule: u32) -> Option<u64> {
    let tgid = (aya_ebpf::helpers::bpf_get_current_pid_tgid() >> 32) as u32;
    let key = chaos_common::CallKey { rule, tgid };
    let counter = match maps::CALL_COUNTS.get_ptr_mut(&key) {
        Some(counter) => counter,
        None => {
            // Another thread of the process may win the race to create it; either way it
            // exists afterwards.
            let _ = maps::CALL_COUNTS.insert(&key, &0, aya_ebpf::bindings::BPF_NOEXIST as u64);
            maps::CALL_COUNTS.get_ptr_mut(&key)?
        }
    };
    Some(fetch_add(counter, 1) + 1)
}

/// Adds `value` to `*counter` with one atomic instruction and returns what it held before.
/// Rust's `core` has no atomic read-modify-write for BPF; the instruction is BPF's own.
#[inline(always)]
fn fetch_add(counter: *mut u64, value: u64) -> u64 {
    let mut value = value;
    // SAFETY: `counter` points at a map value this program holds; the instruction adds to it
    // atomically and leaves the old value in the register.
    unsafe {
        core::arch::asm!(
            "{0} = atomic_fetch_add((u64 *)({1} + 0), {0})",
            inout(reg) value,
            in(reg) counter,
        );
    }
    value
}
