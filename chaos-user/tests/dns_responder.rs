//! The `dns` fault's responder, end to end on loopback: a fake resolver of the test's own stands
//! for the real one, and a client asks the responder over UDP and TCP.
//!
//! Every packet stays on loopback; no query goes to the machine's resolver.

use std::{
    io::{self, Read, Write},
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener, TcpStream, UdpSocket},
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    thread,
    time::Duration,
};

use chaos_user::dns::{Answer, DnsCounters, DnsRule, Responder, RuleCounters, Transport, Upstream};
use hickory_proto::{
    op::{Message, MessageType, Query, ResponseCode},
    rr::{Name, RData, Record, RecordType, rdata::A},
};

/// What the fake resolver answers to every A query.
const UPSTREAM_A: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 7);
/// A name the fake resolver answers with the TC bit set and no records, over UDP and TCP alike.
const TRUNCATED: &str = "big.test.";
/// How long a client waits for an answer that should come.
const ANSWER_WAIT: Duration = Duration::from_secs(5);
/// How long a client waits to be sure that no answer comes.
const SILENCE_WAIT: Duration = Duration::from_secs(1);

/// A DNS resolver on 127.0.0.1 that answers every A query with [`UPSTREAM_A`], and counts the
/// queries it got. Its threads live as long as the test process.
struct FakeResolver {
    udp: SocketAddr,
    tcp: SocketAddr,
    queries: Arc<AtomicU64>,
}

impl FakeResolver {
    fn start() -> FakeResolver {
        let udp = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind the fake resolver");
        let tcp = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind the fake resolver");
        let queries = Arc::new(AtomicU64::new(0));
        let resolver = FakeResolver {
            udp: udp.local_addr().unwrap(),
            tcp: tcp.local_addr().unwrap(),
            queries: Arc::clone(&queries),
        };

        let counted = Arc::clone(&queries);
        thread::spawn(move || {
            let mut buf = [0; 65535];
            while let Ok((len, client)) = udp.recv_from(&mut buf) {
                counted.fetch_add(1, Ordering::Relaxed);
                if let Some(reply) = fake_answer(&buf[..len]) {
                    udp.send_to(&reply, client)
                        .expect("the fake resolver's reply");
                }
            }
        });
        thread::spawn(move || {
            for stream in tcp.incoming() {
                let mut stream = stream.expect("accept on the fake resolver");
                let counted = Arc::clone(&queries);
                thread::spawn(move || {
                    while let Ok(query) = read_frame(&mut stream) {
                        counted.fetch_add(1, Ordering::Relaxed);
                        if let Some(reply) = fake_answer(&query) {
                            write_frame(&mut stream, &reply).expect("the fake resolver's reply");
                        }
                    }
                });
            }
        });
        resolver
    }

    fn queries(&self) -> u64 {
        self.queries.load(Ordering::Relaxed)
    }

    /// An [`Upstream`] that sends every client to this resolver.
    fn upstream(&self) -> Upstream {
        let (udp, tcp) = (self.udp, self.tcp);
        Arc::new(move |transport, _client| match transport {
            Transport::Udp => Some(udp),
            Transport::Tcp => Some(tcp),
        })
    }
}

/// The fake resolver's reply to `query`: deterministic, so that a test can tell that the
/// responder passed it on byte for byte.
fn fake_answer(query: &[u8]) -> Option<Vec<u8>> {
    let query = Message::from_vec(query).ok()?;
    let question = query.queries().first()?.clone();
    let mut reply = Message::new();
    reply
        .set_id(query.id())
        .set_message_type(MessageType::Response)
        .set_recursion_desired(query.recursion_desired())
        .set_recursion_available(true)
        .add_query(question.clone());
    if question.name().to_ascii() == TRUNCATED {
        reply.set_truncated(true);
    } else if question.query_type() == RecordType::A {
        let record = Record::from_rdata(question.name().clone(), 300, RData::A(A(UPSTREAM_A)));
        reply.add_answer(record);
    }
    reply.to_vec().ok()
}

