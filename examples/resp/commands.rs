//! Commands: look-up by name, arity, and the string, key and server
//! commands. The collection types' commands are in `collections.rs`.

use std::ops::Range;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use super::collections;
use super::reply;
use super::store::{Store, Value};

/// A command's arguments, the name first: ranges into the read buffer, so
/// nothing is copied to run a command.
#[derive(Clone, Copy)]
pub struct Args<'a> {
    buf: &'a [u8],
    ranges: &'a [Range<usize>],
}

impl<'a> Args<'a> {
    /// The arguments `ranges` of `buf`.
    pub fn new(buf: &'a [u8], ranges: &'a [Range<usize>]) -> Self {
        Args { buf, ranges }
    }

    /// How many, the name included.
    pub fn len(&self) -> usize {
        self.ranges.len()
    }

    /// Argument `i` (0 is the name).
    pub fn get(&self, i: usize) -> &'a [u8] {
        &self.buf[self.ranges[i].clone()]
    }

    /// Arguments `from..`.
    pub fn from(&self, from: usize) -> impl Iterator<Item = &'a [u8]> + 'a {
        let buf = self.buf;
        self.ranges[from..].iter().map(move |r| &buf[r.clone()])
    }

    /// Argument `i` as an integer, if it is one.
    pub fn int(&self, i: usize) -> Option<i64> {
        int(self.get(i))
    }

    /// Whether argument `i` is `word`, in any case.
    pub fn is(&self, i: usize, word: &str) -> bool {
        self.get(i).eq_ignore_ascii_case(word.as_bytes())
    }
}

/// A decimal integer as Redis reads one (no `+`, no spaces).
pub fn int(arg: &[u8]) -> Option<i64> {
    // Redis's `string2ll`: `0`, or an optional `-` then digits without a
    // leading zero.
    let digits = arg.strip_prefix(b"-").unwrap_or(arg);
    let canonical = arg == b"0" || digits.first().is_some_and(|d| (b'1'..=b'9').contains(d));
    if !canonical || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(arg).ok()?.parse().ok()
}

/// What the connection does after a command.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flow {
    /// Reads the next command.
    Continue,
    /// Closes once the replies are written (`QUIT`).
    Close,
}

/// What the server is, for `INFO` and `HELLO`.
pub struct ServerInfo {
    /// The port it listens on.
    pub port: u16,
    /// When it started.
    pub started: Instant,
}

/// A command: its lower-case name, Redis's arity (exactly N arguments with
/// the name, or at least -N when negative), and its code.
type Command = (&'static str, i32, fn(&Store, &Args<'_>, &mut Vec<u8>));

/// Every command but the connection's own (`QUIT`, `HELLO`, `INFO`, …),
/// which `execute` handles.
const COMMANDS: &[Command] = &[
    ("get", 2, get),
    ("set", -3, set),
    ("incr", 2, |s, a, o| incr_by(s, a.get(1), 1, o)),
    ("decr", 2, |s, a, o| incr_by(s, a.get(1), -1, o)),
    ("incrby", 3, |s, a, o| by(s, a, 1, o)),
    ("decrby", 3, |s, a, o| by(s, a, -1, o)),
    ("del", -2, del),
    ("unlink", -2, del),
    ("exists", -2, exists),
    ("mset", -3, mset),
    ("mget", -2, mget),
    ("expire", 3, |s, a, o| expire(s, a, 1000, o)),
    ("pexpire", 3, |s, a, o| expire(s, a, 1, o)),
    ("ttl", 2, |s, a, o| ttl(s, a, 1000, o)),
    ("pttl", 2, |s, a, o| ttl(s, a, 1, o)),
    ("persist", 2, persist),
    ("type", 2, type_of),
    ("dbsize", 1, |s, _, o| reply::int(o, s.len() as i64)),
    ("flushall", -1, flush),
    ("flushdb", -1, flush),
    ("lpush", -3, |s, a, o| collections::push(s, a, true, o)),
    ("rpush", -3, |s, a, o| collections::push(s, a, false, o)),
    ("lpop", -2, |s, a, o| collections::pop(s, a, true, o)),
    ("rpop", -2, |s, a, o| collections::pop(s, a, false, o)),
    ("llen", 2, collections::llen),
    ("lrange", 4, collections::lrange),
    ("sadd", -3, collections::sadd),
    ("spop", -2, collections::spop),
    ("scard", 2, collections::scard),
    ("sismember", 3, collections::sismember),
    ("smembers", 2, collections::smembers),
    ("hset", -4, collections::hset),
    ("hget", 3, collections::hget),
    ("hgetall", 2, collections::hgetall),
    ("hlen", 2, collections::hlen),
    ("zadd", -4, collections::zadd),
    ("zpopmin", -2, collections::zpopmin),
    ("zcard", 2, collections::zcard),
    ("zscore", 3, collections::zscore),
];

