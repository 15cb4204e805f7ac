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
    /// The kernel is too old for a program the plan needs.
    #[error("{what} needs kernel {need} or later; this is {have}")]
    KernelTooOld {
        what: &'static str,
        need: &'static str,
        have: String,
    },
}

impl Classify for LoadError {
    fn class(&self) -> Class {
        match self {
            LoadError::TooManyRules { .. } => Class::BadInput,
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
            LoadError::XdpBusy { dev } => Some(format!(
                "another session's xdp-drop, or a program of the system, holds it \
                 (`ip link show dev {dev}` shows it): stop that first"
            )),
            _ => None,
        }
    }
}
