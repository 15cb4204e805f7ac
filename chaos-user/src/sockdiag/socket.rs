//! The NETLINK_SOCK_DIAG socket: one request at a time, and its answers read to the end.

use std::{
    io,
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
};

use super::{
    SockDiagError, TcpSocket,
    netlink::{Reply, decode_socket, destroy_request, dump_request, replies},
};

/// The kernel sends a dump in datagrams of at most 32 KiB; twice that leaves room.
const RECV_BUF_LEN: usize = 64 * 1024;

fn family_name(family: u8) -> &'static str {
    if i32::from(family) == libc::AF_INET {
        "IPv4"
    } else {
        "IPv6"
    }
}

/// A NETLINK_SOCK_DIAG socket, talking to the kernel one request at a time.
pub(super) struct DiagSocket {
    fd: OwnedFd,
    seq: u32,
    buf: Vec<u8>,
}

impl DiagSocket {
    pub(super) fn open() -> Result<DiagSocket, SockDiagError> {
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
    pub(super) fn dump(
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
    pub(super) fn destroy(&mut self, socket: &TcpSocket) -> Result<bool, SockDiagError> {
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
