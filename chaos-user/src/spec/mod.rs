//! The fault spec grammar: `KIND[:key=value[,key=value...]]`, parsed by a pure function from
//! text to a typed spec, shared by the command line and scenario files.

use std::{
    net::{IpAddr, SocketAddr},
    time::Duration,
};

use ipnet::IpNet;
use serde::Serialize;

use crate::error::{Class, Classify};

mod parse;
mod text;
mod values;

pub use parse::{keys_of, parse_fault};

/// Text a user gave, as a message may quote it: what cannot be shown as itself escaped, and
/// cut after 80 characters.
pub fn shown(text: &str) -> String {
    let mut out = printable(&text.chars().take(80).collect::<String>());
    if text.chars().count() > 80 {
        out.push('…');
    }
    out
}

/// `text` with every character that cannot be shown as itself (a newline, an escape, U+202E)
/// written as an escape, the rest left as it is: a message stays one plain line.
pub fn printable(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        if parse::unprintable(c) {
            out.extend(c.escape_debug());
        } else {
            out.push(c);
        }
    }
    out
}
pub use values::{
    ERRNOS, FAIL_SYSCALLS, FD_SYSCALLS, MAX_DURATION, SYSCALLS, parse_duration, parse_errno,
    parse_net, parse_ports, parse_probability, parse_rate, parse_signal, parse_size, parse_syscall,
};

/// Fault kinds this build knows, as users write them.
pub const KINDS: &[&str] = &[
    "loss",
    "delay",
    "bandwidth",
    "corrupt",
    "duplicate",
    "connect",
    "reset",
    "dns",
    "xdp-drop",
    "pause",
    "device",
    "fd-limit",
    "crash",
    "file",
    "nospace",
    "fail",
    "disk-fill",
    "page-cache",
    "corrupt-file",
    "cpu-throttle",
    "cpu-hog",
    "memory-pressure",
    "memory-leak",
    "io-stress",
];

/// Why a fault spec or a duration was refused. Every variant is bad input (exit 2).
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum SpecError {
    /// The spec is empty.
    #[error("empty fault spec")]
    Empty,
    /// A character that cannot be shown as itself (a newline, an escape, U+202E), which no
    /// spec has.
    #[error("the spec has a control or invisible character (U+{code:04X}) at character {at}")]
    ControlCharacter { code: u32, at: usize },
    /// Longer than any real spec.
    #[error("the spec is {chars} characters long; a fault spec has at most {max}", max = parse::MAX_SPEC_CHARS)]
    TooLong { chars: usize },
    /// The kind before the colon is not one this build has.
    #[error("unknown fault kind `{0}`")]
    UnknownKind(String),
    /// An item between commas is not `key=value`.
    #[error("`{item}` in `{kind}` is not key=value")]
    NotKeyValue { kind: String, item: String },
    /// A key that this kind does not take.
    #[error("unknown key `{key}` for `{kind}`")]
    UnknownKey {
        kind: String,
        key: String,
        known: &'static [&'static str],
    },
    /// The same key twice.
    #[error("key `{key}` given twice in `{kind}`")]
    DuplicateKey { kind: String, key: String },
    /// A key this kind cannot do without.
    #[error("`{kind}` needs `{key}`")]
    MissingKey {
        kind: String,
        key: &'static str,
        example: &'static str,
    },
    /// `key=` with nothing after it.
    #[error("`{key}=` in `{kind}` has no value")]
    EmptyValue { kind: String, key: String },
    /// None of the keys that pick something (which calls a fault acts on) was given.
    #[error("`{kind}` needs one of {keys}")]
    MissingOneOf {
        kind: String,
        keys: &'static str,
        example: &'static str,
    },
    /// A value that does not parse or is out of range.
    #[error("bad value `{value}` for `{key}`: {expected}")]
    BadValue {
        key: String,
        value: String,
        expected: String,
    },
    /// Keys that parse alone but contradict each other.
    #[error("{0}")]
    Conflict(String),
}

impl Classify for SpecError {
    fn class(&self) -> Class {
        Class::BadInput
    }

