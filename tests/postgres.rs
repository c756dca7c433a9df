//! The PostgreSQL engine (issue 15), against a real PostgreSQL (`tests/common/pg.rs`).

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{pg, T0};
use karma_provider::replay;
use serde_json::{json, Value};
use tokio_postgres::types::ToSql;

/// One in-process server on a fresh database answers a check, a commit and its retry, and
/// the records are readable with SQL.
#[tokio::test]
async fn a_server_on_postgres_serves_and_its_records_are_readable_with_sql() {
    let Some(db) = pg::fresh("a_server_on_postgres_serves").await else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let toml = pg::on_postgres(
        &common::config_with(common::ONCE_AND_PROGRAM_7),
        &db,
        dir.path(),
    );
    let h = common::Harness::start(&toml).await;
    let r = h
        .call("voucher/check", &common::check_body("A1", 5000))
        .await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.bytes));
    let pref = r.json()["providerRef"].as_str().unwrap().to_string();
    let body = common::commit_body(500, &common::res_id(1), &pref);
    let first = h.call("voucher/commit", &body).await;
    let again = h.call("voucher/commit", &body).await;
    assert_eq!(first.status, 200);
    assert_eq!(first.bytes, again.bytes);
    let c = db.client().await;
    let row = c
        .query_one(
            "SELECT doc->>'state', live FROM kp_holds WHERE tenant = 'acme' AND provider_ref = $1",
            &[&pref],
        )
        .await
        .unwrap();
    assert_eq!(
        row.get::<_, Option<String>>(0).as_deref(),
        Some("committed")
    );
    assert!(!row.get::<_, bool>(1));

    // A member enrolled (50 points) and awarded 12.34 (12 points): the view shows 62.
    let enroll = json!({"userId": "u1", "loyaltyProgramId": 7, "locationId": 42});
    assert_eq!(h.call("loyalty/enroll", &enroll).await.status, 200);
    let award = json!({"userId": "u1", "loyaltyProgramId": 7, "purchaseId": "p1", "purchaseAmountCents": 1234, "itemIds": [], "transactionId": format!("loy_{:032x}", 1)});
    let r = h.call("loyalty/award", &award).await;
    assert_eq!(
        r.json()["pointsAwarded"],
        json!(12),
        "{}",
        String::from_utf8_lossy(&r.bytes)
    );
    let points: i64 = c
        .query_one(
            "SELECT (doc->'account'->>'total')::bigint FROM kp_members WHERE tenant = 'acme' AND program = '7'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(points, 62);
    let ledger: i64 = c
        .query_one("SELECT count(*) FROM kp_ledger WHERE tenant = 'acme'", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(ledger, 2, "the signup bonus and the award");

    // Bulk codes (kept many to a bucket record) are found by a check and listed by the view.
    let auth = format!("Bearer {}", common::ADMIN_TOKEN);
    let r = h
        .request(
            "POST",
            "/admin/v1/tenants/acme/campaigns/once/codes",
            &[("authorization", &auth), ("content-type", "text/csv")],
            b"BK-1\nBK-2,,guest-9\n".to_vec(),
        )
        .await;
    assert_eq!(r.json()["imported"], json!(2));
    let v = h
        .call("voucher/check", &common::check_body("bk-2", 5000))
        .await
        .json();
    assert_eq!(v["error"], json!("CODE_ASSIGNED_TO_ANOTHER_GUEST"), "{v}");
    let codes: Vec<(String, String, Option<String>)> = c
        .query(
            "SELECT match_key, doc->>'k', doc->>'g' FROM kp_codes WHERE tenant = 'acme' ORDER BY 1",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect();
    assert_eq!(
        codes,
        vec![
            ("BK1".into(), "BK-1".into(), None),
            ("BK2".into(), "BK-2".into(), Some("guest-9".into()))
        ]
    );
}

/// Two replicas (two servers in this process, each with its own writer and connection) on
/// one database, one onward route: events received on either replica — each also sent to
/// the other, as Karma's retries may be — are taken in once and delivered once, by
/// whichever replica holds the route's lease.
#[tokio::test]
async fn two_replicas_deliver_each_webhook_event_onward_once() {
    let Some(db) = pg::fresh("two_replicas_deliver_each_webhook_event_onward_once").await else {
        return;
    };
    let sink = common::TestSink::start().await;
    let dir = tempfile::tempdir().unwrap();
    let toml = pg::on_postgres(
        &common::config_with(&format!(
            r#"
[tenants.webhooks]
verify = {{ scheme = "hmac-sha256-hex", secrets_env = ["WH_SECRET"] }}
[[tenants.webhooks.routes]]
name = "inv"
events = "inventory.*"
sink = {{ http = "{}", secret_env = "FWD_SECRET", timeout = "2s" }}
backoff = "10ms"
backoff_max = "40ms"
"#,
            sink.url()
        )),
        &db,
        dir.path(),
    );
    let a = common::Harness::start(&toml).await;
    let b = common::Harness::start(&toml).await;
    for i in 0..20 {
        let id = format!("evt_{i:02}");
        let (first, second) = if i % 2 == 0 { (&a, &b) } else { (&b, &a) };
        common::deliver_signed(first, &id).await;
        common::deliver_signed(second, &id).await;
    }
    sink.wait_until("twenty deliveries", |s| s.successes() >= 20)
        .await;
    // Long enough for a second delivery of any event to show (each replica looks at its
    // queue after every wake-up and at least every 5 s).
    tokio::time::sleep(std::time::Duration::from_secs(6)).await;
    let mut ids: Vec<String> = sink
        .got
        .lock()
        .unwrap()
        .iter()
        .map(|r| r.0["webhook-id"].to_str().unwrap_or("").to_string())
        .collect();
    ids.sort();
    let want: Vec<String> = (0..20).map(|i| format!("evt_{i:02}")).collect();
    assert_eq!(ids, want, "each event delivered once");
    let c = db.client().await;
    let inbox: i64 = c
        .query_one(
            "SELECT count(*) FROM kp_records WHERE key >= '\\x7768696e1f'::bytea AND key < '\\x7768696e20'::bytea",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(inbox, 20, "one inbox entry per delivery id");
}

/// The campaigns and the program of the replica tests: `once` (single-use codes A1–A3),
/// `capped` (code TWICE, two uses in all), `open` (code OPEN, no limit), and program 7
/// (1 point per 1.00, 50 at signup, reward `cake` for 10 points).
const REPLICATED: &str = r#"
[[tenants.campaigns]]
id = "once"
codes = ["A1", "A2", "A3"]
discount = { amount_cents = 500 }
max_uses_per_code = 1

[[tenants.campaigns]]
id = "capped"
codes = ["TWICE"]
discount = { amount_cents = 200 }
max_uses = 2

[[tenants.campaigns]]
id = "open"
codes = ["OPEN"]
discount = { amount_cents = 100 }

[[tenants.loyalty]]
program_id = 7
earn = { points = 1, per_cents = 100 }
signup_bonus = 50
[[tenants.loyalty.rewards]]
id = "cake"
title = "Cake"
points_cost = 10
"#;

/// `n` replicas on a fresh database (`None`: PostgreSQL unreachable and not required).
async fn replicas(test: &str, n: usize) -> Option<(pg::TestDb, pg::Replicas)> {
    let db = pg::fresh(test).await?;
    let r = pg::Replicas::start(&common::config_with(REPLICATED), &db.url, n);
    Some((db, r))
}

fn refused(v: &Value, code: &str) {
    assert_eq!(
        (v["ok"].clone(), v["error"].clone()),
        (json!(false), json!(code)),
        "{v}"
    );
    assert!(v["message"].as_str().is_some_and(|m| !m.is_empty()), "{v}");
}

/// The JSON of a 200 answer (panics on any other status).
fn ok_json(r: &common::Resp) -> Value {
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.bytes));
    r.json()
}

/// `n` copies of the request `f(i)` at once, spread round-robin over the replicas.
async fn at_once(
    rs: &Arc<pg::Replicas>,
    n: u64,
    path: &'static str,
    f: impl Fn(u64) -> Value,
) -> Vec<common::Resp> {
    let tasks: Vec<_> = (0..n)
        .map(|i| {
            let (rs, body) = (rs.clone(), f(i));
            tokio::spawn(async move { rs.call(path, &body).await })
        })
        .collect();
    let mut out = Vec::new();
    for t in tasks {
        out.push(t.await.unwrap());
    }
    out
}

/// Campaign `id` as replica `i`'s admin API shows it.
async fn campaign_on(rs: &pg::Replicas, i: usize, id: &str) -> Value {
    let c = ok_json(&rs.admin_on(i, "GET", "campaigns").await);
    c["campaigns"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["spec"]["id"] == json!(id))
        .unwrap_or_else(|| panic!("no campaign {id} in {c}"))
        .clone()
}

fn loy_tx(n: u64) -> String {
    format!("loy_{n:032x}")
}

fn award_body(user: &str, purchase: &str, cents: i64, n: u64) -> Value {
    json!({"userId": user, "loyaltyProgramId": 7, "purchaseId": purchase, "purchaseAmountCents": cents, "itemIds": [], "transactionId": loy_tx(n)})
}

fn redeem_body(user: &str, n: u64) -> Value {
    json!({"userId": user, "loyaltyProgramId": 7, "rewardId": "cake", "transactionId": loy_tx(n)})
}

async fn enroll(rs: &pg::Replicas, i: usize, user: &str) -> String {
    let v = ok_json(
        &rs.call_on(
            i,
            "loyalty/enroll",
            &json!({"userId": user, "loyaltyProgramId": 7, "locationId": 42}),
        )
        .await,
    );
    v["memberId"].as_str().unwrap().to_string()
}

async fn balance_on(rs: &pg::Replicas, i: usize, user: &str) -> Value {
    let body = json!({"userId": user, "loyaltyProgramId": 7});
    ok_json(&rs.call_on(i, "loyalty/account", &body).await)["currentBalance"].clone()
}

/// One row's `bigint` from SQL on the test database.
async fn sql_i64(db: &pg::TestDb, sql: &str, params: &[&(dyn ToSql + Sync)]) -> i64 {
    db.client()
        .await
        .query_one(sql, params)
        .await
        .unwrap()
        .get(0)
}

/// 32 checks of one single-use code at once over three replicas: one hold, the others
/// refused; the hold is then seen by every replica.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn checks_of_a_single_use_code_over_three_replicas_make_one_hold() {
    let Some((db, rs)) = replicas("replicas_one_hold", 3).await else {
        return;
    };
    let rs = Arc::new(rs);
    let answers = at_once(&rs, 32, "voucher/check", |_| common::check_body("A1", 1000)).await;
    let mut held = Vec::new();
    for r in &answers {
        let v = ok_json(r);
        if v["ok"] == json!(true) {
            held.push(v["providerRef"].as_str().unwrap().to_string());
        } else {
            refused(&v, "VOUCHER_HELD");
        }
    }
    assert_eq!(held.len(), 1, "exactly one hold");
    for i in 0..rs.len() {
        let again = rs
            .call_on(i, "voucher/check", &common::check_body("a1", 1000))
            .await;
        refused(&ok_json(&again), "VOUCHER_HELD");
        let holds = ok_json(&rs.admin_on(i, "GET", "holds").await);
        assert_eq!(holds["count"], json!(1), "replica {i}: {holds}");
    }
    let live = "SELECT count(*) FROM kp_holds WHERE live";
    assert_eq!(sql_i64(&db, live, &[]).await, 1);
}

