//! One injection session: the plan turned into rule records, the programs attached, the lease
//! kept alive, and the counters read back at the end.

use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    time::{Duration, SystemTime},
};

use anyhow::Context as _;
use chaos_common::{
    ACTION_BANDWIDTH, ACTION_CORRUPT, ACTION_DELAY, ACTION_DUPLICATE, ACTION_LOSS, AddrMatch,
    DIR_EGRESS, DIR_INGRESS, DIR_XDP, FAMILY_V4, FAMILY_V6, MAX_PACKET_RULES, MAX_SOCK_RULES,
    MODEL_GILBERT, PROTO_ANY, PROTO_ICMP, PROTO_TCP, PROTO_UDP, PacketFilter, PacketRule,
    PortRange, SOCK_DNS, SOCK_ERRNO, SOCK_REDIRECT, SockRule,
};
use ipnet::IpNet;

use crate::{
    cgroup::Cgroup,
    dns,
    loader::{LoadError, Needs, Programs},
    netns::Netns,
    report::{Counters, FaultReport},
    sockdiag,
    spec::{self, ConnectOutcome, DnsAnswer, FaultSpec, LossModel, Ports, Proto},
    tc,
    undo::{Entry, UndoLog},
};

/// Without `--duration`, how long a rule stays live unless the session renews it.
pub const LEASE: Duration = Duration::from_secs(5);
/// How often a live session renews its lease and looks for new interfaces.
pub const TICK: Duration = Duration::from_secs(1);

/// When the rules of a session stop acting on their own.
#[derive(Clone, Copy, Debug)]
pub enum Deadline {
    /// A fixed end (`--duration`).
    At(Duration),
    /// A lease renewed on every tick.
    Lease,
}

/// A running session: programs attached, rules live.
pub struct Session {
    programs: Programs,
    target: Option<Cgroup>,
    faults: Vec<FaultSpec>,
    plan: Plan,
    deadline: Deadline,
    started: SystemTime,
    responder: Option<dns::Responder>,
    /// How the responders find a redirected query's resolver; shared by every namespace's.
    upstream: Option<dns::Upstream>,
    resets: Vec<ResetState>,
    /// Other network namespaces the target's processes are in, with what runs there.
    namespaces: Vec<Namespace>,
}

/// A network namespace of the target other than the injector's.
struct Namespace {
    ns: Netns,
    responder: Option<dns::Responder>,
}

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
}

/// A `reset` fault's schedule and tally.
struct ResetState {
    fault: usize,
    filter: sockdiag::SocketFilter,
    interval: Option<Duration>,
    next: Option<std::time::Instant>,
    destroyed: u64,
    rounds: u64,
}

/// What a session's faults need from the kernel.
#[derive(Clone, Debug)]
pub struct Plan {
    pub packet: Vec<PacketRule>,
    pub sock: Vec<SockRule>,
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
            carriers: Vec::new(),
            needs: Needs::default(),
            fq: false,
            dns: Vec::new(),
        };
        for fault in faults {
            let carrier = plan.add(fault, dns_port)?;
            plan.carriers.push(carrier);
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
                "{} connect faults given (dns takes two places); a session holds at most \
                 {MAX_SOCK_RULES}",
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
        }
        self.packet.push(rule);
        Ok(Carrier::Packet(self.packet.len() as u32 - 1))
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

    /// Loads and verifies the programs the plan needs, attaching nothing (`--dry-run`).
    pub fn load(&self) -> Result<Programs, LoadError> {
        Programs::load(&self.needs)
    }

    /// A plan for `--dry-run`, before any responder runs.
    pub fn dry(faults: &[FaultSpec]) -> Result<Plan, spec::SpecError> {
        Plan::new(faults, NO_PORT)
    }
}

