//! The application core: what the service does, independent of how a request arrived.
//! [`App`] owns the running program (config, store, clock, metrics, vendor rules, the
//! webhook routes' wake-ups and background tasks; built in [`start`]) and exposes typed
//! async operations — the provider calls here, the admin operations in [`admin`] and, for
//! the order sources, in [`sources`] — each taking a typed, validated request and
//! answering a [`Reply`]. Every store job closure lives here, in `service/` or in the
//! order sources' poller (`sources::poll`); the HTTP layer (`http/`) only maps requests to these
//! calls and answers to responses, and never sees the store. A second storage engine or
//! an operator console calls the same operations.

pub mod admin;
pub mod chaos;
pub mod sources;
mod start;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use tokio_util::sync::CancellationToken;

use crate::clock::Clock;
use crate::config::Config;
use crate::contract::loyalty::{
    AccountRequest, AwardRequest, EnrollRequest, LookupRequest, RedeemRequest, RewardsRequest,
};
use crate::contract::voucher::{CheckRequest, CommitRequest};
use crate::contract::ApiError;
use crate::faults::Faults;
use crate::metrics::Metrics;
use crate::rules::VoucherRules;
use crate::service::voucher::{self as v, VendorDecision};
use crate::service::State;
use crate::store::{Store, StoreError, Txn};

pub use crate::service::admin::{HoldPage, DEFAULT_HOLDS_PAGE, MAX_HOLDS_PAGE};
pub use crate::service::webhook::InboxFilter;
pub use crate::service::Reply;
pub use start::StartError;

/// The provider calls Karma makes: one per endpoint `POST /v1/{tenant}/{kind}/{call}`.
/// Their labels name them in metrics, logs and [`Faults`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Call {
    Check,
    Commit,
    Reactivate,
    Lookup,
    Enroll,
    Award,
    Account,
    Rewards,
    Redeem,
}

impl Call {
    /// `voucher.check`, `loyalty.award`, …
    pub fn label(self) -> &'static str {
        match self {
            Call::Check => "voucher.check",
            Call::Commit => "voucher.commit",
            Call::Reactivate => "voucher.reactivate",
            Call::Lookup => "loyalty.lookup",
            Call::Enroll => "loyalty.enroll",
            Call::Award => "loyalty.award",
            Call::Account => "loyalty.account",
            Call::Rewards => "loyalty.rewards",
            Call::Redeem => "loyalty.redeem",
        }
    }

    /// The call named `op` under `/v1/{tenant}/{kind}/`.
    pub fn parse(kind: &str, op: &str) -> Option<Call> {
        Some(match (kind, op) {
            ("voucher", "check") => Call::Check,
            ("voucher", "commit") => Call::Commit,
            ("voucher", "reactivate") => Call::Reactivate,
            ("loyalty", "lookup") => Call::Lookup,
            ("loyalty", "enroll") => Call::Enroll,
            ("loyalty", "award") => Call::Award,
            ("loyalty", "account") => Call::Account,
            ("loyalty", "rewards") => Call::Rewards,
            ("loyalty", "redeem") => Call::Redeem,
            _ => return None,
        })
    }
}

type Rules = Arc<dyn VoucherRules>;

/// The running application (see the module doc).
pub struct App {
    pub config: Config,
    pub clock: Clock,
    pub metrics: Arc<Metrics>,
    /// Test-only fault injection (see [`crate::faults`]).
    pub faults: Arc<Faults>,
    /// Injected faults for Karma-side QA, set at run time (see [`chaos`]).
    chaos: chaos::Chaos,
    store: Arc<Store<State>>,
    /// The loyalty programs as of the last durable group, for the reads beside the writer.
    programs: Arc<crate::service::Programs>,
    draining: AtomicBool,
    /// Wake-up per (tenant, route) for the onward-delivery tasks.
    route_wake: HashMap<(String, String), Arc<tokio::sync::Notify>>,
    /// Stops the background tasks.
    cancel: CancellationToken,
    tasks: Mutex<Vec<tokio::task::JoinHandle<()>>>,
    /// Vendor rules by (tenant, campaign); `None` campaign: the tenant's.
    rules: HashMap<(String, Option<String>), Rules>,
    /// Rules given by an embedding program, for every campaign without HTTP rules.
    embedded_rules: Option<Rules>,
}

/// A store failure as an answer: 500 for a job that panicked, 503 otherwise.
fn store_reply(e: StoreError) -> Reply {
    match e {
        StoreError::JobPanicked => Reply::error(&ApiError::new(500, "INTERNAL", e.to_string())),
        _ => Reply::error(&ApiError::new(503, "UNAVAILABLE", e.to_string())),
    }
}

fn answer(r: Result<Reply, StoreError>) -> Reply {
    r.unwrap_or_else(store_reply)
}

