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

use std::{
    fmt, io,
    net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6},
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
};

use ipnet::IpNet;

use crate::{
    error::{Class, Classify},
    spec::Ports,
};

// include/uapi/linux/sock_diag.h
const SOCK_DIAG_BY_FAMILY: u16 = 20;
const SOCK_DESTROY: u16 = 21;
// include/uapi/linux/inet_diag.h
const INET_DIAG_REQ_BYTECODE: u16 = 1;
const INET_DIAG_BC_JMP: u8 = 1;
const INET_DIAG_BC_CGROUP_COND: u8 = 13;
const INET_DIAG_CGROUP_ID: u16 = 21;

/// struct nlmsghdr, struct nlattr, struct inet_diag_bc_op.
const NLMSG_HDRLEN: usize = 16;
const NLA_HDRLEN: usize = 4;
const OP_LEN: usize = 4;
/// An `INET_DIAG_BC_CGROUP_COND` op and its u64 cgroup id.
const COND_LEN: usize = OP_LEN + 8;
/// struct inet_diag_sockid: ports, addresses, interface, cookie.
const SOCKID_LEN: usize = 48;
/// struct inet_diag_req_v2: family, protocol, ext, pad, states, sockid.
const REQ_V2_LEN: usize = 8 + SOCKID_LEN;
/// struct inet_diag_msg: family, state, timer, retrans, sockid, then five u32.
const DIAG_MSG_LEN: usize = 4 + SOCKID_LEN + 20;
/// Attribute types carry two flag bits (nested, network byte order) above the type.
const NLA_TYPE_MASK: u16 = 0x3fff;
/// The kernel sends a dump in datagrams of at most 32 KiB; twice that leaves room.
const RECV_BUF_LEN: usize = 64 * 1024;

/// The most cgroups one filter holds: its attribute's length is a u16.
pub const MAX_CGROUPS: usize = (u16::MAX as usize - NLA_HDRLEN - COND_LEN) / (COND_LEN + OP_LEN);

const _: () = assert!(REQ_V2_LEN == 56 && DIAG_MSG_LEN == 72);
const _: () = assert!(NLA_HDRLEN + MAX_CGROUPS * (COND_LEN + OP_LEN) - OP_LEN <= u16::MAX as usize);

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

    fn from_kernel(state: u8) -> Option<TcpState> {
        Self::ALL.into_iter().find(|s| *s as u8 == state)
    }
}

