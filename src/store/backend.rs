//! What a writer job's [`super::Txn`] reads underneath its overlay: the records as the
//! engine last made them durable. Two engines implement it — sled (the embedded default,
//! `sled::Db` itself) and PostgreSQL (`pg::Conn`, inside the group's open transaction) —
//! so the jobs, the overlay and everything above them do not know which one runs.

use super::{Pairs, StoreError};

/// Durable records under the overlay, in key order (keys compare bytewise in both engines).
pub trait Backend {
    /// The value stored under `k`.
    fn get(&self, k: &[u8]) -> Result<Option<Vec<u8>>, StoreError>;
    /// At most `limit` pairs with `lo <= key` (and `key < hi` when `hi` is given), in key
    /// order.
    fn range(&self, lo: &[u8], hi: Option<&[u8]>, limit: usize) -> Result<Pairs, StoreError>;
}

impl Backend for sled::Db {
    fn get(&self, k: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        sled::Tree::get(self, k)
            .map(|o| o.map(|v| v.to_vec()))
            .map_err(|e| StoreError::Io(e.to_string()))
    }

    fn range(&self, lo: &[u8], hi: Option<&[u8]>, limit: usize) -> Result<Pairs, StoreError> {
        let iter = match hi {
            Some(hi) if lo >= hi => return Ok(Vec::new()),
            Some(hi) => sled::Tree::range(self, lo..hi),
            None => sled::Tree::range(self, lo..),
        };
        let mut out = Vec::new();
        for kv in iter.take(limit) {
            let (k, v) = kv.map_err(|e| StoreError::Io(e.to_string()))?;
            out.push((k.to_vec(), v.to_vec()));
        }
        Ok(out)
    }
}

/// The first key after every key that starts with `prefix` (`None`: there is none, the
/// prefix is all 0xFF bytes).
pub fn prefix_end(prefix: &[u8]) -> Option<Vec<u8>> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < u8::MAX {
            end.push(last + 1);
            return Some(end);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::prefix_end;

    #[test]
    fn prefix_end_is_the_first_key_past_the_prefix() {
        assert_eq!(prefix_end(b"live\x1f"), Some(b"live\x20".to_vec()));
        assert_eq!(prefix_end(b"a\xff\xff"), Some(b"b".to_vec()));
        assert_eq!(prefix_end(b"\xff"), None);
        assert_eq!(prefix_end(b""), None);
    }
}
