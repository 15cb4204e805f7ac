//! The workload the privileged tests put into cgroups. Each subcommand prints one JSON line.
//!
//! - `udp-send ADDR COUNT INTERVAL_US`: numbered datagrams; counts sendto errors.
//! - `udp-flood ADDR SECONDS`: 32-byte datagrams as fast as they go; prints the count sent and
//!   the errors.
//! - `udp-recv SECONDS [ADDR]`: binds ADDR (127.0.0.1 by default) port 0, prints `{"port":P}`,
//!   counts datagrams for SECONDS.
//! - `tcp-send ADDR BYTES`: one connection; prints the bytes sent and TCP's retransmissions.
//! - `tcp-connect ADDR`: one connect(); prints `{"ok":true}` or the errno it failed with.
//! - `tcp-hold ADDR SECONDS`: connects, then reads until the connection ends or SECONDS pass;
//!   prints how it ended (`{"errno":N}`, `{"eof":true}` or `{"timeout":true}`).
//! - `udp-zeros ADDR COUNT SIZE`: COUNT datagrams of SIZE zero bytes.
//! - `getppid-loop COUNT THREADS`: each thread calls getppid COUNT times; one thread prints the
//!   number of each call before making it, and at the end `{"calls":N,"signals":S}`, S being
//!   the SIGRTMIN+1 signals that arrived.
//! - `open PATH`: opens PATH for reading; prints `{"ok":true}` or the errno.
//! - `open-n PATH N`: opens PATH N times, one after another; prints each call's errno (0 for
//!   success) as `{"errnos":[...]}`.
//! - `fsync-n PATH N`: writes PATH, then calls fsync on it N times, printing `{"call":I}`
//!   before each call; at the end `{"calls":N}`.
//! - `after-line WHAT`: waits for a line on stdin (so that it can start before a fault is
//!   armed), then does WHAT and prints the errno of each call (0 for success): `files` tries
//!   open, pipe and socket; `fork` forks once.
//! - `sleep-loop COUNT MS`: COUNT sleeps of MS milliseconds; prints the seconds they took.
//! - `udp-flows ADDR FLOWS COUNT`: COUNT datagrams from each of FLOWS sockets, round robin.
//! - `dns-query SERVER NAME MODE`: one A query to SERVER (ADDR:PORT) over `udp` (a connected
//!   socket), `udp-unconnected` (sendto/recvfrom) or `tcp`; prints the rcode, the first address
//!   and where the answer came from.
//! - `demo TCP_ADDR PINGS BYTES`: the demo's workload: ping 127.0.0.1, then `tcp-send`; prints
//!   ping's own summary next to TCP's retransmissions.
#![allow(clippy::print_stdout, reason = "the probe reports on stdout")]

