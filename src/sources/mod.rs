//! Order sources: points for orders placed through LOKE (ordering app) and Olympus (POS),
//! in the same ledger as Karma's awards (issue 18). `order.rs` is pure (the platforms'
//! order shapes, status, exact amounts, the guest's contact); `jobs.rs` the writer jobs
//! (dedupe by (source, order id), award, reversal, position, counts, operator award);
//! `poll.rs` the background task per source (paging, backoff, `Retry-After`). The config
//! section is `config::sources`; the admin routes are answered here ([`admin`]).

pub mod jobs;
pub mod order;
pub mod poll;

use std::sync::Arc;

use crate::contract::ApiError;
use crate::http::App;
use crate::service::Reply;
use crate::store::StoreError;

/// The most order records one listing answers.
const MAX_LIST: usize = 1000;

/// `GET  /admin/v1/tenants/{t}/sources` — every source: last poll, position, counts;
/// `GET  …/sources/{s}/orders?state=unmatched&after=…&limit=…` — its order records;
/// `POST …/sources/{s}/orders/{order}/award` `{"memberId": "mbr_…"}` — the operator's
/// award of an unmatched order (once).
pub async fn admin(
    app: &Arc<App>,
    tenant: &str,
    tail: &[&str],
    method: &hyper::Method,
    query: &[(String, String)],
    body: Option<Vec<u8>>,
) -> Result<Reply, StoreError> {
    let Some(t) = app.config.tenant(tenant) else {
        return Ok(Reply::not_found("no such tenant"));
    };
    let find = |name: &str| {
        t.sources
            .iter()
            .find(|s| s.name == name)
            .map(|s| poll::source_ref(tenant, s))
    };
    match (tail, method.as_str()) {
        ([], "GET") => {
            let refs: Vec<_> = t
                .sources
                .iter()
                .map(|s| (poll::source_ref(tenant, s), s.kind.name()))
                .collect();
            app.store
                .run(move |txn, _| {
                    let mut out = Vec::new();
                    for (r, kind) in &refs {
                        out.push(jobs::view(r, kind, &jobs::status(txn, r)?));
                    }
                    Ok(Reply::json(
                        200,
                        serde_json::json!({"ok": true, "sources": out}),
                    ))
                })
                .await
        }
        ([name, "orders"], "GET") => match find(name) {
            Some(r) => list(app, r, query).await,
            None => Ok(Reply::not_found("no such order source")),
        },
        ([name, "orders", order, "award"], "POST") => match find(name) {
            Some(r) => award(app, r, order, &body.unwrap_or_default()).await,
            None => Ok(Reply::not_found("no such order source")),
        },
        _ => Ok(Reply::not_found("no such admin path")),
    }
}

async fn list(
    app: &Arc<App>,
    r: jobs::SourceRef,
    query: &[(String, String)],
) -> Result<Reply, StoreError> {
    let q = |k: &str| query.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone());
    let only = match q("state") {
        None => None,
        Some(v) => match jobs::OrderState::parse(&v) {
            Some(x) => Some(x),
            None => {
                return Ok(Reply::error(&ApiError::invalid(
                    "state",
                    "one of open, awarded, unmatched, failed, reversed, cancelled",
                )))
            }
        },
    };
    let limit = match q("limit").map(|l| l.parse::<usize>()) {
        None => 100,
        Some(Ok(n)) if (1..=MAX_LIST).contains(&n) => n,
        Some(_) => {
            return Ok(Reply::error(&ApiError::invalid(
                "limit",
                format!("an integer 1..={MAX_LIST}"),
            )))
        }
    };
    let after = q("after");
    app.store
        .run(move |txn, _| jobs::list_orders(txn, &r, only, after.as_deref(), limit))
        .await
}

async fn award(
    app: &Arc<App>,
    r: jobs::SourceRef,
    order: &str,
    body: &[u8],
) -> Result<Reply, StoreError> {
    #[derive(serde::Deserialize)]
    #[serde(deny_unknown_fields, rename_all = "camelCase")]
    struct AwardBody {
        member_id: String,
    }
    let b: AwardBody = match serde_json::from_slice(body) {
        Ok(b) => b,
        Err(e) => {
            return Ok(Reply::error(&ApiError::invalid(
                "memberId",
                format!("the body is {{\"memberId\": \"mbr_…\"}}: {e}"),
            )))
        }
    };
    let (r2, order, now) = (r.clone(), order.to_owned(), app.clock.now_ms());
    let (reply, status) = app
        .store
        .run(move |txn, st| {
            let reply = jobs::operator_award(txn, st, &r2, &order, &b.member_id, now)?;
            Ok((reply, jobs::status(txn, &r2)?))
        })
        .await?;
    poll::publish(app, &r, &status);
    Ok(reply)
}

/// The methods a sources admin path takes, when `method` is not one of them (a 405).
pub fn not_allowed(tail: &[&str], method: &hyper::Method) -> Option<&'static str> {
    let allow = match tail {
        [] | [_, "orders"] => "GET",
        [_, "orders", _, "award"] => "POST",
        _ => return None,
    };
    (method.as_str() != allow).then_some(allow)
}
