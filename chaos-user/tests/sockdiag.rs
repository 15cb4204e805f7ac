//! Aborting a cgroup's TCP connections through sock_diag, proven on loopback: clients forked
//! into a fresh cgroup see `ECONNABORTED`, their peers `ECONNRESET`, and a connection made from
//! outside the cgroup, or one a filter leaves out, stays open.
//!
//! Needs root (a cgroup of its own, and `CAP_NET_ADMIN` for `SOCK_DESTROY`); skips otherwise,
//! printing why.
#![allow(
    clippy::print_stdout,
    reason = "a skipping test says why on stdout, where the privileged runner looks"
)]

use std::{
    ffi::CString,
    fs,
    io::{self, Read, Write},
    mem,
    net::{SocketAddr, TcpListener, TcpStream},
    path::PathBuf,
    ptr, thread,
    time::{Duration, Instant},
};

use chaos_user::{
    sockdiag::{self, SocketFilter, TcpState},
    spec::Ports,
};

/// What a skipping test prints before its reason (as the privileged runner counts skips).
const SKIP_MARKER: &str = "chaos-test: SKIP ";
/// How long any one step may take before the test fails instead of hanging.
const STEP: Duration = Duration::from_secs(10);

/// Exit statuses of a client, beside the errno its read failed with (every errno is below 200).
const EXIT_JOIN_CGROUP: i32 = 201;
const EXIT_SOCKET: i32 = 202;
const EXIT_CONNECT: i32 = 203;
const EXIT_EOF: i32 = 204;
const EXIT_DATA: i32 = 205;

#[test]
fn aborts_the_connections_of_the_cgroup_that_match_and_no_other() {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        println!("{SKIP_MARKER}not root: needs a cgroup of its own and CAP_NET_ADMIN");
        return;
    }
    let cgroup = TestCgroup::create();
    let listener4 = TcpListener::bind("127.0.0.1:0").expect("listen on 127.0.0.1");
    let listener6 = TcpListener::bind("[::1]:0").ok();
    if listener6.is_none() {
        println!("no IPv6 on loopback: the IPv6 half of this test does not run");
    }
    let port4 = listener4.local_addr().unwrap().port();

    // Both clients are forked before any socket of the test is accepted, so that neither holds
    // a copy of a server socket.
    let client4 = Client::spawn(&cgroup, listener4.local_addr().unwrap());
    let client6 = listener6
        .as_ref()
        .map(|l| Client::spawn(&cgroup, l.local_addr().unwrap()));
    let mut server4 = accept(&listener4);
    let mut server6 = listener6.as_ref().map(accept);
    let (mut outside, mut outside_server) = connect_from_here(&listener4);

    let mut listed = sockdiag::list_tcp(&[cgroup.id], &SocketFilter::default()).unwrap();
    listed.sort_by_key(|s| s.local.is_ipv6());
    let mut expected = vec![(server4.peer_addr().unwrap(), server4.local_addr().unwrap())];
    if let Some(server6) = &server6 {
        expected.push((server6.peer_addr().unwrap(), server6.local_addr().unwrap()));
    }
    let got: Vec<_> = listed.iter().map(|s| (s.local, s.remote)).collect();
    assert_eq!(
        got, expected,
        "the cgroup's connections, and not the one made from outside"
    );
    for s in &listed {
        assert_eq!(
            (s.state, s.cgroup_id),
            (TcpState::Established, Some(cgroup.id)),
            "{s}"
        );
    }

    let other_port = if port4 == u16::MAX { 1 } else { port4 + 1 };
    let misses = [
        SocketFilter {
            dport: Some(Ports {
                lo: other_port,
                hi: other_port,
            }),
            ..Default::default()
        },
        SocketFilter {
            src: Some("10.0.0.0/8".parse().unwrap()),
            ..Default::default()
        },
    ];
    for filter in &misses {
        assert_eq!(
            sockdiag::destroy_tcp(&[cgroup.id], filter).unwrap(),
            0,
            "{filter:?}"
        );
    }
    assert!(
        client4.running(),
        "a filter that matches nothing aborted the client"
    );
    assert_open(&mut server4);

    let v4_only = SocketFilter {
        dst: Some("127.0.0.0/8".parse().unwrap()),
        dport: Some(Ports {
            lo: port4,
            hi: port4,
        }),
        ..Default::default()
    };
    assert_eq!(sockdiag::destroy_tcp(&[cgroup.id], &v4_only).unwrap(), 1);
    assert_eq!(
        client4.exit_status(),
        libc::ECONNABORTED,
        "what the owner's read saw"
    );
    assert_reset(&mut server4);
    if let (Some(client6), Some(server6)) = (&client6, &mut server6) {
        assert!(client6.running(), "the IPv4 filter aborted the IPv6 client");
        let v6 = SocketFilter {
            dst: Some("::1/128".parse().unwrap()),
            ..Default::default()
        };
        assert_eq!(sockdiag::destroy_tcp(&[cgroup.id], &v6).unwrap(), 1);
        assert_eq!(client6.exit_status(), libc::ECONNABORTED);
        assert_reset(server6);
    }

    let left = sockdiag::destroy_tcp(&[cgroup.id], &SocketFilter::default()).unwrap();
    assert_eq!(left, 0, "nothing of the cgroup is left to abort");
    outside
        .write_all(b"x")
        .expect("the connection from outside is still open");
    let mut byte = [0u8];
    outside_server
        .read_exact(&mut byte)
        .expect("and still delivers");
    assert_eq!(&byte, b"x");
}

