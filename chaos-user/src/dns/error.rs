//! Why a dns rule or the responder cannot be used, and how the CLI classes it.

use std::{io, net::SocketAddr};

use super::Transport;
use crate::error::{Class, Classify};

/// Why a dns rule or the responder cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum DnsError {
    /// `answer=` names nothing the fault can answer.
    #[error(
        "`{text}` is not a DNS answer; give nxdomain, servfail, refused, timeout, or an IPv4 or \
         IPv6 address"
    )]
    BadAnswer {
        /// The text given.
        text: String,
    },
    /// A rule's probability or share of flows is not a fraction.
    #[error(
        "the dns rule for `{name}` has {key}={value}; give a fraction from 0 to 1, such as \
         {key}=0.2"
    )]
    BadFraction {
        /// The rule's glob.
        name: String,
        /// `p` or `flows`.
        key: &'static str,
        /// The value given.
        value: f64,
    },
    /// No address to listen on.
    #[error("the DNS responder was given no address to listen on; give one, such as 127.0.0.1:0")]
    NoAddress,
    /// A socket could not be bound.
    #[error(
        "bind the DNS responder's {transport} socket to {addr} (free that port, or give port 0 \
         to let the kernel choose one)"
    )]
    Bind {
        /// The protocol of the socket.
        transport: Transport,
        /// The address asked for.
        addr: SocketAddr,
        /// What the kernel said.
        #[source]
        source: io::Error,
    },
    /// The runtime, or a socket's registration with it, failed.
    #[error("start the DNS responder's event loop (raise the open files limit, ulimit -n)")]
    Runtime(#[source] io::Error),
    /// The serving thread could not be started.
    #[error("start the DNS responder's thread (raise the limit on processes, ulimit -u)")]
    Thread(#[source] io::Error),
}

impl Classify for DnsError {
    fn class(&self) -> Class {
        match self {
            DnsError::BadAnswer { .. } | DnsError::BadFraction { .. } | DnsError::NoAddress => {
                Class::BadInput
            }
            DnsError::Bind { .. } | DnsError::Runtime(_) | DnsError::Thread(_) => {
                Class::Environment
            }
        }
    }
}