use std::{
    io::{Read, Write},
    net::{TcpStream, UdpSocket},
    os::fd::AsRawFd,
    time::{Duration, Instant},
};

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let arg = |i: usize| args.get(i).unwrap_or_else(|| usage()).as_str();
    match arg(0) {
        "udp-send" => udp_send(
            arg(1),
            arg(2).parse().unwrap_or_else(|_| usage()),
            arg(3).parse().unwrap_or_else(|_| usage()),
        ),
        "udp-flood" => udp_flood(arg(1), arg(2).parse().unwrap_or_else(|_| usage())),
        "udp-recv" => udp_recv(
            arg(1).parse().unwrap_or_else(|_| usage()),
            args.get(2).map_or("127.0.0.1", String::as_str),
        ),
        "tcp-send" => {
            let (sent, retransmits, _) =
                tcp_send(arg(1), arg(2).parse().unwrap_or_else(|_| usage()));
            println!("{{\"bytes\":{sent},\"retransmits\":{retransmits}}}");
        }
        "tcp-connect" => match TcpStream::connect(arg(1)) {
            Ok(_) => println!("{{\"ok\":true}}"),
            Err(e) => println!("{{\"errno\":{}}}", e.raw_os_error().unwrap_or(-1)),
        },
        "tcp-hold" => tcp_hold(arg(1), arg(2).parse().unwrap_or_else(|_| usage())),
        "udp-zeros" => {
            let socket = UdpSocket::bind("127.0.0.1:0").expect("bind");
            let size: usize = arg(3).parse().unwrap_or_else(|_| usage());
            let count: u32 = arg(2).parse().unwrap_or_else(|_| usage());
            for _ in 0..count {
                socket.send_to(&vec![0u8; size], arg(1)).expect("send");
                std::thread::sleep(Duration::from_micros(200));
            }
            println!("{{\"sent\":{count}}}");
        }
        "getppid-loop" => getppid_loop(
            arg(1).parse().unwrap_or_else(|_| usage()),
            arg(2).parse().unwrap_or_else(|_| usage()),
        ),
        "open" => match std::fs::File::open(arg(1)) {
            Ok(_) => println!("{{\"ok\":true}}"),
            Err(e) => println!("{{\"errno\":{}}}", e.raw_os_error().unwrap_or(-1)),
        },
        "open-n" => {
            let count: u32 = arg(2).parse().unwrap_or_else(|_| usage());
            let errnos: Vec<String> = (0..count)
                .map(|_| {
                    std::fs::File::open(arg(1))
                        .map_or_else(|e| e.raw_os_error().unwrap_or(-1), |_| 0)
                        .to_string()
                })
                .collect();
            println!("{{\"errnos\":[{}]}}", errnos.join(","));
        }
        "after-line" => after_line(arg(1)),
        "fsync-n" => {
            let count: u32 = arg(2).parse().unwrap_or_else(|_| usage());
            let mut file = std::fs::File::create(arg(1)).expect("create");
            file.write_all(b"data").expect("write");
            for call in 1..=count {
                println!("{{\"call\":{call}}}");
                std::io::stdout().flush().expect("flush");
                file.sync_all().expect("fsync");
            }
            println!("{{\"calls\":{count}}}");
        }
        "sleep-loop" => {
            let count: u32 = arg(1).parse().unwrap_or_else(|_| usage());
            let ms: u64 = arg(2).parse().unwrap_or_else(|_| usage());
            let started = Instant::now();
            for _ in 0..count {
                std::thread::sleep(Duration::from_millis(ms));
            }
            println!("{{\"seconds\":{:.3}}}", started.elapsed().as_secs_f64());
        }
        "udp-flows" => udp_flows(
            arg(1),
            arg(2).parse().unwrap_or_else(|_| usage()),
            arg(3).parse().unwrap_or_else(|_| usage()),
        ),
        "dns-query" => dns_query(arg(1), arg(2), arg(3)),
        "demo" => demo(arg(1), arg(2), arg(3).parse().unwrap_or_else(|_| usage())),
        _ => usage(),
    }
}

fn usage() -> ! {
    eprintln!(
        "usage: chaos-probe udp-send ADDR COUNT INTERVAL_US | udp-recv SECONDS [ADDR] | tcp-send ADDR BYTES \
         | udp-zeros ADDR COUNT SIZE | sleep-loop COUNT MS | open PATH | open-n PATH N \
         | after-line files|fork | fsync-n PATH N | getppid-loop COUNT THREADS | tcp-connect ADDR | tcp-hold ADDR SECONDS | udp-flows ADDR FLOWS COUNT \
         | dns-query SERVER NAME udp|udp-unconnected|tcp \
         | demo TCP_ADDR PINGS BYTES"
    );
    std::process::exit(2);
}

/// The errno of a libc call that returns -1 on failure, or 0.
fn errno_of(result: libc::c_int) -> i32 {
    if result < 0 {
        std::io::Error::last_os_error().raw_os_error().unwrap_or(-1)
    } else {
        0
    }
}

fn after_line(what: &str) {
    let mut line = String::new();
    std::io::stdin().read_line(&mut line).expect("read stdin");
    match what {
        "files" => {
            // SAFETY: plain calls with valid arguments; the descriptors are left to the exit.
            let (open, pipe, socket) = unsafe {
                let mut fds = [0; 2];
                (
                    errno_of(libc::open(c"/dev/null".as_ptr(), libc::O_RDONLY)),
                    errno_of(libc::pipe(fds.as_mut_ptr())),
                    errno_of(libc::socket(libc::AF_INET, libc::SOCK_STREAM, 0)),
                )
            };
            println!("{{\"open\":{open},\"pipe\":{pipe},\"socket\":{socket}}}");
        }
        "fork" => {
            // SAFETY: the child only calls _exit.
            let pid = unsafe { libc::fork() };
            if pid == 0 {
                // SAFETY: ends the child at once.
                unsafe { libc::_exit(0) };
            }
            let fork = if pid < 0 { errno_of(-1) } else { 0 };
            if pid > 0 {
                let mut status = 0;
                // SAFETY: reaps the child just made.
                unsafe { libc::waitpid(pid, &mut status, 0) };
            }
            println!("{{\"fork\":{fork}}}");
        }
        _ => usage(),
    }
}

fn udp_send(to: &str, count: u32, interval_us: u64) {
    let socket = UdpSocket::bind("0.0.0.0:0").expect("bind");
    let mut errors = 0u64;
    let mut first_error = String::new();
    let started = Instant::now();
    for seq in 0..count {
        let mut payload = [0u8; 32];
        payload[..4].copy_from_slice(&seq.to_le_bytes());
        if let Err(e) = socket.send_to(&payload, to) {
            if errors == 0 {
                first_error = e.to_string();
            }
            errors += 1;
        }
        // Pace by the clock so that the receiver drains as fast as datagrams come.
        let due = started + Duration::from_micros(interval_us * u64::from(seq + 1));
        if let Some(wait) = due.checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        }
    }
    println!("{{\"sent\":{count},\"errors\":{errors},\"first_error\":{first_error:?}}}");
}

