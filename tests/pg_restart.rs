//! A real PostgreSQL restart under load (issue 15): `pg_ctlcluster … restart` of the server
//! the tests use, while two replicas serve awards. A test binary of its own: cargo runs test
//! binaries one after another, so no other test has connections on the server meanwhile.
//! Where the server is not a local cluster this machine may restart, the test says so
//! loudly and returns — unless `KP_REQUIRE_POSTGRES=1` (CI), where that is a failure.

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::pg;
use serde_json::{json, Value};

/// `pg_ctlcluster --skip-systemctl-redirect VERSION main restart` for the local cluster,
/// when the tests' server is on this machine and the command exists.
fn restart_command() -> Result<std::process::Command, String> {
    let url = pg::admin_url();
    if !(url.contains("@127.0.0.1") || url.contains("@localhost")) {
        return Err(format!("the test server ({url}) is not on this machine"));
    }
    let version = std::fs::read_dir("/etc/postgresql")
        .map_err(|e| format!("/etc/postgresql: {e}"))?
        .flatten()
        .filter_map(|e| e.file_name().into_string().ok())
        .max()
        .ok_or("no cluster under /etc/postgresql")?;
    let mut c = std::process::Command::new("pg_ctlcluster");
    c.args(["--skip-systemctl-redirect", &version, "main", "restart"]);
    Ok(c)
}

/// An award's first attempt: (n, status, body).
type Attempt = (u64, u16, Vec<u8>);

fn award(n: u64) -> Value {
    json!({"userId": "u1", "loyaltyProgramId": 7, "purchaseId": format!("p{n}"), "purchaseAmountCents": 100, "itemIds": [], "transactionId": format!("loy_{n:032x}")})
}

/// Two replicas, awards of 1 point each from eight workers; the PostgreSQL server restarts
/// in the middle. Every answer is 200 or a JSON 503 with `Retry-After`; the restart is seen
/// (503s) and ridden out (`/readyz` back by itself, awards acknowledged after it); every
/// award retried with its transaction id succeeds — an acknowledged one with the same
/// bytes —, and the ledger holds each award exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn replicas_ride_out_a_real_postgresql_restart() {
    let mut restart = match restart_command() {
        Ok(c) => c,
        Err(why) if std::env::var("KP_REQUIRE_POSTGRES").as_deref() != Ok("1") => {
            eprintln!("\n!!! SKIPPING replicas_ride_out_a_real_postgresql_restart: {why}\n");
            return;
        }
        Err(why) => panic!("KP_REQUIRE_POSTGRES=1 but the server cannot be restarted: {why}"),
    };
    let Some(db) = pg::fresh("pg_restart").await else {
        return;
    };
    let config = common::config_with(common::ONCE_AND_PROGRAM_7);
    let rs = Arc::new(pg::Replicas::start(&config, &db.url, 2));
    let enroll = json!({"userId": "u1", "loyaltyProgramId": 7, "locationId": 42});
    assert_eq!(rs.call_on(0, "loyalty/enroll", &enroll).await.status, 200);

    let sent: Arc<Mutex<Vec<Attempt>>> = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let mut workers = Vec::new();
    for w in 0..8u64 {
        let (rs, sent, stop) = (rs.clone(), sent.clone(), stop.clone());
        workers.push(tokio::spawn(async move {
            let mut n = w << 32;
            while !stop.load(Ordering::Relaxed) {
                let r = rs.call("loyalty/award", &award(n)).await;
                if r.status == 503 {
                    assert_eq!(r.headers["retry-after"], "1");
                    assert_eq!(r.json()["ok"], json!(false));
                } else {
                    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.bytes));
                }
                sent.lock().unwrap().push((n, r.status, r.bytes));
                n += 1;
            }
        }));
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let out = tokio::task::spawn_blocking(move || restart.output())
        .await
        .unwrap()
        .expect("pg_ctlcluster runs");
    assert!(
        out.status.success(),
        "restart failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let restarted = sent.lock().unwrap().len();
    let up = rs.wait_ready(true, Duration::from_secs(20)).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    stop.store(true, Ordering::Relaxed);
    for w in workers {
        w.await.unwrap();
    }
    let sent = std::mem::take(&mut *sent.lock().unwrap());
    let refused = sent.iter().filter(|s| s.1 == 503).count();
    eprintln!(
        "pg_restart: {} awards, {refused} answered 503, /readyz back {up:?} after the restart",
        sent.len()
    );
    assert!(refused >= 1, "the restart was seen by the load");
    let after = sent[restarted..].iter().filter(|s| s.1 == 200).count();
    assert!(after >= 5, "awards acknowledged after the restart: {after}");
    for (n, status, bytes) in &sent {
        let again = rs.call("loyalty/award", &award(*n)).await;
        assert_eq!(
            again.status,
            200,
            "{}",
            String::from_utf8_lossy(&again.bytes)
        );
        if *status == 200 {
            assert_eq!(&again.bytes, bytes, "award {n} answered the same");
        }
    }
    let c = db.client().await;
    let ledger: i64 = c
        .query_one("SELECT count(*) FROM kp_ledger WHERE tenant = 'acme'", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(
        ledger,
        sent.len() as i64 + 1,
        "each award once, and the signup bonus"
    );
    let points: i64 = c
        .query_one(
            "SELECT (doc->'account'->>'total')::bigint FROM kp_members WHERE tenant = 'acme'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(points, 50 + sent.len() as i64);
}
