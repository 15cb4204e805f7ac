//! The fault spec grammar: `KIND[:key=value[,key=value...]]`, parsed by a pure function from
//! text to a typed spec, shared by the command line and scenario files.

use std::{
    collections::BTreeSet,
    fmt,
    net::{IpAddr, SocketAddr},
    str::FromStr,
    time::Duration,
};

use ipnet::IpNet;
use serde::Serialize;

use crate::error::{Class, Classify};

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
];

/// Why a fault spec or a duration was refused. Every variant is bad input (exit 2).
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum SpecError {
    /// The spec is empty.
    #[error("empty fault spec")]
    Empty,
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
            SpecError::UnknownKey { known, .. } => format!("known keys: {}", known.join(", ")),
            SpecError::DuplicateKey { .. } => {
                "to add a second rule of the same kind, give a second --fault".to_string()
            }
            SpecError::MissingKey { example, .. } => format!("for example `{example}`"),
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
        }
    }

    /// Whether the fault acts on one cgroup (all but `xdp-drop`).
    pub fn needs_cgroup(&self) -> bool {
        !matches!(self, FaultSpec::XdpDrop(_))
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
    #[serde(serialize_with = "serialize_duration")]
    pub time: Duration,
    #[serde(serialize_with = "serialize_duration")]
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
        serialize_with = "serialize_some_duration"
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

/// The error numbers connect() and the other calls may be made to return.
pub const ERRNOS: &[(&str, i32)] = &[
    ("ECONNREFUSED", libc::ECONNREFUSED),
    ("ETIMEDOUT", libc::ETIMEDOUT),
    ("ENETUNREACH", libc::ENETUNREACH),
    ("EHOSTUNREACH", libc::EHOSTUNREACH),
    ("ECONNRESET", libc::ECONNRESET),
    ("ECONNABORTED", libc::ECONNABORTED),
    ("ENETDOWN", libc::ENETDOWN),
    ("EHOSTDOWN", libc::EHOSTDOWN),
    ("EADDRNOTAVAIL", libc::EADDRNOTAVAIL),
    ("EADDRINUSE", libc::EADDRINUSE),
    ("EACCES", libc::EACCES),
    ("EPERM", libc::EPERM),
    ("EAGAIN", libc::EAGAIN),
    ("EINTR", libc::EINTR),
    ("ENOBUFS", libc::ENOBUFS),
    ("ENOMEM", libc::ENOMEM),
    ("EMFILE", libc::EMFILE),
    ("ENFILE", libc::ENFILE),
    ("EIO", libc::EIO),
    ("EINVAL", libc::EINVAL),
    ("EPROTO", libc::EPROTO),
];

/// An errno by its name (`ECONNREFUSED`, any case).
pub fn parse_errno(key: &str, value: &str) -> Result<Errno, SpecError> {
    let upper = value.to_ascii_uppercase();
    ERRNOS
        .iter()
        .find(|(name, _)| *name == upper)
        .map(|&(name, number)| Errno { name, number })
        .ok_or_else(|| {
            let names: Vec<&str> = ERRNOS.iter().map(|(n, _)| *n).collect();
            bad(key, value, format!("expected one of {}", names.join(", ")))
        })
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

impl fmt::Display for Ports {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.lo == self.hi {
            write!(f, "{}", self.lo)
        } else {
            write!(f, "{}-{}", self.lo, self.hi)
        }
    }
}

fn serialize_duration<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&humantime::format_duration(*d).to_string())
}

fn serialize_some_duration<S: serde::Serializer>(
    d: &Option<Duration>,
    s: S,
) -> Result<S::Ok, S::Error> {
    match d {
        Some(d) => serialize_duration(d, s),
        None => s.serialize_none(),
    }
}

impl fmt::Display for DnsAnswer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DnsAnswer::Nxdomain => f.write_str("nxdomain"),
            DnsAnswer::Servfail => f.write_str("servfail"),
            DnsAnswer::Refused => f.write_str("refused"),
            DnsAnswer::Timeout => f.write_str("timeout"),
            DnsAnswer::Addr(a) => write!(f, "{a}"),
        }
    }
}

