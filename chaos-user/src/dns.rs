//! The `dns` fault's responder: a small DNS server on loopback that answers the target's queries.
//!
//! The kernel side redirects the target's UDP and TCP traffic to port 53 to this responder and
//! makes its replies appear to come from the resolver the target asked. Here, a query whose name
//! matches a rule's glob, and whose draw succeeds, gets the rule's answer: an error rcode, a
//! spoofed address, or silence. Every other query goes to the real resolver unchanged, and its
//! reply comes back byte for byte.
//!
//! The responder serves on one thread of its own, with a tokio runtime of its own, so that it
//! never waits on the session's runtime. Messages are parsed and built with `hickory-proto`.

use std::{
    fmt,
    hash::{DefaultHasher, Hash, Hasher},
    io,
    net::{
        IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener as StdTcpListener,
        UdpSocket as StdUdpSocket,
    },
    panic::{self, AssertUnwindSafe},
    str::FromStr,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    thread::JoinHandle,
    time::Duration,
};

use hickory_proto::{
    op::{Edns, Header, Message, MessageType, OpCode, ResponseCode},
    rr::{
        DNSClass, RData, Record, RecordType,
        rdata::{A, AAAA},
    },
    serialize::binary::{BinDecodable, BinDecoder},
};
use serde::Serialize;
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream, UdpSocket},
    sync::{Semaphore, oneshot},
    time::timeout,
};

use crate::error::{Class, Classify};

/// How long a forwarded query waits for the real resolver, over UDP or TCP (connect included).
const UPSTREAM_TIMEOUT: Duration = Duration::from_secs(4);
/// How long a client's TCP connection may sit without sending a whole query, or without reading
/// its reply, before the responder closes it.
const TCP_IDLE: Duration = Duration::from_secs(10);
/// Forwarded UDP queries waiting on the resolver at once; past this, new ones are dropped (the
/// client retries) so that a flood cannot exhaust memory or ports.
const MAX_UDP_IN_FLIGHT: usize = 1024;
/// Client TCP connections served at once; past this, new ones are closed at once.
const MAX_TCP_CONNECTIONS: usize = 256;
/// The TTL of a spoofed record: zero, so that no cache keeps the fault past the session.
const SPOOF_TTL: u32 = 0;
/// The UDP payload size this responder announces in its own EDNS records.
const EDNS_PAYLOAD: u16 = 1232;
/// Tries at binding every address on one port chosen by the kernel, when another process takes
/// that port for the other protocol in between.
const BIND_TRIES: usize = 16;

/// What a rule answers to a query it takes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Answer {
    /// `nxdomain`: the name does not exist.
    NxDomain,
    /// `servfail`: the resolver failed.
    ServFail,
    /// `refused`: the resolver refuses to answer.
    Refused,
    /// `timeout`: no answer at all.
    Timeout,
    /// An address: an A record (IPv4) or AAAA record (IPv6) to a query of that type, and an empty
    /// answer to other query types for the name.
    Addr(IpAddr),
}

impl FromStr for Answer {
    type Err = DnsError;

    fn from_str(text: &str) -> Result<Self, DnsError> {
        match text.to_ascii_lowercase().as_str() {
            "nxdomain" => Ok(Answer::NxDomain),
            "servfail" => Ok(Answer::ServFail),
            "refused" => Ok(Answer::Refused),
            "timeout" => Ok(Answer::Timeout),
            _ => text
                .parse()
                .map(Answer::Addr)
                .map_err(|_| DnsError::BadAnswer {
                    text: text.to_owned(),
                }),
        }
    }
}

impl fmt::Display for Answer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Answer::NxDomain => f.write_str("nxdomain"),
            Answer::ServFail => f.write_str("servfail"),
            Answer::Refused => f.write_str("refused"),
            Answer::Timeout => f.write_str("timeout"),
            Answer::Addr(addr) => write!(f, "{addr}"),
        }
    }
}

/// One rule of the `dns` fault.
#[derive(Clone, Debug, PartialEq)]
pub struct DnsRule {
    /// A glob over query names, matched by [`glob_matches`].
    pub name: String,
    /// What a query the rule takes gets.
    pub answer: Answer,
    /// The probability, from 0 to 1, that a matching query gets the answer; otherwise it is
    /// forwarded.
    pub p: f64,
    /// The stable share of flows, from 0 to 1, that the rule applies to; 1 for all. A flow is a
    /// client socket (its address and port, for each protocol): every query of a flow is in the
    /// share or none is, for the life of the responder. A query of a flow outside the share does
    /// not match the rule, and goes on to the next rule.
    pub flows: f64,
}

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

