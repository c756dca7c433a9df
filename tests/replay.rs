//! Self-conformance: the full fixture suite passes against this service (states set up
//! through its provider-states endpoint); against a deliberately wrong provider the report
//! names the broken scenarios; the CLI's exit codes and JUnit report.

mod common;

use common::*;
use karma_provider::replay::{self, ReplayAuth, ReplayOptions};

#[tokio::test]
async fn the_full_suite_passes_against_this_service() {
    let h = Harness::start(&conformance_config()).await;
    let dir = tempfile::tempdir().unwrap();
    let report = replay::run(&conformance_options(&h.base(), dir.path()))
        .await
        .unwrap();
    assert_eq!(report.failed, 0, "{}", replay::summary(&report));
    // every fixture ran and passed: the count is pinned so a fixture that stops loading fails
    assert_eq!(report.passed, 40, "{}", replay::summary(&report));
    let junit = std::fs::read_to_string(dir.path().join("junit.xml")).unwrap();
    assert!(junit.contains(&format!(
        "tests=\"{}\" failures=\"0\" skipped=\"0\"",
        report.passed
    )));
    // a second run on the same provider passes too: ids are unique per run
    let again = replay::run(&conformance_options(&h.base(), dir.path()))
        .await
        .unwrap();
    assert_eq!(again.failed, 0, "{}", replay::summary(&again));
}

#[tokio::test]
async fn endpoints_map_basic_auth_and_filter() {
    let h = Harness::start(&conformance_config()).await;
    let dir = tempfile::tempdir().unwrap();
    let base = h.base();
    // the "basic" tenant of the test config uses HTTP Basic
    let map: std::collections::BTreeMap<String, String> = replay::CALLS
        .iter()
        .map(|c| {
            let path = match c.split_once('.') {
                Some((a, o)) => format!("{a}/{o}"),
                None => "webhooks".into(),
            };
            (c.to_string(), format!("{base}/v1/basic/{path}"))
        })
        .collect();
    let file = dir.path().join("endpoints.json");
    std::fs::write(&file, serde_json::to_vec(&map).unwrap()).unwrap();
    let mut o = conformance_options(&base, dir.path());
    o.target = None;
    o.endpoints = Some(replay::read_endpoints(&file).unwrap());
    o.auth = Some(ReplayAuth::parse("basic:karma:s3cret").unwrap());
    o.state_url = Some(format!("{base}/admin/v1/tenants/basic/provider-states"));
    o.filter = Some("voucher-commit-*".into());
    let report = replay::run(&o).await.unwrap();
    assert_eq!(report.failed, 0, "{}", replay::summary(&report));
    assert!(
        report.passed == 6
            && report
                .scenarios
                .iter()
                .all(|s| s.name.starts_with("voucher-commit-"))
    );
    // the wrong password fails every scenario; --fail-fast stops at the first
    o.auth = Some(ReplayAuth::parse("basic:karma:wrong").unwrap());
    o.fail_fast = true;
    let report = replay::run(&o).await.unwrap();
    assert_eq!((report.failed, report.scenarios.len()), (1, 1));
    assert!(
        report.scenarios[0].failures[0].contains("status: expected 200, got 401"),
        "{:?}",
        report.scenarios[0].failures
    );
}

#[tokio::test]
async fn provider_states_are_off_unless_enabled() {
    let h = Harness::start(&config_with("")).await;
    let r = h
        .admin(
            "POST",
            "provider-states",
            Some(&serde_json::json!({"state": "campaign", "params": {}})),
        )
        .await;
    assert_eq!(r.status, 404);
    let h = Harness::start(&conformance_config()).await;
    let r = h
        .admin(
            "POST",
            "provider-states",
            Some(&serde_json::json!({"state": "nope", "params": {}})),
        )
        .await;
    assert_eq!(
        (r.status, r.json()["field"].clone()),
        (400, serde_json::json!("state"))
    );
}

