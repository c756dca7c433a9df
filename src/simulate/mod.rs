//! `karma-provider simulate`: Karma's side of orders, against any provider. Orders (files
//! in the Public Order API's shape, or a generated stream) go through the calls Karma
//! makes — lookup/enroll, account, check per voucher, commit or reactivate, award,
//! account — with Karma's retries, and the report names every contract violation.
//!
//! The pure parts are apart from the I/O: [`order`] (files, the voucher cart),
//! [`generate`] (the seeded order stream), [`checks`] (violation classes, judgements,
//! trackers), [`report`] (percentiles, human/JSON/JUnit). This module and [`flow`] do the
//! I/O through replay's client, endpoints and auth; [`cli`] is the subcommand.

pub mod checks;
pub mod cli;
pub mod flow;
pub mod generate;
pub mod order;
pub mod report;

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::replay::{self, Http, ReplayAuth, ReplayOptions, StateSpec};
use checks::{Balance, Class, SingleUse, Violation};
use order::Order;
use report::{Latencies, Report, Retry};

/// Karma's default retry schedule: waits before the 2nd, 3rd and 4th attempt.
pub const DEFAULT_RETRY_MS: [u64; 3] = [200, 1000, 3000];
/// How long Karma waits for one answer by default.
pub const DEFAULT_TIMEOUT_MS: u64 = 3000;
/// The default latency budget: an average of 500 ms per call.
pub const DEFAULT_BUDGET_MS: u64 = 500;

#[derive(Debug, Clone)]
pub struct SimOptions {
    /// Order files (each one order or an array); empty with `generate`.
    pub files: Vec<PathBuf>,
    /// Generate this many orders instead.
    pub generate: Option<usize>,
    pub seed: u64,
    pub concurrency: usize,
    /// `location_id` of generated orders.
    pub location: u64,
    /// Base URL (`…/v1/acme`) or one absolute URL per call, as in replay.
    pub target: Option<String>,
    pub endpoints: Option<BTreeMap<String, String>>,
    pub auth: Option<ReplayAuth>,
    /// Provider states: a generated run sets up its codes and program there.
    pub state_url: Option<String>,
    pub state_headers: Vec<(String, String)>,
    /// The location's loyalty program (`loyaltyProgramId`); no loyalty calls without one.
    pub program: Option<String>,
    /// Shared and single-use codes for generated orders (and, single-use, tracked).
    pub codes: Vec<String>,
    pub single_use: Vec<String>,
    /// Waits before each retry of commit, reactivate and award.
    pub retry_ms: Vec<u64>,
    pub timeout_ms: u64,
    pub budget_ms: u64,
    pub json: Option<PathBuf>,
    pub junit: Option<PathBuf>,
    pub run_id: Option<String>,
    pub extra_roots: Vec<Vec<u8>>,
}

impl Default for SimOptions {
    fn default() -> Self {
        SimOptions {
            files: Vec::new(),
            generate: None,
            seed: 1,
            concurrency: 4,
            location: 1,
            target: None,
            endpoints: None,
            auth: None,
            state_url: None,
            state_headers: Vec::new(),
            program: None,
            codes: Vec::new(),
            single_use: Vec::new(),
            retry_ms: DEFAULT_RETRY_MS.to_vec(),
            timeout_ms: DEFAULT_TIMEOUT_MS,
            budget_ms: DEFAULT_BUDGET_MS,
            json: None,
            junit: None,
            run_id: None,
            extra_roots: Vec::new(),
        }
    }
}

/// What the orders of a run share: the client, the URLs, and what has been seen.
pub(crate) struct Shared {
    pub o: SimOptions,
    pub http: Http,
    pub urls: BTreeMap<String, String>,
    pub run: String,
    /// `loyaltyProgramId` as Karma sends it (a number when it is one).
    pub program: Option<Value>,
    pub single_use: BTreeSet<String>,
    pub rec: Mutex<Recorder>,
}

#[derive(Default)]
pub(crate) struct Recorder {
    pub lat: Latencies,
    pub violations: Vec<Violation>,
    pub retries: Vec<Retry>,
    pub balances: BTreeMap<String, Balance>,
    pub single: SingleUse,
    pub outcomes: BTreeMap<String, usize>,
    pub expiry_assumed: usize,
    pub clamped: usize,
    pub refusals: BTreeMap<String, usize>,
}

impl Shared {
    pub fn violation(&self, class: Class, order: &str, call: &str, detail: String) {
        self.lock().violations.push(Violation {
            class,
            order: order.to_owned(),
            call: call.to_owned(),
            detail,
        });
    }

