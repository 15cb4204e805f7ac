//! Programs that do nothing. `chaos-user doctor` loads them to learn whether this kernel runs
//! BPF trampolines (fentry) and BPF LSM programs, which the file and syscall faults build on.
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
