//! The writer loop on the PostgreSQL engine (see `pg.rs` for the model): the same jobs,
//! overlay and journal as the sled writer in `mod.rs`, with a group's begin (transaction,
//! writer lock, catch-up of the in-memory state) and its commit done by the database.

use std::cell::Cell;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tokio::sync::mpsc;

use super::pg::{Begun, Conn, PgOptions};
use super::{run_job, Backend, Done, Journal, Msg, Pairs, StoreError, StoreStats, Txn, MAX_GROUP};

/// The writer's in-memory state as one replica among several: which records it mirrors,
/// and how it follows another replica's change to one of them.
pub trait Replica: Journal {
    /// Whether the state mirrors the record under `key` (a change to it by one replica
    /// must reach the others' memory).
    fn watched(key: &[u8]) -> bool;
    /// Other replicas changed (or deleted) the records under `keys`: bring memory in line
    /// with what the store now holds (read through `txn`).
    fn observe(&mut self, txn: &mut Txn<'_>, keys: &[Vec<u8>]) -> Result<(), StoreError>;
}

/// How long an idle writer waits before it checks that the database still answers.
const IDLE_PING: Duration = Duration::from_secs(1);

/// Where this replica's memory stands against the cluster.
struct Follow {
    /// The cluster epoch the in-memory state reflects.
    epoch: i64,
}

/// What the PostgreSQL writer shares with the request threads.
pub(super) struct PgShared<'a> {
    pub stats: &'a StoreStats,
    /// Whether the database answered the last time it was asked (`/readyz`).
    pub reachable: &'a AtomicBool,
}

/// Open the engine on this thread: connect (which migrates), build the state with `init`
/// inside a first group, and hand back what the loop needs.
pub(super) fn start<S: Replica>(
    opts: PgOptions,
    init: &dyn Fn(&mut Txn<'_>) -> Result<S, StoreError>,
) -> Result<(Conn, i64, S), StoreError> {
    let conn = Conn::new(opts)?;
    conn.migrate().map_err(|e| match e {
        StoreError::Unavailable(m) => StoreError::Io(m),
        e => e,
    })?;
    let Begun { epoch, next_id, .. } = conn.begin_group()?;
    let mut txn = new_txn(&conn);
    txn.next = next_id_of(next_id)?;
    check_schema(&txn)?;
    let state = init(&mut txn)?;
    let writes = std::mem::take(&mut txn.overlay);
    if writes.is_empty() {
        conn.end_group()?;
        return Ok((conn, epoch, state));
    }
    let next = epoch + 1;
    conn.commit_group(writes.into_iter().collect(), S::watched, next)?;
    Ok((conn, next, state))
}

fn new_txn(db: &dyn Backend) -> Txn<'_> {
    Txn {
        db,
        overlay: BTreeMap::new(),
        undo: Vec::new(),
        next: 1,
        fail_flush: false,
        delay_flush: None,
        reads: Cell::new(0),
        writes: 0,
    }
}

/// The id counter as a group found it stored (1 on a new database). Read at every group:
/// another replica may have drawn ids since.
fn next_id_of(stored: Option<Vec<u8>>) -> Result<u64, StoreError> {
    match stored {
        None => Ok(1),
        Some(v) => super::decode_u64(&v).ok_or_else(|| {
            StoreError::Io("the database's meta/next_id is not a counter; ids would repeat".into())
        }),
    }
}

/// Refuse records of a newer schema; mark a new database with this build's.
fn check_schema(txn: &Txn<'_>) -> Result<(), StoreError> {
    let v = txn.db.get(super::SCHEMA_VERSION_KEY)?;
    super::schema_readable(v.as_deref(), "the PostgreSQL database")?;
    Ok(())
}