/// Whether `name` matches `glob`, ignoring ASCII case and one trailing dot on either side.
///
/// `*` matches any run of characters, dots included, and the empty run: `*.example.com` matches
/// `a.b.example.com` but not `example.com`. Every other character matches itself. Names are
/// compared as they travel, so an internationalized name matches by its `xn--` form.
pub fn glob_matches(glob: &str, name: &str) -> bool {
    let glob = glob.strip_suffix('.').unwrap_or(glob).as_bytes();
    let name = name.strip_suffix('.').unwrap_or(name).as_bytes();
    let (mut g, mut n) = (0, 0);
    // After the last `*` seen: where the glob resumes, and where in the name that `*` stops.
    let mut star: Option<(usize, usize)> = None;
    while n < name.len() {
        if glob.get(g) == Some(&b'*') {
            g += 1;
            star = Some((g, n));
        } else if glob
            .get(g)
            .is_some_and(|c| c.eq_ignore_ascii_case(&name[n]))
        {
            g += 1;
            n += 1;
        } else if let Some((resume, end)) = star {
            // Let the last `*` take one more character, and try the rest of the glob again.
            g = resume;
            n = end + 1;
            star = Some((resume, n));
        } else {
            return false;
        }
    }
    glob[g..].iter().all(|&c| c == b'*')
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

/// The counters of one rule, as the serving tasks add to them.
#[derive(Default)]
struct RuleCounts {
    matched: AtomicU64,
    injected: AtomicU64,
    passed: AtomicU64,
}

/// What the serving tasks share with the [`Responder`].
struct State {
    rules: Vec<(DnsRule, RuleCounts)>,
    upstream: Upstream,
    unmatched: AtomicU64,
    malformed: AtomicU64,
    upstream_failed: AtomicU64,
    /// Mixed into the hash of a flow, so that each responder picks its own share of flows.
    salt: u64,
}

/// Where a message came from: the client's address as the responder sees it, and the protocol.
#[derive(Clone, Copy, Debug, Hash)]
struct Flow {
    client: SocketAddr,
    transport: Transport,
}

/// What to do with one message from a client.
#[derive(Debug)]
enum Decision {
    /// Send these bytes back.
    Reply(Vec<u8>),
    /// Send nothing.
    Silence,
    /// Ask the resolver; the parsed query is kept to build a SERVFAIL if that fails.
    Forward(Box<Message>),
}

impl State {
    fn new(rules: Vec<DnsRule>, upstream: Upstream) -> State {
        State {
            rules: rules
                .into_iter()
                .map(|rule| (rule, RuleCounts::default()))
                .collect(),
            upstream,
            unmatched: AtomicU64::default(),
            malformed: AtomicU64::default(),
            upstream_failed: AtomicU64::default(),
            salt: fastrand::u64(..),
        }
    }

    fn counters(&self) -> DnsCounters {
        let load = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
        DnsCounters {
            rules: (self.rules.iter())
                .map(|(_, counts)| RuleCounters {
                    matched: load(&counts.matched),
                    injected: load(&counts.injected),
                    passed: load(&counts.passed),
                })
                .collect(),
            unmatched: load(&self.unmatched),
            malformed: load(&self.malformed),
            upstream_failed: load(&self.upstream_failed),
        }
    }

    /// Decides for one message; a panic in the parser counts as a malformed message, so that no
    /// input can stop a serving task.
    fn decide(&self, bytes: &[u8], flow: Flow) -> Decision {
        let decide = AssertUnwindSafe(|| self.decide_inner(bytes, flow));
        panic::catch_unwind(decide).unwrap_or_else(|_| {
            self.malformed.fetch_add(1, Ordering::Relaxed);
            Decision::Silence
        })
    }

    fn decide_inner(&self, bytes: &[u8], flow: Flow) -> Decision {
        let query = match Message::from_vec(bytes) {
            Ok(query) if query.message_type() == MessageType::Query => query,
            // A response sent to a server is never answered, so that two servers cannot loop.
            Ok(_) => {
                self.malformed.fetch_add(1, Ordering::Relaxed);
                return Decision::Silence;
            }
            Err(err) => {
                self.malformed.fetch_add(1, Ordering::Relaxed);
                log::debug!("dns: malformed query of {} bytes: {err}", bytes.len());
                return formerr(bytes).map_or(Decision::Silence, Decision::Reply);
            }
        };
        let name = match (query.op_code(), query.queries()) {
            (OpCode::Query, [question]) => question.name().to_ascii(),
            _ => return self.forward_unmatched(query),
        };
        let matches =
            |rule: &DnsRule| glob_matches(&rule.name, &name) && self.in_share(flow, rule.flows);
        let Some((rule, counts)) = self.rules.iter().find(|(rule, _)| matches(rule)) else {
            return self.forward_unmatched(query);
        };

        counts.matched.fetch_add(1, Ordering::Relaxed);
        if !draw(rule.p) {
            counts.passed.fetch_add(1, Ordering::Relaxed);
            return Decision::Forward(Box::new(query));
        }
        counts.injected.fetch_add(1, Ordering::Relaxed);
        log::debug!("dns: {name} gets {} (rule `{}`)", rule.answer, rule.name);
        let reply = match rule.answer {
            Answer::Timeout => return Decision::Silence,
            Answer::NxDomain => reply(&query, ResponseCode::NXDomain, None),
            Answer::ServFail => reply(&query, ResponseCode::ServFail, None),
            Answer::Refused => reply(&query, ResponseCode::Refused, None),
            Answer::Addr(addr) => reply(&query, ResponseCode::NoError, spoofed(&query, addr)),
        };
        reply.map_or(Decision::Silence, Decision::Reply)
    }

    /// Whether `flow` is in a share `flows` of all flows: a stable point of the flow's hash in
    /// [0, 1) below `flows`.
    fn in_share(&self, flow: Flow, flows: f64) -> bool {
        if flows >= 1.0 {
            return true;
        }
        let mut hasher = DefaultHasher::new();
        (self.salt, flow).hash(&mut hasher);
        // The top 53 bits, as a fraction: every value is exact in an f64.
        let point = (hasher.finish() >> 11) as f64 / (1_u64 << 53) as f64;
        point < flows
    }

    fn forward_unmatched(&self, query: Message) -> Decision {
        self.unmatched.fetch_add(1, Ordering::Relaxed);
        Decision::Forward(Box::new(query))
    }

    /// What goes back to the client of a forwarded query, given what the resolver did: its
    /// reply, silence for silence, and SERVFAIL for an error.
    fn forwarded(&self, query: &Message, outcome: io::Result<Option<Vec<u8>>>) -> Option<Vec<u8>> {
        match outcome {
            Ok(Some(reply)) => Some(reply),
            Ok(None) => {
                self.upstream_failed.fetch_add(1, Ordering::Relaxed);
                log::debug!(
                    "dns: query {}: the resolver did not answer in time",
                    query.id()
                );
                None
            }
            Err(err) => {
                self.upstream_failed.fetch_add(1, Ordering::Relaxed);
                log::debug!("dns: query {}: forwarding failed: {err}", query.id());
                reply(query, ResponseCode::ServFail, None)
            }
        }
    }
}

/// Whether an injection happens, with probability `p`.
fn draw(p: f64) -> bool {
    // fastrand's f64 lies in [0, 1): p = 0 never injects and p = 1 always does.
    fastrand::f64() < p
}

/// The spoofed record for a query of the address's type in class IN; none for any other query.
fn spoofed(query: &Message, addr: IpAddr) -> Option<Record> {
    let question = query.queries().first()?;
    let rdata = match (question.query_type(), addr) {
        (RecordType::A, IpAddr::V4(v4)) => RData::A(A(v4)),
        (RecordType::AAAA, IpAddr::V6(v6)) => RData::AAAA(AAAA(v6)),
        _ => return None,
    };
    if question.query_class() != DNSClass::IN {
        return None;
    }
    Some(Record::from_rdata(
        question.name().clone(),
        SPOOF_TTL,
        rdata,
    ))
}

/// A reply to `query` from a recursive resolver, with its question, `rcode` and `answer`.
fn reply(query: &Message, rcode: ResponseCode, answer: Option<Record>) -> Option<Vec<u8>> {
    let mut header = Header::response_from_request(query.header());
    header
        .set_recursion_available(true)
        .set_response_code(rcode);
    let mut message = Message::new();
    message
        .set_header(header)
        .add_queries(query.queries().iter().cloned());
    message.add_answers(answer);
    if query.extensions().is_some() {
        let mut edns = Edns::new();
        edns.set_max_payload(EDNS_PAYLOAD);
        message.set_edns(edns);
    }
    message
        .to_vec()
        .inspect_err(|err| log::warn!("dns: cannot encode a reply: {err}"))
        .ok()
}

/// FORMERR for a message whose header reads as a query; `None` for anything less.
fn formerr(bytes: &[u8]) -> Option<Vec<u8>> {
    let header = Header::read(&mut BinDecoder::new(bytes)).ok()?;
    if header.message_type() != MessageType::Query {
        return None;
    }
    let mut reply = Header::response_from_request(&header);
    reply
        .set_recursion_available(true)
        .set_response_code(ResponseCode::FormErr);
    let mut message = Message::new();
    message.set_header(reply);
    message.to_vec().ok()
}

/// The ID of a DNS message, from its first two bytes.
fn message_id(bytes: &[u8]) -> Option<u16> {
    Some(u16::from_be_bytes([*bytes.first()?, *bytes.get(1)?]))
}

/// Serves every socket until `stopped` fires or its sender is dropped.
async fn serve(
    state: Arc<State>,
    sockets: Vec<(UdpSocket, TcpListener)>,
    stopped: oneshot::Receiver<()>,
) {
    let in_flight = Arc::new(Semaphore::new(MAX_UDP_IN_FLIGHT));
    let connections = Arc::new(Semaphore::new(MAX_TCP_CONNECTIONS));
    for (udp, tcp) in sockets {
        tokio::spawn(serve_udp(
            Arc::clone(&state),
            Arc::new(udp),
            Arc::clone(&in_flight),
        ));
        tokio::spawn(serve_tcp(Arc::clone(&state), tcp, Arc::clone(&connections)));
    }
    // A stop message and a dropped sender both mean stop.
    stopped.await.unwrap_or_default();
}

/// Receives queries on one UDP socket.
async fn serve_udp(state: Arc<State>, socket: Arc<UdpSocket>, in_flight: Arc<Semaphore>) {
    let mut buf = vec![0; usize::from(u16::MAX)];
    loop {
        let (len, client) = match socket.recv_from(&mut buf).await {
            Ok(received) => received,
            Err(err) => {
                log::debug!("dns: receive on UDP: {err}");
                // Errors such as ENOMEM may repeat; do not spin on them.
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        let flow = Flow {
            client,
            transport: Transport::Udp,
        };
        let query = match state.decide(&buf[..len], flow) {
            Decision::Reply(reply) => {
                send_udp(&socket, &reply, client).await;
                continue;
            }
            Decision::Silence => continue,
            Decision::Forward(query) => query,
        };
        let Ok(permit) = Arc::clone(&in_flight).try_acquire_owned() else {
            log::debug!("dns: {MAX_UDP_IN_FLIGHT} UDP queries in flight; dropping one");
            continue;
        };
        let bytes = buf[..len].to_vec();
        let (state, socket) = (Arc::clone(&state), Arc::clone(&socket));
        tokio::spawn(async move {
            let outcome = match (state.upstream)(Transport::Udp, client) {
                Some(resolver) => forward_udp(&bytes, query.id(), resolver).await,
                None => Err(no_resolver()),
            };
            if let Some(reply) = state.forwarded(&query, outcome) {
                send_udp(&socket, &reply, client).await;
            }
            drop(permit);
        });
    }
}

async fn send_udp(socket: &UdpSocket, reply: &[u8], client: SocketAddr) {
    if let Err(err) = socket.send_to(reply, client).await {
        log::debug!("dns: reply over UDP to {client}: {err}");
    }
}

/// The resolver's reply to `query`, from a socket of its own; `None` when it stays silent.
async fn forward_udp(query: &[u8], id: u16, resolver: SocketAddr) -> io::Result<Option<Vec<u8>>> {
    let local: IpAddr = match resolver {
        SocketAddr::V4(_) => Ipv4Addr::UNSPECIFIED.into(),
        SocketAddr::V6(_) => Ipv6Addr::UNSPECIFIED.into(),
    };
    let socket = UdpSocket::bind((local, 0)).await?;
    socket.connect(resolver).await?;
    socket.send(query).await?;
    let mut buf = vec![0; usize::from(u16::MAX)];
    let exchange = async {
        loop {
            let len = socket.recv(&mut buf).await?;
            // A stray datagram with another ID is not the answer; keep waiting.
            if message_id(&buf[..len]) == Some(id) {
                return Ok::<_, io::Error>(buf[..len].to_vec());
            }
        }
    };
    match timeout(UPSTREAM_TIMEOUT, exchange).await {
        Ok(reply) => reply.map(Some),
        Err(_elapsed) => Ok(None),
    }
}

/// Accepts TCP connections on one listener.
async fn serve_tcp(state: Arc<State>, listener: TcpListener, connections: Arc<Semaphore>) {
    loop {
        let (stream, client) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(err) => {
                log::debug!("dns: accept on TCP: {err}");
                // EMFILE and the like repeat until a connection closes; do not spin on them.
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        let Ok(permit) = Arc::clone(&connections).try_acquire_owned() else {
            log::debug!(
                "dns: {MAX_TCP_CONNECTIONS} TCP connections open; closing one from {client}"
            );
            continue;
        };
        let state = Arc::clone(&state);
        tokio::spawn(async move {
            if let Err(err) = serve_connection(&state, stream, client).await {
                log::debug!("dns: TCP connection from {client}: {err}");
            }
            drop(permit);
        });
    }
}

/// Answers the queries of one TCP connection in turn, until the client closes it or idles.
async fn serve_connection(
    state: &State,
    mut stream: TcpStream,
    client: SocketAddr,
) -> io::Result<()> {
    let mut upstream = TcpUpstream {
        client,
        resolver: None,
        conn: None,
    };
    loop {
        let query = match timeout(TCP_IDLE, read_frame(&mut stream)).await {
            Ok(Ok(query)) => query,
            Ok(Err(err)) if err.kind() == io::ErrorKind::UnexpectedEof => return Ok(()),
            Ok(Err(err)) => return Err(err),
            Err(_elapsed) => return Ok(()),
        };
        let flow = Flow {
            client,
            transport: Transport::Tcp,
        };
        let reply = match state.decide(&query, flow) {
            Decision::Reply(reply) => Some(reply),
            Decision::Silence => None,
            Decision::Forward(parsed) => {
                let outcome = upstream
                    .exchange(&state.upstream, &query, parsed.id())
                    .await;
                state.forwarded(&parsed, outcome)
            }
        };
        if let Some(reply) = reply {
            timeout(TCP_IDLE, write_frame(&mut stream, &reply))
                .await
                .map_err(|_elapsed| io::Error::from(io::ErrorKind::TimedOut))??;
        }
    }
}

/// The resolver of one client TCP connection, and a connection to it once one is needed.
struct TcpUpstream {
    client: SocketAddr,
    /// Asked of the [`Upstream`] at the first query to forward, then kept.
    resolver: Option<SocketAddr>,
    conn: Option<TcpStream>,
}

impl TcpUpstream {
    /// The resolver's reply to `query`, or `None` if it stays silent past the timeout.
    async fn exchange(
        &mut self,
        upstream: &Upstream,
        query: &[u8],
        id: u16,
    ) -> io::Result<Option<Vec<u8>>> {
        let resolver = (self.resolver)
            .or_else(|| upstream(Transport::Tcp, self.client))
            .ok_or_else(no_resolver)?;
        self.resolver = Some(resolver);
        if let Some(conn) = self.conn.as_mut() {
            match timeout(UPSTREAM_TIMEOUT, ask(conn, query, id)).await {
                Ok(Ok(reply)) => return Ok(Some(reply)),
                // The resolver may have closed the kept connection while it was idle: try once
                // more on a fresh one, which tells that apart from a resolver that fails.
                Ok(Err(err)) => log::debug!("dns: kept TCP connection to {resolver}: {err}"),
                Err(_elapsed) => {
                    self.conn = None;
                    return Ok(None);
                }
            }
            self.conn = None;
        }

        let fresh = timeout(UPSTREAM_TIMEOUT, async {
            let mut conn = TcpStream::connect(resolver).await?;
            let reply = ask(&mut conn, query, id).await?;
            Ok::<_, io::Error>((conn, reply))
        });
        match fresh.await {
            Ok(Ok((conn, reply))) => {
                self.conn = Some(conn);
                Ok(Some(reply))
            }
            Ok(Err(err)) => Err(err),
            Err(_elapsed) => Ok(None),
        }
    }
}

/// Sends `query` on a connection to the resolver and reads until the reply with its ID.
async fn ask(conn: &mut TcpStream, query: &[u8], id: u16) -> io::Result<Vec<u8>> {
    write_frame(conn, query).await?;
    loop {
        let reply = read_frame(conn).await?;
        if message_id(&reply) == Some(id) {
            return Ok(reply);
        }
    }
}

fn no_resolver() -> io::Error {
    io::Error::new(
        io::ErrorKind::NotFound,
        "no resolver is known for this client",
    )
}

/// One length-prefixed DNS message from a TCP stream.
async fn read_frame(stream: &mut TcpStream) -> io::Result<Vec<u8>> {
    let len = stream.read_u16().await?;
    let mut message = vec![0; usize::from(len)];
    stream.read_exact(&mut message).await?;
    Ok(message)
}

/// One DNS message onto a TCP stream, after its length, in one write.
async fn write_frame(stream: &mut TcpStream, message: &[u8]) -> io::Result<()> {
    let len = u16::try_from(message.len())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "DNS message over 65535 bytes"))?;
    let mut frame = Vec::with_capacity(2 + message.len());
    frame.extend_from_slice(&len.to_be_bytes());
    frame.extend_from_slice(message);
    stream.write_all(&frame).await
}

#[cfg(test)]
mod tests {
    use hickory_proto::{op::Query, rr::Name};

    use super::*;

    fn query(id: u16, name: &str, kind: RecordType) -> Message {
        let mut message = Message::new();
        let name = Name::from_ascii(name).expect("a valid test name");
        message
            .set_id(id)
            .set_recursion_desired(true)
            .add_query(Query::query(name, kind));
        message
    }

    fn flow(port: u16, transport: Transport) -> Flow {
        Flow {
            client: SocketAddr::from((Ipv4Addr::LOCALHOST, port)),
            transport,
        }
    }

    const CLIENT: Flow = Flow {
        client: SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 40000),
        transport: Transport::Udp,
    };

    fn state(rules: &[(&str, &str, f64)]) -> State {
        let rules = (rules.iter())
            .map(|&(name, answer, p)| DnsRule {
                name: name.into(),
                answer: answer.parse().expect("a valid test answer"),
                p,
                flows: 1.0,
            })
            .collect();
        State::new(rules, Arc::new(|_, _| None))
    }

    /// The reply `state` sends to `query`, parsed; panics on anything but a reply.
    fn answer(state: &State, query: &Message) -> Message {
        match state.decide(&query.to_vec().expect("encode the test query"), CLIENT) {
            Decision::Reply(bytes) => Message::from_vec(&bytes).expect("a parsable reply"),
            other => panic!("expected a reply, got {other:?}"),
        }
    }

    #[test]
    fn glob_matching() {
        let cases = [
            ("*.example.com", "a.example.com", true),
            ("*.example.com", "a.b.example.com.", true),
            ("*.example.com", "example.com", false),
            ("*.example.com", "badexample.com", false),
            ("example.com", "EXAMPLE.com.", true),
            ("Example.COM.", "example.com", true),
            ("example.com", "www.example.com", false),
            ("example.com", "example.com.evil", false),
            ("*", "any.name.at.all", true),
            ("*", ".", true),
            ("", ".", true),
            ("", "a", false),
            ("a*b*c", "axxbyyc", true),
            ("a*b*c", "axxbyy", false),
            ("*abc", "ababc", true),
            ("*.a.*.b", "x.a.y.z.b", true),
            ("*.a.*.b", "x.a.b", false),
            ("api-*.svc", "api-7.svc", true),
            ("api-*.svc", "web-7.svc", false),
            ("**", "", true),
        ];
        for (glob, name, expected) in cases {
            assert_eq!(
                glob_matches(glob, name),
                expected,
                "glob `{glob}` on `{name}`"
            );
        }
    }

    #[test]
    fn answers_parse_from_text() {
        assert_eq!("nxdomain".parse::<Answer>().unwrap(), Answer::NxDomain);
        assert_eq!("SERVFAIL".parse::<Answer>().unwrap(), Answer::ServFail);
        assert_eq!("refused".parse::<Answer>().unwrap(), Answer::Refused);
        assert_eq!("timeout".parse::<Answer>().unwrap(), Answer::Timeout);
        let v4: Answer = "192.0.2.1".parse().unwrap();
        assert_eq!(v4, Answer::Addr(Ipv4Addr::new(192, 0, 2, 1).into()));
        assert_eq!(v4.to_string(), "192.0.2.1");
        let v6: Answer = "2001:db8::1".parse().unwrap();
        assert_eq!(v6, Answer::Addr("2001:db8::1".parse().unwrap()));

        let err = "nxdomian".parse::<Answer>().unwrap_err();
        assert!(matches!(&err, DnsError::BadAnswer { text } if text == "nxdomian"));
        assert!(
            err.to_string()
                .contains("give nxdomain, servfail, refused, timeout")
        );
    }

    #[test]
    fn rcodes_and_spoofed_addresses() {
        let state = state(&[
            ("*.fail.test", "nxdomain", 1.0),
            ("*.test", "refused", 1.0),
            ("v4.example", "198.51.100.9", 1.0),
            ("v6.example", "2001:db8::9", 1.0),
        ]);

        let reply = answer(&state, &query(7, "x.fail.test.", RecordType::A));
        assert_eq!(reply.id(), 7);
        assert_eq!(reply.message_type(), MessageType::Response);
        assert_eq!(reply.response_code(), ResponseCode::NXDomain);
        assert!(reply.recursion_desired() && reply.recursion_available());
        assert_eq!(
            reply.queries(),
            query(7, "x.fail.test.", RecordType::A).queries()
        );
        assert!(reply.answers().is_empty());
        // The first rule that matches decides, even when a later one matches too.
        let reply = answer(&state, &query(8, "y.test.", RecordType::A));
        assert_eq!(reply.response_code(), ResponseCode::Refused);

        let reply = answer(&state, &query(9, "V4.Example.", RecordType::A));
        assert_eq!(reply.response_code(), ResponseCode::NoError);
        let [record] = reply.answers() else {
            panic!("one answer expected: {reply}")
        };
        assert_eq!(record.data(), &RData::A(A::new(198, 51, 100, 9)));
        assert_eq!(record.ttl(), SPOOF_TTL);
        let reply = answer(&state, &query(10, "v6.example.", RecordType::AAAA));
        let [record] = reply.answers() else {
            panic!("one answer expected: {reply}")
        };
        assert_eq!(
            record.data(),
            &RData::AAAA(AAAA("2001:db8::9".parse().unwrap()))
        );
        // Another type than the address's, for the same name: an empty NOERROR answer.
        for kind in [RecordType::AAAA, RecordType::MX, RecordType::TXT] {
            let reply = answer(&state, &query(11, "v4.example.", kind));
            assert_eq!(reply.response_code(), ResponseCode::NoError);
            assert!(reply.answers().is_empty(), "{kind}: {reply}");
        }

        let counters = state.counters();
        let injected = |n| RuleCounters {
            matched: n,
            injected: n,
            passed: 0,
        };
        assert_eq!(
            counters.rules,
            [injected(1), injected(1), injected(4), injected(1)]
        );
        assert_eq!((counters.unmatched, counters.malformed), (0, 0));
    }

    #[test]
    fn edns_in_the_query_gets_edns_in_the_reply() {
        let state = state(&[("a.test", "servfail", 1.0)]);
        let mut with_edns = query(1, "a.test.", RecordType::A);
        with_edns.set_edns(Edns::new());
        assert!(answer(&state, &with_edns).extensions().is_some());
        assert!(
            answer(&state, &query(2, "a.test.", RecordType::A))
                .extensions()
                .is_none()
        );
    }

    #[test]
    fn timeout_unmatched_and_failed_draws() {
        let state = state(&[
            ("slow.test", "timeout", 1.0),
            ("never.test", "nxdomain", 0.0),
        ]);
        let decide = |name| state.decide(&query(1, name, RecordType::A).to_vec().unwrap(), CLIENT);

        assert!(matches!(decide("slow.test."), Decision::Silence));
        for _ in 0..50 {
            assert!(matches!(decide("never.test."), Decision::Forward(_)));
        }
        assert!(matches!(decide("other.test."), Decision::Forward(_)));

        let counters = state.counters();
        let slow = RuleCounters {
            matched: 1,
            injected: 1,
            passed: 0,
        };
        let never = RuleCounters {
            matched: 50,
            injected: 0,
            passed: 50,
        };
        assert_eq!(counters.rules, [slow, never]);
        assert_eq!(counters.unmatched, 1);
    }

    #[test]
    fn malformed_messages_get_formerr_or_nothing() {
        let state = state(&[("*", "nxdomain", 1.0)]);

        // A header that promises a question the message does not carry.
        let header_only = [0x12, 0x34, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0];
        let Decision::Reply(reply) = state.decide(&header_only, CLIENT) else {
            panic!("no FORMERR")
        };
        let reply = Message::from_vec(&reply).unwrap();
        assert_eq!(
            (reply.id(), reply.response_code()),
            (0x1234, ResponseCode::FormErr)
        );
        // Too short for a header, or a response: nothing, so that no two servers can loop.
        assert!(matches!(state.decide(&[], CLIENT), Decision::Silence));
        assert!(matches!(
            state.decide(&[0xde, 0xad], CLIENT),
            Decision::Silence
        ));
        let mut response = query(3, "a.test.", RecordType::A);
        response.set_message_type(MessageType::Response);
        assert!(matches!(
            state.decide(&response.to_vec().unwrap(), CLIENT),
            Decision::Silence
        ));

        assert_eq!(state.counters().malformed, 4);
        assert_eq!(state.counters().rules[0].matched, 0);
    }

    #[test]
    fn random_and_mangled_bytes_never_panic() {
        let seed = fastrand::u64(..);
        eprintln!("seed {seed}");
        let mut rng = fastrand::Rng::with_seed(seed);
        let state = state(&[("*.test", "192.0.2.1", 0.5)]);
        let valid = query(5, "a.b.test.", RecordType::A).to_vec().unwrap();
        for _ in 0..20_000 {
            let bytes: Vec<u8> = if rng.bool() {
                (0..rng.usize(0..80)).map(|_| rng.u8(..)).collect()
            } else {
                let mut bytes = valid.clone();
                for _ in 0..rng.usize(1..4) {
                    let at = rng.usize(..bytes.len());
                    bytes[at] = rng.u8(..);
                }
                bytes.truncate(rng.usize(..=bytes.len()));
                bytes
            };
            // Straight to the parser, so that a panic fails the test rather than being counted.
            state.decide_inner(&bytes, CLIENT);
        }
    }

    #[test]
    fn start_refuses_bad_input() {
        let upstream: Upstream = Arc::new(|_, _| None);
        let bind = [SocketAddr::from((Ipv4Addr::LOCALHOST, 0))];
        let rule = |p, flows| DnsRule {
            name: "a.test".into(),
            answer: Answer::Refused,
            p,
            flows,
        };
        for (bad, key, value) in [(rule(1.5, 1.0), "p", 1.5), (rule(0.5, -0.1), "flows", -0.1)] {
            let err = Responder::start(&bind, vec![bad], Arc::clone(&upstream))
                .err()
                .unwrap();
            let DnsError::BadFraction {
                key: k, value: v, ..
            } = err
            else {
                panic!("{err}")
            };
            assert_eq!((k, v), (key, value));
        }
        let err = Responder::start(&[], Vec::new(), upstream).err().unwrap();
        assert!(matches!(err, DnsError::NoAddress), "{err}");
        assert_eq!(err.class(), Class::BadInput);
    }

    #[test]
    fn a_share_of_flows_is_stable_per_flow() {
        let rules = [
            ("*.test", "nxdomain", 1.0),
            ("*", "refused", 1.0),
            ("*", "servfail", 1.0),
        ];
        let mut state = state(&rules);
        state.rules[0].0.flows = 0.5;
        state.rules[1].0.flows = 0.0;
        let bytes = query(1, "a.test.", RecordType::A).to_vec().unwrap();
        // A flow outside the first rule's share goes on to the next rules: `flows=0` takes none,
        // and the last takes all.
        let in_share = |flow| match state.decide(&bytes, flow) {
            Decision::Reply(reply) => match Message::from_vec(&reply).unwrap().response_code() {
                ResponseCode::NXDomain => true,
                ResponseCode::ServFail => false,
                other => panic!("unexpected {other}"),
            },
            other => panic!("expected a reply, got {other:?}"),
        };

        let mut inside = 0;
        for port in 1000..3000 {
            for transport in [Transport::Udp, Transport::Tcp] {
                let first = in_share(flow(port, transport));
                assert_eq!(
                    in_share(flow(port, transport)),
                    first,
                    "port {port} {transport}"
                );
                inside += u64::from(first);
            }
        }
        // Binomial(4000, 0.5) leaves 1800..=2200 with a chance of about 1e-10.
        assert!(
            (1800..=2200).contains(&inside),
            "{inside} of 4000 flows in a share of 0.5"
        );
        let matched: Vec<u64> = state.counters().rules.iter().map(|r| r.matched).collect();
        assert_eq!(matched, [2 * inside, 0, 2 * (4000 - inside)]);
    }
}