/// 50 identical commits at once over three replicas: one use, 50 identical answers.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn identical_commits_over_three_replicas_take_effect_once() {
    let Some((db, rs)) = replicas("replicas_commit_once", 3).await else {
        return;
    };
    let rs = Arc::new(rs);
    let v = ok_json(
        &rs.call_on(0, "voucher/check", &common::check_body("TWICE", 1000))
            .await,
    );
    assert_eq!(v["ok"], json!(true), "{v}");
    let pref = v["providerRef"].as_str().unwrap().to_string();
    let body = common::commit_body(200, &common::res_id(5), &pref);
    let answers = at_once(&rs, 50, "voucher/commit", |_| body.clone()).await;
    for r in &answers {
        assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.bytes));
        assert_eq!(r.bytes, answers[0].bytes);
    }
    assert_eq!(
        answers[0].json()["ok"],
        json!(true),
        "{}",
        answers[0].json()
    );
    for i in 0..rs.len() {
        assert_eq!(
            campaign_on(&rs, i, "capped").await["usesConsumed"],
            json!(1),
            "replica {i}"
        );
    }
    let committed = "SELECT count(*) FROM kp_holds WHERE doc->>'state' = 'committed'";
    assert_eq!(sql_i64(&db, committed, &[]).await, 1);
    // the second use is still there: one more hold and commit succeed, a third check is refused
    let v = ok_json(
        &rs.call_on(1, "voucher/check", &common::check_body("TWICE", 1000))
            .await,
    );
    assert_eq!(v["ok"], json!(true), "{v}");
    let v = ok_json(
        &rs.call_on(2, "voucher/check", &common::check_body("TWICE", 1000))
            .await,
    );
    assert_eq!(v["ok"], json!(false), "{v}");
}

