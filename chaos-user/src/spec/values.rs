//! Values as users write them: probabilities, addresses, ports, durations, rates, sizes,
//! error numbers.

use std::{net::IpAddr, time::Duration};

use ipnet::IpNet;

use super::*;

/// The error numbers connect() and the other calls may be made to return.
pub const ERRNOS: &[(&str, i32)] = &[
    ("ECONNREFUSED", libc::ECONNREFUSED),
    ("ETIMEDOUT", libc::ETIMEDOUT),
    ("ENETUNREACH", libc::ENETUNREACH),
    ("EHOSTUNREACH", libc::EHOSTUNREACH),
    ("ECONNRESET", libc::ECONNRESET),
    ("ECONNABORTED", libc::ECONNABORTED),
    ("ENETDOWN", libc::ENETDOWN),
    ("EHOSTDOWN", libc::EHOSTDOWN),
    ("EADDRNOTAVAIL", libc::EADDRNOTAVAIL),
    ("EADDRINUSE", libc::EADDRINUSE),
    ("EACCES", libc::EACCES),
    ("EPERM", libc::EPERM),
    ("EAGAIN", libc::EAGAIN),
    ("EINTR", libc::EINTR),
    ("ENOBUFS", libc::ENOBUFS),
    ("ENOMEM", libc::ENOMEM),
    ("EMFILE", libc::EMFILE),
    ("ENFILE", libc::ENFILE),
    ("EIO", libc::EIO),
    ("EINVAL", libc::EINVAL),
    ("EPROTO", libc::EPROTO),
    ("ENOENT", libc::ENOENT),
    ("ENXIO", libc::ENXIO),
    ("ENODEV", libc::ENODEV),
    ("EBUSY", libc::EBUSY),
    ("EROFS", libc::EROFS),
    ("ENOSPC", libc::ENOSPC),
    ("EDQUOT", libc::EDQUOT),
    ("EFBIG", libc::EFBIG),
    ("ENOTDIR", libc::ENOTDIR),
    ("EISDIR", libc::EISDIR),
    ("EEXIST", libc::EEXIST),
    ("ETXTBSY", libc::ETXTBSY),
    ("ESTALE", libc::ESTALE),
    ("EBADF", libc::EBADF),
    ("ECHILD", libc::ECHILD),
    ("ESRCH", libc::ESRCH),
    ("ENOTTY", libc::ENOTTY),
    ("ESPIPE", libc::ESPIPE),
    ("ENOTEMPTY", libc::ENOTEMPTY),
    ("ELOOP", libc::ELOOP),
    ("ENAMETOOLONG", libc::ENAMETOOLONG),
    ("ENOSYS", libc::ENOSYS),
    ("ERANGE", libc::ERANGE),
    ("ENOTCONN", libc::ENOTCONN),
    ("EINPROGRESS", libc::EINPROGRESS),
    ("EALREADY", libc::EALREADY),
    ("EOPNOTSUPP", libc::EOPNOTSUPP),
    ("ENOTSOCK", libc::ENOTSOCK),
    ("EAFNOSUPPORT", libc::EAFNOSUPPORT),
    ("EPIPE", libc::EPIPE),
    ("ENODATA", libc::ENODATA),
    ("EXDEV", libc::EXDEV),
    ("EMLINK", libc::EMLINK),
    ("ENOEXEC", libc::ENOEXEC),
    ("E2BIG", libc::E2BIG),
    ("EFAULT", libc::EFAULT),
    ("ENOTBLK", libc::ENOTBLK),
    ("EDEADLK", libc::EDEADLK),
    ("ENOLCK", libc::ENOLCK),
    ("ENOMSG", libc::ENOMSG),
    ("EIDRM", libc::EIDRM),
    ("ENOSTR", libc::ENOSTR),
    ("ETIME", libc::ETIME),
    ("ENOLINK", libc::ENOLINK),
    ("EBADMSG", libc::EBADMSG),
    ("EOVERFLOW", libc::EOVERFLOW),
    ("EILSEQ", libc::EILSEQ),
    ("EUSERS", libc::EUSERS),
    ("EDESTADDRREQ", libc::EDESTADDRREQ),
    ("EMSGSIZE", libc::EMSGSIZE),
    ("EPROTOTYPE", libc::EPROTOTYPE),
    ("ENOPROTOOPT", libc::ENOPROTOOPT),
    ("EPROTONOSUPPORT", libc::EPROTONOSUPPORT),
    ("ESOCKTNOSUPPORT", libc::ESOCKTNOSUPPORT),
    ("EPFNOSUPPORT", libc::EPFNOSUPPORT),
    ("ENETRESET", libc::ENETRESET),
    ("EISCONN", libc::EISCONN),
    ("ESHUTDOWN", libc::ESHUTDOWN),
    ("ETOOMANYREFS", libc::ETOOMANYREFS),
    ("EREMOTEIO", libc::EREMOTEIO),
    ("ECANCELED", libc::ECANCELED),
    ("EOWNERDEAD", libc::EOWNERDEAD),
    ("ENOTRECOVERABLE", libc::ENOTRECOVERABLE),
    ("ENOMEDIUM", libc::ENOMEDIUM),
    ("EMEDIUMTYPE", libc::EMEDIUMTYPE),
    ("EKEYEXPIRED", libc::EKEYEXPIRED),
    ("EKEYREVOKED", libc::EKEYREVOKED),
    ("EHWPOISON", libc::EHWPOISON),
    ("EDOM", libc::EDOM),
    ("ENOTUNIQ", libc::ENOTUNIQ),
    ("EBADFD", libc::EBADFD),
    ("ENOKEY", libc::ENOKEY),
    ("ENOTSUP", libc::ENOTSUP),
];

