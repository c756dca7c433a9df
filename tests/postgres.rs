//! The PostgreSQL engine (issue 15), against a real PostgreSQL (`tests/common/pg.rs`).

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use common::{pg, T0};
use serde_json::{json, Value};

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
    let made = "hist hold idem lawd lcode lcount lenr lid live lled llot lmem lpur lred lstock meta used useda usedc";
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