impl Session {
    /// Loads the programs, writes the rules, and attaches. Nothing stays attached on error.
    pub fn start(
        target: Option<Cgroup>,
        faults: Vec<FaultSpec>,
        deadline: Deadline,
        undo: &mut UndoLog,
    ) -> anyhow::Result<Session> {
        let dry = Plan::dry(&faults)?;
        let needs_fq = dry.fq;
        if needs_fq {
            tc::check_fq()?;
        }
        let mut programs = dry.load()?;
        let (plan, responder, upstream) = if dry.dns.is_empty() {
            (dry, None, None)
        } else {
            let upstream = dns_upstream(programs.take_dns_peers()?);
            let responder = start_responder(0, &dry.dns, &upstream)?;
            let port = responder.port();
            (Plan::new(&faults, port)?, Some(responder), Some(upstream))
        };
        let resets = faults
            .iter()
            .enumerate()
            .filter_map(|(i, f)| match f {
                FaultSpec::Reset(r) => Some(ResetState {
                    fault: i,
                    filter: sockdiag::SocketFilter {
                        src: r.src,
                        dst: r.dst,
                        sport: r.sport,
                        dport: r.dport,
                        flows: (r.flows < 1.0).then_some(r.flows),
                    },
                    interval: r.interval,
                    next: Some(std::time::Instant::now()),
                    destroyed: 0,
                    rounds: 0,
                }),
                _ => None,
            })
            .collect();
        let mut session = Session {
            programs,
            target,
            faults,
            plan,
            deadline,
            started: SystemTime::now(),
            responder,
            upstream,
            resets,
            namespaces: Vec::new(),
        };
        session.set_deadlines(match deadline {
            Deadline::At(d) => d,
            Deadline::Lease => LEASE,
        });
        session.programs.configure(
            session.target.as_ref(),
            &session.plan.packet,
            &session.plan.sock,
        )?;
        let attached = session.attach(undo);
        if let Err(e) = attached {
            session.detach(undo)?;
            return Err(e);
        }
        session.started = SystemTime::now();
        session.reset_due()?;
        Ok(session)
    }

    fn attach(&mut self, undo: &mut UndoLog) -> anyhow::Result<()> {
        if self.plan.fq {
            tc::install_fq_everywhere(undo, spec::MAX_DELAY, None)?;
        }
        self.programs.attach_egress_everywhere(undo, None)?;
        self.join_namespaces(undo)?;
        if self.plan.needs.cgroup() {
            let target = self
                .target
                .as_ref()
                .ok_or_else(|| anyhow::anyhow!("these faults need --cgroup"))?;
            self.programs.attach_cgroup(target)?;
        }
        self.programs.attach_xdp()?;
        Ok(())
    }

    /// Drops the programs (which detaches every link and netlink filter they hold), stops the
    /// responder, then undoes what the kernel does not undo by itself.
    fn detach(self, undo: &mut UndoLog) -> anyhow::Result<()> {
        drop(self.programs);
        if let Some(responder) = self.responder {
            responder.stop();
        }
        for ns in self.namespaces {
            if let Some(responder) = ns.responder {
                responder.stop();
            }
        }
        undo.undo_where(|e| {
            matches!(
                e,
                Entry::TcFilter { .. } | Entry::ClsactQdisc { .. } | Entry::FqQdisc { .. }
            )
        })?;
        Ok(())
    }

    fn set_deadlines(&mut self, from_now: Duration) {
        let deadline = monotonic_now().saturating_add(from_now).as_nanos() as u64;
        for rule in &mut self.plan.packet {
            rule.deadline_ns = deadline;
        }
        for rule in &mut self.plan.sock {
            rule.deadline_ns = deadline;
        }
    }

    /// Renews the lease, runs the `reset` faults that are due, and attaches to interfaces
    /// that appeared since the last tick.
    pub fn tick(&mut self, undo: &mut UndoLog) -> anyhow::Result<Vec<String>> {
        if let Deadline::Lease = self.deadline {
            self.set_deadlines(LEASE);
            self.programs
                .write_rules(&self.plan.packet, &self.plan.sock)?;
        }
        self.reset_due()?;
        if self.plan.fq {
            tc::install_fq_everywhere(undo, spec::MAX_DELAY, None)?;
        }
        let mut added = self.programs.attach_egress_everywhere(undo, None)?;
        added.extend(self.join_namespaces(undo)?);
        Ok(added)
    }

