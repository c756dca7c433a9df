//! A transaction's timeline, for support when Karma and the restaurant disagree: found by
//! a hold's providerRef (`kph_…`), Karma's voucher transaction id (`res_…`), a loyalty
//! transaction id (`loy_…`), a purchaseId or a redemption id (`rdm_…`). Nothing new is
//! recorded for it: the timeline is gathered from what the store already keeps — hold
//! records, code history, idempotency records (the answers given), awards, redemptions
//! and the member's ledger entries.

use serde_json::{json, Value};

use crate::clock::{rfc3339, Millis};
use crate::loyalty::Entry;
use crate::store::{StoreError, Txn};
use crate::voucher::HoldState;

use super::loyalty::{ledger_of, AwardRecord, MemberRecord, RedemptionRecord};
use super::voucher::{HistoryEvent, HoldRecord};
use super::{keys, Reply, State};

/// One page of a tenant's hold records: the providerRef of the hold whose last
/// transaction id is `tx`, if on this page, and the cursor of the next page.
pub fn hold_of_transaction_page(
    txn: &mut Txn<'_>,
    tenant: &str,
    tx: &str,
    after: Option<&[u8]>,
    slice: usize,
) -> Result<(Option<String>, Option<Vec<u8>>), StoreError> {
    let (page, next) = txn.scan_page(&keys::hold(tenant, ""), after, slice)?;
    let found = page.iter().find_map(|(_, v)| {
        serde_json::from_slice::<HoldRecord>(v)
            .ok()
            .filter(|h| h.transaction_id.as_deref() == Some(tx))
            .map(|h| h.provider_ref)
    });
    Ok((found, next))
}

/// The timeline of `id`; `hold`: the providerRef a `res_` id was found under (by
/// [`hold_of_transaction_page`]). 404 when nothing is recorded under the id.
pub fn find(
    txn: &mut Txn<'_>,
    st: &mut State,
    tenant: &str,
    id: &str,
    hold: Option<&str>,
    now: Millis,
) -> Result<Reply, StoreError> {
    super::voucher::prune(txn, st, now)?;
    let voucher_answers = answers(txn, tenant, &["commit", "reactivate"], id)?;
    let provider_ref = hold.or(id.starts_with("kph_").then_some(id));
    if let Some(r) = provider_ref {
        if let Some(h) = txn.get_json::<HoldRecord>(&keys::hold(tenant, r))? {
            let live = st.holds().contains(r);
            return voucher(txn, tenant, id, &h, live, voucher_answers, now);
        }
    }
    let programs: Vec<String> = st
        .tenant(tenant)
        .map(|t| {
            let mut p: Vec<String> = t.programs.keys().cloned().collect();
            p.sort();
            p
        })
        .unwrap_or_default();
    for p in programs {
        if let Some(reply) = loyalty(txn, tenant, &p, id)? {
            return Ok(reply);
        }
    }
    if !voucher_answers.is_empty() {
        // Answered (a refusal, or a reactivate of an unknown hold) but no hold carries it.
        return Ok(Reply::json(
            200,
            json!({"ok": true, "query": id, "kind": "voucher", "timeline": [], "answers": voucher_answers}),
        ));
    }
    Ok(Reply::not_found(
        "no hold, award, purchase or redemption is recorded under this id",
    ))
}

/// The answers recorded under `id` for each call in `ops` (the idempotency records).
fn answers(txn: &Txn<'_>, tenant: &str, ops: &[&str], id: &str) -> Result<Vec<Value>, StoreError> {
    let mut out = Vec::new();
    for op in ops {
        if let Some(rec) = txn.get(&keys::idem(tenant, op, id))? {
            if rec.len() >= 34 {
                let status = u16::from_be_bytes([rec[32], rec[33]]);
                let body: Value = serde_json::from_slice(&rec[34..]).unwrap_or(Value::Null);
                out.push(
                    json!({"call": op, "transactionId": id, "status": status, "answer": body}),
                );
            }
        }
    }
    Ok(out)
}