    fn hint(&self) -> Option<String> {
        Some(match self {
            SpecError::Empty | SpecError::NotKeyValue { .. } => {
                "write a fault as KIND:key=value,key=value, for example `loss:p=0.1,dport=53`"
                    .to_string()
            }
            SpecError::UnknownKind(_) => format!("known kinds: {}", KINDS.join(", ")),
            SpecError::ControlCharacter { .. } | SpecError::TooLong { .. } => {
                "write the spec on one line, in printable characters".to_string()
            }
            SpecError::UnknownKey { known, .. } => format!("known keys: {}", known.join(", ")),
            SpecError::DuplicateKey { .. } => {
                "to add a second rule of the same kind, give a second --fault".to_string()
            }
            SpecError::MissingKey { example, .. } | SpecError::MissingOneOf { example, .. } => {
                format!("for example `{example}`")
            }
            SpecError::EmptyValue { .. } => {
                "give the key a value (`--help` lists what each kind takes)".to_string()
            }
            SpecError::BadValue { .. } | SpecError::Conflict(_) => return None,
        })
    }
}

/// One parsed `--fault`.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum FaultSpec {
    Loss(LossSpec),
    Delay(DelaySpec),
    Bandwidth(BandwidthSpec),
    Corrupt(CorruptSpec),
    Duplicate(DuplicateSpec),
    Connect(ConnectSpec),
    Reset(ResetSpec),
    Dns(DnsSpec),
    XdpDrop(XdpDropSpec),
    Pause(PauseSpec),
    Device(DeviceSpec),
    FdLimit(FdLimitSpec),
    Crash(CrashSpec),
    File(FileSpec),
    Nospace(NospaceSpec),
    Fail(FailSpec),
    DiskFill(DiskFillSpec),
    PageCache(PageCacheSpec),
    CorruptFile(CorruptFileSpec),
    CpuThrottle(CpuThrottleSpec),
    CpuHog(CpuHogSpec),
    MemoryPressure(MemoryPressureSpec),
    MemoryLeak(MemoryLeakSpec),
    IoStress(IoStressSpec),
}

impl FaultSpec {
    /// The kind as users write it.
    pub fn kind(&self) -> &'static str {
        match self {
            FaultSpec::Loss(_) => "loss",
            FaultSpec::Delay(_) => "delay",
            FaultSpec::Bandwidth(_) => "bandwidth",
            FaultSpec::Corrupt(_) => "corrupt",
            FaultSpec::Duplicate(_) => "duplicate",
            FaultSpec::Connect(_) => "connect",
            FaultSpec::Reset(_) => "reset",
            FaultSpec::Dns(_) => "dns",
            FaultSpec::XdpDrop(_) => "xdp-drop",
            FaultSpec::Pause(_) => "pause",
            FaultSpec::Device(_) => "device",
            FaultSpec::FdLimit(_) => "fd-limit",
            FaultSpec::Crash(_) => "crash",
            FaultSpec::File(_) => "file",
            FaultSpec::Nospace(_) => "nospace",
            FaultSpec::Fail(_) => "fail",
            FaultSpec::DiskFill(_) => "disk-fill",
            FaultSpec::PageCache(_) => "page-cache",
            FaultSpec::CorruptFile(_) => "corrupt-file",
            FaultSpec::CpuThrottle(_) => "cpu-throttle",
            FaultSpec::CpuHog(_) => "cpu-hog",
            FaultSpec::MemoryPressure(_) => "memory-pressure",
            FaultSpec::MemoryLeak(_) => "memory-leak",
            FaultSpec::IoStress(_) => "io-stress",
        }
    }

    /// What faults without a cgroup act on, for messages: `interfaces`, `paths`, or both.
    pub fn scope<'a>(faults: impl IntoIterator<Item = &'a FaultSpec>) -> &'static str {
        let (mut interfaces, mut paths) = (false, false);
        for f in faults {
            interfaces |= matches!(f, FaultSpec::XdpDrop(_));
            paths |= matches!(
                f,
                FaultSpec::DiskFill(_) | FaultSpec::PageCache(_) | FaultSpec::CorruptFile(_)
            );
        }
        match (interfaces, paths) {
            (true, true) => "interfaces and paths",
            (false, true) => "paths",
            _ => "interfaces",
        }
    }

    /// Whether the fault acts on one cgroup (all but `xdp-drop` and the faults on a path).
    pub fn needs_cgroup(&self) -> bool {
        !matches!(
            self,
            FaultSpec::XdpDrop(_)
                | FaultSpec::DiskFill(_)
                | FaultSpec::PageCache(_)
                | FaultSpec::CorruptFile(_)
        )
    }
}

