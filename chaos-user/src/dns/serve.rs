//! Serving the sockets: queries over UDP and TCP, and forwarding to the real resolver the
//! ones that no rule takes.

use std::{
    io,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    sync::Arc,
    time::Duration,
};

use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream, UdpSocket},
    sync::{Semaphore, oneshot},
    time::timeout,
};

use super::{
    Transport, Upstream,
    decision::{Decision, Flow, State},
};

/// How long a forwarded query waits for the real resolver, over UDP or TCP (connect included).
const UPSTREAM_TIMEOUT: Duration = Duration::from_secs(4);
/// How long a client's TCP connection may sit without sending a whole query, or without reading
/// its reply, before the responder closes it.
const TCP_IDLE: Duration = Duration::from_secs(10);
/// Forwarded UDP queries waiting on the resolver at once; past this, new ones are dropped (the
/// client retries) so that a flood cannot exhaust memory or ports.
const MAX_UDP_IN_FLIGHT: usize = 1024;
/// Client TCP connections served at once; past this, new ones are closed at once.
const MAX_TCP_CONNECTIONS: usize = 256;

/// The ID of a DNS message, from its first two bytes.
fn message_id(bytes: &[u8]) -> Option<u16> {
    Some(u16::from_be_bytes([*bytes.first()?, *bytes.get(1)?]))
}

/// Serves every socket until `stopped` fires or its sender is dropped.
pub(super) async fn serve(
    state: Arc<State>,
    sockets: Vec<(UdpSocket, TcpListener)>,
    stopped: oneshot::Receiver<()>,
) {
    let in_flight = Arc::new(Semaphore::new(MAX_UDP_IN_FLIGHT));
    let connections = Arc::new(Semaphore::new(MAX_TCP_CONNECTIONS));
    for (udp, tcp) in sockets {
        tokio::spawn(serve_udp(
            Arc::clone(&state),
            Arc::new(udp),
            Arc::clone(&in_flight),
        ));
        tokio::spawn(serve_tcp(Arc::clone(&state), tcp, Arc::clone(&connections)));
    }
    // A stop message and a dropped sender both mean stop.
    stopped.await.unwrap_or_default();
}

