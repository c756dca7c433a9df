//! PostgreSQL for tests (issue 15): a fresh database per test on the server named by
//! `KP_TEST_DATABASE_URL` (default `postgres://postgres@127.0.0.1:5432/test`, trust auth).
//!
//! Where that server cannot be reached, a test either fails — when `KP_REQUIRE_POSTGRES=1`,
//! as `.ci/run` sets it, so CI never passes by skipping — or, on a developer machine
//! without PostgreSQL, returns early after one loud line on stderr.

use std::sync::atomic::{AtomicU32, Ordering};

pub const DEFAULT_URL: &str = "postgres://postgres@127.0.0.1:5432/test";

/// The server tests make their databases on.
pub fn admin_url() -> String {
    std::env::var("KP_TEST_DATABASE_URL").unwrap_or_else(|_| DEFAULT_URL.to_string())
}

fn required() -> bool {
    std::env::var("KP_REQUIRE_POSTGRES").is_ok_and(|v| v == "1")
}

/// A database of this test's own, dropped (with its connections) when this goes.
pub struct TestDb {
    pub name: String,
    /// Its connection URL (the admin URL with the database replaced).
    pub url: String,
}

static SEQ: AtomicU32 = AtomicU32::new(0);

async fn admin_client() -> Result<tokio_postgres::Client, tokio_postgres::Error> {
    let (client, conn) = tokio_postgres::connect(&admin_url(), tokio_postgres::NoTls).await?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok(client)
}

/// The admin URL with its database name replaced by `db`.
pub fn url_for(db: &str) -> String {
    let base = admin_url();
    let (head, tail) = match base.split_once('?') {
        Some((h, t)) => (h.to_string(), format!("?{t}")),
        None => (base.clone(), String::new()),
    };
    let cut = head.rfind('/').expect("a database URL with a path");
    format!("{}/{db}{tail}", &head[..cut])
}

/// Make a fresh, empty database; `None` (after one loud line) when PostgreSQL cannot be
/// reached and `KP_REQUIRE_POSTGRES` is not `1`.
pub async fn fresh(test: &str) -> Option<TestDb> {
    let client = match admin_client().await {
        Ok(c) => c,
        Err(e) if !required() => {
            eprintln!(
                "\n!!! SKIPPING {test}: PostgreSQL at KP_TEST_DATABASE_URL ({}) is not reachable: {e}. \
                 Set KP_REQUIRE_POSTGRES=1 to make this a failure (CI does).\n",
                admin_url()
            );
            return None;
        }
        Err(e) => panic!("PostgreSQL required (KP_REQUIRE_POSTGRES=1) but not reachable: {e}"),
    };
    let name = format!(
        "kp_t_{}_{}_{}",
        std::process::id(),
        SEQ.fetch_add(1, Ordering::Relaxed),
        fastrand::u32(..)
    );
    client
        .batch_execute(&format!("CREATE DATABASE {name}"))
        .await
        .expect("create the test database");
    Some(TestDb {
        url: url_for(&name),
        name,
    })
}

impl TestDb {
    /// A client on this database (for tests that look at the tables).
    pub async fn client(&self) -> tokio_postgres::Client {
        let (client, conn) = tokio_postgres::connect(&self.url, tokio_postgres::NoTls)
            .await
            .expect("connect to the test database");
        tokio::spawn(async move {
            let _ = conn.await;
        });
        client
    }

    /// `[storage]` for a test config: this database through `url_file` (written beside the
    /// given directory), so an in-process server needs no environment variable.
    pub fn storage_toml(&self, dir: &std::path::Path) -> String {
        let file = dir.join(format!("{}.url", self.name));
        std::fs::write(&file, &self.url).unwrap();
        format!(
            "[storage]\nengine = \"postgres\"\npath = \"{}\"\n[storage.postgres]\nurl_file = \"{}\"\nquery_timeout = \"3s\"\n",
            dir.join("data").display(),
            file.display()
        )
    }
}

/// `toml` (a [`super::config_with`] config) with its sled `[storage]` replaced by `db`.
pub fn on_postgres(toml: &str, db: &TestDb, dir: &std::path::Path) -> String {
    let sled = "[storage]\npath = \"@DATA@\"\ncache_capacity_mb = 16\n";
    assert!(toml.contains(sled), "a config_with config");
    toml.replacen(sled, &db.storage_toml(dir), 1)
}