impl App {
    /// Serving: the store takes jobs and the server is not draining.
    pub fn is_ready(&self) -> bool {
        self.store.is_healthy() && !self.draining.load(Ordering::Relaxed)
    }

    /// The Prometheus text of `/metrics`.
    pub fn metrics_text(&self) -> String {
        self.metrics
            .render(self.store.stats(), self.store.code_index())
    }

    /// Whether `tenant` receives webhooks.
    pub fn has_webhook_receiver(&self, tenant: &str) -> bool {
        self.config
            .tenant(tenant)
            .is_some_and(|t| t.webhooks.is_some())
    }

    /// Run `f` as one job on the store's writer, as the call labelled `call` (which an armed
    /// fault fails once it has decided), and answer its reply.
    async fn job<F>(&self, call: &'static str, f: F) -> Reply
    where
        F: FnOnce(&mut Txn<'_>, &mut State) -> Result<Reply, StoreError> + Send + 'static,
    {
        let faults = self.faults.clone();
        answer(
            self.store
                .run(move |txn, st| {
                    let reply = f(txn, st)?;
                    faults.hit(call, txn)?;
                    Ok(reply)
                })
                .await,
        )
    }

    /// A check: when vendor rules apply to the code's campaign, ask the vendor first
    /// (outside the writer), then let the writer decide limits and holds with its answer.
    pub async fn check(&self, tenant: &str, req: CheckRequest) -> Reply {
        let now = self.clock.now_ms();
        // A bulk code is looked up in the code index here, off the writer (store::codeindex).
        let indexed = self.config.tenant(tenant).and_then(|tc| {
            v::lookup_indexed(self.store.code_index(), tc.code_match, tenant, &req.code)
        });
        let decision = match self.vendor_decision(tenant, &req, indexed.clone()).await {
            Ok(d) => d,
            Err(reply) => return reply,
        };
        let t = tenant.to_owned();
        self.job(Call::Check.label(), move |txn, st| {
            v::check(txn, st, &t, &req, decision.as_ref(), indexed, now)
        })
        .await
    }

    /// The vendor's decision on a check, if rules apply to its code's campaign; `Err` is
    /// the answer when the vendor declines or fails (fail closed) or the store fails.
    async fn vendor_decision(
        &self,
        tenant: &str,
        req: &CheckRequest,
        indexed: Option<v::Resolved>,
    ) -> Result<Option<VendorDecision>, Reply> {
        use crate::voucher::Rejection;
        if self.rules.is_empty() && self.embedded_rules.is_none() {
            return Ok(None);
        }
        let (t, typed) = (tenant.to_owned(), req.code.clone());
        let found = self
            .store
            .run(move |txn, st| v::resolve_code(txn, st, &t, &typed, indexed))
            .await
            .map_err(store_reply)?;
        let Some(found) = found else { return Ok(None) };
        let Some(rules) = self.rules_for(tenant, &found.campaign) else {
            return Ok(None);
        };
        let rr = crate::rules::RulesRequest {
            tenant: tenant.to_owned(),
            campaign: found.campaign.clone(),
            code: req.code.clone(),
            voucher_nr: found.code.clone(),
            cart: req.cart.clone(),
            location_id: req.location_id.clone(),
            user_id: req.user_id.clone(),
        };
        let refuse = |r: Rejection| Reply::rejected(r.code(), &r.message());
        match rules.decide(&rr).await.and_then(crate::rules::validate) {
            Ok(d) if d.ok => Ok(Some(VendorDecision {
                discount_cents: d.discount_amount_cents.unwrap_or(0),
                voucher_nr: d.voucher_nr,
            })),
            Ok(d) => Err(refuse(Rejection::VendorDeclined { reason: d.reason })),
            Err(why) => {
                tracing::warn!(tenant = %tenant, campaign = %found.campaign, error = %why, "vendor rules failed; refusing (fail closed)");
                Err(refuse(Rejection::VendorUnavailable { why }))
            }
        }
    }

    /// The rules that decide checks of `campaign`, if any.
    fn rules_for(&self, tenant: &str, campaign: &str) -> Option<Rules> {
        self.rules
            .get(&(tenant.to_owned(), Some(campaign.to_owned())))
            .or_else(|| self.rules.get(&(tenant.to_owned(), None)))
            .cloned()
            .or_else(|| self.embedded_rules.clone())
    }

    pub async fn commit(&self, tenant: &str, req: CommitRequest) -> Reply {
        let (t, now) = (tenant.to_owned(), self.clock.now_ms());
        self.job(Call::Commit.label(), move |txn, st| {
            v::commit(txn, st, &t, &req, now)
        })
        .await
    }

    pub async fn reactivate(&self, tenant: &str, req: CommitRequest) -> Reply {
        let (t, now) = (tenant.to_owned(), self.clock.now_ms());
        self.job(Call::Reactivate.label(), move |txn, st| {
            v::reactivate(txn, st, &t, &req, now)
        })
        .await
    }

    /// The program a read names, as the writer's state has it.
    fn program_of(st: &State, t: &str, id: &str) -> Option<Arc<crate::loyalty::Program>> {
        st.tenant(t).and_then(|ts| ts.programs.get(id)).cloned()
    }

    pub async fn lookup(&self, tenant: &str, req: LookupRequest) -> Reply {
        use crate::service::loyalty::lookup;
        let prog = self.programs.get(tenant, &req.loyalty_program_id);
        if let Some(r) = self.store.read(|v| lookup(v, prog, tenant, &req)) {
            return answer(r);
        }
        let t = tenant.to_owned();
        self.job(Call::Lookup.label(), move |txn, st| {
            let prog = Self::program_of(st, &t, &req.loyalty_program_id);
            lookup(&*txn, prog, &t, &req)
        })
        .await
    }

    pub async fn enroll(&self, tenant: &str, req: EnrollRequest) -> Reply {
        let (t, now) = (tenant.to_owned(), self.clock.now_ms());
        self.job(Call::Enroll.label(), move |txn, st| {
            crate::service::loyalty::enroll(txn, st, &t, &req, now)
        })
        .await
    }

    pub async fn award(&self, tenant: &str, req: AwardRequest) -> Reply {
        let (t, now) = (tenant.to_owned(), self.clock.now_ms());
        self.job(Call::Award.label(), move |txn, st| {
            crate::service::loyalty::award(txn, st, &t, &req, now)
        })
        .await
    }

    /// A read: on this thread beside the writer, unless what it read is in the group the
    /// writer is making durable — then on the writer, after that group (see `store::read`).
    pub async fn account(&self, tenant: &str, req: AccountRequest) -> Reply {
        use crate::service::loyalty::account;
        let now = self.clock.now_ms();
        let prog = self.programs.get(tenant, &req.loyalty_program_id);
        if let Some(r) = self.store.read(|v| account(v, prog, tenant, &req, now)) {
            return answer(r);
        }
        let t = tenant.to_owned();
        self.job(Call::Account.label(), move |txn, st| {
            let prog = Self::program_of(st, &t, &req.loyalty_program_id);
            account(&*txn, prog, &t, &req, now)
        })
        .await
    }

    pub async fn rewards(&self, tenant: &str, req: RewardsRequest) -> Reply {
        use crate::service::loyalty::rewards;
        let prog = self.programs.get(tenant, &req.loyalty_program_id);
        if let Some(r) = self.store.read(|v| rewards(v, prog, tenant, &req)) {
            return answer(r);
        }
        let t = tenant.to_owned();
        self.job(Call::Rewards.label(), move |txn, st| {
            let prog = Self::program_of(st, &t, &req.loyalty_program_id);
            rewards(&*txn, prog, &t, &req)
        })
        .await
    }

    pub async fn redeem(&self, tenant: &str, req: RedeemRequest) -> Reply {
        let (t, now) = (tenant.to_owned(), self.clock.now_ms());
        self.job(Call::Redeem.label(), move |txn, st| {
            crate::service::loyalty::redeem(txn, st, &t, &req, now)
        })
        .await
    }

    /// A webhook delivery to `tenant` (see [`App::has_webhook_receiver`]): verify its
    /// signature and envelope, then record it once and queue it for the routes whose
    /// patterns match its event, waking their delivery tasks.
    pub async fn receive_webhook(
        &self,
        tenant: &str,
        headers: Vec<(String, String)>,
        body: Vec<u8>,
    ) -> Reply {
        let Some(cfg) = self.config.tenant(tenant).and_then(|t| t.webhooks.as_ref()) else {
            return Reply::error(&ApiError::new(
                404,
                "NOT_FOUND",
                format!("tenant {tenant:?} has no webhook receiver"),
            ));
        };
        let now = self.clock.now_ms();
        let delivery = match crate::service::webhook::admit(cfg, headers, body, now) {
            Ok(d) => d,
            Err(e) => return Reply::error(&e),
        };
        let matching = delivery.routes.clone();
        let (t, retention) = (tenant.to_owned(), cfg.retention_ms);
        let reply = answer(
            self.store
                .run(move |txn, st| {
                    crate::service::webhook::receive(txn, st, &t, delivery, now, retention)
                })
                .await,
        );
        if reply.outcome == "ok" {
            for r in &matching {
                self.wake_route(tenant, r);
            }
        }
        reply
    }

    /// Tell a route's dispatcher that its queue has work.
    fn wake_route(&self, tenant: &str, route: &str) {
        if let Some(n) = self.route_wake.get(&(tenant.to_owned(), route.to_owned())) {
            n.notify_one();
        }
    }
}
