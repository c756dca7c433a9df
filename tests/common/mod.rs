//! Test harness: a real server on an ephemeral port with a temp data dir and a manual
//! clock, and a small HTTP client.
#![allow(dead_code)]

pub mod pg;
pub mod proxy;
pub mod sim;

use std::collections::HashMap;
use std::path::PathBuf;

use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use karma_provider::replay::{ReplayAuth, ReplayOptions};
use karma_provider::{Clock, Config, Server};
use serde_json::Value;

pub const ADMIN_TOKEN: &str = "admin-secret-token";
pub const KEY: &str = "acme-secret-key";
/// 2026-06-01 is a Monday.
pub const T0: &str = "2026-06-01T10:00:00Z";

/// The tests' HTTP client.
pub type HttpClient = Client<hyper_util::client::legacy::connect::HttpConnector, Full<Bytes>>;

/// Send one request with `client` and read the whole answer; panics if it cannot be sent.
pub async fn send(
    client: &HttpClient,
    method: &str,
    url: &str,
    headers: &[(&str, &str)],
    body: Vec<u8>,
) -> Resp {
    let mut b = hyper::Request::builder().method(method).uri(url);
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    let resp = client
        .request(b.body(Full::new(Bytes::from(body))).unwrap())
        .await
        .expect("request sent");
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    let bytes = resp
        .into_body()
        .collect()
        .await
        .unwrap()
        .to_bytes()
        .to_vec();
    Resp {
        status,
        headers,
        bytes,
    }
}

pub struct Harness {
    pub server: Option<Server>,
    pub dir: tempfile::TempDir,
    pub clock: Clock,
    pub toml: String,
    client: HttpClient,
}

pub struct Resp {
    pub status: u16,
    pub headers: hyper::HeaderMap,
    pub bytes: Vec<u8>,
}

impl Resp {
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.bytes)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&self.bytes)))
    }
}

/// The environment of the test config (`config_with`): in-process through [`env`], and
/// given to `serve` processes.
pub const ENV: &[(&str, &str)] = &[
    ("ADMIN_TOKEN", ADMIN_TOKEN),
    ("ACME_KEY", KEY),
    ("BASIC_PASS", "s3cret"),
    ("WH_SECRET", "new-secret"),
    ("WH_OLD", "old-secret"),
    // "whsec_" + base64("std-key")
    ("WH_STD", "whsec_c3RkLWtleQ=="),
    // "whsec_" + base64("fwd-key")
    ("FWD_SECRET", "whsec_ZndkLWtleQ=="),
];

pub fn env() -> impl Fn(&str) -> Option<String> {
    let m: HashMap<String, String> = ENV
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    move |k: &str| m.get(k).cloned()
}

/// Campaign `once` (single-use codes A1–A3, 5.00 off) and loyalty program 7 (1 point per
/// 1.00, 50 signup bonus, reward `coffee` for 100 points, stock 5), for [`config_with`].
pub const ONCE_AND_PROGRAM_7: &str = r#"
[[tenants.campaigns]]
id = "once"
codes = ["A1", "A2", "A3"]
discount = { amount_cents = 500 }
max_uses_per_code = 1
max_discount_total_cents = 100000

[[tenants.loyalty]]
program_id = 7
earn = { points = 1, per_cents = 100 }
signup_bonus = 50
[[tenants.loyalty.rewards]]
id = "coffee"
title = "Free coffee"
points_cost = 100
stock = 5
code_pattern = "CF-######"
"#;