fn rule(name: &str, answer: &str, p: f64) -> DnsRule {
    let answer: Answer = answer.parse().expect("a valid test answer");
    DnsRule {
        name: name.into(),
        answer,
        p,
        flows: 1.0,
    }
}

/// The rules of the scenario the brief of this fault describes, and one that never draws.
fn rules() -> Vec<DnsRule> {
    vec![
        rule("*.fail.test", "nxdomain", 1.0),
        rule("spoof.test", "198.51.100.9", 1.0),
        rule("slow.test", "timeout", 1.0),
        rule("never.test", "refused", 0.0),
    ]
}

fn start(resolver: &FakeResolver, rules: Vec<DnsRule>) -> (Responder, SocketAddr) {
    let bind = [SocketAddr::from((Ipv4Addr::LOCALHOST, 0))];
    let responder = Responder::start(&bind, rules, resolver.upstream()).expect("start");
    let addr = responder.local_addrs()[0];
    (responder, addr)
}

fn query(id: u16, name: &str, kind: RecordType) -> Vec<u8> {
    let mut message = Message::new();
    let name = Name::from_ascii(name).expect("a valid test name");
    message
        .set_id(id)
        .set_recursion_desired(true)
        .add_query(Query::query(name, kind));
    message.to_vec().expect("encode the test query")
}

/// A UDP client of the responder.
struct UdpClient(UdpSocket);

impl UdpClient {
    fn new(server: SocketAddr) -> UdpClient {
        let local: IpAddr = match server {
            SocketAddr::V4(_) => Ipv4Addr::LOCALHOST.into(),
            SocketAddr::V6(_) => Ipv6Addr::LOCALHOST.into(),
        };
        let socket = UdpSocket::bind((local, 0)).expect("bind the test client");
        socket.connect(server).expect("connect the test client");
        UdpClient(socket)
    }

    /// Sends `bytes` and returns the first datagram within `wait`, if any.
    fn ask_raw(&self, bytes: &[u8], wait: Duration) -> Option<Vec<u8>> {
        self.0.send(bytes).expect("send a query");
        self.0.set_read_timeout(Some(wait)).unwrap();
        let mut buf = [0; 65535];
        match self.0.recv(&mut buf) {
            Ok(len) => Some(buf[..len].to_vec()),
            Err(err) if is_timeout(&err) => None,
            Err(err) => panic!("receive an answer: {err}"),
        }
    }

    fn ask(&self, id: u16, name: &str, kind: RecordType) -> Message {
        let reply = self.ask_raw(&query(id, name, kind), ANSWER_WAIT);
        let reply = Message::from_vec(&reply.unwrap_or_else(|| panic!("no answer for {name}")));
        let reply = reply.expect("a parsable answer");
        assert_eq!(
            reply.id(),
            id,
            "the answer for {name} carries the query's ID"
        );
        reply
    }
}

/// A TCP client of the responder, on one connection.
struct TcpClient(TcpStream);

impl TcpClient {
    fn new(server: SocketAddr) -> TcpClient {
        TcpClient(TcpStream::connect(server).expect("connect to the responder over TCP"))
    }

    fn ask_raw(&mut self, bytes: &[u8], wait: Duration) -> Option<Vec<u8>> {
        write_frame(&mut self.0, bytes).expect("send a query over TCP");
        self.0.set_read_timeout(Some(wait)).unwrap();
        match read_frame(&mut self.0) {
            Ok(reply) => Some(reply),
            Err(err) if is_timeout(&err) => None,
            Err(err) => panic!("receive an answer over TCP: {err}"),
        }
    }

    fn ask(&mut self, id: u16, name: &str, kind: RecordType) -> Message {
        let reply = self.ask_raw(&query(id, name, kind), ANSWER_WAIT);
        let reply = Message::from_vec(&reply.unwrap_or_else(|| panic!("no answer for {name}")));
        let reply = reply.expect("a parsable answer");
        assert_eq!(
            reply.id(),
            id,
            "the answer for {name} carries the query's ID"
        );
        reply
    }
}

