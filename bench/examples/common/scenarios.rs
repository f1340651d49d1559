//! The workloads of the `compare` example.

/// A workload.
pub struct Scenario {
    pub name: &'static str,
    pub what: &'static str,
    pub connections: usize,
    pub idle: usize,
    pub per_request: bool,
    /// Servers sleep this long in the handler for a request that starts
    /// with `!`; 0 = no such sleep.
    pub sleep_ms: u64,
    /// Every this many requests one starts with `!`; 0 = none.
    pub sleep_every: u64,
    /// Over TLS (run by ours and tokio only).
    pub tls: bool,
    /// What load runs.
    pub kind: Kind,
}

/// The kinds of load.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// The `load` example against the echo servers.
    Echo,
    /// `pubsub_load fanout` against Redis-like servers: `connections`
    /// subscribers on one channel, 2 publishers, 64 B messages; `rate`
    /// publishes per second on a fixed schedule, or 0: a closed loop.
    Fanout { rate: u32 },
    /// `pubsub_load slow-readers` against Redis-like servers: `idle`
    /// clients each read an 8 MiB reply at 256 KiB/s while `connections`
    /// others `GET` 64 B at full speed.
    SlowReaders,
}

pub const SCENARIOS: [Scenario; 14] = [
    Scenario {
        name: "single",
        what: "1 connection, one 64 B request at a time (round-trip latency)",
        connections: 1,
        idle: 0,
        per_request: false,
        sleep_ms: 0,
        sleep_every: 0,
        tls: false,
        kind: Kind::Echo,
    },
    Scenario {
        name: "small",
        what: "50 connections, 64 B echo",
        connections: 50,
        idle: 0,
        per_request: false,
        sleep_ms: 0,
        sleep_every: 0,
        tls: false,
        kind: Kind::Echo,
    },
    Scenario {
        name: "many",
        what: "1,000 connections, 64 B echo",
        connections: 1000,
        idle: 0,
        per_request: false,
        sleep_ms: 0,
        sleep_every: 0,
        tls: false,
        kind: Kind::Echo,
    },
    Scenario {
        name: "idle",
        what: "10,000 idle + 50 active connections, 64 B echo",
        connections: 50,
        idle: 10_000,
        per_request: false,
        sleep_ms: 0,
        sleep_every: 0,
        tls: false,
        kind: Kind::Echo,
    },
    Scenario {
        name: "connect",
        what: "50 clients, a new connection per 64 B request",
        connections: 50,
        idle: 0,
        per_request: true,
        sleep_ms: 0,
        sleep_every: 0,
        tls: false,
        kind: Kind::Echo,
    },
    Scenario {
        name: "blocking",
        what: "200 connections, 64 B echo, 1 % of the requests sleep 10 ms in the handler (p99 of the others)",
        connections: 200,
        idle: 0,
        per_request: false,
        sleep_ms: 10,
        sleep_every: 100,
        tls: false,
        kind: Kind::Echo,
    },
    Scenario {
        name: "blocking0",
        what: "the servers of blocking, 200 connections, 64 B echo, no request sleeps",
        connections: 200,
        idle: 0,
        per_request: false,
        sleep_ms: 10,
        sleep_every: 0,
        tls: false,
        kind: Kind::Echo,
    },
    Scenario {
        name: "tls",
        what: "50 connections, 64 B echo over TLS (rustls's defaults: TLS 1.3, the same certificate)",
        connections: 50,
        idle: 0,
        per_request: false,
        sleep_ms: 0,
        sleep_every: 0,
        tls: true,
        kind: Kind::Echo,
    },
    Scenario {
        name: "tls-connect",
        what: "50 clients, a new TLS connection (a full handshake) per 64 B request",
        connections: 50,
        idle: 0,
        per_request: true,
        sleep_ms: 0,
        sleep_every: 0,
        tls: true,
        kind: Kind::Echo,
    },
    Scenario {
        name: "tls-idle",
        what: "2,000 idle TLS connections (handshake done) + 50 active, 64 B echo over TLS",
        connections: 50,
        idle: 2000,
        per_request: false,
        sleep_ms: 0,
        sleep_every: 0,
        tls: true,
        kind: Kind::Echo,
    },
    Scenario {
        name: "fanout",
        what: "1,000 subscribers on one channel, 2 publishers in a closed loop, 64 B messages (throughput: messages delivered; latency: publish to receive)",
        connections: 1000,
        idle: 0,
        per_request: false,
        sleep_ms: 0,
        sleep_every: 0,
        tls: false,
        kind: Kind::Fanout { rate: 0 },
    },
    Scenario {
        name: "fanout-200",
        what: "fanout at 200 publishes/s on a fixed schedule (200,000 deliveries/s, under every server's closed-loop rate here): latency at the same load, which the closed loop does not compare (there the server that takes publishes faster also queues more behind them, on a machine the load tool shares)",
        connections: 1000,
        idle: 0,
        per_request: false,
        sleep_ms: 0,
        sleep_every: 0,
        tls: false,
        kind: Kind::Fanout { rate: 200 },
    },
    Scenario {
        name: "slow-readers",
        what: "64 clients each GET an 8 MiB value and read it at 256 KiB/s, while 50 others GET 64 B at full speed (throughput and latency: theirs); ours with write_deadline 1 s",
        connections: 50,
        idle: 64,
        per_request: false,
        sleep_ms: 0,
        sleep_every: 0,
        tls: false,
        kind: Kind::SlowReaders,
    },
    Scenario {
        name: "slow-readers0",
        what: "the 50 full-speed clients of slow-readers alone",
        connections: 50,
        idle: 0,
        per_request: false,
        sleep_ms: 0,
        sleep_every: 0,
        tls: false,
        kind: Kind::SlowReaders,
    },
];

/// Whether a server runs in a scenario: `tokio-blocking` differs from
/// `tokio` only where requests may sleep, and `threads` cannot sleep.
/// TLS scenarios compare ours with tokio + tokio-rustls only. The pub/sub
/// scenarios run ours (the `resp` example), tokio (`peer_tokio_pubsub`)
/// and redis-server; only they run redis-server.
pub fn runs_in(server: &str, scenario: &Scenario) -> bool {
    match server {
        _ if scenario.kind != Kind::Echo => matches!(server, "ours" | "tokio" | "redis-server"),
        "redis-server" => false,
        _ if scenario.tls => matches!(server, "ours" | "ours-1p" | "base" | "tokio"),
        "tokio-blocking" => scenario.sleep_ms > 0,
        _ => true,
    }
}
