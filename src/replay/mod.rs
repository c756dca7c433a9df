//! `karma-provider replay`: run provider-neutral contract scenarios (`fixtures/`) against
//! any provider and report which behaviour broke.
//!
//! A fixture is `{name, description, state: [{state, params}], steps: [{name?, call,
//! request: {headers?, body, signature?}, expect: {status, body?}, capture?}]}`. `call` is
//! `voucher.check|commit|reactivate`, `loyalty.lookup|enroll|award|account|rewards|redeem`
//! or `webhook`. Strings may use `${run}` (16 hex characters unique to this run and
//! scenario, so ids never meet an earlier run's or scenario's idempotency records),
//! `${runNumber}` (the same, as a JSON integer, for ids Karma sends as numbers) and `${name}` for values
//! captured by earlier steps (`{"$capture": "name"}` in an expected body, or
//! `capture: {"name": "/json/pointer"}`). Matchers: see [`matcher`]. A step with
//! `parallel: N` sends N copies at once (`${copy}`: each copy's index) and `expect.set`
//! judges the set of answers ([`parallel`]); `budgetMs` on a step or a fixture bounds its
//! latency. Every exchange is kept for the JSON report.

pub mod matcher;
pub mod parallel;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use matcher::{compare, substitute, Mismatch};

pub use crate::karma_urls::CALLS;

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Fixture {
    pub name: String,
    #[serde(default)]
    pub description: String,
    #[serde(default)]
    pub state: Vec<StateSpec>,
    /// `decision`: the scenario pins one of our own decisions where Karma's contract is
    /// silent (skipped by `--contract-only`).
    #[serde(default)]
    pub tags: Vec<String>,
    /// Latency budget of the whole scenario (its steps, not its provider states), in ms.
    #[serde(default, rename = "budgetMs")]
    pub budget_ms: Option<u64>,
    pub steps: Vec<Step>,
}

