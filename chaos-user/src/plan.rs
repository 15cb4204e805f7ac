//! The plan of a session: each fault turned into the rule records the kernel programs read,
//! and the programs and hooks they need.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use chaos_common::{
    ACTION_BANDWIDTH, ACTION_CORRUPT, ACTION_DELAY, ACTION_DUPLICATE, ACTION_LOSS, AddrMatch,
    CallRule, CrashRule, DEVICE_ANY_MINOR, DIR_EGRESS, DIR_INGRESS, DIR_XDP, DeviceRule, FAMILY_V4,
    FAMILY_V6, MAX_CALL_RULES, MAX_CRASH_RULES, MAX_DEVICE_RULES, MAX_PACKET_RULES, MAX_PATHS,
    MAX_SOCK_RULES, MODEL_GILBERT, PROTO_ANY, PROTO_ICMP, PROTO_TCP, PROTO_UDP, PacketFilter,
    PacketRule, PortRange, SCHEDULE_DRAW, SCHEDULE_EVERY, SCHEDULE_NTH, SOCK_CREATE, SOCK_DNS,
    SOCK_ERRNO, SOCK_REDIRECT, SockRule,
};
use ipnet::IpNet;

use crate::{
    dns,
    loader::{LoadError, Needs, Programs},
    spec::{self, ConnectOutcome, DeviceKind, DnsAnswer, FaultSpec, LossModel, Ports, Proto},
};

/// Where a fault lives in the kernel or in chaos-user.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Carrier {
    /// A packet rule, by index.
    Packet(u32),
    /// A socket rule, by index.
    Sock(u32),
    /// A rule of the DNS responder, by index.
    Dns(usize),
    /// Sockets destroyed from user space.
    Reset,
    /// The cgroup frozen from user space.
    Pause,
    /// A device rule, by index.
    Device(u32),
    /// A crash rule, by index.
    Crash(u32),
    /// A call rule of the LSM hooks, by index.
    Call(u32),
    /// `fd-limit`: the call rule where the file allocation hook runs, else the socket rule.
    FdLimit { call: u32, sock: u32 },
    /// A file that takes a filesystem's space, made from user space.
    DiskFill,
    /// Cached pages dropped from user space.
    PageCache,
    /// A file damaged from user space.
    CorruptFile,
    /// Stressor processes in the target cgroup.
    Stressors,
    /// A cgroup limit lowered from user space.
    Limit,
}

/// What a session's faults need from the kernel.
#[derive(Clone, Debug)]
pub struct Plan {
    pub packet: Vec<PacketRule>,
    pub sock: Vec<SockRule>,
    pub device: Vec<DeviceRule>,
    pub crash: Vec<CrashRule>,
    pub call: Vec<CallRule>,
    /// The `path=` prefixes of the call and crash rules: bit `1 << i` stands for
    /// `call_paths[i]`.
    pub call_paths: Vec<std::path::PathBuf>,
    /// The directories `disk-fill` puts its files in.
    pub fill_dirs: Vec<std::path::PathBuf>,
    /// What `page-cache` drops the cache of.
    pub cache_paths: Vec<std::path::PathBuf>,
    /// For each fault, in order, where it lives.
    pub carriers: Vec<Carrier>,
    pub needs: Needs,
    /// `delay` needs the `fq` qdisc on every interface.
    pub fq: bool,
    /// The rules of the DNS responder, if any fault is `dns`.
    pub dns: Vec<dns::DnsRule>,
}

/// The responder's port when none is running yet (`--dry-run`).
const NO_PORT: u16 = 0;

