//! TCP sockets as a dump reports them, the filter over them, and the calls that list and abort
//! the sockets of cgroups.

use std::{fmt, net::SocketAddr};

use ipnet::IpNet;

use super::{SockDiagError, bytecode::cgroup_bytecode, netlink::SOCKID_LEN, socket::DiagSocket};
use crate::spec::Ports;

/// The state of a connection, from the first SYN to the last FIN, numbered as in the kernel's
/// `include/net/tcp_states.h`. Listeners are not connections, and sockets in TIME_WAIT or
/// NEW_SYN_RECV are not full sockets: they carry no cgroup, and aborting them means nothing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TcpState {
    /// Open both ways.
    Established = 1,
    /// Connecting: its SYN is sent, no answer yet.
    SynSent = 2,
    /// Accepted by a listener, the handshake not finished (with TCP Fast Open).
    SynRecv = 3,
    /// Closed by its owner, the FIN not yet acknowledged.
    FinWait1 = 4,
    /// Closed by its owner, waiting for the peer's FIN.
    FinWait2 = 5,
    /// Closed by the peer, not yet by its owner.
    CloseWait = 8,
    /// Closed by the peer, then by its owner; the last FIN not yet acknowledged.
    LastAck = 9,
    /// Both ends closed at once.
    Closing = 11,
}

impl TcpState {
    /// Every state this module lists and aborts.
    pub const ALL: [TcpState; 8] = {
        use TcpState::*;
        [
            Established,
            SynSent,
            SynRecv,
            FinWait1,
            FinWait2,
            CloseWait,
            LastAck,
            Closing,
        ]
    };

    pub(super) fn from_kernel(state: u8) -> Option<TcpState> {
        Self::ALL.into_iter().find(|s| *s as u8 == state)
    }
}

pub(super) fn connected_mask() -> u32 {
    TcpState::ALL
        .iter()
        .fold(0, |mask, s| mask | 1 << *s as u32)
}

/// Which sockets of the cgroups to abort; a key left `None` matches every socket.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct SocketFilter {
    /// The socket's local address.
    pub src: Option<IpNet>,
    /// The socket's remote address.
    pub dst: Option<IpNet>,
    /// The socket's local port.
    pub sport: Option<Ports>,
    /// The socket's remote port.
    pub dport: Option<Ports>,
    /// A stable share of connections, chosen by a hash of their addresses and ports.
    pub flows: Option<f64>,
}

impl SocketFilter {
    /// Whether the socket passes every key. An IPv4 peer of a dual-stack socket, which the
    /// kernel reports as `::ffff:a.b.c.d`, matches as the IPv4 address it is.
    pub fn matches(&self, socket: &TcpSocket) -> bool {
        let net = |net: &Option<IpNet>, addr: &SocketAddr| {
            net.is_none_or(|n| n.contains(&addr.ip().to_canonical()))
        };
        let port = |ports: &Option<Ports>, addr: &SocketAddr| {
            ports.is_none_or(|p| (p.lo..=p.hi).contains(&addr.port()))
        };
        net(&self.src, &socket.local)
            && net(&self.dst, &socket.remote)
            && port(&self.sport, &socket.local)
            && port(&self.dport, &socket.remote)
            && self.flows.is_none_or(|share| {
                use std::hash::{BuildHasher as _, BuildHasherDefault, DefaultHasher};
                // A hasher with fixed keys: the same connection lands on the same side of the
                // share in every round.
                let hash = BuildHasherDefault::<DefaultHasher>::default()
                    .hash_one((socket.local, socket.remote));
                ((hash >> 32) as f64) < share * (1u64 << 32) as f64
            })
    }
}

/// A TCP socket as a sock_diag dump reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TcpSocket {
    /// The state the socket was in when it was listed.
    pub state: TcpState,
    /// The local address and port (`src` and `sport` of a filter).
    pub local: SocketAddr,
    /// The peer's address and port (`dst` and `dport` of a filter).
    pub remote: SocketAddr,
    /// The socket's cgroup2 id, when the kernel reports it (Linux 5.8 and later).
    pub cgroup_id: Option<u64>,
    /// The segments it retransmitted so far (`tcpi_total_retrans`), when reported.
    pub retransmits: Option<u32>,
    /// The inode of the socket's file; 0 once its owner has closed it.
    pub inode: u32,
    /// The user who owns the socket.
    pub uid: u32,
    /// The family and the raw `inet_diag_sockid`, which a `SOCK_DESTROY` request echoes.
    pub(super) family: u8,
    pub(super) id: [u8; SOCKID_LEN],
}

impl fmt::Display for TcpSocket {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (local, remote, state) = (self.local, self.remote, self.state);
        write!(f, "TCP {local} -> {remote} ({state:?})")
    }
}

/// Lists the TCP sockets in a connected state ([`TcpState::ALL`]) that belong to one of
/// the cgroups (cgroup2 ids: the inode numbers of their directories) and pass the filter.
pub fn list_tcp(
    cgroup_ids: &[u64],
    filter: &SocketFilter,
) -> Result<Vec<TcpSocket>, SockDiagError> {
    let bytecode = cgroup_bytecode(cgroup_ids)?;
    let mut diag = DiagSocket::open()?;
    list_with(&mut diag, &bytecode, cgroup_ids, filter)
}

/// Aborts the sockets [`list_tcp`] lists and returns how many the kernel destroyed. A socket
/// that closed between the dump and its destruction is not counted, and is no error.
///
/// Needs `CAP_NET_ADMIN` and a kernel with `CONFIG_INET_DIAG_DESTROY`; it stops at the first
/// socket the kernel refuses to destroy.
pub fn destroy_tcp(cgroup_ids: &[u64], filter: &SocketFilter) -> Result<usize, SockDiagError> {
    let bytecode = cgroup_bytecode(cgroup_ids)?;
    let mut diag = DiagSocket::open()?;
    let sockets = list_with(&mut diag, &bytecode, cgroup_ids, filter)?;

    let mut destroyed = 0;
    for socket in &sockets {
        if diag.destroy(socket)? {
            log::debug!("aborted {socket}");
            destroyed += 1;
        } else {
            log::debug!("{socket} closed before it could be aborted");
        }
    }
    Ok(destroyed)
}

fn list_with(
    diag: &mut DiagSocket,
    bytecode: &[u8],
    cgroup_ids: &[u64],
    filter: &SocketFilter,
) -> Result<Vec<TcpSocket>, SockDiagError> {
    let mut sockets = Vec::new();
    for family in [libc::AF_INET as u8, libc::AF_INET6 as u8] {
        diag.dump(family, bytecode, &mut sockets)?;
    }
    // The kernel ran the cgroup filter already; a socket it reports in another cgroup would
    // mean that the filter was not understood, and is never aborted.
    sockets.retain(|s| {
        let ours = s.cgroup_id.is_none_or(|id| cgroup_ids.contains(&id));
        if !ours {
            log::warn!(
                "sock_diag reported {s} of cgroup {:?}, not asked for",
                s.cgroup_id
            );
        }
        ours && filter.matches(s)
    });
    Ok(sockets)
}
