//! Operator use cases behind the admin API: campaigns (list, create, update), one code's
//! state and history, holds in flight, releasing a hold by hand, and whether a tenant is
//! safe to switch in Karma now (switch readiness).

use serde_json::json;

use crate::clock::{rfc3339, Millis};
use crate::contract::ApiError;
use crate::store::{StoreError, Txn};
use crate::voucher::{match_key, Campaign, CampaignSpec};

use super::voucher::{release_hold, usage, HistoryEvent};
use super::{keys, Reply, Source, State};

fn campaign_json(
    txn: &Txn<'_>,
    st: &State,
    tenant: &str,
    id: &str,
) -> Result<serde_json::Value, StoreError> {
    let Some(e) = st.tenant(tenant).and_then(|t| t.campaigns.get(id)) else {
        return Ok(serde_json::Value::Null);
    };
    let u = usage(txn, st, tenant, id, "", None)?;
    let budget_left = e.campaign.max_discount_total_cents.map(|b| {
        b.saturating_sub(u.campaign_spent_cents)
            .saturating_sub(u.campaign_held_cents)
            .max(0)
    });
    Ok(json!({
        "source": e.source,
        "spec": e.campaign.spec,
        "usesConsumed": u.campaign_used,
        "holdsLive": u.campaign_held,
        "discountCentsCommitted": u.campaign_spent_cents,
        "discountCentsHeld": u.campaign_held_cents,
        "budgetCentsLeft": budget_left,
    }))
}

pub fn list_campaigns(
    txn: &mut Txn<'_>,
    st: &mut State,
    tenant: &str,
    now: Millis,
) -> Result<Reply, StoreError> {
    super::voucher::prune(txn, st, now)?;
    let Some(t) = st.tenant(tenant) else {
        return Ok(Reply::not_found("unknown tenant"));
    };
    let ids: Vec<String> = t.campaigns.keys().cloned().collect();
    let mut items = Vec::new();
    for id in ids {
        items.push(campaign_json(txn, st, tenant, &id)?);
    }
    Ok(Reply::json(200, json!({"ok": true, "campaigns": items})))
}

/// Create (`id_in_path = None`) or replace an API-made campaign.
pub fn put_campaign(
    txn: &mut Txn<'_>,
    st: &mut State,
    tenant: &str,
    id_in_path: Option<&str>,
    spec: CampaignSpec,
) -> Result<Reply, StoreError> {
    let Some(t) = st.tenant(tenant) else {
        return Ok(Reply::not_found("unknown tenant"));
    };
    if let Some(id) = id_in_path {
        if id != spec.id {
            return Ok(Reply::error(&ApiError::invalid(
                "id",
                format!("must equal the id in the path ({id})"),
            )));
        }
    }
    let existing = t.campaigns.get(&spec.id).map(|e| e.source);
    match (id_in_path, existing) {
        (_, Some(Source::Config)) => {
            return Ok(Reply::error(&ApiError::new(
                409,
                "CAMPAIGN_FROM_CONFIG",
                format!(
                    "campaign {:?} comes from the config file; change it there",
                    spec.id
                ),
            )));
        }
        (None, Some(Source::Api)) => {
            return Ok(Reply::error(&ApiError::new(
                409,
                "CAMPAIGN_EXISTS",
                format!(
                    "campaign {:?} exists; PUT /campaigns/{} to replace it",
                    spec.id, spec.id
                ),
            )));
        }
        (Some(_), None) => {
            return Ok(Reply::not_found(
                "unknown campaign; POST to /campaigns to create it",
            ))
        }
        _ => {}
    }
    if let Some((code, other)) = t.code_conflict(&spec) {
        return Ok(Reply::error(&ApiError::new(
            409,
            "CODE_CONFLICT",
            format!("code {code:?} already belongs to campaign {other:?}"),
        )));
    }
    if spec.rules.is_some() {
        return Ok(Reply::error(&ApiError::invalid(
            "rules",
            "vendor rules (and their secrets) are set in the config file",
        )));
    }
    let mut seen = std::collections::HashSet::new();
    for (i, code) in spec.codes.iter().enumerate() {
        if !seen.insert(match_key(t.code_match, code)) {
            return Ok(Reply::error(&ApiError::invalid(
                format!("codes[{i}]"),
                "repeats an earlier code",
            )));
        }
    }
    let c = match Campaign::from_spec(spec) {
        Ok(c) => c,
        Err(e) => return Ok(Reply::error(&ApiError::invalid(e.key, e.message))),
    };
    txn.put_json(keys::campaign(tenant, &c.id), &c.spec);
    let id = c.id.clone();
    st.install_campaign(tenant, c, Source::Api);
    let body = campaign_json(txn, st, tenant, &id)?;
    Ok(Reply::json(
        if existing.is_some() { 200 } else { 201 },
        json!({"ok": true, "campaign": body}),
    ))
}