impl Plan {
    /// Turns faults into rule records; `dns_port` is where the DNS responder listens.
    pub fn new(faults: &[FaultSpec], dns_port: u16) -> Result<Plan, spec::SpecError> {
        let mut plan = Plan {
            packet: Vec::new(),
            sock: Vec::new(),
            device: Vec::new(),
            crash: Vec::new(),
            call: Vec::new(),
            call_paths: Vec::new(),
            fill_dirs: faults
                .iter()
                .filter_map(|f| match f {
                    FaultSpec::DiskFill(d) => Some(d.path.clone()),
                    FaultSpec::IoStress(io) => Some(io.path.clone()),
                    _ => None,
                })
                .collect(),
            cache_paths: faults
                .iter()
                .filter_map(|f| match f {
                    FaultSpec::PageCache(c) => Some(c.path.clone()),
                    FaultSpec::CorruptFile(c) => Some(c.path.clone()),
                    _ => None,
                })
                .collect(),
            carriers: Vec::new(),
            needs: Needs::default(),
            fq: false,
            dns: Vec::new(),
        };
        for fault in faults {
            let carrier = plan.add(fault, dns_port)?;
            plan.carriers.push(carrier);
        }
        // Faults whose effect is a failed call: the report shows what the target then did.
        plan.needs.sys_exit = faults.iter().any(|f| {
            matches!(
                f,
                FaultSpec::Connect(_)
                    | FaultSpec::Reset(_)
                    | FaultSpec::Dns(_)
                    | FaultSpec::Device(_)
                    | FaultSpec::FdLimit(_)
                    | FaultSpec::Crash(_)
                    | FaultSpec::File(_)
                    | FaultSpec::Nospace(_)
                    | FaultSpec::Fail(_)
            )
        });
        if plan.call.len() > MAX_CALL_RULES as usize {
            return Err(spec::SpecError::Conflict(format!(
                "{} file, nospace, fail and fd-limit faults (with crash faults whose path= is \
                 matched at an LSM hook) given; a session holds at most {MAX_CALL_RULES}",
                plan.call.len()
            )));
        }
        for (family, max, given) in [
            ("device", MAX_DEVICE_RULES, plan.device.len()),
            ("crash", MAX_CRASH_RULES, plan.crash.len()),
        ] {
            if given > max as usize {
                return Err(spec::SpecError::Conflict(format!(
                    "{given} {family} faults given; a session holds at most {max}"
                )));
            }
        }
        for (what, n) in [
            (
                "cpu-throttle",
                faults
                    .iter()
                    .filter(|f| matches!(f, FaultSpec::CpuThrottle(_)))
                    .count(),
            ),
            (
                "memory-pressure:limit=",
                faults
                    .iter()
                    .filter(|f| {
                        matches!(
                            f,
                            FaultSpec::MemoryPressure(spec::MemoryPressureSpec::Limit(_))
                        )
                    })
                    .count(),
            ),
        ] {
            if n > 1 {
                return Err(spec::SpecError::Conflict(format!(
                    "{n} {what} faults given; a cgroup has one limit of each kind, so give one"
                )));
            }
        }
        if plan.call_paths.len() > MAX_PATHS as usize {
            return Err(spec::SpecError::Conflict(format!(
                "{} different path= prefixes given; a session holds at most {MAX_PATHS}",
                plan.call_paths.len()
            )));
        }
        if plan.packet.len() > MAX_PACKET_RULES as usize {
            return Err(spec::SpecError::Conflict(format!(
                "{} packet faults (loss, delay, bandwidth, corrupt, duplicate, xdp-drop) given; \
                 a session holds at most {MAX_PACKET_RULES}",
                plan.packet.len()
            )));
        }
        if plan.sock.len() > MAX_SOCK_RULES as usize {
            return Err(spec::SpecError::Conflict(format!(
                "{} socket rules given (one per connect and fd-limit, two for all dns \
                 together); a session holds at most {MAX_SOCK_RULES}",
                plan.sock.len()
            )));
        }
        Ok(plan)
    }