impl fmt::Display for FaultSpec {
    /// The canonical text of the spec: every key, in a fixed order, defaults included.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let d = |d: &Duration| humantime::format_duration(*d).to_string();
        match self {
            FaultSpec::Loss(loss) => {
                let dir = match loss.dir {
                    Direction::Egress => "egress",
                    Direction::Ingress => "ingress",
                    Direction::Both => "both",
                };
                match loss.model {
                    LossModel::Bernoulli => write!(f, "loss:p={},dir={dir}", loss.p)?,
                    LossModel::Gilbert {
                        enter_bad,
                        leave_bad,
                        loss_bad,
                        loss_good,
                    } => write!(
                        f,
                        "loss:model=gilbert,enter_bad={enter_bad},leave_bad={leave_bad},\
                         loss_bad={loss_bad},loss_good={loss_good},dir={dir}"
                    )?,
                }
                write_filter(f, &loss.filter, loss.flows)
            }
            FaultSpec::Delay(delay) => {
                write!(f, "delay:time={}", d(&delay.time))?;
                if !delay.jitter.is_zero() {
                    write!(f, ",jitter={}", d(&delay.jitter))?;
                }
                write_filter(f, &delay.filter, delay.flows)
            }
            FaultSpec::Bandwidth(b) => {
                write!(
                    f,
                    "bandwidth:rate={},burst={}",
                    RateText(b.rate),
                    SizeText(b.burst)
                )?;
                write_filter(f, &b.filter, b.flows)
            }
            FaultSpec::Corrupt(c) => {
                write!(f, "corrupt:p={},bytes={}", c.p, c.bytes)?;
                write_filter(f, &c.filter, c.flows)
            }
            FaultSpec::Duplicate(dup) => {
                write!(f, "duplicate:p={}", dup.p)?;
                write_filter(f, &dup.filter, dup.flows)
            }
            FaultSpec::Connect(c) => {
                match c.outcome {
                    ConnectOutcome::Errno(e) => write!(f, "connect:errno={}", e.name)?,
                    ConnectOutcome::Redirect(to) => write!(f, "connect:redirect={to}")?,
                }
                write!(f, ",p={}", c.p)?;
                let filter = PacketFilter {
                    proto: c.proto,
                    src: None,
                    dst: c.dst,
                    sport: None,
                    dport: c.dport,
                };
                write_filter(f, &filter, c.flows)
            }
            FaultSpec::Reset(r) => {
                let filter = PacketFilter {
                    proto: Proto::Any,
                    src: r.src,
                    dst: r.dst,
                    sport: r.sport,
                    dport: r.dport,
                };
                let rest = format!("{}", FilterText(&filter, r.flows));
                match r.interval {
                    Some(i) => write!(f, "reset:interval={}{rest}", d(&i)),
                    None if rest.is_empty() => f.write_str("reset"),
                    None => write!(f, "reset:{}", &rest[1..]),
                }
            }
            FaultSpec::Dns(dns) => {
                write!(f, "dns:name={},answer={},p={}", dns.name, dns.answer, dns.p)?;
                if dns.flows < 1.0 {
                    write!(f, ",flows={}", dns.flows)?;
                }
                Ok(())
            }
            FaultSpec::XdpDrop(x) => {
                write!(f, "xdp-drop:dev={},p={}", x.dev, x.p)?;
                write_filter(f, &x.filter, x.flows)
            }
        }
    }
}

/// A rate in bytes per second, written in the largest of tc's bit units that is exact.
struct RateText(u64);

impl fmt::Display for RateText {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let bits = self.0 * 8;
        for (unit, scale) in [
            ("gbit", 1_000_000_000),
            ("mbit", 1_000_000),
            ("kbit", 1_000),
        ] {
            if bits % scale == 0 {
                return write!(f, "{}{unit}", bits / scale);
            }
        }
        write!(f, "{}bps", self.0)
    }
}

/// A size in bytes, written in the largest IEC unit that is exact.
struct SizeText(u64);

impl fmt::Display for SizeText {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (unit, scale) in [("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)] {
            if self.0 % scale == 0 {
                return write!(f, "{}{unit}", self.0 / scale);
            }
        }
        write!(f, "{}", self.0)
    }
}

/// The filter keys of a spec, each after a comma.
struct FilterText<'a>(&'a PacketFilter, f64);

impl fmt::Display for FilterText<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write_filter(f, self.0, self.1)
    }
}

fn write_filter(f: &mut fmt::Formatter<'_>, filter: &PacketFilter, flows: f64) -> fmt::Result {
    match filter.proto {
        Proto::Any => {}
        Proto::Tcp => f.write_str(",proto=tcp")?,
        Proto::Udp => f.write_str(",proto=udp")?,
        Proto::Icmp => f.write_str(",proto=icmp")?,
    }
    if let Some(src) = filter.src {
        write!(f, ",src={src}")?;
    }
    if let Some(dst) = filter.dst {
        write!(f, ",dst={dst}")?;
    }
    if let Some(sport) = filter.sport {
        write!(f, ",sport={sport}")?;
    }
    if let Some(dport) = filter.dport {
        write!(f, ",dport={dport}")?;
    }
    if flows < 1.0 {
        write!(f, ",flows={flows}")?;
    }
    Ok(())
}

impl FromStr for FaultSpec {
    type Err = SpecError;

    fn from_str(text: &str) -> Result<Self, SpecError> {
        parse_fault(text)
    }
}

const FILTER_KEYS: &[&str] = &["proto", "src", "dst", "sport", "dport", "flows"];

/// The keys each kind takes, as `--help` and error messages list them.
pub fn keys_of(kind: &str) -> &'static [&'static str] {
    match kind {
        "loss" => &[
            "p",
            "dir",
            "model",
            "enter_bad",
            "leave_bad",
            "loss_bad",
            "loss_good",
            "proto",
            "src",
            "dst",
            "sport",
            "dport",
            "flows",
        ],
        "delay" => &[
            "time", "jitter", "proto", "src", "dst", "sport", "dport", "flows",
        ],
        "bandwidth" => &[
            "rate", "burst", "proto", "src", "dst", "sport", "dport", "flows",
        ],
        "corrupt" => &[
            "p", "bytes", "proto", "src", "dst", "sport", "dport", "flows",
        ],
        "duplicate" => &["p", "proto", "src", "dst", "sport", "dport", "flows"],
        "connect" => &["errno", "redirect", "p", "proto", "dst", "dport", "flows"],
        "reset" => &["interval", "src", "dst", "sport", "dport", "flows"],
        "dns" => &["name", "answer", "p", "flows"],
        "xdp-drop" => &["dev", "p", "proto", "src", "dst", "sport", "dport", "flows"],
        _ => FILTER_KEYS,
    }
}