/// The tag of scenarios that encode our decisions rather than Karma's contract.
pub const DECISION_TAG: &str = "decision";

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct StateSpec {
    pub state: String,
    #[serde(default)]
    pub params: Value,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Step {
    #[serde(default)]
    pub name: Option<String>,
    pub call: String,
    pub request: StepRequest,
    pub expect: Expect,
    /// name → JSON pointer into the answer body.
    #[serde(default)]
    pub capture: BTreeMap<String, String>,
    /// Send this many copies at once (`${copy}`: each copy's index as 4 hex digits).
    #[serde(default)]
    pub parallel: Option<usize>,
    /// Every answer of this step must arrive within this many ms.
    #[serde(default, rename = "budgetMs")]
    pub budget_ms: Option<u64>,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct StepRequest {
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    pub body: Value,
    /// Webhook steps: `valid` (default), `invalid` (a wrong signature) or `none`.
    #[serde(default)]
    pub signature: Option<String>,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Expect {
    pub status: u16,
    /// Of a parallel step: every answer must match it.
    #[serde(default)]
    pub body: Option<Value>,
    /// Of a parallel step: expectations on the set of answers.
    #[serde(default)]
    pub set: Option<parallel::SetExpect>,
}

/// How a provider authenticates Karma's calls.
#[derive(Debug, Clone)]
pub enum ReplayAuth {
    Basic { user: String, pass: String },
    Header { name: String, value: String },
}

impl ReplayAuth {
    /// `basic:USER:PASS` or `header:NAME:VALUE`.
    pub fn parse(s: &str) -> Result<ReplayAuth, String> {
        match s.split_once(':') {
            Some(("basic", rest)) => rest
                .split_once(':')
                .map(|(u, p)| ReplayAuth::Basic {
                    user: u.into(),
                    pass: p.into(),
                })
                .ok_or_else(|| "use basic:USER:PASS".to_string()),
            Some(("header", rest)) => rest
                .split_once(':')
                .map(|(n, v)| ReplayAuth::Header {
                    name: n.into(),
                    value: v.into(),
                })
                .ok_or_else(|| "use header:NAME:VALUE".to_string()),
            _ => Err("use basic:USER:PASS or header:NAME:VALUE".into()),
        }
    }

    pub(crate) fn header(&self) -> (String, String) {
        use base64::Engine;
        match self {
            ReplayAuth::Basic { user, pass } => (
                "authorization".into(),
                format!(
                    "Basic {}",
                    base64::engine::general_purpose::STANDARD.encode(format!("{user}:{pass}"))
                ),
            ),
            ReplayAuth::Header { name, value } => (name.clone(), value.clone()),
        }
    }
}

#[derive(Debug, Clone, Default)]
pub struct ReplayOptions {
    pub paths: Vec<PathBuf>,
    /// Base like `http://host:port/v1/acme`; calls map to `{base}/voucher/check` etc.
    pub target: Option<String>,
    /// Or an absolute URL per call.
    pub endpoints: Option<BTreeMap<String, String>>,
    pub auth: Option<ReplayAuth>,
    pub state_url: Option<String>,
    /// Extra headers for the state URL (e.g. the admin bearer token).
    pub state_headers: Vec<(String, String)>,
    pub webhook_secret: Option<String>,
    pub webhook_scheme: crate::webhook::Scheme,
    pub filter: Option<String>,
    pub fail_fast: bool,
    pub last_failed: bool,
    pub last_failed_file: PathBuf,
    pub junit: Option<PathBuf>,
    pub json: Option<PathBuf>,
    /// Fixed run id (tests); random-ish per run otherwise.
    pub run_id: Option<String>,
    /// Skip scenarios tagged `decision` (our decisions, not Karma's contract).
    pub contract_only: bool,
    /// DER certificates trusted besides the public web roots (`--ca-file`).
    pub extra_roots: Vec<Vec<u8>>,
    /// The latency budget of every step without its own `budgetMs` (`--budget-ms`).
    pub budget_ms: Option<u64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Skipped {
    pub name: String,
    pub reason: String,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ScenarioResult {
    pub name: String,
    pub file: String,
    pub passed: bool,
    pub duration_ms: u64,
    /// Readable differences, one per line, prefixed with the step.
    pub failures: Vec<String>,
    /// Every request sent and answer received, in order (the `--json` report).
    pub exchanges: Vec<Exchange>,
}

/// One request of a scenario and its answer.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Exchange {
    pub step: String,
    pub call: String,
    /// The copy of a parallel step.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub copy: Option<usize>,
    pub url: String,
    /// The body sent (headers are left out: they carry the credentials).
    pub request: Value,
    pub status: u16,
    /// The answer's JSON, or its text when it is not JSON.
    pub answer: Value,
    pub ms: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub run: String,
    pub passed: usize,
    pub failed: usize,
    pub scenarios: Vec<ScenarioResult>,
    /// Scenarios not run, each with the reason (printed as a notice).
    pub skipped: Vec<Skipped>,
}

/// Load fixtures from files and directories (every `*.json`, sorted).
pub fn load(paths: &[PathBuf]) -> Result<Vec<(PathBuf, Fixture)>, String> {
    let mut files = Vec::new();
    for p in paths {
        if p.is_dir() {
            let mut inner: Vec<PathBuf> = std::fs::read_dir(p)
                .map_err(|e| format!("{}: {e}", p.display()))?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|f| f.extension().is_some_and(|x| x == "json"))
                .collect();
            inner.sort();
            files.extend(inner);
        } else {
            files.push(p.clone());
        }
    }
    let mut out = Vec::new();
    for f in files {
        let text = std::fs::read_to_string(&f).map_err(|e| format!("{}: {e}", f.display()))?;
        let mut de = serde_json::Deserializer::from_str(&text);
        let fx: Fixture = serde_path_to_error::deserialize(&mut de)
            .map_err(|e| format!("{}: at {}: {}", f.display(), e.path(), e.inner()))?;
        for (i, s) in fx.steps.iter().enumerate() {
            if let Some(e) = step_error(s) {
                return Err(format!("{}: steps[{i}].{e}", f.display()));
            }
        }
        if out
            .iter()
            .any(|(_, o): &(PathBuf, Fixture)| o.name == fx.name)
        {
            return Err(format!(
                "{}: scenario name {:?} is used twice",
                f.display(),
                fx.name
            ));
        }
        out.push((f, fx));
    }
    if out.is_empty() {
        return Err("no fixtures found".into());
    }
    Ok(out)
}

/// What is wrong with a step, naming the field.
fn step_error(s: &Step) -> Option<String> {
    if !CALLS.contains(&s.call.as_str()) {
        return Some(format!(
            "call {:?} is not one of {}",
            s.call,
            CALLS.join(", ")
        ));
    }
    match (s.parallel, &s.expect.set) {
        (Some(n), _) if !(2..=MAX_COPIES).contains(&n) => {
            Some(format!("parallel: {n} copies; give 2 to {MAX_COPIES}"))
        }
        (None, Some(_)) => Some("expect.set: only a parallel step has a set of answers".into()),
        (Some(n), Some(set)) => set.invalid_for(n).map(|e| format!("expect.set: {e}")),
        _ => None,
    }
}

/// The most copies a parallel step sends.
pub const MAX_COPIES: usize = 64;

pub(crate) fn url_for(o: &ReplayOptions, call: &str) -> Result<String, String> {
    if let Some(map) = &o.endpoints {
        return map
            .get(call)
            .cloned()
            .ok_or_else(|| format!("--endpoints has no URL for {call}"));
    }
    let base = o
        .target
        .as_deref()
        .ok_or("give --target or --endpoints")?
        .trim_end_matches('/');
    Ok(match call.split_once('.') {
        Some((area, op)) => format!("{base}/{area}/{op}"),
        None => format!("{base}/webhooks"),
    })
}

/// The client of replay and simulate.
#[derive(Clone)]
pub(crate) struct Http {
    client: crate::client::Client,
}

/// How long replay waits for a provider's answer, and the longest answer it reads.
const ANSWER_WITHIN: std::time::Duration = std::time::Duration::from_secs(30);
const MAX_ANSWER_BYTES: usize = 16 * 1024 * 1024;

/// `Err` only when the request could not be made at all (unreachable).
impl Http {
    pub(crate) fn new(extra_roots: &[Vec<u8>]) -> Result<Http, String> {
        Ok(Http {
            client: crate::client::Client::new(extra_roots)?
                .timeout(ANSWER_WITHIN)
                .body_limit(MAX_ANSWER_BYTES),
        })
    }

    pub(crate) async fn post(
        &self,
        url: &str,
        headers: &[(String, String)],
        body: Vec<u8>,
    ) -> Result<(u16, Vec<u8>), String> {
        let req = crate::client::Request::post_json(url, body).headers(headers.iter().cloned());
        match self.client.send(req).await {
            Ok(a) => Ok((a.status, a.body)),
            Err(crate::client::Error::Timeout(_)) => Err(format!("{url}: no answer within 30 s")),
            Err(e) => Err(format!("{url}: {e}")),
        }
    }
}

fn glob(pattern: &str, s: &str) -> bool {
    crate::webhook::glob_match(pattern, s)
}

/// Run the selected scenarios. `Err` means the run itself could not happen (exit 2).
pub async fn run(o: &ReplayOptions) -> Result<Report, String> {
    let fixtures = load(&o.paths)?;
    let run_id = o.run_id.clone().unwrap_or_else(|| {
        use sha2::Digest;
        let seed = format!("{:?}{}", std::time::SystemTime::now(), std::process::id());
        hex::encode(&sha2::Sha256::digest(seed.as_bytes())[..8])
    });
    let only: Option<Vec<String>> = if o.last_failed {
        std::fs::read_to_string(&o.last_failed_file)
            .ok()
            .and_then(|t| serde_json::from_str(&t).ok())
    } else {
        None
    };
    let http = Http::new(&o.extra_roots)?;
    let chosen: Vec<&(PathBuf, Fixture)> = fixtures
        .iter()
        .filter(|(_, fx)| {
            !(o.filter.as_deref().is_some_and(|f| !glob(f, &fx.name))
                || only.as_ref().is_some_and(|names| !names.contains(&fx.name)))
        })
        .collect();
    let mut skipped = Vec::new();
    let mut to_run = Vec::new();
    for (file, fx) in chosen {
        match skip_reason(o, fx) {
            Some(reason) => skipped.push(Skipped {
                name: fx.name.clone(),
                reason,
            }),
            None => to_run.push((file, fx)),
        }
    }
    states_reachable(o, &to_run)?;
    let mut results = Vec::new();
    for (file, fx) in to_run {
        let started = Instant::now();
        let (failures, exchanges) = scenario(o, &http, fx, &run_id).await?;
        let passed = failures.is_empty();
        results.push(ScenarioResult {
            name: fx.name.clone(),
            file: file.display().to_string(),
            passed,
            duration_ms: started.elapsed().as_millis() as u64,
            failures,
            exchanges,
        });
        if !passed && o.fail_fast {
            break;
        }
    }
    let failed: Vec<String> = results
        .iter()
        .filter(|r| !r.passed)
        .map(|r| r.name.clone())
        .collect();
    let _ = std::fs::write(
        &o.last_failed_file,
        serde_json::to_vec(&failed).unwrap_or_default(),
    );
    let report = Report {
        run: run_id,
        passed: results.len() - failed.len(),
        failed: failed.len(),
        scenarios: results,
        skipped,
    };
    if let Some(p) = &o.junit {
        std::fs::write(p, junit(&report)).map_err(|e| format!("{}: {e}", p.display()))?;
    }
    if let Some(p) = &o.json {
        std::fs::write(p, serde_json::to_vec_pretty(&report).unwrap_or_default())
            .map_err(|e| format!("{}: {e}", p.display()))?;
    }
    Ok(report)
}

/// Why a selected scenario is not run, if it is not.
fn skip_reason(o: &ReplayOptions, fx: &Fixture) -> Option<String> {
    if o.contract_only && fx.tags.iter().any(|t| t == DECISION_TAG) {
        return Some("pins one of our decisions, not Karma's contract (--contract-only)".into());
    }
    let no_webhook_url = o
        .endpoints
        .as_ref()
        .is_some_and(|m| !m.contains_key("webhook"));
    if no_webhook_url && fx.steps.iter().any(|s| s.call == "webhook") {
        return Some("--endpoints gives no URL for webhook".into());
    }
    None
}

/// Scenarios that need provider states cannot run without `--state-url`: say so in one
/// line instead of failing each with misleading differences.
fn states_reachable(o: &ReplayOptions, to_run: &[(&PathBuf, &Fixture)]) -> Result<(), String> {
    if o.state_url.is_some() {
        return Ok(());
    }
    let needing: Vec<&Fixture> = to_run
        .iter()
        .map(|(_, fx)| *fx)
        .filter(|fx| !fx.state.is_empty())
        .collect();
    if needing.is_empty() {
        return Ok(());
    }
    let mut names: Vec<&str> = needing
        .iter()
        .flat_map(|fx| fx.state.iter().map(|s| s.state.as_str()))
        .collect();
    names.sort();
    names.dedup();
    Err(format!(
        "{} of the selected scenarios need provider states ({}) and no --state-url was given: \
         give --state-url (fixtures/README.md, \"Provider states\"), or select scenarios without \
         states with --filter",
        needing.len(),
        names.join(", ")
    ))
}

pub(crate) async fn post_state(
    o: &ReplayOptions,
    http: &Http,
    st: &StateSpec,
    params: &Value,
    action: &str,
) -> Result<Option<String>, String> {
    let Some(url) = &o.state_url else {
        return Ok(None);
    };
    let body = serde_json::to_vec(&json!({"state": st.state, "params": params, "action": action}))
        .unwrap_or_default();
    let (status, bytes) = http.post(url, &o.state_headers, body).await?;
    Ok(((200..300).contains(&status)).then_some(()).map_or_else(
        || {
            Some(format!(
                "provider state {:?} {action} failed: HTTP {status} {}",
                st.state,
                String::from_utf8_lossy(&bytes)
            ))
        },
        |_| None,
    ))
}

/// One scenario; returns its failures and its exchanges. `Err`: the provider is unreachable.
async fn scenario(
    o: &ReplayOptions,
    http: &Http,
    fx: &Fixture,
    run_id: &str,
) -> Result<(Vec<String>, Vec<Exchange>), String> {
    let mut vars = run_vars(run_id, &fx.name);
    let mut failures = Vec::new();
    let mut log = Vec::new();
    let states: Vec<(StateSpec, Value)> = fx
        .state
        .iter()
        .map(|s| (s.clone(), substitute(&s.params, &vars)))
        .collect();
    for (st, params) in &states {
        if let Some(f) = post_state(o, http, st, params, "setup").await? {
            failures.push(f);
            return Ok((failures, log));
        }
    }
    let started = Instant::now();
    let mut bodies: BTreeMap<String, Vec<u8>> = BTreeMap::new();
    for (i, step) in fx.steps.iter().enumerate() {
        let label = step
            .name
            .clone()
            .unwrap_or_else(|| format!("step {}", i + 1));
        let mut ctx = StepCtx {
            label: &label,
            vars: &mut vars,
            bodies: &mut bodies,
            log: &mut log,
        };
        let mism = match step.parallel {
            Some(n) => parallel_step(o, http, step, n, &mut ctx).await?,
            None => single_step(o, http, step, &mut ctx).await?,
        };
        for m in mism {
            failures.push(format!(
                "{label} ({}): {}: expected {}, got {}",
                step.call, m.path, m.expected, m.actual
            ));
        }
        if !failures.is_empty() {
            break; // later steps depend on this one
        }
    }
    let ms = started.elapsed().as_millis() as u64;
    if let Some(budget) = fx.budget_ms.filter(|b| failures.is_empty() && ms > *b) {
        failures.push(format!(
            "scenario: latency: expected within {budget} ms, got {ms} ms"
        ));
    }
    for (st, params) in &states {
        if let Some(f) = post_state(o, http, st, params, "teardown").await? {
            failures.push(f);
        }
    }
    Ok((failures, log))
}

/// What a step reads and adds to: placeholders, earlier answers, the exchange log.
struct StepCtx<'a> {
    label: &'a str,
    vars: &'a mut BTreeMap<String, Value>,
    bodies: &'a mut BTreeMap<String, Vec<u8>>,
    log: &'a mut Vec<Exchange>,
}

/// A request ready to send.
struct Prepared {
    url: String,
    body_v: Value,
    body: Vec<u8>,
    headers: Vec<(String, String)>,
}

/// Substitute placeholders, sign webhooks, add the provider's auth.
fn prepare(
    o: &ReplayOptions,
    step: &Step,
    vars: &BTreeMap<String, Value>,
) -> Result<Prepared, String> {
    let url = url_for(o, &step.call)?;
    let body_v = substitute(&step.request.body, vars);
    let body = serde_json::to_vec(&body_v).unwrap_or_default();
    let headers = step_headers(o, step, vars, &body_v, &body);
    Ok(Prepared {
        url,
        body_v,
        body,
        headers,
    })
}

/// Send one prepared request; its answer and how long it took.
async fn send(http: &Http, p: &Prepared) -> Result<(u16, Vec<u8>, u64), String> {
    let t = Instant::now();
    let (status, bytes) = http
        .post(&p.url, &p.headers, p.body.clone())
        .await
        .map_err(|e| format!("target unreachable: {e}"))?;
    Ok((status, bytes, t.elapsed().as_millis() as u64))
}

fn exchange(
    step: &Step,
    label: &str,
    copy: Option<usize>,
    p: Prepared,
    a: &(u16, Vec<u8>, u64),
) -> Exchange {
    Exchange {
        step: label.to_owned(),
        call: step.call.clone(),
        copy,
        url: p.url,
        request: p.body_v,
        status: a.0,
        answer: serde_json::from_slice(&a.1)
            .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&a.1).into_owned())),
        ms: a.2,
    }
}