/// An errno by its name (`ECONNREFUSED`, any case) or number (`5`).
pub fn parse_errno(key: &str, value: &str) -> Result<Errno, SpecError> {
    let upper = value.to_ascii_uppercase();
    let number: Option<i32> = value.parse().ok();
    ERRNOS
        .iter()
        .find(|(name, n)| *name == upper || Some(*n) == number)
        .map(|&(name, number)| Errno { name, number })
        .ok_or_else(|| {
            bad(
                key,
                value,
                "expected an errno by name or number, such as EIO, EACCES, ENOSPC, EXDEV or 5 \
                 (`man errno` lists them)",
            )
        })
}

/// A rate in tc's units, in bytes per second: `kbit`, `mbit`, `gbit` (bits), `bps`, `kbps`,
/// `mbps`, `gbps` (bytes); IEC prefixes (`kibit`, `mibps`) count in 1024s.
pub fn parse_rate(key: &str, value: &str) -> Result<u64, SpecError> {
    let expected = "expected a rate with tc's units, such as 1mbit, 500kbit or 200kbps";
    let lower = value.to_ascii_lowercase();
    let split = lower
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .ok_or_else(|| bad(key, value, expected))?;
    let (number, unit) = lower.split_at(split);
    let number: f64 = number.parse().map_err(|_| bad(key, value, expected))?;
    let (prefix, bits) = if let Some(p) = unit.strip_suffix("bit") {
        (p, true)
    } else if let Some(p) = unit.strip_suffix("bps") {
        (p, false)
    } else {
        return Err(bad(key, value, expected));
    };
    let scale: f64 = match prefix {
        "" => 1.0,
        "k" => 1e3,
        "m" => 1e6,
        "g" => 1e9,
        "t" => 1e12,
        "ki" => 1024.0,
        "mi" => 1024.0 * 1024.0,
        "gi" => 1024.0 * 1024.0 * 1024.0,
        "ti" => 1024.0f64.powi(4),
        _ => return Err(bad(key, value, expected)),
    };
    let bytes = number * scale / if bits { 8.0 } else { 1.0 };
    if !(1.0..=1e13).contains(&bytes) {
        return Err(bad(key, value, "between 8bit and 10tbps"));
    }
    Ok(bytes.round() as u64)
}

