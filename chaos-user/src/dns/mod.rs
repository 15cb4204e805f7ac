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

mod decision;
mod error;
mod responder;
mod rules;
mod serve;
#[cfg(test)]
mod tests;

pub use error::DnsError;
pub use responder::{DnsCounters, Responder, RuleCounters, Transport, Upstream};
pub use rules::{Answer, DnsRule, glob_matches};