/// The step's own budget, else the run's (`--budget-ms`).
fn over_budget(o: &ReplayOptions, step: &Step, ms: u64, path: &str) -> Option<Mismatch> {
    let budget = step.budget_ms.or(o.budget_ms);
    budget.filter(|b| ms > *b).map(|b| Mismatch {
        path: path.to_owned(),
        expected: format!("within {b} ms"),
        actual: format!("{ms} ms"),
    })
}

/// One request and its expectation.
async fn single_step(
    o: &ReplayOptions,
    http: &Http,
    step: &Step,
    ctx: &mut StepCtx<'_>,
) -> Result<Vec<Mismatch>, String> {
    let p = prepare(o, step, ctx.vars)?;
    let answer = send(http, &p).await?;
    ctx.log.push(exchange(step, ctx.label, None, p, &answer));
    let (status, bytes, ms) = answer;
    let mut mism = expect_one(step, status, &bytes, ctx, "");
    mism.extend(over_budget(o, step, ms, "latency"));
    capture(step, &bytes, ctx, &mut mism);
    ctx.bodies.insert(ctx.label.to_owned(), bytes);
    Ok(mism)
}

/// Status and body of one answer against `expect` (paths prefixed with `prefix`).
fn expect_one(
    step: &Step,
    status: u16,
    bytes: &[u8],
    ctx: &mut StepCtx<'_>,
    prefix: &str,
) -> Vec<Mismatch> {
    let mut mism: Vec<Mismatch> = Vec::new();
    if status != step.expect.status {
        mism.push(Mismatch {
            path: format!("{prefix}status"),
            expected: step.expect.status.to_string(),
            actual: status.to_string(),
        });
    }
    let Some(expected) = &step.expect.body else {
        return mism;
    };
    let same = expected
        .get("$sameAs")
        .and_then(Value::as_str)
        .filter(|_| expected.as_object().is_some_and(|m| m.len() == 1));
    if let Some(prev) = same {
        mism.extend(same_as(prev, ctx.bodies.get(prev), bytes).map(|mut m| {
            m.path = format!("{prefix}{}", m.path);
            m
        }));
    } else {
        let actual = answer_value(bytes);
        let expected = substitute(expected, ctx.vars);
        compare(
            &expected,
            &actual,
            &format!("{prefix}body"),
            ctx.vars,
            &mut mism,
        );
    }
    mism
}

