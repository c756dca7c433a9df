//! check, commit and reactivate, as writer jobs, with everything a hold needs on the way:
//! its stored form ([`HoldRecord`]), the pruning of expired holds every job does first,
//! the live-hold index rebuilt at start, and the code's history events. A voucher commit
//! runs in this file from the prune to the answer (plus the shared `idempotent` wrapper).

use crate::clock::{rfc3339, Millis};
use crate::contract::voucher::{
    CheckRequest, CheckSuccess, CommitRequest, CommitSuccess, ReactivateSuccess,
};
use crate::store::{last, StoreError, Txn};
use crate::voucher::{
    capacity, match_key, price, CheckInput, HoldState, LiveHold, LiveHolds, Rejection, Usage,
};

use super::{fingerprint, idempotent, keys, records, Reply, State};

fn reject(r: Rejection) -> Reply {
    Reply::rejected(r.code(), &r.message())
}

fn json<T: serde::Serialize>(v: &T) -> Vec<u8> {
    serde_json::to_vec(v).unwrap_or_default()
}

/// A hold as stored: everything needed to commit, reactivate or explain it later.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct HoldRecord {
    pub provider_ref: String,
    pub campaign: String,
    pub code: String,
    pub guest: Option<String>,
    pub location: Option<String>,
    pub amount_cents: i64,
    pub created_at: Millis,
    pub expires_at: Millis,
    #[serde(with = "records::hold_state")]
    pub state: HoldState,
    pub transaction_id: Option<String>,
    pub updated_at: Millis,
    /// Its "held" history event is not written yet. A check writes nothing keyed by the
    /// code (for a bulk campaign that would be a write at a random place in the store); the
    /// event is written, dated `created_at`, with the hold's next transition: commit,
    /// release or expiry. Until then the admin view makes it from this record.
    #[serde(default, skip_serializing_if = "is_false")]
    pub held_unlogged: bool,
}

impl HoldRecord {
    /// The hold as the admin API shows it.
    pub fn to_json(&self, live: bool) -> serde_json::Value {
        serde_json::json!({
            "ok": true,
            "providerRef": self.provider_ref,
            "campaign": self.campaign,
            "code": self.code,
            "guest": self.guest,
            "locationId": self.location,
            "amountCents": self.amount_cents,
            "state": self.state_label(live),
            "transactionId": self.transaction_id,
            "createdAt": rfc3339(self.created_at),
            "expiresAt": rfc3339(self.expires_at),
            "updatedAt": rfc3339(self.updated_at),
        })
    }

    /// Its state as the admin API names it; `live`: still counted among the live holds
    /// (a held hold that is not has expired).
    pub fn state_label(&self, live: bool) -> &'static str {
        match self.state {
            HoldState::Held if !live => "expired",
            HoldState::Held => "held",
            HoldState::Committed => "committed",
            HoldState::Released => "released",
            HoldState::Reactivated => "reactivated",
        }
    }
}

fn is_false(b: &bool) -> bool {
    !*b
}

/// Rebuild the live holds at start from their `live` markers (a marker whose hold is no
/// longer held is deleted). The markers are read a page at a time: collecting 300 000 of
/// them at once took ~35 MiB at the start's peak (BENCHMARKS.md, "Memory").
pub(super) fn load_live_holds(txn: &mut Txn<'_>) -> Result<LiveHolds, StoreError> {
    use crate::store::Read;
    const PAGE: usize = 4096;
    let prefix = b"live\x1f";
    let end = b"live\x20";
    let mut holds = LiveHolds::default();
    let mut lo = prefix.to_vec();
    loop {
        let page = Read::range(&*txn, &lo, end, PAGE)?;
        let full = page.len() == PAGE;
        for (k, _) in &page {
            match live_hold(txn, k)? {
                Some((r, h)) => holds.insert(r, h),
                None => txn.delete(k.clone()),
            }
        }
        match page.last() {
            Some((k, _)) if full => lo = [k.as_slice(), &[0]].concat(),
            _ => return Ok(holds),
        }
    }
}