/// A size in bytes: a plain number of bytes or IEC units (`64KiB`, `1MiB`).
pub fn parse_size(key: &str, value: &str) -> Result<u64, SpecError> {
    let expected = "expected bytes or IEC units, such as 1500, 64KiB, 1MiB, 2GiB or 1TiB";
    // Only IEC units: `kb` means 1000 to some tools and 1024 to others (tc).
    let unit = value.trim_start_matches(|c: char| c.is_ascii_digit() || c == '.');
    let unit = unit.trim().to_ascii_lowercase();
    if !["", "b", "kib", "mib", "gib", "tib"].contains(&unit.as_str()) {
        return Err(bad(key, value, expected));
    }
    let size: bytesize::ByteSize = value.parse().map_err(|_| bad(key, value, expected))?;
    Ok(size.as_u64())
}

pub(super) fn bad(key: &str, value: &str, expected: impl Into<String>) -> SpecError {
    SpecError::BadValue {
        key: key.to_string(),
        value: value.to_string(),
        expected: expected.into(),
    }
}

/// A probability: a fraction between 0 and 1 (`0.2`, not `20%`).
pub fn parse_probability(key: &str, value: &str) -> Result<f64, SpecError> {
    let p: f64 = value.parse().map_err(|_| {
        bad(
            key,
            value,
            "expected a fraction between 0 and 1, such as 0.2",
        )
    })?;
    if !(0.0..=1.0).contains(&p) {
        return Err(bad(
            key,
            value,
            "a probability lies between 0 and 1 (write 0.2, not 20)",
        ));
    }
    // The kernel draws 32 bits: a probability finer than that would silently become 0 or 1.
    let threshold = (p * (1u64 << 32) as f64).round();
    if p > 0.0 && threshold == 0.0 {
        return Err(bad(
            key,
            value,
            "below the kernel's resolution of 2^-32; write 0 for never",
        ));
    }
    if p < 1.0 && threshold >= (1u64 << 32) as f64 {
        return Err(bad(
            key,
            value,
            "closer to 1 than the kernel's resolution; write 1 for always",
        ));
    }
    // `-0` is 0.
    Ok(if p == 0.0 { 0.0 } else { p })
}

pub(super) fn parse_direction(value: &str) -> Result<Direction, SpecError> {
    match value {
        "egress" => Ok(Direction::Egress),
        "ingress" => Ok(Direction::Ingress),
        "both" => Ok(Direction::Both),
        _ => Err(bad("dir", value, "expected egress, ingress or both")),
    }
}

pub(super) fn parse_proto(value: &str) -> Result<Proto, SpecError> {
    match value {
        "any" => Ok(Proto::Any),
        "tcp" => Ok(Proto::Tcp),
        "udp" => Ok(Proto::Udp),
        "icmp" => Ok(Proto::Icmp),
        _ => Err(bad("proto", value, "expected tcp, udp, icmp or any")),
    }
}

/// An address or a CIDR; a bare address means that host alone.
pub fn parse_net(key: &str, value: &str) -> Result<IpNet, SpecError> {
    let expected = "expected an IPv4 or IPv6 address or CIDR, such as 10.0.0.0/8 or ::1";
    let net = match value.parse::<IpNet>() {
        // Keep the network, not the host bits the user wrote: 10.1.2.3/8 means 10.0.0.0/8.
        Ok(net) => net.trunc(),
        Err(_) => value
            .parse::<IpAddr>()
            .map(IpNet::from)
            .map_err(|_| bad(key, value, expected))?,
    };
    if let IpNet::V6(v6) = net {
        if let Some(v4) = v6.addr().to_ipv4_mapped() {
            let hint = format!("IPv4 packets carry IPv4 addresses; write {v4}");
            return Err(bad(key, value, hint));
        }
    }
    Ok(net)
}

