use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};

use ppp::v2::{Builder, Command, Protocol, Version};
use proptest::prelude::*;

use super::*;

fn v1(client: SocketAddr, server: SocketAddr) -> Vec<u8> {
    let addresses = match (client, server) {
        (SocketAddr::V4(c), SocketAddr::V4(s)) => {
            v1::Addresses::new_tcp4(*c.ip(), *s.ip(), c.port(), s.port())
        }
        (SocketAddr::V6(c), SocketAddr::V6(s)) => {
            v1::Addresses::new_tcp6(*c.ip(), *s.ip(), c.port(), s.port())
        }
        _ => unreachable!("one family"),
    };
    addresses.to_string().into_bytes()
}

fn v2(command: Command, client: SocketAddr, server: SocketAddr) -> Vec<u8> {
    Builder::with_addresses(Version::Two | command, Protocol::Stream, (client, server))
        .build()
        .expect("a header")
}

fn addr(s: &str) -> SocketAddr {
    s.parse().expect("an address")
}

#[test]
fn every_kind_of_header_names_its_client() {
    let (c4, s4) = (addr("192.0.2.7:5555"), addr("198.51.100.1:443"));
    let (c6, s6) = (addr("[2001:db8::7]:5555"), addr("[2001:db8::1]:443"));
    let cases = [
        (v1(c4, s4), Some(c4)),
        (v1(c6, s6), Some(c6)),
        (b"PROXY UNKNOWN\r\n".to_vec(), None),
        (v2(Command::Proxy, c4, s4), Some(c4)),
        (v2(Command::Proxy, c6, s6), Some(c6)),
        (v2(Command::Local, c4, s4), None),
        (
            Builder::new(Version::Two | Command::Local, 0)
                .build()
                .unwrap(),
            None,
        ),
    ];
    for (header, client) in cases {
        let mut input = header.clone();
        input.extend_from_slice(b"PING\r\n");
        assert_eq!(
            parse(&input),
            Parsed::Header {
                len: header.len(),
                client
            },
            "{:?}",
            String::from_utf8_lossy(&header)
        );
    }
}

#[test]
fn what_is_not_a_header_is_invalid() {
    for input in [
        &b"GET / HTTP/1.1\r\n"[..],
        b"*1\r\n$4\r\nPING\r\n",
        b"\x16\x03\x01\x00\xa5\x01\x00\x00",
        b"PROXY TCP4 1.2.3.4\r\n",
        b"PROXY TCP4 300.2.3.4 1.2.3.4 1 2\r\n",
        b"PROXY TCP9 1.2.3.4 1.2.3.4 1 2\r\n",
        b"\r\n\r\n\0\r\nQUIT\n\x31\x11\x00\x0c", // version 3
    ] {
        assert!(
            matches!(parse(input), Parsed::Invalid(_)),
            "{:?}",
            String::from_utf8_lossy(input)
        );
    }
}

#[test]
fn a_v1_header_without_its_end_is_refused_past_107_bytes() {
    let mut input = b"PROXY TCP4 ".to_vec();
    input.resize(200, b'1');
    assert!(matches!(parse(&input), Parsed::Invalid(_)));
}

#[test]
fn the_start_of_a_header_asks_for_more() {
    for input in [
        &b"P"[..],
        b"PROXY",
        b"PROXY TCP4 1.2.3.4",
        b"\r\n\r\n\0",
        b"\r\n",
    ] {
        assert_eq!(parse(input), Parsed::Incomplete, "{input:?}");
    }
}

#[test]
fn trust_goes_by_network_and_family() {
    let p = ProxyProtocol {
        trusted: vec!["10.1.0.0/16".parse().unwrap(), "fd00::/8".parse().unwrap()],
        ..ProxyProtocol::default()
    };
    assert!(p.trusts(Ipv4Addr::new(10, 1, 2, 3).into()));
    assert!(!p.trusts(Ipv4Addr::new(10, 2, 0, 1).into()));
    assert!(p.trusts("fd12::1".parse::<Ipv6Addr>().unwrap().into()));
    assert!(!p.trusts(Ipv6Addr::LOCALHOST.into()));
    // A dual-stack listener sees IPv4 clients as mapped IPv6 addresses.
    assert!(p.trusts(Ipv4Addr::new(10, 1, 0, 9).to_ipv6_mapped().into()));
}

