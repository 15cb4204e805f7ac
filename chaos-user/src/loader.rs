//! The embedded kernel object: loading it, writing the rule records, attaching the programs
//! the plan needs, and reading the counters back.

use std::{fs, os::fd::AsFd as _};

use anyhow::Context as _;

use aya::{
    Ebpf, EbpfError,
    maps::{Array, MapError, PerCpuArray},
    programs::{CgroupAttachMode, CgroupSkb, CgroupSkbAttachType, ProgramError, SchedClassifier},
    util::KernelVersion,
};
use chaos_common::{
    COUNTER_EGRESS, COUNTER_INGRESS, LossRule, MAX_LOSS_RULES, RuleCounters, Target,
};

use crate::{
    cgroup::Cgroup,
    error::{Class, Classify},
    tc::{self, Mode},
    undo::UndoLog,
};

/// The kernel programs, built by build.rs from `chaos-ebpf`. Empty when the eBPF toolchain was
/// missing at build time.
static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/chaos.bpf.o"));

/// Names of the programs in the object, as the kernel lists them.
pub const PROGRAMS: &[(&str, &str)] = &[
    ("loss_egress", "tc classifier"),
    ("loss_ingress", "cgroup_skb ingress"),
    ("probe_fentry", "fentry security_file_open"),
    ("probe_lsm", "lsm file_open"),
];

/// Why the kernel side could not be set up. Every variant is the environment's refusal.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// The binary has no programs in it.
    #[error("this chaos-user was built without its eBPF programs")]
    NotBuilt,
    /// Not root.
    #[error("loading eBPF programs needs root (CAP_BPF, CAP_NET_ADMIN and CAP_SYS_ADMIN)")]
    NotPrivileged,
    /// The object does not parse.
    #[error("parse the embedded eBPF object")]
    Object(#[source] EbpfError),
    /// The object lacks a program or map this build expects.
    #[error("the embedded eBPF object has no {0}")]
    Missing(&'static str),
    /// The kernel refused a program; the source carries the verifier log.
    #[error("the kernel refused to load program `{program}`")]
    Refused {
        program: &'static str,
        #[source]
        source: ProgramError,
    },
    /// A program loaded but could not be attached.
    #[error("attach `{program}` to {to}")]
    Attach {
        program: &'static str,
        to: String,
        #[source]
        source: ProgramError,
    },
    /// A map operation failed.
    #[error("{op} map {map}")]
    Map {
        op: &'static str,
        map: &'static str,
        #[source]
        source: MapError,
    },
    /// More rules of one kind than the programs walk.
    #[error("at most {MAX_LOSS_RULES} loss rules per target; {0} were given")]
    TooManyRules(usize),
}

impl Classify for LoadError {
    fn class(&self) -> Class {
        match self {
            LoadError::TooManyRules(_) => Class::BadInput,
            _ => Class::Environment,
        }
    }

    fn hint(&self) -> Option<String> {
        match self {
            LoadError::NotBuilt => Some(
                "run `cargo xtask setup` to install the eBPF toolchain, then build again".into(),
            ),
            LoadError::NotPrivileged => Some("run it with sudo".into()),
            LoadError::Object(_) => Some(
                "the kernel refused to create the maps: root needs CAP_BPF and CAP_SYS_ADMIN \
                 (in a container, run it privileged)"
                    .into(),
            ),
            LoadError::Refused { .. } => {
                Some("`chaos-user doctor` shows which programs this kernel loads".into())
            }
            _ => None,
        }
    }
}

/// Whether this binary carries its programs.
pub fn built_with_programs() -> bool {
    !OBJECT.is_empty()
}

/// Fails unless the binary has its programs and runs as root.
pub fn check_ready() -> Result<(), LoadError> {
    if !built_with_programs() {
        return Err(LoadError::NotBuilt);
    }
    // SAFETY: geteuid has no preconditions and cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        return Err(LoadError::NotPrivileged);
    }
    Ok(())
}

/// Whether this kernel has tcx links (6.6 and later), which make egress loss silent.
pub fn has_tcx() -> bool {
    KernelVersion::current().is_ok_and(|v| v >= KernelVersion::new(6, 6, 0))
}

/// The kernel programs of one session, loaded; attachments live as long as this value.
pub struct Programs {
    ebpf: Ebpf,
    mode: Mode,
    egress_interfaces: Vec<Interface>,
    ingress_attached: bool,
}

