//! Commands of the collection types: lists, sets, hashes and sorted sets.
//! A collection left empty is deleted, as Redis does.

use std::collections::{HashMap, HashSet, VecDeque};

use super::commands::{Args, arity_error};
use super::reply;
use super::store::{Store, Value, ZSet};

/// `LPUSH`/`RPUSH key v [v …]`: the list's new length.
pub fn push(store: &Store, args: &Args<'_>, front: bool, out: &mut Vec<u8>) {
    store.with_key(args.get(1), |k| {
        let entry = k.get_or_insert(|| Value::List(VecDeque::new()));
        let Value::List(list) = &mut entry.value else {
            return reply::wrong_type(out);
        };
        for v in args.from(2) {
            match front {
                true => list.push_front(v.to_vec()),
                false => list.push_back(v.to_vec()),
            }
        }
        reply::int(out, list.len() as i64);
    });
}

/// The optional `count` of the pop commands at argument 2: `Ok(None)`
/// without one; an error reply was written when it is not valid.
fn count(args: &Args<'_>, out: &mut Vec<u8>) -> Result<Option<usize>, ()> {
    match args.len() {
        2 => Ok(None),
        3 => match args.int(2) {
            Some(n) if n >= 0 => Ok(Some(n as usize)),
            Some(_) => {
                reply::error(out, "ERR value is out of range, must be positive");
                Err(())
            }
            None => {
                reply::not_integer(out);
                Err(())
            }
        },
        _ => {
            reply::syntax(out);
            Err(())
        }
    }
}

/// `LPOP`/`RPOP key [count]`.
pub fn pop(store: &Store, args: &Args<'_>, front: bool, out: &mut Vec<u8>) {
    let Ok(count) = count(args, out) else { return };
    store.with_key(args.get(1), |k| {
        let Some(entry) = k.get() else {
            return match count {
                None => reply::null(out),
                Some(_) => out.extend_from_slice(b"*-1\r\n"),
            };
        };
        let Value::List(list) = &mut entry.value else {
            return reply::wrong_type(out);
        };
        let mut take = || match front {
            true => list.pop_front(),
            false => list.pop_back(),
        };
        match count {
            None => match take() {
                Some(v) => reply::bulk(out, &v),
                None => reply::null(out),
            },
            Some(n) => {
                let items: Vec<_> = std::iter::from_fn(take).take(n).collect();
                reply::array(out, items.len());
                items.iter().for_each(|v| reply::bulk(out, v));
            }
        }
        k.drop_if_empty();
    });
}

pub fn llen(store: &Store, args: &Args<'_>, out: &mut Vec<u8>) {
    store.with_key(args.get(1), |k| match k.get().map(|e| &e.value) {
        None => reply::int(out, 0),
        Some(Value::List(l)) => reply::int(out, l.len() as i64),
        Some(_) => reply::wrong_type(out),
    });
}

/// `LRANGE key start stop`, both inclusive, negative from the end.
pub fn lrange(store: &Store, args: &Args<'_>, out: &mut Vec<u8>) {
    let (Some(start), Some(stop)) = (args.int(2), args.int(3)) else {
        return reply::not_integer(out);
    };
    store.with_key(args.get(1), |k| {
        let list = match k.get().map(|e| &e.value) {
            None => return reply::array(out, 0),
            Some(Value::List(l)) => l,
            Some(_) => return reply::wrong_type(out),
        };
        let len = list.len() as i64;
        let from_end = |i: i64| if i < 0 { len + i } else { i };
        let (start, stop) = (from_end(start).max(0), from_end(stop).min(len - 1));
        if start > stop || start >= len {
            return reply::array(out, 0);
        }
        reply::array(out, (stop - start + 1) as usize);
        for v in list.range(start as usize..=stop as usize) {
            reply::bulk(out, v);
        }
    });
}

/// `SADD key m [m …]`: members added.
pub fn sadd(store: &Store, args: &Args<'_>, out: &mut Vec<u8>) {
    store.with_key(args.get(1), |k| {
        let entry = k.get_or_insert(|| Value::Set(HashSet::new()));
        let Value::Set(set) = &mut entry.value else {
            return reply::wrong_type(out);
        };
        let added = args.from(2).filter(|m| set.insert(m.to_vec())).count();
        reply::int(out, added as i64);
    });
}

/// `SPOP key [count]`: members in the hash set's (random) order.
pub fn spop(store: &Store, args: &Args<'_>, out: &mut Vec<u8>) {
    let Ok(count) = count(args, out) else { return };
    store.with_key(args.get(1), |k| {
        let set = match k.get().map(|e| &mut e.value) {
            None if count.is_none() => return reply::null(out),
            None => return reply::array(out, 0),
            Some(Value::Set(s)) => s,
            Some(_) => return reply::wrong_type(out),
        };
        let n = count.unwrap_or(1).min(set.len());
        let popped: Vec<Vec<u8>> = set.iter().take(n).cloned().collect();
        popped.iter().for_each(|m| {
            set.remove(m);
        });
        match count {
            None => reply::bulk(out, &popped[0]),
            Some(_) => {
                reply::array(out, popped.len());
                popped.iter().for_each(|m| reply::bulk(out, m));
            }
        }
        k.drop_if_empty();
    });
}

pub fn scard(store: &Store, args: &Args<'_>, out: &mut Vec<u8>) {
    store.with_key(args.get(1), |k| match k.get().map(|e| &e.value) {
        None => reply::int(out, 0),
        Some(Value::Set(s)) => reply::int(out, s.len() as i64),
        Some(_) => reply::wrong_type(out),
    });
}

