//! The PROXY protocol (versions 1 and 2, parsed by the `ppp` crate): a load
//! balancer such as HAProxy sends it at the start of each connection to say
//! which client it carries. [`ProxyProtocol`] is its configuration; `parse`
//! reads one header from the bytes received so far.
//!
//! `ppp` parses; this module decides when a header is whole: a v1 line
//! once its end has come, a v2 header once its length is there.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use ipnet::IpNet;
use ppp::{v1, v2};

use crate::error::ConfigError;
use crate::setters::setters;

/// The largest header accepted: a version 2 header with 65,535 bytes of
/// addresses and TLVs, the most its length field can say.
pub const MAX_PROXY_HEADER: usize = 16 + 65_535;

/// The smallest `max_header_size` accepted: any version 1 header (107
/// bytes) and a version 2 header with UNIX addresses (232 bytes) fit.
pub const MIN_PROXY_HEADER: usize = 232;

/// The PROXY protocol on every connection (see
/// [`Config::proxy_protocol`](crate::Config::proxy_protocol)): connections
/// from a [`trusted`](Self::trusted) balancer begin with a header, version
/// 1 or 2, naming the client they carry.
///
/// What a trusted connection must send, and what it gets:
/// - a header within [`header_deadline`](Self::header_deadline) and
///   [`max_header_size`](Self::max_header_size), else it is closed,
///   counted as [`CloseReason::ProxyHeader`](crate::CloseReason::ProxyHeader);
///   a header that does not parse is counted the same way;
/// - with a `PROXY` header (v1 `TCP4`/`TCP6`, v2 `PROXY` over IPv4 or
///   IPv6) the client's address is what [`Conn::peer_addr`](crate::Conn::peer_addr)
///   returns, what [`max_connections_per_ip`](crate::Config::max_connections_per_ip)
///   counts, and what the crate's logs print;
/// - with a `LOCAL` header (v2; v1 `UNKNOWN`, or addresses of another
///   family), the balancer speaks for itself, as in its health checks: the
///   connection is served as one from the balancer's own address, counted
///   in [`ProxyStats::local`](crate::ProxyStats), not as an error;
/// - the bytes after the header, in the same read or later, reach the
///   handler (or TLS) untouched. The handler is opened only once the
///   header is read.
///
/// Connections from other addresses are treated as [`untrusted`](Self::untrusted) says.
///
/// ```
/// use std::time::Duration;
/// use pool_manager::{Config, ProxyProtocol, Untrusted};
///
/// let proxy = ProxyProtocol::new(["10.0.0.0/8".parse()?, "::1/128".parse()?])
///     .with_untrusted(Untrusted::Refuse)
///     .with_header_deadline(Duration::from_secs(5));
/// let config = Config::default().with_proxy_protocol(Some(proxy));
/// assert!(config.validate().is_ok());
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
///
/// `#[non_exhaustive]`, as [`Config`](crate::Config) is: build it with
/// [`new`](Self::new) and the `with_*` methods, or assign its fields.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct ProxyProtocol {
    /// The networks of the balancers, IPv4 and IPv6 (an IPv4-mapped IPv6
    /// peer is judged by its IPv4 address). Must not be empty.
    pub trusted: Vec<IpNet>,
    /// What happens to a connection from any other address.
    pub untrusted: Untrusted,
    /// The header must have arrived this long after the connection was
    /// taken (5 s by default). Any deadline that ends the connection
    /// before its header, `read_deadline` for one, counts as a failed
    /// header.
    pub header_deadline: Duration,
    /// A header longer than this is refused (1,024 bytes by default;
    /// [`MIN_PROXY_HEADER`]..=[`MAX_PROXY_HEADER`], and at most
    /// [`buffer_size`](crate::Config::buffer_size)).
    pub max_header_size: usize,
}

impl Default for ProxyProtocol {
    /// Trusts no one (which [`validate`](crate::Config::validate) refuses:
    /// name the balancers), refuses the untrusted, 5 s and 1,024 bytes for
    /// the header.
    fn default() -> Self {
        ProxyProtocol {
            trusted: Vec::new(),
            untrusted: Untrusted::Refuse,
            header_deadline: Duration::from_secs(5),
            max_header_size: 1024,
        }
    }
}

/// What happens to a connection whose address is not among
/// [`ProxyProtocol::trusted`].
///
/// `#[non_exhaustive]`: a later minor version may add a policy, so a
/// `match` on it needs a `_` arm.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum Untrusted {
    /// Closed at once, with no reply, and counted as
    /// [`RejectReason::Untrusted`](crate::RejectReason::Untrusted);
    /// [`Manager::put`](crate::Manager::put) hands it back in
    /// [`PutError::Untrusted`](crate::PutError::Untrusted). A header from
    /// an address that is not a balancer could claim any client.
    #[default]
    Refuse,
    /// Served as a direct client: no header is read (a header it sends
    /// reaches the handler as data), and its own address is its address.
    /// For a port that both a balancer and clients reach directly.
    Direct,
}

