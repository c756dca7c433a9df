//! Small records kept many to a record: a member's identifiers (`lidb`) and enrollment
//! answers (`lenrb`) live in buckets by the hash of their entry name, each bucket one JSON
//! object from entry name to value. sled's memory grows with its number of records, not
//! their size (BENCHMARKS.md, "Issue 13 §4 again"), and these were two of the five records
//! an imported member cost. 2^18 buckets a program: at a million members a bucket holds a
//! few entries (~200 bytes); a program of a hundred members still has one entry a record.
//!
//! Writes read the bucket, change it and write it back inside the job; reads beside the
//! writer see a bucket as one record (in flight while a group that changes it is made
//! durable), so they never see half a change.

use std::collections::BTreeMap;

use crate::store::{Read, StoreError, Txn};

use super::keys;

/// Buckets per program. Part of the record layout: changing it moves every entry.
pub const BUCKETS: u64 = 1 << 18;

/// A bucket's entries, as stored.
type Packed = BTreeMap<String, String>;

/// The bucket of an entry name, as a key component (5 hex digits).
pub fn bucket(entry: &str) -> String {
    use crate::store::codeindex;
    let b = codeindex::bucket_of(codeindex::hash(entry.as_bytes()), BUCKETS);
    format!("{b:05x}")
}

fn decode(v: &[u8]) -> Result<Packed, StoreError> {
    serde_json::from_slice(v).map_err(|e| StoreError::Io(format!("corrupt packed record: {e}")))
}

fn get<R: Read>(r: &R, key: &[u8], entry: &str) -> Result<Option<String>, StoreError> {
    Ok(r.get(key)?
        .map(|v| decode(&v))
        .transpose()?
        .and_then(|mut b| b.remove(entry)))
}

fn put(txn: &mut Txn<'_>, key: Vec<u8>, entry: String, value: String) -> Result<(), StoreError> {
    let mut b = txn
        .get(&key)?
        .map(|v| decode(&v))
        .transpose()?
        .unwrap_or_default();
    b.insert(entry, value);
    // String keys and values: encoding cannot fail.
    txn.put(key, serde_json::to_vec(&b).unwrap_or_default());
    Ok(())
}

/// Where identifier `kind`/`value` of program `p` is kept, and its entry name there.
fn ident_at(t: &str, p: &str, kind: &str, value: &str) -> (Vec<u8>, String) {
    // `kind` is a fixed word without ':', so the name splits back unambiguously.
    let entry = format!("{kind}:{value}");
    (keys::ident_bucket(t, p, &bucket(&entry)), entry)
}

/// The member id an identifier belongs to.
pub fn ident<R: Read>(
    r: &R,
    t: &str,
    p: &str,
    kind: &str,
    value: &str,
) -> Result<Option<String>, StoreError> {
    let (key, entry) = ident_at(t, p, kind, value);
    get(r, &key, &entry)
}

/// Link an identifier to a member.
pub fn set_ident(
    txn: &mut Txn<'_>,
    t: &str,
    p: &str,
    kind: &str,
    value: &str,
    member: &str,
) -> Result<(), StoreError> {
    let (key, entry) = ident_at(t, p, kind, value);
    put(txn, key, entry, member.to_owned())
}

/// The enroll answer recorded for `user` (a JSON body).
pub fn enrollment<R: Read>(
    r: &R,
    t: &str,
    p: &str,
    user: &str,
) -> Result<Option<Vec<u8>>, StoreError> {
    let key = keys::enrollment_bucket(t, p, &bucket(user));
    Ok(get(r, &key, user)?.map(String::into_bytes))
}

/// Record the enroll answer for `user`.
pub fn set_enrollment(
    txn: &mut Txn<'_>,
    t: &str,
    p: &str,
    user: &str,
    reply: &[u8],
) -> Result<(), StoreError> {
    let key = keys::enrollment_bucket(t, p, &bucket(user));
    put(
        txn,
        key,
        user.to_owned(),
        String::from_utf8_lossy(reply).into_owned(),
    )
}

/// Schema 2 → 3: move (at most `limit`) identifiers (`lid/{t}/{p}/{kind}/{value}`) after
/// `cursor` into their buckets, deleting the old records. Returns the next cursor.
pub fn migrate_idents(
    txn: &mut Txn<'_>,
    cursor: Option<Vec<u8>>,
    limit: usize,
) -> Result<Option<Vec<u8>>, StoreError> {
    migrate(txn, "lid", cursor, limit, |txn, parts, v| match parts {
        [t, p, kind, value] => set_ident(txn, t, p, kind, value, &String::from_utf8_lossy(v)),
        _ => Err(StoreError::Io("corrupt schema-2 identifier key".into())),
    })
}

/// Schema 2 → 3: the same for enrollment answers (`lenr/{t}/{p}/{user}`).
pub fn migrate_enrollments(
    txn: &mut Txn<'_>,
    cursor: Option<Vec<u8>>,
    limit: usize,
) -> Result<Option<Vec<u8>>, StoreError> {
    migrate(txn, "lenr", cursor, limit, |txn, parts, v| match parts {
        [t, p, user] => set_enrollment(txn, t, p, user, v),
        _ => Err(StoreError::Io("corrupt schema-2 enrollment key".into())),
    })
}

/// Files one old record (its key components after the prefix, and its value) in its bucket.
type AddOld = fn(&mut Txn<'_>, &[&str], &[u8]) -> Result<(), StoreError>;

/// One page of a move: each old record under `old` after `cursor` given to `add` (its key
/// components after the prefix, and its value), then deleted.
fn migrate(
    txn: &mut Txn<'_>,
    old: &str,
    cursor: Option<Vec<u8>>,
    limit: usize,
    add: AddOld,
) -> Result<Option<Vec<u8>>, StoreError> {
    let prefix = crate::store::prefix(&[old]);
    let (page, next) = txn.scan_page(&prefix, cursor.as_deref(), limit)?;
    for (k, v) in page {
        let rest = String::from_utf8_lossy(&k[prefix.len()..]).into_owned();
        let parts: Vec<&str> = rest.split(crate::store::keys::SEP as char).collect();
        add(txn, &parts, &v)?;
        txn.delete(k);
    }
    Ok(next)
}
