//! Writer jobs of the order sources: apply a page of orders together with the source's new
//! position (one atomic write, so a restart mid-poll neither loses nor repeats an award),
//! the LOKE watch list, the operator's award of an unmatched order, and the admin views.
//! Awards and reversals go through `service::loyalty` (the ledger's one path).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::clock::Millis;
use crate::config::{SourceConfig, SourceKind};
use crate::contract::loyalty::AwardRequest;
use crate::service::loyalty as loy;
use crate::service::{keys, Reply, State};
use crate::store::{StoreError, Txn};

use super::order::{Order, OrderState, Status};

/// `srco/{t}/{source}/{order}`: what this service knows and did about one order.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct OrderRecord {
    pub order_id: String,
    pub state: OrderState,
    /// The platform's word, as last seen.
    pub platform_state: String,
    pub amount_cents: Option<i64>,
    pub phone: Option<String>,
    pub email: Option<String>,
    pub item_ids: Vec<String>,
    pub member_id: Option<String>,
    pub points: Option<i64>,
    pub points_reversed: Option<i64>,
    /// `match` (phone/email) or `operator`.
    pub awarded_by: Option<String>,
    pub failure: Option<String>,
    pub first_seen: Millis,
    pub updated: Millis,
}

/// `srcp/{t}/{source}`: where the poller is, and what it has seen.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct SourceStatus {
    /// LOKE: the cursor of the page read last (read again next poll); `None`: the first.
    pub after: Option<String>,
    /// Olympus: offset per status list (`completed`, `cancelled`, `refunded`).
    pub offsets: BTreeMap<String, u64>,
    /// LOKE: where the last pass over the watch list stopped.
    pub watch_after: Option<String>,
    pub last_poll_at: Option<Millis>,
    pub last_error: Option<String>,
    pub last_error_at: Option<Millis>,
    /// Distinct orders recorded.
    pub seen: u64,
    /// Orders by their current state.
    pub counts: BTreeMap<OrderState, u64>,
    /// Orders refused before they could be recorded (an unusable id).
    pub invalid: u64,
}

impl SourceStatus {
    fn moved(&mut self, from: Option<OrderState>, to: OrderState) {
        if let Some(f) = from {
            let n = self.counts.entry(f).or_insert(0);
            *n = n.saturating_sub(1);
        } else {
            self.seen = self.seen.saturating_add(1);
        }
        let n = self.counts.entry(to).or_insert(0);
        *n = n.saturating_add(1);
    }
    pub fn count(&self, s: OrderState) -> u64 {
        self.counts.get(&s).copied().unwrap_or(0)
    }
}

/// Which source a job is about.
#[derive(Debug, Clone)]
pub struct SourceRef {
    pub tenant: String,
    pub name: String,
    pub program: String,
    /// LOKE: how long an open or awarded order is fetched again (0: never).
    pub watch_ms: i64,
}

impl SourceRef {
    /// The source `c` of `tenant`, for writer jobs.
    pub fn new(tenant: &str, c: &SourceConfig) -> SourceRef {
        SourceRef {
            tenant: tenant.to_owned(),
            name: c.name.clone(),
            program: c.program.clone(),
            watch_ms: match c.kind {
                SourceKind::Loke { .. } => i64::try_from(c.watch.as_millis()).unwrap_or(i64::MAX),
                SourceKind::Olympus { .. } => 0,
            },
        }
    }
}

/// How a page moves the position.
#[derive(Debug, Clone)]
pub enum Advance {
    /// Orders fetched by id (the watch list): the position stays.
    Stay,
    Loke {
        after: Option<String>,
    },
    Olympus {
        list: String,
        offset: u64,
    },
}

pub fn status(txn: &Txn<'_>, s: &SourceRef) -> Result<SourceStatus, StoreError> {
    Ok(txn
        .get_json(&keys::source_status(&s.tenant, &s.name))?
        .unwrap_or_default())
}

/// Record a poll's end: `Ok` clears the error, `Err(why)` keeps it for the admin view.
pub fn finish_poll(
    txn: &mut Txn<'_>,
    s: &SourceRef,
    outcome: Result<(), String>,
    now: Millis,
) -> Result<SourceStatus, StoreError> {
    let mut st = status(txn, s)?;
    match outcome {
        Ok(()) => {
            st.last_poll_at = Some(now);
            st.last_error = None;
        }
        Err(why) => {
            st.last_error = Some(why);
            st.last_error_at = Some(now);
        }
    }
    txn.put_json(keys::source_status(&s.tenant, &s.name), &st);
    Ok(st)
}

/// An order id we can key: 1-128 characters, no control characters.
fn usable_id(id: &str) -> bool {
    !id.is_empty() && id.chars().count() <= 128 && !id.chars().any(char::is_control)
}

