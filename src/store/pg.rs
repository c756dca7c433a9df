//! The PostgreSQL engine: the same records, the same writer jobs, several replicas.
//!
//! Each replica runs the writer of `store/mod.rs` unchanged above this module: a group of
//! jobs runs against an overlay of the records, then becomes durable as one unit, and only
//! then are its answers released. What differs is what "durable" and "the records" are:
//!
//! - A group is one PostgreSQL transaction (READ COMMITTED). It first takes the
//!   transaction-level advisory lock [`WRITER_LOCK`], so the groups of every replica on the
//!   database run one at a time, in a total order — the single-writer model every
//!   invariant of this service was built and tested on, now across processes. The lock is
//!   released by the COMMIT (or ROLLBACK, or the connection's end), never by hand.
//! - Under the lock the group reads the cluster's epoch (`kp_cluster`, bumped by each
//!   group that wrote). When another replica has written since this one last did, the
//!   writer's in-memory state is brought up to date first, from the database, inside the
//!   same transaction: each key another replica changed in a watched prefix (live holds,
//!   campaigns, programs, webhook queues — see [`Replica`]) is listed in `kp_changes` with
//!   its epoch, and the state re-reads those records ([`Replica::observe`]); a replica too
//!   far behind (its epochs trimmed) rebuilds the state whole with the start-up loader. So
//!   hold expiry and capacity are decided from what the database holds at that moment.
//! - The group opens in one round trip (BEGIN, the lock, the epoch and the id counter, as
//!   one simple query); its writes go in as one statement (upsert, delete, change log and
//!   epoch bump as data-modifying CTEs), then COMMIT, which returns once PostgreSQL has made
//!   them durable (`synchronous_commit` as the server is set; on by default).
//! - A failure (the database unreachable, a timeout, a failed statement, a failed COMMIT)
//!   undoes the group's state changes, drops the connection and answers the group's callers
//!   503; the next group reconnects. There is no fail-stop: the transaction either
//!   committed or did not, and an ambiguous COMMIT is settled by the next catch-up (the
//!   epoch tells whether it landed). Karma retries with the same transaction id, which the
//!   idempotency records answer exactly once.
//!
//! Every statement runs under `query_timeout` on a current-thread runtime the writer
//! thread owns (tokio-postgres is async; the writer is a plain thread, as it is for sled).

use std::cell::RefCell;
use std::time::Duration;

use tokio_postgres::{Client, NoTls, Statement};

use super::{Pairs, StoreError};

/// The advisory lock every group of every replica takes (`pg_advisory_xact_lock`); the
/// number is arbitrary but fixed ("kprovidr" in ASCII).
pub const WRITER_LOCK: i64 = 0x6b70_726f_7669_6472;
/// Taken (session-level) while migrations run at start, so two replicas starting together
/// migrate once.
const MIGRATE_LOCK: i64 = WRITER_LOCK + 1;

/// Changes older than this many epochs are trimmed from `kp_changes`; a replica further
/// behind rebuilds its state whole.
pub const CHANGES_KEPT: i64 = 100_000;