/// 50 identical awards at once over three replicas: one ledger entry, identical answers.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn identical_awards_over_three_replicas_credit_once() {
    let Some((db, rs)) = replicas("replicas_award_once", 3).await else {
        return;
    };
    let rs = Arc::new(rs);
    let member = enroll(&rs, 0, "u1").await;
    let answers = at_once(&rs, 50, "loyalty/award", |_| {
        award_body("u1", "p1", 10_000, 1)
    })
    .await;
    for r in &answers {
        assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.bytes));
        assert_eq!(r.bytes, answers[0].bytes);
    }
    assert_eq!(
        answers[0].json()["ok"],
        json!(true),
        "{}",
        answers[0].json()
    );
    for i in 0..rs.len() {
        assert_eq!(balance_on(&rs, i, "u1").await, json!(150), "replica {i}");
    }
    let entries = "SELECT count(*) FROM kp_ledger WHERE member_id = $1";
    assert_eq!(
        sql_i64(&db, entries, &[&member]).await,
        2,
        "signup and one award"
    );
}

/// 50 redeems at once over three replicas on a balance for exactly ten: ten succeed, the
/// balance ends at the remainder on every replica.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn redeems_over_three_replicas_spend_a_balance_exactly_once() {
    let Some((db, rs)) = replicas("replicas_redeem_ten", 3).await else {
        return;
    };
    let rs = Arc::new(rs);
    let member = enroll(&rs, 0, "u1").await; // 50
    let v = ok_json(
        &rs.call_on(1, "loyalty/award", &award_body("u1", "p1", 5_500, 1))
            .await,
    );
    assert_eq!(v["ok"], json!(true), "{v}"); // +55 = 105
    let answers = at_once(&rs, 50, "loyalty/redeem", |i| redeem_body("u1", 100 + i)).await;
    let mut ok = 0;
    for r in &answers {
        let v = ok_json(r);
        if v["ok"] == json!(true) {
            ok += 1;
        } else {
            refused(&v, "INSUFFICIENT_POINTS");
        }
    }
    assert_eq!(ok, 10);
    for i in 0..rs.len() {
        assert_eq!(balance_on(&rs, i, "u1").await, json!(5), "replica {i}");
    }
    let entries = "SELECT count(*) FROM kp_ledger WHERE member_id = $1";
    assert_eq!(
        sql_i64(&db, entries, &[&member]).await,
        12,
        "signup, award, ten redeems"
    );
}

/// One request of a load and its answer.
struct Sent {
    path: &'static str,
    body: Value,
    status: u16,
    /// The answer's `Retry-After` header, if any.
    retry_after: Option<String>,
    bytes: Vec<u8>,
    sent: Instant,
    answered: Instant,
}

impl Sent {
    fn acknowledged(&self) -> bool {
        self.status == 200
    }
}

/// Send `body` to `path` on the next replica, timed.
async fn send(rs: &pg::Replicas, path: &'static str, body: Value) -> Sent {
    let sent = Instant::now();
    let r = rs.call(path, &body).await;
    Sent {
        path,
        body,
        status: r.status,
        retry_after: (r.headers.get("retry-after")).map(|v| v.to_str().unwrap().to_string()),
        bytes: r.bytes,
        sent,
        answered: Instant::now(),
    }
}