/// `loss`: packets of the target vanish silently.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct LossSpec {
    /// The loss probability of the Bernoulli model; the Gilbert model's long-run mean.
    pub p: f64,
    pub dir: Direction,
    pub model: LossModel,
    #[serde(flatten)]
    pub filter: PacketFilter,
    pub flows: f64,
}

/// How `loss` decides which packets go.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
#[serde(tag = "model", rename_all = "lowercase")]
pub enum LossModel {
    /// Each packet alone, with probability `p`.
    Bernoulli,
    /// Gilbert-Elliott: per flow, a good and a bad state with their own loss probabilities,
    /// and the probabilities of moving between them after each packet.
    Gilbert {
        enter_bad: f64,
        leave_bad: f64,
        loss_bad: f64,
        loss_good: f64,
    },
}

impl LossModel {
    /// The long-run loss rate and mean length of a run of consecutive losses the model gives
    /// (for the Gilbert model with `loss_bad = 1`, `loss_good = 0`, the mean time in the bad
    /// state).
    pub fn theory(&self, p: f64) -> (f64, f64) {
        match *self {
            LossModel::Bernoulli => (
                p,
                if p < 1.0 {
                    1.0 / (1.0 - p)
                } else {
                    f64::INFINITY
                },
            ),
            LossModel::Gilbert {
                enter_bad,
                leave_bad,
                loss_bad,
                loss_good,
            } => {
                let bad_share = enter_bad / (enter_bad + leave_bad);
                let mean = bad_share * loss_bad + (1.0 - bad_share) * loss_good;
                (mean, 1.0 / leave_bad)
            }
        }
    }
}

/// `delay`: egress packets of the target leave `time ± jitter` late.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct DelaySpec {
    #[serde(serialize_with = "text::serialize_duration")]
    pub time: Duration,
    #[serde(serialize_with = "text::serialize_duration")]
    pub jitter: Duration,
    #[serde(flatten)]
    pub filter: PacketFilter,
    pub flows: f64,
}

/// `bandwidth`: egress of the target capped at `rate` bytes per second.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct BandwidthSpec {
    /// Bytes per second.
    pub rate: u64,
    /// Bytes that may leave at once above the rate.
    pub burst: u64,
    #[serde(flatten)]
    pub filter: PacketFilter,
    pub flows: f64,
}

/// `corrupt`: `bytes` payload bytes of matching egress packets flipped, checksum fixed.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct CorruptSpec {
    pub p: f64,
    pub bytes: u8,
    #[serde(flatten)]
    pub filter: PacketFilter,
    pub flows: f64,
}

/// `duplicate`: matching egress packets sent twice.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct DuplicateSpec {
    pub p: f64,
    #[serde(flatten)]
    pub filter: PacketFilter,
    pub flows: f64,
}

/// `connect`: connect() of the target to matching destinations fails or goes elsewhere.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ConnectSpec {
    pub p: f64,
    #[serde(flatten)]
    pub outcome: ConnectOutcome,
    pub proto: Proto,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dst: Option<IpNet>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dport: Option<Ports>,
    pub flows: f64,
}

/// What a matching connect() meets.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ConnectOutcome {
    /// It fails with this errno.
    Errno(Errno),
    /// It reaches this address instead.
    Redirect(SocketAddr),
}

/// `reset`: established TCP connections of the target aborted, once or every `interval`.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ResetSpec {
    #[serde(
        skip_serializing_if = "Option::is_none",
        serialize_with = "text::serialize_some_duration"
    )]
    pub interval: Option<Duration>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub src: Option<IpNet>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dst: Option<IpNet>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sport: Option<Ports>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dport: Option<Ports>,
    pub flows: f64,
}

/// `dns`: answers to the target's queries for matching names replaced.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct DnsSpec {
    pub name: String,
    pub answer: DnsAnswer,
    pub p: f64,
    pub flows: f64,
}

/// What a `dns` fault answers.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum DnsAnswer {
    Nxdomain,
    Servfail,
    Refused,
    /// No answer at all.
    Timeout,
    /// This address, for A queries (IPv4) or AAAA queries (IPv6).
    Addr(IpAddr),
}

/// `xdp-drop`: packets arriving on a host interface dropped, whatever their cgroup.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct XdpDropSpec {
    pub dev: String,
    pub p: f64,
    #[serde(flatten)]
    pub filter: PacketFilter,
    pub flows: f64,
}