    pub fn lock(&self) -> std::sync::MutexGuard<'_, Recorder> {
        self.rec.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// POST `body` to `call`, retrying (when `retried`) a timeout, a 5xx or a connection
    /// error on Karma's schedule with the same body. `None`: no answer at all.
    pub async fn call(
        &self,
        order: &str,
        call: &str,
        body: &Value,
        retried: bool,
    ) -> Option<(u16, Vec<u8>)> {
        let url = self.urls.get(call)?;
        let headers: Vec<(String, String)> = self.o.auth.iter().map(|a| a.header()).collect();
        let bytes = serde_json::to_vec(body).unwrap_or_default();
        let waits: &[u64] = if retried { &self.o.retry_ms } else { &[] };
        let mut attempts = Vec::new();
        let mut answer = None;
        for n in 0..=waits.len() {
            if let Some(w) = n.checked_sub(1).and_then(|i| waits.get(i)) {
                tokio::time::sleep(Duration::from_millis(*w)).await;
            }
            let t = Instant::now();
            let limit = Duration::from_millis(self.o.timeout_ms);
            let got =
                tokio::time::timeout(limit, self.http.post(url, &headers, bytes.clone())).await;
            let us = u64::try_from(t.elapsed().as_micros()).unwrap_or(u64::MAX);
            self.lock().lat.record(call, us);
            match got {
                Ok(Ok((s, b))) if s < 500 => {
                    attempts.push(format!("HTTP {s}"));
                    answer = Some((s, b));
                    break;
                }
                Ok(Ok((s, _))) => attempts.push(format!("HTTP {s}")),
                Ok(Err(e)) => attempts.push(format!("no connection: {e}")),
                Err(_) => attempts.push(format!("timeout after {} ms", self.o.timeout_ms)),
            }
        }
        if attempts.len() > 1 {
            self.lock().retries.push(Retry {
                order: order.to_owned(),
                call: call.to_owned(),
                transaction_id: body["transactionId"].as_str().map(str::to_owned),
                attempts: attempts.clone(),
                recovered: answer.is_some(),
            });
        }
        if answer.is_none() {
            let detail = format!(
                "no answer after {} attempts: {}",
                attempts.len(),
                attempts.join(", ")
            );
            self.violation(Class::CallFailed, order, call, detail);
        }
        answer
    }
}

/// A 32-hex-digit id unique to the run and `what` (for `res_`/`loy_` ids).
pub(crate) fn hex_id(run: &str, what: &str) -> String {
    use sha2::Digest;
    hex::encode(&sha2::Sha256::digest(format!("{run}/{what}").as_bytes())[..16])
}

/// Run the simulation. `Err`: the run could not happen (bad files or options, setup).
pub async fn run(o: SimOptions) -> Result<Report, String> {
    let run = o.run_id.clone().unwrap_or_else(|| {
        let seed = format!("{:?}{}", std::time::SystemTime::now(), std::process::id());
        hex_id(&seed, "run")[..16].to_owned()
    });
    let ro = ReplayOptions {
        target: o.target.clone(),
        endpoints: o.endpoints.clone(),
        state_url: o.state_url.clone(),
        state_headers: o.state_headers.clone(),
        ..ReplayOptions::default()
    };
    let mut urls = BTreeMap::new();
    for call in replay::CALLS.iter().filter(|c| **c != "webhook") {
        if let Ok(u) = replay::url_for(&ro, call) {
            urls.insert(call.to_string(), u);
        }
    }
    let http = Http::new(&o.extra_roots)?;
    let mut o = o;
    if o.generate.is_some() && o.state_url.is_some() {
        set_up_world(&mut o, &ro, &http, &run).await?;
    }
    let orders = match o.generate {
        Some(n) => generate::orders(n, o.seed, o.location, &world(&o, &run)),
        None => order::read(&o.files)?,
    };
    let mut needed = vec!["voucher.check", "voucher.commit", "voucher.reactivate"];
    if o.program.is_some() {
        needed.extend([
            "loyalty.lookup",
            "loyalty.enroll",
            "loyalty.award",
            "loyalty.account",
        ]);
    }
    if let Some(call) = needed.iter().find(|c| !urls.contains_key(**c)) {
        return Err(format!(
            "no URL for {call}: give --target, or --endpoints with every call a run makes"
        ));
    }
    let program = o.program.as_ref().map(|p| match p.parse::<u64>() {
        Ok(n) => json!(n),
        Err(_) => json!(p),
    });
    let shared = Arc::new(Shared {
        single_use: o.single_use.iter().cloned().collect(),
        o,
        http,
        urls,
        run,
        program,
        rec: Mutex::default(),
    });
    let n = orders.len();
    drive(&shared, orders).await?;
    Ok(finish(&shared, n))
}