/// Apply a page of orders and move the position, in one job.
pub fn apply_page(
    txn: &mut Txn<'_>,
    state: &mut State,
    s: &SourceRef,
    orders: &[Order],
    advance: Advance,
    now: Millis,
) -> Result<SourceStatus, StoreError> {
    let mut st = status(txn, s)?;
    for o in orders {
        if !usable_id(&o.id) {
            st.invalid = st.invalid.saturating_add(1);
            tracing::warn!(tenant = %s.tenant, source = %s.name, "an order with an unusable id was skipped");
            continue;
        }
        apply_order(txn, state, s, o, &mut st, now)?;
    }
    match advance {
        Advance::Stay => {}
        Advance::Loke { after } => st.after = after,
        Advance::Olympus { list, offset } => {
            st.offsets.insert(list, offset);
        }
    }
    txn.put_json(keys::source_status(&s.tenant, &s.name), &st);
    Ok(st)
}

fn purchase_id(s: &SourceRef, order: &str) -> String {
    format!("{}:{order}", s.name)
}

/// A reversal's operation id: 1-64 of the id alphabet, derived from (source, order).
fn reversal_id(s: &SourceRef, order: &str) -> String {
    let mut h = Sha256::new();
    h.update(s.name.as_bytes());
    h.update([0]);
    h.update(order.as_bytes());
    format!("src-{}", &hex::encode(h.finalize())[..40])
}

fn apply_order(
    txn: &mut Txn<'_>,
    state: &mut State,
    s: &SourceRef,
    o: &Order,
    st: &mut SourceStatus,
    now: Millis,
) -> Result<(), StoreError> {
    let key = keys::source_order(&s.tenant, &s.name, &o.id);
    let prev: Option<OrderRecord> = txn.get_json(&key)?;
    let from = prev.as_ref().map(|r| r.state);
    let mut rec = prev.unwrap_or_else(|| OrderRecord {
        order_id: o.id.clone(),
        state: OrderState::Open,
        platform_state: o.state.clone(),
        amount_cents: o.amount_cents.clone().ok(),
        phone: o.phone.clone(),
        email: o.email.clone(),
        item_ids: o.item_ids.clone(),
        member_id: None,
        points: None,
        points_reversed: None,
        awarded_by: None,
        failure: None,
        first_seen: now,
        updated: now,
    });
    let to = match (from, &o.status) {
        (None | Some(OrderState::Open), Status::Open) => OrderState::Open,
        (None | Some(OrderState::Open), Status::Completed) => {
            rec.amount_cents = o.amount_cents.clone().ok();
            (rec.phone, rec.email, rec.item_ids) =
                (o.phone.clone(), o.email.clone(), o.item_ids.clone());
            complete(txn, state, s, o, &mut rec, now)?
        }
        (None | Some(OrderState::Open), Status::Reversed(_)) => OrderState::Cancelled,
        (Some(OrderState::Awarded), Status::Reversed(why)) => {
            reverse(txn, state, s, &mut rec, why, now)?
        }
        (Some(OrderState::Unmatched | OrderState::Failed), Status::Reversed(_)) => {
            OrderState::Cancelled
        }
        // Anything else was settled already: a re-polled order changes nothing.
        (Some(f), _) => f,
    };
    if from == Some(to) && rec.platform_state == o.state {
        return watch(txn, s, &o.id, to, now);
    }
    rec.platform_state = o.state.clone();
    rec.state = to;
    rec.updated = now;
    txn.put_json(key, &rec);
    if from != Some(to) {
        st.moved(from, to);
    }
    watch(txn, s, &o.id, to, now)
}

/// LOKE orders that may still change (open, or awarded and not yet refunded) are fetched
/// again by id until `watch_ms` after first sight; others leave the watch list.
fn watch(
    txn: &mut Txn<'_>,
    s: &SourceRef,
    order: &str,
    to: OrderState,
    now: Millis,
) -> Result<(), StoreError> {
    if s.watch_ms <= 0 {
        return Ok(());
    }
    let k = keys::source_watch(&s.tenant, &s.name, order);
    if matches!(to, OrderState::Open | OrderState::Awarded) {
        if txn.get(&k)?.is_none() {
            txn.put_u64(
                k,
                u64::try_from(now.saturating_add(s.watch_ms)).unwrap_or(0),
            );
        }
    } else if txn.get(&k)?.is_some() {
        txn.delete(k);
    }
    Ok(())
}

