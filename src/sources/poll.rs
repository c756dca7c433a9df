//! The poller: one background task per order source. Each poll reads the platform's
//! list-orders pages from the durable position onwards and hands every page, with the
//! position after it, to one writer job (`jobs::apply_page`), so what is awarded and
//! where to resume are written together. LOKE pages follow the cursor of the response
//! headers, and open or awarded orders are fetched again by id while watched; Olympus reads
//! `status=completed` (awards) and `status=cancelled` / `status=refunded` (reversals) with
//! `limit`/`offset`. A failed request ends the poll; the next one waits the backoff
//! (doubling with jitter) or the `Retry-After` of a 429/503. `app::start` starts one
//! [`run`] per source with the other background tasks, given a [`Ctx`] (not the `App`),
//! and stops it with them.

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::client::{Client as HttpsClient, Request};
use crate::clock::Clock;
use crate::config::{SourceConfig, SourceKind};
use crate::metrics::Metrics;
use crate::service::State;
use crate::store::{Store, StoreError};

use super::jobs::{self, Advance, SourceRef, SourceStatus};
use super::order::{loke_next_cursor, loke_page, olympus_page, LokeOrder, Order, OrderState};

/// What a poller needs of the application, and nothing more.
pub struct Ctx {
    pub store: Arc<Store<State>>,
    pub clock: Clock,
    pub metrics: Arc<Metrics>,
}

/// Pages one poll reads at most per list (a guard against a cursor that never ends).
const MAX_PAGES: usize = 10_000;
/// Watched LOKE orders fetched again per poll.
const WATCH_BATCH: usize = 50;
/// The largest list answer read (a page of 500 LOKE orders with carts fits easily).
const MAX_BODY_BYTES: usize = 32 * 1024 * 1024;
/// The Olympus lists read, in order.
const OLYMPUS_LISTS: [&str; 3] = ["completed", "cancelled", "refunded"];

/// A failed poll: why, and how long the platform asked us to wait.
#[derive(Debug)]
struct Failure {
    why: String,
    retry_after: Option<Duration>,
}

impl From<StoreError> for Failure {
    fn from(e: StoreError) -> Failure {
        Failure {
            why: format!("store: {e}"),
            retry_after: None,
        }
    }
}

/// Poll one source until `cancel` fires.
pub async fn run(ctx: Arc<Ctx>, tenant: String, src: SourceConfig, cancel: CancellationToken) {
    let client = match HttpsClient::new(&[]) {
        Ok(c) => c.timeout(src.timeout).body_limit(MAX_BODY_BYTES),
        Err(e) => {
            tracing::error!(tenant = %tenant, source = %src.name, error = %e, "cannot build the HTTP client; this source will not be polled");
            return;
        }
    };
    let sref = SourceRef::new(&tenant, &src);
    let r = sref.clone();
    if let Ok(st) = ctx.store.run(move |txn, _| jobs::status(txn, &r)).await {
        publish(&ctx.metrics, &sref, &st);
    }
    let mut failures: u32 = 0;
    loop {
        let result = tokio::select! {
            r = poll_once(&ctx, &client, &sref, &src) => r,
            _ = cancel.cancelled() => return,
        };
        let (outcome, wait) = match result {
            Ok(()) => {
                failures = 0;
                (Ok(()), src.poll_every)
            }
            Err(f) => {
                failures = failures.saturating_add(1);
                let seed = format!("{tenant}/{}/{failures}", src.name);
                let d = f.retry_after.unwrap_or_else(|| {
                    crate::webhook::backoff(failures, src.backoff, src.backoff_max, seed.as_bytes())
                });
                tracing::warn!(tenant = %tenant, source = %src.name, error = %f.why, retry_in = ?d, "order source poll failed");
                (Err(f.why), d)
            }
        };
        ctx.metrics.source_poll(
            &tenant,
            &src.name,
            if outcome.is_ok() { "ok" } else { "failed" },
        );
        let (r, now) = (sref.clone(), ctx.clock.now_ms());
        match ctx
            .store
            .run(move |txn, _| jobs::finish_poll(txn, &r, outcome, now))
            .await
        {
            Ok(st) => publish(&ctx.metrics, &sref, &st),
            Err(StoreError::Closed) => return,
            Err(e) => tracing::warn!(error = %e, "cannot record an order source poll"),
        }
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = cancel.cancelled() => return,
        }
    }
}

