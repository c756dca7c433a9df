//! Injected faults ("chaos") for Karma-side QA: per tenant, off by default, switched on and
//! off at run time by the admin API (`…/tenants/{t}/injected-faults`) or any caller of the
//! [`App`] operations here (the operator console). A [`FaultSpec`] adds latency (fixed,
//! uniform, or a percentile table) and draws, per request, at most one of: a 5xx answer, a
//! timeout (the connection held, then closed without an answer), a dropped connection
//! (closed without an answer), or "answer then forget" (the request is served — its effect
//! durable — and the answer is not sent). This module decides; `http/` enacts what it
//! decided, and only for the provider calls and the webhook receiver (never admin, health,
//! readiness or metrics). Every injected fault is counted in `/metrics`
//! (`kp_injected_faults_total{tenant,endpoint,kind}`).
//!
//! Not to be confused with [`crate::faults`], the *test* faults: an in-process hook that
//! makes the next store job fail, armed only by tests, with no route. Injected faults never
//! touch the store; they happen around a request, as a network or a slow provider would.
//!
//! Settings live in memory only: a restart forgets them (the service comes back well
//! behaved), and the config file has no key for them.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};

use super::{App, Reply};
use crate::contract::ApiError;

/// Draws are made in parts per million.
const PPM: u32 = 1_000_000;
/// Longest latency or timeout hold accepted, in ms (10 minutes).
const MAX_MS: u64 = 600_000;

/// The endpoints faults can apply to: the nine provider calls and the webhook receiver,
/// by their metrics labels (the names replay fixtures use).
pub const ENDPOINTS: [&str; 10] = crate::karma_urls::CALLS;

/// What a tenant's requests suffer, as written by the caller (JSON, snake_case keys).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FaultSpec {
    /// Endpoint labels (see [`ENDPOINTS`]); absent: all of them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoints: Option<Vec<String>>,
    /// Added before every request of those endpoints is served (or failed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub latency: Option<Latency>,
    /// Share (0..=1) of requests answered `error_status` with a JSON error, not served.
    #[serde(default)]
    pub error_share: f64,
    #[serde(default = "default_status")]
    pub error_status: u16,
    /// Share of requests held `timeout_ms`, then closed without an answer, not served.
    #[serde(default)]
    pub timeout_share: f64,
    #[serde(default = "default_timeout_ms")]
    pub timeout_ms: u64,
    /// Share of requests closed at once without an answer, not served.
    #[serde(default)]
    pub drop_share: f64,
    /// Share of requests served (effect durable) whose answer is not sent.
    #[serde(default)]
    pub forget_share: f64,
    /// Seed of the draws: the same seed and the same order of requests give the same
    /// faults. Absent: seeded from the operating system.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seed: Option<u64>,
}

fn default_status() -> u16 {
    503
}

fn default_timeout_ms() -> u64 {
    10_000
}

/// Added latency: `{"fixed_ms": 200}`, `{"uniform_ms": [10, 50]}` (every ms in the range
/// equally likely), or `{"percentiles_ms": [[0, 5], [50, 20], [99, 300], [100, 1000]]}`
/// (percent → ms, from 0 to 100, linear in between).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum Latency {
    FixedMs(u64),
    UniformMs((u64, u64)),
    PercentilesMs(Vec<(f64, u64)>),
}

/// The fault one request gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Injected {
    /// Wait this long first.
    pub delay: Duration,
    pub kind: Option<Kind>,
}

/// What happens after the delay, instead of (or after) serving the request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Answer this 5xx status, unserved.
    Error(u16),
    /// Hold the connection this long, then close it without an answer, unserved.
    Timeout(Duration),
    /// Close the connection without an answer, unserved.
    Drop,
    /// Serve the request, then close the connection without its answer.
    Forget,
}

impl Kind {
    /// The `kind` label in metrics.
    pub fn label(self) -> &'static str {
        match self {
            Kind::Error(_) => "error",
            Kind::Timeout(_) => "timeout",
            Kind::Drop => "drop",
            Kind::Forget => "forget",
        }
    }
}

/// A validated spec, ready to draw from.
struct Injector {
    spec: FaultSpec,
    endpoints: Vec<&'static str>,
    /// Cumulative upper bounds in ppm: error, timeout, drop, forget.
    bounds: [u32; 4],
    /// Percentile table in (ppm, ms), or the fixed/uniform bounds as two points.
    latency: Option<Vec<(u32, u64)>>,
    uniform: bool,
    rng: Mutex<StdRng>,
}