/// A port (`53`) or an inclusive range (`8000-8080`).
pub fn parse_ports(key: &str, value: &str) -> Result<Ports, SpecError> {
    let expected = "expected a port (0-65535) or a range lo-hi, such as 8000-8080";
    let port = |s: &str| {
        s.trim()
            .parse::<u16>()
            .map_err(|_| bad(key, value, expected))
    };
    let (lo, hi) = match value.split_once('-') {
        Some((lo, hi)) => (port(lo)?, port(hi)?),
        None => {
            let p = port(value)?;
            (p, p)
        }
    };
    if lo > hi {
        return Err(bad(key, value, "the range's low end is above its high end"));
    }
    Ok(Ports { lo, hi })
}

/// The longest duration any key takes: a year.
pub const MAX_DURATION: Duration = Duration::from_secs(365 * 24 * 3600);

/// A duration, always with a unit: `250us`, `200ms`, `2s`, `5m`; more than zero, at most a year.
pub fn parse_duration(key: &str, value: &str) -> Result<Duration, SpecError> {
    let expected = "expected a duration with a unit, such as 250ms, 30s or 5m";
    let d = humantime::parse_duration(value).map_err(|_| bad(key, value, expected))?;
    if d.is_zero() {
        return Err(bad(key, value, "a duration must be longer than zero"));
    }
    if d > MAX_DURATION {
        return Err(bad(key, value, "at most a year (365d)"));
    }
    Ok(d)
}