fn answer_value(bytes: &[u8]) -> Value {
    serde_json::from_slice(bytes)
        .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(bytes).into_owned()))
}

/// The step's `capture` pointers into `bytes`.
fn capture(step: &Step, bytes: &[u8], ctx: &mut StepCtx<'_>, mism: &mut Vec<Mismatch>) {
    let actual = answer_value(bytes);
    for (name, pointer) in &step.capture {
        match actual.pointer(pointer) {
            Some(v) => {
                ctx.vars.insert(name.clone(), v.clone());
            }
            None => mism.push(Mismatch {
                path: format!("body{}", pointer.replace('/', ".")),
                expected: format!("a value to capture as {name}"),
                actual: "(missing)".into(),
            }),
        }
    }
}

/// `n` copies sent at once; each answer against `expect`, the set against `expect.set`.
/// Captures and `$sameAs` later refer to the first `ok: true` answer (else the first).
async fn parallel_step(
    o: &ReplayOptions,
    http: &Http,
    step: &Step,
    n: usize,
    ctx: &mut StepCtx<'_>,
) -> Result<Vec<Mismatch>, String> {
    let mut prepared = Vec::with_capacity(n);
    for copy in 0..n {
        let mut vars = ctx.vars.clone();
        vars.insert("copy".into(), Value::String(format!("{copy:04x}")));
        prepared.push(std::sync::Arc::new(prepare(o, step, &vars)?));
    }
    let mut set = tokio::task::JoinSet::new();
    for (copy, p) in prepared.iter().enumerate() {
        let (http, p) = (http.clone(), p.clone());
        set.spawn(async move { (copy, send(&http, &p).await) });
    }
    let mut answers: Vec<Option<(u16, Vec<u8>, u64)>> = vec![None; n];
    while let Some(done) = set.join_next().await {
        let (copy, answer) = done.map_err(|e| format!("a parallel copy stopped: {e}"))?;
        answers[copy] = Some(answer?);
    }
    let answers: Vec<(u16, Vec<u8>, u64)> = answers.into_iter().flatten().collect();
    let mut mism = Vec::new();
    for (copy, (p, a)) in prepared.into_iter().zip(&answers).enumerate() {
        let p = std::sync::Arc::try_unwrap(p).map_err(|_| "a parallel copy is still running")?;
        ctx.log.push(exchange(step, ctx.label, Some(copy), p, a));
        let prefix = format!("copy[{copy}].");
        mism.extend(expect_one(step, a.0, &a.1, ctx, &prefix));
        mism.extend(over_budget(o, step, a.2, &format!("{prefix}latency")));
    }
    let mut pairs: Vec<(u16, Vec<u8>)> = answers.iter().map(|(s, b, _)| (*s, b.clone())).collect();
    if let Some(want) = &step.expect.set {
        mism.extend(parallel::judge(want, &pairs));
    }
    let rep = pairs.swap_remove(parallel::representative(&pairs));
    capture(step, &rep.1, ctx, &mut mism);
    ctx.bodies.insert(ctx.label.to_owned(), rep.1);
    Ok(mism)
}