/// The live hold a `live` marker key stands for: its ref and what the index counts, when
/// its hold record says it is still held.
fn live_hold(txn: &Txn<'_>, k: &[u8]) -> Result<Option<(String, LiveHold)>, StoreError> {
    let r = last(k).to_owned();
    let tenant = std::str::from_utf8(&k[5..k.len() - r.len() - 1])
        .unwrap_or("")
        .to_owned();
    let Some(h) = txn.get_json::<HoldRecord>(&keys::hold(&tenant, &r))? else {
        return Ok(None);
    };
    if h.state != HoldState::Held {
        return Ok(None);
    }
    let live = LiveHold {
        tenant,
        campaign: h.campaign,
        code: h.code,
        guest: h.guest,
        expires_at: h.expires_at,
        amount_cents: h.amount_cents,
    };
    Ok(Some((r, live)))
}

/// Another replica made or ended the live hold of marker `k`: count it as the store now
/// says (a marker present and its hold held: live; otherwise gone).
pub(super) fn observe_live(txn: &mut Txn<'_>, st: &mut State, k: &[u8]) -> Result<(), StoreError> {
    st.remove_hold(last(k));
    if txn.get(k)?.is_some() {
        if let Some((r, h)) = live_hold(txn, k)? {
            st.add_hold(r, h);
        }
    }
    Ok(())
}

/// Let expired holds go: they stop counting, their `live` markers are deleted and their
/// deferred "held" history events written. Every job that reads or changes holds runs
/// this first.
pub fn prune(txn: &mut Txn<'_>, st: &mut State, now: Millis) -> Result<(), StoreError> {
    for (tenant, r) in st.prune_holds(now) {
        txn.delete(keys::live(&tenant, &r));
        let hk = keys::hold(&tenant, &r);
        if let Some(mut h) = txn.get_json::<HoldRecord>(&hk)? {
            if h.held_unlogged {
                log_held(txn, &tenant, &mut h)?;
                txn.put_json(hk, &h);
            }
        }
    }
    Ok(())
}

/// One event in a code's history, for the admin API.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HistoryEvent {
    pub at: String,
    pub event: String,
    pub provider_ref: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub transaction_id: Option<String>,
    pub amount_cents: i64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub guest: Option<String>,
}

impl HistoryEvent {
    pub(super) fn of(h: &HoldRecord, event: &str, at: Millis) -> HistoryEvent {
        HistoryEvent {
            at: rfc3339(at),
            event: event.to_owned(),
            provider_ref: h.provider_ref.clone(),
            transaction_id: h.transaction_id.clone(),
            amount_cents: h.amount_cents,
            guest: h.guest.clone(),
        }
    }

    /// The hold's "held" event, as it was when the hold was made.
    pub(super) fn held(h: &HoldRecord) -> HistoryEvent {
        HistoryEvent {
            transaction_id: None,
            ..HistoryEvent::of(h, "held", h.created_at)
        }
    }

    /// When it happened, in ms (for ordering events written out of order).
    pub(super) fn millis(&self) -> i64 {
        self.at
            .parse::<jiff::Timestamp>()
            .map(|t| t.as_millisecond())
            .unwrap_or(0)
    }
}

pub(super) fn record_history(
    txn: &mut Txn<'_>,
    tenant: &str,
    h: &HoldRecord,
    event: &str,
    now: Millis,
) -> Result<(), StoreError> {
    write_history(txn, tenant, h, &HistoryEvent::of(h, event, now))
}

fn write_history(
    txn: &mut Txn<'_>,
    tenant: &str,
    h: &HoldRecord,
    e: &HistoryEvent,
) -> Result<(), StoreError> {
    let seq = txn.next_id()?;
    let mut k = keys::history_prefix(tenant, &h.campaign, &h.code);
    k.extend_from_slice(format!("{seq:016x}").as_bytes());
    txn.put_json(k, e);
    Ok(())
}

/// Write a hold's deferred "held" event (see [`HoldRecord::held_unlogged`]), once. The
/// caller writes the hold record back.
pub(super) fn log_held(
    txn: &mut Txn<'_>,
    tenant: &str,
    h: &mut HoldRecord,
) -> Result<(), StoreError> {
    if h.held_unlogged {
        h.held_unlogged = false;
        write_history(txn, tenant, h, &HistoryEvent::held(h))?;
    }
    Ok(())
}