/// Syscalls by name, with their numbers on this architecture.
#[cfg(target_arch = "x86_64")]
pub const SYSCALLS: &[(&str, libc::c_long)] = &[
    ("read", libc::SYS_read),
    ("write", libc::SYS_write),
    ("open", libc::SYS_open),
    ("openat", libc::SYS_openat),
    ("close", libc::SYS_close),
    ("stat", libc::SYS_stat),
    ("fstat", libc::SYS_fstat),
    ("newfstatat", libc::SYS_newfstatat),
    ("statx", libc::SYS_statx),
    ("lseek", libc::SYS_lseek),
    ("pread64", libc::SYS_pread64),
    ("pwrite64", libc::SYS_pwrite64),
    ("readv", libc::SYS_readv),
    ("writev", libc::SYS_writev),
    ("fsync", libc::SYS_fsync),
    ("fdatasync", libc::SYS_fdatasync),
    ("sync", libc::SYS_sync),
    ("truncate", libc::SYS_truncate),
    ("ftruncate", libc::SYS_ftruncate),
    ("fallocate", libc::SYS_fallocate),
    ("rename", libc::SYS_rename),
    ("renameat", libc::SYS_renameat),
    ("renameat2", libc::SYS_renameat2),
    ("mkdir", libc::SYS_mkdir),
    ("mkdirat", libc::SYS_mkdirat),
    ("rmdir", libc::SYS_rmdir),
    ("unlink", libc::SYS_unlink),
    ("unlinkat", libc::SYS_unlinkat),
    ("link", libc::SYS_link),
    ("chmod", libc::SYS_chmod),
    ("fchmod", libc::SYS_fchmod),
    ("dup", libc::SYS_dup),
    ("dup2", libc::SYS_dup2),
    ("dup3", libc::SYS_dup3),
    ("pipe", libc::SYS_pipe),
    ("pipe2", libc::SYS_pipe2),
    ("ioctl", libc::SYS_ioctl),
    ("mmap", libc::SYS_mmap),
    ("munmap", libc::SYS_munmap),
    ("mprotect", libc::SYS_mprotect),
    ("brk", libc::SYS_brk),
    ("socket", libc::SYS_socket),
    ("connect", libc::SYS_connect),
    ("accept", libc::SYS_accept),
    ("accept4", libc::SYS_accept4),
    ("bind", libc::SYS_bind),
    ("listen", libc::SYS_listen),
    ("sendto", libc::SYS_sendto),
    ("recvfrom", libc::SYS_recvfrom),
    ("sendmsg", libc::SYS_sendmsg),
    ("recvmsg", libc::SYS_recvmsg),
    ("poll", libc::SYS_poll),
    ("ppoll", libc::SYS_ppoll),
    ("select", libc::SYS_select),
    ("pselect6", libc::SYS_pselect6),
    ("epoll_wait", libc::SYS_epoll_wait),
    ("epoll_pwait", libc::SYS_epoll_pwait),
    ("nanosleep", libc::SYS_nanosleep),
    ("clock_nanosleep", libc::SYS_clock_nanosleep),
    ("futex", libc::SYS_futex),
    ("clone", libc::SYS_clone),
    ("clone3", libc::SYS_clone3),
    ("fork", libc::SYS_fork),
    ("vfork", libc::SYS_vfork),
    ("execve", libc::SYS_execve),
    ("wait4", libc::SYS_wait4),
    ("kill", libc::SYS_kill),
    ("getpid", libc::SYS_getpid),
    ("getppid", libc::SYS_getppid),
    ("getuid", libc::SYS_getuid),
    ("setuid", libc::SYS_setuid),
    ("access", libc::SYS_access),
    ("faccessat", libc::SYS_faccessat),
    ("faccessat2", libc::SYS_faccessat2),
    ("fcntl", libc::SYS_fcntl),
    ("readlink", libc::SYS_readlink),
    ("readlinkat", libc::SYS_readlinkat),
    ("getdents64", libc::SYS_getdents64),
    ("lstat", libc::SYS_lstat),
    ("getsockopt", libc::SYS_getsockopt),
    ("setsockopt", libc::SYS_setsockopt),
    ("getsockname", libc::SYS_getsockname),
    ("getpeername", libc::SYS_getpeername),
    ("shutdown", libc::SYS_shutdown),
    ("sendfile", libc::SYS_sendfile),
    ("splice", libc::SYS_splice),
    ("madvise", libc::SYS_madvise),
    ("prctl", libc::SYS_prctl),
    ("getrandom", libc::SYS_getrandom),
    ("rt_sigaction", libc::SYS_rt_sigaction),
    ("rt_sigreturn", libc::SYS_rt_sigreturn),
    ("sched_yield", libc::SYS_sched_yield),
    ("epoll_ctl", libc::SYS_epoll_ctl),
    ("eventfd2", libc::SYS_eventfd2),
    ("memfd_create", libc::SYS_memfd_create),
    ("statfs", libc::SYS_statfs),
    ("fstatfs", libc::SYS_fstatfs),
    ("chdir", libc::SYS_chdir),
    ("getcwd", libc::SYS_getcwd),
    ("symlink", libc::SYS_symlink),
    ("chown", libc::SYS_chown),
    ("utimensat", libc::SYS_utimensat),
    ("mount", libc::SYS_mount),
    ("umount2", libc::SYS_umount2),
    ("setns", libc::SYS_setns),
    ("unshare", libc::SYS_unshare),
    ("bpf", libc::SYS_bpf),
    ("exit_group", libc::SYS_exit_group),
    ("openat2", libc::SYS_openat2),
    ("creat", libc::SYS_creat),
    ("mknod", libc::SYS_mknod),
    ("mknodat", libc::SYS_mknodat),
    ("preadv", libc::SYS_preadv),
    ("pwritev", libc::SYS_pwritev),
    ("linkat", libc::SYS_linkat),
    ("symlinkat", libc::SYS_symlinkat),
    ("fchmodat", libc::SYS_fchmodat),
    ("fchown", libc::SYS_fchown),
    ("lchown", libc::SYS_lchown),
    ("fchownat", libc::SYS_fchownat),
    ("flock", libc::SYS_flock),
    ("sendmmsg", libc::SYS_sendmmsg),
    ("recvmmsg", libc::SYS_recvmmsg),
    ("tkill", libc::SYS_tkill),
    ("tgkill", libc::SYS_tgkill),
    ("setreuid", libc::SYS_setreuid),
    ("setresuid", libc::SYS_setresuid),
    ("setfsuid", libc::SYS_setfsuid),
    ("setgid", libc::SYS_setgid),
    ("setregid", libc::SYS_setregid),
    ("setresgid", libc::SYS_setresgid),
    ("setfsgid", libc::SYS_setfsgid),
    ("getxattr", libc::SYS_getxattr),
    ("lgetxattr", libc::SYS_lgetxattr),
    ("fgetxattr", libc::SYS_fgetxattr),
    ("setxattr", libc::SYS_setxattr),
    ("lsetxattr", libc::SYS_lsetxattr),
    ("fsetxattr", libc::SYS_fsetxattr),
    ("listxattr", libc::SYS_listxattr),
    ("llistxattr", libc::SYS_llistxattr),
    ("flistxattr", libc::SYS_flistxattr),
    ("removexattr", libc::SYS_removexattr),
    ("lremovexattr", libc::SYS_lremovexattr),
    ("fremovexattr", libc::SYS_fremovexattr),
    ("epoll_create1", libc::SYS_epoll_create1),
    ("timerfd_create", libc::SYS_timerfd_create),
    ("signalfd4", libc::SYS_signalfd4),
    ("inotify_init1", libc::SYS_inotify_init1),
    ("inotify_add_watch", libc::SYS_inotify_add_watch),
    ("fanotify_init", libc::SYS_fanotify_init),
    ("fchdir", libc::SYS_fchdir),
    ("syncfs", libc::SYS_syncfs),
    ("msync", libc::SYS_msync),
    ("mremap", libc::SYS_mremap),
    ("rt_sigprocmask", libc::SYS_rt_sigprocmask),
    ("clock_gettime", libc::SYS_clock_gettime),
    ("gettimeofday", libc::SYS_gettimeofday),
    ("set_robust_list", libc::SYS_set_robust_list),
    ("rseq", libc::SYS_rseq),
    ("prlimit64", libc::SYS_prlimit64),
    ("getrlimit", libc::SYS_getrlimit),
    ("setrlimit", libc::SYS_setrlimit),
    ("execveat", libc::SYS_execveat),
    ("waitid", libc::SYS_waitid),
    ("exit", libc::SYS_exit),
    ("socketpair", libc::SYS_socketpair),
    ("uname", libc::SYS_uname),
    ("sysinfo", libc::SYS_sysinfo),
    ("geteuid", libc::SYS_geteuid),
    ("getgid", libc::SYS_getgid),
    ("getegid", libc::SYS_getegid),
    ("gettid", libc::SYS_gettid),
    ("arch_prctl", libc::SYS_arch_prctl),
    ("capget", libc::SYS_capget),
    ("capset", libc::SYS_capset),
    ("copy_file_range", libc::SYS_copy_file_range),
    ("tee", libc::SYS_tee),
    ("vmsplice", libc::SYS_vmsplice),
    ("io_uring_setup", libc::SYS_io_uring_setup),
    ("io_uring_enter", libc::SYS_io_uring_enter),
    ("io_uring_register", libc::SYS_io_uring_register),
    ("close_range", libc::SYS_close_range),
    ("pidfd_open", libc::SYS_pidfd_open),
    ("pidfd_send_signal", libc::SYS_pidfd_send_signal),
];

