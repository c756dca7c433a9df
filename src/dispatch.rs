//! Onward delivery of webhook events: one background task per (tenant, route) takes the
//! head of the route's durable queue, delivers it — to an HTTP sink as the original
//! envelope signed in Standard Webhooks format with the route's secret and the original
//! delivery id as `webhook-id`, or to a file sink as one JSON line — and records the attempt.
//! Failures are retried in order (head of line) with exponential backoff and jitter,
//! honouring `Retry-After`, up to the route's attempt limit; then the event becomes a dead
//! letter. Delivery is at least once: the queue entry is removed only after success.

use std::sync::Arc;
use std::time::Duration;

use tokio::io::AsyncWriteExt;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::clock::Clock;
use crate::config::{RouteConfig, Sink};
use crate::metrics::Metrics;
use crate::service::webhook::{
    next_for_route, record_attempt, AttemptOutcome, AttemptRecord, InboxRecord, Lease, QueueState,
};
use crate::service::State;
use crate::store::{Store, StoreError};
use crate::webhook::{backoff, retry_after, sign_headers, signing_key, Scheme};

use crate::client::{Client, Request};

/// What the background tasks need of the application, and nothing more.
pub struct Ctx {
    pub store: Arc<Store<State>>,
    pub clock: Clock,
    pub metrics: Arc<Metrics>,
    /// `[storage] job_slice_records`: the janitor's slice.
    pub slice: usize,
    /// This process's name among the replicas sharing the store (PostgreSQL engine; `None`
    /// on sled, where one process owns the store): a route's delivery then takes a lease.
    pub replica: Option<String>,
}

/// How long a route's lease lasts past each head a replica takes: well beyond one
/// delivery (a sink's timeout), so two replicas never deliver the same route at once
/// unless one stalls longer than this.
const LEASE: Duration = Duration::from_secs(60);

/// A client for a route's sink (HTTPS also trusts the route's `ca_file`), bounded by the
/// sink's timeout.
fn client_for(route: &RouteConfig) -> Result<Client, String> {
    match &route.sink {
        Sink::Http {
            extra_roots,
            timeout,
            ..
        } => Ok(Client::new(extra_roots)?.timeout(*timeout)),
        Sink::File { .. } => Client::new(&[]),
    }
}

/// How long an idle route waits before looking at its queue again without a wake-up.
const IDLE_POLL: Duration = Duration::from_secs(5);

/// One route's delivery loop: where it reads and records, and what it delivers to.
struct Worker {
    ctx: Arc<Ctx>,
    tenant: String,
    route: RouteConfig,
    client: Client,
}

/// What the loop does next.
enum Next<T> {
    Go(T),
    /// Look again (after a wake-up, an idle poll or a pause after an error).
    Again,
    /// The store closed or `cancel` fired.
    Stop,
}

/// Run one route until `cancel` fires.
pub async fn run_route(
    ctx: Arc<Ctx>,
    tenant: String,
    route: RouteConfig,
    wake: Arc<Notify>,
    cancel: CancellationToken,
) {
    let client = match client_for(&route) {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(tenant = %tenant, route = %route.name, error = %e, "cannot build the sink's TLS client; this route will not deliver");
            return;
        }
    };
    let w = Worker {
        ctx,
        tenant,
        route,
        client,
    };
    loop {
        if cancel.is_cancelled() {
            return;
        }
        let (event, queue) = match w.head(&wake, &cancel).await {
            Next::Go(x) => x,
            Next::Again => continue,
            Next::Stop => return,
        };
        let n = queue.attempts + 1;
        let result = tokio::select! {
            r = deliver(&w.ctx, &w.client, &w.route, &event) => r,
            _ = cancel.cancelled() => return,
        };
        let (outcome, wait) = w.judge(&event, n, result);
        if !w.record(event.seq, n, outcome).await {
            return;
        }
        if let Some(d) = wait {
            tokio::select! {
                _ = tokio::time::sleep(d) => {}
                _ = cancel.cancelled() => return,
            }
        }
    }
}

impl Worker {
    /// The head of the route's queue; when it is empty, wait for a wake-up or the idle poll.
    async fn head(
        &self,
        wake: &Notify,
        cancel: &CancellationToken,
    ) -> Next<(InboxRecord, QueueState)> {
        let (t, r) = (self.tenant.clone(), self.route.name.clone());
        let (owner, now) = (self.ctx.replica.clone(), self.ctx.clock.now_ms());
        let head = self
            .ctx
            .store
            .run(move |txn, _| {
                let lease = owner.as_deref().map(|owner| Lease {
                    owner,
                    now,
                    ttl_ms: LEASE.as_millis() as i64,
                });
                next_for_route(txn, &t, &r, lease)
            })
            .await;
        let pause = match head {
            Ok(Some(x)) => return Next::Go(x),
            Ok(None) => IDLE_POLL,
            Err(StoreError::Closed) => return Next::Stop,
            Err(e) => {
                tracing::warn!(tenant = %self.tenant, route = %self.route.name, error = %e, "cannot read the delivery queue");
                Duration::from_secs(1)
            }
        };
        tokio::select! {
            _ = wake.notified(), if pause == IDLE_POLL => Next::Again,
            _ = tokio::time::sleep(pause) => Next::Again,
            _ = cancel.cancelled() => Next::Stop,
        }
    }