/// The peer's end of a connection that is still open: nothing to read, and no error.
fn assert_open(server: &mut TcpStream) {
    server.set_nonblocking(true).unwrap();
    let read = server.read(&mut [0u8]);
    assert_eq!(
        read.map_err(|e| e.kind()),
        Err(io::ErrorKind::WouldBlock),
        "still open"
    );
    server.set_nonblocking(false).unwrap();
}

/// The peer's end of an aborted connection: the RST makes its read fail with ECONNRESET.
fn assert_reset(server: &mut TcpStream) {
    let read = server.read(&mut [0u8]);
    let errno = read.err().and_then(|e| e.raw_os_error());
    assert_eq!(errno, Some(libc::ECONNRESET), "what the peer's read saw");
}

/// Accepts one connection, failing the test rather than waiting forever.
fn accept(listener: &TcpListener) -> TcpStream {
    listener.set_nonblocking(true).unwrap();
    let start = Instant::now();
    loop {
        match listener.accept() {
            Ok((stream, _)) => {
                stream.set_read_timeout(Some(STEP)).unwrap();
                return stream;
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock && start.elapsed() < STEP => {
                thread::sleep(Duration::from_millis(10));
            }
            Err(e) => panic!("no client connected to {:?}: {e}", listener.local_addr()),
        }
    }
}

/// A connection from the test's own process, outside the test's cgroup, and its server end.
fn connect_from_here(listener: &TcpListener) -> (TcpStream, TcpStream) {
    let client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
    (client, accept(listener))
}

/// A cgroup of this test's own, directly below the cgroup2 mount; removed on drop.
struct TestCgroup {
    path: PathBuf,
    /// `cgroup.procs`, for the forked clients to write to.
    procs: CString,
    id: u64,
}

impl TestCgroup {
    fn create() -> TestCgroup {
        let mount = chaos_user::cgroup::mount_point().expect("a cgroup2 mount");
        let path = mount.join(format!("chaos-sockdiag-test-{}", std::process::id()));
        fs::create_dir(&path).unwrap_or_else(|e| panic!("create {}: {e}", path.display()));
        let cgroup = chaos_user::cgroup::Cgroup::resolve(&mount, path.to_str().unwrap())
            .expect("the new cgroup");
        let procs = path.join("cgroup.procs");
        TestCgroup {
            procs: CString::new(procs.into_os_string().into_encoded_bytes()).unwrap(),
            path,
            id: cgroup.id,
        }
    }
}

impl Drop for TestCgroup {
    fn drop(&mut self) {
        // Clients are reaped before this runs; the kernel may take a moment to notice.
        let start = Instant::now();
        while let Err(e) = fs::remove_dir(&self.path) {
            if start.elapsed() > STEP {
                eprintln!("could not remove {}: {e}", self.path.display());
                return;
            }
            thread::sleep(Duration::from_millis(20));
        }
    }
}

/// A forked process that joins the cgroup, connects, and blocks reading one byte; its exit
/// status tells how the read ended.
struct Client {
    pid: libc::pid_t,
    /// The exit status, once reaped.
    status: std::cell::Cell<Option<i32>>,
}

impl Client {
    fn spawn(cgroup: &TestCgroup, to: SocketAddr) -> Client {
        let (addr, addr_len) = sockaddr(to);
        let family = if to.is_ipv4() {
            libc::AF_INET
        } else {
            libc::AF_INET6
        };
        let procs = cgroup.procs.as_ptr();
        // SAFETY: the test harness runs threads, so the child may only make async-signal-safe
        // calls: it calls nothing but raw syscalls on memory prepared before the fork, and
        // leaves with _exit, never returning into Rust code of the parent.
        let pid = unsafe { libc::fork() };
        assert!(pid >= 0, "fork: {}", io::Error::last_os_error());
        if pid == 0 {
            // SAFETY: as above; `procs` and `addr` are copies the child owns.
            unsafe {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                let fd = libc::open(procs, libc::O_WRONLY | libc::O_CLOEXEC);
                if fd < 0 || libc::write(fd, b"0".as_ptr().cast(), 1) != 1 {
                    libc::_exit(EXIT_JOIN_CGROUP);
                }
                libc::close(fd);
                let sock = libc::socket(family, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0);
                if sock < 0 {
                    libc::_exit(EXIT_SOCKET);
                }
                let addr_ptr = ptr::from_ref(&addr).cast::<libc::sockaddr>();
                if libc::connect(sock, addr_ptr, addr_len) != 0 {
                    libc::_exit(EXIT_CONNECT);
                }
                let mut byte = 0u8;
                match libc::read(sock, ptr::from_mut(&mut byte).cast(), 1) {
                    0 => libc::_exit(EXIT_EOF),
                    n if n < 0 => libc::_exit(*libc::__errno_location()),
                    _ => libc::_exit(EXIT_DATA),
                }
            }
        }
        Client {
            pid,
            status: std::cell::Cell::new(None),
        }
    }

    /// Whether the client has not exited yet.
    fn running(&self) -> bool {
        self.reap(libc::WNOHANG).is_none()
    }

    /// The client's exit status, waiting for it to exit.
    fn exit_status(&self) -> i32 {
        let start = Instant::now();
        loop {
            if let Some(status) = self.reap(libc::WNOHANG) {
                return status;
            }
            assert!(start.elapsed() < STEP, "client {} did not exit", self.pid);
            thread::sleep(Duration::from_millis(10));
        }
    }

    fn reap(&self, flags: libc::c_int) -> Option<i32> {
        if self.status.get().is_none() {
            let mut status = 0;
            // SAFETY: waits for our own child and writes its status to a local.
            let got = unsafe { libc::waitpid(self.pid, &mut status, flags) };
            assert!(
                got >= 0,
                "waitpid {}: {}",
                self.pid,
                io::Error::last_os_error()
            );
            if got == self.pid {
                assert!(
                    libc::WIFEXITED(status),
                    "client {} died: status {status:#x}",
                    self.pid
                );
                self.status.set(Some(libc::WEXITSTATUS(status)));
            }
        }
        self.status.get()
    }
}

impl Drop for Client {
    fn drop(&mut self) {
        if self.status.get().is_some() {
            return;
        }
        // SAFETY: signals and reaps our own child, which has not been reaped yet.
        unsafe {
            if libc::kill(self.pid, libc::SIGKILL) != 0 {
                eprintln!("kill client {}: {}", self.pid, io::Error::last_os_error());
            }
            if libc::waitpid(self.pid, ptr::null_mut(), 0) != self.pid {
                eprintln!("reap client {}: {}", self.pid, io::Error::last_os_error());
            }
        }
    }
}

/// The address as connect(2) takes it.
fn sockaddr(addr: SocketAddr) -> (libc::sockaddr_storage, libc::socklen_t) {
    // SAFETY: sockaddr_storage is plain integers, for which all zeroes is a valid value.
    let mut storage: libc::sockaddr_storage = unsafe { mem::zeroed() };
    let len = match addr {
        SocketAddr::V4(a) => {
            let sin = libc::sockaddr_in {
                sin_family: libc::AF_INET as libc::sa_family_t,
                sin_port: a.port().to_be(),
                sin_addr: libc::in_addr {
                    s_addr: u32::from_ne_bytes(a.ip().octets()),
                },
                sin_zero: [0; 8],
            };
            // SAFETY: sockaddr_storage is large enough and aligned for any socket address.
            unsafe {
                ptr::from_mut(&mut storage)
                    .cast::<libc::sockaddr_in>()
                    .write(sin)
            };
            mem::size_of::<libc::sockaddr_in>()
        }
        SocketAddr::V6(a) => {
            let sin6 = libc::sockaddr_in6 {
                sin6_family: libc::AF_INET6 as libc::sa_family_t,
                sin6_port: a.port().to_be(),
                sin6_flowinfo: 0,
                sin6_addr: libc::in6_addr {
                    s6_addr: a.ip().octets(),
                },
                sin6_scope_id: 0,
            };
            // SAFETY: as above.
            unsafe {
                ptr::from_mut(&mut storage)
                    .cast::<libc::sockaddr_in6>()
                    .write(sin6)
            };
            mem::size_of::<libc::sockaddr_in6>()
        }
    };
    (storage, len as libc::socklen_t)
}