/// Syscalls by name: names are known on x86_64 only in this build.
#[cfg(not(target_arch = "x86_64"))]
pub const SYSCALLS: &[(&str, libc::c_long)] = &[];

/// A syscall by its name (`fsync`), as this architecture numbers it.
pub fn parse_syscall(key: &str, value: &str) -> Result<Syscall, SpecError> {
    SYSCALLS
        .iter()
        .find(|(name, _)| *name == value)
        .map(|&(name, number)| Syscall {
            name,
            number: number as u32,
        })
        .ok_or_else(|| {
            bad(
                key,
                value,
                "expected a syscall this build knows by name, such as read, write, openat, \
                 fsync, connect or getppid",
            )
        })
}

/// The syscalls `fail` can fail: each with the operation bits of the LSM hook its work passes,
/// and whether that hook sees a path (so that `path=` applies). Syscalls that share a hook
/// fail together: naming `fork` fails clone and new threads too.
pub const FAIL_SYSCALLS: &[(&str, u64, bool)] = {
    use chaos_common::op::*;
    &[
        ("open", OPEN, true),
        ("openat", OPEN, true),
        ("openat2", OPEN, true),
        ("creat", CREATE, true),
        ("mknod", CREATE, true),
        ("mknodat", CREATE, true),
        ("read", READ, true),
        ("readv", READ, true),
        ("pread64", READ, true),
        ("preadv", READ, true),
        ("write", WRITE, true),
        ("writev", WRITE, true),
        ("pwrite64", WRITE, true),
        ("pwritev", WRITE, true),
        ("unlink", UNLINK, true),
        ("unlinkat", UNLINK, true),
        ("fork", TASK_ALLOC, false),
        ("vfork", TASK_ALLOC, false),
        ("clone", TASK_ALLOC, false),
        ("clone3", TASK_ALLOC, false),
        ("mmap", MMAP, false),
        ("mprotect", MPROTECT, false),
        ("ioctl", IOCTL, true),
        ("rename", RENAME, true),
        ("renameat", RENAME, true),
        ("renameat2", RENAME, true),
        ("mkdir", MKDIR, true),
        ("mkdirat", MKDIR, true),
        ("rmdir", RMDIR, true),
        ("link", LINK, true),
        ("linkat", LINK, true),
        ("symlink", SYMLINK, true),
        ("symlinkat", SYMLINK, true),
        ("chmod", CHMOD, true),
        ("fchmod", CHMOD, true),
        ("fchmodat", CHMOD, true),
        ("chown", CHOWN, true),
        ("fchown", CHOWN, true),
        ("lchown", CHOWN, true),
        ("fchownat", CHOWN, true),
        ("truncate", TRUNCATE, true),
        ("flock", LOCK, true),
        ("bind", BIND, false),
        ("listen", LISTEN, false),
        ("accept", ACCEPT, false),
        ("accept4", ACCEPT, false),
        ("sendmsg", SENDMSG, false),
        ("sendto", SENDMSG, false),
        ("sendmmsg", SENDMSG, false),
        ("recvmsg", RECVMSG, false),
        ("recvfrom", RECVMSG, false),
        ("recvmmsg", RECVMSG, false),
        ("kill", KILL, false),
        ("tkill", KILL, false),
        ("tgkill", KILL, false),
        ("setuid", SETUID, false),
        ("setreuid", SETUID, false),
        ("setresuid", SETUID, false),
        ("setfsuid", SETUID, false),
        ("setgid", SETGID, false),
        ("setregid", SETGID, false),
        ("setresgid", SETGID, false),
        ("setfsgid", SETGID, false),
    ]
};

