//! Bulk codes: millions of unique codes per campaign, kept in the store (not in memory),
//! many to a record by the hash of their match key (see "buckets" below), so a check finds
//! one as fast as a shared code. Import (CSV
//! `code[,valid_until][,assigned_user]`, all or nothing), generation from a pattern without
//! collisions, and export. The same functions serve the admin API (inside a writer job)
//! and the offline CLI (on a stopped server's data directory).

use serde::{Deserialize, Serialize};

use rand::Rng;

use crate::clock::{rfc3339, Millis};
use crate::codegen;
use crate::voucher::{match_key, CodeMatch};

/// A bulk code as stored (short field names: there may be ten million of them).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct BulkCode {
    /// Campaign id.
    pub c: String,
    /// The code as imported (`voucherNr`).
    pub k: String,
    /// Valid until (ms), when the row gave one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub u: Option<Millis>,
    /// The guest (Karma userId) the code is assigned to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub g: Option<String>,
}

/// One CSV row, parsed and checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CodeRow {
    pub match_key: String,
    pub code: BulkCode,
}

/// Parse one CSV record (`code[,valid_until][,assigned_user]`).
pub fn parse_row(
    campaign: &str,
    mode: CodeMatch,
    rec: &csv::StringRecord,
) -> Result<CodeRow, String> {
    let code = rec.get(0).unwrap_or("").trim();
    if code.is_empty()
        || code.len() > 128
        || code.chars().any(char::is_control)
        || code.contains('\u{1f}')
    {
        return Err("code: 1-128 printable characters".into());
    }
    let until = match rec.get(1).map(str::trim).filter(|s| !s.is_empty()) {
        None => None,
        Some(s) => Some(
            s.parse::<jiff::Timestamp>()
                .map_err(|_| format!("valid_until: {s:?} is not an RFC 3339 instant"))?
                .as_millisecond(),
        ),
    };
    let user = rec
        .get(2)
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_owned);
    if user
        .as_ref()
        .is_some_and(|u| u.len() > 128 || u.chars().any(char::is_control))
    {
        return Err("assigned_user: at most 128 printable characters".into());
    }
    if rec.len() > 3 {
        return Err(format!(
            "{} columns; expected code[,valid_until][,assigned_user]",
            rec.len()
        ));
    }
    let mk = match_key(mode, code);
    if mk.is_empty() {
        return Err("code: nothing left after normalisation".into());
    }
    Ok(CodeRow {
        match_key: mk,
        code: BulkCode {
            c: campaign.to_owned(),
            k: code.to_owned(),
            u: until,
            g: user,
        },
    })
}

/// Whether a record is the optional header row.
pub fn is_header(rec: &csv::StringRecord) -> bool {
    rec.get(0)
        .is_some_and(|f| f.trim().eq_ignore_ascii_case("code"))
}

/// A CSV line for export.
pub fn export_line(b: &BulkCode, state: &str) -> String {
    let mut w = csv::WriterBuilder::new()
        .has_headers(false)
        .from_writer(Vec::new());
    let until = b.u.map(rfc3339).unwrap_or_default();
    let _ = w.write_record([
        b.k.as_str(),
        until.as_str(),
        b.g.as_deref().unwrap_or(""),
        state,
    ]);
    String::from_utf8(w.into_inner().unwrap_or_default()).unwrap_or_default()
}

/// How many codes a pattern can make (saturating): see [`crate::codegen`].
pub use crate::codegen::space as pattern_space;

/// The counts an import answers with.
#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
pub struct ImportReport {
    pub imported: u64,
    pub duplicates: u64,
    pub invalid: Vec<(u64, String)>,
}

// ---- against the store ----------------------------------------------------------------

use std::collections::btree_map::Entry;
use std::collections::HashSet;

use crate::contract::ApiError;
use crate::store::{StoreError, Txn};

use super::{keys, Reply, State};