setters!(ProxyProtocol {
    with_trusted => trusted: Vec<IpNet>,
    with_untrusted => untrusted: Untrusted,
    with_header_deadline => header_deadline: Duration,
    with_max_header_size => max_header_size: usize,
});

impl ProxyProtocol {
    /// Headers from the balancers in `trusted` (any iterable of
    /// [`IpNet`], such as an array or a `Vec`), and the other
    /// settings at their [defaults](Self::default).
    pub fn new(trusted: impl IntoIterator<Item = IpNet>) -> Self {
        ProxyProtocol {
            trusted: trusted.into_iter().collect(),
            ..ProxyProtocol::default()
        }
    }

    /// Whether a connection from `ip` must send a header.
    pub fn trusts(&self, ip: IpAddr) -> bool {
        let ip = ip.to_canonical();
        self.trusted.iter().any(|net| net.contains(&ip))
    }

    pub(crate) fn validate(&self, buffer_size: usize) -> Result<(), ConfigError> {
        if self.trusted.is_empty() {
            return Err(ConfigError::ProxyNoTrusted);
        }
        if self.header_deadline.is_zero() {
            return Err(ConfigError::ZeroDuration {
                field: "proxy_protocol.header_deadline",
            });
        }
        let max = MAX_PROXY_HEADER.min(buffer_size);
        if !(MIN_PROXY_HEADER..=max).contains(&self.max_header_size) {
            return Err(ConfigError::ProxyHeaderSize {
                size: self.max_header_size,
                min: MIN_PROXY_HEADER,
                max,
            });
        }
        Ok(())
    }
}

/// How a v1 header begins, and its longest length (with its `\r\n`).
const V1_PREFIX: &[u8] = b"PROXY ";
const V1_MAX: usize = 107;

/// What the bytes received so far hold.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Parsed {
    /// The start of a header: more must come.
    Incomplete,
    /// A header of `len` bytes, naming `client` (`None`: `LOCAL`, or an
    /// address that is not IP; the balancer speaks for itself).
    Header {
        len: usize,
        client: Option<SocketAddr>,
    },
    /// Not a PROXY header, or a broken one.
    Invalid(String),
}

/// Parses the header at the start of `input`.
pub(crate) fn parse(input: &[u8]) -> Parsed {
    let start = &input[..input.len().min(V1_PREFIX.len())];
    if V1_PREFIX.starts_with(start) {
        // Version 1, a line. `ppp` judges a line cut short as broken (a
        // port cut short is "invalid"), and a whole line that lacks a part
        // as "partial": so a line is judged once whole, or once longer
        // than any v1 header. Whole is up to its first LF, which must end
        // a CRLF, and `ppp` is shown no more: it takes a bare LF for the
        // end too, and then the bytes after it, if any came in the same
        // read, for more of the line (a verdict that hung on how the bytes
        // were cut into reads, and a header that could swallow the
        // client's first line).
        let line = match input.iter().position(|&b| b == b'\n') {
            Some(lf) if lf > 0 && input[lf - 1] == b'\r' => &input[..=lf],
            Some(_) => return Parsed::Invalid("a version 1 header ends in a bare LF".into()),
            None if input.len() < V1_MAX => return Parsed::Incomplete,
            None => input,
        };
        return match v1::Header::try_from(line) {
            Ok(header) => Parsed::Header {
                len: header.header.len(),
                client: match header.addresses {
                    v1::Addresses::Tcp4(a) => Some((a.source_address, a.source_port).into()),
                    v1::Addresses::Tcp6(a) => Some((a.source_address, a.source_port).into()),
                    v1::Addresses::Unknown => None,
                },
            },
            Err(e) => Parsed::Invalid(e.to_string()),
        };
    }
    match v2::Header::try_from(input) {
        Ok(header) => Parsed::Header {
            len: header.len(),
            client: match (header.command, header.addresses) {
                (v2::Command::Proxy, v2::Addresses::IPv4(a)) => {
                    Some((a.source_address, a.source_port).into())
                }
                (v2::Command::Proxy, v2::Addresses::IPv6(a)) => {
                    Some((a.source_address, a.source_port).into())
                }
                // LOCAL, or addresses that are not IP.
                _ => None,
            },
        },
        Err(v2::ParseError::Incomplete(_) | v2::ParseError::Partial(..)) => Parsed::Incomplete,
        Err(e) => Parsed::Invalid(e.to_string()),
    }
}

#[cfg(test)]
mod tests;