/// The connection's own commands (they need `ServerInfo`, or end the
/// connection), which `execute` runs itself, with their arity.
const CONNECTION: &[(&str, i32)] = &[
    ("ping", -1),
    ("echo", 2),
    ("quit", -1),
    ("select", 2),
    ("hello", -1),
    ("info", -1),
    ("config", -2),
    ("client", -2),
    ("command", -1),
    ("function", -2),
];

/// Runs the command in `args`, appending its reply to `out`.
pub fn execute(store: &Store, info: &ServerInfo, args: &Args<'_>, out: &mut Vec<u8>) -> Flow {
    let (name, n) = (args.get(0), args.len());
    let is = |lower: &&str| name.eq_ignore_ascii_case(lower.as_bytes());
    let command = COMMANDS.iter().find(|(lower, _, _)| is(lower));
    let known = match command {
        Some(&(lower, arity, _)) => Some((lower, arity)),
        None => CONNECTION.iter().find(|(lower, _)| is(lower)).copied(),
    };
    let Some((lower, arity)) = known else {
        unknown(args, out);
        return Flow::Continue;
    };
    // PING takes one argument at most.
    if !arity_ok(arity, n) || (lower == "ping" && n > 2) {
        arity_error(out, lower);
        return Flow::Continue;
    }
    if let Some((_, _, run)) = command {
        run(store, args, out);
        return Flow::Continue;
    }
    match lower {
        "ping" if n == 1 => reply::simple(out, "PONG"),
        "ping" | "echo" => reply::bulk(out, args.get(1)),
        "quit" => {
            reply::simple(out, "OK");
            return Flow::Close;
        }
        "select" => match args.int(1) {
            Some(0) => reply::simple(out, "OK"),
            Some(_) => reply::error(out, "ERR DB index is out of range"),
            None => reply::not_integer(out),
        },
        "hello" => hello(info, args, out),
        "info" => info_reply(store, info, out),
        "config" => config(args, out),
        "client" => client(args, out),
        // No functions here: `FUNCTION FLUSH` has nothing to do.
        "function" if args.is(1, "flush") => reply::simple(out, "OK"),
        "function" => reply::error(out, "ERR unknown subcommand. Try FUNCTION HELP."),
        // `COMMAND`: redis-cli asks for `COMMAND DOCS` to show hints; none
        // here.
        _ if n > 1 && args.is(1, "count") => {
            reply::int(out, (COMMANDS.len() + CONNECTION.len()) as i64);
        }
        _ => reply::array(out, 0),
    }
    Flow::Continue
}

/// Whether `n` arguments (the name included) fit Redis's `arity`: exactly
/// N, or at least -N when negative.
pub fn arity_ok(arity: i32, n: usize) -> bool {
    match arity {
        a if a >= 0 => n == a as usize,
        a => n >= a.unsigned_abs() as usize,
    }
}

/// Redis's reply to a wrong number of arguments.
pub fn arity_error(out: &mut Vec<u8>, lower: &str) {
    reply::error(
        out,
        &format!("ERR wrong number of arguments for '{lower}' command"),
    );
}