/// The schema migrations, in order: (version, what it does, SQL). A database whose
/// highest applied version is above the last here was migrated by a newer build, and
/// this one refuses to start on it.
pub const MIGRATIONS: &[(i32, &str, &str)] = &[
    (
        1,
        "records, the cluster epoch and the change log",
        r#"
CREATE TABLE kp_records (
    key   bytea PRIMARY KEY,
    value bytea NOT NULL,
    doc   jsonb
);
CREATE TABLE kp_cluster (
    id             integer PRIMARY KEY CHECK (id = 1),
    epoch          bigint NOT NULL,
    changes_from   bigint NOT NULL
);
INSERT INTO kp_cluster (id, epoch, changes_from) VALUES (1, 0, 0);
CREATE TABLE kp_changes (
    epoch bigint NOT NULL,
    key   bytea NOT NULL
);
CREATE INDEX kp_changes_epoch ON kp_changes (epoch);
"#,
    ),
    (
        2,
        "views for operators: members, ledger, holds, codes",
        r#"
CREATE FUNCTION kp_part(k bytea, n integer) RETURNS text
    LANGUAGE sql IMMUTABLE STRICT
    AS $$ SELECT split_part(convert_from(k, 'UTF8'), chr(31), n) $$;
CREATE VIEW kp_members AS
    SELECT kp_part(key, 2) AS tenant, kp_part(key, 3) AS program,
           kp_part(key, 4) AS member_id, doc
    FROM kp_records WHERE key >= '\x6c6d656d1f'::bytea AND key < '\x6c6d656d20'::bytea;
CREATE VIEW kp_ledger AS
    SELECT kp_part(key, 2) AS tenant, kp_part(key, 3) AS program,
           kp_part(key, 4) AS member_id, kp_part(key, 5) AS entry, doc
    FROM kp_records WHERE key >= '\x6c6c65641f'::bytea AND key < '\x6c6c656420'::bytea;
CREATE VIEW kp_holds AS
    SELECT kp_part(key, 2) AS tenant, kp_part(key, 3) AS provider_ref, doc,
           EXISTS (SELECT 1 FROM kp_records l
                   WHERE l.key = '\x6c6976651f'::bytea || substring(h.key from 6)) AS live
    FROM kp_records h WHERE key >= '\x686f6c641f'::bytea AND key < '\x686f6c6420'::bytea;
CREATE VIEW kp_codes AS
    SELECT kp_part(key, 2) AS tenant, kp_part(key, 3) AS match_key, doc
    FROM kp_records WHERE key >= '\x62636f64651f'::bytea AND key < '\x62636f646520'::bytea;
"#,
    ),
    (
        3,
        "kp_codes reads bulk codes from their buckets (record schema 3)",
        r#"
CREATE OR REPLACE VIEW kp_codes AS
    SELECT kp_part(b.key, 2) AS tenant, c.key AS match_key, c.value AS doc
    FROM kp_records b, jsonb_each(b.doc) c
    WHERE b.key >= '\x6263621f'::bytea AND b.key < '\x62636220'::bytea;
"#,
    ),
    (
        4,
        "kp_ledger reads a member's first entry from its member record (record schema 4)",
        r#"
CREATE OR REPLACE VIEW kp_ledger AS
    SELECT kp_part(key, 2) AS tenant, kp_part(key, 3) AS program,
           kp_part(key, 4) AS member_id, '0000000000000000' AS entry,
           doc->'first_entry' AS doc
    FROM kp_records
    WHERE key >= '\x6c6d656d1f'::bytea AND key < '\x6c6d656d20'::bytea
      AND doc ? 'first_entry'
    UNION ALL
    SELECT kp_part(key, 2), kp_part(key, 3), kp_part(key, 4), kp_part(key, 5), doc
    FROM kp_records WHERE key >= '\x6c6c65641f'::bytea AND key < '\x6c6c656420'::bytea;
"#,
    ),
];

/// A group's opening, as one simple-protocol round trip (no parameters: the lock number
/// and the counter's key are constants).
const BEGIN_SQL: &str = "BEGIN; SELECT pg_advisory_xact_lock(7741813582503437426); \
    SELECT epoch, changes_from, \
    (SELECT value FROM kp_records WHERE key = '\\x6d6574611f6e6578745f6964'::bytea) \
    FROM kp_cluster WHERE id = 1";

/// What a group finds when it begins.
pub struct Begun {
    pub epoch: i64,
    /// Changes after this epoch are all in `kp_changes`.
    pub changes_from: i64,
    /// The stored id counter (`meta/next_id`), if any.
    pub next_id: Option<Vec<u8>>,
}