fn is_timeout(err: &io::Error) -> bool {
    matches!(
        err.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
    )
}

fn read_frame(stream: &mut TcpStream) -> io::Result<Vec<u8>> {
    let mut len = [0; 2];
    stream.read_exact(&mut len)?;
    let mut message = vec![0; usize::from(u16::from_be_bytes(len))];
    stream.read_exact(&mut message)?;
    Ok(message)
}

fn write_frame(stream: &mut TcpStream, message: &[u8]) -> io::Result<()> {
    let mut frame = u16::try_from(message.len()).unwrap().to_be_bytes().to_vec();
    frame.extend_from_slice(message);
    stream.write_all(&frame)
}

fn only_address(reply: &Message) -> IpAddr {
    assert_eq!(reply.response_code(), ResponseCode::NoError, "{reply}");
    match reply.answers() {
        [record] => match record.data() {
            RData::A(a) => a.0.into(),
            RData::AAAA(aaaa) => aaaa.0.into(),
            other => panic!("an address record expected, got {other}"),
        },
        other => panic!("one answer expected, got {}", other.len()),
    }
}

/// A query header that promises one question and carries none.
const HEADER_ONLY: [u8; 12] = [0xab, 0xcd, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0];

/// The counters every scenario below ends with.
fn scenario_counters() -> DnsCounters {
    let injected = |n| RuleCounters {
        matched: n,
        injected: n,
        passed: 0,
    };
    DnsCounters {
        rules: vec![
            injected(2),
            injected(2),
            injected(1),
            RuleCounters {
                matched: 20,
                injected: 0,
                passed: 20,
            },
        ],
        unmatched: 4,
        malformed: 3,
        upstream_failed: 0,
    }
}

/// The forwarded queries of the scenario: `fail.test`, 20 of `never.test`, `other.test` twice
/// and the truncated one. No injected query may reach the resolver.
const SCENARIO_FORWARDED: u64 = 24;

#[test]
fn over_udp() {
    let resolver = FakeResolver::start();
    let (responder, addr) = start(&resolver, rules());
    let client = UdpClient::new(addr);

    for (id, name, kind) in [
        (1, "x.fail.test.", RecordType::A),
        (2, "A.B.FAIL.TEST", RecordType::AAAA),
    ] {
        let reply = client.ask(id, name, kind);
        assert_eq!(
            reply.response_code(),
            ResponseCode::NXDomain,
            "{name}: {reply}"
        );
        assert!(reply.answers().is_empty());
    }
    // `*.fail.test` does not take `fail.test` itself.
    assert_eq!(
        only_address(&client.ask(3, "fail.test.", RecordType::A)),
        UPSTREAM_A
    );

    let spoofed = client.ask(4, "spoof.test.", RecordType::A);
    assert_eq!(only_address(&spoofed), Ipv4Addr::new(198, 51, 100, 9));
    let other_type = client.ask(5, "spoof.test.", RecordType::AAAA);
    assert_eq!(other_type.response_code(), ResponseCode::NoError);
    assert!(other_type.answers().is_empty(), "{other_type}");

    assert_eq!(
        client.ask_raw(&query(6, "slow.test.", RecordType::A), SILENCE_WAIT),
        None
    );

    // Forwarded answers come back byte for byte.
    let asked = query(7, "other.test.", RecordType::A);
    let expected = fake_answer(&asked).unwrap();
    assert_eq!(client.ask_raw(&asked, ANSWER_WAIT), Some(expected));
    for id in 100..120 {
        assert_eq!(
            only_address(&client.ask(id, "never.test.", RecordType::A)),
            UPSTREAM_A
        );
    }

    assert_eq!(client.ask_raw(&[0xde, 0xad], SILENCE_WAIT), None);
    let formerr = client.ask_raw(&HEADER_ONLY, ANSWER_WAIT).expect("FORMERR");
    let formerr = Message::from_vec(&formerr).unwrap();
    assert_eq!(
        (formerr.id(), formerr.response_code()),
        (0xabcd, ResponseCode::FormErr)
    );
    let mut response = Message::from_vec(&query(8, "a.test.", RecordType::A)).unwrap();
    response.set_message_type(MessageType::Response);
    assert_eq!(
        client.ask_raw(&response.to_vec().unwrap(), SILENCE_WAIT),
        None
    );
    // Still serving after all that.
    assert_eq!(
        only_address(&client.ask(9, "other.test.", RecordType::A)),
        UPSTREAM_A
    );

    // A truncated answer is passed on as it is, so that the client retries over TCP.
    let asked = query(10, TRUNCATED, RecordType::A);
    let truncated = client
        .ask_raw(&asked, ANSWER_WAIT)
        .expect("the truncated answer");
    assert!(Message::from_vec(&truncated).unwrap().truncated());
    assert_eq!(truncated, fake_answer(&asked).unwrap());

    assert_eq!(responder.counters(), scenario_counters());
    assert_eq!(resolver.queries(), SCENARIO_FORWARDED);
}

