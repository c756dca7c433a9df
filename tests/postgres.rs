//! The PostgreSQL engine (issue 15), against a real PostgreSQL (`tests/common/pg.rs`).

mod common;

use common::pg;
use serde_json::json;

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