impl Drop for TestDb {
    fn drop(&mut self) {
        let name = self.name.clone();
        // Drop may run inside a runtime: do the async work on a thread of its own.
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async {
                if let Ok(c) = admin_client().await {
                    let _ = c
                        .batch_execute(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
                        .await;
                }
            });
        })
        .join();
    }
}

/// The PostgreSQL server tests use, as (host, port), from the admin URL.
pub fn server_addr() -> (String, u16) {
    let cfg: tokio_postgres::Config = admin_url().parse().expect("a PostgreSQL URL");
    let host = match cfg.get_hosts().first() {
        Some(tokio_postgres::config::Host::Tcp(h)) => h.clone(),
        _ => "127.0.0.1".to_string(),
    };
    (host, cfg.get_ports().first().copied().unwrap_or(5432))
}

impl TestDb {
    /// Its connection string (key=value form) with the server at `127.0.0.1:port` instead:
    /// through a [`PgProxy`].
    pub fn url_via(&self, port: u16) -> String {
        let cfg: tokio_postgres::Config = admin_url().parse().expect("a PostgreSQL URL");
        let mut s = format!("host=127.0.0.1 port={port} dbname={}", self.name);
        if let Some(u) = cfg.get_user() {
            s.push_str(&format!(" user={u}"));
        }
        if let Some(p) = cfg.get_password() {
            s.push_str(&format!(" password={}", String::from_utf8_lossy(p)));
        }
        s
    }

    /// End every connection the service holds on this database (what a PostgreSQL
    /// restart does to them); how many were ended.
    pub async fn terminate_service_connections(&self) -> i64 {
        self.client()
            .await
            .query_one(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity \
                 WHERE datname = $1 AND application_name = 'karma-provider' \
                 AND pid <> pg_backend_pid()",
                &[&self.name],
            )
            .await
            .unwrap()
            .get(0)
    }
}

#[allow(unused_imports)]
pub use proxy_tcp::{PgProxy, ProxyMode};
#[allow(unused_imports)]
pub use replicas::Replicas;

/// A TCP proxy between the service and PostgreSQL that a test can cut (close every
/// connection, refuse new ones), stall (stop passing bytes, keep the sockets) and
/// restore — the database going away without touching the shared server.
mod proxy_tcp {
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::Arc;

    use tokio::net::{TcpListener, TcpStream};
    use tokio::sync::watch;
    use tokio::task::JoinHandle;

    /// What the proxy does with connections.
    #[derive(Clone, Copy, PartialEq, Eq, Debug)]
    pub enum ProxyMode {
        /// Pass bytes both ways.
        Open,
        /// Close every connection; accept new ones only to close them at once.
        Cut,
        /// Keep every socket open but pass nothing (a network partition): the service hears
        /// only silence and must time out. Leaving this mode closes the held sockets.
        Stall,
    }

    pub struct PgProxy {
        pub port: u16,
        mode: watch::Sender<ProxyMode>,
        accepted: Arc<AtomicU64>,
        accept: JoinHandle<()>,
    }

    impl PgProxy {
        /// Listen on an ephemeral port of 127.0.0.1 and pass connections to `target`.
        pub async fn start(target: (String, u16)) -> PgProxy {
            let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
            let port = listener.local_addr().unwrap().port();
            let (mode, rx) = watch::channel(ProxyMode::Open);
            let accepted = Arc::new(AtomicU64::new(0));
            let n = accepted.clone();
            let accept = tokio::spawn(async move {
                while let Ok((client, _)) = listener.accept().await {
                    n.fetch_add(1, Ordering::Relaxed);
                    tokio::spawn(pipe(client, target.clone(), rx.clone()));
                }
            });
            PgProxy {
                port,
                mode,
                accepted,
                accept,
            }
        }

        /// Switch mode: leaving `Open` ends (cut) or freezes (stall) every connection.
        pub fn set(&self, mode: ProxyMode) {
            self.mode.send_replace(mode);
        }

        /// Connections accepted so far (in any mode).
        pub fn accepted(&self) -> u64 {
            self.accepted.load(Ordering::Relaxed)
        }
    }

    impl Drop for PgProxy {
        fn drop(&mut self) {
            self.accept.abort();
            self.set(ProxyMode::Cut);
        }
    }