/// Hand a source's durable counts to `/metrics`.
pub fn publish(metrics: &Metrics, s: &SourceRef, st: &SourceStatus) {
    let counts: Vec<(&'static str, u64)> = OrderState::ALL
        .iter()
        .map(|x| (x.name(), st.count(*x)))
        .collect();
    metrics.source_counts(&s.tenant, &s.name, st.seen, &counts, st.last_poll_at);
}

async fn poll_once(
    ctx: &Ctx,
    client: &HttpsClient,
    s: &SourceRef,
    c: &SourceConfig,
) -> Result<(), Failure> {
    let r = s.clone();
    let st = ctx.store.run(move |txn, _| jobs::status(txn, &r)).await?;
    match &c.kind {
        SourceKind::Loke {
            organization_id,
            location_id,
        } => {
            let base = format!(
                "{}/organizations/{}/locations/{}/orders",
                c.base_url,
                enc(organization_id),
                enc(location_id)
            );
            poll_loke(ctx, client, s, c, &base, st.after).await?;
            if s.watch_ms > 0 {
                poll_watched(ctx, client, s, c, &base).await?;
            }
            Ok(())
        }
        SourceKind::Olympus { location_id } => {
            for list in OLYMPUS_LISTS {
                let from = st.offsets.get(list).copied().unwrap_or(0);
                poll_olympus(ctx, client, s, c, location_id.as_deref(), list, from).await?;
            }
            Ok(())
        }
    }
}

fn enc(s: &str) -> String {
    percent_encoding::utf8_percent_encode(s, percent_encoding::NON_ALPHANUMERIC).to_string()
}

/// Read pages from cursor `after` on. The last page's cursor stays the position, so the
/// next poll reads that page again (orders added to it, or changed on it, are seen).
async fn poll_loke(
    ctx: &Ctx,
    client: &HttpsClient,
    s: &SourceRef,
    c: &SourceConfig,
    base: &str,
    mut after: Option<String>,
) -> Result<(), Failure> {
    for _ in 0..MAX_PAGES {
        let url = match &after {
            None => base.to_owned(),
            Some(a) => format!("{base}?after={}", enc(a)),
        };
        let (headers, body) = get(client, &url, c).await?;
        let orders = loke_page(&body).map_err(|why| Failure {
            why: format!("LOKE orders page: {why}"),
            retry_after: None,
        })?;
        let h = |n: &str| headers.get(n).and_then(|v| v.to_str().ok());
        let next = loke_next_cursor(h("link"), h("x-next-cursor"));
        let done = next.is_none() || next == after;
        let position = if done { after.clone() } else { next.clone() };
        let orders: Vec<Order> = orders.iter().map(LokeOrder::to_order).collect();
        apply(ctx, s, orders, Advance::Loke { after: position }).await?;
        if done {
            return Ok(());
        }
        after = next;
    }
    Ok(())
}

/// Fetch watched orders by id (`GET …/orders/{id}`); a 404 ends nothing (the watch
/// simply runs out).
async fn poll_watched(
    ctx: &Ctx,
    client: &HttpsClient,
    s: &SourceRef,
    c: &SourceConfig,
    base: &str,
) -> Result<(), Failure> {
    let (r, now) = (s.clone(), ctx.clock.now_ms());
    let ids = ctx
        .store
        .run(move |txn, _| jobs::due_watches(txn, &r, WATCH_BATCH, now))
        .await?;
    let mut orders = Vec::new();
    for id in ids {
        let (_, body) = match get(client, &format!("{base}/{}", enc(&id)), c).await {
            Err(f) if f.why == "HTTP 404" => continue,
            r => r?,
        };
        let o: LokeOrder = serde_json::from_slice(&body).map_err(|e| Failure {
            why: format!("LOKE order {id}: {e}"),
            retry_after: None,
        })?;
        orders.push(o.to_order());
    }
    if !orders.is_empty() {
        apply(ctx, s, orders, Advance::Stay).await?;
    }
    Ok(())
}

/// Read one status list from `from` on, starting one page earlier: an order leaving the
/// list (a refund) shifts the rest back, and a re-read order changes nothing. If even that
/// page is empty, the list shrank by more than a page: it is read again from the start.
async fn poll_olympus(
    ctx: &Ctx,
    client: &HttpsClient,
    s: &SourceRef,
    c: &SourceConfig,
    location: Option<&str>,
    list: &str,
    from: u64,
) -> Result<(), Failure> {
    let limit = u64::from(c.page_size);
    let mut offset = from.saturating_sub(limit);
    let mut first = true;
    for _ in 0..MAX_PAGES {
        let mut url = format!(
            "{}/v1/commerce/orders?status={list}&limit={limit}&offset={offset}",
            c.base_url
        );
        if let Some(l) = location {
            url.push_str(&format!("&location_id={}", enc(l)));
        }
        let (_, body) = get(client, &url, c).await?;
        let page = olympus_page(&body).map_err(|why| Failure {
            why: format!("Olympus orders page: {why}"),
            retry_after: None,
        })?;
        let n = u64::try_from(page.len()).unwrap_or(u64::MAX);
        if std::mem::take(&mut first) && n == 0 && offset > 0 {
            offset = 0;
            continue;
        }
        let next = offset.saturating_add(n);
        let orders: Vec<Order> = page.iter().map(|o| o.to_order()).collect();
        let list = list.to_owned();
        apply(ctx, s, orders, Advance::Olympus { list, offset: next }).await?;
        if n < limit {
            return Ok(());
        }
        offset = next;
    }
    Ok(())
}

async fn apply(
    ctx: &Ctx,
    s: &SourceRef,
    orders: Vec<Order>,
    advance: Advance,
) -> Result<(), Failure> {
    let (r, now) = (s.clone(), ctx.clock.now_ms());
    let st = ctx
        .store
        .run(move |txn, state| jobs::apply_page(txn, state, &r, &orders, advance, now))
        .await?;
    publish(&ctx.metrics, s, &st);
    Ok(())
}

/// One authenticated GET: the headers and body of a 2xx, else a failure carrying the
/// `Retry-After` of a 429 or 503.
async fn get(
    client: &HttpsClient,
    url: &str,
    c: &SourceConfig,
) -> Result<(hyper::HeaderMap, Vec<u8>), Failure> {
    let req = Request::get(url)
        .header("authorization", format!("Bearer {}", c.token.expose()))
        .header("accept", "application/json")
        .header("user-agent", "karma-provider");
    let a = client.send(req).await.map_err(|e| Failure {
        why: format!("{}: {e}", c.base_url),
        retry_after: None,
    })?;
    if !(200..300).contains(&a.status) {
        let retry_after = match a.status {
            429 | 503 => a
                .headers
                .get(hyper::header::RETRY_AFTER)
                .and_then(|v| v.to_str().ok())
                .and_then(crate::webhook::retry_after),
            _ => None,
        };
        return Err(Failure {
            why: format!("HTTP {}", a.status),
            retry_after,
        });
    }
    Ok((a.headers, a.body))
}
