//! Socket set-up through socket2: listening sockets with the configured
//! backlog and reuse options, and the options of accepted connections.

use std::io;
use std::io::Write;
use std::net::{IpAddr, Shutdown, SocketAddr, TcpListener, TcpStream};
use std::time::Duration;

use socket2::{Domain, Protocol, SockRef, Socket, TcpKeepalive, Type};

use crate::config::Config;

/// A non-blocking listening socket on `addr`, set up as `config` says.
pub(crate) fn bind(addr: SocketAddr, config: &Config) -> io::Result<TcpListener> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    if addr.is_ipv6() {
        // One address, one family: `[::]` does not also take IPv4.
        socket.set_only_v6(true)?;
    }
    socket.set_reuse_address(config.reuse_address)?;
    #[cfg(unix)]
    socket.set_reuse_port(config.reuse_port)?;
    socket.bind(&addr.into())?;
    socket.listen(backlog(config))?;
    socket.set_nonblocking(true)?;
    Ok(socket.into())
}

/// Applies `config`'s backlog to a listening socket again: Linux takes a
/// new `listen` on a listening socket as a new backlog. (Windows keeps the
/// first: there it does nothing.)
pub(crate) fn relisten(listener: &mio::net::TcpListener, config: &Config) -> io::Result<()> {
    if cfg!(windows) {
        return Ok(());
    }
    SockRef::from(listener).listen(backlog(config))
}

fn backlog(config: &Config) -> i32 {
    i32::try_from(config.backlog).unwrap_or(i32::MAX)
}

/// Accepts a connection from a non-blocking listener; also returns the
/// peer's IP, and whether the stream is known to be blocking with no
/// timeouts (a worker then skips setting them). On Linux an accepted socket
/// does not inherit the listener's `O_NONBLOCK`.
#[cfg(unix)]
pub(crate) fn accept(
    listener: &mio::net::TcpListener,
) -> io::Result<(TcpStream, Option<IpAddr>, bool)> {
    let (socket, peer) = SockRef::from(listener).accept()?;
    let ip = peer.as_socket().map(|addr| addr.ip());
    Ok((socket.into(), ip, cfg!(target_os = "linux")))
}

/// Accepts a connection from a non-blocking listener; also returns the
/// peer's IP, and whether the stream is known to be blocking (never: it
/// inherits the listener's mode). Through mio, whose accept re-arms the
/// listener's registration when it finds nothing (Windows reports a
/// registration's readiness once until then).
#[cfg(windows)]
pub(crate) fn accept(
    listener: &mio::net::TcpListener,
) -> io::Result<(TcpStream, Option<IpAddr>, bool)> {
    let (stream, peer) = listener.accept()?;
    let socket = std::os::windows::io::OwnedSocket::from(stream);
    Ok((socket.into(), Some(peer.ip()), false))
}

/// The longest keep-alive idle time applied: Linux's `TCP_KEEPIDLE` takes
/// at most 32,767 s, and refuses more (a longer `Config::keepalive` is
/// clamped to it, see there).
pub(crate) const MAX_KEEPALIVE_IDLE: Duration = Duration::from_secs(32_767);

/// Sets the per-connection options of an accepted stream: each one, even
/// if another failed; the first failure, if any.
pub(crate) fn set_stream_options(stream: &TcpStream, config: &Config) -> io::Result<()> {
    let socket = SockRef::from(stream);
    let keepalive = config
        .keepalive
        .map(|idle| TcpKeepalive::new().with_time(idle.min(MAX_KEEPALIVE_IDLE)));
    [
        socket.set_tcp_nodelay(config.nodelay),
        keepalive.map_or(Ok(()), |k| socket.set_tcp_keepalive(&k)),
        config
            .send_buffer_size
            .map_or(Ok(()), |size| socket.set_send_buffer_size(size)),
        config
            .recv_buffer_size
            .map_or(Ok(()), |size| socket.set_recv_buffer_size(size)),
    ]
    .into_iter()
    .find(Result::is_err)
    .unwrap_or(Ok(()))
}

/// Makes a stream blocking, as workers use them (reads that must not wait
/// pass `MSG_DONTWAIT`; on Windows, which has none, they make it
/// non-blocking for the call: `epoll::read_now`). On Apple's systems, which have no `MSG_NOSIGNAL`,
/// also sets `SO_NOSIGPIPE`, so that a write to a reset connection does not
/// raise `SIGPIPE`: every stream comes here before its first write,
/// whether the acceptor took it or a user's accept loop put it (streams
/// are known to be blocking already only on Linux, see [`accept`]).
pub(crate) fn make_blocking(stream: &TcpStream) -> io::Result<()> {
    stream.set_nonblocking(false)?;
    #[cfg(target_vendor = "apple")]
    SockRef::from(stream).set_nosigpipe(true)?;
    Ok(())
}

/// Whether a blocking socket call failed because its `SO_RCVTIMEO` /
/// `SO_SNDTIMEO` expired (`WouldBlock` on Unix, `TimedOut` on Windows).
pub(crate) fn is_timeout(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
    )
}

/// Writes `reply` without blocking (whatever the socket buffer takes) and
/// closes `stream`: for streams the manager turns away itself.
pub(crate) fn refuse(stream: &TcpStream, reply: &[u8]) {
    if !reply.is_empty() && stream.set_nonblocking(true).is_ok() {
        let mut stream = stream;
        let _ = stream.write(reply);
    }
    let _ = stream.shutdown(Shutdown::Both);
}