/// Consumed uses and live holds for a campaign, code and (optional) guest.
pub(super) fn usage(
    txn: &Txn<'_>,
    st: &State,
    tenant: &str,
    campaign: &str,
    code: &str,
    guest: Option<&str>,
) -> Result<Usage, StoreError> {
    let (campaign_held, code_held, guest_held) = st.holds().counts(tenant, campaign, code, guest);
    Ok(Usage {
        campaign_used: txn.get_u64(&keys::used(tenant, campaign))?,
        campaign_held,
        code_used: txn.get_u64(&keys::used_code(tenant, campaign, code))?,
        code_held,
        guest_used: match guest {
            Some(g) => txn.get_u64(&keys::used_guest(tenant, campaign, g))?,
            None => 0,
        },
        guest_held,
        campaign_spent_cents: i64::try_from(txn.get_u64(&keys::used_amount(tenant, campaign))?)
            .unwrap_or(i64::MAX),
        campaign_held_cents: st.holds().held_amount(tenant, campaign),
    })
}

/// A code as found: in the tenant's in-memory index (codes written in campaigns) or among
/// the bulk codes (imported or generated).
#[derive(Debug, Clone)]
pub struct Resolved {
    pub campaign: String,
    pub code: String,
    pub valid_until: Option<Millis>,
    pub assigned_user: Option<String>,
}

impl From<super::codes::BulkCode> for Resolved {
    fn from(b: super::codes::BulkCode) -> Resolved {
        Resolved {
            campaign: b.c,
            code: b.k,
            valid_until: b.u,
            assigned_user: b.g,
        }
    }
}

/// Look a typed code up in the tenant's bulk-code index, on the calling thread (no writer,
/// no sled). `Some` is the code's stored record: bulk codes never change, so the writer may
/// use it as is. `None` says nothing (no index, or a code newer than it).
pub fn lookup_indexed(
    index: &crate::store::CodeIndex,
    mode: crate::voucher::CodeMatch,
    tenant: &str,
    typed: &str,
) -> Option<Resolved> {
    let v = index.get(tenant, &match_key(mode, typed))?;
    serde_json::from_slice::<super::codes::BulkCode>(&v)
        .ok()
        .map(Resolved::from)
}

/// Find the code a guest typed: a campaign's own (shared) codes first, then the bulk code
/// the index found (`indexed`, see [`lookup_indexed`]), else the bulk codes in the store.
pub fn resolve_code(
    txn: &Txn<'_>,
    st: &State,
    tenant: &str,
    typed: &str,
    indexed: Option<Resolved>,
) -> Result<Option<Resolved>, StoreError> {
    let Some(t) = st.tenant(tenant) else {
        return Ok(None);
    };
    let mk = match_key(t.code_match, typed);
    if let Some((cid, code)) = t.index.get(&mk) {
        return Ok(Some(Resolved {
            campaign: cid.clone(),
            code: code.clone(),
            valid_until: None,
            assigned_user: None,
        }));
    }
    if indexed.is_some() {
        return Ok(indexed);
    }
    Ok(super::codes::stored_code(txn, tenant, &mk)?.map(Resolved::from))
}

/// Add (or take back) one use to the consumed counters of a hold's campaign, code and
/// guest, and its discount to the campaign's spent budget.
fn count_use(txn: &mut Txn<'_>, tenant: &str, h: &HoldRecord, up: bool) -> Result<(), StoreError> {
    let ak = keys::used_amount(tenant, &h.campaign);
    let spent = txn.get_u64(&ak)?;
    let amount = h.amount_cents.max(0) as u64;
    txn.put_u64(
        ak.clone(),
        if up {
            spent.saturating_add(amount)
        } else {
            spent.saturating_sub(amount)
        },
    );
    let mut keys = vec![
        keys::used(tenant, &h.campaign),
        keys::used_code(tenant, &h.campaign, &h.code),
    ];
    if let Some(g) = &h.guest {
        keys.push(keys::used_guest(tenant, &h.campaign, g));
    }
    for k in keys {
        let v = txn.get_u64(&k)?;
        let nv = if up {
            v.saturating_add(1)
        } else {
            v.saturating_sub(1)
        };
        txn.put_u64(k, nv);
    }
    Ok(())
}

/// What a vendor's rules service decided for a check (made outside the writer).
#[derive(Debug, Clone)]
pub struct VendorDecision {
    pub discount_cents: i64,
    pub voucher_nr: Option<String>,
}