/// Parses one fault spec. Pure: no system state is read.
pub fn parse_fault(text: &str) -> Result<FaultSpec, SpecError> {
    let text = text.trim();
    if text.is_empty() {
        return Err(SpecError::Empty);
    }
    let (kind, rest) = text.split_once(':').unwrap_or((text, ""));
    let kind = kind.trim();
    if !KINDS.contains(&kind) {
        return Err(SpecError::UnknownKind(kind.to_string()));
    }
    let pairs = split_pairs(kind, rest)?;
    let mut keys = Keys {
        kind,
        pairs: pairs.clone(),
    };
    let spec = match kind {
        "loss" => FaultSpec::Loss(parse_loss(&mut keys)?),
        "delay" => FaultSpec::Delay(parse_delay(&mut keys)?),
        "bandwidth" => FaultSpec::Bandwidth(parse_bandwidth(&mut keys)?),
        "corrupt" => {
            let p = keys.probability("p", "corrupt:p=0.01")?;
            let bytes = match keys.take("bytes") {
                None => 1,
                Some(v) => match v.parse::<u8>() {
                    Ok(n @ 1..=64) => n,
                    _ => return Err(bad("bytes", v, "expected a count of bytes from 1 to 64")),
                },
            };
            let (filter, flows) = keys.filter()?;
            FaultSpec::Corrupt(CorruptSpec {
                p,
                bytes,
                filter,
                flows,
            })
        }
        "duplicate" => {
            let p = keys.probability("p", "duplicate:p=0.05")?;
            let (filter, flows) = keys.filter()?;
            FaultSpec::Duplicate(DuplicateSpec { p, filter, flows })
        }
        "connect" => FaultSpec::Connect(parse_connect(&mut keys)?),
        "reset" => {
            let interval = keys
                .take("interval")
                .map(|v| parse_duration("interval", v))
                .transpose()?;
            let (filter, flows) = keys.filter()?;
            if filter.proto != Proto::Any {
                return Err(SpecError::Conflict(
                    "reset aborts TCP connections only; leave proto out".into(),
                ));
            }
            FaultSpec::Reset(ResetSpec {
                interval,
                src: filter.src,
                dst: filter.dst,
                sport: filter.sport,
                dport: filter.dport,
                flows,
            })
        }
        "dns" => FaultSpec::Dns(parse_dns(&mut keys)?),
        "xdp-drop" => {
            let Some(dev) = keys.take("dev") else {
                return Err(missing(kind, "dev", "xdp-drop:dev=eth0,p=0.1"));
            };
            if dev.len() >= 16 || dev.contains(['/', ' ']) {
                return Err(bad("dev", dev, "expected an interface name, such as eth0"));
            }
            let dev = dev.to_string();
            let p = keys.probability("p", "xdp-drop:dev=eth0,p=0.1")?;
            let (filter, flows) = keys.filter()?;
            FaultSpec::XdpDrop(XdpDropSpec {
                dev,
                p,
                filter,
                flows,
            })
        }
        _ => return Err(SpecError::UnknownKind(kind.to_string())),
    };
    keys.finish()?;
    Ok(spec)
}

/// The key=value pairs of one spec, taken one by one by the kind's parser; any left over at
/// the end is an unknown key.
struct Keys<'a> {
    kind: &'a str,
    pairs: Vec<(&'a str, &'a str)>,
}

impl<'a> Keys<'a> {
    fn take(&mut self, key: &str) -> Option<&'a str> {
        let at = self.pairs.iter().position(|(k, _)| *k == key)?;
        Some(self.pairs.remove(at).1)
    }

    /// A required probability, or 1 when `example` is empty and the key is missing.
    fn probability(&mut self, key: &'static str, example: &'static str) -> Result<f64, SpecError> {
        match self.take(key) {
            Some(v) => parse_probability(key, v),
            None if example.is_empty() => Ok(1.0),
            None => Err(missing(self.kind, key, example)),
        }
    }

    /// The shared filter keys and `flows`.
    fn filter(&mut self) -> Result<(PacketFilter, f64), SpecError> {
        let mut filter = PacketFilter {
            proto: Proto::Any,
            src: None,
            dst: None,
            sport: None,
            dport: None,
        };
        for key in ["proto", "src", "dst", "sport", "dport"] {
            if let Some(value) = self.take(key) {
                parse_filter_key(&mut filter, key, value)?;
            }
        }
        check_filter(&filter)?;
        let flows = match self.take("flows") {
            None => 1.0,
            Some(v) => {
                let share = parse_probability("flows", v)?;
                if share == 0.0 {
                    return Err(bad("flows", v, "a share of flows above 0, such as 0.3"));
                }
                share
            }
        };
        Ok((filter, flows))
    }

    fn finish(self) -> Result<(), SpecError> {
        match self.pairs.first() {
            None => Ok(()),
            Some((key, _)) => Err(SpecError::UnknownKey {
                kind: self.kind.to_string(),
                key: key.to_string(),
                known: keys_of(self.kind),
            }),
        }
    }
}