    fn add(&mut self, fault: &FaultSpec, dns_port: u16) -> Result<Carrier, spec::SpecError> {
        let mut rule = PacketRule {
            flow_threshold: 1 << 32,
            ..PacketRule::default()
        };
        match fault {
            FaultSpec::Loss(loss) => {
                rule.action = ACTION_LOSS;
                rule.threshold = spec::threshold(loss.p);
                rule.filter = packet_filter(&loss.filter);
                rule.flow_threshold = spec::threshold(loss.flows);
                if let LossModel::Gilbert {
                    enter_bad,
                    leave_bad,
                    loss_bad,
                    loss_good,
                } = loss.model
                {
                    rule.model = MODEL_GILBERT;
                    rule.enter_bad = spec::threshold(enter_bad);
                    rule.leave_bad = spec::threshold(leave_bad);
                    rule.loss_bad = spec::threshold(loss_bad);
                    rule.loss_good = spec::threshold(loss_good);
                }
                if loss.dir.egress() {
                    rule.dirs |= DIR_EGRESS;
                    self.needs.tc_egress = true;
                }
                if loss.dir.ingress() {
                    rule.dirs |= DIR_INGRESS;
                    self.needs.cg_ingress = true;
                }
            }
            FaultSpec::Delay(delay) => {
                rule.action = ACTION_DELAY;
                rule.threshold = 1 << 32;
                rule.delay_ns = delay.time.as_nanos() as u64;
                rule.jitter_ns = delay.jitter.as_nanos() as u64;
                rule.filter = packet_filter(&delay.filter);
                rule.flow_threshold = spec::threshold(delay.flows);
                rule.dirs = DIR_EGRESS;
                self.needs.tc_egress = true;
                self.fq = true;
            }
            FaultSpec::Bandwidth(b) => {
                rule.action = ACTION_BANDWIDTH;
                rule.rate_bytes = b.rate;
                rule.burst_bytes = b.burst;
                rule.filter = packet_filter(&b.filter);
                rule.flow_threshold = spec::threshold(b.flows);
                rule.dirs = DIR_EGRESS;
                self.needs.cg_egress = true;
                self.needs.sock_ops = true;
            }
            FaultSpec::Corrupt(c) => {
                rule.action = ACTION_CORRUPT;
                rule.threshold = spec::threshold(c.p);
                rule.corrupt_bytes = c.bytes;
                rule.filter = packet_filter(&c.filter);
                rule.flow_threshold = spec::threshold(c.flows);
                rule.dirs = DIR_EGRESS;
                self.needs.tc_egress = true;
            }
            FaultSpec::Duplicate(d) => {
                rule.action = ACTION_DUPLICATE;
                rule.threshold = spec::threshold(d.p);
                rule.filter = packet_filter(&d.filter);
                rule.flow_threshold = spec::threshold(d.flows);
                rule.dirs = DIR_EGRESS;
                self.needs.tc_egress = true;
            }
            FaultSpec::XdpDrop(x) => {
                if self.needs.xdp.as_ref().is_some_and(|dev| *dev != x.dev) {
                    return Err(spec::SpecError::Conflict(
                        "xdp-drop acts on one interface per session; give every xdp-drop the \
                         same dev, or run a second session"
                            .into(),
                    ));
                }
                rule.action = ACTION_LOSS;
                rule.threshold = spec::threshold(x.p);
                rule.filter = packet_filter(&x.filter);
                rule.flow_threshold = spec::threshold(x.flows);
                rule.dirs = DIR_XDP;
                self.needs.xdp = Some(x.dev.clone());
            }
            FaultSpec::Connect(c) => {
                let mut rule = SockRule {
                    threshold: spec::threshold(c.p),
                    flow_threshold: spec::threshold(c.flows),
                    dst: addr_match(c.dst),
                    dport: port_range(c.dport),
                    proto: proto(c.proto),
                    ..SockRule::default()
                };
                match c.outcome {
                    ConnectOutcome::Errno(e) => {
                        rule.action = SOCK_ERRNO;
                        rule.errno = e.number as u32;
                    }
                    ConnectOutcome::Redirect(to) => {
                        rule.action = SOCK_REDIRECT;
                        let (family, addr) = words_of(to.ip());
                        rule.redirect_family = family;
                        rule.redirect_addr = addr;
                        rule.redirect_port = to.port().to_be();
                        if c.dst.is_none() {
                            // Only sockets of the redirect's family can go there.
                            rule.dst = AddrMatch {
                                family,
                                ..AddrMatch::default()
                            };
                        }
                    }
                }
                self.needs.connect = true;
                self.sock.push(rule);
                return Ok(Carrier::Sock(self.sock.len() as u32 - 1));
            }
            FaultSpec::Dns(d) => {
                if self.dns.is_empty() {
                    self.add_dns_redirects(dns_port);
                }
                self.dns.push(dns::DnsRule {
                    name: d.name.clone(),
                    answer: match d.answer {
                        DnsAnswer::Nxdomain => dns::Answer::NxDomain,
                        DnsAnswer::Servfail => dns::Answer::ServFail,
                        DnsAnswer::Refused => dns::Answer::Refused,
                        DnsAnswer::Timeout => dns::Answer::Timeout,
                        DnsAnswer::Addr(a) => dns::Answer::Addr(a),
                    },
                    p: d.p,
                    flows: d.flows,
                });
                return Ok(Carrier::Dns(self.dns.len() - 1));
            }
            FaultSpec::Reset(_) => return Ok(Carrier::Reset),
            FaultSpec::DiskFill(_) => return Ok(Carrier::DiskFill),
            FaultSpec::PageCache(_) => return Ok(Carrier::PageCache),
            FaultSpec::CorruptFile(_) => return Ok(Carrier::CorruptFile),
            FaultSpec::CpuThrottle(_)
            | FaultSpec::MemoryPressure(spec::MemoryPressureSpec::Limit(_)) => {
                return Ok(Carrier::Limit);
            }
            FaultSpec::CpuHog(_)
            | FaultSpec::MemoryPressure(_)
            | FaultSpec::MemoryLeak(_)
            | FaultSpec::IoStress(_) => {
                return Ok(Carrier::Stressors);
            }
            FaultSpec::File(file) => {
                let ops = file.ops.iter().fold(0, |bits, op| bits | op.bit());
                return Ok(self.add_call(ops, file.errno.number, file.path.as_deref(), file.when));
            }
            FaultSpec::Nospace(n) => {
                // What needs new blocks: new names and the data written.
                use chaos_common::op;
                let ops = op::CREATE | op::WRITE | op::MKDIR | op::SYMLINK | op::LINK;
                return Ok(self.add_call(ops, libc::ENOSPC, n.path.as_deref(), n.when));
            }
            FaultSpec::Fail(fail) => {
                return Ok(self.add_call(
                    fail.ops(),
                    fail.errno.number,
                    fail.path.as_deref(),
                    fail.when,
                ));
            }
            FaultSpec::Crash(c)
                if c.path.is_some() && !spec::FD_SYSCALLS.contains(&c.syscall.name) =>
            {
                let ops = spec::FAIL_SYSCALLS
                    .iter()
                    .find(|(name, _, _)| *name == c.syscall.name)
                    .map_or(0, |(_, ops, _)| *ops);
                let carrier = self.add_call(ops, 0, c.path.as_deref(), c.when);
                if let Some(rule) = self.call.last_mut() {
                    rule.signal = c.signal.number;
                }
                return Ok(carrier);
            }
            FaultSpec::Crash(c) => {
                let (mode, count, threshold) = schedule(c.when);
                let path_bit = c.path.as_deref().map_or(0, |p| self.path_bit(p));
                self.crash.push(CrashRule {
                    path_bit,
                    threshold,
                    count,
                    syscall: c.syscall.number,
                    signal: c.signal.number,
                    mode,
                    ..CrashRule::default()
                });
                self.needs.sys_enter = true;
                return Ok(Carrier::Crash(self.crash.len() as u32 - 1));
            }
            FaultSpec::FdLimit(l) => {
                // Both records: the loader learns which hook this kernel runs.
                self.sock.push(SockRule {
                    threshold: spec::threshold(l.p),
                    action: SOCK_CREATE,
                    errno: libc::EMFILE as u32,
                    ..SockRule::default()
                });
                let Carrier::Call(call) = self.add_call(
                    chaos_common::op::FILE_ALLOC,
                    libc::EMFILE,
                    None,
                    spec::Schedule::P(l.p),
                ) else {
                    unreachable!("add_call gives a call rule")
                };
                self.needs.calls &= !chaos_common::op::FILE_ALLOC;
                self.needs.fd_limit = true;
                return Ok(Carrier::FdLimit {
                    call,
                    sock: self.sock.len() as u32 - 1,
                });
            }
            FaultSpec::Device(d) => {
                self.device.push(DeviceRule {
                    threshold: spec::threshold(d.p),
                    major: d.major,
                    minor: d.minor.unwrap_or(DEVICE_ANY_MINOR),
                    errno: d.errno.number as u32,
                    kind: match d.kind {
                        DeviceKind::Any => 0,
                        DeviceKind::Block => 1,
                        DeviceKind::Char => 2,
                    },
                    access: d.access.chars().fold(0, |bits, c| {
                        bits | match c {
                            'm' => 1,
                            'r' => 2,
                            _ => 4,
                        }
                    }),
                    ..DeviceRule::default()
                });
                self.needs.device = true;
                return Ok(Carrier::Device(self.device.len() as u32 - 1));
            }
            FaultSpec::Pause(_) => {
                if self.carriers.contains(&Carrier::Pause) {
                    return Err(spec::SpecError::Conflict(
                        "one pause per session: two schedules would thaw each other's pauses"
                            .into(),
                    ));
                }
                return Ok(Carrier::Pause);
            }
        }
        self.packet.push(rule);
        Ok(Carrier::Packet(self.packet.len() as u32 - 1))
    }