/// Where codes are read and written: a writer job's [`Txn`] (online) or a stopped
/// server's store (offline CLI).
pub trait CodeStore {
    fn get(&mut self, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError>;
    fn put(&mut self, key: Vec<u8>, value: Vec<u8>) -> Result<(), StoreError>;
}

impl CodeStore for Txn<'_> {
    fn get(&mut self, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        Txn::get(self, key)
    }
    fn put(&mut self, key: Vec<u8>, value: Vec<u8>) -> Result<(), StoreError> {
        Txn::put(self, key, value);
        Ok(())
    }
}

// ---- buckets ----------------------------------------------------------------------------
//
// Bulk codes are kept many to a record: the record of bucket `b` (`keys::bulk_bucket`)
// holds, as one JSON object keyed by match key, every code whose match key hashes to `b`
// among [`BUCKETS`]. Why: sled's memory grows with its records (each leaf of at most 16
// records costs a page-table entry and its bookkeeping whether it is cached or not), so
// ten million codes one to a record took ~310 MiB before a single request; in 262 144
// buckets they take ~30 MiB (BENCHMARKS.md, "Issue 13 §4 again"). A bucket at ten million codes holds ~38 (~3 KiB); at a
// hundred million ~380 (~30 KiB), still well under sled's blob threshold.

/// Buckets per tenant. Part of the record layout: changing it moves every code.
pub const BUCKETS: u64 = 1 << 18;

/// A bucket's codes by match key, as stored.
pub type Bucket = std::collections::BTreeMap<String, BulkCode>;

/// The bucket of a match key (the code index's hash, order-preserving: a range of hashes
/// is a range of buckets).
pub fn bucket_of(match_key: &str) -> u64 {
    use crate::store::codeindex;
    codeindex::bucket_of(codeindex::hash(match_key.as_bytes()), BUCKETS)
}

/// The key of the record holding the code of `match_key`.
pub fn bucket_key(tenant: &str, match_key: &str) -> Vec<u8> {
    keys::bulk_bucket(tenant, bucket_of(match_key))
}

/// Decode a bucket record.
pub fn decode_bucket(v: &[u8]) -> Result<Bucket, StoreError> {
    serde_json::from_slice(v).map_err(|e| StoreError::Io(format!("corrupt bulk-code bucket: {e}")))
}

/// Encode a bucket record.
pub fn encode_bucket(b: &Bucket) -> Vec<u8> {
    // String keys and plain fields: encoding cannot fail.
    serde_json::to_vec(b).unwrap_or_default()
}

/// The bucket record under `key` (empty when there is none).
pub fn read_bucket(store: &mut dyn CodeStore, key: &[u8]) -> Result<Bucket, StoreError> {
    store
        .get(key)?
        .map(|v| decode_bucket(&v))
        .transpose()
        .map(Option::unwrap_or_default)
}

/// The stored bulk code of `match_key`, read in a writer job.
pub fn stored_code(
    txn: &Txn<'_>,
    tenant: &str,
    match_key: &str,
) -> Result<Option<BulkCode>, StoreError> {
    Ok(txn
        .get(&bucket_key(tenant, match_key))?
        .map(|v| decode_bucket(&v))
        .transpose()?
        .and_then(|mut b| b.remove(match_key)))
}

/// Every code of a stored bucket record, as the code index keeps them: (match key, the
/// code's own JSON).
pub fn index_entries(v: &[u8]) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
    Ok(decode_bucket(v)?
        .into_iter()
        .map(|(mk, c)| (mk, serde_json::to_vec(&c).unwrap_or_default()))
        .collect())
}

/// Rows grouped by the record they go to, in key order.
pub fn by_bucket(
    tenant: &str,
    rows: Vec<CodeRow>,
) -> std::collections::BTreeMap<Vec<u8>, Vec<CodeRow>> {
    let mut out: std::collections::BTreeMap<Vec<u8>, Vec<CodeRow>> = Default::default();
    for r in rows {
        out.entry(bucket_key(tenant, &r.match_key))
            .or_default()
            .push(r);
    }
    out
}