/// A row of [`BEGIN_SQL`] (text values; `bytea` as `\x` and hex).
fn begun(r: &tokio_postgres::SimpleQueryRow) -> Option<Begun> {
    let int = |i: usize| r.get(i).and_then(|v| v.parse::<i64>().ok());
    let next_id = match r.get(2) {
        None => None,
        Some(hexed) => Some(hex::decode(hexed.strip_prefix("\\x")?).ok()?),
    };
    Some(Begun {
        epoch: int(0)?,
        changes_from: int(1)?,
        next_id,
    })
}

/// Connection settings (from `[storage.postgres]`).
#[derive(Clone)]
pub struct PgOptions {
    /// `postgres://…` or key=value form; never logged (it may hold a password).
    pub url: String,
    pub connect_timeout: Duration,
    pub query_timeout: Duration,
}

impl std::fmt::Debug for PgOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgOptions")
            .field("url", &"(secret)")
            .field("connect_timeout", &self.connect_timeout)
            .field("query_timeout", &self.query_timeout)
            .finish()
    }
}

/// The statements a group runs, prepared once per connection.
struct Stmts {
    get: Statement,
    range_to: Statement,
    range_open: Statement,
    /// A group's writes, change log and epoch, as one statement.
    commit: Statement,
    /// Forget changes up to an epoch.
    trim: Statement,
}

/// One connection, owned by a writer thread (or a one-off tool), with the runtime that
/// drives it. Dropped and made again after any error.
pub struct Conn {
    rt: tokio::runtime::Runtime,
    opts: PgOptions,
    live: RefCell<Option<(Client, Stmts)>>,
    /// A group's transaction is open on `live`. Losing the connection then must not lead
    /// to a new one: the rest of the group would run outside its transaction and without
    /// the writer lock. Every call fails instead until the group ends.
    group_open: std::cell::Cell<bool>,
    /// Records as this replica last read or wrote them (`None`: known absent), valid only
    /// while no other replica has written since (see [`Conn::follow`]).
    cache: RefCell<std::collections::HashMap<Vec<u8>, Option<Vec<u8>>>>,
}

/// The most records [`Conn`]'s cache keeps; past it, it starts again empty (bounded memory;
/// the hot records come back with the next reads).
pub const CACHE_RECORDS: usize = 200_000;

fn unavailable(what: &str, e: impl std::fmt::Display) -> StoreError {
    StoreError::Unavailable(format!("PostgreSQL {what}: {e}"))
}