/// The placeholders every scenario starts with: `run`, unique per run *and* scenario (so
/// transaction ids never meet an earlier record), and `runNumber`, the same uniqueness as
/// a JSON integer below 2^48 (for ids Karma sends as numbers).
fn run_vars(run_id: &str, scenario: &str) -> BTreeMap<String, Value> {
    let unique = {
        use sha2::Digest;
        hex::encode(&sha2::Sha256::digest(format!("{run_id}/{scenario}").as_bytes())[..8])
    };
    let number = u64::from_str_radix(&unique[..12], 16).unwrap_or(0) + 1;
    let mut vars = BTreeMap::new();
    vars.insert("run".into(), Value::String(unique));
    vars.insert("runNumber".into(), json!(number));
    vars
}

/// A step's headers, placeholders filled in: a webhook step signed as its fixture says
/// (`valid` with the run's secret, `invalid`, or `none`); another call with the run's auth.
fn step_headers(
    o: &ReplayOptions,
    step: &Step,
    vars: &BTreeMap<String, Value>,
    body_v: &Value,
    body: &[u8],
) -> Vec<(String, String)> {
    let mut headers: Vec<(String, String)> = step
        .request
        .headers
        .iter()
        .map(|(k, v)| {
            (
                k.clone(),
                match substitute(&Value::String(v.clone()), vars) {
                    Value::String(s) => s,
                    other => other.to_string(),
                },
            )
        })
        .collect();
    if step.call != "webhook" {
        headers.extend(o.auth.as_ref().map(|a| a.header()));
        return headers;
    }
    let id = body_v["id"].as_str().unwrap_or("");
    let sign =
        |key: &[u8]| crate::webhook::sign_headers(&o.webhook_scheme, key, id, now_secs(), body);
    match (
        step.request.signature.as_deref().unwrap_or("valid"),
        &o.webhook_secret,
    ) {
        ("none", _) => {}
        ("invalid", _) => headers.extend(sign(b"not-the-secret")),
        (_, Some(secret)) => headers.extend(sign(&crate::webhook::signing_key(
            &o.webhook_scheme,
            secret,
        ))),
        (_, None) => {}
    }
    headers
}

