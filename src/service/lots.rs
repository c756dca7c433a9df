//! A member's credit lots as records of their own (schema 2): `llot/…/{seq}` in seq order
//! (oldest-first spending is a range read from the front), `llexp/…/{expires}/{seq}` (the
//! lots expired at `now` are a range read) and `llpen/…/{available}/{seq}` for lots made
//! pending (those matured since the account's `matured_at` are a range read). The member
//! record keeps the totals (`loyalty::Account`), so a call reads and writes only the lots
//! it consumes or makes, whatever the member's history.
//!
//! The lot of the member's first ledger entry ([`FIRST_SEQ`]) is kept inside the member
//! record (schema 4), with that entry: an imported member, or one enrolled with a signup
//! bonus, is then one record instead of three, and sled's memory grows with the number of
//! records (BENCHMARKS.md, "Issue 13 §4"). It is still found by seq, first in seq order,
//! and its expiry and pending index keys are records like any lot's.
//!
//! Also the migrations of member records at start: schema 1 (lots inside the member
//! record) to 2, and 3 (the first entry and lot as records of their own) to 4.

use std::ops::{Deref, DerefMut};

use crate::clock::Millis;
use crate::loyalty::{Account, Lot, LotRead, LotStore};
use crate::store::{Read, StoreError, Txn};

use super::keys;
use super::records::{AccountV1, LotRecord};

/// The seq of a member's first ledger entry: that entry and the lot it made live in the
/// member record (`MemberRecord::first_entry`, `first_lot`), not in records of their own.
pub const FIRST_SEQ: u64 = 0;

/// The lots of member `m` of program `p` of tenant `t`, read (and, on the writer's
/// `Txn`, written) through `r`; `first` is the member record's `first_lot`, borrowed
/// (`&mut` to write), so a change to that lot is in the record the caller saves.
pub struct MemberLots<'k, R, F> {
    pub r: R,
    t: &'k str,
    p: &'k str,
    m: &'k str,
    first: F,
}

impl<'k, R, F: Deref<Target = Option<LotRecord>>> MemberLots<'k, R, F> {
    pub fn new(r: R, t: &'k str, p: &'k str, m: &'k str, first: F) -> Self {
        MemberLots { r, t, p, m, first }
    }
}

/// The key just past every key under `prefix` (which ends with the separator).
fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    if let Some(last) = end.last_mut() {
        *last += 1;
    }
    end
}

/// `prefix` + the time key of `at`: every index key under `prefix` for a time < `at`
/// sorts below it.
fn before(prefix: &[u8], at: Millis) -> Vec<u8> {
    let mut k = prefix.to_vec();
    k.extend_from_slice(keys::time_key(at).as_bytes());
    k
}

impl<R: Read, F: Deref<Target = Option<LotRecord>>> MemberLots<'_, R, F> {
    fn read_lot(&self, key: &[u8]) -> Result<Option<Lot>, StoreError> {
        Ok(self.r.get_json::<LotRecord>(key)?.map(Lot::from))
    }

    /// The lots named by the index keys in [`lo`, `hi`) (the seq is the key's last part).
    fn indexed(&self, lo: &[u8], hi: &[u8]) -> Result<Vec<Lot>, StoreError> {
        let mut out = Vec::new();
        for (k, _) in self.r.range(lo, hi, usize::MAX)? {
            let seq = u64::from_str_radix(crate::store::last(&k), 16)
                .map_err(|_| StoreError::Io("corrupt lot index key".into()))?;
            if let Some(l) = self.lot(seq)? {
                out.push(l);
            }
        }
        Ok(out)
    }
}

