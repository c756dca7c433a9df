//! The benchmark harness (`karma-provider bench`): starts this service and a yardstick
//! — a bare hyper server that parses the same JSON and answers a fixed JSON body — as
//! child processes, drives the same realistic flows against both from one load generator,
//! and reports throughput and HDR-histogram latency percentiles, with every service figure
//! also a ratio to the yardstick's. Closed loop: a fixed number of connections, each
//! sending its next request when the last answer arrives. Open loop: a fixed arrival rate,
//! latency measured from each request's *intended* send time (no coordinated omission).

pub mod setup;
pub mod yardstick;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use serde_json::{json, Value};
use tokio::sync::Mutex;

/// What `bench` was asked to do.
#[derive(Debug, Clone)]
pub struct BenchOptions {
    pub scenarios: Vec<String>,
    pub connections: usize,
    pub duration: Duration,
    /// Arrival rate for the open-loop run of the webhook scenario.
    pub webhook_rate: u64,
    /// Arrival rate for the open-loop runs of check-small and check-bulk.
    pub check_rate: u64,
    pub json_out: Option<PathBuf>,
    /// Import this many unique codes first and compare checks on them with a 10-code
    /// campaign (scenarios check-bulk and check-small).
    pub bulk_codes: Option<u64>,
    /// The service's page cache (`storage.cache_capacity_mb`).
    pub cache_mb: u64,
    /// Slices per run (see `bench --rounds`); 1: each scenario once, for the whole duration.
    pub rounds: u32,
    /// Import this many members (with a balance to spend) through the admin API before the
    /// runs; award, redeem and the reads then spread over them.
    pub members: Option<u64>,
    /// The PostgreSQL server to run on (a database is made for the run); `None`: sled.
    pub database_url: Option<String>,
    /// Service processes on the one database (PostgreSQL).
    pub replicas: usize,
}

pub const SCENARIOS: [&str; 13] = [
    "check-commit",
    "check-reactivate",
    "award",
    "redeem",
    "reads",
    "webhook",
    "check-small",
    "check-bulk",
    "award-hot",
    "enroll",
    "account",
    "rewards",
    "lookup",
];

/// What `bench` runs when no `--scenarios` are given: every flow (check-small and
/// check-bulk compare campaigns and need `--bulk-codes`).
pub const DEFAULT_SCENARIOS: &str =
    "check-commit,check-reactivate,award,award-hot,enroll,redeem,reads,account,rewards,lookup,webhook";

const WEBHOOK_SECRET: &str = "bench-webhook-secret";

/// One measured run: a scenario against a target.
#[derive(Debug, Clone, serde::Serialize)]
pub struct RunResult {
    pub scenario: String,
    pub target: String,
    pub mode: String,
    pub requests: u64,
    pub errors: u64,
    pub seconds: f64,
    pub rps: f64,
    /// Latency percentiles in microseconds, per operation of the flow and for all.
    pub latency_us: BTreeMap<String, BTreeMap<String, u64>>,
    /// The target process's peak resident set (VmHWM) right after this run, in KiB.
    pub peak_rss_kib: Option<u64>,
}

fn service_config(dir: &std::path::Path, cache_mb: u64, postgres: bool) -> String {
    let engine = if postgres {
        "engine = \"postgres\"\n[storage.postgres]\nurl_env = \"KP_BENCH_SERVICE_DATABASE_URL\"\n"
    } else {
        ""
    };
    format!(
        r#"
[server]
listen = "127.0.0.1:0"
[storage]
path = "{}"
cache_capacity_mb = {}
{engine}
[[tenants]]
id = "bench"
auth = {{ mode = "none" }}
[[tenants.campaigns]]
id = "bench"
codes = ["BENCH"]
discount = {{ amount_cents = 100 }}
[[tenants.loyalty]]
program_id = 1
earn = {{ points = 1, per_cents = 100 }}
auto_enroll = true
[[tenants.loyalty.rewards]]
id = "r"
title = "Bench reward"
points_cost = 1
[[tenants.campaigns]]
id = "small"
codes = ["S0", "S1", "S2", "S3", "S4", "S5", "S6", "S7", "S8", "S9"]
discount = {{ amount_cents = 100 }}
[[tenants.campaigns]]
id = "bulk"
discount = {{ amount_cents = 100 }}
max_uses_per_code = 1
[tenants.webhooks]
verify = {{ scheme = "hmac-sha256-hex", secrets_env = ["KP_BENCH_WEBHOOK_SECRET"] }}
[admin]
token_env = "KP_BENCH_ADMIN_TOKEN"
"#,
        dir.join("data").display(),
        cache_mb
    )
}

