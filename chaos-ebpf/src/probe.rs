//! Programs that do nothing. `chaos-user doctor` loads two of them to learn whether this kernel
//! runs BPF trampolines (fentry) and BPF LSM programs, which the file and syscall faults build
//! on; `chaos-user bench-decide` runs the others as the baseline of its cost figures.
//!
//! Minimum kernel: 5.5 for fentry, 5.7 for lsm (CONFIG_BPF_LSM; the programs only run where
//! `bpf` is in the active LSM list).

use aya_ebpf::{
    macros::{fentry, lsm},
    programs::{FEntryContext, LsmContext},
};

#[fentry(function = "security_file_open")]
pub fn probe_fentry(_ctx: FEntryContext) -> i32 {
    0
}

#[lsm(hook = "file_open")]
pub fn probe_lsm(_ctx: LsmContext) -> i32 {
    0
}

/// Empty programs of the types `chaos-user bench-decide` runs through BPF_PROG_TEST_RUN: the
/// baseline that one decision of a real program is measured against.
mod empty {
    use aya_ebpf::{
        macros::{cgroup_skb, classifier, raw_tracepoint, xdp},
        programs::{RawTracePointContext, SkBuffContext, TcContext, XdpContext},
    };

    #[classifier]
    pub fn empty_tc(_ctx: TcContext) -> i32 {
        crate::packet::TC_NEXT
    }

    #[cgroup_skb]
    pub fn empty_skb(_ctx: SkBuffContext) -> i32 {
        crate::packet::CGROUP_SKB_PASS
    }

    #[xdp]
    pub fn empty_xdp(_ctx: XdpContext) -> u32 {
        aya_ebpf::bindings::xdp_action::XDP_PASS
    }

    #[raw_tracepoint(tracepoint = "sys_enter")]
    pub fn empty_raw_tp(_ctx: RawTracePointContext) -> i32 {
        0
    }
}
