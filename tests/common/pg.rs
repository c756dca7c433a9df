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
