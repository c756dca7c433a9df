//! `[storage]`: which engine keeps the records — sled in a data directory (the default) or
//! PostgreSQL (`[storage.postgres]`, issue 15) —, sled's cache, and the size of a long
//! operation's slice.

use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use super::loader::{ConfigError, Loader};
use super::Secret;

#[derive(Debug, Clone)]
pub struct StorageConfig {
    pub engine: Engine,
    /// The data directory (sled's records; also where the code index files live).
    pub path: PathBuf,
    pub cache_capacity_mb: u64,
    /// The most records one writer job reads or writes for a long operation (export,
    /// listing, janitor, online import or generation): see `service::sliced`.
    pub job_slice_records: usize,
}

/// `storage.cache_capacity_mb` when unset. sled's cache bounds only the nodes it keeps
/// deserialised; at 64 a store of 10 M codes and 1 M members held ~85 MiB more after
/// reads than at 16, and writes spread over many members (award, enroll) answered
/// 10–17 % faster (BENCHMARKS.md, "Issue 13 §4, a third time"; ARCHITECTURE.md says why
/// the memory was chosen).
pub const DEFAULT_CACHE_MB: u64 = 16;

/// The storage engine, chosen here and nowhere else.
#[derive(Debug, Clone)]
pub enum Engine {
    /// Embedded, one process per data directory.
    Sled,
    /// One PostgreSQL database, any number of replicas.
    Postgres(PgConfig),
}

/// `[storage.postgres]`.
#[derive(Debug, Clone)]
pub struct PgConfig {
    /// The connection URL (it may carry a password: a [`Secret`], never printed).
    pub url: Secret,
    pub connect_timeout: Duration,
    /// The longest one statement may take before its group fails (503).
    pub query_timeout: Duration,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawStorage {
    engine: Option<String>,
    path: Option<String>,
    cache_capacity_mb: Option<u64>,
    job_slice_records: Option<usize>,
    postgres: Option<RawPostgres>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawPostgres {
    url_env: Option<String>,
    url_file: Option<String>,
    connect_timeout: Option<String>,
    query_timeout: Option<String>,
}

pub(super) fn storage(cx: &Loader<'_>, s: &RawStorage) -> Result<StorageConfig, ConfigError> {
    let storage = StorageConfig {
        engine: engine(cx, s)?,
        path: PathBuf::from(s.path.clone().unwrap_or_else(|| "./data".into())),
        cache_capacity_mb: s.cache_capacity_mb.unwrap_or(DEFAULT_CACHE_MB),
        job_slice_records: s.job_slice_records.unwrap_or(crate::service::sliced::SLICE),
    };
    if !(1..=1_000_000).contains(&storage.job_slice_records) {
        return Err(cx.err("storage.job_slice_records", "must be 1..=1000000"));
    }
    if storage.cache_capacity_mb == 0 {
        return Err(cx.err("storage.cache_capacity_mb", "must be at least 1"));
    }
    Ok(storage)
}

fn engine(cx: &Loader<'_>, s: &RawStorage) -> Result<Engine, ConfigError> {
    match (s.engine.as_deref().unwrap_or("sled"), &s.postgres) {
        ("sled", None) => Ok(Engine::Sled),
        ("sled", Some(_)) => Err(cx.err(
            "storage.postgres",
            "is only read with engine = \"postgres\"; set storage.engine or remove this section",
        )),
        ("postgres", Some(p)) => postgres(cx, p).map(Engine::Postgres),
        ("postgres", None) => Err(cx.err(
            "storage.postgres",
            "is required with engine = \"postgres\" (url_env or url_file)",
        )),
        (_, _) => Err(cx.err("storage.engine", "must be \"sled\" or \"postgres\"")),
    }
}

fn postgres(cx: &Loader<'_>, p: &RawPostgres) -> Result<PgConfig, ConfigError> {
    let key = "storage.postgres.url_env";
    if p.url_env.is_none() && p.url_file.is_none() {
        return Err(cx.err(key, "give url_env (a variable holding the URL) or url_file"));
    }
    let url = cx.required_secret(
        key,
        &p.url_env,
        &p.url_file,
        "is not set (or empty): it must hold the database URL, postgres://user@host:5432/db",
    )?;
    if url.expose().parse::<tokio_postgres::Config>().is_err() {
        // The driver's message may quote the URL; ours names only where it came from.
        return Err(cx.err(
            key,
            format!(
                "the URL in {} is not a PostgreSQL connection string",
                url.origin().unwrap_or("the config")
            ),
        ));
    }
    let cfg = PgConfig {
        url,
        connect_timeout: cx.dur(
            "storage.postgres.connect_timeout",
            &p.connect_timeout,
            Duration::from_secs(2),
        )?,
        query_timeout: cx.dur(
            "storage.postgres.query_timeout",
            &p.query_timeout,
            Duration::from_secs(5),
        )?,
    };
    for (k, d) in [
        ("storage.postgres.connect_timeout", cfg.connect_timeout),
        ("storage.postgres.query_timeout", cfg.query_timeout),
    ] {
        if d < Duration::from_millis(100) || d > Duration::from_secs(300) {
            return Err(cx.err(k, "must be between 100ms and 300s"));
        }
    }
    Ok(cfg)
}
