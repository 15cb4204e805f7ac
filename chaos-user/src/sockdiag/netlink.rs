//! The netlink messages of sock_diag: the requests, the answers split into their messages, and
//! the sockets decoded from them.

use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};

use super::{SockDiagError, TcpSocket, TcpState, tcp::connected_mask};

// include/uapi/linux/sock_diag.h
pub(super) const SOCK_DIAG_BY_FAMILY: u16 = 20;
pub(super) const SOCK_DESTROY: u16 = 21;
// include/uapi/linux/inet_diag.h
pub(super) const INET_DIAG_REQ_BYTECODE: u16 = 1;
pub(super) const INET_DIAG_CGROUP_ID: u16 = 21;
/// The attribute with the socket's struct tcp_info, asked for with bit `1 << (2 - 1)` of `ext`.
const INET_DIAG_INFO: u16 = 2;
const EXT_INFO: u8 = 1 << (INET_DIAG_INFO - 1);
/// Where `tcpi_total_retrans` lies in struct tcp_info (include/uapi/linux/tcp.h): eight u8
/// fields, then 23 u32 before it.
const TCPI_TOTAL_RETRANS: usize = 8 + 23 * 4;

/// struct nlmsghdr, struct nlattr.
const NLMSG_HDRLEN: usize = 16;
pub(super) const NLA_HDRLEN: usize = 4;
/// struct inet_diag_sockid: ports, addresses, interface, cookie.
pub(super) const SOCKID_LEN: usize = 48;
/// struct inet_diag_req_v2: family, protocol, ext, pad, states, sockid.
const REQ_V2_LEN: usize = 8 + SOCKID_LEN;
/// struct inet_diag_msg: family, state, timer, retrans, sockid, then five u32.
const DIAG_MSG_LEN: usize = 4 + SOCKID_LEN + 20;
/// Attribute types carry two flag bits (nested, network byte order) above the type.
const NLA_TYPE_MASK: u16 = 0x3fff;

const _: () = assert!(REQ_V2_LEN == 56 && DIAG_MSG_LEN == 72);

/// A netlink message: struct nlmsghdr (the kernel fills in the port id) and the body.
pub(super) fn message(kind: u16, flags: u16, seq: u32, body: &[u8]) -> Vec<u8> {
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

/// A struct inet_diag_req_v2 for TCP in the connected states; `ext` asks for attributes.
fn req_v2(family: u8, ext: u8, id: &[u8; SOCKID_LEN]) -> Vec<u8> {
    let mut req = Vec::with_capacity(REQ_V2_LEN);
    req.extend_from_slice(&[family, libc::IPPROTO_TCP as u8, ext, 0]);
    req.extend_from_slice(&connected_mask().to_ne_bytes());
    req.extend_from_slice(id);
    req
}

pub(super) fn dump_request(seq: u32, family: u8, bytecode: &[u8]) -> Vec<u8> {
    let mut body = req_v2(family, EXT_INFO, &[0; SOCKID_LEN]);
    body.extend_from_slice(&((NLA_HDRLEN + bytecode.len()) as u16).to_ne_bytes());
    body.extend_from_slice(&INET_DIAG_REQ_BYTECODE.to_ne_bytes());
    body.extend_from_slice(bytecode);
    let flags = (libc::NLM_F_REQUEST | libc::NLM_F_DUMP) as u16;
    message(SOCK_DIAG_BY_FAMILY, flags, seq, &body)
}

pub(super) fn destroy_request(seq: u32, socket: &TcpSocket) -> Vec<u8> {
    let flags = (libc::NLM_F_REQUEST | libc::NLM_F_ACK) as u16;
    message(
        SOCK_DESTROY,
        flags,
        seq,
        &req_v2(socket.family, 0, &socket.id),
    )
}

/// A netlink message of an answer, as far as this module cares.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Reply<'a> {
    /// A socket of a dump: a struct inet_diag_msg and its attributes.
    Socket(&'a [u8]),
    /// The end of a dump, with the dump's status: 0, or a negative errno.
    Done(i32),
    /// An acknowledgement (0) or an error (a negative errno).
    Ack(i32),
}

/// The messages of one datagram that answer the request `seq`.
pub(super) fn replies(buf: &[u8], seq: u32) -> Result<Vec<Reply<'_>>, SockDiagError> {
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
pub(super) fn decode_socket(payload: &[u8]) -> Result<TcpSocket, SockDiagError> {
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
    let mut retransmits = None;
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
        if u16_at(attrs, 2) & NLA_TYPE_MASK == INET_DIAG_INFO
            && len >= NLA_HDRLEN + TCPI_TOTAL_RETRANS + 4
        {
            retransmits = Some(u32_at(&attrs[NLA_HDRLEN..], TCPI_TOTAL_RETRANS));
        }
        attrs = &attrs[align4(len).min(attrs.len())..];
    }

    Ok(TcpSocket {
        state,
        local,
        remote,
        cgroup_id,
        retransmits,
        inode: u32_at(payload, 68),
        uid: u32_at(payload, 64),
        family,
        id,
    })
}

pub(super) fn align4(len: usize) -> usize {
    (len + 3) & !3
}

pub(super) fn u16_at(buf: &[u8], at: usize) -> u16 {
    u16::from_ne_bytes([buf[at], buf[at + 1]])
}

pub(super) fn u32_at(buf: &[u8], at: usize) -> u32 {
    u32::from_ne_bytes(buf[at..at + 4].try_into().expect("4 bytes"))
}