/// The load of the outage tests, step `n`: an even `n` awards 1.00 (one point) to member
/// u1 for purchase `p{n}`; an odd `n` holds code OPEN on one replica and commits the hold
/// on the next. The award or the commit is the step's effect, under its own transaction
/// id; a step whose check was refused has none.
async fn step(rs: Arc<pg::Replicas>, n: u64) -> Vec<Sent> {
    if n % 2 == 0 {
        let body = award_body("u1", &format!("p{n}"), 100, 1_000 + n);
        return vec![send(&rs, "loyalty/award", body).await];
    }
    let check = send(&rs, "voucher/check", common::check_body("OPEN", 1000)).await;
    if !check.acknowledged() {
        return vec![check];
    }
    let v: Value = serde_json::from_slice(&check.bytes).unwrap();
    assert_eq!(v["ok"], json!(true), "{v}");
    let pref = v["providerRef"].as_str().unwrap();
    let body = common::commit_body(100, &common::res_id(1_000 + n), pref);
    vec![check, send(&rs, "voucher/commit", body).await]
}

/// The requests of a load that have an effect of their own (awards and commits, not
/// checks).
fn effects(sent: &[Sent]) -> impl Iterator<Item = &Sent> {
    sent.iter().filter(|s| s.path != "voucher/check")
}

/// Workers running [`step`] round-robin over the replicas until stopped.
struct Load {
    stop: Arc<AtomicBool>,
    tasks: Vec<tokio::task::JoinHandle<Vec<Sent>>>,
}

impl Load {
    /// `workers` tasks, each running the next step after the last one ended (20 ms after
    /// a refusal, so a database that is away is not hammered).
    fn start(rs: &Arc<pg::Replicas>, workers: usize) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let next = Arc::new(AtomicU64::new(0));
        let tasks = (0..workers)
            .map(|_| {
                let (rs, stop, next) = (rs.clone(), stop.clone(), next.clone());
                tokio::spawn(async move {
                    let mut out = Vec::new();
                    while !stop.load(Ordering::Relaxed) {
                        let s = step(rs.clone(), next.fetch_add(1, Ordering::Relaxed)).await;
                        if !s.iter().all(Sent::acknowledged) {
                            tokio::time::sleep(Duration::from_millis(20)).await;
                        }
                        out.extend(s);
                    }
                    out
                })
            })
            .collect();
        Load { stop, tasks }
    }

    async fn finish(self) -> Vec<Sent> {
        self.stop.store(true, Ordering::Relaxed);
        let mut all = Vec::new();
        for t in self.tasks {
            all.extend(t.await.unwrap());
        }
        all
    }
}

/// A refusal because the database is away: 503 with `Retry-After: 1` and a JSON error body.
fn assert_unavailable(s: &Sent) {
    let text = String::from_utf8_lossy(&s.bytes);
    assert_eq!(s.status, 503, "{} {text}", s.path);
    assert_eq!(s.retry_after.as_deref(), Some("1"), "{} {text}", s.path);
    let v: Value = serde_json::from_slice(&s.bytes).unwrap_or_else(|_| panic!("not JSON: {text}"));
    assert_eq!(
        (v["ok"].clone(), v["error"].clone()),
        (json!(false), json!("UNAVAILABLE")),
        "{v}"
    );
}

/// Every answer of the load was an acknowledgement or a 503 (`Retry-After`, a JSON body).
fn assert_acknowledged_or_unavailable(sent: &[Sent]) {
    for s in sent.iter().filter(|s| !s.acknowledged()) {
        assert_unavailable(s);
    }
    for s in sent.iter().filter(|s| s.acknowledged()) {
        let v: Value = serde_json::from_slice(&s.bytes).unwrap();
        assert_eq!(v["ok"], json!(true), "{} {v}", s.path);
    }
}

/// Send every step's effect again (same transaction ids), eight at a time: a refused one
/// must now succeed, an acknowledged one must get the same bytes again.
async fn retry_all(rs: &Arc<pg::Replicas>, sent: &[Sent]) {
    let effects: Vec<&Sent> = effects(sent).collect();
    for chunk in effects.chunks(8) {
        let tasks: Vec<_> = chunk
            .iter()
            .map(|s| {
                let (rs, path, body) = (rs.clone(), s.path, s.body.clone());
                tokio::spawn(async move { rs.call(path, &body).await })
            })
            .collect();
        for (s, t) in chunk.iter().zip(tasks) {
            let r = t.await.unwrap();
            let text = String::from_utf8_lossy(&r.bytes);
            assert_eq!(r.status, 200, "{} retried: {text}", s.path);
            if s.acknowledged() {
                assert_eq!(r.bytes, s.bytes, "{} retried: another answer", s.path);
            } else {
                assert_eq!(r.json()["ok"], json!(true), "{} retried: {text}", s.path);
            }
        }
    }
}

/// Every step of the load took effect exactly once: u1's ledger and balance hold one
/// point per award (as SQL and every replica see them), campaign `open` one use per commit.
async fn assert_counted_once(rs: &pg::Replicas, db: &pg::TestDb, member: &str, sent: &[Sent]) {
    let awards = sent.iter().filter(|s| s.path == "loyalty/award").count();
    let commits = effects(sent).count() - awards;
    let entries = "SELECT count(*) FROM kp_ledger WHERE member_id = $1";
    let n = sql_i64(db, entries, &[&member]).await;
    assert_eq!(n, 1 + awards as i64, "signup and {awards} awards");
    let committed = "SELECT count(*) FROM kp_holds WHERE doc->>'state' = 'committed'";
    assert_eq!(sql_i64(db, committed, &[]).await, commits as i64);
    for i in 0..rs.len() {
        assert_eq!(
            balance_on(rs, i, "u1").await,
            json!(50 + awards),
            "replica {i}"
        );
        let open = campaign_on(rs, i, "open").await;
        assert_eq!(open["usesConsumed"], json!(commits), "replica {i}");
    }
}