/// `pause`: the whole cgroup frozen for `for` every `interval` (at random moments with that
/// mean when `random`).
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct PauseSpec {
    #[serde(rename = "for", serialize_with = "text::serialize_duration")]
    pub length: Duration,
    #[serde(serialize_with = "text::serialize_duration")]
    pub interval: Duration,
    pub random: bool,
    /// The seed of a random schedule; the session picks one and reports it when not given.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub seed: Option<u64>,
}

/// `crash`: a signal to a process of the target on some of its calls of one syscall.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct CrashSpec {
    pub syscall: Syscall,
    pub signal: Signal,
    pub when: Schedule,
    /// Only calls on files under this path: by the descriptor of a call that takes one
    /// (`FD_SYSCALLS`), else at the LSM hook the syscall passes, as `fail` would.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub path: Option<std::path::PathBuf>,
}

/// Which calls of a fault's kind it acts on (`crash`, `file`, `nospace`, `fail`).
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Schedule {
    /// The Nth call of each process, once.
    Nth(u64),
    /// Every Nth call of each process.
    Every(u64),
    /// Each call with this probability.
    P(f64),
}

/// A syscall by name, with its number on this architecture.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Syscall {
    pub name: &'static str,
    pub number: u32,
}

impl Serialize for Syscall {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.name)
    }
}

/// A signal, by the name users gave (`SIGKILL`, `SIGRTMIN+2`) and its number.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Signal {
    pub name: String,
    pub number: u32,
}

impl Serialize for Signal {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.name)
    }
}

/// `fd-limit`: the target runs out of descriptors: every new file (open, socket, pipe, accept)
/// fails with EMFILE at the file allocation hook. Where BPF trampolines do not run, only socket
/// creation fails (the cgroup socket hook).
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct FdLimitSpec {
    pub p: f64,
}

/// `file`: calls of the target doing one of `ops` on files under `path` fail with `errno`.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct FileSpec {
    pub ops: Vec<FileOp>,
    pub errno: Errno,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub path: Option<std::path::PathBuf>,
    pub when: Schedule,
}

/// What a `file` fault fails.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum FileOp {
    Open,
    Read,
    Write,
    Create,
    Unlink,
}

impl FileOp {
    pub const ALL: [FileOp; 5] = [
        FileOp::Open,
        FileOp::Read,
        FileOp::Write,
        FileOp::Create,
        FileOp::Unlink,
    ];

    pub fn name(self) -> &'static str {
        match self {
            FileOp::Open => "open",
            FileOp::Read => "read",
            FileOp::Write => "write",
            FileOp::Create => "create",
            FileOp::Unlink => "unlink",
        }
    }

    /// The operation bit the hooks see.
    pub fn bit(self) -> u64 {
        use chaos_common::op;
        match self {
            FileOp::Open => op::OPEN,
            FileOp::Read => op::READ,
            FileOp::Write => op::WRITE,
            FileOp::Create => op::CREATE,
            FileOp::Unlink => op::UNLINK,
        }
    }
}

/// `nospace`: creating and writing files under `path` fails with ENOSPC, as on a full disk.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct NospaceSpec {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub path: Option<std::path::PathBuf>,
    pub when: Schedule,
}

/// `fail`: calls of one syscall (and those that share its LSM hook) fail with `errno`.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct FailSpec {
    pub syscall: &'static str,
    pub errno: Errno,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub path: Option<std::path::PathBuf>,
    pub when: Schedule,
}

impl FailSpec {
    /// The operation bits of the hook the syscall passes.
    pub fn ops(&self) -> u64 {
        values::FAIL_SYSCALLS
            .iter()
            .find(|(name, _, _)| *name == self.syscall)
            .map_or(0, |(_, ops, _)| *ops)
    }
}

/// `disk-fill`: the filesystem holding `path` filled up until `leave` is left, and emptied
/// again at the end.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct DiskFillSpec {
    pub path: std::path::PathBuf,
    #[serde(flatten)]
    pub leave: Leave,
}

/// `page-cache`: the cached pages of the files under `path` dropped, once or every
/// `interval`, for cold-cache reads.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct PageCacheSpec {
    pub path: std::path::PathBuf,
    #[serde(
        skip_serializing_if = "Option::is_none",
        serialize_with = "text::serialize_some_duration"
    )]
    pub interval: Option<Duration>,
}