/// 32-byte datagrams to `to` as fast as they go for `seconds`; the count the kernel took.
fn udp_flood(to: &str, seconds: f64) {
    let socket = UdpSocket::bind("0.0.0.0:0").expect("bind");
    socket.connect(to).expect("connect");
    let end = Instant::now() + Duration::from_secs_f64(seconds);
    let payload = [0u8; 32];
    let (mut sent, mut errors) = (0u64, 0u64);
    while Instant::now() < end {
        for _ in 0..1024 {
            match socket.send(&payload) {
                Ok(_) => sent += 1,
                Err(_) => errors += 1,
            }
        }
    }
    println!("{{\"sent\":{sent},\"errors\":{errors}}}");
}

fn tcp_hold(to: &str, seconds: u64) {
    let mut stream = match TcpStream::connect(to) {
        Ok(s) => s,
        Err(e) => {
            println!("{{\"connect_errno\":{}}}", e.raw_os_error().unwrap_or(-1));
            return;
        }
    };
    println!("{{\"connected\":true}}");
    std::io::stdout().flush().expect("flush");
    stream
        .set_read_timeout(Some(Duration::from_secs(seconds)))
        .expect("timeout");
    let mut buf = [0u8; 1024];
    loop {
        match stream.read(&mut buf) {
            Ok(0) => return println!("{{\"eof\":true}}"),
            Ok(_) => continue,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                return println!("{{\"timeout\":true}}");
            }
            Err(e) => return println!("{{\"errno\":{}}}", e.raw_os_error().unwrap_or(-1)),
        }
    }
}