    /// Finds the network namespaces the target's processes are in, other than the injector's,
    /// and does there what the faults need: the tc programs on every interface, `fq` for
    /// `delay`, a DNS responder on the same port. Returns the interfaces newly attached.
    fn join_namespaces(&mut self, undo: &mut UndoLog) -> anyhow::Result<Vec<String>> {
        let Some(target) = &self.target else {
            return Ok(Vec::new());
        };
        let wanted =
            self.plan.needs.tc_egress || self.responder.is_some() || !self.resets.is_empty();
        if !wanted {
            return Ok(Vec::new());
        }
        for ns in Netns::of_cgroup(&target.path) {
            if self.namespaces.iter().any(|n| n.ns.inode == ns.inode) {
                continue;
            }
            let responder = match (&self.responder, &self.upstream) {
                (Some(main), Some(upstream)) => {
                    let (port, rules) = (main.port(), &self.plan.dns);
                    let started = ns
                        .run(|| start_responder(port, rules, upstream))
                        .with_context(|| format!("enter network namespace {}", ns.inode))?
                        .with_context(|| {
                            format!("start the DNS responder in network namespace {}", ns.inode)
                        })?;
                    Some(started)
                }
                _ => None,
            };
            self.namespaces.push(Namespace { ns, responder });
        }
        let mut added = Vec::new();
        for n in &self.namespaces {
            if self.plan.fq {
                let inode = n.ns.inode;
                n.ns.run(|| tc::install_fq_everywhere(undo, spec::MAX_DELAY, Some(inode)))
                    .with_context(|| format!("enter network namespace {inode}"))??;
            }
            added.extend(self.programs.attach_egress_everywhere(undo, Some(&n.ns))?);
        }
        Ok(added)
    }

    /// Aborts the target's matching connections for every `reset` that is due.
    pub fn reset_due(&mut self) -> anyhow::Result<()> {
        let Some(target) = &self.target else {
            return Ok(());
        };
        let now = std::time::Instant::now();
        for reset in &mut self.resets {
            let Some(next) = reset.next else {
                continue;
            };
            if next > now {
                continue;
            }
            // The kernel's filter matches one cgroup exactly: name the descendants too.
            let ids = target.with_descendants();
            reset.destroyed += sockdiag::destroy_tcp(&ids, &reset.filter)? as u64;
            // sock_diag sees one network namespace: every other one of the target's too.
            for n in &self.namespaces {
                let destroyed =
                    n.ns.run(|| sockdiag::destroy_tcp(&ids, &reset.filter))
                        .with_context(|| format!("enter network namespace {}", n.ns.inode))??;
                reset.destroyed += destroyed as u64;
            }
            reset.rounds += 1;
            reset.next = reset.interval.map(|i| now + i);
        }
        Ok(())
    }

    /// How long until the next `reset` is due, if one is.
    pub fn next_reset(&self) -> Option<std::time::Instant> {
        self.resets.iter().filter_map(|r| r.next).min()
    }

    /// The target cgroup.
    pub fn target(&self) -> Option<&Cgroup> {
        self.target.as_ref()
    }

    /// Where the programs are attached.
    pub fn attachments(&self) -> Vec<String> {
        let mut out = self.programs.attachments();
        if let Some(r) = &self.responder {
            out.push(format!("dns responder on port {}", r.port()));
        }
        for n in &self.namespaces {
            if n.responder.is_some() {
                out.push(format!("dns responder in network namespace {}", n.ns.inode));
            }
        }
        out
    }