fn connected_mask() -> u32 {
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
    /// The inode of the socket's file; 0 once its owner has closed it.
    pub inode: u32,
    /// The user who owns the socket.
    pub uid: u32,
    /// The family and the raw `inet_diag_sockid`, which a `SOCK_DESTROY` request echoes.
    family: u8,
    id: [u8; SOCKID_LEN],
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

/// A filter program that accepts a socket whose cgroup is one of `ids`. The kernel runs it from
/// its first op to the end: an op jumps forward by `yes` bytes when its condition holds and by
/// `no` bytes when not, and the socket passes when the jumps land exactly on the end. Each
/// cgroup but the last is a condition followed by a jump to the end, which the condition's
/// `no` skips; the last condition's `no` lands past the end, which rejects the socket.
fn cgroup_bytecode(ids: &[u64]) -> Result<Vec<u8>, SockDiagError> {
    if ids.is_empty() {
        return Err(SockDiagError::NoCgroup);
    }
    if ids.len() > MAX_CGROUPS {
        return Err(SockDiagError::TooManyCgroups(ids.len()));
    }
    let total = ids.len() * (COND_LEN + OP_LEN) - OP_LEN;
    let mut bc = Vec::with_capacity(total);
    for (i, id) in ids.iter().enumerate() {
        push_op(
            &mut bc,
            INET_DIAG_BC_CGROUP_COND,
            COND_LEN,
            COND_LEN + OP_LEN,
        );
        bc.extend_from_slice(&id.to_ne_bytes());
        if i + 1 < ids.len() {
            let to_end = total - bc.len();
            push_op(&mut bc, INET_DIAG_BC_JMP, OP_LEN, to_end);
        }
    }
    Ok(bc)
}

/// Appends a struct inet_diag_bc_op. The lengths fit: `MAX_CGROUPS` bounds the program.
fn push_op(bc: &mut Vec<u8>, code: u8, yes: usize, no: usize) {
    bc.push(code);
    bc.push(yes as u8);
    bc.extend_from_slice(&(no as u16).to_ne_bytes());
}

/// A netlink message: struct nlmsghdr (the kernel fills in the port id) and the body.
fn message(kind: u16, flags: u16, seq: u32, body: &[u8]) -> Vec<u8> {
    let len = NLMSG_HDRLEN + body.len();
    let mut msg = Vec::with_capacity(len);
    msg.extend_from_slice(&(len as u32).to_ne_bytes());
    msg.extend_from_slice(&kind.to_ne_bytes());
    msg.extend_from_slice(&flags.to_ne_bytes());
    msg.extend_from_slice(&seq.to_ne_bytes());
    msg.extend_from_slice(&0u32.to_ne_bytes());
    msg.extend_from_slice(body);
    msg
}

/// A struct inet_diag_req_v2 for TCP in the connected states.
fn req_v2(family: u8, id: &[u8; SOCKID_LEN]) -> Vec<u8> {
    let mut req = Vec::with_capacity(REQ_V2_LEN);
    req.extend_from_slice(&[family, libc::IPPROTO_TCP as u8, 0, 0]);
    req.extend_from_slice(&connected_mask().to_ne_bytes());
    req.extend_from_slice(id);
    req
}

fn dump_request(seq: u32, family: u8, bytecode: &[u8]) -> Vec<u8> {
    let mut body = req_v2(family, &[0; SOCKID_LEN]);
    body.extend_from_slice(&((NLA_HDRLEN + bytecode.len()) as u16).to_ne_bytes());
    body.extend_from_slice(&INET_DIAG_REQ_BYTECODE.to_ne_bytes());
    body.extend_from_slice(bytecode);
    let flags = (libc::NLM_F_REQUEST | libc::NLM_F_DUMP) as u16;
    message(SOCK_DIAG_BY_FAMILY, flags, seq, &body)
}

fn destroy_request(seq: u32, socket: &TcpSocket) -> Vec<u8> {
    let flags = (libc::NLM_F_REQUEST | libc::NLM_F_ACK) as u16;
    message(SOCK_DESTROY, flags, seq, &req_v2(socket.family, &socket.id))
}

/// A netlink message of an answer, as far as this module cares.
#[derive(Debug, PartialEq, Eq)]
enum Reply<'a> {
    /// A socket of a dump: a struct inet_diag_msg and its attributes.
    Socket(&'a [u8]),
    /// The end of a dump, with the dump's status: 0, or a negative errno.
    Done(i32),
    /// An acknowledgement (0) or an error (a negative errno).
    Ack(i32),
}

/// The messages of one datagram that answer the request `seq`.
fn replies(buf: &[u8], seq: u32) -> Result<Vec<Reply<'_>>, SockDiagError> {
    let mut out = Vec::new();
    let mut rest = buf;
    while rest.len() >= NLMSG_HDRLEN {
        let len = u32_at(rest, 0) as usize;
        if len < NLMSG_HDRLEN || len > rest.len() {
            return Err(SockDiagError::Malformed(
                "a message's length runs past the datagram",
            ));
        }
        let (kind, msg_seq) = (u16_at(rest, 4), u32_at(rest, 8));
        let payload = &rest[NLMSG_HDRLEN..len];
        rest = &rest[align4(len).min(rest.len())..];
        if msg_seq != seq {
            log::debug!("skipping a netlink message of sequence {msg_seq}, not {seq}");
            continue;
        }
        let status = || {
            (payload.len() >= 4)
                .then(|| i32::from_ne_bytes(payload[..4].try_into().expect("4 bytes")))
        };
        out.push(match i32::from(kind) {
            libc::NLMSG_DONE => Reply::Done(status().unwrap_or(0)),
            libc::NLMSG_ERROR => Reply::Ack(status().ok_or(SockDiagError::Malformed(
                "an error message without its code",
            ))?),
            _ if kind == SOCK_DIAG_BY_FAMILY => Reply::Socket(payload),
            _ => {
                log::debug!("skipping a netlink message of type {kind}");
                continue;
            }
        });
    }
    Ok(out)
}