#[test]
fn over_tcp() {
    let resolver = FakeResolver::start();
    let (responder, addr) = start(&resolver, rules());
    let mut client = TcpClient::new(addr);

    for (id, name, kind) in [
        (1, "x.fail.test.", RecordType::A),
        (2, "A.B.FAIL.TEST", RecordType::AAAA),
    ] {
        let reply = client.ask(id, name, kind);
        assert_eq!(
            reply.response_code(),
            ResponseCode::NXDomain,
            "{name}: {reply}"
        );
    }
    assert_eq!(
        only_address(&client.ask(3, "fail.test.", RecordType::A)),
        UPSTREAM_A
    );
    let spoofed = client.ask(4, "spoof.test.", RecordType::A);
    assert_eq!(only_address(&spoofed), Ipv4Addr::new(198, 51, 100, 9));
    assert!(
        client
            .ask(5, "spoof.test.", RecordType::AAAA)
            .answers()
            .is_empty()
    );

    // No answer for the timeout, and the connection goes on serving the next query.
    assert_eq!(
        client.ask_raw(&query(6, "slow.test.", RecordType::A), SILENCE_WAIT),
        None
    );
    let asked = query(7, "other.test.", RecordType::A);
    assert_eq!(
        client.ask_raw(&asked, ANSWER_WAIT),
        Some(fake_answer(&asked).unwrap())
    );
    for id in 100..120 {
        assert_eq!(
            only_address(&client.ask(id, "never.test.", RecordType::A)),
            UPSTREAM_A
        );
    }

    assert_eq!(client.ask_raw(&[0xde, 0xad], SILENCE_WAIT), None);
    let formerr = client.ask_raw(&HEADER_ONLY, ANSWER_WAIT).expect("FORMERR");
    assert_eq!(
        Message::from_vec(&formerr).unwrap().response_code(),
        ResponseCode::FormErr
    );
    let mut response = Message::from_vec(&query(8, "a.test.", RecordType::A)).unwrap();
    response.set_message_type(MessageType::Response);
    assert_eq!(
        client.ask_raw(&response.to_vec().unwrap(), SILENCE_WAIT),
        None
    );

    // A connection that ends inside a frame harms no other.
    let mut broken = TcpStream::connect(addr).unwrap();
    broken.write_all(&[0x00, 0x40, 0x12]).unwrap();
    drop(broken);
    let mut second = TcpClient::new(addr);
    assert_eq!(
        only_address(&second.ask(9, "other.test.", RecordType::A)),
        UPSTREAM_A
    );

    let asked = query(10, TRUNCATED, RecordType::A);
    let truncated = client
        .ask_raw(&asked, ANSWER_WAIT)
        .expect("the truncated answer");
    assert_eq!(truncated, fake_answer(&asked).unwrap());

    assert_eq!(responder.counters(), scenario_counters());
    assert_eq!(resolver.queries(), SCENARIO_FORWARDED);
}

