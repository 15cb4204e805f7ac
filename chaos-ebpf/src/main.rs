//! The kernel programs of chaos-user, one module per hook family.
#![no_std]
#![no_main]
// BPF's atomic fetch-add has no counterpart in `core`: `crash` counts with inline assembly.
#![feature(asm_experimental_arch)]

mod cgroup_skb;
mod crash;
mod device;
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