fn ppm(field: &str, share: f64) -> Result<u32, ApiError> {
    if !share.is_finite() || !(0.0..=1.0).contains(&share) {
        return Err(ApiError::invalid(field, "a share from 0 to 1"));
    }
    Ok((share * f64::from(PPM)).round() as u32)
}

fn ms(field: &str, v: u64) -> Result<u64, ApiError> {
    if v > MAX_MS {
        return Err(ApiError::invalid(field, format!("at most {MAX_MS} ms")));
    }
    Ok(v)
}

/// The latency as points of an inverse distribution function, and whether it is uniform.
fn latency_points(l: &Latency) -> Result<(Vec<(u32, u64)>, bool), ApiError> {
    match l {
        Latency::FixedMs(v) => {
            let v = ms("latency.fixed_ms", *v)?;
            Ok((vec![(0, v), (PPM, v)], false))
        }
        Latency::UniformMs((lo, hi)) => {
            let (lo, hi) = (
                ms("latency.uniform_ms", *lo)?,
                ms("latency.uniform_ms", *hi)?,
            );
            if lo > hi {
                return Err(ApiError::invalid(
                    "latency.uniform_ms",
                    "[min, max] with min ≤ max",
                ));
            }
            Ok((vec![(0, lo), (PPM, hi)], true))
        }
        Latency::PercentilesMs(points) => percentile_points(points).map(|p| (p, false)),
    }
}

fn percentile_points(points: &[(f64, u64)]) -> Result<Vec<(u32, u64)>, ApiError> {
    let f = "latency.percentiles_ms";
    let rule = "[[percent, ms], …] from percent 0 to 100, both never decreasing";
    let mut out: Vec<(u32, u64)> = Vec::with_capacity(points.len());
    for (p, v) in points {
        if !p.is_finite() || !(0.0..=100.0).contains(p) {
            return Err(ApiError::invalid(f, rule));
        }
        let at = (p * f64::from(PPM / 100)).round() as u32;
        let v = ms(f, *v)?;
        if out.last().is_some_and(|&(a, m)| at < a || v < m) {
            return Err(ApiError::invalid(f, rule));
        }
        out.push((at, v));
    }
    match (out.first(), out.last()) {
        (Some(&(0, _)), Some(&(PPM, _))) if out.len() >= 2 => Ok(out),
        _ => Err(ApiError::invalid(f, rule)),
    }
}

impl Injector {
    fn new(spec: FaultSpec) -> Result<Injector, ApiError> {
        let endpoints = match &spec.endpoints {
            None => ENDPOINTS.to_vec(),
            Some(list) if list.is_empty() => {
                return Err(ApiError::invalid(
                    "endpoints",
                    "at least one endpoint, or leave it out for all",
                ))
            }
            Some(list) => list
                .iter()
                .map(|e| {
                    ENDPOINTS
                        .iter()
                        .find(|k| **k == e.as_str())
                        .copied()
                        .ok_or_else(|| {
                            ApiError::invalid(
                                "endpoints",
                                format!("{e:?} is none of {}", ENDPOINTS.join(", ")),
                            )
                        })
                })
                .collect::<Result<_, _>>()?,
        };
        if !(500..=599).contains(&spec.error_status) {
            return Err(ApiError::invalid(
                "error_status",
                "a status from 500 to 599",
            ));
        }
        if spec.timeout_ms == 0 {
            return Err(ApiError::invalid("timeout_ms", "from 1 ms"));
        }
        ms("timeout_ms", spec.timeout_ms)?;
        let mut bounds = [0u32; 4];
        let mut sum = 0u32;
        let shares = [
            ("error_share", spec.error_share),
            ("timeout_share", spec.timeout_share),
            ("drop_share", spec.drop_share),
            ("forget_share", spec.forget_share),
        ];
        for (i, (field, share)) in shares.into_iter().enumerate() {
            sum = sum.saturating_add(ppm(field, share)?);
            if sum > PPM {
                return Err(ApiError::invalid(
                    field,
                    "error, timeout, drop and forget shares add up to more than 1",
                ));
            }
            bounds[i] = sum;
        }
        let (latency, uniform) = match &spec.latency {
            None => (None, false),
            Some(l) => latency_points(l).map(|(p, u)| (Some(p), u))?,
        };
        let rng = match spec.seed {
            Some(s) => StdRng::seed_from_u64(s),
            None => StdRng::try_from_os_rng()
                .map_err(|e| ApiError::new(500, "INTERNAL", format!("no OS randomness: {e}")))?,
        };
        Ok(Injector {
            spec,
            endpoints,
            bounds,
            latency,
            uniform,
            rng: Mutex::new(rng),
        })
    }

