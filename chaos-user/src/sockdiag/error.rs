//! Why connections could not be listed or aborted, and how the CLI classes it.

use std::io;

use super::MAX_CGROUPS;
use crate::error::{Class, Classify};

/// Why connections could not be listed or aborted.
#[derive(Debug, thiserror::Error)]
pub enum SockDiagError {
    /// No cgroup was given; an empty filter would match every TCP socket of the host.
    #[error("no cgroup given: an empty cgroup filter would match every TCP socket of the host")]
    NoCgroup,
    /// More cgroups than one kernel filter can hold.
    #[error("{0} cgroups are more than one sock_diag filter holds (at most {MAX_CGROUPS})")]
    TooManyCgroups(usize),
    /// A call on the netlink socket failed.
    #[error("{op} (NETLINK_SOCK_DIAG)")]
    Io {
        op: &'static str,
        #[source]
        source: io::Error,
    },
    /// The kernel rejected the cgroup filter of a dump.
    #[error(
        "the kernel rejected the cgroup filter of a TCP socket dump (EINVAL): it needs Linux 5.8 \
         or later, built with CONFIG_SOCK_CGROUP_DATA"
    )]
    NoCgroupFilter,
    /// The kernel has no TCP socket diagnostics.
    #[error(
        "the kernel cannot list TCP sockets (ENOENT from SOCK_DIAG_BY_FAMILY): it lacks \
         CONFIG_INET_DIAG or CONFIG_INET_TCP_DIAG (modules inet_diag, tcp_diag)"
    )]
    NoTcpDiag,
    /// The kernel refused a dump for another reason.
    #[error("the kernel refused to list the {family} TCP sockets of the cgroups")]
    Dump {
        family: &'static str,
        #[source]
        source: io::Error,
    },
    /// The kernel was built without socket destruction.
    #[error("the kernel refused SOCK_DESTROY (EOPNOTSUPP): it lacks CONFIG_INET_DIAG_DESTROY")]
    NoDestroy,
    /// The caller may not destroy sockets.
    #[error("SOCK_DESTROY of {socket} was not permitted (EPERM): it needs CAP_NET_ADMIN")]
    NotPermitted { socket: String },
    /// The kernel refused to destroy a socket for another reason.
    #[error("SOCK_DESTROY of {socket}")]
    Destroy {
        socket: String,
        #[source]
        source: io::Error,
    },
    /// The kernel's answer does not have the layout this module reads.
    #[error("malformed sock_diag answer: {0}")]
    Malformed(&'static str),
}

impl Classify for SockDiagError {
    fn class(&self) -> Class {
        match self {
            SockDiagError::NoCgroup | SockDiagError::TooManyCgroups(_) => Class::BadInput,
            _ => Class::Environment,
        }
    }

    fn hint(&self) -> Option<String> {
        match self {
            SockDiagError::NoDestroy => {
                Some("use a kernel built with CONFIG_INET_DIAG_DESTROY=y".into())
            }
            SockDiagError::NoCgroupFilter => Some(
                "use Linux 5.8 or later; `grep SOCK_CGROUP_DATA /boot/config-$(uname -r)` \
                 shows whether the kernel has cgroup2 socket data"
                    .into(),
            ),
            SockDiagError::NoTcpDiag => Some("load it: modprobe tcp_diag".into()),
            SockDiagError::NotPermitted { .. } => Some("run chaos-user as root".into()),
            _ => None,
        }
    }
}