    /// One connection: pass bytes while open; hold it silent while stalled; close it
    /// otherwise.
    async fn pipe(mut c: TcpStream, target: (String, u16), mut rx: watch::Receiver<ProxyMode>) {
        if *rx.borrow_and_update() == ProxyMode::Open {
            if let Ok(mut s) = TcpStream::connect((target.0.as_str(), target.1)).await {
                // As the driver does: no Nagle delay on either leg.
                let _ = (c.set_nodelay(true), s.set_nodelay(true));
                tokio::select! {
                    _ = tokio::io::copy_bidirectional(&mut c, &mut s) => return,
                    _ = rx.wait_for(|m| *m != ProxyMode::Open) => {}
                }
                if *rx.borrow() == ProxyMode::Stall {
                    let _ = rx.wait_for(|m| *m != ProxyMode::Stall).await;
                }
                return;
            }
        }
        if *rx.borrow() == ProxyMode::Stall {
            let _ = rx.wait_for(|m| *m != ProxyMode::Stall).await;
        }
    }
}

/// Several real `serve` processes on one database, and an HTTP client that spreads
/// requests over them round-robin.
mod replicas {
    use std::process::Child;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

    use http_body_util::{BodyExt, Full};
    use hyper::body::Bytes;
    use hyper_util::client::legacy::Client;
    use serde_json::Value;

    use super::super::{Resp, ADMIN_TOKEN, ENV, KEY};

    use super::super::HttpClient;

    /// The longest any one request may take before the test calls it a hang.
    pub const ANSWER_WITHIN: Duration = Duration::from_secs(10);

    pub struct Replicas {
        children: Vec<Child>,
        pub bases: Vec<String>,
        next: AtomicUsize,
        client: HttpClient,
        _dir: tempfile::TempDir,
    }

    impl Replicas {
        /// Start `n` replicas of `toml` (a [`super::super::config_with`] config), each with
        /// its own config file and data directory, on the database at `url` (given through
        /// `KP_DATABASE_URL`, as `url_env` names it).
        pub fn start(toml: &str, url: &str, n: usize) -> Replicas {
            let dir = tempfile::tempdir().unwrap();
            let mut env = ENV.to_vec();
            env.push(("KP_DATABASE_URL", url));
            let (mut children, mut bases) = (Vec::new(), Vec::new());
            for i in 0..n {
                let data = dir.path().join(format!("data-{i}"));
                let storage = format!(
                    "[storage]\nengine = \"postgres\"\npath = \"{}\"\n\
                     [storage.postgres]\nurl_env = \"KP_DATABASE_URL\"\n\
                     connect_timeout = \"1s\"\nquery_timeout = \"2s\"\n",
                    data.display()
                );
                let sled = "[storage]\npath = \"@DATA@\"\ncache_capacity_mb = 16\n";
                assert!(toml.contains(sled), "a config_with config");
                let file = dir.path().join(format!("replica-{i}.toml"));
                std::fs::write(&file, toml.replacen(sled, &storage, 1)).unwrap();
                let (child, base) = super::super::spawn_serve(&file, &env);
                children.push(child);
                bases.push(base);
            }
            let client = Client::builder(hyper_util::rt::TokioExecutor::new())
                // The test servers close a keep-alive connection after 1 s without a request
                // (header_read_timeout): never reuse one idle half that long, or a request can be
                // sent on a connection the server is closing (IncompleteMessage, seen in CI).
                .pool_idle_timeout(std::time::Duration::from_millis(500))
                .pool_timer(hyper_util::rt::TokioTimer::new())
                .build_http();
            Replicas {
                children,
                bases,
                next: AtomicUsize::new(0),
                client,
                _dir: dir,
            }
        }

        pub fn len(&self) -> usize {
            self.bases.len()
        }

        /// The replica the next round-robin request goes to.
        pub fn pick(&self) -> usize {
            self.next.fetch_add(1, Ordering::Relaxed) % self.bases.len()
        }

        /// A request to replica `i`; panics if it takes longer than [`ANSWER_WITHIN`] or
        /// cannot be sent.
        pub async fn request(
            &self,
            i: usize,
            method: &str,
            path: &str,
            headers: &[(&str, &str)],
            body: Vec<u8>,
        ) -> Resp {
            let url = format!("{}{}", self.bases[i], path);
            let sent = super::super::send(&self.client, method, &url, headers, body);
            tokio::time::timeout(ANSWER_WITHIN, sent)
                .await
                .unwrap_or_else(|_| {
                    panic!("{method} {path} on replica {i}: no answer within {ANSWER_WITHIN:?}")
                })
        }