/// The server section and one tenant `acme` (header auth); `campaigns` is appended TOML.
pub fn config_with(campaigns: &str) -> String {
    format!(
        r#"
[server]
listen = "127.0.0.1:0"
max_body_bytes = 4096
header_read_timeout = "1s"
body_read_timeout = "1s"
[storage]
path = "@DATA@"
cache_capacity_mb = 16
[admin]
token_env = "ADMIN_TOKEN"
[[tenants]]
id = "acme"
auth = {{ mode = "header", header = "X-Provider-Key", value_env = "ACME_KEY" }}
hold_ttl = "2h"
code_match = "normalized"
{campaigns}
[[tenants]]
id = "basic"
auth = {{ mode = "basic", username = "karma", password_env = "BASIC_PASS" }}
[[tenants.campaigns]]
id = "b"
codes = ["BASIC5"]
discount = {{ amount_cents = 500 }}
"#
    )
}

impl Harness {
    pub async fn start(toml: &str) -> Harness {
        let dir = tempfile::tempdir().unwrap();
        let clock = Clock::manual_at(T0);
        let client = Client::builder(TokioExecutor::new())
            // The test servers close a keep-alive connection after 1 s without a request
            // (header_read_timeout): never reuse one idle half that long, or a request can be
            // sent on a connection the server is closing (IncompleteMessage, seen in CI).
            .pool_idle_timeout(std::time::Duration::from_millis(500))
            .pool_timer(hyper_util::rt::TokioTimer::new())
            .build_http();
        let mut h = Harness {
            server: None,
            dir,
            clock,
            toml: toml.to_string(),
            client,
        };
        h.boot().await;
        h
    }

