//! One injection session: the plan turned into rule records, the programs attached, the lease
//! kept alive, and the counters read back at the end.

use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    time::{Duration, SystemTime},
};

use anyhow::Context as _;
use chaos_common::{FAMILY_V4, FAMILY_V6, PROTO_TCP, PROTO_UDP};

pub use crate::plan::{Carrier, Plan};
use crate::{
    cgroup::Cgroup,
    claim::{self, Claim},
    dns,
    loader::Programs,
    netns::Netns,
    pause::Pause,
    report::{Counters, FaultReport},
    sockdiag,
    spec::{self, FaultSpec},
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
    /// A fixed length (`--duration`) from the start of the session; the lease applies too.
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
    /// The end of `--duration` on the monotonic clock.
    end: Option<Duration>,
    started: SystemTime,
    responder: Option<dns::Responder>,
    /// How the responders find a redirected query's resolver; shared by every namespace's.
    upstream: Option<dns::Upstream>,
    resets: Vec<ResetState>,
    pauses: Vec<Pause>,
    /// The files of `disk-fill`, by fault.
    fills: Vec<(usize, crate::fill::Fill)>,
    /// The `page-cache` faults' schedules and tallies.
    caches: Vec<CacheState>,
    /// The files `corrupt-file` damaged, by fault: where the original went, what changed.
    damages: Vec<(usize, crate::corrupt::Saved, u64)>,
    /// The limits lowered, by fault: the file, when, and the cgroup's CPU time then (µs).
    limits: Vec<(usize, std::path::PathBuf, std::time::Instant, u64)>,
    /// The session's own v1 groups (hybrid layouts), which hold the target's processes while a
    /// limit on a v1 controller lasts.
    v1: Vec<V1Group>,
    /// The stressor processes, by fault, and when they started.
    stressors: Vec<(usize, Vec<std::process::Child>, std::time::Instant)>,
    /// Other network namespaces the target's processes are in, with what runs there.
    namespaces: Vec<Namespace>,
    /// What this session holds alone (`dns` of its target).
    _claims: Vec<Claim>,
}

/// A v1 group of the session's own, in the hierarchy of `controller` mounted at `mount`.
struct V1Group {
    controller: &'static str,
    mount: std::path::PathBuf,
    path: std::path::PathBuf,
    /// Its entry in the undo log, which lists where each process came from.
    entry: Entry,
}

/// A network namespace of the target other than the injector's.
struct Namespace {
    ns: Netns,
    responder: Option<dns::Responder>,
}