fn udp_flows(to: &str, flows: usize, count: u32) {
    let sockets: Vec<UdpSocket> = (0..flows)
        .map(|_| UdpSocket::bind("127.0.0.1:0").expect("bind"))
        .collect();
    let mut errors = 0u64;
    for seq in 0..count {
        for socket in &sockets {
            if socket.send_to(&seq.to_le_bytes(), to).is_err() {
                errors += 1;
            }
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    println!("{{\"flows\":{flows},\"errors\":{errors}}}");
}

fn dns_query(server: &str, name: &str, mode: &str) {
    use hickory_proto::{
        op::{Message, Query},
        rr::{Name, RData, RecordType},
    };
    let server: std::net::SocketAddr = server.parse().unwrap_or_else(|_| usage());
    let mut query = Message::new();
    query
        .set_id(0x5a5a)
        .set_recursion_desired(true)
        .add_query(Query::query(
            Name::from_ascii(name).unwrap_or_else(|_| usage()),
            RecordType::A,
        ));
    let bytes = query.to_vec().expect("encode the query");
    let timeout = Some(Duration::from_secs(2));
    let (reply, from) = match mode {
        "udp" | "udp-unconnected" => {
            // An IPv6 server (an IPv4-mapped one too) is asked from a dual-stack socket.
            let local = if server.is_ipv6() {
                "[::]:0"
            } else {
                "127.0.0.1:0"
            };
            let socket = UdpSocket::bind(local).expect("bind");
            socket.set_read_timeout(timeout).expect("timeout");
            let mut buf = [0u8; 4096];
            let got = if mode == "udp" {
                socket.connect(server).expect("connect");
                socket.send(&bytes).expect("send");
                socket.recv(&mut buf).map(|n| (n, server))
            } else {
                socket.send_to(&bytes, server).expect("send");
                socket.recv_from(&mut buf)
            };
            match got {
                Ok((n, from)) => (buf[..n].to_vec(), from),
                Err(e) => return println!("{{\"error\":{:?}}}", e.to_string()),
            }
        }
        "tcp" => {
            let mut stream = match TcpStream::connect_timeout(&server, Duration::from_secs(2)) {
                Ok(s) => s,
                Err(e) => return println!("{{\"error\":{:?}}}", e.to_string()),
            };
            stream.set_read_timeout(timeout).expect("timeout");
            let peer = stream.peer_addr().expect("peer");
            let mut framed = (bytes.len() as u16).to_be_bytes().to_vec();
            framed.extend(&bytes);
            stream.write_all(&framed).expect("write");
            let mut len = [0u8; 2];
            if let Err(e) = stream.read_exact(&mut len) {
                return println!("{{\"error\":{:?}}}", e.to_string());
            }
            let mut reply = vec![0u8; u16::from_be_bytes(len) as usize];
            stream.read_exact(&mut reply).expect("read the answer");
            (reply, peer)
        }
        _ => usage(),
    };
    let reply = Message::from_vec(&reply).expect("decode the answer");
    let addr = reply.answers().iter().find_map(|r| match r.data() {
        RData::A(a) => Some(a.0.to_string()),
        _ => None,
    });
    println!(
        "{{\"rcode\":{:?},\"addr\":{},\"from\":{:?}}}",
        reply.response_code().to_string(),
        addr.map_or("null".to_string(), |a| format!("{a:?}")),
        from.to_string()
    );
}

static SIGNALS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

extern "C" fn count_signal(_: libc::c_int) {
    SIGNALS.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
}

fn getppid_loop(count: u64, threads: usize) {
    // SAFETY: a handler that only adds to an atomic, installed before any thread starts.
    unsafe {
        let mut action: libc::sigaction = std::mem::zeroed();
        action.sa_sigaction = count_signal as *const () as usize;
        libc::sigemptyset(&mut action.sa_mask);
        libc::sigaction(libc::SIGRTMIN() + 1, &action, std::ptr::null_mut());
    }
    let workers: Vec<_> = (0..threads)
        .map(|t| {
            std::thread::spawn(move || {
                for i in 1..=count {
                    if t == 0 && threads == 1 {
                        println!("{i}");
                    }
                    // SAFETY: getppid has no preconditions.
                    unsafe { libc::getppid() };
                }
            })
        })
        .collect();
    for w in workers {
        w.join().expect("a worker");
    }
    let signals = SIGNALS.load(std::sync::atomic::Ordering::SeqCst);
    println!(
        "{{\"calls\":{},\"signals\":{signals}}}",
        count * threads as u64
    );
}

fn udp_recv(seconds: u64, addr: &str) {
    let socket = UdpSocket::bind((addr, 0)).expect("bind");
    socket
        .set_read_timeout(Some(Duration::from_millis(20)))
        .expect("timeout");
    println!(
        "{{\"port\":{}}}",
        socket.local_addr().expect("address").port()
    );
    std::io::stdout().flush().expect("flush");
    let end = Instant::now() + Duration::from_secs(seconds);
    let mut received = 0u64;
    let mut buf = [0u8; 2048];
    while Instant::now() < end {
        if socket.recv(&mut buf).is_ok() {
            received += 1;
        }
    }
    println!("{{\"received\":{received}}}");
}

/// Sends `bytes` over one connection; returns the bytes sent, `tcpi_total_retrans` (segments
/// the kernel sent again) and the seconds it took.
fn tcp_send(to: &str, bytes: usize) -> (usize, u32, f64) {
    let started = Instant::now();
    let mut stream = TcpStream::connect(to).expect("connect");
    let chunk = vec![0xa5u8; 1 << 16];
    let mut sent = 0;
    while sent < bytes {
        let n = chunk.len().min(bytes - sent);
        stream.write_all(&chunk[..n]).expect("write");
        sent += n;
    }
    stream
        .shutdown(std::net::Shutdown::Write)
        .expect("shutdown");
    let mut rest = Vec::new();
    stream
        .read_to_end(&mut rest)
        .expect("read the peer's close");
    // SAFETY: tcp_info is plain data; getsockopt fills at most `len` bytes of it.
    let retransmits = unsafe {
        let mut info: libc::tcp_info = std::mem::zeroed();
        let mut len = std::mem::size_of::<libc::tcp_info>() as libc::socklen_t;
        let rc = libc::getsockopt(
            stream.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_INFO,
            (&mut info as *mut libc::tcp_info).cast(),
            &mut len,
        );
        assert_eq!(rc, 0, "getsockopt TCP_INFO");
        info.tcpi_total_retrans
    };
    (sent, retransmits, started.elapsed().as_secs_f64())
}

fn demo(tcp_to: &str, pings: &str, bytes: usize) {
    let ping = std::process::Command::new("ping")
        .args(["-c", pings, "-i", "0.02", "-W", "1", "-q", "127.0.0.1"])
        .output()
        .expect("run ping");
    let stdout = String::from_utf8_lossy(&ping.stdout);
    let summary = stdout
        .lines()
        .find(|l| l.contains("packet loss"))
        .map(|l| {
            let parts: Vec<&str> = l
                .split(", ")
                .filter(|p| p.contains("received") || p.contains("loss"))
                .collect();
            parts.join(", ")
        })
        .unwrap_or_else(|| "ping printed no summary".into());
    let (_, retransmits, seconds) = tcp_send(tcp_to, bytes);
    println!(
        "{{\"ping\":{summary:?},\"tcp_retransmits\":{retransmits},\"tcp_seconds\":{seconds:.3}}}"
    );
}