fn complete(
    txn: &mut Txn<'_>,
    state: &mut State,
    s: &SourceRef,
    o: &Order,
    rec: &mut OrderRecord,
    now: Millis,
) -> Result<OrderState, StoreError> {
    if let Err(why) = &o.amount_cents {
        rec.failure = Some(why.clone());
        return Ok(OrderState::Failed);
    }
    let member = loy::member_by_contact(
        txn,
        &s.tenant,
        &s.program,
        rec.phone.as_deref(),
        rec.email.as_deref(),
    )?;
    let Some(member) = member else {
        return Ok(OrderState::Unmatched);
    };
    award(txn, state, s, rec, &member, "match", now)
}

/// Credit the order to `member`; `Failed` (with the refusal recorded) if the ledger refuses.
fn award(
    txn: &mut Txn<'_>,
    state: &mut State,
    s: &SourceRef,
    rec: &mut OrderRecord,
    member: &str,
    by: &str,
    now: Millis,
) -> Result<OrderState, StoreError> {
    let req = AwardRequest {
        user_id: String::new(),
        loyalty_program_id: s.program.clone(),
        purchase_id: purchase_id(s, &rec.order_id),
        purchase_amount_cents: rec.amount_cents.unwrap_or(0),
        item_ids: rec.item_ids.clone(),
        transaction_id: format!("src:{}", purchase_id(s, &rec.order_id)),
    };
    let reply = loy::award_member(txn, state, &s.tenant, &s.program, member, &req, now)?;
    let v: serde_json::Value = serde_json::from_slice(&reply.body).unwrap_or_default();
    if v["ok"] == true {
        rec.member_id = Some(member.to_owned());
        rec.points = v["pointsAwarded"].as_i64();
        rec.awarded_by = Some(by.to_owned());
        rec.failure = None;
        Ok(OrderState::Awarded)
    } else {
        rec.failure = Some(format!(
            "award refused: {}",
            v["message"].as_str().unwrap_or("no reason given")
        ));
        Ok(OrderState::Failed)
    }
}

fn reverse(
    txn: &mut Txn<'_>,
    state: &mut State,
    s: &SourceRef,
    rec: &mut OrderRecord,
    why: &str,
    now: Millis,
) -> Result<OrderState, StoreError> {
    let req = loy::ReversalRequest {
        id: reversal_id(s, &rec.order_id),
        purchase_id: Some(purchase_id(s, &rec.order_id)),
        transaction_id: None,
        amount_cents: None,
        reason: format!("{} order {} {why}", s.name, rec.order_id),
    };
    let reply = loy::reverse_award(txn, state, &s.tenant, &s.program, req, now)?;
    let v: serde_json::Value = serde_json::from_slice(&reply.body).unwrap_or_default();
    if v["ok"] == true {
        rec.points_reversed = v["pointsReversed"].as_i64();
        Ok(OrderState::Reversed)
    } else if v["error"] == "ALREADY_REVERSED" {
        // The operator reversed the award by hand already: nothing is left to take back.
        rec.points_reversed = Some(0);
        Ok(OrderState::Reversed)
    } else {
        rec.failure = Some(format!(
            "reversal refused: {}",
            v["message"].as_str().unwrap_or("no reason given")
        ));
        Ok(OrderState::Awarded)
    }
}

/// Up to `limit` watched LOKE order ids whose watch has not ended, from where the last
/// pass stopped (wrapping round); ended watches are dropped.
pub fn due_watches(
    txn: &mut Txn<'_>,
    s: &SourceRef,
    limit: usize,
    now: Millis,
) -> Result<Vec<String>, StoreError> {
    let mut st = status(txn, s)?;
    let prefix = keys::source_watch_prefix(&s.tenant, &s.name);
    let after = st
        .watch_after
        .as_deref()
        .map(|a| keys::source_watch(&s.tenant, &s.name, a));
    let (pairs, next) = txn.scan_page(&prefix, after.as_deref(), limit)?;
    let mut ids = Vec::new();
    for (k, v) in pairs {
        let until = crate::store::decode_u64(&v).unwrap_or(0);
        if i64::try_from(until).unwrap_or(i64::MAX) <= now {
            txn.delete(k);
        } else {
            ids.push(crate::store::keys::last(&k).to_owned());
        }
    }
    st.watch_after = next.map(|k| crate::store::keys::last(&k).to_owned());
    txn.put_json(keys::source_status(&s.tenant, &s.name), &st);
    Ok(ids)
}