/// A `page-cache` fault's schedule and tally.
struct CacheState {
    fault: usize,
    path: std::path::PathBuf,
    interval: Option<Duration>,
    next: Option<std::time::Instant>,
    /// Files seen and files whose pages were dropped, over all rounds.
    seen: u64,
    dropped: u64,
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
        // Two responders cannot share the target's DNS: one session's redirect would hide the
        // other's rules.
        let mut claims = Vec::new();
        if let (false, Some(t)) = (dry.dns.is_empty(), &target) {
            claims.push(claim::claim("dns", t.id, &t.name, &t.related())?);
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
        let caches = faults
            .iter()
            .enumerate()
            .filter_map(|(i, f)| match f {
                FaultSpec::PageCache(c) => Some(CacheState {
                    fault: i,
                    path: c.path.clone(),
                    interval: c.interval,
                    next: Some(std::time::Instant::now()),
                    seen: 0,
                    dropped: 0,
                }),
                _ => None,
            })
            .collect();
        let mut faults = faults;
        let mut pauses = Vec::new();
        for (i, f) in faults.iter_mut().enumerate() {
            if let FaultSpec::Pause(p) = f {
                let pause = Pause::new(i, p.clone(), std::time::Instant::now());
                if p.random {
                    // The report's spec then replays the same moments.
                    p.seed = Some(pause.seed);
                }
                pauses.push(pause);
            }
        }
        // Two sessions limiting one target would each put back the other's limit at its end
        // (and on a hybrid layout pull its processes to and fro).
        if let Some(t) = &target {
            for f in &faults {
                let what = match f {
                    FaultSpec::CpuThrottle(_) => "cpu-throttle",
                    FaultSpec::MemoryPressure(spec::MemoryPressureSpec::Limit(_)) => {
                        "memory-pressure:limit="
                    }
                    _ => continue,
                };
                claims.push(claim::claim(what, t.id, &t.name, &t.related())?);
            }
        }
        if let (false, Some(t)) = (pauses.is_empty(), &target) {
            // Freezing its own cgroup would stop the injector, and nothing would thaw it.
            let mount = crate::cgroup::mount_point()?;
            let own = Cgroup::of_process(&mount, "self")?;
            if own.path.starts_with(&t.path) {
                anyhow::bail!(crate::error::UsageError {
                    message: format!(
                        "pause would freeze chaos-user itself: its own cgroup is {}, at or below \
                         the target {}",
                        own.name, t.name
                    ),
                    hint: Some("run chaos-user outside the cgroup it pauses".into()),
                });
            }
            claims.push(claim::claim("pause", t.id, &t.name, &t.related())?);
            if crate::pause::is_frozen(&t.path)? {
                anyhow::bail!(
                    "cgroup {} is frozen already, and pause would thaw it at its end; thaw it \
                     first (write 0 to its cgroup.freeze)",
                    t.name
                );
            }
            // A frozen cgroup stays frozen after a crash: the log knows it before the first.
            undo.push(Entry::Frozen {
                cgroup: t.path.clone(),
            })?;
        }
        let mut session = Session {
            programs,
            target,
            faults,
            plan,
            deadline,
            end: None,
            started: SystemTime::now(),
            responder,
            upstream,
            resets,
            pauses,
            fills: Vec::new(),
            caches,
            damages: Vec::new(),
            stressors: Vec::new(),
            limits: Vec::new(),
            v1: Vec::new(),
            namespaces: Vec::new(),
            _claims: claims,
        };
        // `--duration` counts from here, as the caller's own timer does once this returns.
        if let Deadline::At(length) = session.deadline {
            session.end = Some(monotonic_now().saturating_add(length));
        }
        session.renew_deadlines();
        session
            .programs
            .configure(session.target.as_ref(), &session.plan)?;
        let attached = session.attach(undo).and_then(|()| session.fill(undo));
        if let Err(e) = attached {
            session.detach(undo)?;
            return Err(e);
        }
        session.started = SystemTime::now();
        session.due()?;
        Ok(session)
    }

    fn attach(&mut self, undo: &mut UndoLog) -> anyhow::Result<()> {
        if self.plan.fq {
            tc::install_fq_everywhere(undo, spec::MAX_DELAY, None)?;
        }
        self.programs.attach_egress_everywhere(undo, None)?;
        self.join_namespaces(undo)?;
        // The loader's view: `fd-limit` takes the socket hook where trampolines do not run.
        if self.programs.needs().cgroup() {
            let target = self
                .target
                .as_ref()
                .ok_or_else(|| anyhow::anyhow!("these faults need --cgroup"))?;
            if self.plan.needs.sock_ops {
                // The caps stay on the sockets: how to find them goes into the log first.
                undo.push(Entry::PacingCaps {
                    cgroup: target.path.clone(),
                    rates: self.plan.pacing_rates(),
                })?;
            }
            self.programs.attach_cgroup(target)?;
        }
        if let Some(change) = self.programs.attach_xdp()? {
            anyhow::bail!("{change}");
        }
        self.programs.attach_tracepoints()?;
        self.programs.attach_hooks()?;
        Ok(())
    }