pub fn code_state(
    txn: &mut Txn<'_>,
    st: &mut State,
    tenant: &str,
    typed: &str,
    now: Millis,
) -> Result<Reply, StoreError> {
    super::voucher::prune(txn, st, now)?;
    let Some(t) = st.tenant(tenant) else {
        return Ok(Reply::not_found("unknown tenant"));
    };
    let Some(found) = super::voucher::resolve_code(txn, st, tenant, typed, None)? else {
        return Ok(Reply::not_found("no campaign has this code"));
    };
    let (cid, code) = (found.campaign.clone(), found.code.clone());
    let limit = t
        .campaigns
        .get(&cid)
        .and_then(|e| e.campaign.max_uses_per_code);
    let u = usage(txn, st, tenant, &cid, &code, None)?;
    let mut history: Vec<HistoryEvent> = Vec::new();
    for (_, v) in txn.scan_prefix(&keys::history_prefix(tenant, &cid, &code))? {
        if let Ok(e) = serde_json::from_slice(&v) {
            history.push(e);
        }
    }
    // Live holds whose "held" event is not written yet (see `HoldRecord::held_unlogged`).
    for r in st.holds().refs_of_code(tenant, &cid, &code) {
        if let Some(h) = txn.get_json::<super::voucher::HoldRecord>(&keys::hold(tenant, &r))? {
            if h.held_unlogged {
                history.push(HistoryEvent::held(&h));
            }
        }
    }
    history.sort_by_key(HistoryEvent::millis);
    let total_events = history.len();
    let last_event = history.last().map(|e| e.event.clone());
    if history.len() > 100 {
        history.drain(..history.len() - 100);
    }
    let state = match limit {
        Some(l) if u.code_used >= l => "used",
        Some(l) if u.code_used + u.code_held >= l => "held",
        _ if u.code_held > 0 => "held",
        _ if last_event.as_deref() == Some("reactivated") => "reactivated",
        _ => "available",
    };
    Ok(Reply::json(
        200,
        json!({
            "ok": true,
            "code": code,
            "campaign": cid,
            "state": state,
            "usesConsumed": u.code_used,
            "holdsLive": u.code_held,
            "maxUsesPerCode": limit,
        "bulk": found.valid_until.is_some() || found.assigned_user.is_some() || !t.index.contains_key(&match_key(t.code_match, typed)),
        "validUntil": found.valid_until.map(rfc3339),
        "assignedUser": found.assigned_user,
            "historyEvents": total_events,
            "history": history,
        }),
    ))
}

/// The most live holds one `GET holds` answers with.
pub const MAX_HOLDS_PAGE: usize = 1000;
/// How many it answers with when the request names no `limit`.
pub const DEFAULT_HOLDS_PAGE: usize = 100;

/// Which page of a tenant's live holds to list: those after `after` (the last providerRef
/// of the previous page), at most `limit` (1..=[`MAX_HOLDS_PAGE`]).
#[derive(Debug, Clone)]
pub struct HoldPage {
    pub after: Option<String>,
    pub limit: usize,
}

/// A page of a tenant's live holds, oldest first, with how many it has in all (`count`)
/// and where the next page starts (`next`: `null` on the last page). One writer job reads
/// at most one page of hold records, so a listing of 300 000 holds does not stop commits.
pub fn list_holds(
    txn: &mut Txn<'_>,
    st: &mut State,
    tenant: &str,
    page: &HoldPage,
    now: Millis,
) -> Result<Reply, StoreError> {
    super::voucher::prune(txn, st, now)?;
    let limit = page.limit.clamp(1, MAX_HOLDS_PAGE);
    let Some(mut items) = st
        .holds()
        .page_of_tenant(tenant, page.after.as_deref(), limit + 1)
    else {
        return Ok(Reply::error(&ApiError::invalid(
            "after",
            "not a providerRef this listing gave (use the last one of the previous page)",
        )));
    };
    let more = items.len() > limit;
    items.truncate(limit);
    let next = if more {
        items.last().map(|(_, r)| r.clone())
    } else {
        None
    };
    let mut out = Vec::with_capacity(items.len());
    for (exp, r) in items {
        // The live index keeps no text: campaign, code and guest come from the hold's record.
        let h = txn.get_json::<super::voucher::HoldRecord>(&keys::hold(tenant, &r))?;
        out.push(json!({
            "providerRef": r,
            "campaign": h.as_ref().map(|h| &h.campaign),
            "code": h.as_ref().map(|h| &h.code),
            "guest": h.as_ref().and_then(|h| h.guest.as_ref()),
            "amountCents": h.as_ref().map(|h| h.amount_cents),
            "expiresAt": rfc3339(exp),
        }));
    }
    let count = st.holds().count_of_tenant(tenant);
    Ok(Reply::json(
        200,
        json!({"ok": true, "count": count, "holds": out, "next": next}),
    ))
}