pub fn sismember(store: &Store, args: &Args<'_>, out: &mut Vec<u8>) {
    store.with_key(args.get(1), |k| match k.get().map(|e| &e.value) {
        None => reply::int(out, 0),
        Some(Value::Set(s)) => reply::int(out, s.contains(args.get(2)) as i64),
        Some(_) => reply::wrong_type(out),
    });
}

pub fn smembers(store: &Store, args: &Args<'_>, out: &mut Vec<u8>) {
    store.with_key(args.get(1), |k| match k.get().map(|e| &e.value) {
        None => reply::array(out, 0),
        Some(Value::Set(s)) => {
            reply::array(out, s.len());
            s.iter().for_each(|m| reply::bulk(out, m));
        }
        Some(_) => reply::wrong_type(out),
    });
}

/// `HSET key f v [f v …]`: fields added (not those changed).
pub fn hset(store: &Store, args: &Args<'_>, out: &mut Vec<u8>) {
    if args.len() % 2 != 0 {
        return arity_error(out, "hset");
    }
    store.with_key(args.get(1), |k| {
        let entry = k.get_or_insert(|| Value::Hash(HashMap::new()));
        let Value::Hash(hash) = &mut entry.value else {
            return reply::wrong_type(out);
        };
        let mut added = 0;
        for i in (2..args.len()).step_by(2) {
            added += hash
                .insert(args.get(i).to_vec(), args.get(i + 1).to_vec())
                .is_none() as i64;
        }
        reply::int(out, added);
    });
}

pub fn hget(store: &Store, args: &Args<'_>, out: &mut Vec<u8>) {
    store.with_key(args.get(1), |k| match k.get().map(|e| &e.value) {
        None => reply::null(out),
        Some(Value::Hash(h)) => match h.get(args.get(2)) {
            Some(v) => reply::bulk(out, v),
            None => reply::null(out),
        },
        Some(_) => reply::wrong_type(out),
    });
}

pub fn hgetall(store: &Store, args: &Args<'_>, out: &mut Vec<u8>) {
    store.with_key(args.get(1), |k| match k.get().map(|e| &e.value) {
        None => reply::array(out, 0),
        Some(Value::Hash(h)) => {
            reply::array(out, 2 * h.len());
            for (f, v) in h {
                reply::bulk(out, f);
                reply::bulk(out, v);
            }
        }
        Some(_) => reply::wrong_type(out),
    });
}

pub fn hlen(store: &Store, args: &Args<'_>, out: &mut Vec<u8>) {
    store.with_key(args.get(1), |k| match k.get().map(|e| &e.value) {
        None => reply::int(out, 0),
        Some(Value::Hash(h)) => reply::int(out, h.len() as i64),
        Some(_) => reply::wrong_type(out),
    });
}

/// A score argument: a float that is not NaN (`inf`, `-inf` allowed).
fn score(arg: &[u8]) -> Option<f64> {
    let s = std::str::from_utf8(arg).ok()?;
    let f = match s.to_ascii_lowercase().as_str() {
        "inf" | "+inf" => f64::INFINITY,
        "-inf" => f64::NEG_INFINITY,
        _ => s.parse::<f64>().ok().filter(|f| f.is_finite())?,
    };
    Some(f)
}

/// `ZADD key score member [score member …]` (no flags): members added.
pub fn zadd(store: &Store, args: &Args<'_>, out: &mut Vec<u8>) {
    if args.len() % 2 != 0 {
        return reply::syntax(out);
    }
    // Every score is checked before anything changes.
    let mut pairs = Vec::with_capacity((args.len() - 2) / 2);
    for i in (2..args.len()).step_by(2) {
        match score(args.get(i)) {
            Some(s) => pairs.push((s, args.get(i + 1))),
            None => return reply::error(out, "ERR value is not a valid float"),
        }
    }
    store.with_key(args.get(1), |k| {
        let entry = k.get_or_insert(|| Value::ZSet(ZSet::default()));
        let Value::ZSet(z) = &mut entry.value else {
            return reply::wrong_type(out);
        };
        let added = pairs.iter().filter(|(s, m)| z.insert(*s, m)).count();
        reply::int(out, added as i64);
    });
}

/// `ZPOPMIN key [count]`: member, score, member, score, …
pub fn zpopmin(store: &Store, args: &Args<'_>, out: &mut Vec<u8>) {
    let Ok(count) = count(args, out) else { return };
    store.with_key(args.get(1), |k| {
        let z = match k.get().map(|e| &mut e.value) {
            None => return reply::array(out, 0),
            Some(Value::ZSet(z)) => z,
            Some(_) => return reply::wrong_type(out),
        };
        let popped: Vec<_> = std::iter::from_fn(|| z.pop_min())
            .take(count.unwrap_or(1))
            .collect();
        reply::array(out, 2 * popped.len());
        for (member, s) in &popped {
            reply::bulk(out, member);
            reply::score(out, *s);
        }
        k.drop_if_empty();
    });
}

pub fn zcard(store: &Store, args: &Args<'_>, out: &mut Vec<u8>) {
    store.with_key(args.get(1), |k| match k.get().map(|e| &e.value) {
        None => reply::int(out, 0),
        Some(Value::ZSet(z)) => reply::int(out, z.len() as i64),
        Some(_) => reply::wrong_type(out),
    });
}

pub fn zscore(store: &Store, args: &Args<'_>, out: &mut Vec<u8>) {
    store.with_key(args.get(1), |k| match k.get().map(|e| &e.value) {
        Some(Value::ZSet(z)) => match z.score(args.get(2)) {
            Some(s) => reply::score(out, s),
            None => reply::null(out),
        },
        Some(_) => reply::wrong_type(out),
        None => reply::null(out),
    });
}
