//! The webhook inbox and its onward-delivery queues, as writer jobs.
//!
//! A new delivery is stored (raw body, headers of interest, receive time) together with its
//! dedupe record *and* one queue entry per matching route, in one durable write before the
//! 200 leaves — so every acknowledged event reaches each matching route at least once, even
//! across a crash. A delivery id seen within the retention window is a duplicate and changes
//! nothing. The dispatcher (`crate::dispatch`) takes the head of each route's queue, and
//! records each attempt here: delivered, retry later, or dead letter.

use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::clock::{rfc3339, Millis};
use crate::contract::ApiError;
use crate::store::{last, StoreError, Txn};

use super::{Reply, State};

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct InboxRecord {
    pub seq: u64,
    pub id: String,
    pub event: String,
    pub received_at: Millis,
    pub headers: Vec<(String, String)>,
    pub body: String,
    /// Routes the event was queued for.
    #[serde(default)]
    pub routes: Vec<String>,
}

/// An event's place in a route's queue (or among its dead letters).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct QueueState {
    /// Attempts in this round (since queued or last replayed); the route's `max_attempts`
    /// applies to them. In a dead letter: every attempt, earlier rounds included.
    pub attempts: u32,
    pub last_error: Option<String>,
    /// Attempts recorded in earlier rounds, before a replay of the dead letter: this
    /// round's attempt records are numbered after them, so a replay never overwrites one.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub earlier: u32,
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Attempt {
    pub n: u32,
    pub at: String,
    pub outcome: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
}

use super::keys::{
    attempt_key, attempts_prefix, dead_key, dead_prefix, dedupe_key, dedupe_prefix, delivered_key,
    inbox_key, inbox_prefix, lease_key, queue_key, queue_prefix, queues_prefix,
};

/// A verified delivery, ready for the inbox.
pub struct Delivery {
    pub id: String,
    pub event: String,
    pub body: Vec<u8>,
    /// Headers of interest (signature headers, content type).
    pub headers: Vec<(String, String)>,
    /// Names of the routes whose pattern matches the event.
    pub routes: Vec<String>,
}

/// Headers kept with an inbox event: the signature headers and the content type.
const KEPT_HEADERS: [&str; 6] = [
    "content-type",
    "webhook-id",
    "webhook-timestamp",
    "webhook-signature",
    "stripe-signature",
    "user-agent",
];

fn signature_header(s: &crate::webhook::Scheme) -> Option<&str> {
    match s {
        crate::webhook::Scheme::HmacSha256Hex { header }
        | crate::webhook::Scheme::Stripe { header } => Some(header),
        _ => None,
    }
}

/// Admit a delivery before it reaches the writer: its signature (401), its body and
/// envelope (400 naming the field), its age; then the headers kept with it and the routes
/// whose patterns match its event.
pub fn admit(
    cfg: &crate::config::WebhookConfig,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
    now: Millis,
) -> Result<Delivery, ApiError> {
    let lookup = |name: &str| {
        headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.clone())
    };
    crate::webhook::verify(
        &cfg.scheme,
        &cfg.secrets,
        &lookup,
        &body,
        now,
        cfg.tolerance_ms,
    )
    .map_err(|e| ApiError::new(401, "BAD_SIGNATURE", e.message()))?;
    let value: serde_json::Value = crate::contract::parse(&body)?;
    let env = crate::webhook::parse_envelope(&value).map_err(|e| match e {
        ("", msg) => ApiError::new(400, "INVALID_BODY", msg),
        (field, msg) => ApiError::invalid(field, msg),
    })?;
    if let Some(max_age) = cfg.max_age_ms {
        crate::webhook::check_max_age(&value, now, max_age)
            .map_err(|msg| ApiError::invalid("timestamp", msg))?;
    }
    let kept: Vec<(String, String)> = headers
        .into_iter()
        .filter(|(k, _)| {
            KEPT_HEADERS.contains(&k.as_str()) || Some(k.as_str()) == signature_header(&cfg.scheme)
        })
        .collect();
    let routes = cfg
        .routes
        .iter()
        .filter(|r| crate::webhook::glob_match(&r.events, &env.event))
        .map(|r| r.name.clone())
        .collect();
    Ok(Delivery {
        id: env.id,
        event: env.event,
        body,
        headers: kept,
        routes,
    })
}