/// Decodes a struct inet_diag_msg and the cgroup id among its attributes.
fn decode_socket(payload: &[u8]) -> Result<TcpSocket, SockDiagError> {
    if payload.len() < DIAG_MSG_LEN {
        return Err(SockDiagError::Malformed(
            "a socket message shorter than inet_diag_msg",
        ));
    }
    let family = payload[0];
    let state = TcpState::from_kernel(payload[1])
        .ok_or(SockDiagError::Malformed("a socket in an unknown TCP state"))?;
    let id: [u8; SOCKID_LEN] = payload[4..4 + SOCKID_LEN].try_into().expect("48 bytes");
    let sport = u16::from_be_bytes([id[0], id[1]]);
    let dport = u16::from_be_bytes([id[2], id[3]]);
    let (src, dst) = (&id[4..20], &id[20..36]);
    let (local, remote) = match i32::from(family) {
        libc::AF_INET => {
            let v4 = |a: &[u8]| Ipv4Addr::new(a[0], a[1], a[2], a[3]);
            (
                SocketAddr::V4(SocketAddrV4::new(v4(src), sport)),
                SocketAddr::V4(SocketAddrV4::new(v4(dst), dport)),
            )
        }
        libc::AF_INET6 => {
            let v6 = |a: &[u8]| Ipv6Addr::from(<[u8; 16]>::try_from(a).expect("16 bytes"));
            (
                SocketAddr::V6(SocketAddrV6::new(v6(src), sport, 0, 0)),
                SocketAddr::V6(SocketAddrV6::new(v6(dst), dport, 0, 0)),
            )
        }
        _ => {
            return Err(SockDiagError::Malformed(
                "a socket of neither AF_INET nor AF_INET6",
            ));
        }
    };

    let mut cgroup_id = None;
    let mut attrs = &payload[align4(DIAG_MSG_LEN).min(payload.len())..];
    while attrs.len() >= NLA_HDRLEN {
        let len = usize::from(u16_at(attrs, 0));
        if len < NLA_HDRLEN || len > attrs.len() {
            return Err(SockDiagError::Malformed(
                "an attribute's length runs past its message",
            ));
        }
        if u16_at(attrs, 2) & NLA_TYPE_MASK == INET_DIAG_CGROUP_ID && len == NLA_HDRLEN + 8 {
            let bytes = attrs[NLA_HDRLEN..len].try_into().expect("8 bytes");
            cgroup_id = Some(u64::from_ne_bytes(bytes));
        }
        attrs = &attrs[align4(len).min(attrs.len())..];
    }

    Ok(TcpSocket {
        state,
        local,
        remote,
        cgroup_id,
        inode: u32_at(payload, 68),
        uid: u32_at(payload, 64),
        family,
        id,
    })
}

fn align4(len: usize) -> usize {
    (len + 3) & !3
}

fn u16_at(buf: &[u8], at: usize) -> u16 {
    u16::from_ne_bytes([buf[at], buf[at + 1]])
}

fn u32_at(buf: &[u8], at: usize) -> u32 {
    u32::from_ne_bytes(buf[at..at + 4].try_into().expect("4 bytes"))
}

fn family_name(family: u8) -> &'static str {
    if i32::from(family) == libc::AF_INET {
        "IPv4"
    } else {
        "IPv6"
    }
}

/// A NETLINK_SOCK_DIAG socket, talking to the kernel one request at a time.
struct DiagSocket {
    fd: OwnedFd,
    seq: u32,
    buf: Vec<u8>,
}

impl DiagSocket {
    fn open() -> Result<DiagSocket, SockDiagError> {
        // SAFETY: socket(2) takes no pointers; the result is checked before it is used.
        let fd = unsafe {
            libc::socket(
                libc::AF_NETLINK,
                libc::SOCK_RAW | libc::SOCK_CLOEXEC,
                libc::NETLINK_SOCK_DIAG,
            )
        };
        if fd < 0 {
            let source = io::Error::last_os_error();
            return Err(SockDiagError::Io {
                op: "open a socket",
                source,
            });
        }
        Ok(DiagSocket {
            // SAFETY: `fd` is a descriptor socket(2) just returned, owned by nothing else.
            fd: unsafe { OwnedFd::from_raw_fd(fd) },
            seq: 0,
            buf: vec![0; RECV_BUF_LEN],
        })
    }

    /// Sends one request to the kernel (an unconnected netlink socket sends to port 0).
    fn send(&mut self, msg: &[u8]) -> Result<(), SockDiagError> {
        loop {
            // SAFETY: the pointer and length describe `msg`, which outlives the call.
            let sent =
                unsafe { libc::send(self.fd.as_raw_fd(), msg.as_ptr().cast(), msg.len(), 0) };
            if sent >= 0 {
                return if sent as usize == msg.len() {
                    Ok(())
                } else {
                    Err(SockDiagError::Malformed(
                        "the kernel took part of a request",
                    ))
                };
            }
            let source = io::Error::last_os_error();
            if source.kind() != io::ErrorKind::Interrupted {
                return Err(SockDiagError::Io {
                    op: "send a request",
                    source,
                });
            }
        }
    }