#[test]
fn no_resolver_or_a_dead_one_gives_servfail() {
    // Ports that were just free, closed again: the kernel refuses both protocols there.
    let dead_udp = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0))
        .unwrap()
        .local_addr()
        .unwrap();
    let dead_tcp = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .unwrap()
        .local_addr()
        .unwrap();
    let none: Upstream = Arc::new(|_, _| None);
    let dead: Upstream = Arc::new(move |transport, _| match transport {
        Transport::Udp => Some(dead_udp),
        Transport::Tcp => Some(dead_tcp),
    });

    for upstream in [none, dead] {
        let bind = [SocketAddr::from((Ipv4Addr::LOCALHOST, 0))];
        let responder = Responder::start(&bind, Vec::new(), upstream).unwrap();
        let addr = responder.local_addrs()[0];

        let reply = UdpClient::new(addr).ask(1, "a.test.", RecordType::A);
        assert_eq!(reply.response_code(), ResponseCode::ServFail, "{reply}");
        let mut client = TcpClient::new(addr);
        for id in [2, 3] {
            let reply = client.ask(id, "a.test.", RecordType::A);
            assert_eq!(reply.response_code(), ResponseCode::ServFail, "{reply}");
        }

        let counters = responder.counters();
        assert_eq!((counters.unmatched, counters.upstream_failed), (3, 3));
    }
}

#[test]
fn draws_follow_p() {
    let resolver = FakeResolver::start();
    let (responder, addr) = start(&resolver, vec![rule("*.half.test", "servfail", 0.5)]);
    let client = UdpClient::new(addr);

    let mut servfails = 0;
    for id in 0..200 {
        match client
            .ask(id, "x.half.test.", RecordType::A)
            .response_code()
        {
            ResponseCode::ServFail => servfails += 1,
            ResponseCode::NoError => {}
            other => panic!("unexpected rcode {other}"),
        }
    }

    let [counts] = responder.counters().rules[..] else {
        panic!("one rule")
    };
    assert_eq!(
        counts,
        RuleCounters {
            matched: 200,
            injected: servfails,
            passed: 200 - servfails
        }
    );
    assert_eq!(resolver.queries(), 200 - servfails);
    // Binomial(200, 0.5) falls outside 50..=150 with a chance of about 1e-12.
    assert!(
        (50..=150).contains(&servfails),
        "{servfails} of 200 injected at p=0.5"
    );
}

#[test]
fn a_share_of_flows_is_stable_per_client_socket() {
    let resolver = FakeResolver::start();
    let half = DnsRule {
        flows: 0.5,
        ..rule("*.flow.test", "nxdomain", 1.0)
    };
    let (responder, addr) = start(&resolver, vec![half]);

    let mut udp_inside = 0;
    for _ in 0..100 {
        let client = UdpClient::new(addr);
        let rcode = |id| {
            client
                .ask(id, "x.flow.test.", RecordType::A)
                .response_code()
        };
        let first = rcode(1);
        assert_eq!(rcode(2), first, "one client socket, one fate");
        udp_inside += u64::from(first == ResponseCode::NXDomain);
    }
    let mut tcp = TcpClient::new(addr);
    let first = tcp.ask(1, "x.flow.test.", RecordType::A).response_code();
    for id in 2..10 {
        assert_eq!(
            tcp.ask(id, "x.flow.test.", RecordType::A).response_code(),
            first
        );
    }
    let tcp_inside = u64::from(first == ResponseCode::NXDomain);

    let counters = responder.counters();
    let matched = 2 * udp_inside + 9 * tcp_inside;
    assert_eq!(
        counters.rules,
        [RuleCounters {
            matched,
            injected: matched,
            passed: 0
        }]
    );
    assert_eq!(counters.unmatched, 209 - matched);
    // Binomial(100, 0.5) leaves 20..=80 with a chance of about 1e-9.
    assert!(
        (20..=80).contains(&udp_inside),
        "{udp_inside} of 100 client sockets in the share"
    );
}

