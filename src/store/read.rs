//! Reads of records, by the writer (through its `Txn`) and beside it (through a
//! [`ReadView`] on a request's thread), and the guard that keeps the second honest.
//!
//! sled's in-memory tree holds a group's batch from `apply_batch` until the flush and
//! fsync that make it durable; a read beside the writer in that window could show a state
//! that is not acknowledged (and, if the flush failed, never will be). So the writer
//! publishes the keys of the group in flight ([`InFlight`]) before it applies the batch and
//! clears them once the group's answers are sent; a [`ReadView`] notes every key and key
//! range it reads, and after reading checks them against the published keys: any overlap
//! (or a failed store) makes the read void, and the caller runs it on the writer instead.

use std::cell::RefCell;
use std::collections::BTreeSet;
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

/// The keys of the group being made durable (empty between groups).
#[derive(Debug, Default)]
pub struct InFlight {
    keys: Mutex<BTreeSet<Vec<u8>>>,
}

impl InFlight {
    /// Before the batch is applied: these keys may show unacknowledged values.
    pub(super) fn publish(&self, keys: impl Iterator<Item = Vec<u8>>) {
        let mut k = self.keys.lock().unwrap_or_else(|e| e.into_inner());
        k.clear();
        k.extend(keys);
    }

    /// After the group's answers are sent.
    pub(super) fn clear(&self) {
        self.keys.lock().unwrap_or_else(|e| e.into_inner()).clear();
    }

    /// Whether any of `touched` is (or falls in a range with) a key in flight.
    fn overlaps(&self, touched: &[Touched]) -> bool {
        let k = self.keys.lock().unwrap_or_else(|e| e.into_inner());
        if k.is_empty() {
            return false;
        }
        touched.iter().any(|t| match t {
            Touched::Key(key) => k.contains(key),
            Touched::Range(lo, hi) => k
                .range::<Vec<u8>, _>((Bound::Included(lo), Bound::Excluded(hi)))
                .next()
                .is_some(),
        })
    }
}

enum Touched {
    Key(Vec<u8>),
    Range(Vec<u8>, Vec<u8>),
}

/// Reads straight from sled on the caller's thread, noting what they touched.
pub struct ReadView<'a> {
    db: &'a sled::Db,
    touched: RefCell<Vec<Touched>>,
}

impl<'a> ReadView<'a> {
    pub(super) fn new(db: &'a sled::Db) -> ReadView<'a> {
        ReadView {
            db,
            touched: RefCell::new(Vec::new()),
        }
    }

    /// Whether what was read may include a group not yet durable.
    pub(super) fn void(&self, inflight: &InFlight) -> bool {
        inflight.overlaps(&self.touched.borrow())
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