/// Move (at most `limit`) schema-2 bulk codes after `cursor` — one to a record under
/// `bcode/{tenant}/{matchKey}` — into their buckets, deleting the old records. Returns
/// the cursor of the next page (`None`: done). A code already in its bucket is left
/// there, so a migration cut short resumes safely.
pub fn migrate_page(
    txn: &mut Txn<'_>,
    cursor: Option<Vec<u8>>,
    limit: usize,
) -> Result<Option<Vec<u8>>, StoreError> {
    let prefix = keys::old_bulk_code_prefix();
    let (page, next) = txn.scan_page(&prefix, cursor.as_deref(), limit)?;
    let mut touched: std::collections::BTreeMap<Vec<u8>, Bucket> = Default::default();
    for (k, v) in page {
        let rest = String::from_utf8_lossy(&k[prefix.len()..]).into_owned();
        let Some((tenant, mk)) = rest.split_once(crate::store::keys::SEP as char) else {
            return Err(StoreError::Io("corrupt schema-2 bulk-code key".into()));
        };
        let code: BulkCode = serde_json::from_slice(&v)
            .map_err(|e| StoreError::Io(format!("corrupt schema-2 bulk code: {e}")))?;
        let bucket = match touched.entry(bucket_key(tenant, mk)) {
            Entry::Occupied(e) => e.into_mut(),
            Entry::Vacant(e) => {
                let b = read_bucket(txn, e.key())?;
                e.insert(b)
            }
        };
        bucket.entry(mk.to_owned()).or_insert(code);
        txn.delete(k);
    }
    for (k, b) in touched {
        txn.put(k, encode_bucket(&b));
    }
    Ok(next)
}

/// Mark the tenant's bulk codes as changed, before (or in the same atomic write as) any
/// bulk code is written: a code index built from an older generation is then rebuilt.
pub fn bump_generation(store: &mut dyn CodeStore, tenant: &str) -> Result<u64, StoreError> {
    let k = keys::bulk_generation(tenant);
    let g = store
        .get(&k)?
        .and_then(|v| crate::store::decode_u64(&v))
        .unwrap_or(0)
        + 1;
    store.put(k, g.to_be_bytes().to_vec())?;
    Ok(g)
}

/// Parse a whole CSV; `Err` lists invalid rows by line number (nothing is written then).
pub fn parse_all(
    campaign: &str,
    mode: CodeMatch,
    text: &[u8],
) -> Result<Vec<CodeRow>, Vec<(u64, String)>> {
    let mut rdr = csv::ReaderBuilder::new()
        .has_headers(false)
        .flexible(true)
        .from_reader(text);
    let mut rows = Vec::new();
    let mut invalid = Vec::new();
    for (i, rec) in rdr.records().enumerate() {
        let line = rec
            .as_ref()
            .ok()
            .and_then(|r| r.position().map(|p| p.line()))
            .unwrap_or(i as u64 + 1);
        match rec {
            Err(e) => invalid.push((line, e.to_string())),
            Ok(r) if i == 0 && is_header(&r) => {}
            Ok(r) => match parse_row(campaign, mode, &r) {
                Ok(row) => rows.push(row),
                Err(m) => invalid.push((line, m)),
            },
        }
    }
    if invalid.is_empty() {
        Ok(rows)
    } else {
        Err(invalid)
    }
}

/// Write parsed rows, skipping (and counting) codes that exist already — as shared codes
/// (`shared`: their match keys), as bulk codes, or earlier in the same rows.
pub fn write_rows(
    store: &mut dyn CodeStore,
    tenant: &str,
    rows: Vec<CodeRow>,
    shared: &HashSet<String>,
    seen: &mut HashSet<String>,
) -> Result<(u64, u64), StoreError> {
    let (mut imported, mut duplicates) = (0, 0);
    if !rows.is_empty() {
        bump_generation(store, tenant)?;
    }
    for (k, part) in by_bucket(tenant, rows) {
        let mut bucket = read_bucket(store, &k)?;
        let before = imported;
        for r in part {
            if shared.contains(&r.match_key)
                || !seen.insert(r.match_key.clone())
                || bucket.contains_key(&r.match_key)
            {
                duplicates += 1;
                continue;
            }
            bucket.insert(r.match_key, r.code);
            imported += 1;
        }
        if imported > before {
            store.put(k, encode_bucket(&bucket))?;
        }
    }
    Ok((imported, duplicates))
}

