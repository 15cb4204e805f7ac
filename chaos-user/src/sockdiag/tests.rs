//! The unit tests of sock_diag: the filter programs against models of the kernel's audit and
//! run, the requests, the decoding of answers, and the socket filter.

use std::net::Ipv6Addr;

use ipnet::IpNet;

use super::{
    MAX_CGROUPS, SockDiagError, SocketFilter, TcpSocket, TcpState,
    bytecode::{COND_LEN, INET_DIAG_BC_CGROUP_COND, INET_DIAG_BC_JMP, OP_LEN, cgroup_bytecode},
    destroy_tcp, list_tcp,
    netlink::{
        INET_DIAG_CGROUP_ID, INET_DIAG_REQ_BYTECODE, NLA_HDRLEN, Reply, SOCK_DESTROY,
        SOCK_DIAG_BY_FAMILY, SOCKID_LEN, align4, decode_socket, destroy_request, dump_request,
        message, replies, u16_at, u32_at,
    },
};
use crate::spec::Ports;

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
        &[libc::AF_INET6 as u8, libc::IPPROTO_TCP as u8, 2, 0],
        "family, protocol, and INET_DIAG_INFO asked for"
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
    // struct tcp_info, 232 bytes on 6.x, with tcpi_total_retrans (offset 100) at 17.
    let mut info = vec![0u8; 232];
    info[100..104].copy_from_slice(&17u32.to_ne_bytes());
    payload.extend(attr(2, &info));
    let s = decode_socket(&payload).unwrap();
    assert_eq!(s.retransmits, Some(17));
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
        retransmits: None,
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