pub fn receive(
    txn: &mut Txn<'_>,
    st: &mut State,
    t: &str,
    d: Delivery,
    now: Millis,
    retention_ms: i64,
) -> Result<Reply, StoreError> {
    let dk = dedupe_key(t, &d.id);
    if let Some(seen) = txn.get_u64_opt(&dk)? {
        if now - (seen as i64) < retention_ms {
            let mut r = Reply::ok(br#"{"ok":true,"duplicate":true}"#.to_vec());
            r.outcome = "duplicate".into();
            return Ok(r);
        }
    }
    let seq = txn.next_id()?;
    for r in &d.routes {
        txn.put_json(queue_key(t, r, seq), &QueueState::default());
    }
    st.count_webhooks(d.routes.len() as i64, 0);
    let rec = InboxRecord {
        seq,
        id: d.id,
        event: d.event,
        received_at: now,
        headers: d.headers,
        body: String::from_utf8_lossy(&d.body).into_owned(),
        routes: d.routes,
    };
    txn.put_json(inbox_key(t, seq), &rec);
    txn.put_u64(dk, now.max(0) as u64);
    Ok(Reply::ok(br#"{"ok":true}"#.to_vec()))
}

/// The head of a route's queue: the oldest undelivered event and its attempts so far.
/// A replica's claim on a route's onward delivery when several replicas share the store
/// (PostgreSQL engine): only the holder of a route's lease takes its queue head, so each
/// event is delivered by one replica at a time. The lease lasts `ttl_ms` from each head
/// taken; a replica that dies lets it lapse, and another takes over (at least once).
pub struct Lease<'a> {
    pub owner: &'a str,
    pub now: Millis,
    pub ttl_ms: i64,
}

/// A route's lease as stored (`whl` records).
#[derive(Serialize, Deserialize)]
struct LeaseRecord {
    owner: String,
    until: Millis,
}

/// The head of `route`'s queue and its state; `None` when the queue is empty (or, with a
/// `lease`, while another replica holds the route).
pub fn next_for_route(
    txn: &mut Txn<'_>,
    t: &str,
    route: &str,
    lease: Option<Lease<'_>>,
) -> Result<Option<(InboxRecord, QueueState)>, StoreError> {
    let head = txn.first_with_prefix(&queue_prefix(t, route))?;
    if let Some(l) = lease {
        if !take_lease(txn, t, route, &l, head.is_some())? {
            return Ok(None);
        }
    }
    let Some((k, v)) = head else {
        return Ok(None);
    };
    let q: QueueState = serde_json::from_slice(&v).unwrap_or_default();
    let seq = u64::from_str_radix(last(&k), 16).unwrap_or(0);
    match txn.get_json::<InboxRecord>(&inbox_key(t, seq))? {
        Some(rec) => Ok(Some((rec, q))),
        None => {
            // An orphan queue entry (its event was purged): drop it.
            txn.delete(k);
            Ok(None)
        }
    }
}

/// Take (or renew) the route's lease for `l.owner` when there is work, let go of it when
/// the queue is empty; `false` while another replica's lease runs.
fn take_lease(
    txn: &mut Txn<'_>,
    t: &str,
    route: &str,
    l: &Lease<'_>,
    work: bool,
) -> Result<bool, StoreError> {
    let k = lease_key(t, route);
    let held = txn.get_json::<LeaseRecord>(&k)?;
    let mine = held.as_ref().is_none_or(|h| h.owner == l.owner);
    if !mine && held.as_ref().is_some_and(|h| h.until > l.now) {
        return Ok(false);
    }
    if work {
        let until = l.now.saturating_add(l.ttl_ms);
        txn.put_json(
            k,
            &LeaseRecord {
                owner: l.owner.to_owned(),
                until,
            },
        );
    } else if held.is_some() {
        txn.delete(k);
    }
    Ok(true)
}

/// How an onward attempt ended.
pub enum AttemptOutcome {
    Delivered(String),
    Failed(String),
    /// Failed, and it was the route's last attempt: the event goes to the dead letters.
    Dead(String),
}

/// One finished attempt of event `seq` on `route` (attempt number `n`, from 1).
pub struct AttemptRecord {
    pub route: String,
    pub seq: u64,
    pub n: u32,
    pub outcome: AttemptOutcome,
}

pub fn record_attempt(
    txn: &mut Txn<'_>,
    st: &mut State,
    t: &str,
    a: AttemptRecord,
    now: Millis,
) -> Result<(), StoreError> {
    let AttemptRecord {
        route,
        seq,
        n,
        outcome,
    } = a;
    let route = route.as_str();
    let qk = queue_key(t, route, seq);
    let Some(queued) = txn.get(&qk)? else {
        return Ok(()); // purged or replayed meanwhile
    };
    let earlier = serde_json::from_slice::<QueueState>(&queued)
        .unwrap_or_default()
        .earlier;
    let number = earlier.saturating_add(n);
    let (label, detail) = match &outcome {
        AttemptOutcome::Delivered(d) => ("delivered", d.clone()),
        AttemptOutcome::Failed(e) => ("failed", e.clone()),
        AttemptOutcome::Dead(e) => ("dead", e.clone()),
    };
    txn.put_json(
        attempt_key(t, seq, route, number),
        &Attempt {
            n: number,
            at: rfc3339(now),
            outcome: label.into(),
            detail: Some(detail.clone()),
        },
    );
    match outcome {
        AttemptOutcome::Delivered(_) => {
            txn.delete(qk);
            txn.put_u64(delivered_key(t, seq, route), now.max(0) as u64);
            st.count_webhooks(-1, 0);
        }
        AttemptOutcome::Failed(e) => txn.put_json(
            qk,
            &QueueState {
                attempts: n,
                last_error: Some(e),
                earlier,
            },
        ),
        AttemptOutcome::Dead(e) => {
            txn.delete(qk);
            txn.put_json(
                dead_key(t, route, seq),
                &QueueState {
                    attempts: number,
                    last_error: Some(e),
                    earlier: 0,
                },
            );
            st.count_webhooks(-1, 1);
        }
    }
    Ok(())
}

/// Status of an event on a route: `delivered`, `queued`, `dead`.
fn route_status(txn: &Txn<'_>, t: &str, seq: u64, route: &str) -> Result<&'static str, StoreError> {
    Ok(if txn.get(&delivered_key(t, seq, route))?.is_some() {
        "delivered"
    } else if txn.get(&dead_key(t, route, seq))?.is_some() {
        "dead"
    } else {
        "queued"
    })
}

/// Overall status: `dead` if any route gave up, else `queued` while any route waits, else
/// `delivered` (also for events no route matched).
fn event_status(txn: &Txn<'_>, t: &str, r: &InboxRecord) -> Result<&'static str, StoreError> {
    let mut overall = "delivered";
    for route in &r.routes {
        match route_status(txn, t, r.seq, route)? {
            "dead" => return Ok("dead"),
            "queued" => overall = "queued",
            _ => {}
        }
    }
    Ok(overall)
}

fn summary(txn: &Txn<'_>, t: &str, r: &InboxRecord) -> Result<serde_json::Value, StoreError> {
    Ok(json!({
        "seq": r.seq,
        "id": r.id,
        "event": r.event,
        "receivedAt": rfc3339(r.received_at),
        "status": event_status(txn, t, r)?,
        "routes": r.routes,
    }))
}

/// Inbox filters (admin API query).
#[derive(Debug, Default, Clone)]
pub struct InboxFilter {
    pub event: Option<String>,
    pub status: Option<String>,
    pub since: Option<Millis>,
    pub until: Option<Millis>,
    pub limit: usize,
}

impl InboxFilter {
    /// The filters of an inbox listing from query pairs (`event`, `status`, `since`,
    /// `until`, `limit`); an unknown or malformed one is a 400 naming it.
    pub fn from_query(q: &[(String, String)]) -> Result<InboxFilter, ApiError> {
        let mut f = InboxFilter {
            limit: 100,
            ..Default::default()
        };
        let time = |k: &str, v: &str| {
            v.parse::<jiff::Timestamp>()
                .map(|t| t.as_millisecond())
                .map_err(|_| ApiError::invalid(k.to_owned(), "an RFC 3339 instant"))
        };
        for (k, v) in q {
            match k.as_str() {
                "event" => f.event = Some(v.clone()),
                "status" if ["queued", "delivered", "dead"].contains(&v.as_str()) => {
                    f.status = Some(v.clone())
                }
                "status" => {
                    return Err(ApiError::invalid(
                        "status",
                        "one of queued, delivered, dead",
                    ))
                }
                "since" => f.since = Some(time(k, v)?),
                "until" => f.until = Some(time(k, v)?),
                "limit" => {
                    f.limit = v
                        .parse()
                        .ok()
                        .filter(|n| (1..=10_000).contains(n))
                        .ok_or_else(|| ApiError::invalid("limit", "1..=10000"))?
                }
                other => {
                    return Err(ApiError::invalid(
                        other.to_owned(),
                        "unknown filter; use event, status, since, until, limit",
                    ))
                }
            }
        }
        Ok(f)
    }
}

/// One page of the inbox in arrival order, filtered: the summaries of the matches among
/// the next `limit` events after `after`, and the cursor of the next page.
pub fn inbox_page(
    txn: &mut Txn<'_>,
    t: &str,
    f: &InboxFilter,
    after: Option<&[u8]>,
    limit: usize,
) -> Result<(Vec<serde_json::Value>, Option<Vec<u8>>), StoreError> {
    let mut items = Vec::new();
    let (page, next) = txn.scan_page(&inbox_prefix(t), after, limit)?;
    for (_, v) in page {
        let Ok(r) = serde_json::from_slice::<InboxRecord>(&v) else {
            continue;
        };
        if f.event
            .as_deref()
            .is_some_and(|g| !crate::webhook::glob_match(g, &r.event))
            || f.since.is_some_and(|s| r.received_at < s)
            || f.until.is_some_and(|u| r.received_at > u)
        {
            continue;
        }
        let s = summary(txn, t, &r)?;
        if f.status.as_deref().is_some_and(|want| s["status"] != want) {
            continue;
        }
        items.push(s);
    }
    Ok((items, next))
}

/// One event with its body, headers, and per-route status and attempts.
pub fn show(txn: &mut Txn<'_>, _st: &mut State, t: &str, seq: u64) -> Result<Reply, StoreError> {
    let Some(r) = txn.get_json::<InboxRecord>(&inbox_key(t, seq))? else {
        return Ok(Reply::not_found("no inbox event with this seq"));
    };
    let mut routes = Vec::new();
    for route in &r.routes {
        let mut attempts = Vec::new();
        for (_, v) in txn.scan_prefix(&attempts_prefix(t, seq, route))? {
            if let Ok(a) = serde_json::from_slice::<Attempt>(&v) {
                attempts.push(a);
            }
        }
        routes.push(json!({"route": route, "status": route_status(txn, t, seq, route)?, "attempts": attempts}));
    }
    let mut out = summary(txn, t, &r)?;
    out["ok"] = json!(true);
    out["headers"] = json!(r.headers);
    out["body"] = json!(r.body);
    out["delivery"] = json!(routes);
    Ok(Reply::json(200, out))
}

/// A dead letter: its key, route, event seq and stored state.
type DeadEntry = (Vec<u8>, String, u64, Vec<u8>);

/// The dead letters of a tenant as (key, route, seq, value), all or the one `only` names.
fn dead_entries(
    txn: &Txn<'_>,
    t: &str,
    only: Option<&(String, u64)>,
) -> Result<Vec<DeadEntry>, StoreError> {
    let mut out = Vec::new();
    for (k, v) in txn.scan_prefix(&dead_prefix(t))? {
        let seq = u64::from_str_radix(last(&k), 16).unwrap_or(0);
        // whdl / tenant / route / seq
        let route = std::str::from_utf8(&k)
            .unwrap_or("")
            .split('\u{1f}')
            .nth(2)
            .unwrap_or("")
            .to_owned();
        if only.is_some_and(|(r, s)| *r != route || *s != seq) {
            continue;
        }
        out.push((k, route, seq, v));
    }
    Ok(out)
}

pub fn dead_letters(txn: &mut Txn<'_>, _st: &mut State, t: &str) -> Result<Reply, StoreError> {
    let mut items = Vec::new();
    for (_, route, seq, v) in dead_entries(txn, t, None)? {
        let q: QueueState = serde_json::from_slice(&v).unwrap_or_default();
        let event = txn.get_json::<InboxRecord>(&inbox_key(t, seq))?;
        items.push(json!({
            "seq": seq,
            "route": route,
            "id": event.as_ref().map(|e| e.id.clone()),
            "event": event.as_ref().map(|e| e.event.clone()),
            "attempts": q.attempts,
            "lastError": q.last_error,
        }));
    }
    Ok(Reply::json(
        200,
        json!({"ok": true, "count": items.len(), "deadLetters": items}),
    ))
}

/// Move dead letters back to their route's queue (all, or one `(route, seq)`); returns the
/// routes to wake.
pub fn replay_dead(
    txn: &mut Txn<'_>,
    st: &mut State,
    t: &str,
    only: Option<(String, u64)>,
) -> Result<(Reply, Vec<String>), StoreError> {
    let mut moved = 0u64;
    let mut routes = Vec::new();
    for (k, route, seq, v) in dead_entries(txn, t, only.as_ref())? {
        let dead: QueueState = serde_json::from_slice(&v).unwrap_or_default();
        txn.delete(k);
        let round = QueueState {
            earlier: dead.attempts,
            ..QueueState::default()
        };
        txn.put_json(queue_key(t, &route, seq), &round);
        moved += 1;
        if !routes.contains(&route) {
            routes.push(route);
        }
    }
    st.count_webhooks(moved as i64, -(moved as i64));
    if only.is_some() && moved == 0 {
        return Ok((Reply::not_found("no such dead letter"), routes));
    }
    Ok((
        Reply::json(200, json!({"ok": true, "replayed": moved})),
        routes,
    ))
}

/// Which part of a tenant's onward-delivery backlog to count.
#[derive(Debug, Clone, Copy)]
pub enum Backlog {
    /// Deliveries waiting in a route's queue (one per event and route).
    Queued,
    /// Dead letters (one per event and route).
    Dead,
}

/// Count one page of a tenant's backlog: how many entries among the next `limit` after
/// `after`, and the cursor of the next page (see `sliced::switch_readiness`).
pub fn count_backlog_page(
    txn: &mut Txn<'_>,
    t: &str,
    which: Backlog,
    after: Option<&[u8]>,
    limit: usize,
) -> Result<(u64, Option<Vec<u8>>), StoreError> {
    let all = match which {
        Backlog::Queued => queues_prefix(t),
        Backlog::Dead => dead_prefix(t),
    };
    let (page, next) = txn.scan_page(&all, after, limit)?;
    Ok((page.len() as u64, next))
}

/// Drop dead letters (all, or one); their events stay in the inbox.
pub fn purge_dead(
    txn: &mut Txn<'_>,
    st: &mut State,
    t: &str,
    only: Option<(String, u64)>,
) -> Result<Reply, StoreError> {
    let mut purged = 0u64;
    for (k, _, _, _) in dead_entries(txn, t, only.as_ref())? {
        txn.delete(k);
        purged += 1;
    }
    st.count_webhooks(0, -(purged as i64));
    Ok(Reply::json(200, json!({"ok": true, "purged": purged})))
}

/// Forget delivery ids older than the retention window among the next `limit` after
/// `after`; returns how many went and the cursor of the next page.
pub fn prune_dedupe_page(
    txn: &mut Txn<'_>,
    t: &str,
    now: Millis,
    retention_ms: i64,
    after: Option<&[u8]>,
    limit: usize,
) -> Result<(usize, Option<Vec<u8>>), StoreError> {
    let mut n = 0;
    let (page, next) = txn.scan_page(&dedupe_prefix(t), after, limit)?;
    for (k, v) in page {
        let seen = crate::store::decode_u64(&v)
            .map(|s| i64::try_from(s).unwrap_or(i64::MAX))
            .unwrap_or(0);
        if now.saturating_sub(seen) >= retention_ms {
            txn.delete(k);
            n += 1;
        }
    }
    Ok((n, next))
}
