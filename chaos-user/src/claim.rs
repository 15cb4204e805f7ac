//! Claims on a target that only one session may hold at a time. A claim is an abstract Unix
//! socket named after the claim and the cgroup: the kernel frees it when the process ends, in
//! whatever way, so a claim never outlives its session and needs no undo. Abstract names
//! belong to a network namespace, so every claim is made in PID 1's: a session started in
//! another namespace (`unshare -n`, a container sharing the host's cgroups) sees the others.

use std::{
    io,
    os::linux::net::SocketAddrExt as _,
    os::unix::net::{SocketAddr, UnixListener},
};

use crate::error::{Class, Classify};

/// A held claim; released when dropped.
#[derive(Debug)]
pub struct Claim {
    _socket: UnixListener,
}

/// Another session holds a claim this one needs.
#[derive(Debug, thiserror::Error)]
#[error("another chaos-user session already runs `{what}` on cgroup {cgroup}{relation}")]
pub struct Taken {
    pub what: &'static str,
    pub cgroup: String,
    /// How that cgroup relates to this session's target, when it is not the target itself.
    pub relation: &'static str,
}

impl Classify for Taken {
    fn class(&self) -> Class {
        Class::Environment
    }

    fn hint(&self) -> Option<String> {
        Some(format!(
            "one target takes `{}` from one session at a time: give all of it to one session, \
             or stop the other first",
            self.what
        ))
    }
}

/// Claims `what` for the cgroup `id`, after checking that no session holds it for `related`
/// cgroups (the target's ancestors and descendants, with their relation and name).
pub fn claim(
    what: &'static str,
    id: u64,
    name: &str,
    related: &[(u64, &'static str, String)],
) -> anyhow::Result<Claim> {
    for (other, relation, other_name) in related {
        if is_held(what, *other)? {
            return Err(Taken {
                what,
                cgroup: other_name.clone(),
                relation,
            }
            .into());
        }
    }
    match bind(what, id)? {
        Ok(socket) => Ok(Claim { _socket: socket }),
        Err(e) if e.kind() == io::ErrorKind::AddrInUse => Err(Taken {
            what,
            cgroup: name.to_string(),
            relation: "",
        }
        .into()),
        Err(e) => Err(anyhow::Error::new(e).context(format!("claim `{what}` on cgroup {name}"))),
    }
}

fn is_held(what: &str, id: u64) -> io::Result<bool> {
    match bind(what, id)? {
        // Free: the probe's own bind is dropped at once.
        Ok(_) => Ok(false),
        Err(e) if e.kind() == io::ErrorKind::AddrInUse => Ok(true),
        Err(e) => Err(e),
    }
}

/// Binds the claim's name in PID 1's network namespace (from here when this process is in
/// it, or where PID 1's namespace cannot be opened, as in a sandbox that hides it). The outer
/// error: the namespace could not be joined.
fn bind(what: &str, id: u64) -> io::Result<io::Result<UnixListener>> {
    let bind_here = || {
        SocketAddr::from_abstract_name(key(what, id))
            .and_then(|addr| UnixListener::bind_addr(&addr))
    };
    let init = match crate::netns::Netns::of_init() {
        Ok(init) => init,
        Err(e) => {
            log::debug!("claims in this network namespace: PID 1's cannot be opened: {e}");
            return Ok(bind_here());
        }
    };
    if crate::netns::own_inode()? == init.inode {
        return Ok(bind_here());
    }
    init.run(bind_here)
}

fn key(what: &str, id: u64) -> String {
    format!("chaos-user/{what}/{id}")
}
