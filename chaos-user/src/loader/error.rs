//! Why the kernel side could not be set up.

use aya::{EbpfError, maps::MapError, programs::ProgramError};

use crate::error::{Class, Classify};

/// Why the kernel side could not be set up. Every variant is the environment's refusal.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// The binary has no programs in it.
    #[error("this chaos-user was built without its eBPF programs")]
    NotBuilt,
    /// Not root.
    #[error("loading eBPF programs needs root (CAP_BPF, CAP_NET_ADMIN and CAP_SYS_ADMIN)")]
    NotPrivileged,
    /// Root, but without capabilities that loading and attaching the programs take.
    #[error(
        "loading eBPF programs needs CAP_BPF, CAP_NET_ADMIN and CAP_SYS_ADMIN; this process \
         lacks {0}"
    )]
    MissingCapabilities(String),
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
    /// More rules of one family than the programs walk.
    #[error("at most {max} {family} faults per session; {given} were given")]
    TooManyRules {
        family: &'static str,
        max: u32,
        given: usize,
    },
    /// The interface already runs an XDP program.
    #[error("interface {dev} already has an XDP program attached")]
    XdpBusy { dev: String },
    /// The kernel's BTF could not be read or lacks a type the programs need.
    #[error("read the kernel's type information (/sys/kernel/btf/vmlinux): {0}")]
    Btf(String),
    /// The object could not be relocated for a program chaos-user loads itself.
    #[error("relocate the embedded eBPF object: {0}")]
    Relocate(String),
    /// A kernel function a hook program attaches to is not in this kernel.
    #[error("this kernel has no function {0} to attach to")]
    NoFunction(&'static str),
    /// The kernel refused a program chaos-user loads itself.
    #[error("the kernel refused to load program `{program}`{}", verifier_tail(log))]
    HandLoad {
        program: &'static str,
        #[source]
        source: std::io::Error,
        log: String,
    },
    /// A program chaos-user loads itself could not be linked.
    #[error("attach `{program}` to {function}")]
    HandAttach {
        program: &'static str,
        function: &'static str,
        #[source]
        source: std::io::Error,
    },
    /// A path named by `path=` cannot be looked up.
    #[error("path={path} cannot be looked up")]
    Path {
        path: String,
        #[source]
        source: std::io::Error,
    },
    /// The kernel is too old for a program the plan needs.
    #[error("{what} needs kernel {need} or later; this is {have}")]
    KernelTooOld {
        what: &'static str,
        need: &'static str,
        have: String,
    },
}

const TRAMPOLINE_HINT: &str = "file, nospace, fail and fd-limit beyond sockets run as BPF LSM \
     or modify-return programs, which need BPF trampolines (kernel 5.7+, x86_64 or arm64, not \
     refused by a lockdown or a local policy); `chaos-user doctor` shows whether this kernel \
     loads them";

/// The last lines of a verifier log, where the reason is.
fn verifier_tail(log: &str) -> String {
    let lines: Vec<&str> = log.lines().filter(|l| !l.trim().is_empty()).collect();
    if lines.is_empty() {
        return String::new();
    }
    let tail = &lines[lines.len().saturating_sub(12)..];
    format!("\nverifier log (end):\n{}", tail.join("\n"))
}

impl Classify for LoadError {
    fn class(&self) -> Class {
        match self {
            LoadError::TooManyRules { .. } | LoadError::Path { .. } => Class::BadInput,
            _ => Class::Environment,
        }
    }

    fn hint(&self) -> Option<String> {
        match self {
            LoadError::NotBuilt => Some(
                "run `cargo xtask setup` to install the eBPF toolchain, then build again".into(),
            ),
            LoadError::NotPrivileged => Some("run it with sudo".into()),
            LoadError::MissingCapabilities(_) => Some(
                "run it as root with its full capability set; in a container, run it \
                 privileged"
                    .into(),
            ),
            LoadError::Object(_) => Some(
                "the kernel refused to create the maps: root needs CAP_BPF and CAP_SYS_ADMIN \
                 (in a container, run it privileged)"
                    .into(),
            ),
            LoadError::Refused { program, .. } if program.starts_with("chaos_lsm_") => {
                Some(TRAMPOLINE_HINT.into())
            }
            LoadError::HandLoad { .. } | LoadError::HandAttach { .. } => {
                Some(TRAMPOLINE_HINT.into())
            }
            LoadError::NoFunction(_) => Some(
                "file, nospace and fail need the kernel's LSM hooks (CONFIG_SECURITY, and \
                 CONFIG_SECURITY_PATH for create, unlink and the other path operations)"
                    .into(),
            ),
            LoadError::Path { .. } => Some("path= names a file or directory that exists".into()),
            LoadError::Refused { .. } => {
                Some("`chaos-user doctor` shows which programs this kernel loads".into())
            }
            LoadError::XdpBusy { dev } => Some(format!(
                "another session's xdp-drop, or a program of the system, holds it \
                 (`ip link show dev {dev}` shows it): stop that first"
            )),
            _ => None,
        }
    }
}
