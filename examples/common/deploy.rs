//! What running in production asks of the example servers, shared by
//! `echo`, `resp` and `http` through `serve.rs`:
//!
//! - the PROXY protocol flags (`--proxy-protocol`, `--trusted-proxy`);
//! - listening sockets inherited rather than bound: from systemd's socket
//!   activation (`LISTEN_FDS`, read by `listenfd`), or from a predecessor
//!   (`--handover PATH`, below);
//! - readiness and stopping notifications for systemd's `Type=notify`
//!   units (`sd-notify`; nothing is sent without `NOTIFY_SOCKET`);
//! - the drain on SIGTERM: optionally keep accepting for a grace period
//!   (Kubernetes removes an endpoint some time after it sends SIGTERM),
//!   then `Server::shutdown`.
//!
//! # Restarts that refuse no client (`--handover PATH`)
//!
//! A server started with `--handover PATH` listens on the Unix socket
//! `PATH`. A new process started with the same flag connects to it first,
//! as HAProxy's `-x` and Envoy's hot restart do:
//!
//! 1. the old process sends its listening sockets (`SCM_RIGHTS`);
//! 2. the new one serves them, binds `PATH` in its turn (under another
//!    name, renamed over it: a process started next waits in its
//!    backlog), answers `R` (ready), and only then answers on `PATH`
//!    itself: one handover at a time, in order;
//! 3. the old one stops accepting and drains (`Server::shutdown`): the
//!    first request of every connection it accepted is served, then it
//!    exits 0 with its stop report;
//!
//! One listening socket all along, so no client is refused: those that
//! connect in between wait in its backlog, whichever process accepts them.
//! (Two `SO_REUSEPORT` sockets would not do: Linux drops the connections
//! queued on the one that closes.) If the new process fails before it is
//! ready, the old one goes on serving.
//!
//! Handover and systemd's notifications are Unix only: elsewhere
//! `--handover` is refused with an error, and nothing is notified.

use std::io;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use pool_manager::{ProxyProtocol, Server, Untrusted, ipnet::IpNet};
#[cfg(unix)]
use {
    rustix::net::{
        RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, SendAncillaryBuffer,
        SendAncillaryMessage, SendFlags,
    },
    std::io::{IoSlice, IoSliceMut, Read, Write},
    std::mem::MaybeUninit,
    std::os::fd::AsFd,
    std::os::unix::net::{UnixListener, UnixStream},
};

/// Most listening sockets handed over.
#[cfg(unix)]
const MAX_LISTENERS: usize = 16;

/// How long a successor may take to say it is ready.
#[cfg(unix)]
const SUCCESSOR_TIMEOUT: Duration = Duration::from_secs(30);

/// The deployment flags.
#[derive(clap::Args, Debug, Clone)]
pub struct DeployArgs {
    /// Read a PROXY protocol header (v1 or v2) at the start of every
    /// connection from a trusted balancer (--trusted-proxy).
    #[arg(long)]
    pub proxy_protocol: bool,
    /// A trusted balancer's network, IPv4 or IPv6 CIDR (`10.0.0.0/8`);
    /// repeatable. [default: 127.0.0.0/8 and ::1/128]
    #[arg(long, value_name = "CIDR", requires = "proxy_protocol")]
    pub trusted_proxy: Vec<IpNet>,
    /// Serve clients that are not trusted balancers as direct clients (no
    /// header read), instead of refusing them.
    #[arg(long, requires = "proxy_protocol")]
    pub proxy_allow_direct: bool,
    /// Longest wait for a PROXY header, in milliseconds.
    #[arg(long, default_value_t = 5000)]
    pub proxy_header_ms: u64,
    /// On SIGTERM, go on accepting for this many milliseconds before the
    /// drain (while an orchestrator stops sending clients); 0 = none.
    #[arg(long, default_value_t = 0)]
    pub accept_grace_ms: u64,
    /// Longest the drain after SIGTERM (or a handover) may take, in
    /// milliseconds; then what is left is closed by force.
    #[arg(long, default_value_t = 10_000)]
    pub drain_timeout_ms: u64,
    /// Restart without refusing a client: take the listening sockets from
    /// the process serving on this Unix socket, if any, and offer them to
    /// the next one on it.
    #[arg(long, value_name = "PATH")]
    pub handover: Option<PathBuf>,
}