/// Syscalls whose first argument is a file descriptor: `crash` with `path=` matches them at
/// syscall entry by the file behind it, with no LSM hook (so on any kernel).
pub const FD_SYSCALLS: &[&str] = &[
    "read",
    "write",
    "pread64",
    "pwrite64",
    "readv",
    "writev",
    "preadv",
    "pwritev",
    "fsync",
    "fdatasync",
    "ftruncate",
    "fallocate",
    "fstat",
    "lseek",
    "close",
    "ioctl",
    "flock",
    "fchmod",
    "getdents64",
];

/// A syscall `fail` can fail, by name.
pub fn parse_fail_syscall(key: &str, value: &str) -> Result<&'static str, SpecError> {
    if let Some((name, _, _)) = FAIL_SYSCALLS.iter().find(|(name, _, _)| *name == value) {
        return Ok(name);
    }
    let known = SYSCALLS.iter().any(|(name, _)| *name == value);
    let elsewhere = match value {
        "connect" => " (the connect fault fails connect())",
        "socket" => " (fd-limit fails socket())",
        _ => "",
    };
    Err(bad(
        key,
        value,
        if known {
            format!(
                "fail does not cover {value}{elsewhere}: it works at the LSM hooks of the \
                 syscalls the README lists (fork, mmap, rename, mkdir, bind, kill, setuid, ...), \
                 as these kernels have no function error injection"
            )
        } else {
            "expected a syscall by name, such as fork, mmap, rename, bind or setuid".to_string()
        },
    ))
}