/// The codes generated orders use.
fn world(o: &SimOptions, run: &str) -> generate::World {
    generate::World {
        shared_codes: o.codes.clone(),
        single_use_codes: o.single_use.clone(),
        run_tag: run[..8.min(run.len())].to_owned(),
    }
}

/// Through provider states: a loyalty program and three campaigns (10 % off, 8.00 off,
/// single-use 3.00 codes, one per five orders) unique to the run.
async fn set_up_world(
    o: &mut SimOptions,
    ro: &ReplayOptions,
    http: &Http,
    run: &str,
) -> Result<(), String> {
    let tag = run.to_uppercase();
    let n = o.generate.unwrap_or(0);
    let singles: Vec<String> = (0..(n / 5).max(1))
        .map(|i| format!("ONE{tag}{i}"))
        .collect();
    let program = u64::from_str_radix(&run[..12.min(run.len())], 16).unwrap_or(0) + 1;
    let states = [
        (
            "program",
            json!({"program_id": program, "earn": {"points": 1, "per_cents": 100},
            "signup_bonus": 50,
            "tiers": [{"id": "bronze", "name": "Bronze", "min_lifetime": 0},
                      {"id": "silver", "name": "Silver", "min_lifetime": 500, "multiplier_percent": 150}],
            "rewards": [{"id": "coffee", "title": "Free coffee", "points_cost": 100}]}),
        ),
        (
            "campaign",
            json!({"id": format!("sim-{run}-pct"), "codes": [format!("PCT{tag}")],
            "discount": {"percent": 10}}),
        ),
        (
            "campaign",
            json!({"id": format!("sim-{run}-fix"), "codes": [format!("FIX{tag}")],
            "discount": {"amount_cents": 800}}),
        ),
        (
            "campaign",
            json!({"id": format!("sim-{run}-one"), "codes": singles,
            "discount": {"amount_cents": 300}, "max_uses_per_code": 1}),
        ),
    ];
    for (state, params) in states {
        let spec = StateSpec {
            state: state.into(),
            params: params.clone(),
        };
        if let Some(e) = replay::post_state(ro, http, &spec, &params, "setup").await? {
            return Err(e);
        }
    }
    o.program.get_or_insert(program.to_string());
    o.codes.extend([format!("PCT{tag}"), format!("FIX{tag}")]);
    o.single_use.extend(singles);
    Ok(())
}

/// Run the orders, at most `concurrency` at once; one guest's orders one after another
/// (Karma serves a guest's orders in turn), so each balance can be followed.
async fn drive(sh: &Arc<Shared>, orders: Vec<Order>) -> Result<(), String> {
    let mut groups: BTreeMap<String, Vec<Order>> = BTreeMap::new();
    for (i, o) in orders.into_iter().enumerate() {
        let key = match o.ordering_member.as_ref().and_then(|m| m.user_id()) {
            Some(u) => format!("member {u}"),
            None => format!("anonymous {i}"),
        };
        groups.entry(key).or_default().push(o);
    }
    let permits = Arc::new(tokio::sync::Semaphore::new(sh.o.concurrency.max(1)));
    let mut set = tokio::task::JoinSet::new();
    for (_, group) in groups {
        let (sh, permits) = (sh.clone(), permits.clone());
        set.spawn(async move {
            for o in group {
                let Ok(_p) = permits.acquire().await else {
                    return;
                };
                flow::order(&sh, &o).await;
            }
        });
    }
    while let Some(done) = set.join_next().await {
        done.map_err(|e| format!("an order stopped: {e}"))?;
    }
    Ok(())
}

fn finish(sh: &Shared, orders: usize) -> Report {
    let mut rec = sh.lock();
    let calls = rec.lat.stats(sh.o.budget_ms);
    for c in calls.iter().filter(|c| !c.within_budget) {
        let detail = format!(
            "average {:.2} ms over {} calls is above the budget of {} ms (p99 {:.2} ms)",
            c.avg_ms, c.count, sh.o.budget_ms, c.p99_ms
        );
        rec.violations.push(Violation {
            class: Class::LatencyOverBudget,
            order: "(all orders)".into(),
            call: c.call.clone(),
            detail,
        });
    }
    rec.violations
        .sort_by(|a, b| (a.class, &a.order).cmp(&(b.class, &b.order)));
    Report {
        run: sh.run.clone(),
        seed: sh.o.generate.map(|_| sh.o.seed),
        orders,
        outcomes: rec.outcomes.clone(),
        budget_ms: sh.o.budget_ms,
        calls,
        expiry_assumed: rec.expiry_assumed,
        discounts_clamped: rec.clamped,
        refusals: rec.refusals.clone(),
        retries: rec.retries.clone(),
        violations: rec.violations.clone(),
    }
}