impl Programs {
    /// Parses the object and loads (verifies) the named programs without attaching anything.
    pub fn load(egress: bool, ingress: bool) -> Result<Programs, LoadError> {
        check_ready()?;
        let mut ebpf = Ebpf::load(OBJECT).map_err(LoadError::Object)?;
        if egress {
            let prog: &mut SchedClassifier = program(&mut ebpf, "loss_egress")?;
            prog.load().map_err(|source| LoadError::Refused {
                program: "loss_egress",
                source,
            })?;
        }
        if ingress {
            let prog: &mut CgroupSkb = program(&mut ebpf, "loss_ingress")?;
            prog.load().map_err(|source| LoadError::Refused {
                program: "loss_ingress",
                source,
            })?;
        }
        Ok(Programs {
            ebpf,
            mode: Mode::detect(),
            egress_interfaces: Vec::new(),
            ingress_attached: false,
        })
    }

    /// Writes the rules and then the target record that makes them live.
    pub fn configure(&mut self, target: &Cgroup, rules: &[LossRule]) -> Result<(), LoadError> {
        if rules.len() > MAX_LOSS_RULES as usize {
            return Err(LoadError::TooManyRules(rules.len()));
        }
        self.write_rules(rules)?;
        let record = Target {
            cgroup_id: target.id,
            level: target.level,
            egress_verdict: self.mode.verdict(),
            loss_rules: rules.len() as u32,
            _pad: 0,
        };
        self.write("TARGET", &[record])
    }

    /// Makes every rule inert at once (the target record says none is live), so that counters
    /// read afterwards are final.
    pub fn disable(&mut self) -> Result<(), LoadError> {
        let mut array = self.array::<Target>("TARGET")?;
        let mut record = array.get(&0, 0).map_err(map_error("read", "TARGET"))?;
        record.loss_rules = 0;
        array
            .set(0, record, 0)
            .map_err(map_error("write", "TARGET"))
    }

    /// Rewrites the rule records (to renew their deadlines).
    pub fn write_rules(&mut self, rules: &[LossRule]) -> Result<(), LoadError> {
        self.write("LOSS_RULES", rules)
    }

    /// Writes `values` at the start of an array map.
    fn write<T: aya::Pod>(&mut self, name: &'static str, values: &[T]) -> Result<(), LoadError> {
        let mut array = self.array::<T>(name)?;
        for (i, value) in values.iter().enumerate() {
            array
                .set(i as u32, *value, 0)
                .map_err(map_error("write", name))?;
        }
        Ok(())
    }

    fn array<T: aya::Pod>(
        &mut self,
        name: &'static str,
    ) -> Result<Array<&mut aya::maps::MapData, T>, LoadError> {
        let map = self.ebpf.map_mut(name).ok_or(LoadError::Missing(name))?;
        Array::try_from(map).map_err(map_error("open", name))
    }

    /// Attaches the egress program to every interface not yet attached; returns the new ones.
    /// Without tcx, the qdiscs and filters go into `undo` before they are made.
    pub fn attach_egress_everywhere(&mut self, undo: &mut UndoLog) -> anyhow::Result<Vec<String>> {
        let mut added = Vec::new();
        for interface in interfaces() {
            // Known by index too: an interface deleted and made again under the same name is a
            // new one, without the program.
            if self.egress_interfaces.contains(&interface) {
                continue;
            }
            let name = &interface.name;
            let prog: &mut SchedClassifier = program(&mut self.ebpf, "loss_egress")?;
            match tc::attach(prog, name, self.mode, undo) {
                Ok(()) => {}
                // The interface went away between listing and attaching.
                Err(_) if !interfaces().contains(&interface) => continue,
                Err(e) => {
                    let mode = self.mode.name();
                    return Err(e).with_context(|| {
                        format!("attach `loss_egress` to {mode} egress of {name}")
                    });
                }
            }
            self.egress_interfaces.retain(|i| i.name != interface.name);
            added.push(interface.name.clone());
            self.egress_interfaces.push(interface);
        }
        Ok(added)
    }