/// Receives queries on one UDP socket.
async fn serve_udp(state: Arc<State>, socket: Arc<UdpSocket>, in_flight: Arc<Semaphore>) {
    let mut buf = vec![0; usize::from(u16::MAX)];
    loop {
        let (len, client) = match socket.recv_from(&mut buf).await {
            Ok(received) => received,
            Err(err) => {
                log::debug!("dns: receive on UDP: {err}");
                // Errors such as ENOMEM may repeat; do not spin on them.
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        let flow = Flow {
            client,
            transport: Transport::Udp,
        };
        let query = match state.decide(&buf[..len], flow) {
            Decision::Reply(reply) => {
                send_udp(&socket, &reply, client).await;
                continue;
            }
            Decision::Silence => continue,
            Decision::Forward(query) => query,
        };
        let Ok(permit) = Arc::clone(&in_flight).try_acquire_owned() else {
            log::debug!("dns: {MAX_UDP_IN_FLIGHT} UDP queries in flight; dropping one");
            continue;
        };
        let bytes = buf[..len].to_vec();
        let (state, socket) = (Arc::clone(&state), Arc::clone(&socket));
        tokio::spawn(async move {
            let outcome = match (state.upstream)(Transport::Udp, client) {
                Some(resolver) => forward_udp(&bytes, query.id(), resolver).await,
                None => Err(no_resolver()),
            };
            if let Some(reply) = state.forwarded(&query, outcome) {
                send_udp(&socket, &reply, client).await;
            }
            drop(permit);
        });
    }
}

async fn send_udp(socket: &UdpSocket, reply: &[u8], client: SocketAddr) {
    if let Err(err) = socket.send_to(reply, client).await {
        log::debug!("dns: reply over UDP to {client}: {err}");
    }
}

/// The resolver's reply to `query`, from a socket of its own; `None` when it stays silent.
async fn forward_udp(query: &[u8], id: u16, resolver: SocketAddr) -> io::Result<Option<Vec<u8>>> {
    let local: IpAddr = match resolver {
        SocketAddr::V4(_) => Ipv4Addr::UNSPECIFIED.into(),
        SocketAddr::V6(_) => Ipv6Addr::UNSPECIFIED.into(),
    };
    let socket = UdpSocket::bind((local, 0)).await?;
    socket.connect(resolver).await?;
    socket.send(query).await?;
    let mut buf = vec![0; usize::from(u16::MAX)];
    let exchange = async {
        loop {
            let len = socket.recv(&mut buf).await?;
            // A stray datagram with another ID is not the answer; keep waiting.
            if message_id(&buf[..len]) == Some(id) {
                return Ok::<_, io::Error>(buf[..len].to_vec());
            }
        }
    };
    match timeout(UPSTREAM_TIMEOUT, exchange).await {
        Ok(reply) => reply.map(Some),
        Err(_elapsed) => Ok(None),
    }
}

/// Accepts TCP connections on one listener.
async fn serve_tcp(state: Arc<State>, listener: TcpListener, connections: Arc<Semaphore>) {
    loop {
        let (stream, client) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(err) => {
                log::debug!("dns: accept on TCP: {err}");
                // EMFILE and the like repeat until a connection closes; do not spin on them.
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        let Ok(permit) = Arc::clone(&connections).try_acquire_owned() else {
            log::debug!(
                "dns: {MAX_TCP_CONNECTIONS} TCP connections open; closing one from {client}"
            );
            continue;
        };
        let state = Arc::clone(&state);
        tokio::spawn(async move {
            if let Err(err) = serve_connection(&state, stream, client).await {
                log::debug!("dns: TCP connection from {client}: {err}");
            }
            drop(permit);
        });
    }
}

/// Answers the queries of one TCP connection in turn, until the client closes it or idles.
async fn serve_connection(
    state: &State,
    mut stream: TcpStream,
    client: SocketAddr,
) -> io::Result<()> {
    let mut upstream = TcpUpstream {
        client,
        resolver: None,
        conn: None,
    };
    loop {
        let query = match timeout(TCP_IDLE, read_frame(&mut stream)).await {
            Ok(Ok(query)) => query,
            Ok(Err(err)) if err.kind() == io::ErrorKind::UnexpectedEof => return Ok(()),
            Ok(Err(err)) => return Err(err),
            Err(_elapsed) => return Ok(()),
        };
        let flow = Flow {
            client,
            transport: Transport::Tcp,
        };
        let reply = match state.decide(&query, flow) {
            Decision::Reply(reply) => Some(reply),
            Decision::Silence => None,
            Decision::Forward(parsed) => {
                let outcome = upstream
                    .exchange(&state.upstream, &query, parsed.id())
                    .await;
                state.forwarded(&parsed, outcome)
            }
        };
        if let Some(reply) = reply {
            timeout(TCP_IDLE, write_frame(&mut stream, &reply))
                .await
                .map_err(|_elapsed| io::Error::from(io::ErrorKind::TimedOut))??;
        }
    }
}

/// The resolver of one client TCP connection, and a connection to it once one is needed.
struct TcpUpstream {
    client: SocketAddr,
    /// Asked of the [`Upstream`] at the first query to forward, then kept.
    resolver: Option<SocketAddr>,
    conn: Option<TcpStream>,
}

impl TcpUpstream {
    /// The resolver's reply to `query`, or `None` if it stays silent past the timeout.
    async fn exchange(
        &mut self,
        upstream: &Upstream,
        query: &[u8],
        id: u16,
    ) -> io::Result<Option<Vec<u8>>> {
        let resolver = (self.resolver)
            .or_else(|| upstream(Transport::Tcp, self.client))
            .ok_or_else(no_resolver)?;
        self.resolver = Some(resolver);
        if let Some(conn) = self.conn.as_mut() {
            match timeout(UPSTREAM_TIMEOUT, ask(conn, query, id)).await {
                Ok(Ok(reply)) => return Ok(Some(reply)),
                // The resolver may have closed the kept connection while it was idle: try once
                // more on a fresh one, which tells that apart from a resolver that fails.
                Ok(Err(err)) => log::debug!("dns: kept TCP connection to {resolver}: {err}"),
                Err(_elapsed) => {
                    self.conn = None;
                    return Ok(None);
                }
            }
            self.conn = None;
        }

        let fresh = timeout(UPSTREAM_TIMEOUT, async {
            let mut conn = TcpStream::connect(resolver).await?;
            let reply = ask(&mut conn, query, id).await?;
            Ok::<_, io::Error>((conn, reply))
        });
        match fresh.await {
            Ok(Ok((conn, reply))) => {
                self.conn = Some(conn);
                Ok(Some(reply))
            }
            Ok(Err(err)) => Err(err),
            Err(_elapsed) => Ok(None),
        }
    }
}

/// Sends `query` on a connection to the resolver and reads until the reply with its ID.
async fn ask(conn: &mut TcpStream, query: &[u8], id: u16) -> io::Result<Vec<u8>> {
    write_frame(conn, query).await?;
    loop {
        let reply = read_frame(conn).await?;
        if message_id(&reply) == Some(id) {
            return Ok(reply);
        }
    }
}

fn no_resolver() -> io::Error {
    io::Error::new(
        io::ErrorKind::NotFound,
        "no resolver is known for this client",
    )
}

/// One length-prefixed DNS message from a TCP stream.
async fn read_frame(stream: &mut TcpStream) -> io::Result<Vec<u8>> {
    let len = stream.read_u16().await?;
    let mut message = vec![0; usize::from(len)];
    stream.read_exact(&mut message).await?;
    Ok(message)
}

/// One DNS message onto a TCP stream, after its length, in one write.
async fn write_frame(stream: &mut TcpStream, message: &[u8]) -> io::Result<()> {
    let len = u16::try_from(message.len())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "DNS message over 65535 bytes"))?;
    let mut frame = Vec::with_capacity(2 + message.len());
    frame.extend_from_slice(&len.to_be_bytes());
    frame.extend_from_slice(message);
    stream.write_all(&frame).await
}