    /// Receives one datagram into `self.buf` and returns its length.
    fn recv(&mut self) -> Result<usize, SockDiagError> {
        loop {
            // SAFETY: the pointer and length describe `self.buf`, which outlives the call.
            // MSG_TRUNC makes a netlink socket return a datagram's whole length, even when it
            // did not fit.
            let got = unsafe {
                libc::recv(
                    self.fd.as_raw_fd(),
                    self.buf.as_mut_ptr().cast(),
                    self.buf.len(),
                    libc::MSG_TRUNC,
                )
            };
            if got >= 0 {
                return if got as usize <= self.buf.len() {
                    Ok(got as usize)
                } else {
                    Err(SockDiagError::Malformed(
                        "a datagram larger than the receive buffer",
                    ))
                };
            }
            let source = io::Error::last_os_error();
            if source.kind() != io::ErrorKind::Interrupted {
                return Err(SockDiagError::Io {
                    op: "receive an answer",
                    source,
                });
            }
        }
    }

    fn next_seq(&mut self) -> u32 {
        self.seq = self.seq.wrapping_add(1);
        self.seq
    }

    /// Appends the sockets of one family that the filter program accepts.
    fn dump(
        &mut self,
        family: u8,
        bytecode: &[u8],
        out: &mut Vec<TcpSocket>,
    ) -> Result<(), SockDiagError> {
        let seq = self.next_seq();
        self.send(&dump_request(seq, family, bytecode))?;
        loop {
            let len = self.recv()?;
            for reply in replies(&self.buf[..len], seq)? {
                let status = match reply {
                    Reply::Socket(payload) => {
                        out.push(decode_socket(payload)?);
                        continue;
                    }
                    Reply::Done(status) | Reply::Ack(status) => status,
                };
                return match status.saturating_neg() {
                    ..=0 => Ok(()),
                    libc::EINVAL => Err(SockDiagError::NoCgroupFilter),
                    libc::ENOENT => Err(SockDiagError::NoTcpDiag),
                    errno => Err(SockDiagError::Dump {
                        family: family_name(family),
                        source: io::Error::from_raw_os_error(errno),
                    }),
                };
            }
        }
    }

