//! Durability edges over real HTTP: a data file that cannot be opened for fsync fails the
//! group (fail-stop); start-up refuses a data directory of a newer record schema and an id
//! counter it cannot read, naming the directory. (The fsync of sled's blob files is tested
//! in `store`'s unit tests.)

mod common;

use common::*;
use karma_provider::store::SCHEMA_VERSION;
use serde_json::json;

const CAMPAIGNS: &str = r#"
[[tenants.campaigns]]
id = "big"
codes = ["BIG"]
discount = { amount_cents = 100 }
"#;

/// Write `value` under `key` in a stopped server's data directory, as an operator's tool
/// (or a newer version) would.
fn write_offline(h: &Harness, key: &[u8], value: &[u8]) {
    let db = sled::open(h.data_path()).expect("data dir opens");
    db.insert(key, value).unwrap();
    db.flush().unwrap();
}

#[tokio::test]
async fn a_data_file_that_cannot_be_opened_for_fsync_fails_the_group() {
    let h = Harness::start(&config_with(CAMPAIGNS)).await;
    let ok = h.call("voucher/check", &check_body("BIG", 1000)).await;
    assert_eq!(ok.json()["ok"], json!(true));
    // sled keeps writing to its open file; the path the writer fsyncs through is gone.
    std::fs::rename(h.data_path().join("db"), h.data_path().join("db.moved")).unwrap();
    let r = h.call("voucher/check", &check_body("BIG", 1000)).await;
    assert_eq!(r.status, 503, "{}", String::from_utf8_lossy(&r.bytes));
    let v = r.json();
    assert_eq!(v["error"], json!("UNAVAILABLE"), "{v}");
    assert!(
        v["message"].as_str().unwrap().contains("to fsync it"),
        "{v}"
    );
    // Fail-stop: every later job is refused, and the answer-less hold was never counted.
    assert_eq!(h.request("GET", "/readyz", &[], vec![]).await.status, 503);
    assert_eq!(h.admin("GET", "holds", None).await.status, 503);
    let m = String::from_utf8(h.request("GET", "/metrics", &[], vec![]).await.bytes).unwrap();
    assert!(m.contains("kp_holds_in_flight 1\n"), "{m}");
}

#[tokio::test]
async fn a_newer_record_schema_refuses_to_start() {
    let mut h = Harness::start(&config_with(CAMPAIGNS)).await;
    h.stop().await;
    // A data dir this build wrote says so.
    {
        let db = sled::open(h.data_path()).unwrap();
        let v = db.get(b"meta\x1fschema_version").unwrap().expect("marked");
        assert_eq!(v.as_ref(), SCHEMA_VERSION.to_be_bytes());
    }
    write_offline(&h, b"meta\x1fschema_version", &99u64.to_be_bytes());
    let e = h.try_boot().await.expect_err("refuses a newer schema");
    let dir = h.data_path().display().to_string();
    assert!(e.contains(&dir), "{e}");
    assert!(
        e.contains(&format!(
            "schema version 99, newer than this build's ({SCHEMA_VERSION})"
        )),
        "{e}"
    );
    write_offline(&h, b"meta\x1fschema_version", b"v2");
    let e = h
        .try_boot()
        .await
        .expect_err("refuses an unreadable version");
    assert!(
        e.contains(&dir) && e.contains("not a version number"),
        "{e}"
    );
    // Back at an older version (1: migrated at start) it starts and serves.
    write_offline(&h, b"meta\x1fschema_version", &1u64.to_be_bytes());
    h.boot().await;
    let v = h
        .call("voucher/check", &check_body("BIG", 1000))
        .await
        .json();
    assert_eq!(v["ok"], json!(true), "{v}");
}

#[tokio::test]
async fn an_unreadable_id_counter_is_a_start_up_error() {
    let mut h = Harness::start(&config_with(CAMPAIGNS)).await;
    let first = h
        .call("voucher/check", &check_body("BIG", 1000))
        .await
        .json();
    h.stop().await;
    // Refused again and again, each time right after an offline open of the same dir:
    // the lock sled lets go of a moment after a handle is dropped never fails a start.
    for _ in 0..10 {
        write_offline(&h, b"meta\x1fnext_id", b"garbage");
        let e = h.try_boot().await.expect_err("refuses to start");
        assert!(e.contains(&h.data_path().display().to_string()), "{e}");
        assert!(e.contains("id counter meta/next_id"), "{e}");
        assert!(e.contains("ids could repeat"), "{e}");
    }
    // Put right, ids carry on above the ones handed out.
    write_offline(&h, b"meta\x1fnext_id", &(1u64 << 40).to_be_bytes());
    h.boot().await;
    let next = h
        .call("voucher/check", &check_body("BIG", 1000))
        .await
        .json();
    assert_eq!(first["providerRef"], json!("kph_0000000000000000"));
    assert_eq!(next["providerRef"], json!("kph_0000010000000000"), "{next}");
}

#[tokio::test]
async fn a_backup_of_a_newer_record_schema_is_refused_before_anything_is_written() {
    let dir = tempfile::tempdir().unwrap();
    let opts = karma_provider::store::StoreOptions {
        path: dir.path().join("data"),
        cache_capacity_bytes: 16 << 20,
    };
    let records = vec![
        (
            b"meta\x1fschema_version".to_vec(),
            (SCHEMA_VERSION + 1).to_be_bytes().to_vec(),
        ),
        (b"used\x1facme\x1fbig".to_vec(), 1u64.to_be_bytes().to_vec()),
    ];
    let e = karma_provider::store::import_records(&opts, records)
        .expect_err("refused")
        .to_string();
    assert!(
        e.contains(&format!(
            "schema version {}, newer than this build's ({SCHEMA_VERSION})",
            SCHEMA_VERSION + 1
        )),
        "{e}"
    );
    assert!(!opts.path.exists(), "nothing written");
}