fn missing(kind: &str, key: &'static str, example: &'static str) -> SpecError {
    SpecError::MissingKey {
        kind: kind.to_string(),
        key,
        example,
    }
}

fn split_pairs<'a>(kind: &str, rest: &'a str) -> Result<Vec<(&'a str, &'a str)>, SpecError> {
    let mut seen = BTreeSet::new();
    let mut pairs = Vec::new();
    if rest.trim().is_empty() {
        return Ok(pairs);
    }
    for item in rest.split(',') {
        let Some((key, value)) = item.split_once('=') else {
            return Err(SpecError::NotKeyValue {
                kind: kind.to_string(),
                item: item.to_string(),
            });
        };
        let (key, value) = (key.trim(), value.trim());
        if key.is_empty() || value.is_empty() {
            return Err(SpecError::NotKeyValue {
                kind: kind.to_string(),
                item: item.to_string(),
            });
        }
        if !seen.insert(key) {
            return Err(SpecError::DuplicateKey {
                kind: kind.to_string(),
                key: key.to_string(),
            });
        }
        pairs.push((key, value));
    }
    Ok(pairs)
}

const GILBERT_EXAMPLE: &str = "loss:model=gilbert,enter_bad=0.01,leave_bad=0.3";

fn parse_loss(keys: &mut Keys) -> Result<LossSpec, SpecError> {
    let dir = keys.take("dir").map(parse_direction).transpose()?;
    let model = match keys.take("model") {
        None | Some("bernoulli") => None,
        Some("gilbert") => Some(()),
        Some(v) => return Err(bad("model", v, "expected bernoulli or gilbert")),
    };
    let gilbert_keys = ["enter_bad", "leave_bad", "loss_bad", "loss_good"];
    let (p, model) = if model.is_some() {
        if keys.take("p").is_some() {
            return Err(SpecError::Conflict(
                "model=gilbert takes enter_bad, leave_bad, loss_bad and loss_good, not p".into(),
            ));
        }
        let enter_bad = keys.probability("enter_bad", GILBERT_EXAMPLE)?;
        let leave_bad = keys.probability("leave_bad", GILBERT_EXAMPLE)?;
        if leave_bad == 0.0 || enter_bad == 0.0 {
            return Err(SpecError::Conflict(
                "with enter_bad=0 or leave_bad=0 a flow never changes state; \
                 for loss without bursts, use p"
                    .into(),
            ));
        }
        let loss_bad = keys.probability("loss_bad", "")?;
        let loss_good = match keys.take("loss_good") {
            Some(v) => parse_probability("loss_good", v)?,
            None => 0.0,
        };
        let model = LossModel::Gilbert {
            enter_bad,
            leave_bad,
            loss_bad,
            loss_good,
        };
        (model.theory(0.0).0, model)
    } else {
        if let Some(key) = gilbert_keys.iter().find(|k| keys.take(k).is_some()) {
            return Err(SpecError::Conflict(format!(
                "`{key}` belongs to model=gilbert; add model=gilbert or leave it out"
            )));
        }
        (keys.probability("p", "loss:p=0.1")?, LossModel::Bernoulli)
    };
    let (filter, flows) = keys.filter()?;
    Ok(LossSpec {
        p,
        dir: dir.unwrap_or(Direction::Both),
        model,
        filter,
        flows,
    })
}

fn parse_delay(keys: &mut Keys) -> Result<DelaySpec, SpecError> {
    let Some(time) = keys.take("time") else {
        return Err(missing(keys.kind, "time", "delay:time=100ms,jitter=10ms"));
    };
    let time = parse_duration("time", time)?;
    if time > MAX_DELAY {
        return Err(bad(
            "time",
            &humantime::format_duration(time).to_string(),
            "at most 60s",
        ));
    }
    let jitter = match keys.take("jitter") {
        None => Duration::ZERO,
        Some(v) => parse_duration("jitter", v)?,
    };
    if jitter > time {
        return Err(SpecError::Conflict(
            "jitter is spread on both sides of time, so it cannot be larger than time".into(),
        ));
    }
    let (filter, flows) = keys.filter()?;
    Ok(DelaySpec {
        time,
        jitter,
        filter,
        flows,
    })
}

/// The longest `delay` the `fq` qdisc is set up for.
pub const MAX_DELAY: Duration = Duration::from_secs(60);

fn parse_bandwidth(keys: &mut Keys) -> Result<BandwidthSpec, SpecError> {
    let Some(rate) = keys.take("rate") else {
        return Err(missing(keys.kind, "rate", "bandwidth:rate=1mbit"));
    };
    let rate = parse_rate("rate", rate)?;
    let burst = match keys.take("burst") {
        // Ten milliseconds at the rate, and at least one full-size packet of loopback.
        None => (rate / 100).max(64 * 1024),
        Some(v) => parse_size("burst", v)?,
    };
    if burst == 0 || burst > 1 << 30 {
        return Err(bad("burst", &burst.to_string(), "between 1 byte and 1GiB"));
    }
    let (filter, flows) = keys.filter()?;
    Ok(BandwidthSpec {
        rate,
        burst,
        filter,
        flows,
    })
}

