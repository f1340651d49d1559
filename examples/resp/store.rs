//! The keyspace: a hash map split into shards, each behind its own
//! `parking_lot` mutex, so that handlers on many workers seldom wait for one
//! another.
//!
//! Keys expire lazily (a key past its deadline is removed when its shard is
//! next locked) and actively: every shard keeps a heap of deadlines, and
//! whoever locks the shard removes what has expired first, so memory of
//! expired keys is given back even if nobody reads them.

use std::cmp::{Ordering, Reverse};
use std::collections::hash_map::RandomState;
use std::collections::{BTreeSet, BinaryHeap, HashMap, HashSet, VecDeque};
use std::hash::BuildHasher;
use std::sync::Arc;
use std::time::Instant;

use parking_lot::{Mutex, MutexGuard};

/// Shards of the keyspace; a power of two.
const SHARDS: usize = 64;

/// A value of one of Redis's types.
#[derive(Debug)]
pub enum Value {
    /// A string (also what `INCR` counts in); shared, so that a `GET` takes
    /// it out of the store's lock without copying it (an 8 MiB value is
    /// copied into the reply outside the lock, not while other clients of
    /// the shard wait).
    Str(Arc<Vec<u8>>),
    /// A list (`LPUSH`, `RPOP`, `LRANGE`, …).
    List(VecDeque<Vec<u8>>),
    /// A set (`SADD`, `SPOP`, …).
    Set(HashSet<Vec<u8>>),
    /// A hash (`HSET`, `HGET`, …).
    Hash(HashMap<Vec<u8>, Vec<u8>>),
    /// A sorted set (`ZADD`, `ZPOPMIN`, …).
    ZSet(ZSet),
}

/// A key's value and its deadline, if any.
#[derive(Debug)]
pub struct Entry {
    /// The value.
    pub value: Value,
    /// When the key expires.
    pub expires: Option<Instant>,
}

#[derive(Default)]
struct Shard {
    map: HashMap<Vec<u8>, Entry>,
    /// Deadlines set on keys of this shard, soonest first. An element whose
    /// key has since been deleted or given another deadline is stale and
    /// skipped.
    deadlines: BinaryHeap<Reverse<(Instant, Vec<u8>)>>,
}

impl Shard {
    /// Removes the keys whose deadline has passed.
    fn expire(&mut self, now: Instant) {
        while let Some(Reverse((at, _))) = self.deadlines.peek() {
            if *at > now {
                break;
            }
            let Some(Reverse((at, key))) = self.deadlines.pop() else {
                break;
            };
            if self.map.get(&key).is_some_and(|e| e.expires == Some(at)) {
                self.map.remove(&key);
            }
        }
    }
}

/// The whole keyspace.
pub struct Store {
    shards: Box<[Mutex<Shard>]>,
    hasher: RandomState,
}

impl Store {
    /// An empty keyspace.
    pub fn new() -> Store {
        Store {
            shards: (0..SHARDS).map(|_| Mutex::default()).collect(),
            hasher: RandomState::new(),
        }
    }

    /// Runs `f` on `key`'s place in the keyspace, with its shard locked.
    pub fn with_key<R>(&self, key: &[u8], f: impl FnOnce(&mut Key<'_>) -> R) -> R {
        let shard = (self.hasher.hash_one(key) as usize) & (SHARDS - 1);
        let now = Instant::now();
        let mut shard = self.shards[shard].lock();
        shard.expire(now);
        f(&mut Key { shard, key, now })
    }

    /// Keys that have not expired.
    pub fn len(&self) -> usize {
        let now = Instant::now();
        (self.shards.iter())
            .map(|s| {
                let mut s = s.lock();
                s.expire(now);
                s.map.len()
            })
            .sum()
    }

    /// Keys with a deadline, of those that have not expired.
    pub fn expiring(&self) -> usize {
        (self.shards.iter())
            .map(|s| {
                s.lock()
                    .map
                    .values()
                    .filter(|e| e.expires.is_some())
                    .count()
            })
            .sum()
    }

    /// Deletes every key.
    pub fn clear(&self) {
        for shard in self.shards.iter() {
            // Dropped after the lock is released.
            let old = std::mem::take(&mut *shard.lock());
            drop(old);
        }
    }
}

/// One key's place in a locked shard.
pub struct Key<'a> {
    shard: MutexGuard<'a, Shard>,
    key: &'a [u8],
    /// When the shard was locked: the time deadlines are judged by.
    pub now: Instant,
}