    /// Makes the rules inert, reads the counters, then detaches everything.
    pub fn stop(mut self, undo: &mut UndoLog) -> anyhow::Result<SessionRecord> {
        self.programs.disable()?;
        let ended = SystemTime::now();
        // A program run that read the target record before it changed may still be counting.
        std::thread::sleep(Duration::from_millis(5));
        // Every namespace's responder answers for the same rules: their counts add up.
        let dns_counters: Option<Vec<dns::RuleCounters>> = self.responder.as_ref().map(|main| {
            let mut sum = main.counters().rules;
            for n in &self.namespaces {
                let Some(r) = &n.responder else { continue };
                for (total, c) in sum.iter_mut().zip(r.counters().rules) {
                    total.matched += c.matched;
                    total.injected += c.injected;
                    total.passed += c.passed;
                }
            }
            sum
        });
        let mut faults = Vec::with_capacity(self.faults.len());
        for (i, (fault, carrier)) in self.faults.iter().zip(&self.plan.carriers).enumerate() {
            let mut counters = std::collections::BTreeMap::new();
            match *carrier {
                Carrier::Packet(rule) => {
                    let (egress, ingress) = self.programs.packet_counters(rule)?;
                    let (out, inn) = directions(fault);
                    if out {
                        counters.insert("egress", Counters::from(egress));
                    }
                    if inn {
                        counters.insert("ingress", Counters::from(ingress));
                    }
                }
                Carrier::Sock(rule) => {
                    let c = self.programs.sock_counters(rule)?;
                    counters.insert("connects", Counters::from(c));
                }
                Carrier::Dns(rule) => {
                    if let Some(c) = dns_counters.as_ref().and_then(|c| c.get(rule)) {
                        counters.insert(
                            "queries",
                            Counters {
                                matched: c.matched,
                                injected: c.injected,
                                passed: c.passed,
                                expired: 0,
                            },
                        );
                    }
                }
                Carrier::Reset => {
                    if let Some(r) = self.resets.iter().find(|r| r.fault == i) {
                        counters.insert(
                            "sockets",
                            Counters {
                                matched: r.destroyed,
                                injected: r.destroyed,
                                passed: 0,
                                expired: 0,
                            },
                        );
                    }
                }
            }
            faults.push(FaultReport {
                rule: i,
                spec: fault.to_string(),
                fault: fault.clone(),
                counters,
            });
        }
        let record = SessionRecord {
            started: self.started,
            ended,
            attachments: self.attachments(),
            faults,
        };
        self.detach(undo)?;
        Ok(record)
    }
}

/// Starts a DNS responder on loopback (both families where this namespace has IPv6) at `port`,
/// 0 for one the kernel picks.
fn start_responder(
    port: u16,
    rules: &[dns::DnsRule],
    upstream: &dns::Upstream,
) -> Result<dns::Responder, dns::DnsError> {
    let v4 = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), port);
    let v6 = SocketAddr::new(IpAddr::V6(Ipv6Addr::LOCALHOST), port);
    dns::Responder::start(&[v4, v6], rules.to_vec(), upstream.clone())
        .or_else(|_| dns::Responder::start(&[v4], rules.to_vec(), upstream.clone()))
}

/// Which directions of a packet fault's counters mean something: (egress, ingress).
fn directions(fault: &FaultSpec) -> (bool, bool) {
    match fault {
        FaultSpec::Loss(l) => (l.dir.egress(), l.dir.ingress()),
        FaultSpec::XdpDrop(_) => (false, true),
        _ => (true, false),
    }
}

/// The responder's way to the resolver a redirected client meant: `DNS_PEERS`, by the
/// client's port.
fn dns_upstream(peers: crate::loader::DnsPeers) -> dns::Upstream {
    let peers = std::sync::Mutex::new(peers);
    std::sync::Arc::new(move |transport: dns::Transport, client: SocketAddr| {
        let key = chaos_common::PeerKey {
            port: client.port(),
            proto: match transport {
                dns::Transport::Udp => PROTO_UDP,
                dns::Transport::Tcp => PROTO_TCP,
            },
            family: if client.is_ipv4() {
                FAMILY_V4
            } else {
                FAMILY_V6
            },
        };
        let peers = peers.lock().ok()?;
        let original = peers.get(&key, 0).ok()?;
        let port = u16::from_be(original.port);
        let ip = if original.family == FAMILY_V4 {
            IpAddr::V4(Ipv4Addr::from(original.addr[0].to_ne_bytes()))
        } else {
            let mut bytes = [0u8; 16];
            for (i, w) in original.addr.iter().enumerate() {
                bytes[i * 4..i * 4 + 4].copy_from_slice(&w.to_ne_bytes());
            }
            IpAddr::V6(Ipv6Addr::from(bytes))
        };
        Some(SocketAddr::new(ip, port))
    })
}

/// What a stopped session did.
#[derive(Clone, Debug)]
pub struct SessionRecord {
    /// When the programs were attached.
    pub started: SystemTime,
    /// When the rules were made inert.
    pub ended: SystemTime,
    pub attachments: Vec<String>,
    pub faults: Vec<FaultReport>,
}

/// CLOCK_MONOTONIC, the clock of `bpf_ktime_get_ns`.
pub fn monotonic_now() -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid timespec for the call to fill in; CLOCK_MONOTONIC always exists.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
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
fn words_of(addr: IpAddr) -> (u8, [u32; 4]) {
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
}