    /// Makes the files of `disk-fill`, each in the undo log before it exists, and does the
    /// damage of `corrupt-file`, each original saved first.
    fn fill(&mut self, undo: &mut UndoLog) -> anyhow::Result<()> {
        // Limits first, so that stressors join the groups a limit makes; damage last: nothing
        // may fail after it, since it stays whatever happens.
        let mut order: Vec<usize> = (0..self.faults.len()).collect();
        order.sort_by_key(|i| match self.faults[*i] {
            FaultSpec::CpuThrottle(_)
            | FaultSpec::MemoryPressure(spec::MemoryPressureSpec::Limit(_)) => 0,
            FaultSpec::CorruptFile(_) => 2,
            _ => 1,
        });
        for i in order {
            let fault = &mut self.faults[i];
            let stress = match fault {
                FaultSpec::CpuHog(h) => {
                    Some((h.workers, crate::stress::Work::Cpu { load: h.load }))
                }
                FaultSpec::MemoryPressure(spec::MemoryPressureSpec::Size(size)) => Some((
                    1,
                    crate::stress::Work::Memory {
                        rate: 0,
                        max: *size,
                        release: false,
                    },
                )),
                FaultSpec::MemoryLeak(m) => Some((
                    1,
                    crate::stress::Work::Memory {
                        rate: m.rate,
                        max: m.max,
                        release: m.release,
                    },
                )),
                FaultSpec::IoStress(io) => {
                    Some((io.workers, crate::stress::Work::Io { bytes: io.bytes }))
                }
                _ => None,
            };
            let limit = match fault {
                // A period of 100 ms, the kernel's default; the quota at least 1 ms.
                FaultSpec::CpuThrottle(t) => Some((
                    "cpu",
                    ((t.quota / 100.0) * 100_000.0).round().max(1000.0) as u64,
                )),
                FaultSpec::MemoryPressure(spec::MemoryPressureSpec::Limit(bytes)) => {
                    Some(("memory", *bytes))
                }
                _ => None,
            };
            if let Some((controller, value)) = limit {
                let kind = fault.kind();
                let files = self.limit_files(kind, controller, value, undo)?;
                for (file, value) in &files {
                    let previous = std::fs::read_to_string(file)
                        .with_context(|| format!("read {}", file.display()))?
                        .trim()
                        .to_string();
                    undo.push(Entry::Limit {
                        file: file.clone(),
                        previous: previous.clone(),
                    })?;
                    std::fs::write(file, value).with_context(|| {
                        let name = file.file_name().unwrap_or_default();
                        let parent = file.parent().and_then(|g| g.parent());
                        let above = parent
                            .and_then(|p| std::fs::read_to_string(p.join(name)).ok())
                            .map(|v| v.trim().to_string());
                        match (parent, above) {
                            (Some(p), Some(v)) if name == "cpu.cfs_quota_us" => format!(
                                "write {value} to {} (the group above, {}, allows {v} µs per \
                                 period: a v1 quota may not exceed its parent's)",
                                file.display(),
                                p.display()
                            ),
                            _ => format!("write {value} to {}", file.display()),
                        }
                    })?;
                    log::info!("{kind}: {} was {previous}, now {value}", file.display());
                }
                let (file, _) = files.last().expect("a limit has a file");
                let cpu_then = self
                    .target
                    .as_ref()
                    .map_or(0, |t| crate::cgroup::cpu_usage_usec(&t.path));
                self.limits
                    .push((i, file.clone(), std::time::Instant::now(), cpu_then));
                continue;
            }
            if let Some((workers, work)) = stress {
                let target = self
                    .target
                    .as_ref()
                    .ok_or_else(|| anyhow::anyhow!("{} needs --cgroup", fault.kind()))?;
                let mut children = Vec::new();
                let started = std::time::Instant::now();
                let scratch = match fault {
                    FaultSpec::IoStress(io) => Some(io.path.clone()),
                    _ => None,
                };
                for _ in 0..workers {
                    // An io worker's file is in the log before the worker can make it.
                    let file = scratch.as_deref().map(crate::fill::new_file);
                    if let Some(file) = &file {
                        undo.push(Entry::Fill { file: file.clone() })?;
                    }
                    let v1: Vec<&std::path::Path> =
                        self.v1.iter().map(|g| g.path.as_path()).collect();
                    match crate::stress::spawn(&target.path, &v1, work, file.as_deref()) {
                        Ok(child) => children.push(child),
                        Err(e) => {
                            self.stressors.push((i, children, started));
                            return Err(e);
                        }
                    }
                }
                self.stressors.push((i, children, started));
                continue;
            }
            if let FaultSpec::CorruptFile(c) = fault {
                if let spec::CorruptMode::Bitflip { seed, .. } = &mut c.mode {
                    // The report's spec then replays the same bits.
                    seed.get_or_insert_with(|| fastrand::u64(..));
                }
                let (saved, changed) = crate::corrupt::save_and_damage(&c.path, &c.mode)?;
                log::info!(
                    "corrupt-file: {} damaged ({changed} bytes or bits); the original is in {}",
                    c.path.display(),
                    saved.dir.display()
                );
                self.damages.push((i, saved, changed));
                continue;
            }
            let FaultSpec::DiskFill(d) = fault else {
                continue;
            };
            let made = crate::fill::fill(&d.path, d.leave, undo)?;
            let left = crate::fill::space(&d.path).map_or(0, |s| s.available);
            if made.wanted == 0 {
                log::warn!(
                    "disk-fill: the filesystem of {} is as full as asked already ({left} bytes \
                     free): nothing to fill",
                    d.path.display()
                );
            }
            log::info!(
                "disk-fill: {} takes {} bytes; {} bytes left free",
                made.file.display(),
                made.filled,
                left
            );
            self.fills.push((i, made));
        }
        Ok(())
    }