/// A rate in tc's units, in bytes per second: `kbit`, `mbit`, `gbit` (bits), `bps`, `kbps`,
/// `mbps`, `gbps` (bytes); IEC prefixes (`kibit`, `mibps`) count in 1024s.
pub fn parse_rate(key: &str, value: &str) -> Result<u64, SpecError> {
    let expected = "expected a rate with tc's units, such as 1mbit, 500kbit or 200kbps";
    let lower = value.to_ascii_lowercase();
    let split = lower
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .ok_or_else(|| bad(key, value, expected))?;
    let (number, unit) = lower.split_at(split);
    let number: f64 = number.parse().map_err(|_| bad(key, value, expected))?;
    let (prefix, bits) = if let Some(p) = unit.strip_suffix("bit") {
        (p, true)
    } else if let Some(p) = unit.strip_suffix("bps") {
        (p, false)
    } else {
        return Err(bad(key, value, expected));
    };
    let scale: f64 = match prefix {
        "" => 1.0,
        "k" => 1e3,
        "m" => 1e6,
        "g" => 1e9,
        "t" => 1e12,
        "ki" => 1024.0,
        "mi" => 1024.0 * 1024.0,
        "gi" => 1024.0 * 1024.0 * 1024.0,
        "ti" => 1024.0f64.powi(4),
        _ => return Err(bad(key, value, expected)),
    };
    let bytes = number * scale / if bits { 8.0 } else { 1.0 };
    if !(1.0..=1e13).contains(&bytes) {
        return Err(bad(key, value, "between 8bit and 10tbps"));
    }
    Ok(bytes.round() as u64)
}

/// A size in bytes: a plain number of bytes or IEC units (`64KiB`, `1MiB`).
pub fn parse_size(key: &str, value: &str) -> Result<u64, SpecError> {
    let size: bytesize::ByteSize = value
        .parse()
        .map_err(|_| bad(key, value, "expected a size such as 1500, 64KiB or 1MiB"))?;
    Ok(size.as_u64())
}

fn parse_connect(keys: &mut Keys) -> Result<ConnectSpec, SpecError> {
    let errno = keys.take("errno");
    let redirect = keys.take("redirect");
    let outcome = match (errno, redirect) {
        (Some(e), None) => ConnectOutcome::Errno(parse_errno("errno", e)?),
        (None, Some(r)) => {
            let to: SocketAddr = r.parse().map_err(|_| {
                bad(
                    "redirect",
                    r,
                    "expected ADDR:PORT, such as 127.0.0.1:8080 or [::1]:8080",
                )
            })?;
            ConnectOutcome::Redirect(to)
        }
        (Some(_), Some(_)) => {
            return Err(SpecError::Conflict(
                "give errno or redirect, not both".into(),
            ));
        }
        (None, None) => {
            return Err(missing(
                keys.kind,
                "errno",
                "connect:errno=ECONNREFUSED,dport=5432",
            ));
        }
    };
    let p = keys.probability("p", "")?;
    let (filter, flows) = keys.filter()?;
    if filter.src.is_some() || filter.sport.is_some() {
        return Err(SpecError::Conflict(
            "connect matches the destination only (dst, dport); a connecting socket has no \
             source yet"
                .into(),
        ));
    }
    if filter.proto == Proto::Icmp {
        return Err(bad("proto", "icmp", "connect takes proto=tcp, udp or any"));
    }
    if let (ConnectOutcome::Redirect(to), Some(dst)) = (outcome, filter.dst) {
        if to.is_ipv4() != dst.addr().is_ipv4() {
            return Err(SpecError::Conflict(format!(
                "redirect={to} and dst={dst} are of different address families; a socket can \
                 only be sent to an address of its own family"
            )));
        }
    }
    Ok(ConnectSpec {
        p,
        outcome,
        proto: filter.proto,
        dst: filter.dst,
        dport: filter.dport,
        flows,
    })
}

fn parse_dns(keys: &mut Keys) -> Result<DnsSpec, SpecError> {
    let name = keys.take("name").unwrap_or("*");
    let valid = name.len() <= 255
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '*' | '.' | '-' | '_'));
    if !valid {
        return Err(bad(
            "name",
            name,
            "expected a name or a glob of letters, digits, `-`, `.` and `*`, such as *.example.com",
        ));
    }
    let name = name.trim_end_matches('.').to_ascii_lowercase();
    let Some(answer) = keys.take("answer") else {
        return Err(missing(
            keys.kind,
            "answer",
            "dns:name=*.example.com,answer=nxdomain",
        ));
    };
    let answer = match answer.to_ascii_lowercase().as_str() {
        "nxdomain" => DnsAnswer::Nxdomain,
        "servfail" => DnsAnswer::Servfail,
        "refused" => DnsAnswer::Refused,
        "timeout" => DnsAnswer::Timeout,
        other => DnsAnswer::Addr(other.parse().map_err(|_| {
            bad(
                "answer",
                answer,
                "expected nxdomain, servfail, refused, timeout or an address",
            )
        })?),
    };
    let p = keys.probability("p", "")?;
    let flows = match keys.take("flows") {
        None => 1.0,
        Some(v) => parse_probability("flows", v)?,
    };
    Ok(DnsSpec {
        name: if name.is_empty() { "*".into() } else { name },
        answer,
        p,
        flows,
    })
}