/// `cpu-hog`: `workers` stressor processes in the target cgroup, each busy `load` percent of
/// the time.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct CpuHogSpec {
    pub workers: u32,
    /// Percent of one CPU per worker.
    pub load: f64,
}

/// `cpu-throttle`: the target cgroup capped at `quota` percent of one CPU (cgroup v2
/// `cpu.max`, or v1 `cpu.cfs_quota_us` on hybrid layouts).
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct CpuThrottleSpec {
    pub quota: f64,
}

/// `memory-pressure`: a stressor in the target cgroup holding `size` bytes, or the cgroup's
/// memory limit lowered to `limit` bytes (cgroup v2 `memory.max`, or v1
/// `memory.limit_in_bytes` on hybrid layouts).
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum MemoryPressureSpec {
    Size(u64),
    Limit(u64),
}

/// `memory-leak`: a stressor in the target cgroup that grows by `rate` bytes per second up to
/// `max`, then holds it or frees it.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct MemoryLeakSpec {
    pub rate: u64,
    pub max: u64,
    pub release: bool,
}

/// `io-stress`: `workers` stressors in the target cgroup, each writing `bytes` with fsync into
/// a file of its own under `path`, again and again.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct IoStressSpec {
    pub path: std::path::PathBuf,
    pub workers: u32,
    pub bytes: u64,
}

/// `corrupt-file`: a file damaged once, after its original is saved.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct CorruptFileSpec {
    pub path: std::path::PathBuf,
    #[serde(flatten)]
    pub mode: CorruptMode,
}

/// How `corrupt-file` damages a file.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "mode", rename_all = "kebab-case")]
pub enum CorruptMode {
    /// `count` distinct bits flipped at places drawn from `seed` (picked and reported when
    /// not given).
    Bitflip { count: u64, seed: Option<u64> },
    /// Cut to `to` bytes.
    Truncate { to: u64 },
    /// The pages that `offset..offset+len` touches zeroed, as a torn write leaves them.
    Torn { offset: u64, len: u64 },
    /// Exactly `offset..offset+len` zeroed.
    ZeroRange { offset: u64, len: u64 },
}

/// How full `disk-fill` makes a filesystem.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Leave {
    /// Bytes left free (as `df` shows them: what unprivileged users may still write).
    Free(u64),
    /// The share in use, as `df`'s Use% counts it, in percent.
    Use(f64),
}

/// `device`: opening (or creating) matching device nodes fails with `errno`.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct DeviceSpec {
    pub major: u32,
    /// None: every minor number.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub minor: Option<u32>,
    /// `char`, `block` or both.
    #[serde(rename = "type")]
    pub kind: DeviceKind,
    /// Which accesses: any of read, write and mknod; empty for all.
    pub access: String,
    pub errno: Errno,
    pub p: f64,
}

/// Character or block devices.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum DeviceKind {
    Any,
    Char,
    Block,
}

/// A probability as the kernel's 32-bit draw threshold: an action happens when a uniform
/// `u32` is below it.
pub fn threshold(p: f64) -> u64 {
    ((p * (1u64 << 32) as f64).round() as u64).min(1 << 32)
}

/// An error number by name, as the kernel returns it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Errno {
    pub name: &'static str,
    pub number: i32,
}

impl Serialize for Errno {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.name)
    }
}

/// Which way a packet travels, seen from the target.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Direction {
    Egress,
    Ingress,
    Both,
}

impl Direction {
    pub fn egress(self) -> bool {
        matches!(self, Direction::Egress | Direction::Both)
    }

    pub fn ingress(self) -> bool {
        matches!(self, Direction::Ingress | Direction::Both)
    }
}

/// Transport protocol filter.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Proto {
    Any,
    Tcp,
    Udp,
    Icmp,
}

/// An inclusive port range.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct Ports {
    pub lo: u16,
    pub hi: u16,
}

/// The filter keys that every packet fault shares.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct PacketFilter {
    pub proto: Proto,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub src: Option<IpNet>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dst: Option<IpNet>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sport: Option<Ports>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dport: Option<Ports>,
}

/// The longest `delay` the `fq` qdisc is set up for.
pub const MAX_DELAY: Duration = Duration::from_secs(60);

#[cfg(test)]
mod tests;