/// Which campaign generated codes go to.
pub struct GenTarget<'a> {
    pub tenant: &'a str,
    pub campaign: &'a str,
    pub mode: CodeMatch,
}

/// How many codes the tenant issued from `pattern` so far (all generations, online and
/// offline): what the 1 % guessing-odds rule counts.
pub fn issued(store: &mut dyn CodeStore, tenant: &str, pattern: &str) -> Result<u64, StoreError> {
    Ok(store
        .get(&keys::generated_count(tenant, pattern))?
        .and_then(|v| crate::store::decode_u64(&v))
        .unwrap_or(0))
}

/// Check `pattern` and the room for `count` more codes in it: `Err((field, message))`.
pub fn check_generation(
    store: &mut dyn CodeStore,
    tenant: &str,
    pattern: &str,
    count: u64,
) -> Result<Result<u64, (&'static str, String)>, StoreError> {
    if let Err(m) = codegen::check_pattern(pattern) {
        return Ok(Err(("pattern", m)));
    }
    let before = issued(store, tenant, pattern)?;
    Ok(codegen::check_room(pattern, before, count)
        .map(|()| before)
        .map_err(|r| (r.field, r.message)))
}

/// Generate `count` new codes from `pattern` for `campaign` with `rng`, none colliding
/// with an existing code, and count them against the pattern's capacity. Returns them in
/// order, or the field and message of a refusal (nothing written then).
pub fn generate<R: Rng + ?Sized>(
    store: &mut dyn CodeStore,
    to: &GenTarget<'_>,
    pattern: &str,
    count: u64,
    shared: &HashSet<String>,
    rng: &mut R,
) -> Result<Result<Vec<String>, (&'static str, String)>, StoreError> {
    if let Err(refusal) = reserve(store, to.tenant, pattern, count)? {
        return Ok(Err(refusal));
    }
    fill_codes(store, to, pattern, count, shared, rng)
}

/// Check the room for `count` more codes from `pattern` and count them as issued.
pub fn reserve(
    store: &mut dyn CodeStore,
    tenant: &str,
    pattern: &str,
    count: u64,
) -> Result<Result<(), (&'static str, String)>, StoreError> {
    let before = match check_generation(store, tenant, pattern, count)? {
        Ok(n) => n,
        Err(refusal) => return Ok(Err(refusal)),
    };
    store.put(
        keys::generated_count(tenant, pattern),
        before.saturating_add(count).to_be_bytes().to_vec(),
    )?;
    Ok(Ok(()))
}