#[test]
fn validation_names_what_is_wrong() {
    let ok = ProxyProtocol {
        trusted: vec!["127.0.0.0/8".parse().unwrap()],
        ..ProxyProtocol::default()
    };
    assert_eq!(ok.validate(4096), Ok(()));
    assert_eq!(
        ProxyProtocol::default().validate(4096),
        Err(ConfigError::ProxyNoTrusted)
    );
    let zero = ProxyProtocol {
        header_deadline: Duration::ZERO,
        ..ok.clone()
    };
    assert!(matches!(
        zero.validate(4096),
        Err(ConfigError::ZeroDuration { .. })
    ));
    for (size, buffer) in [(100, 4096), (5000, 4096), (MAX_PROXY_HEADER + 1, 1 << 20)] {
        let p = ProxyProtocol {
            max_header_size: size,
            ..ok.clone()
        };
        assert!(
            matches!(p.validate(buffer), Err(ConfigError::ProxyHeaderSize { .. })),
            "{size} {buffer}"
        );
    }
}

fn any_addrs() -> impl Strategy<Value = (SocketAddr, SocketAddr)> {
    prop_oneof![
        (
            any::<[u8; 4]>(),
            any::<u16>(),
            any::<[u8; 4]>(),
            any::<u16>()
        )
            .prop_map(|(c, cp, s, sp)| (
                SocketAddr::from((Ipv4Addr::from(c), cp)),
                SocketAddr::from((Ipv4Addr::from(s), sp))
            )),
        (
            any::<[u8; 16]>(),
            any::<u16>(),
            any::<[u8; 16]>(),
            any::<u16>()
        )
            .prop_map(|(c, cp, s, sp)| (
                SocketAddr::from((Ipv6Addr::from(c), cp)),
                SocketAddr::from((Ipv6Addr::from(s), sp))
            )),
    ]
}

proptest! {
    /// A header that arrives in pieces asks for more until it is whole, and
    /// then names its client, whatever follows it.
    #[test]
    fn split_headers_parse_once_whole(
        (client, server) in any_addrs(),
        version_2 in any::<bool>(),
        tail in proptest::collection::vec(any::<u8>(), 0..64),
    ) {
        let header = if version_2 {
            v2(Command::Proxy, client, server)
        } else {
            v1(client, server)
        };
        for cut in 1..header.len() {
            prop_assert_eq!(parse(&header[..cut]), Parsed::Incomplete, "cut at {}", cut);
        }
        let mut input = header.clone();
        input.extend_from_slice(&tail);
        prop_assert_eq!(
            parse(&input),
            Parsed::Header { len: header.len(), client: Some(client) }
        );
    }

    /// Any bytes at all: no panic, and a header never claims more bytes
    /// than there are.
    #[test]
    fn any_input_ends_in_a_defined_result(input in proptest::collection::vec(any::<u8>(), 0..300)) {
        if let Parsed::Header { len, .. } = parse(&input) {
            prop_assert!(len <= input.len());
        }
    }

    /// A valid header with bytes changed: no panic, a bounded length.
    #[test]
    fn mutated_headers_end_in_a_defined_result(
        (client, server) in any_addrs(),
        version_2 in any::<bool>(),
        flips in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..4),
    ) {
        let mut input = if version_2 {
            v2(Command::Proxy, client, server)
        } else {
            v1(client, server)
        };
        for (at, byte) in flips {
            let i = at.index(input.len());
            input[i] = byte;
        }
        if let Parsed::Header { len, .. } = parse(&input) {
            prop_assert!(len <= input.len());
        }
    }
}