/// One hold as stored, whatever its state.
pub fn get_hold(
    txn: &mut Txn<'_>,
    st: &mut State,
    tenant: &str,
    provider_ref: &str,
    now: Millis,
) -> Result<Reply, StoreError> {
    super::voucher::prune(txn, st, now)?;
    let Some(h) = txn.get_json::<super::voucher::HoldRecord>(&keys::hold(tenant, provider_ref))?
    else {
        return Ok(Reply::not_found("no hold with this providerRef"));
    };
    let live = st.holds().contains(provider_ref);
    Ok(Reply::json(200, h.to_json(live)))
}

pub fn release(
    txn: &mut Txn<'_>,
    st: &mut State,
    tenant: &str,
    provider_ref: &str,
    now: Millis,
) -> Result<Reply, StoreError> {
    if release_hold(txn, st, tenant, provider_ref, now)? {
        Ok(Reply::json(
            200,
            json!({"ok": true, "providerRef": provider_ref, "status": "released"}),
        ))
    } else {
        Ok(Reply::not_found("no live hold with this providerRef"))
    }
}

/// A tenant's live holds for switch readiness: how many, and the earliest and latest expiry.
#[derive(Debug, Clone, Copy, Default)]
pub struct HoldSummary {
    pub live: u64,
    pub first_expiry: Option<Millis>,
    pub last_expiry: Option<Millis>,
}

pub fn hold_summary(
    txn: &mut Txn<'_>,
    st: &mut State,
    tenant: &str,
    now: Millis,
) -> Result<HoldSummary, StoreError> {
    super::voucher::prune(txn, st, now)?;
    let mut s = HoldSummary::default();
    for at in st.holds().expiries(tenant) {
        s.live += 1;
        s.first_expiry = Some(s.first_expiry.map_or(at, |f| f.min(at)));
        s.last_expiry = Some(s.last_expiry.map_or(at, |l| l.max(at)));
    }
    Ok(s)
}

/// Whether Karma may switch a location to (or away from) this tenant now. Karma refuses a
/// voucher-provider switch with 409 while reservations are in flight or a dead-letter queue
/// is non-empty; this answers the same way: 200 `ready: true`, or 409 `SWITCH_BLOCKED`
/// with each blocker and what to do about it. Queued onward deliveries are reported but do
/// not block (they are not dead letters yet). The figures come from [`hold_summary`] and
/// `webhook::count_backlog_page` (`sliced::switch_readiness` gathers them).
pub fn switch_readiness(
    tenant: &str,
    now: Millis,
    holds: HoldSummary,
    (queued, dead): (u64, u64),
) -> Reply {
    let live = holds.live;
    let admin = format!("/admin/v1/tenants/{tenant}");
    let mut blockers = Vec::new();
    if let Some(last) = holds.last_expiry {
        blockers.push(json!({
            "reason": "LIVE_HOLDS",
            "count": live,
            "message": format!("{live} voucher hold(s) in flight; Karma refuses to switch while reservations are in flight"),
            "action": format!(
                "wait until {} when the last hold expires, or release holds via POST {admin}/holds/{{providerRef}}/release (list them: GET {admin}/holds)",
                rfc3339(last)
            ),
        }));
    }
    if dead > 0 {
        blockers.push(json!({
            "reason": "DEAD_LETTERS",
            "count": dead,
            "message": format!("{dead} webhook dead letter(s); Karma refuses to switch while a dead-letter queue is non-empty"),
            "action": format!(
                "replay the dead letters (POST {admin}/webhooks/dead-letters/replay) or purge them (POST {admin}/webhooks/dead-letters/purge); list them: GET {admin}/webhooks/dead-letters"
            ),
        }));
    }
    let mut notes = Vec::new();
    if queued > 0 {
        notes.push(json!({
            "reason": "QUEUED_DELIVERIES",
            "count": queued,
            "message": format!("{queued} webhook delivery(ies) wait for onward delivery; not a blocker, but one that exhausts its attempts becomes a dead letter"),
        }));
    }
    let ready = blockers.is_empty();
    let mut body = json!({
        "ok": ready,
        "tenant": tenant,
        "ready": ready,
        "checkedAt": rfc3339(now),
        "holds": {
            "live": live,
            "oldestExpiresAt": holds.first_expiry.map(rfc3339),
            "lastExpiresAt": holds.last_expiry.map(rfc3339),
        },
        "webhooks": {"deadLetters": dead, "queued": queued},
        "blockers": blockers,
        "notes": notes,
    });
    if ready {
        return Reply::json(200, body);
    }
    body["error"] = json!("SWITCH_BLOCKED");
    body["message"] = json!(format!(
        "tenant {tenant:?} is not safe to switch now: see blockers for what to do"
    ));
    Reply::json(409, body)
}
