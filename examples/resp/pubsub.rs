//! Pub/sub (RESP2, as Redis 7.0 answers): `SUBSCRIBE`, `UNSUBSCRIBE`,
//! `PSUBSCRIBE`, `PUNSUBSCRIBE`, `PUBLISH`, `PUBSUB CHANNELS|NUMSUB|NUMPAT`.
//!
//! A subscriber is its connection's [`Handle`]: `PUBLISH`, on whichever
//! worker reads it, sends the message to every subscriber through its
//! handle and returns at once. A subscriber that does not keep up — more
//! than the server's `--pubsub-limit-bytes` waiting for it
//! (`max_outbound_bytes`, so [`SendError::Full`]) — is disconnected and
//! counted, as Redis's `client-output-buffer-limit pubsub` hard limit does;
//! the publisher and the other subscribers carry on.

use std::collections::{BTreeSet, HashMap};
use std::io::Write;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use pool_manager::{Handle, SendError};

use super::commands::Args;
use super::reply;

/// Channel (or pattern) → its subscribers by connection id.
type Listeners = Mutex<HashMap<Vec<u8>, HashMap<u64, Handle>>>;

/// Who listens to what.
#[derive(Default)]
pub struct Broker {
    channels: Listeners,
    patterns: Listeners,
    /// Subscribers disconnected for not keeping up.
    pub dropped: AtomicU64,
}

/// A connection's subscriptions.
#[derive(Default)]
pub struct Subscriptions {
    channels: BTreeSet<Vec<u8>>,
    patterns: BTreeSet<Vec<u8>>,
}

impl Subscriptions {
    /// Subscribed to anything: RESP2's subscribed mode.
    pub fn active(&self) -> bool {
        !self.channels.is_empty() || !self.patterns.is_empty()
    }
}

/// The commands of this module, lower case, with Redis's arity.
pub const COMMANDS: &[(&str, i32)] = &[
    ("subscribe", -2),
    ("unsubscribe", -1),
    ("psubscribe", -2),
    ("punsubscribe", -1),
    ("publish", 3),
    ("pubsub", -2),
];

/// The commands a subscribed RESP2 connection may run.
pub fn allowed_while_subscribed(lower: &str) -> bool {
    matches!(
        lower,
        "subscribe" | "unsubscribe" | "psubscribe" | "punsubscribe" | "ping" | "quit" | "reset"
    )
}

impl Broker {
    /// Runs (un)subscription command `lower` (`subscribe`, `psubscribe`,
    /// `unsubscribe`, `punsubscribe`) for the connection `me` (its handle)
    /// with subscriptions `subs`.
    pub fn execute(
        &self,
        lower: &str,
        args: &Args<'_>,
        me: &Handle,
        subs: &mut Subscriptions,
        out: &mut Vec<u8>,
    ) {
        let (listeners, mine, others) = if lower.starts_with('p') {
            (&self.patterns, &mut subs.patterns, subs.channels.len())
        } else {
            (&self.channels, &mut subs.channels, subs.patterns.len())
        };
        let count = |mine: &BTreeSet<Vec<u8>>| (mine.len() + others) as i64;
        if lower.ends_with("unsubscribe") {
            let names = names(args, mine);
            if names.is_empty() {
                confirm(out, lower, None, count(mine));
            }
            for name in names {
                if mine.remove(&name) {
                    remove(listeners, &name, me.id());
                }
                confirm(out, lower, Some(&name), count(mine));
            }
        } else {
            for name in args.from(1) {
                if mine.insert(name.to_vec()) {
                    add(listeners, name, me);
                }
                confirm(out, lower, Some(name), count(mine));
            }
        }
    }

