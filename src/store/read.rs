//! Reads of records, by the writer (through its `Txn`) and beside it (through a
//! [`ReadView`] on a request's thread), and the guard that keeps the second honest.
//!
//! sled's in-memory tree holds a group's batch from `apply_batch` until the flush and
//! fsync that make it durable; a read beside the writer in that window could show a state
//! that is not acknowledged (and, if the flush failed, never will be). So the writer
//! publishes the keys of each group ([`InFlight`]) before it applies the batch and marks
//! the group settled once its answers are sent; a [`ReadView`] notes every key and key
//! range it reads, and after reading checks them against the keys of the groups it may
//! have seen partly (the one unsettled when it started and every one since): any overlap
//! (or a failed store) makes the read void, and the caller runs it on the writer instead.

use std::cell::RefCell;
use std::collections::{BTreeSet, VecDeque};
use std::ops::Bound;
use std::sync::Mutex;

use super::{decode_u64, Pairs, StoreError};

/// Record reads, the same on the writer's `Txn` and on a [`ReadView`].
pub trait Read {
    fn get(&self, k: &[u8]) -> Result<Option<Vec<u8>>, StoreError>;

    /// At most `limit` (key, value) pairs with `lo` ≤ key < `hi`, in key order.
    fn range(&self, lo: &[u8], hi: &[u8], limit: usize) -> Result<Pairs, StoreError>;

    fn get_json<T: serde::de::DeserializeOwned>(&self, k: &[u8]) -> Result<Option<T>, StoreError> {
        match self.get(k)? {
            None => Ok(None),
            Some(v) => serde_json::from_slice(&v)
                .map(Some)
                .map_err(|e| StoreError::Io(format!("corrupt record: {e}"))),
        }
    }

    fn get_u64(&self, k: &[u8]) -> Result<u64, StoreError> {
        Ok(self.get(k)?.and_then(|v| decode_u64(&v)).unwrap_or(0))
    }
}

impl<T: Read + ?Sized> Read for &T {
    fn get(&self, k: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        (**self).get(k)
    }
    fn range(&self, lo: &[u8], hi: &[u8], limit: usize) -> Result<Pairs, StoreError> {
        (**self).range(lo, hi, limit)
    }
}

impl<T: Read + ?Sized> Read for &mut T {
    fn get(&self, k: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        (**self).get(k)
    }
    fn range(&self, lo: &[u8], hi: &[u8], limit: usize) -> Result<Pairs, StoreError> {
        (**self).range(lo, hi, limit)
    }
}

/// The groups a read beside the writer may have seen partly: the writer numbers each group
/// as it publishes its keys (before applying its batch) and marks it settled once its
/// answers are sent. A read notes the first group it could see unsettled when it starts;
/// afterwards it is void if it touched a key of that group or of any group published since,
/// settled or not: one read of several records could otherwise straddle a batch (the
/// member record from before it, a lot from after it) and show a state that never was.
#[derive(Debug, Default)]
pub struct InFlight {
    groups: Mutex<Groups>,
}

/// How many recent groups' keys are kept; a read that spans more is void.
const RECENT: usize = 16;

#[derive(Debug, Default)]
struct Groups {
    /// Groups published so far (the last one's number).
    published: u64,
    /// Whether the last group's answers are still to be sent (or its flush failed).
    open: bool,
    /// The last [`RECENT`] groups' numbers and keys, oldest first.
    recent: VecDeque<(u64, BTreeSet<Vec<u8>>)>,
}

impl InFlight {
    /// Before the batch is applied: these keys may show unacknowledged values.
    pub(super) fn publish(&self, keys: impl Iterator<Item = Vec<u8>>) {
        let mut g = self.groups.lock().unwrap_or_else(|e| e.into_inner());
        g.published += 1;
        g.open = true;
        let n = g.published;
        g.recent.push_back((n, keys.collect()));
        if g.recent.len() > RECENT {
            g.recent.pop_front();
        }
    }

    /// After the group's answers are sent.
    pub(super) fn clear(&self) {
        self.groups.lock().unwrap_or_else(|e| e.into_inner()).open = false;
    }

    /// The first group a read starting now may see partly: the open one, or the next.
    pub(super) fn first_unsettled(&self) -> u64 {
        let g = self.groups.lock().unwrap_or_else(|e| e.into_inner());
        g.published + u64::from(!g.open)
    }