    /// The bit that stands for `path` in the kernel's path masks (beyond the last bit, 0: the
    /// count of paths is checked once all faults are in).
    fn path_bit(&mut self, path: &std::path::Path) -> u32 {
        let at = match self.call_paths.iter().position(|p| p == path) {
            Some(at) => at,
            None => {
                self.call_paths.push(path.to_path_buf());
                self.call_paths.len() - 1
            }
        };
        self.needs.paths = true;
        1u32.checked_shl(at as u32).unwrap_or(0)
    }

    /// A rule of the LSM hooks.
    fn add_call(
        &mut self,
        ops: u64,
        errno: i32,
        path: Option<&std::path::Path>,
        when: spec::Schedule,
    ) -> Carrier {
        let path_bit = path.map_or(0, |p| self.path_bit(p));
        let (mode, count, threshold) = schedule(when);
        self.call.push(CallRule {
            threshold,
            count,
            ops,
            errno: errno as u32,
            path_bit,
            mode,
            ..CallRule::default()
        });
        self.needs.calls |= ops;
        Carrier::Call(self.call.len() as u32 - 1)
    }

    /// The two socket rules that send the target's DNS traffic (port 53, either family, UDP or
    /// TCP) to the responder on loopback.
    fn add_dns_redirects(&mut self, port: u16) {
        for (family, addr) in [
            (FAMILY_V4, IpAddr::V4(Ipv4Addr::LOCALHOST)),
            (FAMILY_V6, IpAddr::V6(Ipv6Addr::LOCALHOST)),
        ] {
            let (_, words) = words_of(addr);
            self.sock.push(SockRule {
                threshold: 1 << 32,
                flow_threshold: 1 << 32,
                dst: AddrMatch {
                    family,
                    ..AddrMatch::default()
                },
                dport: PortRange { lo: 53, hi: 53 },
                action: SOCK_DNS,
                redirect_family: family,
                redirect_addr: words,
                redirect_port: port.to_be(),
                ..SockRule::default()
            });
        }
        self.needs.connect = true;
        self.needs.dns = true;
        self.needs.cg_egress = true;
    }