/// Sets `filter` from one of the shared filter keys; returns false for any other key.
fn parse_filter_key(filter: &mut PacketFilter, key: &str, value: &str) -> Result<bool, SpecError> {
    match key {
        "proto" => filter.proto = parse_proto(value)?,
        "src" => filter.src = Some(parse_net(key, value)?),
        "dst" => filter.dst = Some(parse_net(key, value)?),
        "sport" => filter.sport = Some(parse_ports(key, value)?),
        "dport" => filter.dport = Some(parse_ports(key, value)?),
        _ => return Ok(false),
    }
    Ok(true)
}

fn check_filter(filter: &PacketFilter) -> Result<(), SpecError> {
    if let (Some(src), Some(dst)) = (filter.src, filter.dst) {
        if src.addr().is_ipv4() != dst.addr().is_ipv4() {
            return Err(SpecError::Conflict(format!(
                "src={src} and dst={dst} are of different address families, so no packet could match"
            )));
        }
    }
    let has_ports = filter.sport.is_some() || filter.dport.is_some();
    if has_ports && matches!(filter.proto, Proto::Icmp) {
        return Err(SpecError::Conflict(
            "sport/dport need proto=tcp, proto=udp or no proto; icmp has no ports".to_string(),
        ));
    }
    Ok(())
}

fn bad(key: &str, value: &str, expected: impl Into<String>) -> SpecError {
    SpecError::BadValue {
        key: key.to_string(),
        value: value.to_string(),
        expected: expected.into(),
    }
}

/// A probability: a fraction between 0 and 1 (`0.2`, not `20%`).
pub fn parse_probability(key: &str, value: &str) -> Result<f64, SpecError> {
    let p: f64 = value.parse().map_err(|_| {
        bad(
            key,
            value,
            "expected a fraction between 0 and 1, such as 0.2",
        )
    })?;
    if !(0.0..=1.0).contains(&p) {
        return Err(bad(
            key,
            value,
            "a probability lies between 0 and 1 (write 0.2, not 20)",
        ));
    }
    // The kernel draws 32 bits: a probability finer than that would silently become 0 or 1.
    let threshold = (p * (1u64 << 32) as f64).round();
    if p > 0.0 && threshold == 0.0 {
        return Err(bad(
            key,
            value,
            "below the kernel's resolution of 2^-32; write 0 for never",
        ));
    }
    if p < 1.0 && threshold >= (1u64 << 32) as f64 {
        return Err(bad(
            key,
            value,
            "closer to 1 than the kernel's resolution; write 1 for always",
        ));
    }
    // `-0` is 0.
    Ok(if p == 0.0 { 0.0 } else { p })
}

fn parse_direction(value: &str) -> Result<Direction, SpecError> {
    match value {
        "egress" => Ok(Direction::Egress),
        "ingress" => Ok(Direction::Ingress),
        "both" => Ok(Direction::Both),
        _ => Err(bad("dir", value, "expected egress, ingress or both")),
    }
}

fn parse_proto(value: &str) -> Result<Proto, SpecError> {
    match value {
        "any" => Ok(Proto::Any),
        "tcp" => Ok(Proto::Tcp),
        "udp" => Ok(Proto::Udp),
        "icmp" => Ok(Proto::Icmp),
        _ => Err(bad("proto", value, "expected tcp, udp, icmp or any")),
    }
}

/// An address or a CIDR; a bare address means that host alone.
pub fn parse_net(key: &str, value: &str) -> Result<IpNet, SpecError> {
    let expected = "expected an IPv4 or IPv6 address or CIDR, such as 10.0.0.0/8 or ::1";
    let net = match value.parse::<IpNet>() {
        // Keep the network, not the host bits the user wrote: 10.1.2.3/8 means 10.0.0.0/8.
        Ok(net) => net.trunc(),
        Err(_) => value
            .parse::<IpAddr>()
            .map(IpNet::from)
            .map_err(|_| bad(key, value, expected))?,
    };
    if let IpNet::V6(v6) = net {
        if let Some(v4) = v6.addr().to_ipv4_mapped() {
            let hint = format!("IPv4 packets carry IPv4 addresses; write {v4}");
            return Err(bad(key, value, hint));
        }
    }
    Ok(net)
}

/// A port (`53`) or an inclusive range (`8000-8080`).
pub fn parse_ports(key: &str, value: &str) -> Result<Ports, SpecError> {
    let expected = "expected a port (0-65535) or a range lo-hi, such as 8000-8080";
    let port = |s: &str| {
        s.trim()
            .parse::<u16>()
            .map_err(|_| bad(key, value, expected))
    };
    let (lo, hi) = match value.split_once('-') {
        Some((lo, hi)) => (port(lo)?, port(hi)?),
        None => {
            let p = port(value)?;
            (p, p)
        }
    };
    if lo > hi {
        return Err(bad(key, value, "the range's low end is above its high end"));
    }
    Ok(Ports { lo, hi })
}