    /// Sends `message` to every subscriber of `channel` (and of a pattern
    /// it matches); how many got it.
    pub fn publish(&self, channel: &[u8], message: &[u8]) -> usize {
        let mut frame = Vec::with_capacity(message.len() + channel.len() + 32);
        reply::array(&mut frame, 3);
        reply::bulk(&mut frame, b"message");
        reply::bulk(&mut frame, channel);
        reply::bulk(&mut frame, message);
        let mut sent = 0;
        let mut slow = Vec::new();
        if let Some(subscribers) = self.channels.lock().unwrap().get(channel) {
            for handle in subscribers.values() {
                self.deliver(handle, &frame, &mut sent, &mut slow);
            }
        }
        {
            let patterns = self.patterns.lock().unwrap();
            for (pattern, subscribers) in patterns.iter() {
                if !glob(pattern, channel) {
                    continue;
                }
                let mut frame = Vec::with_capacity(message.len() + channel.len() + 48);
                reply::array(&mut frame, 4);
                reply::bulk(&mut frame, b"pmessage");
                reply::bulk(&mut frame, pattern);
                reply::bulk(&mut frame, channel);
                reply::bulk(&mut frame, message);
                for handle in subscribers.values() {
                    self.deliver(handle, &frame, &mut sent, &mut slow);
                }
            }
        }
        for handle in slow {
            // Redis's hard limit: the subscriber is disconnected at once;
            // its subscriptions go with its connection (`forget`).
            handle.close();
        }
        sent
    }

    fn deliver(&self, handle: &Handle, frame: &[u8], sent: &mut usize, slow: &mut Vec<Handle>) {
        match handle.send(frame) {
            Ok(()) => *sent += 1,
            Err(SendError::Full(_)) => {
                self.dropped.fetch_add(1, Relaxed);
                log::info!("subscriber {} too slow: disconnected", handle.id());
                slow.push(handle.clone());
            }
            // Closing: not counted as a receiver.
            Err(_) => {}
        }
    }

    /// `PUBSUB CHANNELS [pattern]`, `NUMSUB [channel …]`, `NUMPAT`.
    pub fn pubsub(&self, args: &Args<'_>, out: &mut Vec<u8>) {
        if args.is(1, "channels") && args.len() <= 3 {
            let channels = self.channels.lock().unwrap();
            let names: Vec<&Vec<u8>> = channels
                .keys()
                .filter(|c| args.len() < 3 || glob(args.get(2), c))
                .collect();
            reply::array(out, names.len());
            for name in names {
                reply::bulk(out, name);
            }
        } else if args.is(1, "numsub") {
            let channels = self.channels.lock().unwrap();
            reply::array(out, 2 * (args.len() - 2));
            for channel in args.from(2) {
                reply::bulk(out, channel);
                reply::int(out, channels.get(channel).map_or(0, |s| s.len()) as i64);
            }
        } else if args.is(1, "numpat") && args.len() == 2 {
            reply::int(out, self.patterns.lock().unwrap().len() as i64);
        } else {
            let sub = String::from_utf8_lossy(args.get(1)).into_owned();
            reply::error(
                out,
                &format!("ERR unknown subcommand '{sub}'. Try PUBSUB HELP."),
            );
        }
    }

    /// The connection `id` closed: its subscriptions go.
    pub fn forget(&self, id: u64, subs: &Subscriptions) {
        for channel in &subs.channels {
            remove(&self.channels, channel, id);
        }
        for pattern in &subs.patterns {
            remove(&self.patterns, pattern, id);
        }
    }
}

/// The names an `UNSUBSCRIBE` names: its arguments, or (none) all.
fn names(args: &Args<'_>, all: &BTreeSet<Vec<u8>>) -> Vec<Vec<u8>> {
    if args.len() > 1 {
        args.from(1).map(<[u8]>::to_vec).collect()
    } else {
        all.iter().cloned().collect()
    }
}

fn add(map: &Listeners, name: &[u8], me: &Handle) {
    map.lock()
        .unwrap()
        .entry(name.to_vec())
        .or_default()
        .insert(me.id(), me.clone());
}

fn remove(map: &Listeners, name: &[u8], id: u64) {
    let mut map = map.lock().unwrap();
    if let Some(subscribers) = map.get_mut(name) {
        subscribers.remove(&id);
        if subscribers.is_empty() {
            map.remove(name);
        }
    }
}

/// `*3 kind name count`, the reply to each (un)subscription.
fn confirm(out: &mut Vec<u8>, kind: &str, name: Option<&[u8]>, count: i64) {
    reply::array(out, 3);
    reply::bulk(out, kind.as_bytes());
    match name {
        Some(name) => reply::bulk(out, name),
        None => reply::null(out),
    }
    reply::int(out, count);
}