    /// Attaches the ingress program to the target cgroup.
    pub fn attach_ingress(&mut self, target: &Cgroup) -> Result<(), LoadError> {
        let attach_err = |source| LoadError::Attach {
            program: "loss_ingress",
            to: format!("cgroup {}", target.name),
            source,
        };
        let dir = fs::File::open(&target.path).map_err(|e| attach_err(ProgramError::IOError(e)))?;
        let prog: &mut CgroupSkb = program(&mut self.ebpf, "loss_ingress")?;
        prog.attach(
            dir.as_fd(),
            CgroupSkbAttachType::Ingress,
            CgroupAttachMode::Single,
        )
        .map_err(attach_err)?;
        self.ingress_attached = true;
        Ok(())
    }

    /// Where the programs are attached, for the report.
    pub fn attachments(&self) -> Vec<String> {
        let mut out: Vec<String> = self
            .egress_interfaces
            .iter()
            .map(|i| format!("{} egress {}", self.mode.name(), i.name))
            .collect();
        if self.ingress_attached {
            out.push("cgroup_skb ingress".to_string());
        }
        out
    }

    /// Counters of rule `rule`, summed over CPUs: (egress, ingress).
    pub fn counters(&self, rule: u32) -> Result<(RuleCounters, RuleCounters), LoadError> {
        let name = "LOSS_COUNTERS";
        let map = self.ebpf.map(name).ok_or(LoadError::Missing(name))?;
        let array: PerCpuArray<_, RuleCounters> =
            PerCpuArray::try_from(map).map_err(map_error("open", name))?;
        let sum = |index: u32| -> Result<RuleCounters, LoadError> {
            let values = array.get(&index, 0).map_err(map_error("read", name))?;
            Ok(values
                .iter()
                .fold(RuleCounters::default(), |acc, v| RuleCounters {
                    matched: acc.matched + v.matched,
                    injected: acc.injected + v.injected,
                    passed: acc.passed + v.passed,
                    expired: acc.expired + v.expired,
                }))
        };
        Ok((
            sum(rule * 2 + COUNTER_EGRESS)?,
            sum(rule * 2 + COUNTER_INGRESS)?,
        ))
    }
}

fn map_error(op: &'static str, map: &'static str) -> impl FnOnce(MapError) -> LoadError {
    move |source| LoadError::Map { op, map, source }
}

fn program<'a, T>(ebpf: &'a mut Ebpf, name: &'static str) -> Result<&'a mut T, LoadError>
where
    &'a mut T: TryFrom<&'a mut aya::programs::Program>,
{
    ebpf.program_mut(name)
        .and_then(|p| p.try_into().ok())
        .ok_or(LoadError::Missing(name))
}

/// A network interface: its name and its index, which a recreated interface does not keep.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Interface {
    pub name: String,
    pub index: u32,
}

/// The network interfaces of the network namespace this process is in.
pub fn interfaces() -> Vec<Interface> {
    let mut found = Vec::new();
    // SAFETY: if_nameindex returns an array ended by a zeroed entry, or null; every name is a
    // NUL-terminated string; the array is freed once, after it has been copied.
    unsafe {
        let list = libc::if_nameindex();
        if list.is_null() {
            return found;
        }
        let mut entry = list;
        while (*entry).if_index != 0 && !(*entry).if_name.is_null() {
            let name = std::ffi::CStr::from_ptr((*entry).if_name)
                .to_string_lossy()
                .into_owned();
            found.push(Interface {
                name,
                index: (*entry).if_index,
            });
            entry = entry.add(1);
        }
        libc::if_freenameindex(list);
    }
    found.sort_by(|a, b| a.name.cmp(&b.name));
    found
}

/// Loads one program of the object alone, attaching nothing, to see whether this kernel takes it.
pub fn probe(name: &'static str) -> Result<(), LoadError> {
    check_ready()?;
    let mut ebpf = Ebpf::load(OBJECT).map_err(LoadError::Object)?;
    let refused = |source| LoadError::Refused {
        program: name,
        source,
    };
    let btf = || aya::Btf::from_sys_fs().map_err(|e| refused(ProgramError::Btf(e)));
    match ebpf.program_mut(name).ok_or(LoadError::Missing(name))? {
        aya::programs::Program::SchedClassifier(p) => p.load().map_err(refused),
        aya::programs::Program::CgroupSkb(p) => p.load().map_err(refused),
        aya::programs::Program::FEntry(p) => p.load("security_file_open", &btf()?).map_err(refused),
        aya::programs::Program::Lsm(p) => p.load("file_open", &btf()?).map_err(refused),
        _ => Err(LoadError::Missing(name)),
    }
}
