//! One injection session: the plan turned into rule records, the programs attached, the lease
//! kept alive, and the counters read back at the end.

use std::time::{Duration, SystemTime};

use chaos_common::{
    AddrMatch, DIR_EGRESS, DIR_INGRESS, FAMILY_V4, FAMILY_V6, LossRule, PROTO_ANY, PROTO_ICMP,
    PROTO_TCP, PROTO_UDP, PacketFilter, PortRange,
};
use ipnet::IpNet;

use crate::{
    cgroup::Cgroup,
    loader::{LoadError, Programs},
    report::{Counters, FaultReport},
    spec::{FaultSpec, Ports, Proto},
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
    target: Cgroup,
    faults: Vec<FaultSpec>,
    rules: Vec<LossRule>,
    deadline: Deadline,
    started: SystemTime,
}

/// What a session's faults need from the kernel.
pub struct Plan {
    pub rules: Vec<LossRule>,
    pub egress: bool,
    pub ingress: bool,
}

impl Plan {
    pub fn new(faults: &[FaultSpec]) -> Plan {
        let rules: Vec<LossRule> = faults.iter().map(rule_of).collect();
        let egress = rules.iter().any(|r| r.dirs & DIR_EGRESS != 0);
        let ingress = rules.iter().any(|r| r.dirs & DIR_INGRESS != 0);
        Plan {
            rules,
            egress,
            ingress,
        }
    }

    /// Loads and verifies the programs the plan needs, attaching nothing (`--dry-run`).
    pub fn load(&self) -> Result<Programs, LoadError> {
        Programs::load(self.egress, self.ingress)
    }
}

impl Session {
    /// Loads the programs, writes the rules, and attaches. Nothing stays attached on error.
    pub fn start(
        target: Cgroup,
        faults: Vec<FaultSpec>,
        deadline: Deadline,
        undo: &mut UndoLog,
    ) -> anyhow::Result<Session> {
        let plan = Plan::new(&faults);
        let programs = plan.load()?;
        let mut session = Session {
            programs,
            target,
            faults,
            rules: plan.rules,
            deadline,
            started: SystemTime::now(),
        };
        session.set_deadlines(match deadline {
            Deadline::At(d) => d,
            Deadline::Lease => LEASE,
        });
        session
            .programs
            .configure(&session.target, &session.rules)?;
        let attached = session.attach(plan.egress, plan.ingress, undo);
        if let Err(e) = attached {
            session.detach(undo)?;
            return Err(e);
        }
        session.started = SystemTime::now();
        Ok(session)
    }

    fn attach(&mut self, egress: bool, ingress: bool, undo: &mut UndoLog) -> anyhow::Result<()> {
        if egress {
            self.programs.attach_egress_everywhere(undo)?;
        }
        if ingress {
            self.programs.attach_ingress(&self.target)?;
        }
        Ok(())
    }

    /// Drops the programs (which detaches every link and netlink filter they hold), then
    /// undoes what the kernel does not undo by itself.
    fn detach(self, undo: &mut UndoLog) -> anyhow::Result<()> {
        drop(self.programs);
        undo.undo_where(|e| matches!(e, Entry::TcFilter { .. } | Entry::ClsactQdisc { .. }))?;
        Ok(())
    }

    fn set_deadlines(&mut self, from_now: Duration) {
        let deadline = monotonic_now().saturating_add(from_now).as_nanos() as u64;
        for rule in &mut self.rules {
            rule.deadline_ns = deadline;
        }
    }

    /// Renews the lease and attaches to interfaces that appeared since the last tick.
    pub fn tick(&mut self, undo: &mut UndoLog) -> anyhow::Result<Vec<String>> {
        if let Deadline::Lease = self.deadline {
            self.set_deadlines(LEASE);
            self.programs.write_rules(&self.rules)?;
        }
        if self.rules.iter().any(|r| r.dirs & DIR_EGRESS != 0) {
            return self.programs.attach_egress_everywhere(undo);
        }
        Ok(Vec::new())
    }

    /// The target cgroup.
    pub fn target(&self) -> &Cgroup {
        &self.target
    }

    /// Where the programs are attached.
    pub fn attachments(&self) -> Vec<String> {
        self.programs.attachments()
    }

    /// Makes the rules inert, reads the counters, then detaches everything.
    pub fn stop(mut self, undo: &mut UndoLog) -> anyhow::Result<SessionRecord> {
        self.programs.disable()?;
        let ended = SystemTime::now();
        // A program run that read the target record before it changed may still be counting.
        std::thread::sleep(Duration::from_millis(5));
        let mut faults = Vec::with_capacity(self.faults.len());
        for (i, fault) in self.faults.iter().enumerate() {
            let (egress, ingress) = self.programs.counters(i as u32)?;
            faults.push(FaultReport {
                rule: i,
                spec: fault.to_string(),
                fault: fault.clone(),
                egress: Counters::from(egress),
                ingress: Counters::from(ingress),
            });
        }
        let record = SessionRecord {
            started: self.started,
            ended,
            attachments: self.programs.attachments(),
            faults,
        };
        self.detach(undo)?;
        Ok(record)
    }
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

fn rule_of(fault: &FaultSpec) -> LossRule {
    match fault {
        FaultSpec::Loss(loss) => LossRule {
            deadline_ns: 0,
            threshold: loss.threshold(),
            filter: packet_filter(&loss.filter),
            dirs: if loss.dir.egress() { DIR_EGRESS } else { 0 }
                | if loss.dir.ingress() { DIR_INGRESS } else { 0 },
            _pad: [0; 7],
        },
    }
}

fn packet_filter(f: &crate::spec::PacketFilter) -> PacketFilter {
    PacketFilter {
        src: addr_match(f.src),
        dst: addr_match(f.dst),
        sport: port_range(f.sport),
        dport: port_range(f.dport),
        proto: match f.proto {
            Proto::Any => PROTO_ANY,
            Proto::Tcp => PROTO_TCP,
            Proto::Udp => PROTO_UDP,
            Proto::Icmp => PROTO_ICMP,
        },
        _pad: [0; 7],
    }
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
        let plan = Plan::new(&faults);
        assert!(plan.egress && plan.ingress);
        let r = &plan.rules[0];
        assert_eq!(r.dirs, DIR_EGRESS);
        assert_eq!(r.threshold, 1 << 31);
        assert_eq!(r.filter.proto, PROTO_UDP);
        assert_eq!(r.filter.dport, PortRange { lo: 9000, hi: 9010 });
        assert_eq!(r.filter.dst.family, FAMILY_V4);
        assert_eq!(r.filter.dst.addr[0].to_ne_bytes(), [127, 0, 0, 0]);
        assert_eq!(r.filter.dst.mask[0].to_ne_bytes(), [255, 0, 0, 0]);
        assert_eq!(r.filter.src, AddrMatch::default());
        let r = &plan.rules[1];
        assert_eq!(r.dirs, DIR_INGRESS);
        assert_eq!(r.filter.src.family, FAMILY_V6);
        assert_eq!(r.filter.src.addr[3].to_ne_bytes(), [0, 0, 0, 1]);
        assert_eq!(r.filter.src.mask, [u32::MAX; 4]);
    }
}