/// `PING` in subscribed mode: `*2 pong <arg or "">`.
pub fn ping(args: &Args<'_>, out: &mut Vec<u8>) {
    reply::array(out, 2);
    reply::bulk(out, b"pong");
    let arg: &[u8] = if args.len() > 1 { args.get(1) } else { b"" };
    reply::bulk(out, arg);
}

/// The refusal of another command in subscribed mode, as Redis 7.0 words it.
pub fn refuse(out: &mut Vec<u8>, lower: &str) {
    let mut msg = Vec::new();
    let _ = write!(
        msg,
        "ERR Can't execute '{lower}': only (P|S)SUBSCRIBE / (P|S)UNSUBSCRIBE / PING / QUIT / RESET are allowed in this context"
    );
    reply::error(out, &String::from_utf8_lossy(&msg));
}

/// Redis's glob (`stringmatchlen`): `*`, `?`, `[…]` (ranges, `^` to
/// negate), `\` to escape.
pub fn glob(pattern: &[u8], s: &[u8]) -> bool {
    let (mut p, mut i) = (0, 0);
    // Where to resume after a `*` that matched too little.
    let mut star: Option<(usize, usize)> = None;
    while i < s.len() {
        if p < pattern.len() {
            match pattern[p] {
                b'*' => {
                    star = Some((p, i));
                    p += 1;
                    continue;
                }
                b'?' => {
                    p += 1;
                    i += 1;
                    continue;
                }
                b'[' => {
                    if let Some((matched, end)) = class(&pattern[p..], s[i]) {
                        if matched {
                            p += end;
                            i += 1;
                            continue;
                        }
                    }
                }
                b'\\' if p + 1 < pattern.len() && pattern[p + 1] == s[i] => {
                    p += 2;
                    i += 1;
                    continue;
                }
                b'\\' if p + 1 < pattern.len() => {}
                c if c == s[i] => {
                    p += 1;
                    i += 1;
                    continue;
                }
                _ => {}
            }
        }
        match star {
            Some((sp, si)) => {
                p = sp + 1;
                i = si + 1;
                star = Some((sp, si + 1));
            }
            None => return false,
        }
    }
    pattern[p..].iter().all(|&c| c == b'*')
}

/// A `[…]` class at the start of `pattern` against `c`: whether it
/// matched, and the class's length. `None` if it never closes (then `[`
/// is taken as a class to the end, as Redis does).
fn class(pattern: &[u8], c: u8) -> Option<(bool, usize)> {
    let mut j = 1;
    let negate = pattern.get(j) == Some(&b'^');
    if negate {
        j += 1;
    }
    let mut matched = false;
    while j < pattern.len() && pattern[j] != b']' {
        if pattern[j] == b'\\' && j + 1 < pattern.len() {
            matched |= pattern[j + 1] == c;
            j += 2;
        } else if j + 2 < pattern.len() && pattern[j + 1] == b'-' && pattern[j + 2] != b']' {
            let (a, b) = (
                pattern[j].min(pattern[j + 2]),
                pattern[j].max(pattern[j + 2]),
            );
            matched |= (a..=b).contains(&c);
            j += 3;
        } else {
            matched |= pattern[j] == c;
            j += 1;
        }
    }
    let end = (j + 1).min(pattern.len());
    Some((matched != negate, end))
}

#[cfg(test)]
mod tests {
    use super::glob;

    #[test]
    fn globs_match_as_redis_does() {
        for (p, s, want) in [
            ("*", "anything", true),
            ("news.*", "news.tech", true),
            ("news.*", "sports.x", false),
            ("h?llo", "hello", true),
            ("h?llo", "hllo", false),
            ("h[ae]llo", "hallo", true),
            ("h[^e]llo", "hello", false),
            ("h[a-c]llo", "hbllo", true),
            ("a*b*c", "axxbyyc", true),
            ("a*b*c", "axxbyy", false),
            ("a\\*", "a*", true),
            ("a\\*", "ab", false),
            ("", "", true),
        ] {
            assert_eq!(glob(p.as_bytes(), s.as_bytes()), want, "{p} {s}");
        }
    }
}