impl Conn {
    pub fn new(opts: PgOptions) -> Result<Conn, StoreError> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| StoreError::Io(e.to_string()))?;
        Ok(Conn {
            rt,
            opts,
            live: RefCell::new(None),
            group_open: std::cell::Cell::new(false),
            cache: RefCell::new(std::collections::HashMap::new()),
        })
    }

    /// Run `f` on the connection (made first if there is none) under the query timeout;
    /// any error drops the connection.
    fn with<T>(
        &self,
        what: &str,
        f: impl AsyncFnOnce(&Client, &Stmts) -> Result<T, tokio_postgres::Error>,
    ) -> Result<T, StoreError> {
        self.ensure()?;
        let live = self.live.borrow();
        let Some((client, stmts)) = live.as_ref() else {
            return Err(unavailable(what, "not connected"));
        };
        let out = self.rt.block_on(async {
            tokio::time::timeout(self.opts.query_timeout, f(client, stmts)).await
        });
        drop(live);
        match out {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => {
                self.drop_connection();
                Err(unavailable(what, pg_error(&e)))
            }
            Err(_) => {
                self.drop_connection();
                Err(unavailable(
                    what,
                    format!("no answer within {:?}", self.opts.query_timeout),
                ))
            }
        }
    }

    pub fn drop_connection(&self) {
        self.live.borrow_mut().take();
    }

    /// Connect (and prepare the statements) if not connected.
    fn ensure(&self) -> Result<(), StoreError> {
        if self.live.borrow().is_some() {
            return Ok(());
        }
        if self.group_open.get() {
            return Err(unavailable(
                "transaction",
                "the connection was lost while the group's transaction was open",
            ));
        }
        let mut cfg: tokio_postgres::Config = self
            .opts
            .url
            .parse()
            .map_err(|e| StoreError::Io(format!("storage.postgres url: {e}")))?;
        cfg.connect_timeout(self.opts.connect_timeout);
        cfg.application_name("karma-provider");
        let limit = self.opts.connect_timeout + self.opts.query_timeout;
        let made = self.rt.block_on(async {
            tokio::time::timeout(limit, async {
                let (client, connection) = cfg.connect(NoTls).await?;
                tokio::spawn(async move {
                    if let Err(e) = connection.await {
                        tracing::debug!(error = %e, "PostgreSQL connection ended");
                    }
                });
                // Every new connection first brings the schema up to date (a no-op but for
                // two short statements once it is), so the statements below can name it.
                client
                    .execute("SELECT pg_advisory_lock($1)", &[&MIGRATE_LOCK])
                    .await?;
                let migrated = apply_migrations(&client).await;
                client
                    .execute("SELECT pg_advisory_unlock($1)", &[&MIGRATE_LOCK])
                    .await?;
                if let Err(refused) = migrated? {
                    return Ok(Err(refused));
                }
                let stmts = prepare(&client).await?;
                Ok::<_, tokio_postgres::Error>(Ok((client, stmts)))
            })
            .await
        });
        match made {
            Ok(Ok(Ok(pair))) => {
                *self.live.borrow_mut() = Some(pair);
                Ok(())
            }
            Ok(Ok(Err(refused))) => Err(refused),
            Ok(Err(e)) => Err(unavailable("connect", pg_error(&e))),
            Err(_) => Err(unavailable("connect", "timed out")),
        }
    }

    /// Run SQL text on a connection that does not touch the schema (no migrations): for
    /// statements on the server itself, such as `CREATE DATABASE`.
    pub fn plain(&self, sql: &str) -> Result<(), StoreError> {
        let cfg: tokio_postgres::Config = self
            .opts
            .url
            .parse()
            .map_err(|e| StoreError::Io(format!("storage.postgres url: {e}")))?;
        let limit = self.opts.connect_timeout + self.opts.query_timeout;
        let sql = sql.to_owned();
        let out = self.rt.block_on(async {
            tokio::time::timeout(limit, async {
                let (client, connection) = cfg.connect(NoTls).await?;
                tokio::spawn(connection);
                client.batch_execute(&sql).await
            })
            .await
        });
        match out {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(unavailable("statement", pg_error(&e))),
            Err(_) => Err(unavailable("statement", "timed out")),
        }
    }

    /// Run SQL text (no parameters, no rows), e.g. `BEGIN`.
    pub fn execute(&self, sql: &str) -> Result<(), StoreError> {
        let sql = sql.to_owned();
        self.with(&sql.clone(), async move |c: &Client, _: &Stmts| {
            c.batch_execute(&sql).await
        })
    }

    /// One `bigint` from a query without parameters.
    pub fn query_i64(&self, sql: &str) -> Result<i64, StoreError> {
        let sql = sql.to_owned();
        self.with("query", async move |c: &Client, _: &Stmts| {
            let row = c.query_one(&sql, &[]).await?;
            row.try_get::<_, i64>(0)
        })
    }

    /// Open the group's transaction and take the writer lock, in one round trip; the
    /// cluster's epoch, the oldest epoch whose changes are still listed, and the id counter
    /// record (`meta/next_id`) as it stands.
    pub fn begin_group(&self) -> Result<Begun, StoreError> {
        self.group_open.set(false);
        let begun = self
            .with("begin", async |c: &Client, _: &Stmts| {
                let msgs = c.simple_query(BEGIN_SQL).await?;
                Ok(msgs.iter().find_map(|m| match m {
                    // The lock's row has one column; the cluster's has three.
                    tokio_postgres::SimpleQueryMessage::Row(r) if r.columns().len() == 3 => {
                        Some(begun(r))
                    }
                    _ => None,
                }))
            })?
            .flatten()
            .ok_or_else(|| StoreError::Io("kp_cluster has no row; the schema is damaged".into()))?;
        self.group_open.set(true);
        Ok(begun)
    }

    /// The keys changed by groups after epoch `since`.
    pub fn changed_since(&self, since: i64) -> Result<Vec<Vec<u8>>, StoreError> {
        self.with("catch-up", async move |c: &Client, _: &Stmts| {
            let rows = c
                .query(
                    "SELECT DISTINCT key FROM kp_changes WHERE epoch > $1",
                    &[&since],
                )
                .await?;
            rows.iter().map(|r| r.try_get::<_, Vec<u8>>(0)).collect()
        })
    }

    /// Write a group's records (`None`: delete), list the `watched` keys it changed under
    /// `epoch`, move the cluster to `epoch`, and commit. `Ok` only once COMMIT succeeded.
    pub fn commit_group(
        &self,
        writes: Vec<(Vec<u8>, Option<Vec<u8>>)>,
        watched: impl Fn(&[u8]) -> bool,
        epoch: i64,
    ) -> Result<(), StoreError> {
        // What the cache will hold if the COMMIT succeeds; on any failure (an ambiguous
        // COMMIT included) it is dropped whole.
        let written: Vec<(Vec<u8>, Option<Vec<u8>>)> = writes.clone();
        let rows = Rows::of(writes, watched);
        let done = self.with("commit", async move |c: &Client, s: &Stmts| {
            rows.write(c, s, epoch).await?;
            if epoch % 1000 == 0 {
                let keep = epoch.saturating_sub(CHANGES_KEPT);
                c.execute(&s.trim, &[&keep]).await?;
            }
            c.batch_execute("COMMIT").await
        });
        self.group_open.set(false);
        match &done {
            Ok(()) => {
                for (k, v) in written {
                    self.remember(k, v);
                }
            }
            Err(_) => self.cache.borrow_mut().clear(),
        }
        done
    }

    /// This replica's records as the database now holds them, if no other replica wrote
    /// since its last group: `same` is whether the cluster's epoch is the one this replica
    /// left it at. Otherwise the cache is dropped whole (the change log lists only the keys
    /// memory mirrors, not every key another replica wrote).
    pub fn follow(&self, same: bool) {
        if !same {
            self.cache.borrow_mut().clear();
        }
    }

    fn remember(&self, k: Vec<u8>, v: Option<Vec<u8>>) {
        let mut c = self.cache.borrow_mut();
        if c.len() >= CACHE_RECORDS {
            c.clear();
        }
        c.insert(k, v);
    }

    /// End a group that wrote nothing (releases the lock).
    pub fn end_group(&self) -> Result<(), StoreError> {
        let done = self.execute("COMMIT");
        self.group_open.set(false);
        done
    }

    /// Roll the open transaction back, if the connection is still there (best effort: a
    /// broken connection is dropped, which rolls back on the server).
    pub fn rollback(&self) {
        if self.live.borrow().is_some() && self.execute("ROLLBACK").is_err() {
            self.drop_connection();
        }
        self.group_open.set(false);
        self.cache.borrow_mut().clear();
    }

    /// Whether the database answers (for `/readyz` while the writer is idle).
    pub fn ping(&self) -> bool {
        self.execute("SELECT 1").is_ok()
    }

    /// Connect, which applies the migrations this database lacks (under the migration
    /// lock) and refuses a database migrated by a newer build.
    pub fn migrate(&self) -> Result<(), StoreError> {
        self.ensure()
    }

    /// Wait for `f` on this connection's runtime, at most `limit` (`None`: it did not end).
    pub fn block_on_for<T>(
        &self,
        limit: Duration,
        f: impl std::future::Future<Output = T>,
    ) -> Option<T> {
        self.rt
            .block_on(async { tokio::time::timeout(limit, f).await.ok() })
    }
}

