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

/// Found by fuzzing: a v1 line ending in a bare LF was a header when it
/// came alone and broken when bytes followed it in the same read; with a
/// CRLF after those bytes, `PROXY UNKNOWN` took them as part of the header.
#[test]
fn a_v1_header_is_judged_by_its_first_line_alone() {
    for input in [
        &b"PROXY UNKNOWN \n"[..],
        b"PROXY UNKNOWN \nGET / HTTP/1.1\r\n",
        b"PROXY TCP4 192.0.2.7 198.51.100.1 5555 443 \n",
        b"PROXY TCP4 192.0.2.7 198.51.100.1 5555 443 \nPING\r\n",
    ] {
        assert!(
            matches!(parse(input), Parsed::Invalid(_)),
            "{:?}",
            String::from_utf8_lossy(input)
        );
    }
    let input = b"PROXY UNKNOWN\r\nGET /\n\r\n";
    let len = b"PROXY UNKNOWN\r\n".len();
    assert_eq!(parse(input), Parsed::Header { len, client: None });
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

// Fuzzing (issue 14): every kind of header, mutated and cut anywhere; the
// size limit.

#[path = "../../examples/common/fuzz.rs"]
mod harness;

use harness::Verdict;

/// How a v2 header begins.
const V2_SIGNATURE: &[u8] = b"\r\n\r\n\0\r\nQUIT\n";

/// The words of both versions, and numbers at the edges of their fields.
const WORDS: &[&[u8]] = &[
    b"PROXY ",
    b"TCP4 ",
    b"TCP6 ",
    b"UNKNOWN",
    b"\r\n",
    b"\r",
    b"\n",
    b" ",
    b"0",
    b"65535",
    b"65536",
    b"255.255.255.255",
    b"::1",
    b"::ffff:1.2.3.4",
    V2_SIGNATURE,
    b"\x20",
    b"\x21",
    b"\x11",
    b"\x31",
    b"\xff\xff",
    b"\x00\x00",
];

/// The longest any header that `input` begins can be: a v1 line, or a v2
/// header with the length its own header gives. Past it, `parse` must not
/// ask for more.
fn longest(input: &[u8]) -> usize {
    if V1_PREFIX.starts_with(&input[..input.len().min(V1_PREFIX.len())]) {
        return V1_MAX;
    }
    match input.get(14..16) {
        Some(&[hi, lo]) if input.starts_with(V2_SIGNATURE) => {
            16 + u16::from_be_bytes([hi, lo]) as usize
        }
        _ => 16,
    }
}

/// `parse`, as a verdict for the prefix checks (a header is the same
/// header whatever follows it; a broken one stays broken, though `ppp` may
/// say why in other words as more comes).
fn verdict(input: &[u8]) -> Verdict<Result<Option<SocketAddr>, ()>> {
    match parse(input) {
        Parsed::Incomplete => Verdict::More {
            need: input.len() + 1,
        },
        Parsed::Header { len, client } => Verdict::Whole {
            len,
            what: Ok(client),
        },
        Parsed::Invalid(_) => Verdict::Error(Err(())),
    }
}

/// Any header, v1 or v2, of every command and address family, with TLVs
/// of up to `tlv` bytes in all; and the client it names.
fn any_header(tlv: usize) -> impl Strategy<Value = (Vec<u8>, Option<SocketAddr>)> {
    let unknown = prop_oneof![
        Just(b"PROXY UNKNOWN\r\n".to_vec()),
        "( [0-9a-f:.]{1,20}){0,4}".prop_map(|rest| format!("PROXY UNKNOWN{rest}\r\n").into_bytes()),
    ];
    let v1 = prop_oneof![
        any_addrs().prop_map(|(c, s)| (v1(c, s), Some(c))),
        unknown.prop_map(|h| (h, None)),
    ];
    let addresses = prop_oneof![
        any_addrs().prop_map(|(c, s)| (v2::Addresses::from((c, s)), Some(c))),
        Just((v2::Addresses::Unspecified, None)),
        (any::<[u8; 16]>(), any::<[u8; 16]>()).prop_map(|(s, d)| {
            let (mut source, mut destination) = ([0; 108], [0; 108]);
            source[..16].copy_from_slice(&s);
            destination[..16].copy_from_slice(&d);
            (v2::Unix::new(source, destination).into(), None)
        }),
    ];
    let tlvs = prop::collection::vec((any::<u8>(), 0..tlv.max(1)), 0..4);
    let v2 =
        (any::<bool>(), addresses, tlvs).prop_map(move |(local, (addresses, client), tlvs)| {
            let command = if local {
                Command::Local
            } else {
                Command::Proxy
            };
            let mut builder =
                Builder::with_addresses(Version::Two | command, Protocol::Stream, addresses);
            let mut room = tlv;
            for (kind, len) in tlvs {
                let len = len.min(room);
                room -= len;
                builder = builder.write_tlv(kind, &vec![kind; len]).expect("a TLV");
            }
            (
                builder.build().expect("a header"),
                client.filter(|_| !local),
            )
        });
    prop_oneof![v1, v2]
}

proptest! {
    #![proptest_config(harness::config(512, concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/proptest-regressions/proxy/tests.txt"
    )))]

    /// Any header, whatever follows it: every prefix of it asks for more,
    /// the whole names its client; every prefix of anything passes the
    /// prefix checks.
    #[test]
    fn every_header_parses_once_whole(
        (header, client) in any_header(300),
        tail in prop_oneof![Just(Vec::new()), harness::wordy_bytes(WORDS, 0..8)],
    ) {
        let input = [&header[..], &tail].concat();
        let last = harness::check_prefixes(&input, longest(&input), verdict)?;
        prop_assert_eq!(last, Verdict::Whole { len: header.len(), what: Ok(client) });
    }

    /// Valid headers with bytes set, inserted, removed, repeated or cut
    /// off, and random bytes: on every prefix a defined result, the same
    /// once whole or broken, and never a wait past the longest header the
    /// bytes so far allow.
    #[test]
    fn mutated_and_random_input_ends_in_a_defined_result(
        input in prop_oneof![
            harness::mutated(any_header(64).prop_map(|(h, _)| h), WORDS),
            harness::wordy_bytes(WORDS, 0..40),
        ],
    ) {
        harness::check_prefixes(&input, longest(&input), verdict)?;
    }

    /// What the pool reads while it waits for a header is at most
    /// `max_header_size` bytes: a header within it is read, whatever comes
    /// behind it in the same read; a longer one is still incomplete there,
    /// so the pool refuses it as too long.
    #[test]
    fn a_header_is_read_within_max_header_size_and_refused_past_it(
        (header, client) in any_header(1200),
        max in MIN_PROXY_HEADER..1300,
        tail in prop::collection::vec(any::<u8>(), 0..1300),
    ) {
        let input = [&header[..], &tail].concat();
        let read = &input[..input.len().min(max)];
        if header.len() <= max {
            prop_assert_eq!(parse(read), Parsed::Header { len: header.len(), client });
        } else {
            prop_assert_eq!(parse(read), Parsed::Incomplete);
        }
    }
}
