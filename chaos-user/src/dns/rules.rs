//! A rule of the `dns` fault: the answer it gives, and the glob over query names it takes.

use std::{fmt, net::IpAddr, str::FromStr};

use super::DnsError;

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
