//! The filter program that the kernel runs on each socket of a dump, to keep those of the
//! cgroups.

use super::{SockDiagError, netlink::NLA_HDRLEN};

// include/uapi/linux/inet_diag.h
pub(super) const INET_DIAG_BC_JMP: u8 = 1;
pub(super) const INET_DIAG_BC_CGROUP_COND: u8 = 13;

/// struct inet_diag_bc_op.
pub(super) const OP_LEN: usize = 4;
/// An `INET_DIAG_BC_CGROUP_COND` op and its u64 cgroup id.
pub(super) const COND_LEN: usize = OP_LEN + 8;

/// The most cgroups one filter holds: its attribute's length is a u16.
pub const MAX_CGROUPS: usize = (u16::MAX as usize - NLA_HDRLEN - COND_LEN) / (COND_LEN + OP_LEN);

const _: () = assert!(NLA_HDRLEN + MAX_CGROUPS * (COND_LEN + OP_LEN) - OP_LEN <= u16::MAX as usize);

/// A filter program that accepts a socket whose cgroup is one of `ids`. The kernel runs it from
/// its first op to the end: an op jumps forward by `yes` bytes when its condition holds and by
/// `no` bytes when not, and the socket passes when the jumps land exactly on the end. Each
/// cgroup but the last is a condition followed by a jump to the end, which the condition's
/// `no` skips; the last condition's `no` lands past the end, which rejects the socket.
pub(super) fn cgroup_bytecode(ids: &[u64]) -> Result<Vec<u8>, SockDiagError> {
    if ids.is_empty() {
        return Err(SockDiagError::NoCgroup);
    }
    if ids.len() > MAX_CGROUPS {
        return Err(SockDiagError::TooManyCgroups(ids.len()));
    }
    let total = ids.len() * (COND_LEN + OP_LEN) - OP_LEN;
    let mut bc = Vec::with_capacity(total);
    for (i, id) in ids.iter().enumerate() {
        push_op(
            &mut bc,
            INET_DIAG_BC_CGROUP_COND,
            COND_LEN,
            COND_LEN + OP_LEN,
        );
        bc.extend_from_slice(&id.to_ne_bytes());
        if i + 1 < ids.len() {
            let to_end = total - bc.len();
            push_op(&mut bc, INET_DIAG_BC_JMP, OP_LEN, to_end);
        }
    }
    Ok(bc)
}

/// Appends a struct inet_diag_bc_op. The lengths fit: `MAX_CGROUPS` bounds the program.
fn push_op(bc: &mut Vec<u8>, code: u8, yes: usize, no: usize) {
    bc.push(code);
    bc.push(yes as u8);
    bc.extend_from_slice(&(no as u16).to_ne_bytes());
}
