//! A deterministic fuzzer (issue 19, "Done when"): about 1200 malformed requests to the ten
//! POST endpoints over raw TCP — truncations, byte flips, extreme numbers, deep nesting,
//! invalid UTF-8, duplicate keys, wrong content types, bad framing — each on its own
//! connection. Every answer must be below 500, and every 4xx a JSON error
//! `{"ok":false,"error":…,"message":…}`. The seed is fixed, so every run sends the same
//! bytes; the count is fixed, so the run is bounded.

mod common;

use common::*;
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const CONFIG: &str = r#"
[[tenants.campaigns]]
id = "ten"
codes = ["TEN"]
discount = { amount_cents = 1000 }
[[tenants.loyalty]]
program_id = 7
earn = { points = 1, per_cents = 100 }
signup_bonus = 50
[[tenants.loyalty.rewards]]
id = "cake"
title = "Cake"
points_cost = 10
[tenants.webhooks]
verify = { scheme = "none" }
"#;

const REQUESTS: usize = 1200;
const SEED: u64 = 19;

/// The ten POST endpoints, each with a valid body to mutate.
fn endpoints() -> Vec<(&'static str, String)> {
    let res = format!("res_{:032x}", 1);
    let loy = format!("loy_{:032x}", 1);
    vec![
        ("/v1/acme/voucher/check", r#"{"code":"TEN","cart":{"items":[{"inventoryItemId":"1001","quantity":2,"priceCents":2500}],"totalCents":5000},"locationId":"1","userId":"u1"}"#.into()),
        ("/v1/acme/voucher/commit", format!(r#"{{"amountCents":1000,"transactionId":"{res}","providerRef":"hold_x"}}"#)),
        ("/v1/acme/voucher/reactivate", format!(r#"{{"amountCents":1000,"transactionId":"{res}"}}"#)),
        ("/v1/acme/loyalty/lookup", r#"{"loyaltyProgramId":7,"identifier":"u1","identifierType":"userId","locationId":"1"}"#.into()),
        ("/v1/acme/loyalty/enroll", r#"{"userId":"u1","loyaltyProgramId":7,"phone":"+46701234567"}"#.into()),
        ("/v1/acme/loyalty/award", format!(r#"{{"userId":"u1","loyaltyProgramId":7,"purchaseId":"p1","purchaseAmountCents":5000,"itemIds":["1001"],"transactionId":"{loy}"}}"#)),
        ("/v1/acme/loyalty/account", r#"{"userId":"u1","loyaltyProgramId":7}"#.into()),
        ("/v1/acme/loyalty/rewards", r#"{"loyaltyProgramId":7}"#.into()),
        ("/v1/acme/loyalty/redeem", format!(r#"{{"userId":"u1","loyaltyProgramId":7,"rewardId":"cake","transactionId":"{loy}"}}"#)),
        ("/v1/acme/webhooks", r#"{"id":"evt_1","event":"inventory.created","timestamp":"2026-06-01T10:00:00Z"}"#.into()),
    ]
}

const EXTREME: [&str; 14] = [
    "1e400",
    "-1e400",
    "1e-400",
    "99999999999999999999999",
    "-9223372036854775809",
    "9223372036854775808",
    "-0",
    "0.0000001",
    "1.5",
    "NaN",
    "Infinity",
    "1E+308",
    "5e2",
    "-00",
];

/// One mutation of `body`, chosen by `kind`.
fn mutate(rng: &mut fastrand::Rng, kind: usize, body: &str) -> Vec<u8> {
    let mut b = body.as_bytes().to_vec();
    match kind {
        // truncation
        0 => b.truncate(rng.usize(0..b.len())),
        // byte flips
        1 => {
            for _ in 0..rng.usize(1..4) {
                let i = rng.usize(0..b.len());
                b[i] = rng.u8(..);
            }
        }
        // an extreme number in place of a value
        2 => {
            let starts: Vec<usize> = (0..b.len()).filter(|&i| b[i] == b':').collect();
            let at = starts[rng.usize(0..starts.len())] + 1;
            let end = b[at..]
                .iter()
                .position(|&c| c == b',' || c == b'}')
                .map_or(b.len(), |p| at + p);
            let n = EXTREME[rng.usize(0..EXTREME.len())];
            b.splice(at..end, n.bytes());
        }
        // deep nesting, as a whole body or as a field's value
        3 => {
            let depth = [64, 127, 128, 129, 1000, 20_000][rng.usize(0..6)];
            let (open, close) = if rng.bool() {
                ("[", "]")
            } else {
                ("{\"a\":", "}")
            };
            let nest = format!("{}1{}", open.repeat(depth), close.repeat(depth));
            if rng.bool() {
                b = nest.into_bytes();
            } else {
                let at = b.iter().position(|&c| c == b':').unwrap() + 1;
                let end = b[at..]
                    .iter()
                    .position(|&c| c == b',' || c == b'}')
                    .map_or(b.len(), |p| at + p);
                b.splice(at..end, nest.bytes());
            }
        }
        // invalid UTF-8 inside a string, or an escape that is not one
        4 => {
            let quotes: Vec<usize> = (0..b.len()).filter(|&i| b[i] == b'"').collect();
            let at = quotes[rng.usize(0..quotes.len())] + 1;
            let bad: &[&[u8]] = &[
                b"\xff\xfe",
                b"\xc0\x80",
                b"\xed\xa0\x80",
                b"\\ud800",
                b"\\x41",
                b"\x00",
                b"\x1f",
                b"\xf4\x90\x80\x80",
            ];
            b.splice(at..at, bad[rng.usize(0..bad.len())].iter().copied());
        }
        // a duplicate key (the first key again, at the top level or nested)
        5 => {
            let v: Value = serde_json::from_str(body).unwrap();
            let (k, val) = v.as_object().unwrap().iter().next().unwrap();
            let dup = format!("{}:{},", serde_json::to_string(k).unwrap(), val);
            let at = if rng.bool() { 1 } else { b.len() - 1 };
            let ins = if at == 1 {
                dup
            } else {
                format!(",{}", dup.trim_end_matches(','))
            };
            b.splice(at..at, ins.bytes());
        }
        // wrong JSON shapes
        _ => {
            let shapes = [
                "[]",
                "null",
                "\"str\"",
                "123",
                "true",
                "{}",
                "",
                " ",
                "{\"a\":1}{",
                "{\"\":null}",
                "[{}]",
            ];
            b = shapes[rng.usize(0..shapes.len())].as_bytes().to_vec();
        }
    }
    b
}

/// The request bytes: a content type (or a wrong one, or none) and a framing (or a bad one).
fn request(rng: &mut fastrand::Rng, i: usize, path: &str, body: &[u8]) -> Vec<u8> {
    let content_type = match i % 9 {
        0 => None,
        1 => Some("text/plain".to_string()),
        2 => Some("application/x-www-form-urlencoded".to_string()),
        3 => Some("application/json; charset=latin1".to_string()),
        4 => Some("multipart/form-data; boundary=x".to_string()),
        _ => Some("application/json".to_string()),
    };
    let mut head = format!("POST {path} HTTP/1.1\r\nhost: fuzz\r\nx-provider-key: {KEY}\r\n");
    if let Some(ct) = content_type {
        head.push_str(&format!("content-type: {ct}\r\n"));
    }
    let n = body.len();
    let mut out;
    match (i / 9) % 8 {
        // bad framing: length too short (the rest is a second, malformed request), too long
        // (the peer closes first), duplicate or negative, chunked with a bad size, both
        1 => head.push_str(&format!("content-length: {}\r\n", n / 2)),
        2 => head.push_str(&format!("content-length: {}\r\n", n + 1 + rng.usize(0..50))),
        3 => head.push_str(&format!(
            "content-length: {n}\r\ncontent-length: {}\r\n",
            n + 1
        )),
        4 => head.push_str("content-length: -1\r\n"),
        5 => {
            head.push_str("transfer-encoding: chunked\r\n\r\n");
            out = head.into_bytes();
            let size = if rng.bool() {
                format!("{:x}", n + 3)
            } else {
                "zz".into()
            };
            out.extend_from_slice(format!("{size}\r\n").as_bytes());
            out.extend_from_slice(body);
            out.extend_from_slice(b"\r\n0\r\n\r\n");
            return out;
        }
        6 => head.push_str(&format!(
            "content-length: {n}\r\ntransfer-encoding: chunked\r\n"
        )),
        _ => head.push_str(&format!("content-length: {n}\r\n")),
    }
    head.push_str("\r\n");
    out = head.into_bytes();
    out.extend_from_slice(body);
    out
}

/// Every answer on the connection: (status, lowercase head, body).
fn answers(mut bytes: &[u8]) -> Vec<(u16, String, Vec<u8>)> {
    let mut out = Vec::new();
    while !bytes.is_empty() {
        let end = bytes
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .unwrap_or_else(|| panic!("a cut answer: {:?}", String::from_utf8_lossy(bytes)));
        let head = String::from_utf8_lossy(&bytes[..end]).to_ascii_lowercase();
        let status: u16 = head[9..12].parse().unwrap();
        let len: usize = head
            .lines()
            .find_map(|l| l.strip_prefix("content-length: "))
            .map(|v| v.trim().parse().unwrap())
            .unwrap_or_else(|| panic!("no content-length: {head}"));
        let body = bytes[end + 4..end + 4 + len].to_vec();
        bytes = &bytes[end + 4 + len..];
        out.push((status, head, body));
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_requests_never_get_a_5xx_or_a_non_json_error() {
    let h = Harness::start(&config_with(CONFIG)).await;
    let addr = h.server.as_ref().unwrap().addr;
    let eps = endpoints();
    let mut rng = fastrand::Rng::with_seed(SEED);
    let mut statuses = std::collections::BTreeMap::new();
    for i in 0..REQUESTS {
        let (path, valid) = &eps[i % eps.len()];
        let body = mutate(&mut rng, (i / eps.len()) % 7, valid);
        let req = request(&mut rng, i, path, &body);
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        // the server may answer and close before reading everything: a failed write is fine
        let _ = s.write_all(&req).await;
        let _ = s.shutdown().await;
        let mut got = Vec::new();
        let read =
            tokio::time::timeout(std::time::Duration::from_secs(20), s.read_to_end(&mut got));
        // a reset after the answer is fine; what arrived is checked below
        let _ = read.await.expect("the server answers or closes");
        let all = answers(&got);
        assert!(
            !all.is_empty(),
            "request {i}: no answer to {:?}",
            String::from_utf8_lossy(&req)
        );
        for (status, head, body) in all {
            *statuses.entry(status).or_insert(0) += 1;
            let what = || {
                format!(
                    "request {i}: {:?}\n→ {head}\n{}",
                    String::from_utf8_lossy(&req),
                    String::from_utf8_lossy(&body)
                )
            };
            assert!(status < 500, "{}", what());
            let v: Value =
                serde_json::from_slice(&body).unwrap_or_else(|_| panic!("not JSON: {}", what()));
            assert!(
                head.contains("content-type: application/json"),
                "{}",
                what()
            );
            if status >= 400 {
                assert_eq!(v["ok"], false, "{}", what());
                assert!(
                    v["error"].as_str().is_some_and(|e| !e.is_empty()),
                    "{}",
                    what()
                );
                assert!(
                    v["message"].as_str().is_some_and(|m| !m.is_empty()),
                    "{}",
                    what()
                );
                let m = v["message"].as_str().unwrap();
                assert!(
                    !m.contains("invalid type:") && !m.contains('`'),
                    "serde wording: {}",
                    what()
                );
            }
        }
    }
    eprintln!("answers by status: {statuses:?}");
    // the mutations reached the parser, the validator and the decisions, not only hyper
    for s in [200, 400, 415] {
        assert!(statuses.contains_key(&s), "{statuses:?}");
    }
}