/// How many records one statement of an import writes.
const IMPORT_CHUNK: usize = 5_000;

/// Restore an export into a database that holds no records (`karma-provider import`, the
/// servers stopped; `store::import_records` is sled's): connect, which migrates; then, in
/// one transaction under the writer lock, refuse a database that holds records, write
/// every record with its `doc` made as a group makes it, and move the cluster's epoch on
/// with the change log marked trimmed, so that a replica already following this database
/// rebuilds its state from what was imported. Nothing is kept unless all of it is.
pub fn import_records(opts: PgOptions, records: Pairs) -> Result<usize, StoreError> {
    let version = records.iter().find(|(k, _)| k == super::SCHEMA_VERSION_KEY);
    super::schema_readable(version.map(|(_, v)| v.as_slice()), "the backup")?;
    let n = records.len();
    let conn = Conn::new(opts)?;
    conn.migrate()?;
    let begun = conn.begin_group()?;
    let imported = conn.import_into_empty(records, begun.epoch + 1);
    if imported.is_err() {
        conn.rollback();
    }
    imported.map(|()| n)
}

impl Conn {
    /// The body of [`import_records`], inside its transaction.
    fn import_into_empty(&self, records: Pairs, epoch: i64) -> Result<(), StoreError> {
        let held =
            self.query_i64("SELECT count(*) FROM (SELECT 1 FROM kp_records LIMIT 1) AS t")?;
        if held > 0 {
            return Err(StoreError::Io(
                "the PostgreSQL database already holds records; import only into a database \
                 no server has run on (create a new, empty one)"
                    .into(),
            ));
        }
        let mut left = records.into_iter();
        loop {
            let chunk: Vec<_> = left
                .by_ref()
                .take(IMPORT_CHUNK)
                .map(|(k, v)| (k, Some(v)))
                .collect();
            if chunk.is_empty() {
                break;
            }
            let rows = Rows::of(chunk, |_| false);
            self.with("import", async move |c: &Client, s: &Stmts| {
                rows.write(c, s, epoch).await
            })?;
        }
        // The change log as trimmed up to the import: a replica behind it rebuilds.
        let done = self.with("import", async move |c: &Client, s: &Stmts| {
            c.execute(&s.trim, &[&epoch]).await?;
            c.batch_execute("COMMIT").await
        });
        self.group_open.set(false);
        done
    }
}

