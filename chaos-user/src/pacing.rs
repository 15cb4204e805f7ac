//! Lifting the pacing caps `bandwidth` puts on the target's TCP connections. A cap is a socket
//! option (`SO_MAX_PACING_RATE`), set from the kernel when a connection is established, and it
//! stays on the socket after the programs are gone. So the session records the rates in the
//! undo log first, and at its end (or `recover`, after a crash) finds every socket of the
//! target's processes that still carries one of them and sets it back to unlimited, through a
//! duplicate of the process's descriptor (`pidfd_getfd`, kernel 5.6).

use std::{
    fs, io,
    os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
    path::Path,
};

/// What `SO_MAX_PACING_RATE` reads when no cap is set.
const UNLIMITED: u32 = u32::MAX;

/// Sets every socket of the processes in `cgroup` (and below it) whose pacing cap is one of
/// `rates` back to unlimited; returns how many it changed. Processes and descriptors that go
/// away meanwhile are skipped.
pub fn lift_caps(cgroup: &Path, rates: &[u64]) -> io::Result<usize> {
    let mut lifted = 0;
    for pid in crate::cgroup::processes_below(cgroup) {
        let Ok(pidfd) = pidfd_open(pid) else {
            continue;
        };
        let Ok(fds) = fs::read_dir(format!("/proc/{pid}/fd")) else {
            continue;
        };
        for entry in fds.flatten() {
            let is_socket = fs::read_link(entry.path())
                .is_ok_and(|target| target.to_string_lossy().starts_with("socket:"));
            let Some(fd) = entry
                .file_name()
                .to_str()
                .and_then(|n| n.parse::<i32>().ok())
            else {
                continue;
            };
            if !is_socket {
                continue;
            }
            let Ok(socket) = pidfd_getfd(&pidfd, fd) else {
                continue;
            };
            match max_pacing_rate(&socket) {
                Ok(rate) if rates.contains(&rate) => {
                    set_max_pacing_rate(&socket, UNLIMITED)?;
                    lifted += 1;
                }
                _ => {}
            }
        }
    }
    Ok(lifted)
}

fn pidfd_open(pid: i32) -> io::Result<OwnedFd> {
    // SAFETY: pidfd_open(2) takes a PID and flags and returns a new descriptor or -1.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the descriptor is new and owned by nothing else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

fn pidfd_getfd(pidfd: &OwnedFd, fd: i32) -> io::Result<OwnedFd> {
    // SAFETY: pidfd_getfd(2) duplicates descriptor `fd` of the process into this one.
    let dup = unsafe { libc::syscall(libc::SYS_pidfd_getfd, pidfd.as_raw_fd(), fd, 0) };
    if dup < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the descriptor is new and owned by nothing else.
    Ok(unsafe { OwnedFd::from_raw_fd(dup as i32) })
}

fn max_pacing_rate(socket: &OwnedFd) -> io::Result<u64> {
    let mut value: u32 = 0;
    let mut len = std::mem::size_of::<u32>() as libc::socklen_t;
    // SAFETY: getsockopt writes at most `len` bytes into `value`.
    let rc = unsafe {
        libc::getsockopt(
            socket.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_MAX_PACING_RATE,
            (&mut value as *mut u32).cast(),
            &mut len,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(u64::from(value))
}

fn set_max_pacing_rate(socket: &OwnedFd, rate: u32) -> io::Result<()> {
    // SAFETY: setsockopt reads `size_of::<u32>()` bytes from `rate`.
    let rc = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_MAX_PACING_RATE,
            (&rate as *const u32).cast(),
            std::mem::size_of::<u32>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}