pub fn check(
    txn: &mut Txn<'_>,
    st: &mut State,
    tenant: &str,
    req: &CheckRequest,
    vendor: Option<&VendorDecision>,
    indexed: Option<Resolved>,
    now: Millis,
) -> Result<Reply, StoreError> {
    prune(txn, st, now)?;
    let offer = match offer(txn, st, tenant, req, vendor, indexed, now)? {
        Ok(o) => o,
        Err(r) => return Ok(reject(r)),
    };
    let Some(hold_ttl_ms) = st.tenant(tenant).map(|t| t.hold_ttl_ms) else {
        return Ok(reject(Rejection::UnknownCode));
    };
    let expires_at = now + hold_ttl_ms;
    let provider_ref = format!("kph_{:016x}", txn.next_id()?);
    let hold = HoldRecord {
        provider_ref: provider_ref.clone(),
        campaign: offer.campaign.clone(),
        code: offer.code.clone(),
        guest: req.user_id.clone(),
        location: req.location_id.clone(),
        amount_cents: offer.discount,
        created_at: now,
        expires_at,
        state: HoldState::Held,
        transaction_id: None,
        updated_at: now,
        held_unlogged: true,
    };
    txn.put_json(keys::hold(tenant, &provider_ref), &hold);
    txn.put(keys::live(tenant, &provider_ref), Vec::new());
    st.add_hold(
        provider_ref.clone(),
        LiveHold {
            tenant: tenant.to_owned(),
            campaign: offer.campaign,
            code: offer.code,
            guest: req.user_id.clone(),
            expires_at,
            amount_cents: offer.discount,
        },
    );
    Ok(Reply::ok(json(&CheckSuccess {
        ok: true,
        voucher_nr: offer.voucher_nr,
        discount_amount_cents: offer.discount,
        expires_at: rfc3339(expires_at),
        provider_ref,
    })))
}

/// What a check may hold: the code as configured, its campaign, the discount and the
/// voucher number to answer.
struct Offer {
    campaign: String,
    code: String,
    discount: i64,
    voucher_nr: String,
}

/// Decide a check without changing anything: the code, its validity and owner, the price
/// (ours, or the vendor's decision) and the capacity left.
fn offer(
    txn: &Txn<'_>,
    st: &State,
    tenant: &str,
    req: &CheckRequest,
    vendor: Option<&VendorDecision>,
    indexed: Option<Resolved>,
    now: Millis,
) -> Result<Result<Offer, Rejection>, StoreError> {
    let Some(found) = resolve_code(txn, st, tenant, &req.code, indexed)? else {
        return Ok(Err(Rejection::UnknownCode));
    };
    if let Some(until) = found.valid_until.filter(|u| now > *u) {
        return Ok(Err(Rejection::Expired { until }));
    }
    if let Some(owner) = &found.assigned_user {
        if req.user_id.as_deref() != Some(owner.as_str()) {
            return Ok(Err(Rejection::CodeAssignedToAnotherGuest));
        }
    }
    let (cid, code) = (found.campaign, found.code);
    let Some(c) = st
        .tenant(tenant)
        .and_then(|t| t.campaigns.get(&cid))
        .map(|e| e.campaign.clone())
    else {
        return Ok(Err(Rejection::UnknownCode));
    };
    let guest = req.user_id.as_deref();
    let input = CheckInput {
        cart: &req.cart,
        location: req.location_id.as_deref(),
        guest,
        now,
    };
    // With vendor rules, the vendor's decision (made before this job) replaces ours.
    let (discount, voucher_nr) = match vendor {
        Some(v) => (
            v.discount_cents.clamp(0, req.cart.total_cents.max(0)),
            v.voucher_nr.clone().unwrap_or_else(|| code.clone()),
        ),
        None => match price(&c, &input) {
            Ok(d) => (d, code.clone()),
            Err(r) => return Ok(Err(r)),
        },
    };
    let u = usage(txn, st, tenant, &cid, &code, guest)?;
    if let Err(r) = capacity(&c, &u, guest.is_some(), discount) {
        return Ok(Err(r));
    }
    Ok(Ok(Offer {
        campaign: cid,
        code,
        discount,
        voucher_nr,
    }))
}

fn load_hold(
    txn: &Txn<'_>,
    tenant: &str,
    req: &CommitRequest,
) -> Result<Option<HoldRecord>, StoreError> {
    match &req.provider_ref {
        None => Ok(None),
        Some(r) => txn.get_json(&keys::hold(tenant, r)),
    }
}

