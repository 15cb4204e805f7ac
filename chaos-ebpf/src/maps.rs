//! The maps every program family shares. The user side finds them by these names.

use aya_ebpf::{
    macros::map,
    maps::{Array, HashMap, LruHashMap, LruPerCpuHashMap, PerCpuArray},
};
use chaos_common::{
    Bucket, CallKey, CallRule, CrashRule, DeviceRule, ErrorKey, FlowKey, KernelOffsets,
    MAX_CALL_RULES, MAX_CRASH_RULES, MAX_DEVICE_RULES, MAX_PACKET_RULES, MAX_PATHS, MAX_SOCK_RULES,
    OriginalDst, PacketRule, PathKey, PeerKey, RuleCounters, SockRule, Target,
};

/// The one target of this object and how many rules of each family are live.
#[map]
pub static TARGET: Array<Target> = Array::with_max_entries(1, 0);

#[map]
pub static PACKET_RULES: Array<PacketRule> = Array::with_max_entries(MAX_PACKET_RULES, 0);

/// Per packet rule and direction: index `rule * 2 + COUNTER_*`.
#[map]
pub static PACKET_COUNTERS: PerCpuArray<RuleCounters> =
    PerCpuArray::with_max_entries(MAX_PACKET_RULES * 2, 0);

/// The Gilbert model's state of each flow: 1 while the flow is in the bad state.
#[map]
pub static FLOW_STATE: LruHashMap<FlowKey, u32> = LruHashMap::with_max_entries(65536, 0);

/// One token bucket per `bandwidth` rule.
#[map]
pub static BUCKETS: Array<Bucket> = Array::with_max_entries(MAX_PACKET_RULES, 0);

#[map]
pub static SOCK_RULES: Array<SockRule> = Array::with_max_entries(MAX_SOCK_RULES, 0);

/// Per socket rule.
#[map]
pub static SOCK_COUNTERS: PerCpuArray<RuleCounters> =
    PerCpuArray::with_max_entries(MAX_SOCK_RULES, 0);

#[map]
pub static DEVICE_RULES: Array<DeviceRule> = Array::with_max_entries(MAX_DEVICE_RULES, 0);

/// Per device rule.
#[map]
pub static DEVICE_COUNTERS: PerCpuArray<RuleCounters> =
    PerCpuArray::with_max_entries(MAX_DEVICE_RULES, 0);

#[map]
pub static CRASH_RULES: Array<CrashRule> = Array::with_max_entries(MAX_CRASH_RULES, 0);

/// Per crash rule.
#[map]
pub static CRASH_COUNTERS: PerCpuArray<RuleCounters> =
    PerCpuArray::with_max_entries(MAX_CRASH_RULES, 0);

#[map]
pub static CALL_RULES: Array<CallRule> = Array::with_max_entries(MAX_CALL_RULES, 0);

/// Per call rule.
#[map]
pub static CALL_COUNTERS: PerCpuArray<RuleCounters> =
    PerCpuArray::with_max_entries(MAX_CALL_RULES, 0);

/// The directories of the call rules' `path=` prefixes, each with the bits of the rules that
/// name it.
#[map]
pub static PATHS: HashMap<PathKey, u32> = HashMap::with_max_entries(MAX_PATHS, 0);

/// Where the path walk finds the fields it reads, in the running kernel.
#[map]
pub static OFFSETS: Array<KernelOffsets> = Array::with_max_entries(1, 0);

/// Matching calls so far, per rule and process, added to atomically: exact whatever CPUs the
/// process's threads run on.
#[map]
pub static CALL_COUNTS: LruHashMap<CallKey, u64> = LruHashMap::with_max_entries(65536, 0);

/// The target's failed calls, by syscall and errno, per CPU.
#[map]
pub static SYSCALL_ERRORS: LruPerCpuHashMap<ErrorKey, u64> =
    LruPerCpuHashMap::with_max_entries(4096, 0);

/// Where each socket redirected to the DNS responder meant to go, by socket cookie.
#[map]
pub static DNS_ORIGINAL: LruHashMap<u64, OriginalDst> = LruHashMap::with_max_entries(16384, 0);

/// The same, by the client's port, for the responder to read.
#[map]
pub static DNS_PEERS: LruHashMap<PeerKey, OriginalDst> = LruHashMap::with_max_entries(16384, 0);