/// A provider that answers `{"ok":true}` to everything.
async fn wrong_provider() -> std::net::SocketAddr {
    slow_provider(0).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_provider_is_reported_scenario_by_scenario() {
    let addr = wrong_provider().await;
    let dir = tempfile::tempdir().unwrap();
    let junit = dir.path().join("junit.xml");
    let last = dir.path().join("last-failed");
    let cli = |extra: Vec<String>| {
        let mut c = std::process::Command::new(env!("CARGO_BIN_EXE_karma-provider"));
        c.current_dir(env!("CARGO_MANIFEST_DIR"))
            .arg("replay")
            .args(extra)
            .arg("--last-failed-file")
            .arg(&last);
        c
    };
    let base = vec![
        "--target".to_string(),
        format!("http://{addr}/v1/acme"),
        "--state-url".into(),
        format!("http://{addr}/states"),
        "--webhook-secret".into(),
        "s".into(),
        "--junit".into(),
        junit.display().to_string(),
    ];
    let mut first = cli(base.clone());
    let out = tokio::task::spawn_blocking(move || first.output().unwrap())
        .await
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    for broken in [
        "voucher-check-unknown-code",
        "voucher-commit-same-id-other-body",
        "webhook-bad-signatures",
        "loyalty-redeem-insufficient-points",
    ] {
        assert!(
            text.contains(&format!("FAIL {broken}")),
            "{broken} not reported:\n{text}"
        );
    }
    // the diff says what was expected
    assert!(
        text.contains("body.error: expected \"UNKNOWN_CODE\", got (missing)"),
        "{text}"
    );
    let xml = std::fs::read_to_string(&junit).unwrap();
    assert!(xml.contains("<testcase") && xml.contains("<failure message="));

    // --last-failed re-runs only what failed
    let failed_before: Vec<String> =
        serde_json::from_str(&std::fs::read_to_string(&last).unwrap()).unwrap();
    assert!(failed_before.contains(&"voucher-check-unknown-code".to_string()));
    let mut again = cli([base.clone(), vec!["--last-failed".into()]].concat());
    let out = tokio::task::spawn_blocking(move || again.output().unwrap())
        .await
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    assert_eq!(
        text.lines()
            .filter(|l| l.starts_with("FAIL ") || l.starts_with("PASS "))
            .count(),
        failed_before.len(),
        "{text}"
    );

    let mut unreachable = cli(vec![
        "--target".into(),
        "http://127.0.0.1:1/v1/acme".into(),
        "fixtures/voucher-check-unknown-code.json".into(),
    ]);
    let out = tokio::task::spawn_blocking(move || unreachable.output().unwrap())
        .await
        .unwrap();
    // unreachable target: the run itself could not happen
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("unreachable"));
    let bad = dir.path().join("bad.json");
    std::fs::write(&bad, r#"{"name": "x", "steps": [{"call": "voucher.nope", "request": {"body": {}}, "expect": {"status": 200}}]}"#).unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_karma-provider"))
        .args(["replay", "--target", "http://127.0.0.1:1"])
        .arg(&bad)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("voucher.nope"));
}

#[tokio::test]
async fn contract_only_skips_the_scenarios_that_pin_our_decisions() {
    let h = Harness::start(&conformance_config()).await;
    let dir = tempfile::tempdir().unwrap();
    let mut o = conformance_options(&h.base(), dir.path());
    o.contract_only = true;
    o.junit = Some(dir.path().join("junit.xml"));
    let report = replay::run(&o).await.unwrap();
    assert_eq!(
        (report.passed, report.failed, report.skipped.len()),
        (32, 0, 8),
        "{}",
        replay::summary(&report)
    );
    let mut skipped: Vec<&str> = report.skipped.iter().map(|s| s.name.as_str()).collect();
    skipped.sort();
    assert_eq!(
        skipped,
        [
            "loyalty-enroll-identifier-in-use",
            "loyalty-lookup-rejections",
            "voucher-bad-requests",
            "voucher-commit-after-reactivate",
            "voucher-reactivate-after-commit",
            "voucher-reactivate-before-commit",
            "voucher-reactivate-unknown-is-safe",
            "webhook-malformed-envelope",
        ]
    );
    let text = replay::summary(&report);
    assert!(text.contains("SKIP voucher-bad-requests (pins one of our decisions, not Karma's contract (--contract-only))"), "{text}");
    assert!(text.contains("32 passed, 0 failed, 8 skipped"), "{text}");
    let junit = std::fs::read_to_string(dir.path().join("junit.xml")).unwrap();
    assert!(
        junit.contains("tests=\"40\" failures=\"0\" skipped=\"8\""),
        "{junit}"
    );
}