/// Peak resident set (VmHWM) of a process, in KiB (Linux).
fn peak_rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

/// A child process printing `… listening on http://ADDR` as its first stdout line.
struct Target {
    name: &'static str,
    child: Child,
    base: String,
    /// More replicas of the service (stopped with it).
    others: Vec<Target>,
}

impl Drop for Target {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn spawn(name: &'static str, args: &[&str], env: &[(&str, &str)]) -> Result<Target, String> {
    use std::io::BufRead;
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let mut child = Command::new(exe)
        .args(args)
        .envs(env.iter().copied())
        .env("KP_BENCH_WEBHOOK_SECRET", WEBHOOK_SECRET)
        .env("KP_BENCH_ADMIN_TOKEN", setup::ADMIN_TOKEN)
        .env("KP_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .map_err(|e| format!("cannot start {name}: {e}"))?;
    let mut line = String::new();
    let stdout = child.stdout.take().ok_or("no stdout")?;
    std::io::BufReader::new(stdout)
        .read_line(&mut line)
        .map_err(|e| e.to_string())?;
    let addr = line
        .trim()
        .rsplit("http://")
        .next()
        .unwrap_or("")
        .to_string();
    if addr.is_empty() {
        let _ = child.kill();
        return Err(format!("{name} did not say where it listens: {line:?}"));
    }
    Ok(Target {
        name,
        child,
        base: format!("http://{addr}"),
        others: Vec::new(),
    })
}

/// A request of a flow: operation name, path, body.
type Req = (&'static str, String, Vec<u8>, Vec<(String, String)>);

fn loy(n: u64) -> String {
    format!("loy_{n:032x}")
}

/// The next requests of a flow for connection `w`, iteration `i`. Flows that need an
/// answer (commit needs the check's providerRef) get it through `prev`.
fn flow(scenario: &str, w: usize, i: u64, step: usize, prev: Option<&Value>) -> Option<Req> {
    let id = ((w as u64) << 40) | i;
    let j = |v: Value| serde_json::to_vec(&v).unwrap_or_default();
    let check = json!({"code": "BENCH", "cart": {"items": [{"inventoryItemId": "1001", "quantity": 2, "priceCents": 2500}], "totalCents": 5000}, "locationId": 42});
    let release = |op: &'static str, path: &str| {
        let pref = prev
            .and_then(|v| v["providerRef"].as_str())
            .unwrap_or("kph_0")
            .to_string();
        let amount = prev
            .and_then(|v| v["discountAmountCents"].as_i64())
            .unwrap_or(100);
        (
            op,
            path.to_string(),
            j(
                json!({"amountCents": amount, "transactionId": format!("res_{id:032x}"), "providerRef": pref}),
            ),
            vec![],
        )
    };
    match (scenario, step) {
        ("check-commit" | "check-reactivate", 0) => {
            Some(("check", "/v1/bench/voucher/check".into(), j(check), vec![]))
        }
        ("check-commit", 1) => Some(release("commit", "/v1/bench/voucher/commit")),
        ("check-reactivate", 1) => Some(release("reactivate", "/v1/bench/voucher/reactivate")),
        ("check-small", 0) => Some((
            "check",
            "/v1/bench/voucher/check".into(),
            j(json!({"code": format!("S{}", i % 10), "cart": {"items": [], "totalCents": 5000}})),
            vec![],
        )),
        // every request a different single-use code, spread over the imported set
        ("check-bulk", 0) => Some((
            "check",
            "/v1/bench/voucher/check".into(),
            j(json!({"code": next_bulk_code(), "cart": {"items": [], "totalCents": 5000}})),
            vec![],
        )),
        ("award" | "award-hot" | "enroll" | "redeem", 0) => Some(loyalty_write(scenario, w, i, id)),
        ("reads", 0) => Some(read(
            ["account", "rewards", "lookup"][(i % 3) as usize],
            w,
            i,
        )),
        ("account" | "rewards" | "lookup", 0) => Some(read(scenario, w, i)),
        ("webhook", 0) => {
            let body = j(
                json!({"id": format!("evt_{id:x}"), "event": "inventory.updated", "resource": "inventory", "resourceId": "42", "timestamp": "2026-11-23T10:00:00Z", "apiVersion": "v1"}),
            );
            let headers = crate::webhook::sign_headers(
                &crate::webhook::Scheme::HmacSha256Hex {
                    header: "x-karma-signature".into(),
                },
                WEBHOOK_SECRET.as_bytes(),
                "",
                0,
                &body,
            );
            Some(("webhook", "/v1/bench/webhooks".into(), body, headers))
        }
        _ => None,
    }
}

/// The durable loyalty writes. Award spreads over 5 000 members per connection (or over
/// the imported members); award-hot puts every award on one member; enroll signs up a new
/// member with an email each time; redeem spends from members with a balance.
fn loyalty_write(scenario: &str, w: usize, i: u64, id: u64) -> Req {
    let j = |v: Value| serde_json::to_vec(&v).unwrap_or_default();
    match scenario {
        "award" => (
            "award",
            "/v1/bench/loyalty/award".into(),
            j(
                json!({"userId": setup::member_or(w, i, || format!("u{w}-{}", i % 5000)), "loyaltyProgramId": 1, "purchaseId": format!("p{id:x}"), "purchaseAmountCents": 4250, "itemIds": ["1001"], "transactionId": loy(id)}),
            ),
            vec![],
        ),
        // Its own transaction and purchase ids (the top bit), so it never replays an award.
        "award-hot" => (
            "award",
            "/v1/bench/loyalty/award".into(),
            j(
                json!({"userId": "hot", "loyaltyProgramId": 1, "purchaseId": format!("hot{id:x}"), "purchaseAmountCents": 4250, "itemIds": ["1001"], "transactionId": loy(id | 1 << 63)}),
            ),
            vec![],
        ),
        "enroll" => (
            "enroll",
            "/v1/bench/loyalty/enroll".into(),
            j(
                json!({"userId": format!("en{id:x}"), "loyaltyProgramId": 1, "locationId": 42, "email": format!("en{id:x}@bench.example")}),
            ),
            vec![],
        ),
        _ => (
            "redeem",
            "/v1/bench/loyalty/redeem".into(),
            j(
                json!({"userId": setup::member_or(w, i, || format!("rich{w}")), "loyaltyProgramId": 1, "rewardId": "r", "transactionId": loy(id)}),
            ),
            vec![],
        ),
    }
}

/// One of the three reads, for a member with a balance (an imported one if any).
fn read(op: &str, w: usize, i: u64) -> Req {
    let j = |v: Value| serde_json::to_vec(&v).unwrap_or_default();
    let user = setup::member_or(w, i, || format!("rich{w}"));
    match op {
        "account" => (
            "account",
            "/v1/bench/loyalty/account".into(),
            j(json!({"userId": user, "loyaltyProgramId": 1})),
            vec![],
        ),
        "rewards" => (
            "rewards",
            "/v1/bench/loyalty/rewards".into(),
            j(json!({"loyaltyProgramId": 1})),
            vec![],
        ),
        _ => (
            "lookup",
            "/v1/bench/loyalty/lookup".into(),
            j(
                json!({"loyaltyProgramId": 1, "identifier": user, "identifierType": "userId", "locationId": 42}),
            ),
            vec![],
        ),
    }
}

static BULK_N: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// How many bulk codes the run has checked so far.
static BULK_USED: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// The next code never checked before in this run, spread over the whole imported set: a
/// stride coprime with the set's size visits every code once before repeating.
fn next_bulk_code() -> String {
    use std::sync::atomic::Ordering::Relaxed;
    fn gcd(a: u64, b: u64) -> u64 {
        if b == 0 {
            a
        } else {
            gcd(b, a % b)
        }
    }
    let n = BULK_N.load(Relaxed).max(1);
    let mut stride = 7919;
    while gcd(stride, n) != 1 {
        stride += 1;
    }
    let i = BULK_USED.fetch_add(1, Relaxed);
    bulk_code(i.wrapping_mul(stride) % n)
}

fn bulk_code(i: u64) -> String {
    format!("BULK-{i:010}")
}

/// Import `n` codes into the bench campaign `bulk` (before the service starts).
fn import_bulk(cfg_path: &std::path::Path, dir: &std::path::Path, n: u64) -> Result<Value, String> {
    use std::io::Write;
    let csv = dir.join("bulk.csv");
    let mut w = std::io::BufWriter::new(std::fs::File::create(&csv).map_err(|e| e.to_string())?);
    for i in 0..n {
        writeln!(w, "{}", bulk_code(i)).map_err(|e| e.to_string())?;
    }
    w.flush().map_err(|e| e.to_string())?;
    drop(w);
    let text = std::fs::read_to_string(cfg_path).map_err(|e| e.to_string())?;
    let env = |k: &str| (k == "KP_BENCH_WEBHOOK_SECRET").then(|| WEBHOOK_SECRET.to_string());
    let cfg = crate::config::Config::from_toml(&text, &cfg_path.display().to_string(), &env)
        .map_err(|e| e.to_string())?;
    let batch = crate::codes_cli::IMPORT_BATCH as usize;
    let r = crate::codes_cli::import(&cfg, "bench", "bulk", &csv, batch, false)?;
    let _ = std::fs::remove_file(&csv);
    BULK_N.store(n, std::sync::atomic::Ordering::Relaxed);
    println!(
        "bulk import: {} codes in {:.1} s = {:.0} codes/s (of which the code index {:.1} s); store {} MiB + code index {} MiB on disk",
        r.imported,
        r.seconds,
        r.codes_per_second,
        r.index_seconds,
        r.store_bytes >> 20,
        r.index_bytes >> 20
    );
    Ok(
        json!({"codes": r.imported, "seconds": r.seconds, "codesPerSecond": r.codes_per_second, "storeBytes": r.store_bytes, "indexSeconds": r.index_seconds, "indexBytes": r.index_bytes}),
    )
}

type Sender = hyper::client::conn::http1::SendRequest<Full<Bytes>>;

async fn connect(base: &str) -> Result<Sender, String> {
    let addr = base.trim_start_matches("http://");
    let stream = tokio::net::TcpStream::connect(addr)
        .await
        .map_err(|e| e.to_string())?;
    let _ = stream.set_nodelay(true);
    let (sender, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .map_err(|e| e.to_string())?;
    tokio::spawn(conn);
    Ok(sender)
}

/// POST a request (JSON unless its headers name another content type); the answer's JSON
/// when it is 2xx and `ok`.
async fn send(s: &mut Sender, base: &str, r: &Req) -> Result<Value, String> {
    s.ready().await.map_err(|e| e.to_string())?;
    let mut b = hyper::Request::builder()
        .method("POST")
        .uri(&r.1)
        .header("host", base.trim_start_matches("http://"));
    if !r
        .3
        .iter()
        .any(|(k, _)| k.eq_ignore_ascii_case("content-type"))
    {
        b = b.header("content-type", "application/json");
    }
    for (k, v) in &r.3 {
        b = b.header(k.as_str(), v.as_str());
    }
    let resp = s
        .send_request(
            b.body(Full::new(Bytes::from(r.2.clone())))
                .map_err(|e| e.to_string())?,
        )
        .await
        .map_err(|e| e.to_string())?;
    let status = resp.status();
    let body = resp
        .into_body()
        .collect()
        .await
        .map_err(|e| e.to_string())?
        .to_bytes();
    if !status.is_success() {
        return Err(format!("HTTP {status}"));
    }
    let v: Value = serde_json::from_slice(&body).map_err(|e| e.to_string())?;
    if v["ok"] != json!(true) {
        return Err(format!("ok:false {}", v["error"]));
    }
    Ok(v)
}

#[derive(Default)]
struct Tally {
    hist: BTreeMap<&'static str, Histogram<u64>>,
    all: Option<Histogram<u64>>,
    requests: u64,
    errors: u64,
}

impl Tally {
    fn record(&mut self, op: &'static str, us: u64) {
        let us = us.max(1);
        let h = self
            .hist
            .entry(op)
            .or_insert_with(|| Histogram::new_with_bounds(1, 60_000_000, 3).expect("valid bounds"));
        let _ = h.record(us.min(60_000_000));
        let all = self.all.get_or_insert_with(|| {
            Histogram::new_with_bounds(1, 60_000_000, 3).expect("valid bounds")
        });
        let _ = all.record(us.min(60_000_000));
        self.requests += 1;
    }

    /// Add another slice of the same run.
    fn merge(&mut self, other: Tally) {
        for (op, h) in other.hist {
            match self.hist.get_mut(op) {
                Some(mine) => {
                    let _ = mine.add(&h);
                }
                None => {
                    self.hist.insert(op, h);
                }
            }
        }
        match (&mut self.all, other.all) {
            (Some(mine), Some(h)) => {
                let _ = mine.add(&h);
            }
            (None, h) => self.all = h,
            (Some(_), None) => {}
        }
        self.requests += other.requests;
        self.errors += other.errors;
    }
}

fn percentiles(h: &Histogram<u64>) -> BTreeMap<String, u64> {
    let mut m = BTreeMap::new();
    for (k, q) in [("p50", 0.5), ("p90", 0.9), ("p99", 0.99), ("p99.9", 0.999)] {
        m.insert(k.to_string(), h.value_at_quantile(q));
    }
    m.insert("max".into(), h.max());
    m
}

/// Closed loop: `connections` workers, each running the flow back to back for `duration`.
/// Slice `round` of a run numbers its iterations from `round << 32`, so a later slice sends
/// new transactions rather than replays of an earlier one's.
async fn closed(
    base: &str,
    scenario: &str,
    connections: usize,
    duration: Duration,
    round: u32,
) -> Result<(Tally, f64), String> {
    let tally = Arc::new(Mutex::new(Tally::default()));
    let start = Instant::now();
    let deadline = start + duration;
    let mut tasks = Vec::new();
    let bases: Vec<&str> = base.split(',').collect();
    for w in 0..connections {
        let base = bases[w % bases.len()].to_string();
        let (scenario, tally) = (scenario.to_string(), tally.clone());
        tasks.push(tokio::spawn(async move {
            let mut s = connect(&base).await?;
            let mut i = u64::from(round) << 32;
            while Instant::now() < deadline {
                let mut prev: Option<Value> = None;
                let mut step = 0;
                while let Some(r) = flow(&scenario, w, i, step, prev.as_ref()) {
                    let t0 = Instant::now();
                    let res = send(&mut s, &base, &r).await;
                    let us = t0.elapsed().as_micros() as u64;
                    let mut t = tally.lock().await;
                    match res {
                        Ok(v) => {
                            t.record(r.0, us);
                            prev = Some(v);
                        }
                        Err(_) => {
                            t.errors += 1;
                            drop(t);
                            s = connect(&base).await?;
                            break;
                        }
                    }
                    step += 1;
                }
                i += 1;
            }
            Ok::<(), String>(())
        }));
    }
    for t in tasks {
        t.await.map_err(|e| e.to_string())??;
    }
    let secs = start.elapsed().as_secs_f64();
    let t = std::mem::take(&mut *tally.lock().await);
    Ok((t, secs))
}

/// Open loop: requests scheduled at `rate` per second, latency from the intended time.
async fn open(
    base: &str,
    scenario: &str,
    connections: usize,
    rate: u64,
    duration: Duration,
) -> Result<(Tally, f64), String> {
    let tally = Arc::new(Mutex::new(Tally::default()));
    let (tx, rx) = tokio::sync::mpsc::channel::<(u64, Instant)>(1_000_000);
    let rx = Arc::new(Mutex::new(rx));
    let mut tasks = Vec::new();
    let bases: Vec<&str> = base.split(',').collect();
    for w in 0..connections {
        let (base, scenario, tally, rx) = (
            bases[w % bases.len()].to_string(),
            scenario.to_string(),
            tally.clone(),
            rx.clone(),
        );
        tasks.push(tokio::spawn(async move {
            let mut s = connect(&base).await?;
            loop {
                let Some((i, intended)) = rx.lock().await.recv().await else {
                    return Ok::<(), String>(());
                };
                let Some(r) = flow(&scenario, w, i, 0, None) else {
                    continue;
                };
                let res = send(&mut s, &base, &r).await;
                let us = intended.elapsed().as_micros() as u64;
                let mut t = tally.lock().await;
                match res {
                    Ok(_) => t.record(r.0, us),
                    Err(_) => {
                        t.errors += 1;
                        drop(t);
                        s = connect(&base).await?;
                    }
                }
            }
        }));
    }
    let start = Instant::now();
    let total = (rate as f64 * duration.as_secs_f64()) as u64;
    for i in 0..total {
        let intended = start + Duration::from_secs_f64(i as f64 / rate as f64);
        tokio::time::sleep_until(intended.into()).await;
        if tx.send(((1 << 39) | i, intended)).await.is_err() {
            break;
        }
    }
    drop(tx);
    for t in tasks {
        t.await.map_err(|e| e.to_string())??;
    }
    let secs = start.elapsed().as_secs_f64();
    let t = std::mem::take(&mut *tally.lock().await);
    Ok((t, secs))
}

fn result(
    scenario: &str,
    target: &str,
    mode: &str,
    t: Tally,
    secs: f64,
    rss: Option<u64>,
) -> RunResult {
    let mut latency_us = BTreeMap::new();
    for (op, h) in &t.hist {
        latency_us.insert(op.to_string(), percentiles(h));
    }
    if let Some(all) = &t.all {
        latency_us.insert("all".into(), percentiles(all));
    }
    RunResult {
        scenario: scenario.into(),
        target: target.into(),
        mode: mode.into(),
        requests: t.requests,
        errors: t.errors,
        seconds: secs,
        rps: t.requests as f64 / secs.max(1e-9),
        latency_us,
        peak_rss_kib: rss,
    }
}

/// Give the bench users of the redeem and reads flows a balance to spend.
async fn prepare(base: &str, connections: usize) -> Result<(), String> {
    let mut s = connect(base).await?;
    for w in 0..connections {
        let r: Req = ("award", "/v1/bench/loyalty/award".into(), serde_json::to_vec(&json!({"userId": format!("rich{w}"), "loyaltyProgramId": 1, "purchaseId": format!("seed{w}"), "purchaseAmountCents": 1_000_000_000i64, "itemIds": [], "transactionId": loy(u64::MAX - w as u64)})).unwrap_or_default(), vec![]);
        send(&mut s, base, &r).await?;
    }
    Ok(())
}

/// The service under test: one process on sled; on PostgreSQL, `replicas` processes on the
/// run's database, as one target whose base lists every replica (comma-separated; each
/// connection of a run takes one in turn). Its peak RSS is the first replica's.
fn spawn_service(
    cfg: &str,
    db: Option<&crate::store::pg::TempDatabase>,
    replicas: usize,
) -> Result<Target, String> {
    let Some(db) = db else {
        return spawn("service", &["serve", "--config", cfg], &[]);
    };
    let env = [("KP_BENCH_SERVICE_DATABASE_URL", db.url.as_str())];
    let mut first = spawn("service", &["serve", "--config", cfg], &env)?;
    for _ in 1..replicas.max(1) {
        let more = spawn("service", &["serve", "--config", cfg], &env)?;
        first.base = format!("{},{}", first.base, more.base);
        first.others.push(more);
    }
    Ok(first)
}

/// Run the whole suite and print a table; returns the results.
pub async fn run(opts: BenchOptions) -> Result<Vec<RunResult>, String> {
    let dir = std::env::temp_dir().join(format!("kp-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
    let cfg = dir.join("bench.toml");
    let db = match &opts.database_url {
        Some(url) => Some(crate::store::pg::TempDatabase::create(url)?),
        None => None,
    };
    std::fs::write(&cfg, service_config(&dir, opts.cache_mb, db.is_some()))
        .map_err(|e| e.to_string())?;
    let cfg_s = cfg.display().to_string();
    let bulk = match (opts.bulk_codes, &db) {
        (Some(_), Some(_)) => return Err("--bulk-codes imports offline, on sled only".into()),
        (Some(n), None) => Some(import_bulk(&cfg, &dir, n)?),
        (None, _) => None,
    };
    let service = spawn_service(&cfg_s, db.as_ref(), opts.replicas)?;
    let yard = spawn("yardstick", &["bench-yardstick"], &[])?;
    let first = service
        .base
        .split(',')
        .next()
        .unwrap_or_default()
        .to_string();
    prepare(&first, opts.connections).await?;
    let members = match opts.members {
        Some(n) => Some(setup::import_members(&first, n).await?),
        None => None,
    };
    let setup_rss = peak_rss_kib(service.child.id());
    println!(
        "peak RSS after setup: service {} MiB",
        setup_rss.map(|k| k >> 10).unwrap_or(0)
    );
    // (scenario, target, mode) → what its slices measured, in first-round order.
    // The peak RSS is read after each slice (it only grows).
    type Key = (String, &'static str, String);
    let mut acc: Vec<(Key, Tally, f64, Option<u64>)> = Vec::new();
    let mut add = |key: Key, t: Tally, secs: f64, rss: Option<u64>| match acc
        .iter_mut()
        .find(|(k, _, _, _)| *k == key)
    {
        Some((_, mine, s, r)) => {
            mine.merge(t);
            *s += secs;
            *r = rss;
        }
        None => acc.push((key, t, secs, rss)),
    };
    let rounds = opts.rounds.max(1);
    let slice = opts.duration / rounds;
    for round in 0..rounds {
        let mut order: Vec<&String> = opts.scenarios.iter().collect();
        if round % 2 == 1 {
            order.reverse();
        }
        for sc in order {
            for t in [&yard, &service] {
                let (tally, secs) = closed(&t.base, sc, opts.connections, slice, round).await?;
                let rss = peak_rss_kib(t.child.id());
                add((sc.clone(), t.name, "closed".into()), tally, secs, rss);
            }
            // Latency at a fixed arrival rate, below saturation: for the webhook ack and the
            // bulk-versus-small check comparison.
            let rate = match sc.as_str() {
                "webhook" => Some(opts.webhook_rate),
                "check-small" | "check-bulk" => Some(opts.check_rate),
                _ => None,
            };
            if let Some(rate) = rate {
                for t in [&yard, &service] {
                    let (tally, secs) =
                        open(&t.base, sc, opts.connections.min(16), rate, slice).await?;
                    let rss = peak_rss_kib(t.child.id());
                    add(
                        (sc.clone(), t.name, format!("open@{rate}/s")),
                        tally,
                        secs,
                        rss,
                    );
                }
            }
        }
    }
    let out: Vec<RunResult> = acc
        .into_iter()
        .map(|((sc, name, mode), t, secs, rss)| result(&sc, name, &mode, t, secs, rss))
        .collect();
    let rss = json!({
        "servicePeakRssKib": peak_rss_kib(service.child.id()),
        "yardstickPeakRssKib": peak_rss_kib(yard.child.id()),
        "serviceAfterSetupPeakRssKib": setup_rss,
        "source": "VmHWM in /proc/<pid>/status of the service and yardstick processes this bench started",
    });
    println!(
        "peak RSS: service {} MiB, yardstick {} MiB (VmHWM of the processes this bench started, pids {} and {})",
        rss["servicePeakRssKib"]
            .as_u64()
            .map(|k| k >> 10)
            .unwrap_or(0),
        rss["yardstickPeakRssKib"]
            .as_u64()
            .map(|k| k >> 10)
            .unwrap_or(0),
        service.child.id(),
        yard.child.id()
    );
    drop(service);
    drop(yard);
    drop(db);
    let _ = std::fs::remove_dir_all(&dir);
    print_table(&out);
    if let Some(p) = &opts.json_out {
        let engine = if opts.database_url.is_some() {
            "postgres"
        } else {
            "sled"
        };
        let doc = json!({"engine": engine, "replicas": opts.replicas, "connections": opts.connections, "durationSeconds": opts.duration.as_secs_f64(), "rounds": opts.rounds.max(1), "bulkImport": bulk, "membersImport": members, "memory": rss, "results": out});
        std::fs::write(p, serde_json::to_vec_pretty(&doc).unwrap_or_default())
            .map_err(|e| format!("{}: {e}", p.display()))?;
    }
    Ok(out)
}

fn print_table(rs: &[RunResult]) {
    println!(
        "{:<17} {:<10} {:<11} {:>9} {:>10} {:>7} {:>8} {:>8} {:>8} {:>8} {:>7} {:>9}",
        "scenario",
        "target",
        "mode",
        "requests",
        "req/s",
        "ratio",
        "p50 µs",
        "p99 µs",
        "p99.9",
        "max",
        "errors",
        "peak MiB"
    );
    for r in rs {
        let yard = rs
            .iter()
            .find(|y| y.target == "yardstick" && y.scenario == r.scenario && y.mode == r.mode);
        let ratio = match (r.target.as_str(), yard) {
            ("service", Some(y)) if y.rps > 0.0 => format!("{:.2}×", r.rps / y.rps),
            _ => "".into(),
        };
        let all = r.latency_us.get("all").cloned().unwrap_or_default();
        let g = |k: &str| all.get(k).copied().unwrap_or(0);
        println!(
            "{:<17} {:<10} {:<11} {:>9} {:>10.0} {:>7} {:>8} {:>8} {:>8} {:>8} {:>7} {:>9}",
            r.scenario,
            r.target,
            r.mode,
            r.requests,
            r.rps,
            ratio,
            g("p50"),
            g("p99"),
            g("p99.9"),
            g("max"),
            r.errors,
            r.peak_rss_kib
                .map(|k| (k >> 10).to_string())
                .unwrap_or_default()
        );
        for (op, p) in &r.latency_us {
            if op != "all" && r.latency_us.len() > 2 {
                println!(
                    "{:<17} {:<10} {:<11} {:>9} {:>10} {:>7} {:>8} {:>8} {:>8} {:>8}",
                    "",
                    "",
                    format!("  {op}"),
                    "",
                    "",
                    "",
                    p["p50"],
                    p["p99"],
                    p["p99.9"],
                    p["max"]
                );
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slices_of_a_run_add_up() {
        let (mut a, mut b) = (Tally::default(), Tally::default());
        for us in 1..=100 {
            a.record("check", us);
        }
        for us in 1001..=1100 {
            b.record("check", us);
            b.record("commit", us);
        }
        b.errors = 2;
        a.merge(b);
        assert_eq!((a.requests, a.errors), (300, 2));
        assert_eq!(a.hist["check"].len(), 200);
        assert_eq!(a.hist["commit"].len(), 100);
        let all = a.all.as_ref().unwrap();
        assert_eq!(all.len(), 300);
        assert_eq!(all.max(), all.highest_equivalent(1100));
        assert_eq!(a.hist["check"].value_at_quantile(0.25), 50);
    }
}