    /// The files a limit on `controller` is written to, with their values: the target's
    /// cgroup2 file, or where the controller is a v1 one (hybrid layouts), those of the
    /// session's own v1 group that holds the target's processes.
    fn limit_files(
        &mut self,
        kind: &str,
        controller: &'static str,
        value: u64,
        undo: &mut UndoLog,
    ) -> anyhow::Result<Vec<(std::path::PathBuf, String)>> {
        let target = self
            .target
            .clone()
            .ok_or_else(|| anyhow::anyhow!("{kind} needs --cgroup"))?;
        if let Some(mount) = crate::cgroup::v1::hierarchy(controller) {
            let group = self.v1_group(&target, controller, mount, undo)?;
            return Ok(crate::cgroup::v1::limit_files(&group, controller, value));
        }
        let (name, value) = match controller {
            "cpu" => ("cpu.max", format!("{value} 100000")),
            _ => ("memory.max", value.to_string()),
        };
        let file = target.path.join(name);
        if !file.exists() {
            anyhow::bail!(
                "{kind}: cgroup {} has no {name}: the {controller} controller is not enabled \
                 for it; enable it with `echo +{controller} > PARENT/cgroup.subtree_control` in \
                 each cgroup above it",
                target.name
            );
        }
        Ok(vec![(file, value)])
    }

    /// The session's v1 group for `controller`, made on first use: below the deepest group
    /// that holds all the target's processes (or chaos-user's own group, when the target has
    /// none yet), with the target's processes moved in. In the undo log first.
    fn v1_group(
        &mut self,
        target: &Cgroup,
        controller: &'static str,
        mount: std::path::PathBuf,
        undo: &mut UndoLog,
    ) -> anyhow::Result<std::path::PathBuf> {
        use crate::cgroup::v1;
        if let Some(g) = self.v1.iter().find(|g| g.controller == controller) {
            return Ok(g.path.clone());
        }
        let origins = target_origins(target, &mount, controller, None, &self.stressor_pids());
        let parent = if origins.is_empty() {
            let own = v1::group_of(&mount, controller, std::process::id() as i32);
            own.unwrap_or_else(|| mount.clone())
        } else {
            let mut groups: Vec<_> = origins.iter().map(|(_, g)| g.clone()).collect();
            groups.sort();
            groups.dedup();
            if groups.len() > 1 {
                log::warn!(
                    "the target's processes are in {} {controller} v1 groups; the session's group \
                     is below the deepest that holds them all, so the limits of their own groups \
                     do not hold them while the fault lasts",
                    groups.len()
                );
            }
            v1::common_ancestor(&mount, &groups)
        };
        let path = parent.join(format!("{}{}", v1::GROUP_PREFIX, std::process::id()));
        let entry = Entry::Moved {
            group: path.clone(),
            origins: origins.clone(),
        };
        undo.push(entry.clone())?;
        crate::cgroup::create(&path)?;
        self.v1.push(V1Group {
            controller,
            mount,
            path: path.clone(),
            entry,
        });
        for (pid, _) in &origins {
            move_in(&path, *pid, controller)?;
        }
        log::info!(
            "the target's {} processes moved into v1 group {}",
            origins.len(),
            path.display()
        );
        Ok(path)
    }

    /// Moves processes that came into the target since the last tick into the session's v1
    /// groups, and records where the processes forked inside those groups go back to; each
    /// origin in the undo log before the move. A process that cannot be moved is left where it
    /// is, with a warning.
    fn keep_v1_groups(&mut self, undo: &mut UndoLog) -> anyhow::Result<()> {
        let stressors = self.stressor_pids();
        let Some(target) = &self.target else {
            return Ok(());
        };
        for g in &mut self.v1 {
            let Entry::Moved { group, origins } = &g.entry else {
                continue;
            };
            let came = target_origins(target, &g.mount, g.controller, Some(&g.path), &stressors);
            let forked: Vec<(i32, std::path::PathBuf)> = crate::cgroup::v1::procs(&g.path)
                .into_iter()
                .filter(|pid| !origins.iter().any(|(p, _)| p == pid))
                .filter_map(|pid| Some((pid, crate::cgroup::v1::origin_of(pid, origins)?)))
                .collect();
            if came.is_empty() && forked.is_empty() {
                continue;
            }
            let mut origins = origins.clone();
            origins.retain(|(pid, _)| !came.iter().any(|(p, _)| p == pid));
            origins.extend(came.iter().cloned());
            origins.extend(forked);
            let entry = Entry::Moved {
                group: group.clone(),
                origins,
            };
            undo.replace(&g.entry, entry.clone())?;
            g.entry = entry;
            for (pid, _) in &came {
                if let Err(e) = move_in(&g.path, *pid, g.controller) {
                    log::warn!("{e:#}; it is left where it is");
                }
            }
        }
        Ok(())
    }