#[tokio::test]
async fn scenarios_that_need_states_without_a_state_url_fail_in_one_line() {
    let h = Harness::start(&conformance_config()).await;
    let dir = tempfile::tempdir().unwrap();
    let mut o = conformance_options(&h.base(), dir.path());
    o.state_url = None;
    let err = replay::run(&o).await.unwrap_err();
    assert_eq!(
        err,
        "32 of the selected scenarios need provider states (campaign, member, program) and no \
         --state-url was given: give --state-url (fixtures/README.md, \"Provider states\"), or \
         select scenarios without states with --filter"
    );
    // scenarios without states run without a state URL
    o.filter = Some("webhook-*".into());
    let report = replay::run(&o).await.unwrap();
    assert_eq!((report.passed, report.failed), (3, 0));
}

#[tokio::test]
async fn an_endpoints_file_without_a_webhook_url_skips_the_webhook_scenarios() {
    let h = Harness::start(&conformance_config()).await;
    let dir = tempfile::tempdir().unwrap();
    let base = h.base();
    let mut o = conformance_options(&base, dir.path());
    o.target = None;
    o.endpoints = Some(
        replay::CALLS
            .iter()
            .filter(|c| **c != "webhook")
            .map(|c| {
                (
                    c.to_string(),
                    format!("{base}/v1/acme/{}", c.replace('.', "/")),
                )
            })
            .collect(),
    );
    let report = replay::run(&o).await.unwrap();
    assert_eq!(
        (report.passed, report.failed, report.skipped.len()),
        (37, 0, 3),
        "{}",
        replay::summary(&report)
    );
    assert!(report
        .skipped
        .iter()
        .all(|s| s.name.starts_with("webhook-")
            && s.reason == "--endpoints gives no URL for webhook"));
}

/// A TLS-terminating front for `target` with a fresh self-signed certificate for
/// `localhost`: its port and the certificate's PEM.
async fn tls_front(target: std::net::SocketAddr) -> (u16, String) {
    let ck = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
    let key = rustls::pki_types::PrivateKeyDer::Pkcs8(ck.key_pair.serialize_der().into());
    let cfg = rustls::ServerConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(vec![ck.cert.der().clone()], key)
    .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(std::sync::Arc::new(cfg));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(mut tls) = acceptor.accept(stream).await else {
                    return;
                };
                let mut plain = tokio::net::TcpStream::connect(target).await.unwrap();
                let _ = tokio::io::copy_bidirectional(&mut tls, &mut plain).await;
            });
        }
    });
    (port, ck.cert.pem())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ca_file_lets_replay_reach_an_https_provider_behind_a_private_ca() {
    let h = Harness::start(&conformance_config()).await;
    let addr: std::net::SocketAddr = h.base().trim_start_matches("http://").parse().unwrap();
    let (port, pem) = tls_front(addr).await;
    let dir = tempfile::tempdir().unwrap();
    let ca = dir.path().join("ca.pem");
    std::fs::write(&ca, pem).unwrap();
    let run = |with_ca: bool| {
        let mut c = std::process::Command::new(env!("CARGO_BIN_EXE_karma-provider"));
        c.current_dir(env!("CARGO_MANIFEST_DIR")).args([
            "replay",
            "--target",
            &format!("https://localhost:{port}/v1/acme"),
            "--auth",
            &format!("header:X-Provider-Key:{KEY}"),
            "--filter",
            "voucher-check-unknown-code",
            "--last-failed-file",
            &dir.path().join("last").display().to_string(),
        ]);
        if with_ca {
            c.arg("--ca-file").arg(&ca);
        }
        c
    };
    let (mut without, mut with) = (run(false), run(true));
    let out = tokio::task::spawn_blocking(move || without.output().unwrap())
        .await
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr).to_string();
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("target unreachable"), "{err}");
    let out = tokio::task::spawn_blocking(move || with.output().unwrap())
        .await
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("PASS voucher-check-unknown-code"), "{text}");
}

