//! The responder's handle: what it is given, binding its sockets, its thread, and what it
//! reports.

use std::{
    fmt, io,
    net::{SocketAddr, TcpListener as StdTcpListener, UdpSocket as StdUdpSocket},
    sync::Arc,
    thread::JoinHandle,
};

use serde::Serialize;
use tokio::{
    net::{TcpListener, UdpSocket},
    sync::oneshot,
};

use super::{DnsError, DnsRule, decision::State, serve::serve};

/// Tries at binding every address on one port chosen by the kernel, when another process takes
/// that port for the other protocol in between.
const BIND_TRIES: usize = 16;

/// The protocol a query came over.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Transport {
    /// UDP datagrams, one message each.
    Udp,
    /// A TCP stream of messages, each after its 2-byte length.
    Tcp,
}

impl fmt::Display for Transport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Transport::Udp => "UDP",
            Transport::Tcp => "TCP",
        })
    }
}

/// Where to forward a query that no rule takes: given the protocol and the client's address as
/// the responder sees it, the address of the resolver the client asked. `None` answers SERVFAIL.
///
/// It is called on the responder's thread, for every forwarded UDP query and for the first
/// forwarded query of each TCP connection, so it must not block for long.
pub type Upstream = Arc<dyn Fn(Transport, SocketAddr) -> Option<SocketAddr> + Send + Sync>;

/// What one rule did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct RuleCounters {
    /// Queries whose name and flow matched the rule (and no earlier rule).
    pub matched: u64,
    /// Matched queries that got the rule's answer.
    pub injected: u64,
    /// Matched queries whose draw failed, forwarded to the resolver.
    pub passed: u64,
}

/// What the responder did, since it started.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct DnsCounters {
    /// One entry per rule, in the order the rules were given.
    pub rules: Vec<RuleCounters>,
    /// Queries no rule matched, forwarded to the resolver.
    pub unmatched: u64,
    /// Messages that were not a parsable query: answered FORMERR when their header reads as a
    /// query's, dropped otherwise (responses included, so that two servers cannot loop).
    pub malformed: u64,
    /// Forwarded queries the resolver did not answer: no resolver known, an error (answered
    /// SERVFAIL), or silence past the timeout (left unanswered, as the resolver left it).
    pub upstream_failed: u64,
}

/// The `dns` fault's responder, serving until [`Responder::stop`] or drop.
pub struct Responder {
    addrs: Vec<SocketAddr>,
    state: Arc<State>,
    stop: Option<oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl Responder {
    /// Binds UDP and TCP on each of `binds` and serves on a thread of its own.
    ///
    /// Both protocols of one address share a port. A bind with port 0 gets the port the first
    /// bind got (chosen by the kernel when that one asks for port 0 too), so that `127.0.0.1:0`
    /// and `[::1]:0` end on one port number.
    pub fn start(
        binds: &[SocketAddr],
        rules: Vec<DnsRule>,
        upstream: Upstream,
    ) -> Result<Responder, DnsError> {
        if binds.is_empty() {
            return Err(DnsError::NoAddress);
        }
        for rule in &rules {
            for (key, value) in [("p", rule.p), ("flows", rule.flows)] {
                if !(0.0..=1.0).contains(&value) {
                    let name = rule.name.clone();
                    return Err(DnsError::BadFraction { name, key, value });
                }
            }
        }
        let sockets = bind_all(binds)?;
        let addrs = sockets
            .iter()
            .map(|(udp, _)| udp.local_addr())
            .collect::<Result<_, _>>();
        let addrs = addrs.map_err(DnsError::Runtime)?;

        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(DnsError::Runtime)?;
        let sockets = {
            let _entered = runtime.enter();
            let mut registered = Vec::with_capacity(sockets.len());
            for (udp, tcp) in sockets {
                let udp = UdpSocket::from_std(udp).map_err(DnsError::Runtime)?;
                let tcp = TcpListener::from_std(tcp).map_err(DnsError::Runtime)?;
                registered.push((udp, tcp));
            }
            registered
        };

        let state = Arc::new(State::new(rules, upstream));
        let (stop, stopped) = oneshot::channel();
        let serving = Arc::clone(&state);
        let thread = std::thread::Builder::new()
            .name("chaos-dns".into())
            .spawn(move || runtime.block_on(serve(serving, sockets, stopped)))
            .map_err(DnsError::Thread)?;
        log::info!("dns responder listening on {addrs:?}");
        Ok(Responder {
            addrs,
            state,
            stop: Some(stop),
            thread: Some(thread),
        })
    }

    /// The addresses the responder listens on, UDP and TCP alike, in the order of the binds.
    pub fn local_addrs(&self) -> Vec<SocketAddr> {
        self.addrs.clone()
    }

    /// The port of the first address: that of every address whose bind asked for port 0.
    pub fn port(&self) -> u16 {
        self.addrs[0].port()
    }

    /// What the responder did so far.
    pub fn counters(&self) -> DnsCounters {
        self.state.counters()
    }

    /// Stops serving, closes the sockets and joins the thread; dropping the responder does the
    /// same.
    pub fn stop(mut self) {
        self.shutdown();
    }

    fn shutdown(&mut self) {
        // Dropping the sender wakes the serving thread, which drops its runtime and with it every
        // task and socket.
        drop(self.stop.take());
        if let Some(thread) = self.thread.take() {
            if thread.join().is_err() {
                log::error!("the dns responder's thread panicked");
            }
        }
    }
}

impl Drop for Responder {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// Binds every address, retrying on a fresh port when a port chosen by the kernel for one
/// protocol is taken for another.
fn bind_all(binds: &[SocketAddr]) -> Result<Vec<(StdUdpSocket, StdTcpListener)>, DnsError> {
    let kernel_chooses = binds.iter().any(|b| b.port() == 0);
    let mut tries = 0;
    loop {
        tries += 1;
        match bind_once(binds) {
            Err(DnsError::Bind { source, .. })
                if kernel_chooses
                    && tries < BIND_TRIES
                    && source.kind() == io::ErrorKind::AddrInUse => {}
            result => return result,
        }
    }
}

fn bind_once(binds: &[SocketAddr]) -> Result<Vec<(StdUdpSocket, StdTcpListener)>, DnsError> {
    let mut shared_port = None;
    let mut sockets = Vec::with_capacity(binds.len());
    for &bind in binds {
        let mut addr = bind;
        if let (0, Some(port)) = (addr.port(), shared_port) {
            addr.set_port(port);
        }
        let udp = StdUdpSocket::bind(addr).map_err(bind_error(Transport::Udp, addr))?;
        addr = udp.local_addr().map_err(bind_error(Transport::Udp, addr))?;
        let tcp = StdTcpListener::bind(addr).map_err(bind_error(Transport::Tcp, addr))?;
        udp.set_nonblocking(true)
            .map_err(bind_error(Transport::Udp, addr))?;
        tcp.set_nonblocking(true)
            .map_err(bind_error(Transport::Tcp, addr))?;
        shared_port.get_or_insert(addr.port());
        sockets.push((udp, tcp));
    }
    Ok(sockets)
}

fn bind_error(transport: Transport, addr: SocketAddr) -> impl FnOnce(io::Error) -> DnsError {
    move |source| DnsError::Bind {
        transport,
        addr,
        source,
    }
}