impl DeployArgs {
    /// The PROXY protocol configuration the flags ask for.
    pub fn proxy_protocol(&self) -> Option<ProxyProtocol> {
        if !self.proxy_protocol {
            return None;
        }
        let mut trusted = self.trusted_proxy.clone();
        if trusted.is_empty() {
            trusted = vec!["127.0.0.0/8".parse().ok()?, "::1/128".parse().ok()?];
        }
        Some(
            ProxyProtocol::new(trusted)
                .with_untrusted(if self.proxy_allow_direct {
                    Untrusted::Direct
                } else {
                    Untrusted::Refuse
                })
                .with_header_deadline(Duration::from_millis(self.proxy_header_ms)),
        )
    }
}

/// Listening sockets made elsewhere, and whence.
pub struct Inherited {
    pub listeners: Vec<TcpListener>,
    pub from: &'static str,
    /// The predecessor, waiting for `ready`.
    #[cfg(unix)]
    predecessor: Option<UnixStream>,
}

impl Inherited {
    /// Tells the predecessor (if any) that this process serves now: it
    /// stops accepting and drains.
    pub fn ready(&mut self) -> io::Result<()> {
        #[cfg(unix)]
        if let Some(mut stream) = self.predecessor.take() {
            return stream.write_all(b"R");
        }
        Ok(())
    }
}

/// `--handover` where there are no Unix sockets.
#[cfg(not(unix))]
fn no_handover() -> io::Error {
    io::Error::new(
        io::ErrorKind::Unsupported,
        "--handover needs Unix sockets (not on this platform)",
    )
}

/// The listening sockets of a predecessor on `handover`, or of systemd's
/// socket activation; `None`: bind them here.
///
/// # Errors
///
/// A predecessor that answered but sent no socket, or sockets that cannot
/// be used.
pub fn inherited(handover: Option<&Path>) -> io::Result<Option<Inherited>> {
    #[cfg(not(unix))]
    if handover.is_some() {
        return Err(no_handover());
    }
    #[cfg(unix)]
    if let Some(path) = handover {
        match UnixStream::connect(path) {
            Ok(stream) => {
                stream.set_read_timeout(Some(SUCCESSOR_TIMEOUT))?;
                let listeners = receive(&stream)?;
                return Ok(Some(Inherited {
                    listeners,
                    from: " (handed over)",
                    predecessor: Some(stream),
                }));
            }
            // Nobody serves there: the first process.
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::NotFound | io::ErrorKind::ConnectionRefused
                ) => {}
            Err(e) => return Err(e),
        }
    }
    let mut fds = listenfd::ListenFd::from_env();
    let mut listeners = Vec::new();
    for i in 0..fds.len() {
        if let Some(listener) = fds.take_tcp_listener(i)? {
            listeners.push(listener);
        }
    }
    Ok((!listeners.is_empty()).then_some(Inherited {
        listeners,
        from: " (socket activation)",
        #[cfg(unix)]
        predecessor: None,
    }))
}

/// The handover path, bound under its final name but not yet answered
/// (`Offer::serve` starts answering). A successor that connects between
/// the two waits in the socket's backlog.
#[cfg(unix)]
pub struct Offer {
    listener: UnixListener,
}

/// No handover path where Unix sockets are missing: `offer` refuses.
#[cfg(not(unix))]
pub enum Offer {}

/// Binds the Unix socket `path` on which the next process will take this
/// one's listening sockets.
///
/// The socket is bound under another name and renamed over `path`, so
/// that `path` always answers: a predecessor's (still waiting for this
/// process to say it is ready) until the rename, this one's after.
///
/// # Errors
///
/// `path` cannot be bound.
#[cfg(unix)]
pub fn offer(path: &Path) -> io::Result<Offer> {
    let mut fresh = path.as_os_str().to_owned();
    fresh.push(format!(".{}", std::process::id()));
    let fresh = PathBuf::from(fresh);
    let _ = std::fs::remove_file(&fresh);
    let listener = UnixListener::bind(&fresh)?;
    std::fs::rename(&fresh, path)?;
    Ok(Offer { listener })
}

/// Offering the listening sockets needs Unix sockets: refused elsewhere.
///
/// # Errors
///
/// Always.
#[cfg(not(unix))]
pub fn offer(_path: &Path) -> io::Result<Offer> {
    Err(no_handover())
}