/// `{"$sameAs": prev}`: the answer's bytes are those of the earlier step `prev`.
fn same_as(prev: &str, earlier: Option<&Vec<u8>>, bytes: &[u8]) -> Option<Mismatch> {
    match earlier {
        Some(b) if b.as_slice() == bytes => None,
        Some(b) => Some(Mismatch {
            path: "body".into(),
            expected: format!("the bytes of step {prev:?}: {}", String::from_utf8_lossy(b)),
            actual: String::from_utf8_lossy(bytes).into_owned(),
        }),
        None => Some(Mismatch {
            path: "body".into(),
            expected: format!("$sameAs an earlier step named {prev:?}"),
            actual: "(no such step)".into(),
        }),
    }
}

fn now_secs() -> i64 {
    crate::clock::Clock::System.now_ms() / 1000
}

pub(crate) fn xml(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
        .replace('\'', "&apos;")
}

/// JUnit XML, one testcase per scenario.
pub fn junit(r: &Report) -> String {
    let total_ms: u64 = r.scenarios.iter().map(|s| s.duration_ms).sum();
    let mut out = format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<testsuites>\n<testsuite name=\"karma-provider replay\" tests=\"{}\" failures=\"{}\" skipped=\"{}\" time=\"{:.3}\">\n",
        r.scenarios.len() + r.skipped.len(),
        r.failed,
        r.skipped.len(),
        total_ms as f64 / 1000.0
    );
    for s in &r.skipped {
        out.push_str(&format!(
            "  <testcase name=\"{}\"><skipped message=\"{}\"/></testcase>\n",
            xml(&s.name),
            xml(&s.reason)
        ));
    }
    for s in &r.scenarios {
        out.push_str(&format!(
            "  <testcase classname=\"{}\" name=\"{}\" time=\"{:.3}\"",
            xml(&s.file),
            xml(&s.name),
            s.duration_ms as f64 / 1000.0
        ));
        if s.passed {
            out.push_str("/>\n");
        } else {
            let first = s.failures.first().cloned().unwrap_or_default();
            out.push_str(&format!(
                ">\n    <failure message=\"{}\">{}</failure>\n  </testcase>\n",
                xml(&first),
                xml(&s.failures.join("\n"))
            ));
        }
    }
    out.push_str("</testsuite>\n</testsuites>\n");
    out
}