    fn draw(&self, endpoint: &str) -> Option<Injected> {
        if !self.endpoints.contains(&endpoint) {
            return None;
        }
        let mut rng = self.rng.lock().unwrap_or_else(|e| e.into_inner());
        let delay = match &self.latency {
            None => 0,
            Some(points) if self.uniform => rng.random_range(points[0].1..=points[1].1),
            Some(points) => interpolate(points, rng.random_range(0..PPM)),
        };
        let u = rng.random_range(0..PPM);
        let kind = match self.bounds.iter().position(|b| u < *b) {
            Some(0) => Some(Kind::Error(self.spec.error_status)),
            Some(1) => Some(Kind::Timeout(Duration::from_millis(self.spec.timeout_ms))),
            Some(2) => Some(Kind::Drop),
            Some(_) => Some(Kind::Forget),
            None => None,
        };
        Some(Injected {
            delay: Duration::from_millis(delay),
            kind,
        })
    }
}

/// The ms at `u` ppm on the piecewise-linear inverse distribution `points`.
fn interpolate(points: &[(u32, u64)], u: u32) -> u64 {
    let i = points
        .iter()
        .position(|&(at, _)| at > u)
        .unwrap_or(points.len() - 1)
        .max(1);
    let ((a0, m0), (a1, m1)) = (points[i - 1], points[i]);
    if a1 <= a0 {
        return m1;
    }
    let frac = u128::from(u.saturating_sub(a0).min(a1 - a0));
    let span = u128::from(m1 - m0) * frac / u128::from(a1 - a0);
    m0 + span as u64
}

/// Every tenant's injected faults.
#[derive(Default)]
pub struct Chaos {
    any: AtomicBool,
    tenants: RwLock<HashMap<String, Arc<Injector>>>,
}

impl Chaos {
    fn draw(&self, tenant: &str, endpoint: &str) -> Option<Injected> {
        if !self.any.load(Ordering::Relaxed) {
            return None;
        }
        let inj = self
            .tenants
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(tenant)
            .cloned()?;
        inj.draw(endpoint)
    }

    fn set(&self, tenant: &str, inj: Option<Injector>) {
        let mut m = self.tenants.write().unwrap_or_else(|e| e.into_inner());
        match inj {
            Some(i) => m.insert(tenant.to_owned(), Arc::new(i)),
            None => m.remove(tenant),
        };
        self.any.store(!m.is_empty(), Ordering::Relaxed);
    }

    fn spec(&self, tenant: &str) -> Option<FaultSpec> {
        let m = self.tenants.read().unwrap_or_else(|e| e.into_inner());
        m.get(tenant).map(|i| i.spec.clone())
    }
}

impl App {
    /// The fault a request to `endpoint` of `tenant` gets (`None`: none), counted in the
    /// metrics. Called by the HTTP layer for provider calls and webhooks only.
    pub fn draw_fault(&self, tenant: &str, endpoint: &'static str) -> Option<Injected> {
        let f = self.chaos.draw(tenant, endpoint)?;
        if !f.delay.is_zero() {
            self.metrics.injected(tenant, endpoint, "latency");
        }
        if let Some(k) = f.kind {
            self.metrics.injected(tenant, endpoint, k.label());
        }
        Some(f)
    }

    /// A tenant's injected faults: `{"ok":true,"tenant":…,"faults":spec|null}`.
    pub fn injected_faults(&self, tenant: &str) -> Reply {
        if self.config.tenant(tenant).is_none() {
            return unknown_tenant(tenant);
        }
        faults_reply(tenant, self.chaos.spec(tenant))
    }

    /// Switch a tenant's injected faults on (replacing any), after validating `spec`
    /// (a 400 naming the field).
    pub fn set_injected_faults(&self, tenant: &str, spec: FaultSpec) -> Reply {
        if self.config.tenant(tenant).is_none() {
            return unknown_tenant(tenant);
        }
        match Injector::new(spec) {
            Ok(inj) => {
                tracing::warn!(tenant = %tenant, spec = ?inj.spec, "injected faults switched on");
                let spec = inj.spec.clone();
                self.chaos.set(tenant, Some(inj));
                faults_reply(tenant, Some(spec))
            }
            Err(e) => Reply::error(&e),
        }
    }