    /// The PIDs of the session's stressors.
    fn stressor_pids(&self) -> Vec<i32> {
        self.stressors
            .iter()
            .flat_map(|(_, children, _)| children.iter().map(|c| c.id() as i32))
            .collect()
    }

    /// The session's own v1 groups, which a command started in the target joins too.
    pub fn v1_groups(&self) -> Vec<std::path::PathBuf> {
        self.v1.iter().map(|g| g.path.clone()).collect()
    }

    /// Drops the programs (which detaches every link and netlink filter they hold), stops the
    /// responder, then undoes what the kernel does not undo by itself.
    fn detach(self, undo: &mut UndoLog) -> anyhow::Result<()> {
        for (_, children, _) in self.stressors {
            for mut child in children {
                // Ours, not yet reaped: its PID cannot have gone to another process.
                let _killed = child.kill();
                let _reaped = child.wait();
            }
        }
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
                Entry::TcFilter { .. }
                    | Entry::ClsactQdisc { .. }
                    | Entry::FqQdisc { .. }
                    | Entry::PacingCaps { .. }
                    | Entry::Frozen { .. }
                    | Entry::Fill { .. }
                    | Entry::Limit { .. }
                    | Entry::Moved { .. }
            )
        })?;
        Ok(())
    }

    /// Every rule lives for one lease from now, and never past the end of `--duration`: a
    /// frozen injector stops faulting within a lease either way.
    fn renew_deadlines(&mut self) {
        let lease = monotonic_now().saturating_add(LEASE);
        let deadline = self.end.map_or(lease, |end| lease.min(end)).as_nanos() as u64;
        for rule in &mut self.plan.packet {
            rule.deadline_ns = deadline;
        }
        for rule in &mut self.plan.sock {
            rule.deadline_ns = deadline;
        }
        for rule in &mut self.plan.device {
            rule.deadline_ns = deadline;
        }
        for rule in &mut self.plan.crash {
            rule.deadline_ns = deadline;
        }
        for rule in &mut self.plan.call {
            rule.deadline_ns = deadline;
        }
    }

    /// Renews the lease, runs the `reset` faults that are due, and attaches to interfaces
    /// that appeared since the last tick.
    pub fn tick(&mut self, undo: &mut UndoLog) -> anyhow::Result<Vec<String>> {
        self.renew_deadlines();
        self.programs.write_rules(&self.plan)?;
        self.keep_v1_groups(undo)?;
        self.due()?;
        if self.plan.fq {
            tc::install_fq_everywhere(undo, spec::MAX_DELAY, None)?;
        }
        let mut added = self.programs.attach_egress_everywhere(undo, None)?;
        added.extend(self.join_namespaces(undo)?);
        if let Some(change) = self.programs.attach_xdp()? {
            log::warn!("{change}");
        }
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

    /// Does what the user-space faults have due now: `reset` rounds, `pause` freezes and thaws.
    pub fn due(&mut self) -> anyhow::Result<()> {
        let now = std::time::Instant::now();
        for cache in &mut self.caches {
            if cache.next.is_none_or(|next| next > now) {
                continue;
            }
            let (seen, dropped) = crate::fill::drop_page_cache(&cache.path);
            cache.seen += seen;
            cache.dropped += dropped;
            cache.next = cache.interval.map(|i| now + i);
        }
        let Some(target) = &self.target else {
            return Ok(());
        };
        for pause in &mut self.pauses {
            pause
                .step(&target.path, now)
                .with_context(|| format!("freeze or thaw cgroup {}", target.name))?;
        }
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

    /// When the next user-space fault is due, if one is.
    pub fn next_due(&self) -> Option<std::time::Instant> {
        let resets = self.resets.iter().filter_map(|r| r.next);
        let caches = self.caches.iter().filter_map(|c| c.next);
        resets
            .chain(caches)
            .chain(self.pauses.iter().map(Pause::next))
            .min()
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
        if !self.resets.is_empty() {
            out.push("socket destroy through sock_diag".to_string());
        }
        if !self.pauses.is_empty() {
            out.push("cgroup freezer".to_string());
        }
        for (_, f) in &self.fills {
            out.push(format!("disk-fill file {}", f.file.display()));
        }
        for c in &self.caches {
            out.push(format!("page cache of {}", c.path.display()));
        }
        for (_, file, _, _) in &self.limits {
            out.push(format!("limit {}", file.display()));
        }
        for (i, children, _) in &self.stressors {
            out.push(format!(
                "{} stressor(s) of {} in the target cgroup",
                children.len(),
                self.faults[*i].kind()
            ));
        }
        for (_, saved, _) in &self.damages {
            out.push(format!(
                "damage to {} (original saved in {})",
                saved.path.display(),
                saved.dir.display()
            ));
        }
        for n in &self.namespaces {
            if n.responder.is_some() {
                out.push(format!("dns responder in network namespace {}", n.ns.inode));
            }
        }
        out
    }

    /// What each fault counted so far: the session's counters as they stand, read without
    /// stopping anything (the record of `stop` reads them once more, after the rules are off).
    pub fn fault_reports(&self) -> anyhow::Result<Vec<FaultReport>> {
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
                Carrier::Crash(rule) => {
                    let c = self.programs.crash_counters(rule)?;
                    counters.insert("calls", Counters::from(c));
                }
                Carrier::Call(rule) => {
                    let c = self.programs.call_counters(rule)?;
                    counters.insert("calls", Counters::from(c));
                }
                Carrier::FdLimit { call, sock } => {
                    // Where the count was kept says what the fault covered.
                    if self.programs.fd_limit_covers_files() {
                        let c = self.programs.call_counters(call)?;
                        counters.insert("files", Counters::from(c));
                    } else {
                        let c = self.programs.sock_counters(sock)?;
                        counters.insert("sockets", Counters::from(c));
                    }
                }
                Carrier::Device(rule) => {
                    let c = self.programs.device_counters(rule)?;
                    counters.insert("accesses", Counters::from(c));
                }
                Carrier::Limit => {
                    if let Some((_, file, started, cpu_then)) =
                        self.limits.iter().find(|(at, _, _, _)| *at == i)
                    {
                        let cgroup = file.parent().unwrap_or(file);
                        // cgroup2 counts CPU time in every directory, with or without the
                        // controller; memory is counted where the limit is.
                        let cpu_now = self
                            .target
                            .as_ref()
                            .map_or(0, |t| crate::cgroup::cpu_usage_usec(&t.path));
                        let (place, allowed, got) = match fault {
                            FaultSpec::CpuThrottle(t) => (
                                "cpu-ms",
                                (started.elapsed().as_millis() as f64 * t.quota / 100.0) as u64,
                                cpu_now.saturating_sub(*cpu_then) / 1000,
                            ),
                            FaultSpec::MemoryPressure(spec::MemoryPressureSpec::Limit(limit)) => (
                                "bytes",
                                *limit,
                                std::fs::read_to_string(cgroup.join("memory.peak"))
                                    .or_else(|_| {
                                        std::fs::read_to_string(cgroup.join("memory.current"))
                                    })
                                    .or_else(|_| {
                                        std::fs::read_to_string(
                                            cgroup.join("memory.max_usage_in_bytes"),
                                        )
                                    })
                                    .ok()
                                    .and_then(|t| t.trim().parse().ok())
                                    .unwrap_or(0),
                            ),
                            _ => ("", 0, 0),
                        };
                        counters.insert(
                            place,
                            Counters {
                                matched: allowed,
                                injected: got,
                                passed: 0,
                                expired: 0,
                            },
                        );
                    }
                }
                Carrier::Stressors => {
                    if let Some((_, children, started)) =
                        self.stressors.iter().find(|(at, _, _)| *at == i)
                    {
                        let (cpu, peak) = children
                            .iter()
                            .map(|c| crate::stress::usage(c.id()))
                            .fold((0, 0), |(c, p), (c2, p2)| (c + c2, p + p2));
                        let (place, asked, got) = match fault {
                            FaultSpec::CpuHog(h) => (
                                "cpu-ms",
                                (started.elapsed().as_millis() as f64
                                    * f64::from(h.workers)
                                    * h.load
                                    / 100.0) as u64,
                                cpu,
                            ),
                            FaultSpec::MemoryPressure(spec::MemoryPressureSpec::Size(size)) => {
                                ("bytes", *size, peak)
                            }
                            FaultSpec::MemoryLeak(m) => ("bytes", m.max, peak),
                            FaultSpec::IoStress(_) => {
                                let written = children
                                    .iter()
                                    .map(|c| crate::stress::written(c.id()))
                                    .sum();
                                ("bytes", written, written)
                            }
                            _ => ("", 0, 0),
                        };
                        counters.insert(
                            place,
                            Counters {
                                matched: asked,
                                injected: got,
                                passed: 0,
                                expired: 0,
                            },
                        );
                    }
                }
                Carrier::CorruptFile => {
                    if let Some((_, _, changed)) = self.damages.iter().find(|(at, _, _)| *at == i) {
                        let place = match fault {
                            FaultSpec::CorruptFile(c)
                                if matches!(c.mode, spec::CorruptMode::Bitflip { .. }) =>
                            {
                                "bits"
                            }
                            _ => "bytes",
                        };
                        counters.insert(
                            place,
                            Counters {
                                matched: *changed,
                                injected: *changed,
                                passed: 0,
                                expired: 0,
                            },
                        );
                    }
                }
                Carrier::PageCache => {
                    if let Some(c) = self.caches.iter().find(|c| c.fault == i) {
                        counters.insert(
                            "files",
                            Counters {
                                matched: c.seen,
                                injected: c.dropped,
                                passed: c.seen - c.dropped,
                                expired: 0,
                            },
                        );
                    }
                }
                Carrier::DiskFill => {
                    if let Some((_, f)) = self.fills.iter().find(|(at, _)| *at == i) {
                        counters.insert(
                            "bytes",
                            Counters {
                                matched: f.wanted,
                                injected: f.filled,
                                passed: 0,
                                expired: 0,
                            },
                        );
                    }
                }
                Carrier::Pause => {
                    if let Some(p) = self.pauses.iter().find(|p| p.fault == i) {
                        counters.insert(
                            "pauses",
                            Counters {
                                matched: p.rounds,
                                injected: p.rounds,
                                passed: 0,
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
        Ok(faults)
    }

    /// Makes the rules inert, reads the counters, then detaches everything.
    pub fn stop(mut self, undo: &mut UndoLog) -> anyhow::Result<SessionRecord> {
        self.programs.disable()?;
        let ended = SystemTime::now();
        // A program run that read the target record before it changed may still be counting.
        std::thread::sleep(Duration::from_millis(5));
        let faults = self.fault_reports()?;
        let record = SessionRecord {
            started: self.started,
            ended,
            attachments: self.attachments(),
            faults,
            syscall_errors: self.programs.syscall_errors()?,
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
        // A dual-stack client that asked an IPv4 resolver: ask it over IPv4.
        Some(SocketAddr::new(ip.to_canonical(), port))
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
    /// The target's failed calls during the session: (syscall, errno, count), most first.
    pub syscall_errors: Vec<(u32, u32, u64)>,
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

/// Moves process `pid` into the v1 group at `group`.
fn move_in(group: &std::path::Path, pid: i32, controller: &str) -> anyhow::Result<()> {
    crate::cgroup::v1::move_to(group, pid).with_context(|| {
        let why = if controller == "cpu" {
            " (a real-time process, SCHED_FIFO or SCHED_RR, cannot join a v1 cpu group that \
             has no real-time runtime)"
        } else {
            ""
        };
        format!("move process {pid} into {}{why}", group.display())
    })
}

/// The target's processes and the v1 group each is in, leaving out the session's stressors
/// (`skip`) and those already in `except`.
fn target_origins(
    target: &Cgroup,
    mount: &std::path::Path,
    controller: &str,
    except: Option<&std::path::Path>,
    skip: &[i32],
) -> Vec<(i32, std::path::PathBuf)> {
    crate::cgroup::processes_below(&target.path)
        .into_iter()
        .filter(|pid| !skip.contains(pid))
        .filter_map(|pid| Some((pid, crate::cgroup::v1::group_of(mount, controller, pid)?)))
        .filter(|(_, group)| Some(group.as_path()) != except)
        .collect()
}