/// After a load: every answer was an acknowledgement or a 503; retried, each refused step
/// succeeds and each acknowledged one answers the same; each counts once.
async fn settle_and_count(rs: &Arc<pg::Replicas>, db: &pg::TestDb, member: &str, sent: &[Sent]) {
    assert_acknowledged_or_unavailable(sent);
    retry_all(rs, sent).await;
    assert_counted_once(rs, db, member, sent).await;
}

/// Two replicas and a proxy between them and PostgreSQL, on a fresh database with u1
/// enrolled.
async fn behind_proxy(test: &str) -> Option<(pg::TestDb, pg::PgProxy, Arc<pg::Replicas>, String)> {
    let db = pg::fresh(test).await?;
    let proxy = pg::PgProxy::start(pg::server_addr()).await;
    let rs = Arc::new(pg::Replicas::start(
        &common::config_with(REPLICATED),
        &db.url_via(proxy.port),
        2,
    ));
    let member = enroll(&rs, 0, "u1").await;
    Some((db, proxy, rs, member))
}

/// Two replicas reach PostgreSQL through a proxy, which cuts every connection (and refuses
/// new ones) for six seconds in the middle of a load of awards and voucher commits: the
/// answers during the cut are quick 503s (with `Retry-After`), `/readyz` fails within a
/// second, then recovers by itself once the database is back; every refused step retried
/// with its transaction id succeeds, every acknowledged one answers the same bytes, and
/// each counts exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn replicas_survive_the_database_going_away_mid_load() {
    outage(
        pg::ProxyMode::Cut,
        "replicas_db_cut",
        Duration::from_secs(1),
    )
    .await;
}

/// The same through a network partition: the proxy keeps the sockets but passes nothing, so
/// the service hears only silence and must give up by its own timeouts (2 s a statement,
/// 1 s to connect): no answer may take longer than ten seconds, `/readyz` fails within 4 s.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn replicas_survive_a_silent_database_mid_load() {
    outage(
        pg::ProxyMode::Stall,
        "replicas_db_stall",
        Duration::from_secs(4),
    )
    .await;
}

/// The outage tests: a second of load, then the database away (`mode`) for six seconds —
/// `/readyz` must fail on every replica within `unready_within` —, then back for a second.
async fn outage(mode: pg::ProxyMode, test: &str, unready_within: Duration) {
    let Some((db, proxy, rs, member)) = behind_proxy(test).await else {
        return;
    };
    let load = Load::start(&rs, 8);
    tokio::time::sleep(Duration::from_secs(1)).await;
    let cut = Instant::now();
    proxy.set(mode);
    let down = rs.wait_ready(false, unready_within).await;
    tokio::time::sleep(Duration::from_secs(6).saturating_sub(cut.elapsed())).await;
    let restored = Instant::now();
    proxy.set(pg::ProxyMode::Open);
    let up = rs.wait_ready(true, Duration::from_secs(10)).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let sent = load.finish().await;
    let refused = sent.iter().filter(|s| !s.acknowledged()).count();
    eprintln!(
        "{test}: {} steps, {refused} refused; /readyz failed {down:?} after the cut, recovered {up:?} after the restore",
        sent.len()
    );
    let acked = |s: &&Sent| s.acknowledged();
    let before = sent.iter().filter(|s| s.answered < cut).filter(acked);
    assert!(before.count() >= 10, "acknowledged before the cut");
    // answered once the cut had surely reached every connection, and before the restore
    let during: Vec<&Sent> = (sent.iter())
        .filter(|s| s.answered >= cut + Duration::from_millis(200) && s.answered <= restored)
        .collect();
    assert!(
        during.len() >= 4,
        "answered during the cut: {}",
        during.len()
    );
    for s in during {
        assert_unavailable(s);
    }
    let after = sent.iter().filter(|s| s.sent > restored + up).filter(acked);
    assert!(after.count() >= 10, "acknowledged after the restore");
    settle_and_count(&rs, &db, &member, &sent).await;
}

/// `pg_terminate_backend` of every service connection, three times in the middle of the
/// load (what a PostgreSQL restart does to them): every answer is an acknowledgement or a
/// 503, each refused step retried succeeds, each acknowledged one answers the same, each
/// counts exactly once; `/readyz` is back on every replica by itself.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn replicas_keep_every_acknowledged_effect_when_their_connections_are_ended() {
    let Some((db, _proxy, rs, member)) = behind_proxy("replicas_terminated").await else {
        return;
    };
    let load = Load::start(&rs, 8);
    for _ in 0..3 {
        tokio::time::sleep(Duration::from_millis(700)).await;
        let ended = db.terminate_service_connections().await;
        assert!(ended >= 2, "one connection per replica at least: {ended}");
    }
    tokio::time::sleep(Duration::from_millis(700)).await;
    let sent = load.finish().await;
    let refused = sent.iter().filter(|s| !s.acknowledged()).count();
    eprintln!(
        "replicas_terminated: {} steps, {refused} refused",
        sent.len()
    );
    assert!(refused >= 1, "a terminated connection fails its group");
    assert!(
        effects(&sent).any(|s| !s.acknowledged()),
        "a refused effect to retry"
    );
    rs.wait_ready(true, Duration::from_secs(5)).await;
    settle_and_count(&rs, &db, &member, &sent).await;
}

/// `f` on a thread of its own (the engine's connection drives its own runtime).
async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    tokio::task::spawn_blocking(f).await.unwrap()
}