    /// Switch a tenant's injected faults off.
    pub fn clear_injected_faults(&self, tenant: &str) -> Reply {
        if self.config.tenant(tenant).is_none() {
            return unknown_tenant(tenant);
        }
        self.chaos.set(tenant, None);
        tracing::info!(tenant = %tenant, "injected faults switched off");
        faults_reply(tenant, None)
    }
}

fn unknown_tenant(tenant: &str) -> Reply {
    Reply::error(&ApiError::new(
        404,
        "UNKNOWN_TENANT",
        format!("no tenant {tenant:?}"),
    ))
}

fn faults_reply(tenant: &str, spec: Option<FaultSpec>) -> Reply {
    let body = serde_json::json!({"ok": true, "tenant": tenant, "faults": spec});
    Reply::ok(body.to_string().into_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(json: &str) -> Result<Injector, ApiError> {
        Injector::new(serde_json::from_str(json).unwrap())
    }

    #[test]
    fn shares_one_and_zero_are_exact_and_a_seed_repeats_its_draws() {
        let always = spec(r#"{"forget_share":1.0,"endpoints":["voucher.commit"]}"#).unwrap();
        for _ in 0..100 {
            assert_eq!(
                always.draw("voucher.commit").unwrap().kind,
                Some(Kind::Forget)
            );
            assert_eq!(always.draw("voucher.check"), None);
        }
        let never = spec(r#"{"error_share":0.0}"#).unwrap();
        assert!((0..100).all(|_| never.draw("loyalty.award").unwrap().kind.is_none()));
        let s = r#"{"error_share":0.3,"drop_share":0.3,"latency":{"uniform_ms":[0,100]},"seed":7}"#;
        let (a, b) = (spec(s).unwrap(), spec(s).unwrap());
        let da: Vec<_> = (0..50).map(|_| a.draw("webhook")).collect();
        let db: Vec<_> = (0..50).map(|_| b.draw("webhook")).collect();
        assert_eq!(da, db);
        assert!(da.iter().any(|d| d.unwrap().kind == Some(Kind::Drop)));
        assert!(da.iter().any(|d| d.unwrap().kind == Some(Kind::Error(503))));
    }

    #[test]
    fn every_provider_call_can_be_faulted() {
        use crate::app::Call::*;
        for c in [
            Check, Commit, Reactivate, Lookup, Enroll, Award, Account, Rewards, Redeem,
        ] {
            assert!(ENDPOINTS.contains(&c.label()), "{c:?}");
        }
    }

    #[test]
    fn percentile_latency_is_linear_between_its_points() {
        let p = percentile_points(&[(0.0, 10), (50.0, 20), (100.0, 120)]).unwrap();
        assert_eq!(interpolate(&p, 0), 10);
        assert_eq!(interpolate(&p, 250_000), 15);
        assert_eq!(interpolate(&p, 500_000), 20);
        assert_eq!(interpolate(&p, 750_000), 70);
        assert_eq!(interpolate(&p, 999_999), 119);
    }

    #[test]
    fn bad_specs_name_their_field() {
        let field = |j: &str| spec(j).err().and_then(|e| e.field).unwrap();
        assert_eq!(field(r#"{"error_share":1.5}"#), "error_share");
        assert_eq!(
            field(r#"{"error_share":0.6,"forget_share":0.6}"#),
            "forget_share"
        );
        assert_eq!(field(r#"{"error_status":404}"#), "error_status");
        assert_eq!(field(r#"{"timeout_ms":0}"#), "timeout_ms");
        assert_eq!(field(r#"{"endpoints":["admin"]}"#), "endpoints");
        assert_eq!(
            field(r#"{"latency":{"uniform_ms":[50,10]}}"#),
            "latency.uniform_ms"
        );
        assert_eq!(
            field(r#"{"latency":{"fixed_ms":600001}}"#),
            "latency.fixed_ms"
        );
        assert_eq!(
            field(r#"{"latency":{"percentiles_ms":[[10,5],[100,9]]}}"#),
            "latency.percentiles_ms"
        );
    }
}