/// Write `count` new codes from `pattern` (already [`reserve`]d), none colliding with an
/// existing code; returns them in order.
pub fn fill_codes<R: Rng + ?Sized>(
    store: &mut dyn CodeStore,
    to: &GenTarget<'_>,
    pattern: &str,
    count: u64,
    shared: &HashSet<String>,
    rng: &mut R,
) -> Result<Result<Vec<String>, (&'static str, String)>, StoreError> {
    let (tenant, campaign, mode) = (to.tenant, to.campaign, to.mode);
    bump_generation(store, tenant)?;
    let mut out = Vec::with_capacity(usize::try_from(count).unwrap_or(0));
    let mut seen = HashSet::new();
    // Each bucket the codes go to, read once and written once at the end.
    let mut touched: std::collections::BTreeMap<Vec<u8>, Bucket> = Default::default();
    // At most 1 % of the space is ever taken, so a candidate collides with odds below
    // 1 in 100; running out of attempts means the store is far from what was counted.
    let mut attempts_left = count.saturating_mul(20).saturating_add(1000);
    while (out.len() as u64) < count {
        if attempts_left == 0 {
            return Ok(Err((
                "pattern",
                "too many collisions; use a longer pattern".into(),
            )));
        }
        attempts_left -= 1;
        let code = codegen::fill(pattern, rng);
        let mk = match_key(mode, &code);
        if shared.contains(&mk) || !seen.insert(mk.clone()) {
            continue;
        }
        let bucket = match touched.entry(bucket_key(tenant, &mk)) {
            Entry::Occupied(e) => e.into_mut(),
            Entry::Vacant(e) => {
                let b = read_bucket(store, e.key())?;
                e.insert(b)
            }
        };
        if bucket.contains_key(&mk) {
            continue;
        }
        let b = BulkCode {
            c: campaign.to_owned(),
            k: code.clone(),
            u: None,
            g: None,
        };
        bucket.insert(mk, b);
        out.push(code);
    }
    for (k, b) in touched {
        store.put(k, encode_bucket(&b))?;
    }
    Ok(Ok(out))
}

fn shared_keys(st: &State, tenant: &str) -> HashSet<String> {
    st.tenant(tenant)
        .map(|t| t.index.keys().cloned().collect())
        .unwrap_or_default()
}

fn campaign_ok(st: &State, tenant: &str, campaign: &str) -> Option<CodeMatch> {
    st.tenant(tenant)
        .filter(|t| t.campaigns.contains_key(campaign))
        .map(|t| t.code_match)
}

/// Admin API, first step of an import or a generation: the campaign's match mode, or
/// the 404 to answer.
pub fn campaign_mode(st: &State, tenant: &str, campaign: &str) -> Result<CodeMatch, Reply> {
    campaign_ok(st, tenant, campaign).ok_or_else(|| Reply::not_found("unknown campaign"))
}

/// The 400 for a CSV with invalid rows (nothing was imported).
pub fn invalid_rows_reply(invalid: &[(u64, String)]) -> Reply {
    Reply::json(
        400,
        serde_json::json!({
            "ok": false,
            "error": "INVALID_ROWS",
            "message": format!("{} invalid row(s); nothing was imported", invalid.len()),
            "invalid": invalid.iter().take(1000).map(|(l, m)| serde_json::json!({"line": l, "message": m})).collect::<Vec<_>>(),
        }),
    )
}

/// Admin API, one slice of an import: write `rows` (already parsed and valid), skipping
/// duplicates of shared codes, stored codes and codes of earlier slices (`seen`).
pub fn import_slice_job(
    txn: &mut Txn<'_>,
    st: &mut State,
    tenant: &str,
    rows: Vec<CodeRow>,
    seen: &mut HashSet<String>,
) -> Result<(u64, u64), StoreError> {
    write_rows(txn, tenant, rows, &shared_keys(st, tenant), seen)
}

/// Admin API, first step of a generation: check `count` and the pattern's room, and
/// count the codes as issued (a generation cut short by a crash leaves the count high:
/// the safe side of the guessing-odds rule).
pub fn reserve_job(
    txn: &mut Txn<'_>,
    st: &mut State,
    tenant: &str,
    campaign: &str,
    pattern: &str,
    count: u64,
) -> Result<Result<CodeMatch, Reply>, StoreError> {
    let mode = match campaign_mode(st, tenant, campaign) {
        Ok(m) => m,
        Err(r) => return Ok(Err(r)),
    };
    if count == 0 || count > 1_000_000 {
        return Ok(Err(Reply::error(&ApiError::invalid(
            "count",
            "1..=1000000 through the API (use the CLI for more)",
        ))));
    }
    Ok(match reserve(txn, tenant, pattern, count)? {
        Ok(()) => Ok(mode),
        Err((field, m)) => Err(Reply::error(&ApiError::invalid(field, m))),
    })
}