    /// Whether any of `touched` is (or falls in a range with) a key of group `from` or a
    /// later one; true as well when one of those is no longer remembered.
    fn overlaps(&self, from: u64, touched: &[Touched]) -> bool {
        let g = self.groups.lock().unwrap_or_else(|e| e.into_inner());
        let oldest = g.recent.front().map_or(g.published + 1, |r| r.0);
        if from < oldest && from <= g.published {
            return true;
        }
        g.recent
            .iter()
            .filter(|(n, _)| *n >= from)
            .any(|(_, keys)| touched.iter().any(|t| t.meets(keys)))
    }
}

enum Touched {
    Key(Vec<u8>),
    Range(Vec<u8>, Vec<u8>),
}

impl Touched {
    /// Whether this key is in `keys`, or this range holds one of them.
    fn meets(&self, keys: &BTreeSet<Vec<u8>>) -> bool {
        match self {
            Touched::Key(key) => keys.contains(key),
            Touched::Range(lo, hi) => keys
                .range::<Vec<u8>, _>((Bound::Included(lo), Bound::Excluded(hi)))
                .next()
                .is_some(),
        }
    }
}

/// Reads straight from sled on the caller's thread, noting what they touched.
pub struct ReadView<'a> {
    db: &'a sled::Db,
    /// The first group this read may see partly ([`InFlight::first_unsettled`]).
    from: u64,
    touched: RefCell<Vec<Touched>>,
}

impl<'a> ReadView<'a> {
    pub(super) fn new(db: &'a sled::Db, inflight: &InFlight) -> ReadView<'a> {
        ReadView {
            db,
            from: inflight.first_unsettled(),
            touched: RefCell::new(Vec::new()),
        }
    }

    /// Whether what was read may include a group not yet durable, or straddle one.
    pub(super) fn void(&self, inflight: &InFlight) -> bool {
        inflight.overlaps(self.from, &self.touched.borrow())
    }
}

impl Read for ReadView<'_> {
    fn get(&self, k: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        self.touched.borrow_mut().push(Touched::Key(k.to_vec()));
        self.db
            .get(k)
            .map(|o| o.map(|v| v.to_vec()))
            .map_err(|e| StoreError::Io(e.to_string()))
    }

    fn range(&self, lo: &[u8], hi: &[u8], limit: usize) -> Result<Pairs, StoreError> {
        self.touched
            .borrow_mut()
            .push(Touched::Range(lo.to_vec(), hi.to_vec()));
        let mut out = Vec::new();
        for kv in self.db.range(lo..hi).take(limit) {
            let (k, v) = kv.map_err(|e| StoreError::Io(e.to_string()))?;
            out.push((k.to_vec(), v.to_vec()));
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(k: &str) -> Vec<Touched> {
        vec![Touched::Key(k.as_bytes().to_vec())]
    }

    fn group(f: &InFlight, keys: &[&str]) {
        f.publish(keys.iter().map(|k| k.as_bytes().to_vec()));
    }

    #[test]
    fn a_read_is_void_if_a_group_it_may_have_straddled_touched_its_keys() {
        let f = InFlight::default();
        let from = f.first_unsettled();
        assert!(!f.overlaps(from, &key("m1")), "nothing published");
        // A group published, applied and settled while the read ran: the read may hold
        // m1 from before it and a lot from after it.
        group(&f, &["m1", "lot1"]);
        f.clear();
        assert!(f.overlaps(from, &key("m1")));
        assert!(!f.overlaps(from, &key("m2")));
        // A read that starts after that group settled sees all of it or none.
        let later = f.first_unsettled();
        assert!(!f.overlaps(later, &key("m1")));
        // One that starts while a group is open may see part of it, settled or not.
        group(&f, &["m2"]);
        let during = f.first_unsettled();
        f.clear();
        assert!(f.overlaps(during, &key("m2")));
        assert!(f.overlaps(during, &[Touched::Range(b"m".to_vec(), b"n".to_vec())]));
    }

    #[test]
    fn a_read_that_spans_more_groups_than_are_kept_is_void() {
        let f = InFlight::default();
        let from = f.first_unsettled();
        for _ in 0..=RECENT {
            group(&f, &["other"]);
            f.clear();
        }
        assert!(f.overlaps(from, &key("m1")));
        assert!(!f.overlaps(f.first_unsettled(), &key("m1")));
    }
}
