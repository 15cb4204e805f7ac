//! Aborting the TCP connections of cgroups through sock_diag, as `ss -K ... cgroup PATH` does.
//!
//! One `SOCK_DIAG_BY_FAMILY` dump per address family lists the TCP sockets in a connected state
//! whose cgroup is one of the given cgroup2 ids (an `INET_DIAG_BC_CGROUP_COND` filter that the
//! kernel runs on each socket); the address and port filters are then applied here, exactly; and
//! each socket left is aborted by a `SOCK_DESTROY` request. The kernel aborts it as `tcp_abort()`
//! does: the owner's next call on the socket fails with `ECONNABORTED` (a blocked call returns
//! with it at once) and the peer gets a RST, so its calls fail with `ECONNRESET`.
//!
//! # Minimum kernel version
//!
//! Linux 5.8 (the cgroup filter and the `INET_DIAG_CGROUP_ID` attribute), built with
//! `CONFIG_INET_DIAG`, `CONFIG_INET_TCP_DIAG`, `CONFIG_SOCK_CGROUP_DATA` and
//! `CONFIG_INET_DIAG_DESTROY`. Destroying needs `CAP_NET_ADMIN`; listing does not.
//!
//! # Limits
//!
//! - A socket belongs to the cgroup its creator was in when it called socket(2); an accepted
//!   socket to its listener's. Moving a process to another cgroup leaves its sockets behind.
//! - Only the very cgroups given match: pass the ids of the descendants to include them.
//! - Only the sockets of the caller's network namespace are seen.
//! - Before Linux 5.15, activating the v1 `net_cls` or `net_prio` controller on a hybrid host
//!   turns cgroup2 socket matching off: sockets created after that count as the root cgroup's.

mod bytecode;
mod error;
mod netlink;
mod socket;
mod tcp;
#[cfg(test)]
mod tests;

pub use bytecode::MAX_CGROUPS;
pub use error::SockDiagError;
pub use tcp::{SocketFilter, TcpSocket, TcpState, destroy_tcp, list_tcp};