/// The longest duration any key takes: a year.
pub const MAX_DURATION: Duration = Duration::from_secs(365 * 24 * 3600);

/// A duration, always with a unit: `250us`, `200ms`, `2s`, `5m`; more than zero, at most a year.
pub fn parse_duration(key: &str, value: &str) -> Result<Duration, SpecError> {
    let expected = "expected a duration with a unit, such as 250ms, 30s or 5m";
    let d = humantime::parse_duration(value).map_err(|_| bad(key, value, expected))?;
    if d.is_zero() {
        return Err(bad(key, value, "a duration must be longer than zero"));
    }
    if d > MAX_DURATION {
        return Err(bad(key, value, "at most a year (365d)"));
    }
    Ok(d)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn loss(text: &str) -> LossSpec {
        match parse_fault(text) {
            Ok(FaultSpec::Loss(l)) => l,
            other => panic!("{text}: {other:?}"),
        }
    }

    #[test]
    fn loss_defaults() {
        let l = loss("loss:p=0.3");
        assert_eq!(l.p, 0.3);
        assert_eq!(l.dir, Direction::Both);
        assert_eq!(l.filter.proto, Proto::Any);
        assert!(l.filter.src.is_none() && l.filter.dport.is_none());
    }

    #[test]
    fn loss_every_key() {
        let l = loss(
            "loss:p=1,dir=egress,proto=udp,src=10.1.2.3/8,dst=10.9.9.9,sport=1000-2000,dport=53",
        );
        assert_eq!(l.dir, Direction::Egress);
        assert_eq!(l.filter.proto, Proto::Udp);
        assert_eq!(l.filter.src.unwrap().to_string(), "10.0.0.0/8");
        assert_eq!(l.filter.sport, Some(Ports { lo: 1000, hi: 2000 }));
        assert_eq!(l.filter.dport, Some(Ports { lo: 53, hi: 53 }));
        assert_eq!(threshold(l.p), 1 << 32);
    }

    #[test]
    fn mixed_families_conflict() {
        let err = parse_fault("loss:p=1,src=10.0.0.0/8,dst=::1").unwrap_err();
        assert!(matches!(err, SpecError::Conflict(_)), "{err}");
    }

    #[test]
    fn canonical_text_round_trips() {
        for text in [
            "loss:p=0.3",
            "loss:p=0.05,dir=ingress,proto=tcp,dst=127.0.0.0/8,dport=80-90",
            "loss:model=gilbert,enter_bad=0.01,leave_bad=0.3,loss_bad=0.9,flows=0.5",
            "delay:time=100ms,jitter=10ms,proto=icmp",
            "bandwidth:rate=1mbit,burst=32KiB,dport=443",
            "bandwidth:rate=1001bps,burst=1500",
            "corrupt:p=0.01,bytes=4",
            "duplicate:p=0.2,flows=0.3",
            "connect:errno=econnrefused,dport=5432",
            "connect:redirect=[::1]:8080,p=0.5",
            "reset",
            "reset:interval=2s,dport=80",
            "dns:name=*.Example.com.,answer=198.51.100.1,p=0.5,flows=0.2",
            "xdp-drop:dev=lo,p=0.1,proto=udp",
        ] {
            let spec = parse_fault(text).unwrap();
            assert_eq!(parse_fault(&spec.to_string()).unwrap(), spec);
        }
    }

    #[test]
    fn spelling_is_forgiving_where_it_is_unambiguous() {
        assert_eq!(
            parse_fault("loss :p=0.1").unwrap(),
            parse_fault("loss:p=0.1").unwrap()
        );
        assert_eq!(
            parse_fault("loss:p=-0").unwrap().to_string(),
            "loss:p=0,dir=both"
        );
    }

    #[test]
    fn units_are_tcs() {
        assert_eq!(parse_rate("r", "1mbit").unwrap(), 125_000);
        assert_eq!(parse_rate("r", "200kbps").unwrap(), 200_000);
        assert_eq!(parse_rate("r", "1kibit").unwrap(), 128);
        assert_eq!(parse_rate("r", "1.5gbit").unwrap(), 187_500_000);
        assert_eq!(parse_size("b", "64KiB").unwrap(), 65536);
        assert_eq!(parse_size("b", "1500").unwrap(), 1500);
    }

    #[test]
    fn gilbert_theory() {
        let FaultSpec::Loss(l) =
            parse_fault("loss:model=gilbert,enter_bad=0.01,leave_bad=0.25").unwrap()
        else {
            panic!()
        };
        let (mean, burst) = l.model.theory(l.p);
        assert!((mean - 0.01 / 0.26).abs() < 1e-12 && (l.p - mean).abs() < 1e-12);
        assert!((burst - 4.0).abs() < 1e-12);
    }

    #[test]
    fn thresholds() {
        assert_eq!(threshold(loss("loss:p=0").p), 0);
        assert_eq!(threshold(loss("loss:p=0.5").p), 1 << 31);
        assert_eq!(threshold(loss("loss:p=1").p), 1 << 32);
    }

    #[test]
    fn bad_input_is_named() {
        let cases: &[(&str, &str)] = &[
            ("", "empty"),
            ("latency:for=10ms", "unknown fault kind `latency`"),
            ("delay:for=10ms", "`delay` needs `time`"),
            ("delay:time=10", "bad value `10` for `time`"),
            ("delay:time=10ms,jitter=20ms", "cannot be larger than time"),
            ("delay:time=2m", "at most 60s"),
            ("bandwidth", "`bandwidth` needs `rate`"),
            ("bandwidth:rate=1000", "bad value `1000` for `rate`"),
            ("bandwidth:rate=1mbyte", "bad value `1mbyte` for `rate`"),
            ("bandwidth:rate=1mbit,burst=2GiB", "1GiB"),
            (
                "bandwidth:rate=1mbit,burst=lots",
                "bad value `lots` for `burst`",
            ),
            ("corrupt:p=0.1,bytes=0", "bad value `0` for `bytes`"),
            ("corrupt:p=0.1,bytes=65", "bad value `65` for `bytes`"),
            ("duplicate", "`duplicate` needs `p`"),
            ("connect", "`connect` needs `errno`"),
            (
                "connect:errno=EWHATEVER",
                "bad value `EWHATEVER` for `errno`",
            ),
            ("connect:errno=EIO,redirect=127.0.0.1:1", "not both"),
            (
                "connect:redirect=127.0.0.1",
                "bad value `127.0.0.1` for `redirect`",
            ),
            ("connect:errno=EIO,sport=1", "destination only"),
            (
                "connect:redirect=[::1]:80,dst=10.0.0.0/8",
                "different address families",
            ),
            ("reset:interval=0s", "longer than zero"),
            ("reset:proto=udp", "TCP connections only"),
            ("dns", "`dns` needs `answer`"),
            ("dns:answer=maybe", "bad value `maybe` for `answer`"),
            ("dns:name=a/b,answer=nxdomain", "bad value `a/b` for `name`"),
            ("xdp-drop:p=1", "`xdp-drop` needs `dev`"),
            ("xdp-drop:dev=a/b,p=1", "bad value `a/b` for `dev`"),
            ("loss:p=0.1,flows=0", "a share of flows above 0"),
            ("loss:p=0.1,flows=2", "bad value `2` for `flows`"),
            ("loss:model=gilbert", "`loss` needs `enter_bad`"),
            (
                "loss:model=gilbert,enter_bad=0.1,leave_bad=0.2,p=0.1",
                "not p",
            ),
            ("loss:p=0.1,leave_bad=0.2", "belongs to model=gilbert"),
            ("loss:model=markov,p=0.1", "bad value `markov` for `model`"),
            (
                "loss:model=gilbert,enter_bad=0,leave_bad=0.2",
                "never changes state",
            ),
            ("loss", "`loss` needs `p`"),
            ("loss:p=1.5", "bad value `1.5` for `p`"),
            ("loss:p=-0.1", "bad value `-0.1` for `p`"),
            ("loss:p=NaN", "bad value `NaN` for `p`"),
            ("loss:p=abc", "bad value `abc` for `p`"),
            ("loss:p=0.1,colour=red", "unknown key `colour`"),
            ("loss:p=0.1,p=0.2", "given twice"),
            (
                "loss:p=0.1,dst=10.0.0.0/33",
                "bad value `10.0.0.0/33` for `dst`",
            ),
            (
                "loss:p=0.1,src=300.1.1.1",
                "bad value `300.1.1.1` for `src`",
            ),
            ("loss:p=0.1,dport=70000", "bad value `70000` for `dport`"),
            ("loss:p=0.1,dport=90-80", "low end"),
            ("loss:p=0.1,sport=x", "bad value `x` for `sport`"),
            ("loss:p=0.1,dir=up", "bad value `up` for `dir`"),
            ("loss:p=0.1,proto=sctp", "bad value `sctp` for `proto`"),
            ("loss:p=0.1,proto=icmp,dport=1", "icmp has no ports"),
            ("loss:p=0.1,dport", "is not key=value"),
            ("loss:p=", "is not key=value"),
            ("loss:p=1e-10", "resolution"),
            ("loss:p=0.9999999999", "resolution"),
            ("loss:p=1,dst=::ffff:127.0.0.1", "write 127.0.0.1"),
        ];
        for (text, want) in cases {
            let err = parse_fault(text).expect_err(text);
            assert!(
                err.to_string().contains(want),
                "{text}: got `{err}`, want `{want}`"
            );
            assert_eq!(err.class(), Class::BadInput);
        }
    }

    #[test]
    fn durations_need_units() {
        assert_eq!(
            parse_duration("d", "250ms").unwrap(),
            Duration::from_millis(250)
        );
        assert_eq!(parse_duration("d", "5m").unwrap(), Duration::from_secs(300));
        assert_eq!(
            parse_duration("d", "250us").unwrap(),
            Duration::from_micros(250)
        );
        assert!(parse_duration("d", "365d").is_ok());
        for bad in [
            "10",
            "0s",
            "ten seconds",
            "-1s",
            "",
            "366d",
            "18446744073709551615s",
        ] {
            assert!(parse_duration("d", bad).is_err(), "{bad}");
        }
    }
}