    /// The pacing caps `bandwidth` puts on TCP connections, as the sockets report them.
    pub fn pacing_rates(&self) -> Vec<u64> {
        self.packet
            .iter()
            .filter(|r| r.action == ACTION_BANDWIDTH)
            .map(|r| r.rate_bytes.min(u64::from(u32::MAX - 1)))
            .collect()
    }

    /// Loads and verifies the programs the plan needs, attaching nothing (`--dry-run`).
    pub fn load(&self) -> Result<Programs, LoadError> {
        Programs::load(&self.needs)
    }

    /// Fails with the first `path=` that cannot be looked up: refused as bad input before
    /// anything is loaded.
    pub fn check_paths(&self) -> Result<(), LoadError> {
        for path in self
            .call_paths
            .iter()
            .chain(&self.fill_dirs)
            .chain(&self.cache_paths)
        {
            std::fs::metadata(path).map_err(|source| LoadError::Path {
                path: path.display().to_string(),
                source,
            })?;
        }
        for dir in &self.fill_dirs {
            if !dir.is_dir() {
                return Err(LoadError::Path {
                    path: dir.display().to_string(),
                    source: std::io::Error::from(std::io::ErrorKind::NotADirectory),
                });
            }
        }
        Ok(())
    }

    /// A plan for `--dry-run`, before any responder runs.
    pub fn dry(faults: &[FaultSpec]) -> Result<Plan, spec::SpecError> {
        Plan::new(faults, NO_PORT)
    }
}

/// A schedule as the kernel's (mode, count, threshold).
fn schedule(when: spec::Schedule) -> (u8, u64, u64) {
    match when {
        spec::Schedule::Nth(n) => (SCHEDULE_NTH, n, 0),
        spec::Schedule::Every(n) => (SCHEDULE_EVERY, n, 0),
        spec::Schedule::P(p) => (SCHEDULE_DRAW, 0, spec::threshold(p)),
    }
}