/// Admin API, one slice of a generation: `count` more codes (reserved before).
pub fn generate_slice_job(
    txn: &mut Txn<'_>,
    st: &mut State,
    to: &GenTarget<'_>,
    pattern: &str,
    count: u64,
) -> Result<Result<Vec<String>, Reply>, StoreError> {
    let mut rng = match codegen::os_rng() {
        Ok(r) => r,
        Err(m) => return Ok(Err(Reply::error(&ApiError::new(500, "INTERNAL", m)))),
    };
    let shared = shared_keys(st, to.tenant);
    Ok(fill_codes(txn, to, pattern, count, &shared, &mut rng)?
        .map_err(|(field, m)| Reply::error(&ApiError::invalid(field, m))))
}

/// The state of one bulk code: `used` when its per-code limit is consumed, `held` while
/// holds take the rest, else `available`.
pub fn code_state(
    txn: &Txn<'_>,
    st: &State,
    tenant: &str,
    b: &BulkCode,
) -> Result<&'static str, StoreError> {
    let limit = st
        .tenant(tenant)
        .and_then(|t| t.campaigns.get(&b.c))
        .and_then(|e| e.campaign.max_uses_per_code)
        .unwrap_or(1);
    let used = txn.get_u64(&keys::used_code(tenant, &b.c, &b.k))?;
    let (_, held, _) = st.holds().counts(tenant, &b.c, &b.k, None);
    Ok(if used >= limit {
        "used"
    } else if used + held >= limit {
        "held"
    } else {
        "available"
    })
}

/// CSV lines of one export page and the cursor of the next (`None`: done).
pub type ExportPage = (String, Option<Vec<u8>>);

/// Admin API, one page of an export: the CSV lines of the campaign's bulk codes among
/// the tenant's next buckets after `after`, read until they held `limit` codes (of any
/// campaign), and the cursor of the next page (`None`: done). `Err` is the 404 for an
/// unknown campaign.
pub fn export_page_job(
    txn: &mut Txn<'_>,
    st: &mut State,
    tenant: &str,
    campaign: &str,
    after: Option<&[u8]>,
    limit: usize,
) -> Result<Result<ExportPage, Reply>, StoreError> {
    if campaign_ok(st, tenant, campaign).is_none() {
        return Ok(Err(Reply::not_found("unknown campaign")));
    }
    let (mut out, mut seen, mut buckets) = (String::new(), 0usize, 0usize);
    let mut cursor = after.map(<[u8]>::to_vec);
    while seen < limit {
        // As many buckets as the codes per bucket seen so far say are left (8 at first).
        let per_bucket = seen.checked_div(buckets).unwrap_or(8).max(1);
        let want = (limit - seen).div_ceil(per_bucket).clamp(1, 256);
        let (page, next) =
            txn.scan_page(&keys::bulk_code_prefix(tenant), cursor.as_deref(), want)?;
        buckets += page.len();
        for (_, v) in page {
            for b in decode_bucket(&v)?.into_values() {
                seen += 1;
                if b.c == campaign {
                    out.push_str(&export_line(&b, code_state(txn, st, tenant, &b)?));
                }
            }
        }
        cursor = next;
        if cursor.is_none() {
            break;
        }
    }
    Ok(Ok((out, cursor)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(fields: &[&str]) -> csv::StringRecord {
        csv::StringRecord::from(fields.to_vec())
    }

    #[test]
    fn rows() {
        let r = parse_row(
            "c",
            CodeMatch::Normalized,
            &rec(&["ab-12", "2026-12-31T00:00:00Z", "u1"]),
        )
        .unwrap();
        assert_eq!(r.match_key, "AB12");
        assert_eq!(r.code.g.as_deref(), Some("u1"));
        assert!(parse_row("c", CodeMatch::Normalized, &rec(&["", ""])).is_err());
        assert!(parse_row("c", CodeMatch::Normalized, &rec(&["X", "tomorrow"])).is_err());
        assert!(is_header(&rec(&["code", "valid_until"])));
    }
}