    pub fn data_path(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// Start the server on this harness's data dir (after [`Harness::stop`]).
    pub async fn boot(&mut self) {
        self.try_boot().await.expect("server starts");
    }

    /// Like [`Harness::boot`], giving back the start-up error's text.
    pub async fn try_boot(&mut self) -> Result<(), String> {
        let text = self
            .toml
            .replace("@DATA@", &self.data_path().display().to_string());
        let cfg = Config::from_toml(&text, "test.toml", &env()).expect("valid test config");
        let server = Server::start(cfg, self.clock.clone())
            .await
            .map_err(|e| e.to_string())?;
        self.server = Some(server);
        Ok(())
    }

    /// Stop gracefully (the data dir stays).
    pub async fn stop(&mut self) {
        if let Some(s) = self.server.take() {
            s.stop().await;
        }
    }

    /// Stop gracefully and start again on the same data dir (and clock).
    pub async fn restart(&mut self) {
        if let Some(s) = self.server.take() {
            s.stop().await;
        }
        self.boot().await;
    }

    pub fn base(&self) -> String {
        format!("http://{}", self.server.as_ref().unwrap().addr)
    }

    pub async fn request(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: Vec<u8>,
    ) -> Resp {
        let url = format!("{}{}", self.base(), path);
        send(&self.client, method, &url, headers, body).await
    }

    /// POST JSON to `/v1/acme/{path}` with the tenant key.
    pub async fn call(&self, path: &str, body: &Value) -> Resp {
        self.request(
            "POST",
            &format!("/v1/acme/{path}"),
            &[
                ("content-type", "application/json"),
                ("x-provider-key", KEY),
            ],
            serde_json::to_vec(body).unwrap(),
        )
        .await
    }

    pub async fn admin(&self, method: &str, path: &str, body: Option<&Value>) -> Resp {
        let auth = format!("Bearer {ADMIN_TOKEN}");
        self.request(
            method,
            &format!("/admin/v1/tenants/acme/{path}"),
            &[
                ("authorization", &auth),
                ("content-type", "application/json"),
            ],
            body.map(|b| serde_json::to_vec(b).unwrap())
                .unwrap_or_default(),
        )
        .await
    }
}

pub fn cart(total: i64) -> Value {
    serde_json::json!({"items": [{"inventoryItemId": "9999", "quantity": 1, "priceCents": total}], "totalCents": total})
}

pub fn check_body(code: &str, total: i64) -> Value {
    serde_json::json!({"code": code, "cart": cart(total)})
}

/// `res_` + 32 hex digits built from n.
pub fn res_id(n: u64) -> String {
    format!("res_{n:032x}")
}

pub fn commit_body(amount: i64, tx: &str, pref: &str) -> Value {
    serde_json::json!({"amountCents": amount, "transactionId": tx, "providerRef": pref})
}

/// What a [`TestSink`] received: headers, body, and the status it answered.
pub type Received = (hyper::HeaderMap, Vec<u8>, u16);

/// A local HTTP receiver for onward webhook delivery: fails the first `fail_first`
/// requests (503, or 500 when `retry_after` is None), or all while `down` is set, then
/// answers 200; records every request.
#[derive(Clone, Default)]
pub struct TestSink {
    pub addr: Option<std::net::SocketAddr>,
    pub fail_first: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    pub down: std::sync::Arc<std::sync::atomic::AtomicBool>,
    pub got: std::sync::Arc<std::sync::Mutex<Vec<Received>>>,
    /// The self-signed certificate (PEM) of a TLS sink.
    pub tls_ca_pem: Option<String>,
    /// `Retry-After` on a failure: `None` sends `0`, `Some("")` sends none.
    pub retry_after: std::sync::Arc<std::sync::Mutex<Option<String>>>,
    /// When each request arrived, in order.
    pub at: std::sync::Arc<std::sync::Mutex<Vec<std::time::Instant>>>,
}

impl TestSink {
    pub async fn start() -> TestSink {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let sink = TestSink {
            addr: Some(listener.local_addr().unwrap()),
            ..TestSink::default()
        };
        let s = sink.clone();
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let s = s.clone();
                tokio::spawn(async move { s.serve(stream).await });
            }
        });
        sink
    }

    pub fn url(&self) -> String {
        match &self.tls_ca_pem {
            Some(_) => format!("https://localhost:{}/hook", self.addr.unwrap().port()),
            None => format!("http://{}/hook", self.addr.unwrap()),
        }
    }

    async fn serve<IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static>(
        self,
        io: IO,
    ) {
        use std::sync::atomic::Ordering;
        let s = self;
        let svc = hyper::service::service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
            let s = s.clone();
            async move {
                let headers = req.headers().clone();
                let body = req.into_body().collect().await.unwrap().to_bytes().to_vec();
                let fail = s.down.load(Ordering::SeqCst)
                    || s.fail_first
                        .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
                        .is_ok();
                let status = if fail { 503 } else { 200 };
                s.at.lock().unwrap().push(std::time::Instant::now());
                s.got.lock().unwrap().push((headers, body, status));
                let mut resp = hyper::Response::new(Full::new(Bytes::from_static(b"{}")));
                *resp.status_mut() = hyper::StatusCode::from_u16(status).unwrap();
                let after = s.retry_after.lock().unwrap().clone();
                match after.as_deref() {
                    _ if !fail => {}
                    Some("") => {}
                    other => {
                        let v = other.unwrap_or("0");
                        resp.headers_mut().insert("retry-after", v.parse().unwrap());
                    }
                }
                Ok::<_, std::convert::Infallible>(resp)
            }
        });
        let _ = hyper::server::conn::http1::Builder::new()
            .serve_connection(hyper_util::rt::TokioIo::new(io), svc)
            .await;
    }

    /// Like [`TestSink::start`], over TLS with a fresh self-signed certificate for
    /// `localhost`; its PEM is in `tls_ca_pem` for the route's `ca_file`.
    pub async fn start_tls() -> TestSink {
        let ck = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
        let cert = ck.cert.der().clone();
        let key = rustls::pki_types::PrivateKeyDer::Pkcs8(ck.key_pair.serialize_der().into());
        let cfg = rustls::ServerConfig::builder_with_provider(std::sync::Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(vec![cert], key)
        .unwrap();
        let acceptor = tokio_rustls::TlsAcceptor::from(std::sync::Arc::new(cfg));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let sink = TestSink {
            addr: Some(listener.local_addr().unwrap()),
            tls_ca_pem: Some(ck.cert.pem()),
            ..TestSink::default()
        };
        let s = sink.clone();
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let (s, acceptor) = (s.clone(), acceptor.clone());
                tokio::spawn(async move {
                    if let Ok(tls) = acceptor.accept(stream).await {
                        s.serve(tls).await;
                    }
                });
            }
        });
        sink
    }

    pub fn successes(&self) -> usize {
        self.got
            .lock()
            .unwrap()
            .iter()
            .filter(|(_, _, s)| *s == 200)
            .count()
    }

    /// Wait (real time, up to 10 s) until `f` holds.
    pub async fn wait_until(&self, what: &str, f: impl Fn(&TestSink) -> bool) {
        for _ in 0..1000 {
            if f(self) {
                return;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        panic!("timed out waiting for {what}");
    }
}

/// The config of the conformance runs: `config_with` plus webhooks verified with
/// `WH_SECRET` and provider states on.
pub fn conformance_config() -> String {
    config_with("[tenants.webhooks]\nverify = { scheme = \"hmac-sha256-hex\", secrets_env = [\"WH_SECRET\"] }\n")
        .replace("token_env = \"ADMIN_TOKEN\"", "token_env = \"ADMIN_TOKEN\"\nprovider_states = true")
}

/// Replay options for the whole fixture suite against `base` (tenant `acme`, its states
/// through the admin API), with the reports in `dir`.
pub fn conformance_options(base: &str, dir: &std::path::Path) -> ReplayOptions {
    ReplayOptions {
        paths: vec!["fixtures".into()],
        target: Some(format!("{base}/v1/acme")),
        auth: Some(ReplayAuth::Header {
            name: "X-Provider-Key".into(),
            value: KEY.into(),
        }),
        state_url: Some(format!("{base}/admin/v1/tenants/acme/provider-states")),
        state_headers: vec![("authorization".into(), format!("Bearer {ADMIN_TOKEN}"))],
        webhook_secret: Some("new-secret".into()),
        last_failed_file: dir.join("last-failed"),
        junit: Some(dir.join("junit.xml")),
        json: Some(dir.join("report.json")),
        ..ReplayOptions::default()
    }
}

/// Start the real binary (`serve --config`) with `env` set (and `KP_LOG=warn`); the base
/// URL comes from the first line it prints.
pub fn spawn_serve(
    config: &std::path::Path,
    env: &[(&str, &str)],
) -> (std::process::Child, String) {
    use std::io::BufRead;
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_karma-provider"));
    cmd.args(["serve", "--config"])
        .arg(config)
        .env("KP_LOG", "warn")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().expect("binary starts");
    let mut line = String::new();
    std::io::BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let base = line
        .trim()
        .strip_prefix("karma-provider listening on ")
        .unwrap_or_else(|| panic!("unexpected first line {line:?}"))
        .to_string();
    (child, base)
}

/// Deliver an `inventory.created` webhook event with id `id` to tenant `acme`, signed
/// with `WH_SECRET` (hex HMAC in `X-Karma-Signature`); it must be accepted.
pub async fn deliver_signed(h: &Harness, id: &str) {
    use hmac::{Hmac, Mac};
    let body = serde_json::to_vec(&serde_json::json!({"id": id, "event": "inventory.created", "resource": "inventory", "resourceId": "42", "timestamp": "2026-06-01T09:59:00Z", "apiVersion": "2024-01"})).unwrap();
    let mut m = Hmac::<sha2::Sha256>::new_from_slice(b"new-secret").unwrap();
    m.update(&body);
    let sig = hex::encode(m.finalize().into_bytes());
    let r = h
        .request(
            "POST",
            "/v1/acme/webhooks",
            &[
                ("content-type", "application/json"),
                ("x-karma-signature", &sig),
            ],
            body,
        )
        .await;
    assert_eq!(r.status, 200);
}