/// A group's writes as the arrays its statements take: the records to upsert (with their
/// `doc`), the keys to delete, and the watched keys for the change log.
#[derive(Default)]
struct Rows {
    up_k: Vec<Vec<u8>>,
    up_v: Vec<Vec<u8>>,
    up_d: Vec<Option<String>>,
    del: Vec<Vec<u8>>,
    log: Vec<Vec<u8>>,
}

impl Rows {
    fn of(writes: Vec<(Vec<u8>, Option<Vec<u8>>)>, watched: impl Fn(&[u8]) -> bool) -> Rows {
        let mut rows = Rows::default();
        for (k, v) in writes {
            if watched(&k) {
                rows.log.push(k.clone());
            }
            match v {
                Some(v) => {
                    rows.up_d.push(json_doc(&v));
                    rows.up_k.push(k);
                    rows.up_v.push(v);
                }
                None => rows.del.push(k),
            }
        }
        rows
    }

    /// Write the rows, list the changes under `epoch` and move the cluster to it: the
    /// group's one statement.
    async fn write(&self, c: &Client, s: &Stmts, epoch: i64) -> Result<u64, tokio_postgres::Error> {
        let (k, v, d) = (&self.up_k, &self.up_v, &self.up_d);
        c.execute(&s.commit, &[k, v, d, &self.del, &epoch, &self.log])
            .await
    }
}