/// The engine's connection, lost inside a group (its backend ended), is not made again
/// until the group ends: a new session would run the rest of the group outside its
/// transaction and without the writer lock, and its writes would commit on their own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_lost_inside_a_group_fails_the_rest_of_the_group() {
    use karma_provider::store::pg::{Conn, PgOptions};
    use karma_provider::store::{Backend, StoreError};
    let Some(db) = pg::fresh("connection_lost_inside_a_group").await else {
        return;
    };
    let opts = PgOptions {
        url: db.url.clone(),
        connect_timeout: Duration::from_secs(1),
        query_timeout: Duration::from_secs(2),
    };
    let conn = blocking(move || {
        let c = Conn::new(opts).unwrap();
        c.migrate().unwrap();
        c.begin_group().unwrap();
        assert_eq!(c.get(b"a").unwrap(), None);
        c
    })
    .await;
    assert_eq!(db.terminate_service_connections().await, 1);
    // each read below names a key not read before (the engine keeps what it read)
    blocking(move || {
        assert!(matches!(conn.get(b"b"), Err(StoreError::Unavailable(_))));
        // the rest of the group fails at once, without a new session
        let again = conn.get(b"c").unwrap_err().to_string();
        assert!(
            again.contains("lost while the group's transaction was open"),
            "{again}"
        );
        let write = vec![(b"k".to_vec(), Some(b"v".to_vec()))];
        assert!(conn.commit_group(write, |_| false, 1).is_err());
        conn.rollback();
        // the next group connects again
        conn.begin_group().unwrap();
        assert_eq!(conn.get(b"d").unwrap(), None);
        conn.end_group().unwrap();
    })
    .await;
    let kept = "SELECT count(*) FROM kp_records WHERE key = 'k'::bytea";
    assert_eq!(
        sql_i64(&db, kept, &[]).await,
        0,
        "nothing of the lost group"
    );
}

/// The fixture count `tests/replay.rs` pins for a full run.
const FIXTURES_PASSED: usize = 40;

/// The full fixture suite (`replay`, states through the provider-states endpoint) passes
/// against a server on a fresh PostgreSQL database, twice in a row, as it does on sled.
#[tokio::test]
async fn the_full_fixture_suite_passes_on_postgres() {
    let Some(db) = pg::fresh("replay_on_postgres").await else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let toml = pg::on_postgres(&common::conformance_config(), &db, dir.path());
    let h = common::Harness::start(&toml).await;
    for _ in 0..2 {
        let o = common::conformance_options(&h.base(), dir.path());
        let report = replay::run(&o).await.unwrap();
        assert_eq!(report.failed, 0, "{}", replay::summary(&report));
        assert_eq!(
            report.passed,
            FIXTURES_PASSED,
            "{}",
            replay::summary(&report)
        );
    }
}

/// The same suite against three real `serve` processes on one database, behind a front
/// that sends each request (state setups included) to the next replica: every scenario's
/// steps land on different replicas, and still all pass.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_full_fixture_suite_passes_on_three_replicas() {
    let Some(db) = pg::fresh("replay_on_replicas").await else {
        return;
    };
    let rs = pg::Replicas::start(&common::conformance_config(), &db.url, 3);
    let front = rs.front().await;
    let dir = tempfile::tempdir().unwrap();
    let report = replay::run(&common::conformance_options(&front, dir.path()))
        .await
        .unwrap();
    assert_eq!(report.failed, 0, "{}", replay::summary(&report));
    assert_eq!(
        report.passed,
        FIXTURES_PASSED,
        "{}",
        replay::summary(&report)
    );
    for i in 0..rs.len() {
        let jobs = rs.metric(i, "kp_store_jobs_total").await;
        assert!(jobs >= 20, "replica {i} ran {jobs} jobs");
    }
}

/// The environment the `karma-provider` binary needs for a [`common::config_with`] config
/// (its secrets) and the admin token `export` sends.
const CLI_ENV: &[(&str, &str)] = &[
    ("ADMIN_TOKEN", common::ADMIN_TOKEN),
    ("KP_ADMIN_TOKEN", common::ADMIN_TOKEN),
    ("ACME_KEY", common::KEY),
    ("BASIC_PASS", "s3cret"),
];

/// Run the binary with `args`; (exit code, stdout, stderr).
fn cli(args: &[&str]) -> (Option<i32>, String, String) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_karma-provider"))
        .args(args)
        .envs(CLI_ENV.iter().copied())
        .output()
        .unwrap();
    let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
    (out.status.code(), text(&out.stdout), text(&out.stderr))
}

/// An export's records: base64 key → (readable key, base64 value).
type Records = BTreeMap<String, (String, String)>;

/// `karma-provider export` from the server at `base` into `file`; its records.
fn export(base: &str, file: &Path) -> Records {
    let (code, _, err) = cli(&["export", "--url", base, "--out", file.to_str().unwrap()]);
    assert_eq!(code, Some(0), "{err}");
    let text = std::fs::read_to_string(file).unwrap();
    let mut lines = text.lines();
    let header: Value = serde_json::from_str(lines.next().unwrap()).unwrap();
    let records: Records = lines
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .map(|r| {
            let s = |f: &str| r[f].as_str().unwrap().to_string();
            (s("k"), (s("key"), s("v")))
        })
        .collect();
    assert_eq!(header["records"], json!(records.len()));
    records
}

/// `karma-provider import --config CONFIG FILE`; (exit code, stdout, stderr).
fn import(config: &Path, file: &Path) -> (Option<i32>, String, String) {
    cli(&[
        "import",
        "--config",
        config.to_str().unwrap(),
        file.to_str().unwrap(),
    ])
}

/// The readable keys of the records that differ between two exports (missing, extra, or
/// of another value).
fn differences(a: &Records, b: &Records) -> Vec<String> {
    let keys: BTreeSet<&String> = a.keys().chain(b.keys()).collect();
    keys.into_iter()
        .filter(|k| a.get(*k).map(|r| &r.1) != b.get(*k).map(|r| &r.1))
        .map(|k| a.get(k).or(b.get(k)).unwrap().0.clone())
        .collect()
}