fn packet_filter(f: &crate::spec::PacketFilter) -> PacketFilter {
    PacketFilter {
        src: addr_match(f.src),
        dst: addr_match(f.dst),
        sport: port_range(f.sport),
        dport: port_range(f.dport),
        proto: proto(f.proto),
        _pad: [0; 7],
    }
}

fn proto(p: Proto) -> u8 {
    match p {
        Proto::Any => PROTO_ANY,
        Proto::Tcp => PROTO_TCP,
        Proto::Udp => PROTO_UDP,
        Proto::Icmp => PROTO_ICMP,
    }
}

/// An address as the hooks carry it: its family and its words in packet byte order.
pub(crate) fn words_of(addr: IpAddr) -> (u8, [u32; 4]) {
    let mut out = [0u32; 4];
    let (family, bytes) = match addr {
        IpAddr::V4(a) => (FAMILY_V4, a.octets().to_vec()),
        IpAddr::V6(a) => (FAMILY_V6, a.octets().to_vec()),
    };
    for (i, chunk) in bytes.chunks(4).enumerate() {
        out[i] = u32::from_ne_bytes(chunk.try_into().expect("chunks of four"));
    }
    (family, out)
}

fn port_range(ports: Option<Ports>) -> PortRange {
    ports.map_or(PortRange::ANY, |p| PortRange { lo: p.lo, hi: p.hi })
}