impl Offer {
    /// Answers the handover path on a thread of its own: offers
    /// `server`'s listening sockets to the next process; once one has
    /// taken them and is ready, `handed_over` runs (it starts this
    /// process's drain). A successor that fails before it is ready
    /// leaves this process serving. Called once this process is itself
    /// ready (its own predecessor told), so that handovers happen one at
    /// a time, in order.
    ///
    /// # Errors
    ///
    /// The thread cannot be started.
    #[cfg(unix)]
    pub fn serve(
        self,
        server: Arc<Server>,
        handed_over: impl FnOnce() + Send + 'static,
    ) -> io::Result<()> {
        let listener = self.listener;
        std::thread::Builder::new()
            .name("handover".into())
            .spawn(move || {
                for stream in listener.incoming() {
                    let result = stream.and_then(|mut stream| {
                        send(&stream, &server.listeners()?)?;
                        stream.set_read_timeout(Some(SUCCESSOR_TIMEOUT))?;
                        let mut answer = [0];
                        stream.read_exact(&mut answer)?;
                        Ok(answer == *b"R")
                    });
                    match result {
                        Ok(true) => return handed_over(),
                        Ok(false) => log::warn!("handover: the successor did not say it is ready"),
                        Err(e) => log::warn!("handover failed, serving on: {e}"),
                    }
                }
            })?;
        Ok(())
    }

    /// Never called: there is no `Offer` where Unix sockets are missing.
    ///
    /// # Errors
    ///
    /// None: the type has no values.
    #[cfg(not(unix))]
    pub fn serve(
        self,
        _server: Arc<Server>,
        _handed_over: impl FnOnce() + Send + 'static,
    ) -> io::Result<()> {
        match self {}
    }
}

/// Sends `listeners` over `stream`, with one byte of data.
#[cfg(unix)]
fn send(stream: &UnixStream, listeners: &[TcpListener]) -> io::Result<()> {
    if listeners.len() > MAX_LISTENERS {
        return Err(io::Error::other("too many listening sockets to hand over"));
    }
    let fds: Vec<_> = listeners.iter().map(AsFd::as_fd).collect();
    let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(MAX_LISTENERS))];
    let mut control = SendAncillaryBuffer::new(&mut space);
    if !control.push(SendAncillaryMessage::ScmRights(&fds)) {
        return Err(io::Error::other("the descriptors do not fit"));
    }
    rustix::net::sendmsg(
        stream,
        &[IoSlice::new(b"L")],
        &mut control,
        SendFlags::empty(),
    )?;
    Ok(())
}

/// Receives the listening sockets a predecessor sends.
#[cfg(unix)]
fn receive(stream: &UnixStream) -> io::Result<Vec<TcpListener>> {
    let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(MAX_LISTENERS))];
    let mut control = RecvAncillaryBuffer::new(&mut space);
    let mut data = [0; 1];
    // Close-on-exec as they arrive where the kernel can (Apple's cannot:
    // set just after, below).
    #[cfg(not(target_vendor = "apple"))]
    let flags = RecvFlags::CMSG_CLOEXEC;
    #[cfg(target_vendor = "apple")]
    let flags = RecvFlags::empty();
    let got = rustix::net::recvmsg(
        stream,
        &mut [IoSliceMut::new(&mut data)],
        &mut control,
        flags,
    )?;
    let mut listeners = Vec::new();
    for message in control.drain() {
        if let RecvAncillaryMessage::ScmRights(fds) = message {
            for fd in fds {
                #[cfg(target_vendor = "apple")]
                rustix::io::fcntl_setfd(&fd, rustix::io::FdFlags::CLOEXEC)?;
                listeners.push(TcpListener::from(fd));
            }
        }
    }
    if got.bytes != 1 || data != *b"L" || listeners.is_empty() {
        return Err(io::Error::other(
            "handover: the predecessor sent no listening socket",
        ));
    }
    Ok(listeners)
}

/// Tells systemd (under `Type=notify`, with `NOTIFY_SOCKET` set) that the
/// server is ready; a process that took over from a predecessor is the
/// service's main process from now on (the unit needs `NotifyAccess=all`).
#[cfg(unix)]
pub fn notify_ready(took_over: bool) {
    use sd_notify::NotifyState;
    let pid = NotifyState::MainPid(std::process::id());
    let states: &[NotifyState] = if took_over {
        &[pid, NotifyState::Ready]
    } else {
        &[NotifyState::Ready]
    };
    if let Err(e) = sd_notify::notify(states) {
        log::warn!("cannot notify systemd: {e}");
    }
}

/// Tells systemd that the server is stopping.
#[cfg(unix)]
pub fn notify_stopping() {
    if let Err(e) = sd_notify::notify(&[sd_notify::NotifyState::Stopping]) {
        log::warn!("cannot notify systemd: {e}");
    }
}

/// No systemd here: nothing to tell.
#[cfg(not(unix))]
pub fn notify_ready(_took_over: bool) {}

/// No systemd here: nothing to tell.
#[cfg(not(unix))]
pub fn notify_stopping() {}