    /// Destroys one socket: true when the kernel did, false when the socket was gone.
    fn destroy(&mut self, socket: &TcpSocket) -> Result<bool, SockDiagError> {
        let seq = self.next_seq();
        self.send(&destroy_request(seq, socket))?;
        loop {
            let len = self.recv()?;
            if let Some(Reply::Ack(status)) = replies(&self.buf[..len], seq)?.into_iter().next() {
                return match status.saturating_neg() {
                    ..=0 => Ok(true),
                    libc::ENOENT => Ok(false),
                    libc::EOPNOTSUPP => Err(SockDiagError::NoDestroy),
                    libc::EPERM => Err(SockDiagError::NotPermitted {
                        socket: socket.to_string(),
                    }),
                    errno => Err(SockDiagError::Destroy {
                        socket: socket.to_string(),
                        source: io::Error::from_raw_os_error(errno),
                    }),
                };
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs a filter program as the kernel's inet_diag_bc_run does, for a socket of `cgroup`.
    fn run(bc: &[u8], cgroup: u64) -> bool {
        let mut at = 0;
        while at < bc.len() {
            let (code, yes, no) = (
                bc[at],
                usize::from(bc[at + 1]),
                usize::from(u16_at(bc, at + 2)),
            );
            let holds = match code {
                INET_DIAG_BC_JMP => false,
                INET_DIAG_BC_CGROUP_COND => {
                    u64::from_ne_bytes(bc[at + 4..at + 12].try_into().unwrap()) == cgroup
                }
                other => panic!("op {other} in a cgroup program"),
            };
            at += if holds { yes } else { no };
        }
        at == bc.len()
    }

    /// Checks a filter program against the rules of the kernel's inet_diag_bc_audit: every jump
    /// is a multiple of 4, at least its op's length, lands on an op or at most 4 bytes past the
    /// end, and the ops tile the program exactly.
    fn audit(bc: &[u8]) -> bool {
        let mut starts = vec![];
        let mut at = 0;
        while at < bc.len() {
            starts.push(at);
            at += usize::from(bc[at + 1]).max(1);
        }
        let mut at = 0;
        while at < bc.len() {
            let left = bc.len() - at;
            let (code, yes, no) = (
                bc[at],
                usize::from(bc[at + 1]),
                usize::from(u16_at(bc, at + 2)),
            );
            let min = if code == INET_DIAG_BC_CGROUP_COND {
                COND_LEN
            } else {
                OP_LEN
            };
            let fits = |jump: usize| jump >= min && jump <= left + 4 && jump.is_multiple_of(4);
            if left < min || !fits(yes) || !fits(no) {
                return false;
            }
            if no < left && !starts.contains(&(at + no)) {
                return false;
            }
            at += yes;
        }
        at == bc.len()
    }

    #[test]
    fn one_cgroup_is_one_condition_as_ss_writes_it() {
        let bc = cgroup_bytecode(&[0x1122]).unwrap();
        let mut want = vec![INET_DIAG_BC_CGROUP_COND, 12];
        want.extend_from_slice(&16u16.to_ne_bytes());
        want.extend_from_slice(&0x1122u64.to_ne_bytes());
        assert_eq!(bc, want);
        assert!(audit(&bc));
        assert!(run(&bc, 0x1122));
        assert!(!run(&bc, 0x1123));
        assert!(!run(&bc, 0));
    }

    #[test]
    fn several_cgroups_accept_any_of_them_and_nothing_else() {
        let ids = [7, 9000, 42, 1 << 40];
        let bc = cgroup_bytecode(&ids).unwrap();
        assert_eq!(bc.len(), 4 * 16 - 4);
        assert!(audit(&bc));
        for id in ids {
            assert!(run(&bc, id), "cgroup {id}");
        }
        for id in [0, 1, 8, 43, u64::MAX] {
            assert!(!run(&bc, id), "cgroup {id}");
        }
    }

    #[test]
    fn the_largest_program_still_fits_its_attribute() {
        let ids: Vec<u64> = (1..=MAX_CGROUPS as u64).collect();
        let bc = cgroup_bytecode(&ids).unwrap();
        assert!(NLA_HDRLEN + bc.len() <= usize::from(u16::MAX));
        assert!(audit(&bc));
        assert!(run(&bc, 1) && run(&bc, MAX_CGROUPS as u64) && !run(&bc, 0));
        let more: Vec<u64> = (1..=MAX_CGROUPS as u64 + 1).collect();
        assert!(matches!(
            cgroup_bytecode(&more),
            Err(SockDiagError::TooManyCgroups(_))
        ));
    }

    #[test]
    fn the_audit_model_rejects_what_the_kernel_rejects() {
        let bc = cgroup_bytecode(&[1, 2]).unwrap();
        let with = |at: usize, value: u8| {
            let mut bad = bc.clone();
            bad[at] = value;
            bad
        };
        assert!(
            !audit(&with(2, 24)),
            "a `no` more than 4 bytes past the end"
        );
        assert!(!audit(&with(2, 14)), "a `no` that is not a multiple of 4");
        assert!(!audit(&with(1, 8)), "a `yes` shorter than its condition");
        assert!(!audit(&bc[..bc.len() - 4]), "a condition cut short");
        assert!(
            !run(&with(14, 20), 1),
            "a jump that does not land on the end"
        );
    }

    #[test]
    fn no_cgroup_is_refused_rather_than_matching_every_socket() {
        assert!(matches!(cgroup_bytecode(&[]), Err(SockDiagError::NoCgroup)));
        assert!(matches!(
            list_tcp(&[], &SocketFilter::default()),
            Err(SockDiagError::NoCgroup)
        ));
        assert!(matches!(
            destroy_tcp(&[], &SocketFilter::default()),
            Err(SockDiagError::NoCgroup)
        ));
    }

    #[test]
    fn a_dump_request_carries_the_connected_states_and_the_filter() {
        let bc = cgroup_bytecode(&[5]).unwrap();
        let msg = dump_request(3, libc::AF_INET6 as u8, &bc);
        assert_eq!(msg.len(), 16 + 56 + 4 + 12);
        assert_eq!(u32_at(&msg, 0) as usize, msg.len());
        assert_eq!(u16_at(&msg, 4), SOCK_DIAG_BY_FAMILY);
        assert_eq!(u16_at(&msg, 6), 0x301, "NLM_F_REQUEST | NLM_F_DUMP");
        assert_eq!(u32_at(&msg, 8), 3);
        assert_eq!(
            &msg[16..20],
            &[libc::AF_INET6 as u8, libc::IPPROTO_TCP as u8, 0, 0]
        );
        // ESTABLISHED..FIN_WAIT2, CLOSE_WAIT, LAST_ACK, CLOSING; not TIME_WAIT, CLOSE, LISTEN.
        assert_eq!(u32_at(&msg, 20), 0b1011_0011_1110);
        assert!(msg[24..72].iter().all(|b| *b == 0));
        assert_eq!(u16_at(&msg, 72), 16);
        assert_eq!(u16_at(&msg, 74), INET_DIAG_REQ_BYTECODE);
        assert_eq!(&msg[76..], &bc[..]);
    }

    /// A struct inet_diag_msg with the given identity, then `attrs`.
    fn diag_msg(family: i32, state: u8, src: &[u8], dst: &[u8], ports: (u16, u16)) -> Vec<u8> {
        let mut msg = vec![family as u8, state, 0, 0];
        msg.extend_from_slice(&ports.0.to_be_bytes());
        msg.extend_from_slice(&ports.1.to_be_bytes());
        for addr in [src, dst] {
            let mut field = [0u8; 16];
            field[..addr.len()].copy_from_slice(addr);
            msg.extend_from_slice(&field);
        }
        msg.extend_from_slice(&3u32.to_ne_bytes()); // interface
        msg.extend_from_slice(&[0xab; 8]); // cookie
        for value in [0u32, 0, 0, 1000, 4242] {
            msg.extend_from_slice(&value.to_ne_bytes()); // expires, queues, uid, inode
        }
        msg
    }

    fn attr(kind: u16, data: &[u8]) -> Vec<u8> {
        let mut out = ((NLA_HDRLEN + data.len()) as u16).to_ne_bytes().to_vec();
        out.extend_from_slice(&kind.to_ne_bytes());
        out.extend_from_slice(data);
        out.resize(align4(out.len()), 0);
        out
    }

    #[test]
    fn an_ipv4_socket_decodes_with_its_cgroup_and_echoes_its_identity() {
        let mut payload = diag_msg(
            libc::AF_INET,
            1,
            &[127, 0, 0, 1],
            &[10, 1, 2, 3],
            (40000, 80),
        );
        payload.extend(attr(8, &[0])); // INET_DIAG_SHUTDOWN
        payload.extend(attr(14, &[])); // INET_DIAG_PAD
        payload.extend(attr(INET_DIAG_CGROUP_ID, &77u64.to_ne_bytes()));
        let s = decode_socket(&payload).unwrap();
        assert_eq!(s.state, TcpState::Established);
        assert_eq!(s.local, "127.0.0.1:40000".parse().unwrap());
        assert_eq!(s.remote, "10.1.2.3:80".parse().unwrap());
        assert_eq!((s.cgroup_id, s.uid, s.inode), (Some(77), 1000, 4242));

        let msg = destroy_request(9, &s);
        assert_eq!(msg.len(), 16 + 56);
        assert_eq!(u16_at(&msg, 4), SOCK_DESTROY);
        assert_eq!(u16_at(&msg, 6), 0x5, "NLM_F_REQUEST | NLM_F_ACK");
        assert_eq!(msg[16], libc::AF_INET as u8);
        assert_eq!(
            &msg[24..72],
            &payload[4..52],
            "the sockid, cookie included, as reported"
        );
    }

    #[test]
    fn an_ipv6_socket_decodes_without_a_cgroup_attribute() {
        let (src, dst): (Ipv6Addr, Ipv6Addr) = ("::1".parse().unwrap(), "fd00::9".parse().unwrap());
        let payload = diag_msg(libc::AF_INET6, 2, &src.octets(), &dst.octets(), (1, 65535));
        let s = decode_socket(&payload).unwrap();
        assert_eq!(s.state, TcpState::SynSent);
        assert_eq!(s.local, "[::1]:1".parse().unwrap());
        assert_eq!(s.remote, "[fd00::9]:65535".parse().unwrap());
        assert_eq!(s.cgroup_id, None);
        assert_eq!(s.to_string(), "TCP [::1]:1 -> [fd00::9]:65535 (SynSent)");
    }

    #[test]
    fn malformed_sockets_are_errors() {
        let good = diag_msg(libc::AF_INET, 1, &[1, 2, 3, 4], &[5, 6, 7, 8], (1, 2));
        assert!(decode_socket(&good[..71]).is_err());
        let mut bad_family = good.clone();
        bad_family[0] = libc::AF_UNIX as u8;
        assert!(decode_socket(&bad_family).is_err());
        let mut bad_state = good.clone();
        bad_state[1] = 99;
        assert!(decode_socket(&bad_state).is_err());
        let mut bad_attr = good;
        bad_attr.extend_from_slice(&[40, 0, 21, 0]);
        assert!(decode_socket(&bad_attr).is_err());
    }

    #[test]
    fn replies_split_a_datagram_and_keep_only_this_request() {
        let socket = diag_msg(libc::AF_INET, 1, &[1, 2, 3, 4], &[5, 6, 7, 8], (1, 2));
        let mut buf = message(SOCK_DIAG_BY_FAMILY, 2, 4, &socket);
        buf.extend(message(SOCK_DIAG_BY_FAMILY, 2, 3, &socket)); // an older request's
        buf.extend(message(libc::NLMSG_DONE as u16, 2, 4, &0i32.to_ne_bytes()));
        let got = replies(&buf, 4).unwrap();
        assert_eq!(got, vec![Reply::Socket(&socket[..]), Reply::Done(0)]);

        let mut err = (-libc::EOPNOTSUPP).to_ne_bytes().to_vec();
        err.extend(message(SOCK_DESTROY, 5, 8, &[0; 56]));
        let buf = message(libc::NLMSG_ERROR as u16, 0, 8, &err);
        assert_eq!(
            replies(&buf, 8).unwrap(),
            vec![Reply::Ack(-libc::EOPNOTSUPP)]
        );

        let mut short = message(libc::NLMSG_DONE as u16, 2, 4, &[]);
        short[0] = 200;
        assert!(replies(&short, 4).is_err());
    }

    fn socket(local: &str, remote: &str) -> TcpSocket {
        TcpSocket {
            state: TcpState::Established,
            local: local.parse().unwrap(),
            remote: remote.parse().unwrap(),
            cgroup_id: None,
            inode: 1,
            uid: 0,
            family: libc::AF_INET as u8,
            id: [0; SOCKID_LEN],
        }
    }

    #[test]
    fn filters_match_local_as_src_and_remote_as_dst() {
        let s = socket("10.0.0.5:40000", "192.168.1.9:5432");
        let net = |n: &str| Some(n.parse::<IpNet>().unwrap());
        let ports = |lo, hi| Some(Ports { lo, hi });
        assert!(SocketFilter::default().matches(&s));
        let exact = SocketFilter {
            src: net("10.0.0.0/8"),
            dst: net("192.168.1.9/32"),
            sport: ports(40000, 40000),
            dport: ports(5432, 5432),
            flows: None,
        };
        assert!(exact.matches(&s));
        // A share of flows: the same socket always lands on the same side.
        let share = |flows| SocketFilter {
            flows: Some(flows),
            ..Default::default()
        };
        assert!(share(1.0).matches(&s));
        let half = share(0.5).matches(&s);
        assert!((0..10).all(|_| share(0.5).matches(&s) == half));
        let misses = [
            SocketFilter {
                src: net("192.168.1.9/32"),
                ..Default::default()
            },
            SocketFilter {
                dst: net("10.0.0.0/8"),
                ..Default::default()
            },
            SocketFilter {
                sport: ports(5432, 5432),
                ..Default::default()
            },
            SocketFilter {
                dport: ports(5433, 6000),
                ..Default::default()
            },
            SocketFilter {
                dst: net("::/0"),
                ..Default::default()
            },
        ];
        for filter in misses {
            assert!(!filter.matches(&s), "{filter:?}");
        }
    }

    #[test]
    fn an_ipv4_peer_of_a_dual_stack_socket_matches_its_ipv4_address() {
        let s = socket("[::ffff:127.0.0.1]:4000", "[::ffff:127.0.0.2]:80");
        let dst = |n: &str| SocketFilter {
            dst: Some(n.parse().unwrap()),
            ..Default::default()
        };
        assert!(dst("127.0.0.2/32").matches(&s));
        assert!(!dst("127.0.0.1/32").matches(&s));
        assert!(!dst("::1/128").matches(&s));
    }
}