pub fn commit(
    txn: &mut Txn<'_>,
    st: &mut State,
    tenant: &str,
    req: &CommitRequest,
    now: Millis,
) -> Result<Reply, StoreError> {
    prune(txn, st, now)?;
    let ik = keys::idem(tenant, "commit", &req.transaction_id);
    idempotent(txn, ik, fingerprint(req), |txn| {
        let Some(mut h) = load_hold(txn, tenant, req)? else {
            return Ok(reject(Rejection::ReservationNotFound));
        };
        match h.state {
            HoldState::Committed => return Ok(reject(Rejection::ReservationAlreadyCommitted)),
            HoldState::Released | HoldState::Reactivated => {
                return Ok(reject(Rejection::ReservationReleased))
            }
            HoldState::Held => {}
        }
        if req.amount_cents != h.amount_cents {
            return Ok(reject(Rejection::AmountMismatch {
                expected: h.amount_cents,
                got: req.amount_cents,
            }));
        }
        let live = st.remove_hold(&h.provider_ref);
        if !live {
            // Expired: honour it only if the capacity it held is still free.
            let campaign = st
                .tenant(tenant)
                .and_then(|t| t.campaigns.get(&h.campaign))
                .map(|e| e.campaign.clone());
            if let Some(c) = campaign {
                let u = usage(txn, st, tenant, &h.campaign, &h.code, h.guest.as_deref())?;
                if capacity(&c, &u, h.guest.is_some(), h.amount_cents).is_err() {
                    return Ok(reject(Rejection::ReservationExpired));
                }
            }
        }
        txn.delete(keys::live(tenant, &h.provider_ref));
        log_held(txn, tenant, &mut h)?;
        h.state = HoldState::Committed;
        h.transaction_id = Some(req.transaction_id.clone());
        h.updated_at = now;
        count_use(txn, tenant, &h, true)?;
        txn.put_json(keys::hold(tenant, &h.provider_ref), &h);
        record_history(txn, tenant, &h, "committed", now)?;
        Ok(Reply::ok(json(&CommitSuccess {
            ok: true,
            voucher_nr: h.code.clone(),
            amount_cents: h.amount_cents,
            transaction_id: req.transaction_id.clone(),
        })))
    })
}

pub fn reactivate(
    txn: &mut Txn<'_>,
    st: &mut State,
    tenant: &str,
    req: &CommitRequest,
    now: Millis,
) -> Result<Reply, StoreError> {
    prune(txn, st, now)?;
    let ik = keys::idem(tenant, "reactivate", &req.transaction_id);
    idempotent(txn, ik, fingerprint(req), |txn| {
        let done = |status: &'static str| {
            Reply::ok(json(&ReactivateSuccess {
                ok: true,
                status,
                transaction_id: req.transaction_id.clone(),
            }))
        };
        let Some(mut h) = load_hold(txn, tenant, req)? else {
            return Ok(done("unknown"));
        };
        let status = match h.state {
            HoldState::Released | HoldState::Reactivated => return Ok(done("already_released")),
            HoldState::Held => {
                st.remove_hold(&h.provider_ref);
                txn.delete(keys::live(tenant, &h.provider_ref));
                h.state = HoldState::Released;
                h.transaction_id = Some(req.transaction_id.clone());
                "released"
            }
            HoldState::Committed => {
                if h.transaction_id.as_deref() != Some(req.transaction_id.as_str()) {
                    return Ok(reject(Rejection::TransactionMismatch));
                }
                count_use(txn, tenant, &h, false)?;
                h.state = HoldState::Reactivated;
                "returned"
            }
        };
        h.updated_at = now;
        log_held(txn, tenant, &mut h)?;
        txn.put_json(keys::hold(tenant, &h.provider_ref), &h);
        record_history(
            txn,
            tenant,
            &h,
            if status == "released" {
                "released"
            } else {
                "reactivated"
            },
            now,
        )?;
        Ok(done(status))
    })
}

/// Operator release of a live hold (admin API). Returns false when no such live hold.
pub fn release_hold(
    txn: &mut Txn<'_>,
    st: &mut State,
    tenant: &str,
    provider_ref: &str,
    now: Millis,
) -> Result<bool, StoreError> {
    prune(txn, st, now)?;
    let Some(mut h) = txn.get_json::<HoldRecord>(&keys::hold(tenant, provider_ref))? else {
        return Ok(false);
    };
    if h.state != HoldState::Held || !st.remove_hold(provider_ref) {
        return Ok(false);
    }
    txn.delete(keys::live(tenant, provider_ref));
    h.state = HoldState::Released;
    h.updated_at = now;
    log_held(txn, tenant, &mut h)?;
    txn.put_json(keys::hold(tenant, provider_ref), &h);
    record_history(txn, tenant, &h, "released_by_operator", now)?;
    Ok(true)
}