        /// POST JSON to `/v1/acme/{path}` on replica `i`.
        pub async fn call_on(&self, i: usize, path: &str, body: &Value) -> Resp {
            self.request(
                i,
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

        /// [`Replicas::call_on`] the next replica round-robin.
        pub async fn call(&self, path: &str, body: &Value) -> Resp {
            self.call_on(self.pick(), path, body).await
        }

        /// An admin request for tenant `acme` on replica `i`.
        pub async fn admin_on(&self, i: usize, method: &str, path: &str) -> Resp {
            let auth = format!("Bearer {ADMIN_TOKEN}");
            self.request(
                i,
                method,
                &format!("/admin/v1/tenants/acme/{path}"),
                &[("authorization", &auth)],
                Vec::new(),
            )
            .await
        }

        /// The status of `/readyz` on replica `i`.
        pub async fn ready(&self, i: usize) -> u16 {
            self.request(i, "GET", "/readyz", &[], Vec::new())
                .await
                .status
        }

        /// The value of the unlabelled metric `name` on replica `i`'s `/metrics`.
        pub async fn metric(&self, i: usize, name: &str) -> u64 {
            let r = self.request(i, "GET", "/metrics", &[], Vec::new()).await;
            let text = String::from_utf8(r.bytes).unwrap();
            let line = text
                .lines()
                .find_map(|l| l.strip_prefix(&format!("{name} ")));
            line.unwrap_or_else(|| panic!("no {name} in /metrics"))
                .parse()
                .unwrap()
        }

        /// Wait until `/readyz` answers `want` on every replica; panics after `limit`.
        pub async fn wait_ready(&self, want: bool, limit: Duration) -> Duration {
            let t0 = std::time::Instant::now();
            loop {
                let mut all = true;
                for i in 0..self.len() {
                    all &= (self.ready(i).await == 200) == want;
                }
                if all {
                    return t0.elapsed();
                }
                assert!(
                    t0.elapsed() < limit,
                    "/readyz not {} on every replica within {limit:?}",
                    if want { "200" } else { "non-200" }
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }

    impl Replicas {
        /// An HTTP front (its base URL) that passes each request on to the next replica,
        /// round-robin — method, path, query, headers and body, and the answer whole —
        /// so a client of one URL (the replay CLI) spreads over every replica.
        pub async fn front(&self) -> String {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let addr = listener.local_addr().unwrap();
            let (bases, client) = (self.bases.clone(), self.client.clone());
            let next = std::sync::Arc::new(AtomicUsize::new(0));
            tokio::spawn(async move {
                while let Ok((stream, _)) = listener.accept().await {
                    let (bases, client, next) = (bases.clone(), client.clone(), next.clone());
                    let svc = hyper::service::service_fn(move |req| {
                        let base =
                            bases[next.fetch_add(1, Ordering::Relaxed) % bases.len()].clone();
                        pass_on(client.clone(), base, req)
                    });
                    tokio::spawn(async move {
                        let io = hyper_util::rt::TokioIo::new(stream);
                        let _ = hyper::server::conn::http1::Builder::new()
                            .serve_connection(io, svc)
                            .await;
                    });
                }
            });
            format!("http://{addr}")
        }
    }

    /// One request through the front to `base`.
    async fn pass_on(
        client: HttpClient,
        base: String,
        req: hyper::Request<hyper::body::Incoming>,
    ) -> Result<hyper::Response<Full<Bytes>>, std::convert::Infallible> {
        let (mut parts, body) = req.into_parts();
        let body = body.collect().await.unwrap().to_bytes();
        let path = parts.uri.path_and_query().map_or("/", |p| p.as_str());
        parts.uri = format!("{base}{path}").parse().unwrap();
        parts.headers.remove(hyper::header::HOST);
        let resp = client
            .request(hyper::Request::from_parts(parts, Full::new(body)))
            .await
            .expect("a replica answers");
        let (parts, body) = resp.into_parts();
        let body = body.collect().await.unwrap().to_bytes();
        Ok(hyper::Response::from_parts(parts, Full::new(body)))
    }

    impl Drop for Replicas {
        fn drop(&mut self) {
            for c in &mut self.children {
                let _ = c.kill();
                let _ = c.wait();
            }
        }
    }
}