/// Redis's reply to an unknown command: its name and its first arguments.
fn unknown(args: &Args<'_>, out: &mut Vec<u8>) {
    let clip = |b: &[u8]| String::from_utf8_lossy(&b[..b.len().min(128)]).into_owned();
    let mut msg = format!(
        "ERR unknown command '{}', with args beginning with: ",
        clip(args.get(0))
    );
    for arg in args.from(1).take(8) {
        msg.push_str(&format!("'{}' ", clip(arg)));
    }
    // A reply is one line.
    reply::error(out, &msg.replace(['\r', '\n'], " "));
}

fn get(store: &Store, args: &Args<'_>, out: &mut Vec<u8>) {
    // The value leaves the lock shared, and is copied after.
    let value = store.with_key(args.get(1), |k| match k.get() {
        None => Ok(None),
        Some(e) => match &e.value {
            Value::Str(s) => Ok(Some(Arc::clone(s))),
            _ => Err(()),
        },
    });
    match value {
        Ok(Some(s)) => reply::bulk(out, &s),
        Ok(None) => reply::null(out),
        Err(()) => reply::wrong_type(out),
    }
}

/// `SET key value [NX|XX] [GET] [EX s|PX ms|EXAT s|PXAT ms|KEEPTTL]`.
fn set(store: &Store, args: &Args<'_>, out: &mut Vec<u8>) {
    let (mut nx, mut xx, mut get, mut keep_ttl) = (false, false, false, false);
    let mut expires = None;
    let mut i = 3;
    while i < args.len() {
        let unit = match args.get(i).to_ascii_uppercase().as_slice() {
            b"NX" => {
                nx = true;
                None
            }
            b"XX" => {
                xx = true;
                None
            }
            b"GET" => {
                get = true;
                None
            }
            b"KEEPTTL" => {
                keep_ttl = true;
                None
            }
            b"EX" => Some((1000, false)),
            b"PX" => Some((1, false)),
            b"EXAT" => Some((1000, true)),
            b"PXAT" => Some((1, true)),
            _ => return reply::syntax(out),
        };
        if let Some((ms, absolute)) = unit {
            i += 1;
            if i == args.len() || expires.is_some() {
                return reply::syntax(out);
            }
            let Some(n) = args.int(i) else {
                return reply::not_integer(out);
            };
            match deadline(n, ms, absolute) {
                Some(at) => expires = Some(at),
                None => return reply::error(out, "ERR invalid expire time in 'set' command"),
            }
        }
        i += 1;
    }
    if (nx && xx) || (keep_ttl && expires.is_some()) {
        return reply::syntax(out);
    }
    store.with_key(args.get(1), |k| {
        let (exists, string, ttl) = match k.get() {
            None => (false, true, None),
            Some(e) => (true, matches!(e.value, Value::Str(_)), e.expires),
        };
        if get && !string {
            return reply::wrong_type(out);
        }
        if keep_ttl {
            expires = ttl;
        }
        if (nx && exists) || (xx && !exists) {
            // Not set; with GET the old value is still the reply.
            return match k.get().map(|e| &e.value) {
                Some(Value::Str(s)) if get => reply::bulk(out, s),
                _ => reply::null(out),
            };
        }
        let old = k.set(Value::Str(Arc::new(args.get(2).to_vec())), expires);
        match (get, old.map(|e| e.value)) {
            (false, _) => reply::simple(out, "OK"),
            (true, Some(Value::Str(s))) => reply::bulk(out, &s),
            (true, _) => reply::null(out),
        }
    });
}

/// The instant `n` units of `ms` milliseconds from now (or, `absolute`,
/// from the Unix epoch); `None` when not positive or too far.
fn deadline(n: i64, ms: u64, absolute: bool) -> Option<Instant> {
    let total = u64::try_from(n).ok().filter(|&n| n > 0)?.checked_mul(ms)?;
    let now = Instant::now();
    if !absolute {
        return now.checked_add(Duration::from_millis(total));
    }
    let since_epoch = SystemTime::now().duration_since(UNIX_EPOCH).ok()?;
    // A moment already past expires at once.
    let ahead = Duration::from_millis(total).saturating_sub(since_epoch);
    now.checked_add(ahead)
}