/// Keys in one place: after the whole suite (campaigns, holds, commits, members, ledgers,
/// redemptions, webhooks) plus bulk codes, every key the store holds starts with a prefix
/// registered in `store::keys::PREFIXES`.
#[tokio::test]
async fn every_stored_key_has_a_registered_prefix() {
    use karma_provider::store::keys::{first, registered, PREFIXES};
    let mut h = Harness::start(&conformance_config()).await;
    let dir = tempfile::tempdir().unwrap();
    let report = replay::run(&conformance_options(&h.base(), dir.path()))
        .await
        .unwrap();
    assert_eq!(report.failed, 0, "{}", replay::summary(&report));
    let r = h
        .admin(
            "POST",
            "campaigns",
            Some(&serde_json::json!({"id": "bulk", "discount": {"amount_cents": 100}})),
        )
        .await;
    assert!(r.status < 300, "{}", String::from_utf8_lossy(&r.bytes));
    let r = h
        .admin(
            "POST",
            "campaigns/bulk/codes/generate",
            Some(&serde_json::json!({"pattern": "KEY-######", "count": 20})),
        )
        .await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.bytes));
    h.stop().await;
    let db = sled::open(h.data_path()).unwrap();
    let mut seen = std::collections::BTreeSet::new();
    for kv in db.iter() {
        let (k, _) = kv.unwrap();
        let p = first(&k).to_vec();
        assert!(
            registered(&p),
            "unregistered prefix {:?}",
            String::from_utf8_lossy(&p)
        );
        seen.insert(String::from_utf8(p).unwrap());
    }
    assert!(
        seen.len() >= 20,
        "the workload reached only {seen:?} of {}",
        PREFIXES.len()
    );
}

/// A provider that answers `{"ok":true}` to everything after `delay_ms`.
async fn slow_provider(delay_ms: u64) -> std::net::SocketAddr {
    use http_body_util::Full;
    use hyper::body::Bytes;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(
                    move |_req: hyper::Request<hyper::body::Incoming>| async move {
                        tokio::time::sleep(std::time::Duration::from_millis(delay_ms)).await;
                        Ok::<_, std::convert::Infallible>(hyper::Response::new(Full::new(
                            Bytes::from_static(b"{\"ok\":true}"),
                        )))
                    },
                );
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    addr
}

