//! The PostgreSQL engine (issue 15), against a real PostgreSQL (`tests/common/pg.rs`).

mod common;

use common::pg;

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
}