    /// Attempt `n`'s outcome, counted in the metrics, and how long to wait before the next.
    fn judge(
        &self,
        event: &InboxRecord,
        n: u32,
        result: Result<String, (String, Option<Duration>)>,
    ) -> (AttemptOutcome, Option<Duration>) {
        let route = &self.route;
        let (outcome, wait) = match result {
            Ok(detail) => (AttemptOutcome::Delivered(detail), None),
            Err((why, _)) if n >= route.max_attempts => (AttemptOutcome::Dead(why), None),
            Err((why, after)) => {
                let seed = format!("{}/{}/{}/{n}", self.tenant, route.name, event.seq);
                let d = after.unwrap_or_else(|| {
                    backoff(n, route.backoff, route.backoff_max, seed.as_bytes())
                });
                (AttemptOutcome::Failed(why), Some(d))
            }
        };
        let label = match &outcome {
            AttemptOutcome::Delivered(_) => "delivered",
            AttemptOutcome::Failed(_) => "failed",
            AttemptOutcome::Dead(_) => "dead",
        };
        self.ctx.metrics.onward(&self.tenant, &route.name, label);
        if label == "dead" {
            tracing::warn!(tenant = %self.tenant, route = %route.name, id = %event.id, attempts = n, "webhook event moved to the dead letters");
        }
        (outcome, wait)
    }

    /// Record the attempt; `false` when the store has closed.
    async fn record(&self, seq: u64, n: u32, outcome: AttemptOutcome) -> bool {
        let (t, route, now) = (
            self.tenant.clone(),
            self.route.name.clone(),
            self.ctx.clock.now_ms(),
        );
        let attempt = AttemptRecord {
            route,
            seq,
            n,
            outcome,
        };
        match self
            .ctx
            .store
            .run(move |txn, st| record_attempt(txn, st, &t, attempt, now))
            .await
        {
            Ok(()) => true,
            Err(StoreError::Closed) => false,
            Err(e) => {
                tracing::warn!(error = %e, "cannot record a delivery attempt");
                true
            }
        }
    }
}

/// One attempt. `Err((why, retry_after))`.
async fn deliver(
    ctx: &Ctx,
    client: &Client,
    route: &RouteConfig,
    e: &InboxRecord,
) -> Result<String, (String, Option<Duration>)> {
    match &route.sink {
        Sink::File { path } => {
            // One line per event: the envelope, compacted.
            let line = serde_json::from_str::<serde_json::Value>(&e.body)
                .map(|v| v.to_string())
                .unwrap_or_else(|_| e.body.replace('\n', " "));
            let write = async {
                let mut f = tokio::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(path)
                    .await?;
                f.write_all(format!("{line}\n").as_bytes()).await?;
                f.sync_data().await
            };
            write
                .await
                .map(|()| format!("appended to {}", path.display()))
                .map_err(|err| (format!("file {}: {err}", path.display()), None))
        }
        Sink::Http {
            url,
            secret,
            timeout,
            ..
        } => {
            let key = signing_key(&Scheme::StandardWebhooks, secret.expose());
            let ts = ctx.clock.now_ms().div_euclid(1000);
            let signed = sign_headers(
                &Scheme::StandardWebhooks,
                &key,
                &e.id,
                ts,
                e.body.as_bytes(),
            );
            let req = Request::post_json(url, e.body.clone().into_bytes())
                .header("user-agent", "karma-provider")
                .headers(signed);
            // A sink's word is its status: its body is not read.
            match client.send_head(req).await {
                Err(crate::client::Error::Timeout(_)) => {
                    Err((format!("timed out after {timeout:?}"), None))
                }
                Err(crate::client::Error::Request(err)) => Err((format!("request: {err}"), None)),
                Err(err) => Err((format!("{err}"), None)),
                Ok(answer) if (200..300).contains(&answer.status) => {
                    Ok(format!("HTTP {}", answer.status))
                }
                Ok(answer) => {
                    let after = answer
                        .headers
                        .get(hyper::header::RETRY_AFTER)
                        .and_then(|v| v.to_str().ok())
                        .and_then(retry_after);
                    Err((format!("HTTP {}", answer.status), after))
                }
            }
        }
    }
}

/// How often delivery ids past their retention are forgotten.
const JANITOR_EVERY: Duration = Duration::from_secs(600);

/// Periodically drop dedupe records older than the tenant's retention (they no longer
/// decide anything; this keeps the store from growing with every delivery ever seen).
pub async fn run_janitor(
    ctx: Arc<Ctx>,
    tenant: String,
    retention_ms: i64,
    cancel: CancellationToken,
) {
    loop {
        let (t, now) = (tenant.clone(), ctx.clock.now_ms());
        match crate::service::sliced::prune_dedupe(&ctx.store, ctx.slice, &t, now, retention_ms)
            .await
        {
            Ok(n) if n > 0 => {
                tracing::info!(tenant = %tenant, forgotten = n, "pruned webhook delivery ids past retention")
            }
            Err(StoreError::Closed) => return,
            _ => {}
        }
        tokio::select! {
            _ = tokio::time::sleep(JANITOR_EVERY) => {}
            _ = cancel.cancelled() => return,
        }
    }
}
