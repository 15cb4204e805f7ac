//! The responder's own tests: globs, answers, decisions and their counters, malformed input,
//! and shares of flows.

use std::{
    net::{IpAddr, Ipv4Addr, SocketAddr},
    sync::Arc,
};

use hickory_proto::{
    op::{Edns, Message, MessageType, Query, ResponseCode},
    rr::{
        Name, RData, RecordType,
        rdata::{A, AAAA},
    },
};

use super::{
    Answer, DnsError, DnsRule, Responder, RuleCounters, Transport, Upstream,
    decision::{Decision, Flow, SPOOF_TTL, State},
    glob_matches,
};
use crate::error::{Class, Classify};

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