/// Run groups until the channel closes or a close message comes.
pub(super) fn writer_loop<S: Replica>(
    conn: &Conn,
    epoch: i64,
    mut state: S,
    init: &dyn Fn(&mut Txn<'_>) -> Result<S, StoreError>,
    mut rx: mpsc::Receiver<Msg<S>>,
    shared: PgShared<'_>,
) {
    let mut follow = Follow { epoch };
    let mut msgs = Vec::with_capacity(MAX_GROUP);
    loop {
        let first = match conn.block_on_for(IDLE_PING, rx.recv()) {
            Some(Some(m)) => m,
            Some(None) => return,
            None => {
                let ok = conn.ping();
                shared.reachable.store(ok, Ordering::Relaxed);
                continue;
            }
        };
        msgs.push(first);
        while msgs.len() < MAX_GROUP {
            match rx.try_recv() {
                Ok(m) => msgs.push(m),
                Err(_) => break,
            }
        }
        let mut close = None;
        let mut jobs = Vec::with_capacity(msgs.len());
        for m in msgs.drain(..) {
            match m {
                Msg::Close(c) => close = Some(c),
                Msg::Job(j) => jobs.push(j),
            }
        }
        if !jobs.is_empty() {
            let ok = group(conn, &mut follow, &mut state, init, jobs, shared.stats);
            shared.reachable.store(ok, Ordering::Relaxed);
        }
        if let Some(c) = close {
            let _ = c.send(());
            return;
        }
    }
}

/// One group: begin, catch up, run the jobs, commit, answer. `false` when the database
/// failed it (every caller got 503 and nothing of it was kept).
fn group<S: Replica>(
    conn: &Conn,
    follow: &mut Follow,
    state: &mut S,
    init: &dyn Fn(&mut Txn<'_>) -> Result<S, StoreError>,
    jobs: Vec<super::Job<S>>,
    stats: &StoreStats,
) -> bool {
    let mut txn = new_txn(conn);
    let mut dones: Vec<Done> = Vec::with_capacity(jobs.len());
    let res = match begin(conn, follow, state, init, &mut txn) {
        Ok(epoch) => {
            for job in jobs {
                run_job(job, &mut txn, state, &mut dones, stats);
            }
            stats.groups.fetch_add(1, Ordering::Relaxed);
            stats.jobs.fetch_add(dones.len() as u64, Ordering::Relaxed);
            finish(conn, &mut txn, epoch, S::watched, stats)
        }
        Err(e) => {
            // The group never began. Its jobs still run, on a store that answers only this
            // error, and are undone below as after a failed commit: each caller hears the
            // error (503), where a job dropped unrun would answer 500.
            let down = Down(e.clone());
            let mut txn = new_txn(&down);
            for job in jobs {
                run_job(job, &mut txn, state, &mut dones, stats);
            }
            Err(e)
        }
    };
    let ok = match &res {
        Ok(epoch) => {
            follow.epoch = *epoch;
            state.group_durable();
            true
        }
        Err(e) => {
            // The transaction did not commit (or its COMMIT's fate is unknown: the next
            // group's catch-up settles that from the epoch). Memory goes back to the
            // epoch it followed.
            conn.rollback();
            state.undo_group();
            tracing::warn!(error = %e, "a group failed on PostgreSQL; its callers get 503");
            false
        }
    };
    for d in dones {
        d(res.clone().map(|_| ()));
    }
    ok
}

/// The records while a group could not begin: every read fails with the error it met.
struct Down(StoreError);

impl Backend for Down {
    fn get(&self, _: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        Err(self.0.clone())
    }

    fn range(&self, _: &[u8], _: Option<&[u8]>, _: usize) -> Result<Pairs, StoreError> {
        Err(self.0.clone())
    }
}

/// Open the group's transaction under the writer lock and bring memory up to the cluster's
/// epoch; the epoch the group starts from.
fn begin<S: Replica>(
    conn: &Conn,
    follow: &mut Follow,
    state: &mut S,
    init: &dyn Fn(&mut Txn<'_>) -> Result<S, StoreError>,
    txn: &mut Txn<'_>,
) -> Result<i64, StoreError> {
    let Begun {
        epoch,
        changes_from,
        next_id,
    } = conn.begin_group()?;
    conn.follow(epoch == follow.epoch);
    txn.next = next_id_of(next_id)?;
    if epoch != follow.epoch {
        if follow.epoch < changes_from || follow.epoch > epoch {
            // Too far behind for the change log (or the database was replaced): rebuild.
            *state = init(txn)?;
            tracing::info!(
                from = follow.epoch,
                to = epoch,
                "state rebuilt from the database"
            );
        } else {
            let keys = conn.changed_since(follow.epoch)?;
            state.observe(txn, &keys)?;
        }
        // What was caught up is the database's, not this group's: it is never undone.
        state.group_durable();
        follow.epoch = epoch;
    }
    Ok(epoch)
}

/// Commit the group's writes (or just end it when it wrote nothing); the epoch after it.
fn finish(
    conn: &Conn,
    txn: &mut Txn<'_>,
    epoch: i64,
    watched: fn(&[u8]) -> bool,
    stats: &StoreStats,
) -> Result<i64, StoreError> {
    let fail = std::mem::take(&mut txn.fail_flush);
    let writes = std::mem::take(&mut txn.overlay);
    if fail {
        return Err(StoreError::Io(super::INJECTED_FLUSH_FAILURE.into()));
    }
    if writes.is_empty() {
        conn.end_group()?;
        return Ok(epoch);
    }
    stats.flushes.fetch_add(1, Ordering::Relaxed);
    let next = epoch + 1;
    conn.commit_group(writes.into_iter().collect(), watched, next)?;
    Ok(next)
}