/// The human summary: a line per scenario, the differences of each failure, a total.
pub fn summary(r: &Report) -> String {
    let mut out = String::new();
    for s in &r.scenarios {
        out.push_str(&format!(
            "{} {} ({} ms)\n",
            if s.passed { "PASS" } else { "FAIL" },
            s.name,
            s.duration_ms
        ));
        for f in &s.failures {
            out.push_str(&format!("     {f}\n"));
        }
    }
    for s in &r.skipped {
        out.push_str(&format!("SKIP {} ({})\n", s.name, s.reason));
    }
    out.push_str(&format!(
        "\n{} passed, {} failed, {} skipped (run {})\n",
        r.passed,
        r.failed,
        r.skipped.len(),
        r.run
    ));
    out
}

/// The provider-side arguments `replay` and `simulate` share, read and checked.
pub struct TargetArgs {
    pub endpoints: Option<BTreeMap<String, String>>,
    pub auth: Option<ReplayAuth>,
    pub extra_roots: Vec<Vec<u8>>,
    pub state_headers: Vec<(String, String)>,
}

/// Read `--endpoints`, `--auth`, `--ca-file` and every `--state-header`; `Err` names the
/// argument at fault.
pub fn target_args(
    endpoints: Option<&Path>,
    auth: Option<&str>,
    ca_file: Option<&Path>,
    state_header: &[String],
) -> Result<TargetArgs, String> {
    let endpoints = endpoints.map(read_endpoints).transpose()?;
    let auth = auth
        .map(ReplayAuth::parse)
        .transpose()
        .map_err(|e| format!("--auth: {e}"))?;
    let extra_roots = ca_file
        .map(read_ca_file)
        .transpose()
        .map_err(|e| format!("--ca-file: {e}"))?
        .unwrap_or_default();
    let mut state_headers = Vec::new();
    for h in state_header {
        let (k, v) = h
            .split_once(':')
            .ok_or_else(|| format!("--state-header {h:?}: use NAME:VALUE"))?;
        state_headers.push((k.trim().to_string(), v.trim().to_string()));
    }
    Ok(TargetArgs {
        endpoints,
        auth,
        extra_roots,
        state_headers,
    })
}