/// The operator's award of an unmatched order to a member: once. Awarding it again to
/// the same member answers the record (a safe retry); anything else is a 409.
pub fn operator_award(
    txn: &mut Txn<'_>,
    state: &mut State,
    s: &SourceRef,
    order: &str,
    member: &str,
    now: Millis,
) -> Result<Reply, StoreError> {
    let key = keys::source_order(&s.tenant, &s.name, order);
    let Some(mut rec) = txn.get_json::<OrderRecord>(&key)? else {
        return Ok(Reply::not_found("no such order from this source"));
    };
    match rec.state {
        OrderState::Unmatched => {}
        OrderState::Awarded if rec.member_id.as_deref() == Some(member) => {
            return Ok(Reply::json(
                200,
                serde_json::json!({"ok": true, "order": rec}),
            ));
        }
        other => {
            return Ok(Reply::error(&crate::contract::ApiError::new(
                409,
                "ORDER_NOT_UNMATCHED",
                format!(
                    "only an unmatched order can be awarded by hand; this one is {}",
                    other.name()
                ),
            )))
        }
    }
    let mut st = status(txn, s)?;
    let to = award(txn, state, s, &mut rec, member, "operator", now)?;
    if to != OrderState::Awarded {
        let why = rec.failure.clone().unwrap_or_default();
        return Ok(Reply::error(&crate::contract::ApiError::invalid(
            "memberId", why,
        )));
    }
    rec.state = to;
    rec.updated = now;
    txn.put_json(key, &rec);
    st.moved(Some(OrderState::Unmatched), to);
    txn.put_json(keys::source_status(&s.tenant, &s.name), &st);
    watch(txn, s, order, to, now)?;
    Ok(Reply::json(
        200,
        serde_json::json!({"ok": true, "order": rec}),
    ))
}

/// One source in the admin view.
pub fn view(s: &SourceRef, kind: &str, st: &SourceStatus) -> serde_json::Value {
    let counts: serde_json::Map<String, serde_json::Value> = OrderState::ALL
        .iter()
        .map(|x| (x.name().to_owned(), st.count(*x).into()))
        .collect();
    serde_json::json!({
        "name": s.name,
        "kind": kind,
        "program": s.program,
        "lastPollAt": st.last_poll_at.map(crate::clock::rfc3339),
        "lastError": st.last_error,
        "lastErrorAt": st.last_error_at.map(crate::clock::rfc3339),
        "position": {"after": st.after, "offsets": st.offsets},
        "seen": st.seen,
        "invalid": st.invalid,
        "orders": counts,
    })
}

/// A page of a source's order records, optionally of one state.
pub fn list_orders(
    txn: &Txn<'_>,
    s: &SourceRef,
    only: Option<OrderState>,
    after: Option<&str>,
    limit: usize,
) -> Result<Reply, StoreError> {
    let prefix = keys::source_orders_prefix(&s.tenant, &s.name);
    let from = after.map(|a| keys::source_order(&s.tenant, &s.name, a));
    let (pairs, next) = txn.scan_page(&prefix, from.as_deref(), limit)?;
    let orders: Vec<OrderRecord> = pairs
        .iter()
        .filter_map(|(_, v)| serde_json::from_slice::<OrderRecord>(v).ok())
        .filter(|r| only.is_none_or(|o| o == r.state))
        .collect();
    Ok(Reply::json(
        200,
        serde_json::json!({
            "ok": true,
            "orders": orders,
            "next": next.map(|k| crate::store::keys::last(&k).to_owned()),
        }),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The stored forms, pinned: a change here is a change of the record format.
    #[test]
    fn golden_records() {
        let rec = OrderRecord {
            order_id: "o1".into(),
            state: OrderState::Awarded,
            platform_state: "completed".into(),
            amount_cents: Some(1619),
            phone: Some("14155550100".into()),
            email: None,
            item_ids: vec!["m1".into()],
            member_id: Some("mbr_1".into()),
            points: Some(16),
            points_reversed: None,
            awarded_by: Some("match".into()),
            failure: None,
            first_seen: 5,
            updated: 6,
        };
        let golden = r#"{"orderId":"o1","state":"awarded","platformState":"completed","amountCents":1619,"phone":"14155550100","email":null,"itemIds":["m1"],"memberId":"mbr_1","points":16,"pointsReversed":null,"awardedBy":"match","failure":null,"firstSeen":5,"updated":6}"#;
        assert_eq!(serde_json::to_string(&rec).unwrap(), golden);
        assert_eq!(serde_json::from_str::<OrderRecord>(golden).unwrap(), rec);
        let mut st = SourceStatus {
            after: Some("p2".into()),
            ..SourceStatus::default()
        };
        st.offsets.insert("completed".into(), 4);
        st.moved(None, OrderState::Open);
        st.moved(Some(OrderState::Open), OrderState::Awarded);
        let golden = r#"{"after":"p2","offsets":{"completed":4},"watchAfter":null,"lastPollAt":null,"lastError":null,"lastErrorAt":null,"seen":1,"counts":{"open":0,"awarded":1},"invalid":0}"#;
        assert_eq!(serde_json::to_string(&st).unwrap(), golden);
        assert_eq!(serde_json::from_str::<SourceStatus>(golden).unwrap(), st);
    }
}