impl<R: Read, F: Deref<Target = Option<LotRecord>>> LotRead for MemberLots<'_, R, F> {
    type Error = StoreError;

    fn lot(&self, seq: u64) -> Result<Option<Lot>, StoreError> {
        if seq == FIRST_SEQ {
            return Ok(self.first.deref().clone().map(Lot::from));
        }
        self.read_lot(&keys::lot(self.t, self.p, self.m, seq))
    }

    fn first_from(&self, from: u64) -> Result<Option<Lot>, StoreError> {
        if from == FIRST_SEQ {
            if let Some(l) = self.lot(FIRST_SEQ)? {
                return Ok(Some(l));
            }
        }
        let prefix = keys::lot_prefix(self.t, self.p, self.m);
        let lo = keys::lot(self.t, self.p, self.m, from.max(FIRST_SEQ + 1));
        let found = self.r.range(&lo, &prefix_end(&prefix), 1)?;
        found
            .into_iter()
            .next()
            .map(|(_, v)| {
                serde_json::from_slice::<LotRecord>(&v)
                    .map(Lot::from)
                    .map_err(|e| StoreError::Io(format!("corrupt lot record: {e}")))
            })
            .transpose()
    }

    fn expired(&self, now: Millis) -> Result<Vec<Lot>, StoreError> {
        let prefix = keys::lot_expiry_prefix(self.t, self.p, self.m);
        self.indexed(&prefix, &before(&prefix, now.saturating_add(1)))
    }

    fn matured(&self, after: Millis, now: Millis) -> Result<Vec<Lot>, StoreError> {
        let prefix = keys::lot_pending_prefix(self.t, self.p, self.m);
        let lo = before(&prefix, after.saturating_add(1));
        self.indexed(&lo, &before(&prefix, now.saturating_add(1)))
    }

    fn first_expiry(&self) -> Result<Option<Millis>, StoreError> {
        let prefix = keys::lot_expiry_prefix(self.t, self.p, self.m);
        let first = self.r.range(&prefix, &prefix_end(&prefix), 1)?;
        first
            .first()
            .map(|(k, _)| {
                k.get(prefix.len()..prefix.len() + 16)
                    .and_then(|t| std::str::from_utf8(t).ok())
                    .and_then(|t| u64::from_str_radix(t, 16).ok())
                    .and_then(|t| Millis::try_from(t).ok())
                    .ok_or_else(|| StoreError::Io("corrupt lot expiry key".into()))
            })
            .transpose()
    }
}

impl<F: DerefMut<Target = Option<LotRecord>>> LotStore for MemberLots<'_, &mut Txn<'_>, F> {
    fn insert(&mut self, lot: &Lot, pending: bool) -> Result<(), StoreError> {
        let (t, p, m) = (self.t, self.p, self.m);
        if let Some(e) = lot.expires_at {
            self.r
                .put(keys::lot_expiry(t, p, m, e, lot.seq), Vec::new());
        }
        if pending {
            self.r.put(
                keys::lot_pending(t, p, m, lot.available_at, lot.seq),
                Vec::new(),
            );
        }
        self.update(lot)
    }

    fn update(&mut self, lot: &Lot) -> Result<(), StoreError> {
        if lot.seq == FIRST_SEQ {
            *self.first = Some(LotRecord::from(lot));
            return Ok(());
        }
        let k = keys::lot(self.t, self.p, self.m, lot.seq);
        self.r.put_json(k, &LotRecord::from(lot));
        Ok(())
    }

    fn remove(&mut self, lot: &Lot) -> Result<(), StoreError> {
        let (t, p, m) = (self.t, self.p, self.m);
        if let Some(e) = lot.expires_at {
            self.r.delete(keys::lot_expiry(t, p, m, e, lot.seq));
        }
        // Absent when the lot was never pending: deleting it is harmless.
        self.r
            .delete(keys::lot_pending(t, p, m, lot.available_at, lot.seq));
        if lot.seq == FIRST_SEQ {
            *self.first = None;
        } else {
            self.r.delete(keys::lot(t, p, m, lot.seq));
        }
        Ok(())
    }
}