/// A hold's timeline: its code's history events for this hold, the "held" event not yet
/// written, and its expiry if it ran out.
fn voucher(
    txn: &Txn<'_>,
    tenant: &str,
    query: &str,
    h: &HoldRecord,
    live: bool,
    mut answers: Vec<Value>,
    now: Millis,
) -> Result<Reply, StoreError> {
    let mut events: Vec<HistoryEvent> = Vec::new();
    for (_, v) in txn.scan_prefix(&keys::history_prefix(tenant, &h.campaign, &h.code))? {
        if let Ok(e) = serde_json::from_slice::<HistoryEvent>(&v) {
            if e.provider_ref == h.provider_ref {
                events.push(e);
            }
        }
    }
    if h.held_unlogged {
        events.push(HistoryEvent::held(h));
    }
    if h.state == HoldState::Held && h.expires_at <= now {
        events.push(HistoryEvent::of(h, "expired", h.expires_at));
    }
    events.sort_by_key(HistoryEvent::millis);
    if let Some(tx) = h.transaction_id.as_deref().filter(|tx| *tx != query) {
        answers.extend(self::answers(txn, tenant, &["commit", "reactivate"], tx)?);
    }
    let timeline: Vec<Value> = events
        .iter()
        .map(|e| {
            json!({"at": e.at, "event": e.event, "transactionId": e.transaction_id,
                   "amountCents": e.amount_cents})
        })
        .collect();
    let mut body = h.to_json(live);
    body["query"] = json!(query);
    body["kind"] = json!("voucher");
    body["timeline"] = json!(timeline);
    body["answers"] = json!(answers);
    Ok(Reply::json(200, body))
}

/// The award or redemption of program `p` that `id` names (a loy_ id, a purchaseId or a
/// redemption id), with its ledger entries; `None`: nothing of `p` under `id`.
fn loyalty(txn: &Txn<'_>, t: &str, p: &str, id: &str) -> Result<Option<Reply>, StoreError> {
    let tx = match txn.get(&keys::purchase(t, p, id))? {
        Some(tx) => String::from_utf8_lossy(&tx).into_owned(),
        None => id.to_owned(),
    };
    if let Some(a) = txn.get_json::<AwardRecord>(&keys::award(t, p, &tx))? {
        let entries = ledger(txn, t, p, &a.member_id, |e| {
            e.transaction_id.as_deref() == Some(tx.as_str())
                || e.purchase_id.as_deref() == Some(a.purchase_id.as_str())
        })?;
        let body = json!({
            "ok": true, "query": id, "kind": "award", "program": p,
            "memberId": a.member_id, "purchaseId": a.purchase_id,
            "transactionId": a.transaction_id,
            "purchaseAmountCents": a.purchase_amount_cents,
            "points": a.points, "reversedPoints": a.reversed_points,
            "timeline": entries,
            "answers": answers(txn, t, &["award"], &a.transaction_id)?,
        });
        return Ok(Some(Reply::json(200, body)));
    }
    let redemption = match redemption_of(txn, t, id)? {
        Some(r) => r,
        None => id.to_owned(),
    };
    let Some(r) = txn.get_json::<RedemptionRecord>(&keys::redemption(t, p, &redemption))? else {
        return Ok(None);
    };
    let entries = ledger(txn, t, p, &r.member_id, |e| {
        e.redemption_id.as_deref() == Some(r.redemption_id.as_str())
    })?;
    let body = json!({
        "ok": true, "query": id, "kind": "redemption", "program": p,
        "memberId": r.member_id, "redemptionId": r.redemption_id,
        "transactionId": r.transaction_id, "rewardId": r.reward_id,
        "points": r.points, "code": r.code, "reversed": r.reversed,
        "timeline": entries,
        "answers": answers(txn, t, &["redeem"], &r.transaction_id)?,
    });
    Ok(Some(Reply::json(200, body)))
}

/// The redemption id a redeem call answered under the loy_ id `tx`.
fn redemption_of(txn: &Txn<'_>, t: &str, tx: &str) -> Result<Option<String>, StoreError> {
    let Some(rec) = txn.get(&keys::idem(t, "redeem", tx))? else {
        return Ok(None);
    };
    let body: Value = serde_json::from_slice(rec.get(34..).unwrap_or(&[])).unwrap_or(Value::Null);
    Ok(body["redemptionId"].as_str().map(str::to_owned))
}

/// The member's ledger entries that `keep`, as timeline events.
fn ledger(
    txn: &Txn<'_>,
    t: &str,
    p: &str,
    member: &str,
    keep: impl Fn(&Entry) -> bool,
) -> Result<Vec<Value>, StoreError> {
    let mut out = Vec::new();
    let Some(m) = txn.get_json::<MemberRecord>(&keys::member(t, p, member))? else {
        return Ok(out);
    };
    for e in ledger_of(txn, t, p, &m)? {
        if keep(&e) {
            out.push(json!({
                "at": rfc3339(e.at), "event": e.kind, "points": e.points,
                "balanceAfter": e.balance_after, "reason": e.reason,
                "ledgerSeq": e.seq, "reference": e.reference,
            }));
        }
    }
    Ok(out)
}
