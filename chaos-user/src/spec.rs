//! The fault spec grammar: `KIND[:key=value[,key=value...]]`, parsed by a pure function from
//! text to a typed spec, shared by the command line and scenario files.

use std::{collections::BTreeSet, fmt, net::IpAddr, str::FromStr, time::Duration};

use ipnet::IpNet;
use serde::Serialize;

use crate::error::{Class, Classify};

/// Fault kinds this build knows, as users write them.
pub const KINDS: &[&str] = &["loss"];

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
}

impl FaultSpec {
    /// The kind as users write it.
    pub fn kind(&self) -> &'static str {
        match self {
            FaultSpec::Loss(_) => "loss",
        }
    }
}

/// `loss`: packets of the target vanish silently with probability `p`.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct LossSpec {
    pub p: f64,
    pub dir: Direction,
    #[serde(flatten)]
    pub filter: PacketFilter,
}

impl LossSpec {
    /// The kernel's draw threshold: a packet is lost when a uniform `u32` is below it.
    pub fn threshold(&self) -> u64 {
        ((self.p * (1u64 << 32) as f64).round() as u64).min(1 << 32)
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

impl fmt::Display for Ports {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.lo == self.hi {
            write!(f, "{}", self.lo)
        } else {
            write!(f, "{}-{}", self.lo, self.hi)
        }
    }
}

impl fmt::Display for FaultSpec {
    /// The canonical text of the spec: every key, in a fixed order, defaults included.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FaultSpec::Loss(loss) => {
                let dir = match loss.dir {
                    Direction::Egress => "egress",
                    Direction::Ingress => "ingress",
                    Direction::Both => "both",
                };
                write!(f, "loss:p={},dir={dir}", loss.p)?;
                write_filter(f, &loss.filter)
            }
        }
    }
}

fn write_filter(f: &mut fmt::Formatter<'_>, filter: &PacketFilter) -> fmt::Result {
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
    Ok(())
}

impl FromStr for FaultSpec {
    type Err = SpecError;

    fn from_str(text: &str) -> Result<Self, SpecError> {
        parse_fault(text)
    }
}

const LOSS_KEYS: &[&str] = &["p", "dir", "proto", "src", "dst", "sport", "dport"];

/// Parses one fault spec. Pure: no system state is read.
pub fn parse_fault(text: &str) -> Result<FaultSpec, SpecError> {
    let text = text.trim();
    if text.is_empty() {
        return Err(SpecError::Empty);
    }
    let (kind, rest) = text.split_once(':').unwrap_or((text, ""));
    let kind = kind.trim();
    let pairs = split_pairs(kind, rest)?;
    match kind {
        "loss" => parse_loss(kind, &pairs).map(FaultSpec::Loss),
        _ => Err(SpecError::UnknownKind(kind.to_string())),
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

fn parse_loss(kind: &str, pairs: &[(&str, &str)]) -> Result<LossSpec, SpecError> {
    let mut p = None;
    let mut dir = Direction::Both;
    let mut filter = PacketFilter {
        proto: Proto::Any,
        src: None,
        dst: None,
        sport: None,
        dport: None,
    };
    for &(key, value) in pairs {
        match key {
            "p" => p = Some(parse_probability(key, value)?),
            "dir" => dir = parse_direction(value)?,
            _ if parse_filter_key(&mut filter, key, value)? => {}
            _ => {
                return Err(SpecError::UnknownKey {
                    kind: kind.to_string(),
                    key: key.to_string(),
                    known: LOSS_KEYS,
                });
            }
        }
    }
    let Some(p) = p else {
        return Err(SpecError::MissingKey {
            kind: kind.to_string(),
            key: "p",
            example: "loss:p=0.1",
        });
    };
    check_filter(&filter)?;
    Ok(LossSpec { p, dir, filter })
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
        assert_eq!(l.threshold(), 1 << 32);
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
    fn thresholds() {
        assert_eq!(loss("loss:p=0").threshold(), 0);
        assert_eq!(loss("loss:p=0.5").threshold(), 1 << 31);
        assert_eq!(loss("loss:p=1").threshold(), 1 << 32);
    }

    #[test]
    fn bad_input_is_named() {
        let cases: &[(&str, &str)] = &[
            ("", "empty"),
            ("delay:for=10ms", "unknown fault kind `delay`"),
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