fn by(store: &Store, args: &Args<'_>, sign: i64, out: &mut Vec<u8>) {
    match args.int(2).map(|n| n.checked_mul(sign)) {
        Some(Some(n)) => incr_by(store, args.get(1), n, out),
        // `DECRBY k -9223372036854775808`.
        Some(None) => reply::error(out, "ERR decrement would overflow"),
        None => reply::not_integer(out),
    }
}

fn incr_by(store: &Store, key: &[u8], by: i64, out: &mut Vec<u8>) {
    store.with_key(key, |k| {
        let entry = k.get_or_insert(|| Value::Str(Arc::new(b"0".to_vec())));
        let Value::Str(s) = &mut entry.value else {
            return reply::wrong_type(out);
        };
        let Some(n) = int(s) else {
            return reply::not_integer(out);
        };
        let Some(n) = n.checked_add(by) else {
            return reply::error(out, "ERR increment or decrement would overflow");
        };
        *s = Arc::new(n.to_string().into_bytes());
        reply::int(out, n);
    });
}

fn del(store: &Store, args: &Args<'_>, out: &mut Vec<u8>) {
    let n = (args.from(1))
        .filter(|key| store.with_key(key, |k| k.remove()))
        .count();
    reply::int(out, n as i64);
}

fn exists(store: &Store, args: &Args<'_>, out: &mut Vec<u8>) {
    let n = (args.from(1))
        .filter(|key| store.with_key(key, |k| k.get().is_some()))
        .count();
    reply::int(out, n as i64);
}

/// `MSET k v [k v …]`: each key is set atomically, the whole is not (a
/// reader may see some keys set and not yet others).
fn mset(store: &Store, args: &Args<'_>, out: &mut Vec<u8>) {
    if args.len() % 2 == 0 {
        return arity_error(out, "mset");
    }
    for i in (1..args.len()).step_by(2) {
        let value = args.get(i + 1).to_vec();
        store.with_key(args.get(i), |k| k.set(Value::Str(Arc::new(value)), None));
    }
    reply::simple(out, "OK");
}

fn mget(store: &Store, args: &Args<'_>, out: &mut Vec<u8>) {
    reply::array(out, args.len() - 1);
    for key in args.from(1) {
        store.with_key(key, |k| match k.get().map(|e| &e.value) {
            Some(Value::Str(s)) => reply::bulk(out, s),
            _ => reply::null(out),
        });
    }
}

/// `EXPIRE key seconds` / `PEXPIRE key ms`: a deadline not in the future
/// deletes the key.
fn expire(store: &Store, args: &Args<'_>, ms: u64, out: &mut Vec<u8>) {
    let Some(n) = args.int(2) else {
        return reply::not_integer(out);
    };
    let at = match n {
        ..=0 => None,
        _ => match deadline(n, ms, false) {
            Some(at) => Some(at),
            None => {
                let name = String::from_utf8_lossy(args.get(0)).to_ascii_lowercase();
                return reply::error(out, &format!("ERR invalid expire time in '{name}' command"));
            }
        },
    };
    let done = store.with_key(args.get(1), |k| match at {
        None => k.remove(),
        Some(at) => k.set_deadline(Some(at)),
    });
    reply::int(out, done as i64);
}

fn ttl(store: &Store, args: &Args<'_>, ms: u128, out: &mut Vec<u8>) {
    let left = store.with_key(args.get(1), |k| {
        let now = k.now;
        k.get()
            .map(|e| e.expires.map(|at| at.saturating_duration_since(now)))
    });
    let n = match left {
        None => -2,
        Some(None) => -1,
        // Redis rounds TTL to the nearest second.
        Some(Some(left)) => ((left.as_millis() + ms / 2) / ms) as i64,
    };
    reply::int(out, n);
}

fn persist(store: &Store, args: &Args<'_>, out: &mut Vec<u8>) {
    let had = store.with_key(args.get(1), |k| {
        let had = k.get().is_some_and(|e| e.expires.is_some());
        k.set_deadline(None);
        had
    });
    reply::int(out, had as i64);
}