/// Create the tables (prepared statements need them) and run what is missing.
async fn apply_migrations(c: &Client) -> Result<Result<(), StoreError>, tokio_postgres::Error> {
    c.batch_execute(
        "CREATE TABLE IF NOT EXISTS kp_migrations (
            version integer PRIMARY KEY,
            description text NOT NULL,
            applied_at timestamptz NOT NULL DEFAULT now())",
    )
    .await?;
    let row = c
        .query_one("SELECT coalesce(max(version), 0) FROM kp_migrations", &[])
        .await?;
    let have: i32 = row.try_get(0)?;
    let known = MIGRATIONS.last().map(|m| m.0).unwrap_or(0);
    if have > known {
        return Ok(Err(StoreError::Io(format!(
            "the database's schema is at migration {have}, newer than this build knows ({known}); \
             run the karma-provider version that migrated it"
        ))));
    }
    for (version, description, sql) in MIGRATIONS.iter().filter(|m| m.0 > have) {
        c.batch_execute("BEGIN").await?;
        c.batch_execute(sql).await?;
        c.execute(
            "INSERT INTO kp_migrations (version, description) VALUES ($1, $2)",
            &[version, description],
        )
        .await?;
        c.batch_execute("COMMIT").await?;
        tracing::info!(version, description, "PostgreSQL schema migrated");
    }
    Ok(Ok(()))
}

async fn prepare(c: &Client) -> Result<Stmts, tokio_postgres::Error> {
    Ok(Stmts {
        get: c
            .prepare("SELECT value FROM kp_records WHERE key = $1")
            .await?,
        range_to: c
            .prepare(
                "SELECT key, value FROM kp_records WHERE key >= $1 AND key < $2 ORDER BY key LIMIT $3",
            )
            .await?,
        range_open: c
            .prepare("SELECT key, value FROM kp_records WHERE key >= $1 ORDER BY key LIMIT $2")
            .await?,
        commit: c
            .prepare(
                "WITH up AS (
                    INSERT INTO kp_records (key, value, doc)
                    SELECT k, v, d::jsonb FROM unnest($1::bytea[], $2::bytea[], $3::text[]) AS t(k, v, d)
                    ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value, doc = EXCLUDED.doc),
                 del AS (DELETE FROM kp_records WHERE key = ANY($4::bytea[])),
                 lg AS (INSERT INTO kp_changes (epoch, key) SELECT $5, unnest($6::bytea[]))
                 UPDATE kp_cluster SET epoch = $5 WHERE id = 1",
            )
            .await?,
        trim: c
            .prepare(
                "WITH gone AS (DELETE FROM kp_changes WHERE epoch <= $1)
                 UPDATE kp_cluster SET changes_from = $1 WHERE id = 1",
            )
            .await?,
    })
}

/// The value as `jsonb` text for operators' SQL, when it is a JSON record (objects and
/// arrays; jsonb refuses `\u0000`, so such a value is kept as bytes only).
fn json_doc(v: &[u8]) -> Option<String> {
    if !matches!(v.first(), Some(b'{' | b'[')) {
        return None;
    }
    let text = std::str::from_utf8(v).ok()?;
    if text.contains("\\u0000") || serde_json::from_str::<serde::de::IgnoredAny>(text).is_err() {
        return None;
    }
    Some(text.to_owned())
}

/// The server's message and code when it sent one (the driver's own text is terse).
fn pg_error(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => format!("{} ({})", db.message(), db.code().code()),
        None => e.to_string(),
    }
}

fn limit_i64(limit: usize) -> i64 {
    i64::try_from(limit).unwrap_or(i64::MAX)
}

impl super::Backend for Conn {
    fn get(&self, k: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        if let Some(v) = self.cache.borrow().get(k) {
            return Ok(v.clone());
        }
        let key = k.to_vec();
        let v = self.with("read", async move |c: &Client, s: &Stmts| {
            match c.query_opt(&s.get, &[&key]).await? {
                Some(row) => row.try_get::<_, Vec<u8>>(0).map(Some),
                None => Ok(None),
            }
        })?;
        self.remember(k.to_vec(), v.clone());
        Ok(v)
    }