impl Key<'_> {
    /// The key's entry, if it exists.
    pub fn get(&mut self) -> Option<&mut Entry> {
        self.shard.map.get_mut(self.key)
    }

    /// Sets the key to `value` with deadline `expires`; the old entry.
    pub fn set(&mut self, value: Value, expires: Option<Instant>) -> Option<Entry> {
        let old = (self.shard.map).insert(self.key.to_vec(), Entry { value, expires });
        // After the insert: a rebuild of the heap reads the map.
        self.note_deadline(expires);
        old
    }

    /// The key's entry, created with `make()` and no deadline if absent.
    pub fn get_or_insert(&mut self, make: impl FnOnce() -> Value) -> &mut Entry {
        let key = self.key;
        (self.shard.map.entry(key.to_vec())).or_insert_with(|| Entry {
            value: make(),
            expires: None,
        })
    }

    /// Deletes the key; whether it existed.
    pub fn remove(&mut self) -> bool {
        self.shard.map.remove(self.key).is_some()
    }

    /// Gives an existing key the deadline `expires`; whether it exists.
    pub fn set_deadline(&mut self, expires: Option<Instant>) -> bool {
        let Some(entry) = self.shard.map.get_mut(self.key) else {
            return false;
        };
        entry.expires = expires;
        self.note_deadline(expires);
        true
    }

    /// Deletes the key if its value is an empty collection, as Redis does.
    pub fn drop_if_empty(&mut self) {
        let empty = self.get().is_some_and(|e| match &e.value {
            Value::Str(_) => false,
            Value::List(l) => l.is_empty(),
            Value::Set(s) => s.is_empty(),
            Value::Hash(h) => h.is_empty(),
            Value::ZSet(z) => z.is_empty(),
        });
        if empty {
            self.remove();
        }
    }

    fn note_deadline(&mut self, expires: Option<Instant>) {
        let Some(at) = expires else { return };
        let shard = &mut *self.shard;
        shard.deadlines.push(Reverse((at, self.key.to_vec())));
        // Keys overwritten with other deadlines leave stale elements behind:
        // rebuild from the live keys when they are most of the heap.
        if shard.deadlines.len() > 64 + 2 * shard.map.len() {
            shard.deadlines = (shard.map.iter())
                .filter_map(|(k, e)| e.expires.map(|at| Reverse((at, k.clone()))))
                .collect();
        }
    }
}

/// A score, ordered as Redis orders them (no NaN is ever stored).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Score(pub f64);

impl Eq for Score {}

impl PartialOrd for Score {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Score {
    fn cmp(&self, other: &Self) -> Ordering {
        self.0.total_cmp(&other.0)
    }
}

/// A sorted set: members by score (then by member), and each member's
/// score.
#[derive(Debug, Default)]
pub struct ZSet {
    by_score: BTreeSet<(Score, Vec<u8>)>,
    scores: HashMap<Vec<u8>, Score>,
}

impl ZSet {
    /// Sets `member`'s score; whether the member is new.
    pub fn insert(&mut self, score: f64, member: &[u8]) -> bool {
        let score = Score(score);
        match self.scores.insert(member.to_vec(), score) {
            Some(old) => {
                self.by_score.remove(&(old, member.to_vec()));
                self.by_score.insert((score, member.to_vec()));
                false
            }
            None => {
                self.by_score.insert((score, member.to_vec()));
                true
            }
        }
    }

    /// Removes and returns the member with the lowest score.
    pub fn pop_min(&mut self) -> Option<(Vec<u8>, f64)> {
        let (score, member) = self.by_score.pop_first()?;
        self.scores.remove(&member);
        Some((member, score.0))
    }

    /// `member`'s score.
    pub fn score(&self, member: &[u8]) -> Option<f64> {
        self.scores.get(member).map(|s| s.0)
    }

    /// Members.
    pub fn len(&self) -> usize {
        self.scores.len()
    }

    /// Whether there are no members.
    pub fn is_empty(&self) -> bool {
        self.scores.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn keys_expire_without_being_read() {
        let store = Store::new();
        let later = Instant::now() + Duration::from_secs(60);
        store.with_key(b"later", |k| {
            k.set(Value::Str(Arc::new(vec![1])), Some(later))
        });
        // Deadlines already past when set: the next lock of each shard
        // removes them.
        let past = Instant::now();
        for i in 0..100u32 {
            store.with_key(&i.to_be_bytes(), |k| {
                k.set(Value::Str(Arc::new(vec![1])), Some(past))
            });
        }
        store.with_key(b"stays", |k| k.set(Value::Str(Arc::new(vec![1])), None));
        assert_eq!(store.len(), 2);
        assert_eq!(store.expiring(), 1);
        store.with_key(b"later", |k| k.remove());
        assert_eq!(store.expiring(), 0);
    }

    #[test]
    fn a_sorted_set_pops_lowest_score_then_lowest_member() {
        let mut z = ZSet::default();
        assert!(z.insert(2.0, b"b"));
        assert!(z.insert(1.0, b"c"));
        assert!(z.insert(1.0, b"a"));
        assert!(!z.insert(3.0, b"c"));
        assert_eq!(z.pop_min(), Some((b"a".to_vec(), 1.0)));
        assert_eq!(z.pop_min(), Some((b"b".to_vec(), 2.0)));
        assert_eq!(z.score(b"c"), Some(3.0));
        assert_eq!(z.len(), 1);
    }
}