fn type_of(store: &Store, args: &Args<'_>, out: &mut Vec<u8>) {
    let name = store.with_key(args.get(1), |k| match k.get().map(|e| &e.value) {
        None => "none",
        Some(Value::Str(_)) => "string",
        Some(Value::List(_)) => "list",
        Some(Value::Set(_)) => "set",
        Some(Value::Hash(_)) => "hash",
        Some(Value::ZSet(_)) => "zset",
    });
    reply::simple(out, name);
}

fn flush(store: &Store, args: &Args<'_>, out: &mut Vec<u8>) {
    if args.len() > 2 || (args.len() == 2 && !args.is(1, "async") && !args.is(1, "sync")) {
        return reply::syntax(out);
    }
    store.clear();
    reply::simple(out, "OK");
}

/// `HELLO [2]`: the server's description; protocol 3 is not spoken.
fn hello(info: &ServerInfo, args: &Args<'_>, out: &mut Vec<u8>) {
    if args.len() > 1 && args.int(1) != Some(2) {
        return reply::error(out, "NOPROTO unsupported protocol version");
    }
    reply::array(out, 14);
    for (k, v) in [
        ("server", "redis"),
        ("version", "7.0.0"),
        ("proto", "2"),
        ("mode", "standalone"),
        ("role", "master"),
    ] {
        reply::bulk(out, k.as_bytes());
        match k {
            "proto" => reply::int(out, 2),
            _ => reply::bulk(out, v.as_bytes()),
        }
    }
    reply::bulk(out, b"id");
    reply::int(out, i64::from(info.port));
    reply::bulk(out, b"modules");
    reply::array(out, 0);
}

fn info_reply(store: &Store, info: &ServerInfo, out: &mut Vec<u8>) {
    let mut text = format!(
        "# Server\r\nredis_version:7.0.0\r\nredis_mode:standalone\r\n\
         multiplexing_api:pool-manager\r\ntcp_port:{}\r\nuptime_in_seconds:{}\r\n\r\n\
         # Keyspace\r\n",
        info.port,
        info.started.elapsed().as_secs()
    );
    let keys = store.len();
    if keys > 0 {
        text.push_str(&format!(
            "db0:keys={keys},expires={},avg_ttl=0\r\n",
            store.expiring()
        ));
    }
    reply::bulk(out, text.as_bytes());
}

/// `CONFIG GET` answers what `redis-benchmark` asks (persistence is off);
/// other subcommands are refused.
fn config(args: &Args<'_>, out: &mut Vec<u8>) {
    if !args.is(1, "get") || args.len() < 3 {
        let sub = String::from_utf8_lossy(args.get(1)).into_owned();
        return reply::error(
            out,
            &format!("ERR unknown subcommand '{sub}'. Try CONFIG HELP."),
        );
    }
    let known: [(&str, &str); 2] = [("save", ""), ("appendonly", "no")];
    let asked: Vec<_> = (known.iter())
        .filter(|(k, _)| {
            args.from(2)
                .any(|p| p == b"*" || p.eq_ignore_ascii_case(k.as_bytes()))
        })
        .collect();
    reply::array(out, 2 * asked.len());
    for (k, v) in asked {
        reply::bulk(out, k.as_bytes());
        reply::bulk(out, v.as_bytes());
    }
}

/// `CLIENT SETNAME`, `SETINFO` and the like are accepted and ignored.
fn client(args: &Args<'_>, out: &mut Vec<u8>) {
    if args.is(1, "getname") {
        reply::null(out);
    } else if args.is(1, "id") {
        reply::int(out, 1);
    } else if ["setname", "setinfo", "no-evict", "no-touch"]
        .iter()
        .any(|s| args.is(1, s))
    {
        reply::simple(out, "OK");
    } else {
        let sub = String::from_utf8_lossy(args.get(1)).into_owned();
        reply::error(
            out,
            &format!("ERR unknown subcommand '{sub}'. Try CLIENT HELP."),
        );
    }
}