fn check_step(name: &str, extra: serde_json::Value) -> serde_json::Value {
    let mut s = serde_json::json!({"name": name, "call": "voucher.check",
        "request": {"body": {"code": "X", "cart": {"items": [], "totalCents": 100}}},
        "expect": {"status": 200, "body": {"ok": true}}});
    for (k, v) in extra.as_object().unwrap() {
        s[k] = v.clone();
    }
    s
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn step_and_scenario_budgets_fail_slow_answers() {
    use serde_json::json;
    let addr = slow_provider(120).await;
    let dir = tempfile::tempdir().unwrap();
    let fixtures = [
        json!({"name": "a-slow-step", "steps": [check_step("slow", json!({"budgetMs": 50}))]}),
        json!({"name": "b-slow-scenario", "budgetMs": 200,
               "steps": [check_step("one", json!({})), check_step("two", json!({}))]}),
        json!({"name": "c-slow-copies", "steps": [check_step("three at once",
               json!({"parallel": 3, "budgetMs": 50, "expect": {"status": 200, "set": {"okTrue": 3}}}))]}),
        json!({"name": "d-within", "budgetMs": 5000,
               "steps": [check_step("fine", json!({"budgetMs": 5000}))]}),
    ];
    for f in &fixtures {
        let p = dir
            .path()
            .join(format!("{}.json", f["name"].as_str().unwrap()));
        std::fs::write(p, serde_json::to_vec(f).unwrap()).unwrap();
    }
    let o = ReplayOptions {
        paths: vec![dir.path().to_path_buf()],
        target: Some(format!("http://{addr}/v1/acme")),
        last_failed_file: dir.path().join("last"),
        ..ReplayOptions::default()
    };
    let report = replay::run(&o).await.unwrap();
    let first: Vec<(String, String)> = report
        .scenarios
        .iter()
        .map(|s| {
            (
                s.name.clone(),
                s.failures.first().cloned().unwrap_or_default(),
            )
        })
        .collect();
    let starts = [
        (
            "a-slow-step",
            "slow (voucher.check): latency: expected within 50 ms, got ",
        ),
        (
            "b-slow-scenario",
            "scenario: latency: expected within 200 ms, got ",
        ),
        (
            "c-slow-copies",
            "three at once (voucher.check): copy[0].latency: expected within 50 ms, got ",
        ),
        ("d-within", ""),
    ];
    for ((name, line), (want_name, want)) in first.iter().zip(starts) {
        assert_eq!(name, want_name);
        assert!(
            line.starts_with(want) && (want.is_empty() == line.is_empty()),
            "{name}: {line}"
        );
    }
    // the three copies were sent at once: together well under three delays
    let c = &report.scenarios[2];
    assert_eq!(c.failures.len(), 3, "{:?}", c.failures);
    assert!(c.duration_ms < 350, "{} ms", c.duration_ms);
    // a run budget (--budget-ms) holds every step without its own
    let o = ReplayOptions {
        budget_ms: Some(50),
        ..o
    };
    let report = replay::run(&o).await.unwrap();
    let b = &report.scenarios[1];
    assert_eq!(b.name, "b-slow-scenario");
    assert!(
        b.failures[0].starts_with("one (voucher.check): latency: expected within 50 ms, got "),
        "{:?}",
        b.failures
    );
    assert!(report.scenarios[3].passed, "{:?}", report.scenarios[3]);
}

#[tokio::test]
async fn fixture_errors_in_parallel_steps_name_the_field() {
    use serde_json::json;
    let dir = tempfile::tempdir().unwrap();
    let cases = [
        (
            json!({"parallel": 1}),
            "steps[0].parallel: 1 copies; give 2 to 64",
        ),
        (
            json!({"expect": {"status": 200, "set": {"okTrue": 1}}}),
            "steps[0].expect.set: only a parallel step has a set of answers",
        ),
        (
            json!({"parallel": 3, "expect": {"status": 200, "set": {"outcomes": {"ok": 2}}}}),
            "steps[0].expect.set: outcomes add up to 2, not to the 3 copies",
        ),
    ];
    for (extra, want) in cases {
        let p = dir.path().join("f.json");
        std::fs::write(
            &p,
            serde_json::to_vec(&json!({"name": "f", "steps": [check_step("s", extra)]})).unwrap(),
        )
        .unwrap();
        assert_eq!(
            replay::load(std::slice::from_ref(&p)).unwrap_err(),
            format!("{}: {want}", p.display())
        );
    }
}

#[tokio::test]
async fn the_json_report_holds_every_exchange() {
    let h = Harness::start(&conformance_config()).await;
    let dir = tempfile::tempdir().unwrap();
    let mut o = conformance_options(&h.base(), dir.path());
    o.filter = Some("voucher-concurrent-checks-single-use".into());
    let report = replay::run(&o).await.unwrap();
    assert_eq!(report.passed, 1, "{}", replay::summary(&report));
    let j: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.path().join("report.json")).unwrap()).unwrap();
    let ex = j["scenarios"][0]["exchanges"].as_array().unwrap();
    assert_eq!(ex.len(), 7, "{ex:#?}");
    let copies: Vec<u64> = ex[..5]
        .iter()
        .map(|e| e["copy"].as_u64().unwrap())
        .collect();
    assert_eq!(copies, [0, 1, 2, 3, 4]);
    assert!(ex[..5].iter().all(|e| e["step"] == "five checks at once"
        && e["status"] == 200
        && e["request"]["code"].as_str().unwrap().starts_with("RACE")
        && e["url"]
            .as_str()
            .unwrap()
            .ends_with("/v1/acme/voucher/check")));
    let oks = ex[..5].iter().filter(|e| e["answer"]["ok"] == true).count();
    assert_eq!(oks, 1);
    // the commit carries the winner's providerRef, captured from the set
    let winner = ex[..5].iter().find(|e| e["answer"]["ok"] == true).unwrap();
    assert_eq!(
        ex[5]["request"]["providerRef"],
        winner["answer"]["providerRef"]
    );
    assert!(ex[5].get("copy").is_none() && ex[6]["answer"]["error"] == "USAGE_LIMIT_REACHED");
}