    fn range(&self, lo: &[u8], hi: Option<&[u8]>, limit: usize) -> Result<Pairs, StoreError> {
        if limit == 0 || hi.is_some_and(|h| lo >= h) {
            return Ok(Vec::new());
        }
        let (lo, hi, n) = (lo.to_vec(), hi.map(<[u8]>::to_vec), limit_i64(limit));
        self.with("read", async move |c: &Client, s: &Stmts| {
            let rows = match &hi {
                Some(hi) => c.query(&s.range_to, &[&lo, hi, &n]).await?,
                None => c.query(&s.range_open, &[&lo, &n]).await?,
            };
            rows.iter()
                .map(|r| Ok((r.try_get::<_, Vec<u8>>(0)?, r.try_get::<_, Vec<u8>>(1)?)))
                .collect()
        })
    }
}

/// A database made for one run (`karma-provider bench` on PostgreSQL) on the server `url`
/// names, dropped (with its connections) when this goes.
pub struct TempDatabase {
    admin: String,
    name: String,
    /// Its connection URL.
    pub url: String,
}

impl TempDatabase {
    pub fn create(admin_url: &str) -> Result<TempDatabase, String> {
        let name = format!("kp_bench_{}", std::process::id());
        let cfg: tokio_postgres::Config = admin_url
            .parse()
            .map_err(|_| "--database-url is not a PostgreSQL connection string".to_string())?;
        let url = match cfg.get_dbname() {
            Some(db) if admin_url.contains(&format!("/{db}")) => {
                admin_url.replacen(&format!("/{db}"), &format!("/{name}"), 1)
            }
            _ => {
                return Err(
                    "--database-url must be a URL naming a database (postgres://…/db)".into(),
                )
            }
        };
        admin_sql(
            admin_url,
            &format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"),
        )?;
        admin_sql(admin_url, &format!("CREATE DATABASE {name}"))?;
        Ok(TempDatabase {
            admin: admin_url.to_owned(),
            name,
            url,
        })
    }
}

impl Drop for TempDatabase {
    fn drop(&mut self) {
        let sql = format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name);
        if let Err(e) = admin_sql(&self.admin, &sql) {
            eprintln!("could not drop the run's database {}: {e}", self.name);
        }
    }
}

/// Run `sql` on a connection of its own to `url` (on a thread of its own: the caller may
/// be inside a runtime).
fn admin_sql(url: &str, sql: &str) -> Result<(), String> {
    let (url, sql) = (url.to_owned(), sql.to_owned());
    std::thread::spawn(move || {
        let conn = Conn::new(PgOptions {
            url,
            connect_timeout: Duration::from_secs(5),
            query_timeout: Duration::from_secs(60),
        })
        .map_err(|e| e.to_string())?;
        conn.plain(&sql).map_err(|e| e.to_string())
    })
    .join()
    .map_err(|_| "the database thread panicked".to_string())?
}

#[cfg(test)]
mod tests {
    use super::json_doc;

    #[test]
    fn the_group_opening_takes_the_writer_lock_and_reads_the_id_counter() {
        assert!(
            super::BEGIN_SQL.contains(&format!("pg_advisory_xact_lock({})", super::WRITER_LOCK))
        );
        let key = format!("'\\x{}'", hex::encode(crate::store::NEXT_ID_KEY));
        assert!(super::BEGIN_SQL.contains(&key), "{key}");
    }

    #[test]
    fn only_json_records_get_a_document() {
        assert_eq!(json_doc(br#"{"a":1}"#).as_deref(), Some(r#"{"a":1}"#));
        assert_eq!(json_doc(b"[1,2]").as_deref(), Some("[1,2]"));
        assert_eq!(json_doc(&7u64.to_be_bytes()), None);
        assert_eq!(json_doc(b"{not json"), None);
        assert_eq!(json_doc(br#"{"a":"\u0000"}"#), None);
    }
}