/// The address and mask as the packet carries them, word by word in the kernel's byte order.
fn addr_match(net: Option<IpNet>) -> AddrMatch {
    let Some(net) = net else {
        return AddrMatch::default();
    };
    let words = |bytes: &[u8]| {
        let mut out = [0u32; 4];
        for (i, chunk) in bytes.chunks(4).enumerate() {
            out[i] = u32::from_ne_bytes(chunk.try_into().expect("chunks of four"));
        }
        out
    };
    let (family, addr, mask) = match net {
        IpNet::V4(n) => (
            FAMILY_V4,
            words(&n.network().octets()),
            words(&n.netmask().octets()),
        ),
        IpNet::V6(n) => (
            FAMILY_V6,
            words(&n.network().octets()),
            words(&n.netmask().octets()),
        ),
    };
    AddrMatch {
        addr,
        mask,
        family,
        _pad: [0; 3],
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::parse_fault;

    #[test]
    fn rules_carry_the_spec() {
        let faults = vec![
            parse_fault("loss:p=0.5,dir=egress,proto=udp,dst=127.0.0.0/8,dport=9000-9010").unwrap(),
            parse_fault("loss:p=1,dir=ingress,src=::1").unwrap(),
        ];
        let plan = Plan::new(&faults, 5353).unwrap();
        assert!(plan.needs.tc_egress && plan.needs.cg_ingress);
        let r = &plan.packet[0];
        assert_eq!(r.dirs, DIR_EGRESS);
        assert_eq!(r.threshold, 1 << 31);
        assert_eq!(r.filter.proto, PROTO_UDP);
        assert_eq!(r.filter.dport, PortRange { lo: 9000, hi: 9010 });
        assert_eq!(r.filter.dst.family, FAMILY_V4);
        assert_eq!(r.filter.dst.addr[0].to_ne_bytes(), [127, 0, 0, 0]);
        assert_eq!(r.filter.dst.mask[0].to_ne_bytes(), [255, 0, 0, 0]);
        assert_eq!(r.filter.src, AddrMatch::default());
        let r = &plan.packet[1];
        assert_eq!(r.dirs, DIR_INGRESS);
        assert_eq!(r.filter.src.family, FAMILY_V6);
        assert_eq!(r.filter.src.addr[3].to_ne_bytes(), [0, 0, 0, 1]);
        assert_eq!(r.filter.src.mask, [u32::MAX; 4]);
    }

    #[test]
    fn kinds_land_on_their_hooks() {
        let faults: Vec<FaultSpec> = [
            "connect:errno=ECONNREFUSED,dport=5432",
            "dns:name=*.example.com,answer=nxdomain",
            "bandwidth:rate=8mbit",
            "delay:time=100ms,jitter=10ms",
            "reset:dport=80",
            "connect:redirect=127.0.0.1:9",
            "xdp-drop:dev=lo,p=0.5",
        ]
        .iter()
        .map(|t| parse_fault(t).unwrap())
        .collect();
        let plan = Plan::new(&faults, 5353).unwrap();
        assert_eq!(
            plan.carriers,
            [
                Carrier::Sock(0),
                Carrier::Dns(0),
                Carrier::Packet(0),
                Carrier::Packet(1),
                Carrier::Reset,
                Carrier::Sock(3),
                Carrier::Packet(2),
            ]
        );
        assert_eq!(plan.sock[0].errno, libc::ECONNREFUSED as u32);
        assert_eq!(plan.sock[0].dport, PortRange { lo: 5432, hi: 5432 });
        // The DNS redirects: one per family, to the responder's port.
        assert_eq!(plan.sock[1].action, SOCK_DNS);
        assert_eq!(plan.sock[1].redirect_family, FAMILY_V4);
        assert_eq!(u16::from_be(plan.sock[2].redirect_port), 5353);
        assert_eq!(plan.sock[2].redirect_family, FAMILY_V6);
        // A redirect without dst applies to sockets of its own family only.
        assert_eq!(plan.sock[3].dst.family, FAMILY_V4);
        assert_eq!(plan.packet[0].rate_bytes, 1_000_000);
        assert_eq!(plan.packet[1].delay_ns, 100_000_000);
        assert_eq!(plan.packet[2].dirs, DIR_XDP);
        assert!(plan.fq && plan.needs.cg_egress && plan.needs.dns);
        assert_eq!(plan.needs.xdp.as_deref(), Some("lo"));
        let two_devs = [
            parse_fault("xdp-drop:dev=lo,p=1").unwrap(),
            parse_fault("xdp-drop:dev=eth0,p=1").unwrap(),
        ];
        assert!(Plan::new(&two_devs, 0).is_err());
    }

    #[test]
    fn call_faults_share_their_paths_and_hooks() {
        use chaos_common::op;
        let faults: Vec<FaultSpec> = [
            "file:op=open+read,errno=EACCES,path=/srv",
            "nospace:path=/srv",
            "fail:syscall=clone,errno=EAGAIN,nth=2",
            "fd-limit:p=0.5",
            "crash:syscall=fsync,nth=3,path=/var",
            "crash:syscall=unlink,signal=SIGABRT,every=2,path=/var",
        ]
        .iter()
        .map(|t| parse_fault(t).unwrap())
        .collect();
        let plan = Plan::new(&faults, 0).unwrap();
        assert_eq!(
            plan.carriers,
            [
                Carrier::Call(0),
                Carrier::Call(1),
                Carrier::Call(2),
                Carrier::FdLimit { call: 3, sock: 0 },
                Carrier::Crash(0),
                Carrier::Call(4),
            ]
        );
        assert_eq!(
            plan.call_paths,
            ["/srv", "/var"].map(std::path::PathBuf::from)
        );
        assert_eq!(
            (plan.call[0].ops, plan.call[0].path_bit),
            (op::OPEN | op::READ, 1)
        );
        assert_eq!(plan.call[0].errno, libc::EACCES as u32);
        let full_disk = op::CREATE | op::WRITE | op::MKDIR | op::SYMLINK | op::LINK;
        assert_eq!((plan.call[1].ops, plan.call[1].errno), (full_disk, 28));
        assert_eq!(
            (plan.call[2].ops, plan.call[2].mode),
            (op::TASK_ALLOC, SCHEDULE_NTH)
        );
        assert_eq!(plan.call[3].ops, op::FILE_ALLOC);
        // fsync takes a descriptor: matched at syscall entry; unlink names a path: at its hook.
        assert_eq!((plan.crash[0].path_bit, plan.crash[0].count), (2, 3));
        assert_eq!(plan.call[4].signal, libc::SIGABRT as u32);
        assert_eq!((plan.call[4].errno, plan.call[4].ops), (0, op::UNLINK));
        // fd-limit's file allocation hook is the loader's choice, not a must.
        assert_eq!(
            plan.needs.calls,
            op::OPEN | op::READ | full_disk | op::TASK_ALLOC | op::UNLINK
        );
        assert!(plan.needs.fd_limit && plan.needs.paths && plan.needs.sys_enter);
        let nine: Vec<FaultSpec> = (0..9)
            .map(|i| parse_fault(&format!("nospace:path=/p{i}")).unwrap())
            .collect();
        assert!(
            Plan::new(&nine, 0).is_err(),
            "more rules than the map holds"
        );
    }
}