/// What the workload on the sled server answered, to be asked again after the move.
struct Answers {
    commit: (Value, Vec<u8>),
    award: (Value, Vec<u8>),
    redeem: (Value, Vec<u8>),
    live_ref: String,
}

/// Holds (one committed, one live), a member enrolled, awarded and redeeming, and one
/// imported by CSV.
async fn workload(h: &common::Harness) -> Answers {
    let v = h
        .call("voucher/check", &common::check_body("A1", 5000))
        .await;
    let pref = v.json()["providerRef"].as_str().unwrap().to_string();
    let commit = common::commit_body(500, &common::res_id(1), &pref);
    let committed = h.call("voucher/commit", &commit).await;
    assert_eq!(committed.json()["ok"], json!(true));
    let live = h
        .call("voucher/check", &common::check_body("A2", 5000))
        .await;
    let enroll = json!({"userId": "u1", "loyaltyProgramId": 7});
    assert_eq!(h.call("loyalty/enroll", &enroll).await.status, 200);
    let award = json!({"userId": "u1", "loyaltyProgramId": 7, "purchaseId": "p1", "purchaseAmountCents": 15000, "transactionId": format!("loy_{:032x}", 1)});
    let awarded = h.call("loyalty/award", &award).await;
    assert_eq!(awarded.json()["pointsAwarded"], json!(150));
    let redeem = json!({"userId": "u1", "loyaltyProgramId": 7, "rewardId": "coffee", "transactionId": format!("loy_{:032x}", 2)});
    let redeemed = h.call("loyalty/redeem", &redeem).await;
    assert_eq!(redeemed.json()["ok"], json!(true));
    let csv = "user_id,phone,balance\nm1,+46700000001,70\n";
    let auth = format!("Bearer {}", common::ADMIN_TOKEN);
    let imported = h
        .request(
            "POST",
            "/admin/v1/tenants/acme/loyalty/7/members/import",
            &[("authorization", &auth), ("content-type", "text/csv")],
            csv.as_bytes().to_vec(),
        )
        .await;
    assert_eq!(imported.json()["imported"], json!(1));
    Answers {
        commit: (commit, committed.bytes),
        award: (award, awarded.bytes),
        redeem: (redeem, redeemed.bytes),
        live_ref: live.json()["providerRef"].as_str().unwrap().to_string(),
    }
}

/// The moved service answers as the sled one did: retries byte for byte, the committed
/// code used, the live hold live, the balances, and new ids after the moved ones.
async fn serves_as_before(h: &common::Harness, a: &Answers) {
    for (req, first, path) in [
        (&a.commit.0, &a.commit.1, "voucher/commit"),
        (&a.award.0, &a.award.1, "loyalty/award"),
        (&a.redeem.0, &a.redeem.1, "loyalty/redeem"),
    ] {
        assert_eq!(&h.call(path, req).await.bytes, first, "{path} retried");
    }
    for (code, error) in [("A1", "USAGE_LIMIT_REACHED"), ("A2", "VOUCHER_HELD")] {
        let check = common::check_body(code, 5000);
        let refused = h.call("voucher/check", &check).await.json();
        assert_eq!(refused["error"], json!(error), "{code}");
    }
    let holds = h.admin("GET", "holds", None).await.json();
    assert_eq!(holds["holds"][0]["providerRef"], json!(a.live_ref));
    assert_eq!(holds["count"], json!(1));
    for (user, balance) in [("u1", 100), ("m1", 70)] {
        let q = json!({"userId": user, "loyaltyProgramId": 7});
        let acct = h.call("loyalty/account", &q).await.json();
        assert_eq!(acct["currentBalance"], json!(balance), "{user}");
    }
    let redeem = json!({"userId": "u1", "loyaltyProgramId": 7, "rewardId": "coffee", "transactionId": format!("loy_{:032x}", 3)});
    let newer = h.call("loyalty/redeem", &redeem).await.json();
    let before: Value = serde_json::from_slice(&a.redeem.1).unwrap();
    assert!(newer["redemptionId"].as_str() > before["redemptionId"].as_str());
    assert_ne!(newer["generatedCode"], before["generatedCode"]);
}