/// A share of a capacity in percent, `95%`: above 0, at most 100.
pub fn parse_percent(key: &str, value: &str) -> Result<f64, SpecError> {
    value
        .strip_suffix('%')
        .and_then(|n| n.trim().parse::<f64>().ok())
        .filter(|n| *n > 0.0 && *n <= 100.0)
        .ok_or_else(|| {
            bad(
                key,
                value,
                "expected a percentage above 0 and at most 100, such as 95%",
            )
        })
}

/// An absolute path, as written (it is looked up when the session starts).
pub fn parse_path(key: &str, value: &str) -> Result<std::path::PathBuf, SpecError> {
    if !value.starts_with('/') {
        return Err(bad(
            key,
            value,
            "expected an absolute path, such as /var/lib/app",
        ));
    }
    Ok(std::path::PathBuf::from(value))
}

/// Signals by name.
const SIGNALS: &[(&str, i32)] = &[
    ("SIGHUP", libc::SIGHUP),
    ("SIGINT", libc::SIGINT),
    ("SIGQUIT", libc::SIGQUIT),
    ("SIGILL", libc::SIGILL),
    ("SIGTRAP", libc::SIGTRAP),
    ("SIGABRT", libc::SIGABRT),
    ("SIGBUS", libc::SIGBUS),
    ("SIGFPE", libc::SIGFPE),
    ("SIGKILL", libc::SIGKILL),
    ("SIGUSR1", libc::SIGUSR1),
    ("SIGSEGV", libc::SIGSEGV),
    ("SIGUSR2", libc::SIGUSR2),
    ("SIGPIPE", libc::SIGPIPE),
    ("SIGALRM", libc::SIGALRM),
    ("SIGTERM", libc::SIGTERM),
    ("SIGXCPU", libc::SIGXCPU),
    ("SIGSYS", libc::SIGSYS),
];

/// A signal by name (`SIGKILL`, `KILL`, any case), as `SIGRTMIN+N`, or by number.
pub fn parse_signal(key: &str, value: &str) -> Result<Signal, SpecError> {
    let refuse = || {
        bad(
            key,
            value,
            "expected a signal such as SIGKILL, SIGSEGV, SIGABRT, SIGTERM or SIGRTMIN+1",
        )
    };
    let upper = value.to_ascii_uppercase();
    let name = if upper.starts_with("SIG") {
        upper
    } else {
        format!("SIG{upper}")
    };
    let number = if let Some(&(_, n)) = SIGNALS.iter().find(|(s, _)| *s == name) {
        n
    } else if let Some(offset) = name.strip_prefix("SIGRTMIN+") {
        let offset: i32 = offset.parse().map_err(|_| refuse())?;
        libc::SIGRTMIN() + offset
    } else if let Ok(n) = value.parse::<i32>() {
        n
    } else {
        return Err(refuse());
    };
    // Signals 32 and 33 belong to the C library's threads; SIGSTOP would leave the process
    // stopped, which `pause` does better (and undoes).
    let reserved = number > libc::SIGSYS && number < libc::SIGRTMIN();
    if !(1..=libc::SIGRTMAX()).contains(&number) || reserved || number == libc::SIGSTOP {
        return Err(refuse());
    }
    let name = if value.parse::<i32>().is_ok() {
        value.to_string()
    } else {
        name
    };
    Ok(Signal {
        name,
        number: number as u32,
    })
}