/// Read an `--endpoints` file: JSON or TOML map from call to absolute URL.
pub fn read_endpoints(p: &Path) -> Result<BTreeMap<String, String>, String> {
    let text = std::fs::read_to_string(p).map_err(|e| format!("{}: {e}", p.display()))?;
    let map: BTreeMap<String, String> = if p.extension().is_some_and(|x| x == "toml") {
        toml::from_str(&text).map_err(|e| format!("{}: {e}", p.display()))?
    } else {
        serde_json::from_str(&text).map_err(|e| format!("{}: {e}", p.display()))?
    };
    if let Some(k) = map.keys().find(|k| !CALLS.contains(&k.as_str())) {
        return Err(format!(
            "{}: {k:?} is not one of {}",
            p.display(),
            CALLS.join(", ")
        ));
    }
    Ok(map)
}

/// Read a PEM file of CA certificates (`--ca-file`) as DER.
pub fn read_ca_file(p: &Path) -> Result<Vec<Vec<u8>>, String> {
    use rustls::pki_types::pem::PemObject;
    let certs = rustls::pki_types::CertificateDer::pem_file_iter(p)
        .map_err(|e| format!("{}: {e}", p.display()))?;
    let mut out = Vec::new();
    for c in certs {
        out.push(c.map_err(|e| format!("{}: {e}", p.display()))?.to_vec());
    }
    if out.is_empty() {
        return Err(format!("{}: no certificate in it", p.display()));
    }
    Ok(out)
}