/// Migrate (at most `limit`) schema-1 member records after `cursor` to schema 2: each
/// member's lots become records of their own and its record keeps the totals, matured at
/// `now`. Returns the cursor for the next page (`None`: done). A member already in the
/// schema-2 format is left as it is, so a migration cut short resumes safely.
pub fn migrate_page(
    txn: &mut Txn<'_>,
    cursor: Option<Vec<u8>>,
    limit: usize,
    now: Millis,
) -> Result<Option<Vec<u8>>, StoreError> {
    let prefix = crate::store::prefix(&["lmem"]);
    let (page, next) = txn.scan_page(&prefix, cursor.as_deref(), limit)?;
    for (k, v) in page {
        let mut rec = parse(&v, "member record")?;
        let Some(old) = rec.get("account").filter(|a| a.get("lots").is_some()) else {
            continue;
        };
        let old: AccountV1 = serde_json::from_value(old.clone())
            .map_err(|e| StoreError::Io(format!("corrupt schema-1 member record: {e}")))?;
        let (lots, account) = old.upgrade(now);
        let [t, p, m] = member_key_parts(&k)?;
        let mut first = None;
        let mut store = MemberLots::new(&mut *txn, &t, &p, &m, &mut first);
        for l in &lots {
            store.insert(l, l.available_at > now)?;
        }
        if let Some(f) = first {
            rec["first_lot"] = json_value(&f)?;
        }
        rec["account"] = json_value(&AccountJson(&account))?;
        txn.put_json(k, &rec);
    }
    Ok(next)
}

/// Migrate (at most `limit`) member records after `cursor` from schema 3 to 4: the
/// member's first ledger entry and the lot it made (seq [`FIRST_SEQ`]) move from records
/// of their own into the member record. A member whose first entry and lot are there
/// already (or gone: a spent lot) is left as it is, so a migration cut short resumes.
pub fn migrate_first_page(
    txn: &mut Txn<'_>,
    cursor: Option<Vec<u8>>,
    limit: usize,
    _now: Millis,
) -> Result<Option<Vec<u8>>, StoreError> {
    let prefix = crate::store::prefix(&["lmem"]);
    let (page, next) = txn.scan_page(&prefix, cursor.as_deref(), limit)?;
    for (k, v) in page {
        let [t, p, m] = member_key_parts(&k)?;
        let entry_key = keys::ledger(&t, &p, &m, FIRST_SEQ);
        let lot_key = keys::lot(&t, &p, &m, FIRST_SEQ);
        let entry = txn.get(&entry_key)?;
        let lot = txn.get(&lot_key)?;
        if entry.is_none() && lot.is_none() {
            continue;
        }
        let mut rec: serde_json::Value = parse(&v, "member record")?;
        for (field, key, doc) in [
            ("first_entry", entry_key, entry),
            ("first_lot", lot_key, lot),
        ] {
            if let Some(doc) = doc {
                rec[field] = parse(&doc, field)?;
                txn.delete(key);
            }
        }
        txn.put_json(k, &rec);
    }
    Ok(next)
}

/// The (tenant, program, member) of a member record's key.
fn member_key_parts(k: &[u8]) -> Result<[String; 3], StoreError> {
    let parts: Vec<String> = String::from_utf8_lossy(k)
        .split(crate::store::keys::SEP as char)
        .map(str::to_owned)
        .collect();
    match <[String; 4]>::try_from(parts) {
        Ok([_, t, p, m]) => Ok([t, p, m]),
        Err(_) => Err(StoreError::Io("corrupt member key".into())),
    }
}

fn parse(bytes: &[u8], what: &str) -> Result<serde_json::Value, StoreError> {
    serde_json::from_slice(bytes).map_err(|e| StoreError::Io(format!("corrupt {what}: {e}")))
}

fn json_value<T: serde::Serialize>(v: &T) -> Result<serde_json::Value, StoreError> {
    serde_json::to_value(v).map_err(|e| StoreError::Io(e.to_string()))
}

/// An account in its stored (schema-2) form, for the migration's JSON value.
struct AccountJson<'a>(&'a Account);

impl serde::Serialize for AccountJson<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        super::records::account::serialize(self.0, s)
    }
}
