//! What the responder does with one message: the rule that takes it, the draw, the counters,
//! and the reply it builds.

use std::{
    hash::{DefaultHasher, Hash, Hasher},
    io,
    net::{IpAddr, SocketAddr},
    panic::{self, AssertUnwindSafe},
    sync::atomic::{AtomicU64, Ordering},
};

use hickory_proto::{
    op::{Edns, Header, Message, MessageType, OpCode, ResponseCode},
    rr::{
        DNSClass, RData, Record, RecordType,
        rdata::{A, AAAA},
    },
    serialize::binary::{BinDecodable, BinDecoder},
};

use super::{Answer, DnsCounters, DnsRule, RuleCounters, Transport, Upstream, glob_matches};

/// The TTL of a spoofed record: zero, so that no cache keeps the fault past the session.
pub(super) const SPOOF_TTL: u32 = 0;
/// The UDP payload size this responder announces in its own EDNS records.
const EDNS_PAYLOAD: u16 = 1232;

/// The counters of one rule, as the serving tasks add to them.
#[derive(Default)]
pub(super) struct RuleCounts {
    matched: AtomicU64,
    injected: AtomicU64,
    passed: AtomicU64,
}

/// What the serving tasks share with the [`Responder`](super::Responder).
pub(super) struct State {
    pub(super) rules: Vec<(DnsRule, RuleCounts)>,
    pub(super) upstream: Upstream,
    unmatched: AtomicU64,
    malformed: AtomicU64,
    upstream_failed: AtomicU64,
    /// Mixed into the hash of a flow, so that each responder picks its own share of flows.
    salt: u64,
}

/// Where a message came from: the client's address as the responder sees it, and the protocol.
#[derive(Clone, Copy, Debug, Hash)]
pub(super) struct Flow {
    pub(super) client: SocketAddr,
    pub(super) transport: Transport,
}

/// What to do with one message from a client.
#[derive(Debug)]
pub(super) enum Decision {
    /// Send these bytes back.
    Reply(Vec<u8>),
    /// Send nothing.
    Silence,
    /// Ask the resolver; the parsed query is kept to build a SERVFAIL if that fails.
    Forward(Box<Message>),
}

impl State {
    pub(super) fn new(rules: Vec<DnsRule>, upstream: Upstream) -> State {
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

    pub(super) fn counters(&self) -> DnsCounters {
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
    pub(super) fn decide(&self, bytes: &[u8], flow: Flow) -> Decision {
        let decide = AssertUnwindSafe(|| self.decide_inner(bytes, flow));
        panic::catch_unwind(decide).unwrap_or_else(|_| {
            self.malformed.fetch_add(1, Ordering::Relaxed);
            Decision::Silence
        })
    }

    pub(super) fn decide_inner(&self, bytes: &[u8], flow: Flow) -> Decision {
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
    pub(super) fn forwarded(
        &self,
        query: &Message,
        outcome: io::Result<Option<Vec<u8>>>,
    ) -> Option<Vec<u8>> {
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
