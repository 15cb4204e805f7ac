//! The canonical text of a spec: what `Display` prints, which parses back to the same spec.

use std::{fmt, str::FromStr, time::Duration};

use super::*;

impl fmt::Display for Ports {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.lo == self.hi {
            write!(f, "{}", self.lo)
        } else {
            write!(f, "{}-{}", self.lo, self.hi)
        }
    }
}

/// A duration in one unit, the largest that is exact (`7500ms`, `2s`): no spaces, so that the
/// text works as a value of `--fault` as it is.
pub(crate) fn duration_text(d: Duration) -> String {
    let nanos = d.as_nanos();
    for (unit, scale) in [("s", 1_000_000_000), ("ms", 1_000_000), ("us", 1_000)] {
        if nanos.is_multiple_of(scale) {
            return format!("{}{unit}", nanos / scale);
        }
    }
    format!("{nanos}ns")
}

pub(super) fn serialize_duration<S: serde::Serializer>(
    d: &Duration,
    s: S,
) -> Result<S::Ok, S::Error> {
    s.serialize_str(&duration_text(*d))
}

pub(super) fn serialize_some_duration<S: serde::Serializer>(
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
        let d = |d: &Duration| duration_text(*d);
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
            FaultSpec::FdLimit(l) => write!(f, "fd-limit:p={}", l.p),
            FaultSpec::Crash(c) => {
                write!(
                    f,
                    "crash:syscall={},signal={},",
                    c.syscall.name, c.signal.name
                )?;
                write!(f, "{}", c.when)?;
                write_path(f, c.path.as_deref())
            }
            FaultSpec::File(file) => {
                let ops: Vec<&str> = file.ops.iter().map(|op| op.name()).collect();
                let ops = if file.ops.len() == FileOp::ALL.len() {
                    "any".to_string()
                } else {
                    ops.join("+")
                };
                write!(f, "file:op={ops},errno={}", file.errno.name)?;
                write_path(f, file.path.as_deref())?;
                write!(f, ",{}", file.when)
            }
            FaultSpec::Nospace(n) => {
                f.write_str("nospace:")?;
                if let Some(path) = &n.path {
                    write!(f, "path={},", path.display())?;
                }
                write!(f, "{}", n.when)
            }
            FaultSpec::DiskFill(d) => {
                write!(f, "disk-fill:path={},", d.path.display())?;
                match d.leave {
                    Leave::Free(bytes) => write!(f, "free={}", SizeText(bytes)),
                    Leave::Use(percent) => write!(f, "use={percent}%"),
                }
            }
            FaultSpec::CpuHog(h) => write!(f, "cpu-hog:workers={},load={}%", h.workers, h.load),
            FaultSpec::IoStress(io) => write!(
                f,
                "io-stress:path={},workers={},bytes={}",
                io.path.display(),
                io.workers,
                SizeText(io.bytes)
            ),
            FaultSpec::CpuThrottle(t) => write!(f, "cpu-throttle:quota={}%", t.quota),
            FaultSpec::MemoryPressure(MemoryPressureSpec::Size(size)) => {
                write!(f, "memory-pressure:size={}", SizeText(*size))
            }
            FaultSpec::MemoryPressure(MemoryPressureSpec::Limit(limit)) => {
                write!(f, "memory-pressure:limit={}", SizeText(*limit))
            }
            FaultSpec::MemoryLeak(m) => write!(
                f,
                "memory-leak:rate={}/s,max={},then={}",
                SizeText(m.rate),
                SizeText(m.max),
                if m.release { "release" } else { "hold" }
            ),
            FaultSpec::CorruptFile(c) => {
                write!(f, "corrupt-file:path={},", c.path.display())?;
                match c.mode {
                    CorruptMode::Bitflip { count, seed } => {
                        write!(f, "mode=bitflip,count={count}")?;
                        match seed {
                            Some(seed) => write!(f, ",seed={seed}"),
                            None => Ok(()),
                        }
                    }
                    CorruptMode::Truncate { to } => write!(f, "mode=truncate,to={}", SizeText(to)),
                    CorruptMode::Torn { offset, len } => write!(
                        f,
                        "mode=torn,offset={},len={}",
                        SizeText(offset),
                        SizeText(len)
                    ),
                    CorruptMode::ZeroRange { offset, len } => write!(
                        f,
                        "mode=zero-range,offset={},len={}",
                        SizeText(offset),
                        SizeText(len)
                    ),
                }
            }
            FaultSpec::PageCache(c) => {
                write!(f, "page-cache:path={}", c.path.display())?;
                match c.interval {
                    Some(i) => write!(f, ",interval={}", d(&i)),
                    None => Ok(()),
                }
            }
            FaultSpec::Fail(fail) => {
                write!(f, "fail:syscall={},errno={}", fail.syscall, fail.errno.name)?;
                write_path(f, fail.path.as_deref())?;
                write!(f, ",{}", fail.when)
            }
            FaultSpec::Device(dev) => {
                write!(f, "device:major={}", dev.major)?;
                if let Some(minor) = dev.minor {
                    write!(f, ",minor={minor}")?;
                }
                match dev.kind {
                    DeviceKind::Any => {}
                    DeviceKind::Char => f.write_str(",type=char")?,
                    DeviceKind::Block => f.write_str(",type=block")?,
                }
                if !dev.access.is_empty() {
                    write!(f, ",access={}", dev.access)?;
                }
                write!(f, ",errno={},p={}", dev.errno.name, dev.p)
            }
            FaultSpec::Pause(p) => {
                write!(f, "pause:for={},interval={}", d(&p.length), d(&p.interval))?;
                if p.random {
                    f.write_str(",random=true")?;
                }
                if let Some(seed) = p.seed {
                    write!(f, ",seed={seed}")?;
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

fn write_path(f: &mut fmt::Formatter<'_>, path: Option<&std::path::Path>) -> fmt::Result {
    match path {
        Some(path) => write!(f, ",path={}", path.display()),
        None => Ok(()),
    }
}

impl fmt::Display for Schedule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Schedule::Nth(n) => write!(f, "nth={n}"),
            Schedule::Every(n) => write!(f, "every={n}"),
            Schedule::P(p) => write!(f, "p={p}"),
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
            if bits.is_multiple_of(scale) {
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
        for (unit, scale) in [
            ("TiB", 1 << 40),
            ("GiB", 1 << 30),
            ("MiB", 1 << 20),
            ("KiB", 1 << 10),
        ] {
            if self.0 > 0 && self.0.is_multiple_of(scale) {
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