/// sled → PostgreSQL → sled with `export` and `import` (moving between engines): the
/// records arrive as they left, a PostgreSQL server serves them as the sled one did (and
/// exports them unchanged), `import` refuses a database that holds records or a backup of a
/// newer schema, and the way back gives the PostgreSQL server's records to sled.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn export_and_import_move_records_between_sled_and_postgres() {
    let Some(db) = pg::fresh("export_and_import_move_records").await else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let sled_toml = common::config_with(common::ONCE_AND_PROGRAM_7);
    let source = common::Harness::start(&sled_toml).await;
    let answers = workload(&source).await;
    let dump = dir.path().join("sled.jsonl");
    let from_sled = export(&source.base(), &dump);
    // every kind of record the workload makes is in what moves
    let kinds: BTreeSet<&str> = from_sled
        .values()
        .map(|r| r.0.split('/').next().unwrap())
        .collect();
    let made = "hist hold idem lawd lcode lcount lenrb lidb live lled llot lmem lpur lred lstock meta used useda usedc";
    assert_eq!(kinds, made.split(' ').collect());

    let pg_toml = pg::on_postgres(&sled_toml, &db, dir.path());
    let pg_cfg = dir.path().join("pg.toml");
    std::fs::write(&pg_cfg, &pg_toml).unwrap();
    let (code, out, err) = import(&pg_cfg, &dump);
    assert_eq!(code, Some(0), "{err}");
    let url_file = format!(
        "file {}",
        dir.path().join(format!("{}.url", db.name)).display()
    );
    let said = format!(
        "imported {} records into the PostgreSQL database of {url_file}\n",
        from_sled.len()
    );
    assert_eq!(out, said);
    refusals(&db, &pg_cfg, &dump, dir.path()).await;
    readable_with_sql(&db, &answers).await;

    let moved = common::Harness::start(&pg_toml).await;
    let on_pg = export(&moved.base(), &dir.path().join("pg-first.jsonl"));
    assert_eq!(differences(&from_sled, &on_pg), Vec::<String>::new());
    serves_as_before(&moved, &answers).await;

    // and back: the PostgreSQL server's records (the new redemption among them) into an
    // empty sled data directory
    let back = dir.path().join("pg.jsonl");
    let from_pg = export(&moved.base(), &back);
    assert!(differences(&on_pg, &from_pg)
        .iter()
        .any(|k| k.starts_with("lred/")));
    let data = dir.path().join("sled-again");
    let sled_again = sled_toml.replace("@DATA@", data.to_str().unwrap());
    let sled_cfg = dir.path().join("sled.toml");
    std::fs::write(&sled_cfg, &sled_again).unwrap();
    let (code, out, err) = import(&sled_cfg, &back);
    assert_eq!(code, Some(0), "{err}");
    assert_eq!(
        out,
        format!(
            "imported {} records into {}\n",
            from_pg.len(),
            data.display()
        )
    );
    let returned = common::Harness::start(&sled_again).await;
    let on_sled = export(&returned.base(), &dir.path().join("sled-again.jsonl"));
    assert_eq!(differences(&from_pg, &on_sled), Vec::<String>::new());
    let check = common::check_body("A1", 5000);
    let used = returned.call("voucher/check", &check).await.json();
    assert_eq!(used["error"], json!("USAGE_LIMIT_REACHED"));
}

/// A second import into the database, and a backup of a newer record schema, are refused
/// with a message that says why, and leave the database as it was.
async fn refusals(db: &pg::TestDb, cfg: &Path, dump: &Path, dir: &Path) {
    let c = db.client().await;
    let count = "SELECT count(*) FROM kp_records";
    let before: i64 = c.query_one(count, &[]).await.unwrap().get(0);
    let (code, _, err) = import(cfg, dump);
    assert_eq!(code, Some(1));
    assert!(
        err.contains("the PostgreSQL database already holds records"),
        "{err}"
    );
    let newer = dir.join("newer.jsonl");
    let version = (
        b"meta\x1fschema_version".to_vec(),
        99u64.to_be_bytes().to_vec(),
    );
    std::fs::write(&newer, karma_provider::backup::encode(&[version], T0)).unwrap();
    let (code, _, err) = import(cfg, &newer);
    assert_eq!(code, Some(1));
    assert!(
        err.contains("the backup: its records are of schema version 99"),
        "{err}"
    );
    assert_eq!(
        c.query_one(count, &[]).await.unwrap().get::<_, i64>(0),
        before
    );
}

/// The imported records have their `doc`, as the engine's own writes do: the operators'
/// views show the holds, their state and the members.
async fn readable_with_sql(db: &pg::TestDb, a: &Answers) {
    let c = db.client().await;
    let rows = c
        .query(
            "SELECT doc->>'code', doc->>'state', live FROM kp_holds ORDER BY 1",
            &[],
        )
        .await
        .unwrap();
    let holds: Vec<(String, String, bool)> = rows
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect();
    let held = |c: &str, s: &str, l| (c.to_string(), s.to_string(), l);
    assert_eq!(
        holds,
        [held("A1", "committed", false), held("A2", "held", true)]
    );
    let live: String = c
        .query_one("SELECT provider_ref FROM kp_holds WHERE live", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(live, a.live_ref);
    let members = c
        .query("SELECT member_id FROM kp_members ORDER BY 1", &[])
        .await
        .unwrap();
    assert_eq!(members.len(), 2);
    // the cluster moved past every epoch a replica could follow, its change log marked
    // trimmed: one already running would rebuild its state from the imported records
    let cluster = c
        .query_one("SELECT epoch, changes_from FROM kp_cluster", &[])
        .await
        .unwrap();
    assert_eq!((cluster.get::<_, i64>(0), cluster.get::<_, i64>(1)), (1, 1));
}

/// A database migrated by a newer build (a migration this one does not know) is refused at
/// start, with a message saying so; one this build migrated opens again without change.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_of_a_newer_schema_is_refused() {
    use karma_provider::store::pg::{Conn, PgOptions, MIGRATIONS};
    let Some(db) = pg::fresh("a_database_of_a_newer_schema_is_refused").await else {
        return;
    };
    let opts = PgOptions {
        url: db.url.clone(),
        connect_timeout: Duration::from_secs(2),
        query_timeout: Duration::from_secs(5),
    };
    let o2 = opts.clone();
    blocking(move || Conn::new(o2).unwrap().migrate().unwrap()).await;
    let known = MIGRATIONS.last().unwrap().0;
    let applied = "SELECT count(*) FROM kp_migrations";
    assert_eq!(sql_i64(&db, applied, &[]).await, i64::from(known));
    let o3 = opts.clone();
    blocking(move || Conn::new(o3).unwrap().migrate().unwrap()).await;
    assert_eq!(sql_i64(&db, applied, &[]).await, i64::from(known));
    let c = db.client().await;
    c.execute(
        "INSERT INTO kp_migrations (version, description) VALUES ($1, 'from the future')",
        &[&(known + 1)],
    )
    .await
    .unwrap();
    let refused = blocking(move || Conn::new(opts).unwrap().migrate())
        .await
        .unwrap_err()
        .to_string();
    assert!(
        refused.contains(&format!(
            "schema is at migration {}, newer than this build knows ({known})",
            known + 1
        )),
        "{refused}"
    );
}