#[test]
fn both_loopbacks_share_one_port_for_both_protocols() {
    if let Err(err) = UdpSocket::bind((Ipv6Addr::LOCALHOST, 0)) {
        eprintln!("skipped: IPv6 loopback unavailable ({err})");
        return;
    }
    let resolver = FakeResolver::start();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let upstream = {
        let (seen, inner) = (Arc::clone(&seen), resolver.upstream());
        Arc::new(move |transport, client| {
            seen.lock().unwrap().push((transport, client));
            inner(transport, client)
        })
    };
    let binds = [
        SocketAddr::from((Ipv4Addr::LOCALHOST, 0)),
        SocketAddr::from((Ipv6Addr::LOCALHOST, 0)),
    ];
    let responder = Responder::start(
        &binds,
        vec![rule("spoof.test", "2001:db8::9", 1.0)],
        upstream,
    )
    .expect("start on both loopbacks");
    let [v4, v6] = responder.local_addrs()[..] else {
        panic!("two addresses")
    };
    assert_eq!((v4.port(), v6.port()), (responder.port(), responder.port()));
    assert_eq!(
        (v4.ip(), v6.ip()),
        (
            IpAddr::from(Ipv4Addr::LOCALHOST),
            Ipv6Addr::LOCALHOST.into()
        )
    );

    let spoofed: IpAddr = "2001:db8::9".parse().unwrap();
    for addr in [v4, v6] {
        assert_eq!(
            only_address(&UdpClient::new(addr).ask(1, "spoof.test.", RecordType::AAAA)),
            spoofed
        );
        assert_eq!(
            only_address(&TcpClient::new(addr).ask(2, "spoof.test.", RecordType::AAAA)),
            spoofed
        );
        // Forwarded from the IPv6 side to an IPv4 resolver, too.
        assert_eq!(
            only_address(&UdpClient::new(addr).ask(3, "o.test.", RecordType::A)),
            UPSTREAM_A
        );
        assert_eq!(
            only_address(&TcpClient::new(addr).ask(4, "o.test.", RecordType::A)),
            UPSTREAM_A
        );
    }

    let seen = seen.lock().unwrap();
    let transports: Vec<_> = seen.iter().map(|(t, c)| (*t, c.is_ipv4())).collect();
    let expected = [
        (Transport::Udp, true),
        (Transport::Tcp, true),
        (Transport::Udp, false),
        (Transport::Tcp, false),
    ];
    assert_eq!(
        transports, expected,
        "the upstream sees each client as it is"
    );
}

#[test]
fn stop_closes_both_sockets() {
    let resolver = FakeResolver::start();
    let (responder, addr) = start(&resolver, rules());
    assert_eq!(
        only_address(&UdpClient::new(addr).ask(1, "o.test.", RecordType::A)),
        UPSTREAM_A
    );
    // A connection the responder is serving, idle when the stop comes.
    let mut idle = TcpClient::new(addr);
    assert_eq!(
        only_address(&idle.ask(2, "o.test.", RecordType::A)),
        UPSTREAM_A
    );

    responder.stop();

    let err = TcpStream::connect(addr).expect_err("nothing listens after stop");
    assert_eq!(err.kind(), io::ErrorKind::ConnectionRefused);
    UdpSocket::bind(addr).expect("the UDP port is free after stop");
    // The open connection was closed with the rest.
    let mut buf = [0; 1];
    idle.0.set_read_timeout(Some(ANSWER_WAIT)).unwrap();
    assert_eq!(idle.0.read(&mut buf).expect("end of stream"), 0);
}

#[test]
fn starts_and_stops_inside_the_callers_runtime() {
    // The session calls the responder from its own current-thread runtime.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let resolver = FakeResolver::start();
    runtime.block_on(async {
        let (responder, addr) = start(&resolver, rules());
        let reply = UdpClient::new(addr).ask(1, "spoof.test.", RecordType::A);
        assert_eq!(only_address(&reply), Ipv4Addr::new(198, 51, 100, 9));
        drop(responder);
        let err = TcpStream::connect(addr).expect_err("nothing listens after drop");
        assert_eq!(err.kind(), io::ErrorKind::ConnectionRefused);
    });
}
