//! The only module that touches sled. Everything that changes state goes through one
//! writer thread: it runs each job against an overlay of the store (so a job sees the
//! writes of the jobs before it in the same group), applies the whole group as one sled
//! `Batch`, flushes, fsyncs the data file, and only then releases the answers. That gives
//! atomic effects (a job's effect and its idempotency record land together or not at
//! all), a total order (no two decisions race), and group commit (one flush for every job
//! that arrived while the previous flush ran).
//!
//! The writer also owns an in-memory state `S` (indexes the domain rebuilds at start,
//! such as live holds), which keeps an undo journal ([`Journal`]). A job's effects — its
//! writes and its changes to `S` — exist only if it returns `Ok` and its group is durable:
//! a job that returns `Err` or panics has its writes and its state changes undone before
//! the next job runs; a group whose flush fails has all its state changes undone, and the
//! store then refuses every further job (fail-stop) until a restart rebuilds from disk.
//!
//! Durability: after sled's flush the writer fsyncs sled's log file (failing the group when
//! it cannot even be opened), and the files sled spills large log messages to (`blobs/`,
//! which sled writes without fsync) with their directory.

pub mod backend;
pub mod codeindex;
pub mod keys;
pub mod pg;
mod pg_writer;
pub mod read;

pub use backend::Backend;
pub use codeindex::CodeIndex;
pub use keys::{key, last, prefix};
pub use pg::PgOptions;
pub use pg_writer::Replica;
pub use read::{InFlight, Read, ReadView};

use std::cell::Cell;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::ffi::OsString;
use std::fs::File;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use tokio::sync::{mpsc, oneshot};

/// Largest number of jobs applied under one flush.
const MAX_GROUP: usize = 512;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreError {
    /// A flush failed earlier; the store refuses writes until restarted.
    Failed,
    /// The store is shutting down.
    Closed,
    /// The job panicked; nothing it wrote was kept.
    JobPanicked,
    Io(String),
    /// The database cannot be reached or did not answer in time (PostgreSQL engine):
    /// nothing of the group was kept; the caller may retry (503 with `Retry-After`).
    Unavailable(String),
}

/// A fault a test arms on a job (see [`Txn::inject_flush_failure`]).
const INJECTED_FLUSH_FAILURE: &str = "injected flush failure (test fault)";

impl std::fmt::Display for StoreError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StoreError::Failed => write!(
                f,
                "the store failed an earlier flush and is read-only until restart"
            ),
            StoreError::Closed => write!(f, "the store is closed"),
            StoreError::JobPanicked => {
                write!(f, "internal error while deciding; nothing was written")
            }
            StoreError::Io(e) => write!(f, "storage error: {e}"),
            StoreError::Unavailable(e) => write!(f, "storage unavailable: {e}"),
        }
    }
}

impl std::error::Error for StoreError {}

/// A key and the overlay entry it had before (absent when it had none).
type Undo = (Vec<u8>, Option<Option<Vec<u8>>>);
/// A key and its value.
pub type KeyValue = (Vec<u8>, Vec<u8>);
/// Key-value pairs, in key order.
pub type Pairs = Vec<KeyValue>;

type Done = Box<dyn FnOnce(Result<(), StoreError>) + Send>;
/// A job returns whether it succeeded, and what answers its caller once that is decided.
type Job<S> = Box<dyn FnOnce(&mut Txn<'_>, &mut S) -> (bool, Done) + Send>;

/// The writer's in-memory state keeps an undo journal so that it moves in step with the
/// store. Every change a job makes to it is recorded (by the state's own mutators, the
/// only way to change it) until the writer says what became of the job and its group.
pub trait Journal {
    /// The job just run failed (returned `Err` or panicked): undo its changes.
    fn undo_job(&mut self);
    /// The job just run succeeded: its changes join its group's.
    fn keep_job(&mut self);
    /// The group's flush failed: undo the changes of every job in it.
    fn undo_group(&mut self);
    /// The group is durable: forget its undo entries (and publish what is published).
    fn group_durable(&mut self);
}

/// A state without memory of its own (tests of the store).
impl Journal for () {
    fn undo_job(&mut self) {}
    fn keep_job(&mut self) {}
    fn undo_group(&mut self) {}
    fn group_durable(&mut self) {}
}

/// The version of the stored record formats (see `service::records`). Bump it when a
/// stored record changes so that an older build would misread it; a build refuses to open
/// a data directory marked with a newer version than its own.
/// Version 2 (issue 13): a member's credit lots are records of their own (`llot`, with
/// the `llexp` / `llpen` indexes) and the member record keeps totals; a store of version
/// 1 is migrated at start (`service::migrate`).
/// Version 3 (issue 13 §4): bulk codes are kept many to a record, in buckets by the hash of
/// their match key (`bcb`), instead of one to a record (`bcode`); migrated at start.
/// Version 4 (issue 13 §4): a member's first ledger entry and the lot it made are kept in
/// the member record (`first_entry`, `first_lot`), not as `lled` / `llot` records of their
/// own; migrated at start. An older build would not see them.
pub const SCHEMA_VERSION: u64 = 4;
/// Where the data directory's record schema version is kept (8 bytes, big-endian).
pub const SCHEMA_VERSION_KEY: &[u8] = b"meta\x1fschema_version";

enum Msg<S> {
    Job(Job<S>),
    Close(oneshot::Sender<()>),
}

/// Open options for the store.
#[derive(Debug, Clone)]
pub struct StoreOptions {
    pub path: PathBuf,
    pub cache_capacity_bytes: u64,
}

/// Counters the writer publishes, for `/metrics`.
#[derive(Debug, Default)]
pub struct StoreStats {
    pub groups: AtomicU64,
    pub jobs: AtomicU64,
    pub flushes: AtomicU64,
    /// Jobs that failed (`Err` or panic) and were undone.
    pub jobs_undone: AtomicU64,
    /// Blob files (sled's spilled large messages) fsynced after a flush.
    pub blob_files_synced: AtomicU64,
    /// Records jobs read (a key read, or each record a range read returned, plus one per
    /// range) and wrote (a put or delete), counted per job: the cost of a call.
    pub records_read: AtomicU64,
    pub records_written: AtomicU64,
    /// Reads served beside the writer, and those that met a group in flight and ran on
    /// the writer instead.
    pub reads_beside: AtomicU64,
    pub reads_deferred: AtomicU64,
}

pub struct Store<S> {
    tx: mpsc::Sender<Msg<S>>,
    failed: Arc<AtomicBool>,
    stats: Arc<StoreStats>,
    thread: Mutex<Option<std::thread::JoinHandle<()>>>,
    /// For the code index's background rebuilds only (every write goes through the writer);
    /// taken at [`Store::close`] so the files close with the writer.
    /// Also the reads beside the writer ([`Store::read`]).
    db: RwLock<Option<sled::Db>>,
    /// The keys of the group being made durable (see `read.rs`).
    inflight: Arc<InFlight>,
    /// Tells running index rebuilds to give up (at close).
    cancel_rebuilds: Arc<AtomicBool>,
    /// How long a caller waits for its job (PostgreSQL: the database may stall; sled: no
    /// limit, a local disk either answers or fails the store).
    deadline: Option<std::time::Duration>,
    /// Whether the engine's database answered last time (always on sled; PostgreSQL: the
    /// last group or idle ping succeeded). `/readyz` fails while it is off.
    reachable: Arc<AtomicBool>,
    codes: Arc<CodeIndex>,
    /// Tenants whose code index is being rebuilt; `true`: rebuild once more when done.
    rebuilding: Arc<Mutex<HashMap<String, bool>>>,
    /// The rebuild threads, joined at [`Store::close`]: each holds a handle on the store's
    /// files until it has ended, and a new process cannot open them before.
    rebuilders: Mutex<Vec<std::thread::JoinHandle<()>>>,
}

/// Read and write access inside a writer job. Reads see this group's earlier writes.
pub struct Txn<'a> {
    db: &'a dyn Backend,
    overlay: BTreeMap<Vec<u8>, Option<Vec<u8>>>,
    /// Previous overlay entries of keys the current job touched, to undo a panicked job.
    undo: Vec<Undo>,
    /// The next id [`Txn::next_id`] hands out.
    next: u64,
    /// Set by [`Txn::inject_flush_failure`]: the group's commit fails without writing.
    fail_flush: bool,
    /// Set by [`Txn::inject_flush_delay`]: the group waits this long between applying its
    /// batch and flushing it.
    delay_flush: Option<std::time::Duration>,
    /// Records read and written by the current job ([`StoreStats::records_read`]).
    reads: Cell<u64>,
    writes: u64,
}

pub(crate) const NEXT_ID_KEY: &[u8] = b"meta\x1fnext_id";

impl Txn<'_> {
    pub fn get(&self, k: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        self.reads.set(self.reads.get() + 1);
        if let Some(v) = self.overlay.get(k) {
            return Ok(v.clone());
        }
        self.db.get(k)
    }

    pub fn put(&mut self, k: Vec<u8>, v: Vec<u8>) {
        self.writes += 1;
        let prev = self.overlay.insert(k.clone(), Some(v));
        self.undo.push((k, prev));
    }

    pub fn delete(&mut self, k: Vec<u8>) {
        self.writes += 1;
        let prev = self.overlay.insert(k.clone(), None);
        self.undo.push((k, prev));
    }

    pub fn get_u64(&self, k: &[u8]) -> Result<u64, StoreError> {
        Ok(self.get_u64_opt(k)?.unwrap_or(0))
    }

    /// Like [`Txn::get_u64`], telling a missing key from zero.
    pub fn get_u64_opt(&self, k: &[u8]) -> Result<Option<u64>, StoreError> {
        Ok(self.get(k)?.and_then(|v| decode_u64(&v)))
    }

    pub fn put_u64(&mut self, k: Vec<u8>, v: u64) {
        self.put(k, v.to_be_bytes().to_vec());
    }

    pub fn get_json<T: serde::de::DeserializeOwned>(
        &self,
        k: &[u8],
    ) -> Result<Option<T>, StoreError> {
        match self.get(k)? {
            None => Ok(None),
            Some(v) => serde_json::from_slice(&v)
                .map(Some)
                .map_err(|e| StoreError::Io(format!("corrupt record: {e}"))),
        }
    }

    pub fn put_json<T: serde::Serialize>(&mut self, k: Vec<u8>, v: &T) {
        // Serialising our own record types cannot fail (no maps with non-string keys).
        let bytes = serde_json::to_vec(v).unwrap_or_default();
        self.put(k, bytes);
    }

    /// Every (key, value) under `prefix`, in key order, including this group's writes.
    pub fn scan_prefix(&self, prefix: &[u8]) -> Result<Pairs, StoreError> {
        let end = backend::prefix_end(prefix);
        let mut out: BTreeMap<Vec<u8>, Vec<u8>> = self
            .db
            .range(prefix, end.as_deref(), usize::MAX)?
            .into_iter()
            .collect();
        for (k, v) in &self.overlay {
            if k.starts_with(prefix) {
                match v {
                    Some(v) => out.insert(k.clone(), v.clone()),
                    None => out.remove(k),
                };
            }
        }
        Ok(out.into_iter().collect())
    }

    /// At most `limit` stored pairs in `[lo, hi)` that this group has not deleted (with
    /// this group's values where it rewrote them), in key order; reads further when
    /// deletions thin a page out.
    fn stored_live(&self, lo: &[u8], hi: Option<&[u8]>, limit: usize) -> Result<Pairs, StoreError> {
        let mut out = Vec::new();
        let mut from = lo.to_vec();
        loop {
            let want = limit.saturating_sub(out.len());
            let page = self.db.range(&from, hi, want)?;
            let full = page.len() >= want;
            let Some(last) = page.last().map(|(k, _)| k.clone()) else {
                return Ok(out);
            };
            for (k, v) in page {
                match self.overlay.get(&k) {
                    Some(None) => {}
                    Some(Some(nv)) => {
                        let nv = nv.clone();
                        out.push((k, nv));
                    }
                    None => out.push((k, v)),
                }
            }
            if !full || out.len() >= limit {
                return Ok(out);
            }
            from = last;
            from.push(0);
        }
    }

    /// At most about `limit` (key, value) pairs under `prefix` after the key `after` (or
    /// from the start), in key order, including this group's writes; and the cursor to
    /// pass as `after` for the next page (`None`: the range is done). A long reader (an
    /// export, a listing, a janitor) runs as one such page per writer job, so commits get
    /// the writer between pages.
    pub fn scan_page(
        &self,
        prefix: &[u8],
        after: Option<&[u8]>,
        limit: usize,
    ) -> Result<(Pairs, Option<Vec<u8>>), StoreError> {
        let start = match after {
            Some(a) => {
                let mut s = a.to_vec();
                s.push(0);
                s
            }
            None => prefix.to_vec(),
        };
        let end = backend::prefix_end(prefix);
        let page = self.db.range(&start, end.as_deref(), limit.max(1))?;
        let last = page.last().map(|(k, _)| k.clone());
        let mut out: BTreeMap<Vec<u8>, Vec<u8>> = page.into_iter().collect();
        // The page covers (after, last]; with fewer than `limit` keys, the rest of the range.
        let full = out.len() >= limit.max(1);
        let bound = if full { last.clone() } else { None };
        for (k, v) in &self.overlay {
            let in_page = k.starts_with(prefix)
                && k.as_slice() >= start.as_slice()
                && bound.as_ref().is_none_or(|b| k <= b);
            if in_page {
                match v {
                    Some(v) => out.insert(k.clone(), v.clone()),
                    None => out.remove(k),
                };
            }
        }
        Ok((out.into_iter().collect(), bound))
    }

    /// The first (key, value) under `prefix` in key order, including this group's writes,
    /// without reading the whole range.
    pub fn first_with_prefix(&self, prefix: &[u8]) -> Result<Option<KeyValue>, StoreError> {
        let end = backend::prefix_end(prefix);
        let from_db = self
            .stored_live(prefix, end.as_deref(), 1)?
            .into_iter()
            .next();
        let from_overlay = self
            .overlay
            .iter()
            .filter(|(k, v)| k.starts_with(prefix) && v.is_some())
            .min_by(|a, b| a.0.cmp(b.0))
            .map(|(k, v)| (k.clone(), v.clone().unwrap_or_default()));
        Ok(match (from_db, from_overlay) {
            (Some(a), Some(b)) => Some(if b.0 < a.0 { b } else { a }),
            (a, b) => a.or(b),
        })
    }

    /// A durable, unique, increasing number. The counter is a record of its own
    /// (`meta/next_id`), written with the job's other writes, so it travels with an export.
    pub fn next_id(&mut self) -> Result<u64, StoreError> {
        let id = self.next;
        self.next += 1;
        self.put(NEXT_ID_KEY.to_vec(), self.next.to_be_bytes().to_vec());
        Ok(id)
    }

    /// Test fault: make this group's flush fail (nothing of the group reaches the store).
    #[doc(hidden)]
    pub fn inject_flush_failure(&mut self) {
        self.fail_flush = true;
    }

    /// Test fault: hold this group for `d` between applying its batch to sled and
    /// flushing it (the window a read beside the writer must not see into).
    #[doc(hidden)]
    pub fn inject_flush_delay(&mut self, d: std::time::Duration) {
        self.delay_flush = Some(d);
    }

    /// A point in the current job to roll its writes back to ([`Txn::rollback_to`]).
    pub fn savepoint(&self) -> usize {
        self.undo.len()
    }

    /// Undo the current job's writes made since `sp` (a refusal after a ledger change
    /// had begun leaves none of it).
    pub fn rollback_to(&mut self, sp: usize) {
        let mut drew_ids = false;
        while self.undo.len() > sp {
            let Some((k, prev)) = self.undo.pop() else {
                break;
            };
            drew_ids |= k == NEXT_ID_KEY;
            match prev {
                Some(p) => self.overlay.insert(k, p),
                None => self.overlay.remove(&k),
            };
        }
        if drew_ids {
            // Ids drawn since `sp` are not handed out again (a gap, never a repeat).
            self.put(NEXT_ID_KEY.to_vec(), self.next.to_be_bytes().to_vec());
        }
    }

    /// This job's record counts, reset.
    fn take_counts(&mut self) -> (u64, u64) {
        (self.reads.take(), std::mem::take(&mut self.writes))
    }

    fn rollback_job(&mut self) {
        while let Some((k, prev)) = self.undo.pop() {
            match prev {
                Some(p) => self.overlay.insert(k, p),
                None => self.overlay.remove(&k),
            };
        }
    }
}

impl Read for Txn<'_> {
    fn get(&self, k: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        Txn::get(self, k)
    }

    /// Including this group's writes; reads only the records it returns (and those this
    /// group deleted in the range).
    fn range(&self, lo: &[u8], hi: &[u8], limit: usize) -> Result<Pairs, StoreError> {
        if lo >= hi {
            return Ok(Vec::new());
        }
        let mut out: BTreeMap<Vec<u8>, Vec<u8>> =
            self.stored_live(lo, Some(hi), limit)?.into_iter().collect();
        for (k, v) in self
            .overlay
            .range::<[u8], _>((std::ops::Bound::Included(lo), std::ops::Bound::Excluded(hi)))
        {
            if let Some(v) = v {
                out.insert(k.clone(), v.clone());
            }
        }
        let pairs: Pairs = out.into_iter().take(limit).collect();
        self.reads.set(self.reads.get() + 1 + pairs.len() as u64);
        Ok(pairs)
    }
}

impl<S: Journal + Send + 'static> Store<S> {
    /// Open (or create) the store and start its writer. `init` builds the writer's
    /// in-memory state from what is on disk.
    pub fn open(
        opts: &StoreOptions,
        init: impl FnOnce(&mut Txn<'_>) -> Result<S, StoreError> + Send + 'static,
    ) -> Result<Store<S>, StoreError> {
        let db = create_and_open(opts)?;
        check_schema(&db, &opts.path)?;
        let mut data_files = DataFiles::new(&opts.path)?;
        let first_id = first_id(&db, &opts.path)?;
        let db_for_index = db.clone();
        let codes = Arc::new(CodeIndex::open(&opts.path));
        let failed = Arc::new(AtomicBool::new(false));
        let stats = Arc::new(StoreStats::default());
        let (tx, rx) = mpsc::channel::<Msg<S>>(4096);
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let f2 = failed.clone();
        let s2 = stats.clone();
        let inflight = Arc::new(InFlight::default());
        let in2 = inflight.clone();
        let thread = std::thread::Builder::new()
            .name("kp-store-writer".into())
            .spawn(move || {
                let mut txn = Txn {
                    db: &db,
                    overlay: BTreeMap::new(),
                    undo: Vec::new(),
                    next: first_id,
                    fail_flush: false,
                    delay_flush: None,
                    reads: Cell::new(0),
                    writes: 0,
                };
                let state = match init(&mut txn) {
                    Ok(s) => s,
                    Err(e) => {
                        let _ = ready_tx.send(Err(e));
                        return;
                    }
                };
                let first = commit(&db, &mut data_files, &mut txn, &s2, &in2);
                in2.clear();
                let _ = ready_tx.send(first);
                let shared = Shared {
                    failed: &f2,
                    stats: &s2,
                    inflight: &in2,
                };
                writer_loop(&db, &mut data_files, txn, state, rx, shared);
            })
            .map_err(|e| StoreError::Io(e.to_string()))?;
        let thread = started(thread, &ready_rx)?;
        Ok(Store {
            tx,
            failed,
            stats,
            thread: Mutex::new(Some(thread)),
            db: RwLock::new(Some(db_for_index)),
            inflight,
            cancel_rebuilds: Arc::new(AtomicBool::new(false)),
            reachable: Arc::new(AtomicBool::new(true)),
            deadline: None,
            codes,
            rebuilding: Arc::new(Mutex::new(HashMap::new())),
            rebuilders: Mutex::new(Vec::new()),
        })
    }

    /// Open the PostgreSQL engine (see `pg.rs`): connect and migrate, build the writer's
    /// state with `init` in a first group, and start the writer. `init` runs again whenever
    /// this replica falls too far behind the others to catch up from the change log.
    pub fn open_pg(
        opts: PgOptions,
        init: impl Fn(&mut Txn<'_>) -> Result<S, StoreError> + Send + 'static,
    ) -> Result<Store<S>, StoreError>
    where
        S: Replica,
    {
        let stats = Arc::new(StoreStats::default());
        let reachable = Arc::new(AtomicBool::new(true));
        let deadline = Some(opts.connect_timeout + 2 * opts.query_timeout);
        let (tx, rx) = mpsc::channel::<Msg<S>>(4096);
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let (s2, r2) = (stats.clone(), reachable.clone());
        let thread = std::thread::Builder::new()
            .name("kp-store-writer".into())
            .spawn(move || {
                let (conn, epoch, state) = match pg_writer::start(opts, &init) {
                    Ok(x) => x,
                    Err(e) => {
                        let _ = ready_tx.send(Err(e));
                        return;
                    }
                };
                let _ = ready_tx.send(Ok(()));
                let shared = pg_writer::PgShared {
                    stats: &s2,
                    reachable: &r2,
                };
                pg_writer::writer_loop(&conn, epoch, state, &init, rx, shared);
            })
            .map_err(|e| StoreError::Io(e.to_string()))?;
        let thread = started(thread, &ready_rx)?;
        Ok(Store {
            tx,
            failed: Arc::new(AtomicBool::new(false)),
            stats,
            thread: Mutex::new(Some(thread)),
            db: RwLock::new(None),
            inflight: Arc::new(InFlight::default()),
            cancel_rebuilds: Arc::new(AtomicBool::new(false)),
            reachable,
            deadline,
            codes: Arc::new(CodeIndex::disabled()),
            rebuilding: Arc::new(Mutex::new(HashMap::new())),
            rebuilders: Mutex::new(Vec::new()),
        })
    }

    /// The bulk-code index, for lookups on the request threads.
    pub fn code_index(&self) -> &CodeIndex {
        &self.codes
    }

    /// Bring `tenant`'s code index up to date in the background when it is missing (and the
    /// tenant has records under `prefix`) or older than the generation stored under
    /// `gen_key`. At most one rebuild per tenant runs; a request during one queues one more.
    /// Until it is done the old file (or none) keeps serving: it is a hint, never needed.
    pub fn refresh_code_index(
        &self,
        tenant: &str,
        prefix: Vec<u8>,
        gen_key: Vec<u8>,
        entries: IndexEntries,
    ) {
        let Some(db) = self.db.read().unwrap_or_else(|e| e.into_inner()).clone() else {
            return;
        };
        {
            let mut r = self.rebuilding.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(again) = r.get_mut(tenant) {
                *again = true;
                return;
            }
            r.insert(tenant.to_owned(), false);
        }
        let (codes, rebuilding) = (self.codes.clone(), self.rebuilding.clone());
        let cancel = self.cancel_rebuilds.clone();
        let name = tenant.to_owned();
        let spawned = std::thread::Builder::new()
            .name("kp-code-index".into())
            .spawn(move || loop {
                let source = (prefix.as_slice(), gen_key.as_slice(), entries);
                if let Err(e) = refresh_index(&db, &codes, &name, source, &cancel) {
                    tracing::warn!(tenant = %name, error = %e, "code index rebuild failed; codes are looked up in the store");
                }
                let mut r = rebuilding.lock().unwrap_or_else(|e| e.into_inner());
                match r.get_mut(&name) {
                    Some(again) if *again && !cancel.load(Ordering::Relaxed) => *again = false,
                    _ => {
                        r.remove(&name);
                        return;
                    }
                }
            });
        match spawned {
            Ok(h) => {
                let mut hs = self.rebuilders.lock().unwrap_or_else(|e| e.into_inner());
                hs.retain(|h| !h.is_finished());
                hs.push(h);
            }
            Err(_) => {
                self.rebuilding
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .remove(tenant);
            }
        }
    }

    /// Run `f` on the writer. An `Ok` comes back once everything it did is durable; on
    /// `Err` (or a panic) nothing it wrote or changed in the state remains.
    pub async fn run<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Txn<'_>, &mut S) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        if self.failed.load(Ordering::Relaxed) {
            return Err(StoreError::Failed);
        }
        let (otx, orx) = oneshot::channel();
        let job: Job<S> = Box::new(move |txn, s| {
            // Caught here, not only in the writer, so that the answer channel survives a
            // panic and the caller hears of it only once the job has been undone.
            let out = match catch_unwind(AssertUnwindSafe(|| f(txn, s))) {
                Ok(out) => out,
                Err(_) => {
                    tracing::error!(
                        "a store job panicked; its writes and state changes are undone"
                    );
                    Err(StoreError::JobPanicked)
                }
            };
            let ok = out.is_ok();
            let done: Done = Box::new(move |res: Result<(), StoreError>| {
                let _ = otx.send(res.and(out));
            });
            (ok, done)
        });
        self.tx
            .send(Msg::Job(job))
            .await
            .map_err(|_| StoreError::Closed)?;
        let answer = match self.deadline {
            None => orx.await,
            Some(d) => match tokio::time::timeout(d, orx).await {
                Ok(a) => a,
                // The caller hears 503 and retries with the same transaction id; should the
                // job still commit, its idempotency record answers that retry.
                Err(_) => {
                    return Err(StoreError::Unavailable(format!(
                        "no answer from the database within {d:?}"
                    )))
                }
            },
        };
        match answer {
            Ok(r) => r,
            // The writer dropped the job: it panicked, or the store failed meanwhile.
            Err(_) if self.failed.load(Ordering::Relaxed) => Err(StoreError::Failed),
            Err(_) => Err(StoreError::JobPanicked),
        }
    }

    /// Run the read `f` on this thread, beside the writer: `None` when what it read may
    /// include a group not yet durable (the caller then runs it on the writer, which
    /// answers after that group); `Some(Err(Failed))` once the store has failed.
    pub fn read<T>(
        &self,
        f: impl FnOnce(&ReadView<'_>) -> Result<T, StoreError>,
    ) -> Option<Result<T, StoreError>> {
        if self.failed.load(Ordering::Acquire) {
            return Some(Err(StoreError::Failed));
        }
        let guard = self.db.read().unwrap_or_else(|e| e.into_inner());
        let db = guard.as_ref()?;
        let view = ReadView::new(db, &self.inflight);
        let out = f(&view);
        // After reading: void if a group the read may have seen partly (unsettled when
        // it started, or published since) wrote a key it read.
        if view.void(&self.inflight) {
            self.stats.reads_deferred.fetch_add(1, Ordering::Relaxed);
            return None;
        }
        if self.failed.load(Ordering::Acquire) {
            return Some(Err(StoreError::Failed));
        }
        self.stats.reads_beside.fetch_add(1, Ordering::Relaxed);
        Some(out)
    }

    pub fn is_healthy(&self) -> bool {
        !self.failed.load(Ordering::Relaxed)
            && !self.tx.is_closed()
            && self.reachable.load(Ordering::Relaxed)
    }

    pub fn stats(&self) -> &StoreStats {
        &self.stats
    }

    /// Finish queued jobs, flush, and stop the writer (the sled files are closed when
    /// this returns).
    pub async fn close(&self) {
        let (ctx, crx) = oneshot::channel();
        if self.tx.send(Msg::Close(ctx)).await.is_ok() {
            let _ = crx.await;
        }
        let handle = self.thread.lock().ok().and_then(|mut t| t.take());
        if let Some(h) = handle {
            let _ = tokio::task::spawn_blocking(move || h.join()).await;
        }
        // Stop index rebuilds, wait until their threads (and their handles on the files)
        // are gone, and let go of the store's files.
        self.cancel_rebuilds.store(true, Ordering::Relaxed);
        let threads =
            std::mem::take(&mut *self.rebuilders.lock().unwrap_or_else(|e| e.into_inner()));
        for h in threads {
            let _ = tokio::task::spawn_blocking(move || h.join()).await;
        }
        self.db.write().unwrap_or_else(|e| e.into_inner()).take();
    }
}

/// Wait until the writer `thread` says whether it started (its state built, its first
/// group durable); when it did not, join it and hand back why.
fn started(
    thread: std::thread::JoinHandle<()>,
    ready: &std::sync::mpsc::Receiver<Result<(), StoreError>>,
) -> Result<std::thread::JoinHandle<()>, StoreError> {
    match ready.recv() {
        Ok(Ok(())) => Ok(thread),
        Ok(Err(e)) => {
            let _ = thread.join();
            Err(e)
        }
        Err(_) => Err(StoreError::JobPanicked),
    }
}

/// What the writer shares with the request threads.
struct Shared<'a> {
    failed: &'a AtomicBool,
    stats: &'a StoreStats,
    inflight: &'a InFlight,
}

fn writer_loop<S: Journal>(
    db: &sled::Db,
    files: &mut DataFiles,
    mut txn: Txn<'_>,
    mut state: S,
    mut rx: mpsc::Receiver<Msg<S>>,
    shared: Shared<'_>,
) {
    let Shared {
        failed,
        stats,
        inflight,
    } = shared;
    let mut msgs = Vec::with_capacity(MAX_GROUP);
    let mut dones: Vec<Done> = Vec::with_capacity(MAX_GROUP);
    loop {
        let Some(first) = rx.blocking_recv() else {
            if commit(db, files, &mut txn, stats, inflight).is_ok() {
                state.group_durable();
                inflight.clear();
            }
            return;
        };
        msgs.push(first);
        while msgs.len() < MAX_GROUP {
            match rx.try_recv() {
                Ok(m) => msgs.push(m),
                Err(_) => break,
            }
        }
        let mut close = None;
        for m in msgs.drain(..) {
            match m {
                Msg::Close(c) => close = Some(c),
                Msg::Job(job) => {
                    if failed.load(Ordering::Relaxed) {
                        // Dropping the job drops its answer channel: the caller sees an error.
                        continue;
                    }
                    run_job(job, &mut txn, &mut state, &mut dones, stats);
                }
            }
        }
        txn.undo.clear();
        stats.groups.fetch_add(1, Ordering::Relaxed);
        stats.jobs.fetch_add(dones.len() as u64, Ordering::Relaxed);
        let res = commit(db, files, &mut txn, stats, inflight);
        match &res {
            Ok(()) => state.group_durable(),
            Err(e) => {
                // Memory goes back to what is on disk (as far as we know it); the store
                // refuses every further job, so nothing reads past this point until a
                // restart rebuilds the state from disk.
                state.undo_group();
                tracing::error!(error = %e, "flush failed; the store now refuses writes");
                failed.store(true, Ordering::Release);
            }
        }
        for d in dones.drain(..) {
            d(res.clone());
        }
        // Reads beside the writer may now see this group (a failed one stays listed:
        // the store refuses everything from now on).
        if res.is_ok() {
            inflight.clear();
        }
        if let Some(c) = close {
            let _ = db.flush();
            let _ = c.send(());
            return;
        }
    }
}

/// Run one job: keep its effects when it returns `Ok`, undo its writes and its state
/// changes when it returns `Err` or panics (answering once they are undone).
fn run_job<S: Journal>(
    job: Job<S>,
    txn: &mut Txn<'_>,
    state: &mut S,
    dones: &mut Vec<Done>,
    stats: &StoreStats,
) {
    txn.undo.clear();
    let out = catch_unwind(AssertUnwindSafe(|| job(txn, state)));
    let (reads, writes) = txn.take_counts();
    stats.records_read.fetch_add(reads, Ordering::Relaxed);
    stats.records_written.fetch_add(writes, Ordering::Relaxed);
    match out {
        Ok((true, done)) => {
            state.keep_job();
            dones.push(done);
        }
        Ok((false, done)) => {
            txn.rollback_job();
            state.undo_job();
            stats.jobs_undone.fetch_add(1, Ordering::Relaxed);
            done(Ok(()));
        }
        Err(_) => {
            txn.rollback_job();
            state.undo_job();
            stats.jobs_undone.fetch_add(1, Ordering::Relaxed);
            tracing::error!("a store job panicked; its writes and state changes were undone");
        }
    }
    txn.undo.clear();
}

/// Apply the overlay as one atomic batch, flush it, and fsync the data files.
fn commit(
    db: &sled::Db,
    files: &mut DataFiles,
    txn: &mut Txn<'_>,
    stats: &StoreStats,
    inflight: &InFlight,
) -> Result<(), StoreError> {
    let fail = std::mem::take(&mut txn.fail_flush);
    let delay = txn.delay_flush.take();
    if fail && delay.is_none() {
        txn.overlay.clear();
        return Err(StoreError::Io(INJECTED_FLUSH_FAILURE.into()));
    }
    if txn.overlay.is_empty() {
        return Ok(());
    }
    stats.flushes.fetch_add(1, Ordering::Relaxed);
    inflight.publish(txn.overlay.keys().cloned());
    let mut batch = sled::Batch::default();
    for (k, v) in std::mem::take(&mut txn.overlay) {
        match v {
            Some(v) => batch.insert(k, v),
            None => batch.remove(k),
        }
    }
    db.apply_batch(batch)
        .map_err(|e| StoreError::Io(e.to_string()))?;
    if let Some(d) = delay {
        std::thread::sleep(d);
    }
    if fail {
        return Err(StoreError::Io(INJECTED_FLUSH_FAILURE.into()));
    }
    let blobs = files.flush_and_sync(db)?;
    stats.blob_files_synced.fetch_add(blobs, Ordering::Relaxed);
    Ok(())
}

/// A counter as stored (8 bytes, big-endian); `None` for any other value.
pub fn decode_u64(v: &[u8]) -> Option<u64> {
    <[u8; 8]>::try_from(v).ok().map(u64::from_be_bytes)
}

fn read_u64(db: &sled::Db, k: &[u8]) -> Result<u64, StoreError> {
    Ok(db
        .get(k)
        .map_err(|e| StoreError::Io(e.to_string()))?
        .and_then(|v| decode_u64(&v))
        .unwrap_or(0))
}

/// Decodes one stored record into the code index's entries (key, value).
pub type IndexEntries = fn(&[u8]) -> Result<Vec<(String, Vec<u8>)>, StoreError>;

/// Where a code index is built from: the records under a prefix, the key of the
/// generation they are of, and how a record becomes entries.
pub type IndexSource<'a> = (&'a [u8], &'a [u8], IndexEntries);

/// Write `tenant`'s code index from every record under `prefix` (keys cut to what follows
/// it), marked with the generation stored under `gen_key` — read before the scan, so codes
/// written during it leave the file marked old. Records are insert-only, so whatever the
/// scan sees stays true.
fn build_index(
    db: &sled::Db,
    dir: &Path,
    tenant: &str,
    (prefix, gen_key, entries): IndexSource<'_>,
    cancel: &AtomicBool,
) -> Result<codeindex::Segment, StoreError> {
    let generation = read_u64(db, gen_key)?;
    let mut b = codeindex::IndexBuilder::create(&CodeIndex::path_for(dir, tenant))?;
    for (i, kv) in db.scan_prefix(prefix).enumerate() {
        if i % 4096 == 0 && cancel.load(Ordering::Relaxed) {
            drop(b); // its spill files go with it
            return Err(StoreError::Io("code index rebuild cancelled".into()));
        }
        let (_, v) = kv.map_err(|e| StoreError::Io(e.to_string()))?;
        for (k, v) in entries(&v)? {
            b.push(k.as_bytes(), &v)?;
        }
    }
    b.finish(generation)
}

/// Rebuild `tenant`'s code index if it is missing or old (see [`Store::refresh_code_index`]).
fn refresh_index(
    db: &sled::Db,
    codes: &CodeIndex,
    tenant: &str,
    source: IndexSource<'_>,
    cancel: &AtomicBool,
) -> Result<(), StoreError> {
    let (prefix, gen_key, _) = source;
    let stored = read_u64(db, gen_key)?;
    let current = codes.generation(tenant);
    if current == Some(stored) {
        return Ok(());
    }
    if current.is_none() && db.scan_prefix(prefix).next().is_none() {
        return Ok(());
    }
    let started = std::time::Instant::now();
    let s = build_index(db, codes.dir(), tenant, source, cancel)?;
    tracing::info!(tenant = %tenant, codes = s.entries(), generation = s.generation(), seconds = started.elapsed().as_secs_f64(), "code index rebuilt");
    codes.install(tenant, s);
    Ok(())
}

/// What must be fsynced after sled's flush for a group to be durable. sled's flush uses
/// `sync_file_range`, which does not flush the drive's write cache (sled issues #1351,
/// #1452), so the writer fsyncs sled's log file `db` itself. sled 0.34 also writes every
/// log message larger than a quarter segment (~128 KiB: a large record, or a node of the
/// tree holding many records) to a file of its own under `blobs/`, without fsync; the
/// writer fsyncs each new blob file and then the `blobs/` directory, before the log.
struct DataFiles {
    db: PathBuf,
    blobs: PathBuf,
    /// Blob files fsynced already (names; sled never rewrites a blob file).
    synced: HashSet<OsString>,
}

impl DataFiles {
    /// fsync sled's `conf` (written once, at creation, without fsync: a store whose `conf`
    /// was lost cannot be opened), the data directory (so `db`, `conf` and `blobs/`
    /// themselves are durable) and every blob file there is now.
    fn new(dir: &Path) -> Result<DataFiles, StoreError> {
        let conf = dir.join("conf");
        match File::open(&conf) {
            Ok(f) => f
                .sync_all()
                .map_err(|e| StoreError::Io(format!("fsync {}: {e}", conf.display())))?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(StoreError::Io(format!("fsync {}: {e}", conf.display()))),
        }
        fsync_dir(dir)?;
        let mut f = DataFiles {
            db: dir.join("db"),
            blobs: dir.join("blobs"),
            synced: HashSet::new(),
        };
        f.sync_blobs()?;
        Ok(f)
    }

    /// The one way anything written to `db` becomes durable: sled's flush, then the
    /// fsyncs it leaves out ([`DataFiles::sync`]). Returns how many blob files were fsynced.
    fn flush_and_sync(&mut self, db: &sled::Db) -> Result<u64, StoreError> {
        db.flush().map_err(|e| StoreError::Io(e.to_string()))?;
        self.sync()
    }

    /// fsync new blob files, their directory, then the log. Returns how many blob files
    /// were fsynced. Any failure (the log file cannot even be opened, say) fails the group.
    fn sync(&mut self) -> Result<u64, StoreError> {
        let n = self.sync_blobs()?;
        let file = File::open(&self.db).map_err(|e| {
            StoreError::Io(format!("opening {} to fsync it: {e}", self.db.display()))
        })?;
        file.sync_data()
            .map_err(|e| StoreError::Io(format!("fsync {}: {e}", self.db.display())))?;
        Ok(n)
    }

    fn sync_blobs(&mut self) -> Result<u64, StoreError> {
        let io = |what: &Path, e: std::io::Error| {
            StoreError::Io(format!("fsync {}: {e}", what.display()))
        };
        let entries = match std::fs::read_dir(&self.blobs) {
            Ok(d) => d,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
            Err(e) => return Err(io(&self.blobs, e)),
        };
        let mut present = HashSet::with_capacity(self.synced.len());
        let mut new = 0u64;
        for entry in entries {
            let entry = entry.map_err(|e| io(&self.blobs, e))?;
            let name = entry.file_name();
            if !self.synced.contains(&name) {
                let path = entry.path();
                match File::open(&path) {
                    Ok(f) => f.sync_data().map_err(|e| io(&path, e))?,
                    // sled removed it meanwhile (its record was rewritten): nothing to keep.
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                    Err(e) => return Err(io(&path, e)),
                }
                new += 1;
            }
            present.insert(name);
        }
        if new > 0 {
            fsync_dir(&self.blobs)?;
        }
        self.synced = present;
        Ok(new)
    }
}

/// Create the data directory if needed and open sled there (the server and restore).
fn create_and_open(opts: &StoreOptions) -> Result<sled::Db, StoreError> {
    std::fs::create_dir_all(&opts.path)
        .map_err(|e| StoreError::Io(format!("creating {}: {e}", opts.path.display())))?;
    open_sled(opts, sled::Mode::LowSpace)
        .map_err(|e| StoreError::Io(format!("opening {}: {e}", opts.path.display())))
}

/// How long opening waits for the data directory's lock file. sled lets go of the lock
/// from its background threads a moment after the last handle is dropped, so a store
/// closed (or refused at start) in this process can still hold it briefly; a lock held by
/// another live process is still refused, after this wait.
const LOCK_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

/// Open sled, retrying while its lock file is held (see [`LOCK_WAIT`]).
fn open_sled(opts: &StoreOptions, mode: sled::Mode) -> sled::Result<sled::Db> {
    let deadline = std::time::Instant::now() + LOCK_WAIT;
    loop {
        let opened = sled::Config::new()
            .path(&opts.path)
            .cache_capacity(opts.cache_capacity_bytes)
            .mode(mode)
            .open();
        match opened {
            Err(sled::Error::Io(e))
                if e.to_string().contains("could not acquire lock")
                    && std::time::Instant::now() < deadline =>
            {
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            other => return other,
        }
    }
}

fn fsync_dir(dir: &Path) -> Result<(), StoreError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| StoreError::Io(format!("fsync {}: {e}", dir.display())))
}

/// The first id the writer hands out. A counter that cannot be read or is not a counter is
/// a start-up error: starting from 0 would repeat ids and overwrite records. Stores made
/// before the counter was a record used sled's generator: start above both.
fn first_id(db: &sled::Db, dir: &Path) -> Result<u64, StoreError> {
    let fail = |why: String| {
        StoreError::Io(format!(
            "data directory {}: {why}; refusing to start, as ids could repeat",
            dir.display()
        ))
    };
    let stored = match db.get(NEXT_ID_KEY) {
        Ok(None) => 0,
        Ok(Some(v)) => decode_u64(&v).ok_or_else(|| {
            fail(format!(
                "the id counter meta/next_id is not a counter ({} bytes, not 8)",
                v.len()
            ))
        })?,
        Err(e) => {
            return Err(fail(format!(
                "cannot read the id counter meta/next_id: {e}"
            )))
        }
    };
    let generated = db
        .generate_id()
        .map_err(|e| fail(format!("cannot read sled's id generator: {e}")))?;
    Ok(stored.max(generated))
}

/// Check the data directory's record schema version (see [`SCHEMA_VERSION`]): a newer one
/// than this build's refuses; none (a new store, or one from before versions were kept)
/// is marked with this build's.
fn check_schema(db: &sled::Db, dir: &Path) -> Result<(), StoreError> {
    let at = || format!("data directory {}", dir.display());
    let stored = db
        .get(SCHEMA_VERSION_KEY)
        .map_err(|e| StoreError::Io(format!("{}: cannot read meta/schema_version: {e}", at())))?;
    if stored.is_none() {
        db.insert(SCHEMA_VERSION_KEY, &SCHEMA_VERSION.to_be_bytes())
            .and_then(|_| db.flush())
            .map_err(|e| StoreError::Io(format!("{}: writing meta/schema_version: {e}", at())))?;
    }
    schema_readable(stored.as_deref(), &at())
}

/// Whether records marked with `version` (none: from before versions were kept, i.e. 1)
/// are of a format this build reads; `at` says where they are.
fn schema_readable(version: Option<&[u8]>, at: &str) -> Result<(), StoreError> {
    match version.map(decode_u64) {
        None => Ok(()),
        Some(Some(v)) if v <= SCHEMA_VERSION => Ok(()),
        Some(Some(v)) => Err(StoreError::Io(format!(
            "{at}: its records are of schema version {v}, newer than this build's ({SCHEMA_VERSION}); \
             run the karma-provider version that wrote them, or restore a backup made with this one"
        ))),
        Some(None) => Err(StoreError::Io(format!(
            "{at}: meta/schema_version is not a version number; refusing to read records of an unknown format"
        ))),
    }
}

/// Restore: write `records` into a new store at `opts.path`, which must be empty or absent.
/// Returns how many records were written. Durable when it returns.
pub fn import_records(
    opts: &StoreOptions,
    records: Vec<(Vec<u8>, Vec<u8>)>,
) -> Result<usize, StoreError> {
    if let Ok(mut entries) = std::fs::read_dir(&opts.path) {
        if entries.next().is_some() {
            return Err(StoreError::Io(format!(
                "{} is not empty; import only into an empty data directory",
                opts.path.display()
            )));
        }
    }
    let version = records.iter().find(|(k, _)| k == SCHEMA_VERSION_KEY);
    schema_readable(version.map(|(_, v)| v.as_slice()), "the backup")?;
    let db = create_and_open(opts)?;
    let n = records.len();
    for chunk in records.chunks(10_000) {
        let mut batch = sled::Batch::default();
        for (k, v) in chunk {
            batch.insert(k.as_slice(), v.as_slice());
        }
        db.apply_batch(batch)
            .map_err(|e| StoreError::Io(e.to_string()))?;
    }
    // Flushed before `DataFiles::new` fsyncs the directory, so the entries of every file
    // the records made (`blobs/`) are in it.
    db.flush().map_err(|e| StoreError::Io(e.to_string()))?;
    check_schema(&db, &opts.path)?;
    DataFiles::new(&opts.path)?.flush_and_sync(&db)?;
    Ok(n)
}

/// Direct access to a *stopped* server's store, for bulk operator commands (code import,
/// generation, export). Fails while a server holds the data directory.
pub struct Offline {
    db: sled::Db,
    path: PathBuf,
    files: DataFiles,
    /// Writes queued for the next [`Offline::apply`].
    pending: std::collections::BTreeMap<Vec<u8>, Vec<u8>>,
}

impl Offline {
    pub fn open(opts: &StoreOptions) -> Result<Offline, StoreError> {
        let db = open_sled(opts, sled::Mode::HighThroughput).map_err(|e| {
            StoreError::Io(format!(
                "opening {} (is the server still running? stop it, or use the admin API): {e}",
                opts.path.display()
            ))
        })?;
        check_schema(&db, &opts.path)?;
        Ok(Offline {
            db,
            path: opts.path.clone(),
            files: DataFiles::new(&opts.path)?,
            pending: Default::default(),
        })
    }

    /// A record, queued writes first.
    pub fn get(&self, k: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        if let Some(v) = self.pending.get(k) {
            return Ok(Some(v.clone()));
        }
        self.db
            .get(k)
            .map(|o| o.map(|v| v.to_vec()))
            .map_err(|e| StoreError::Io(e.to_string()))
    }

    /// Write `v` under `k` now (one atomic tree operation), durable at [`Offline::finish`].
    pub fn put_now(&self, k: &[u8], v: &[u8]) -> Result<(), StoreError> {
        self.db
            .insert(k, v)
            .map(drop)
            .map_err(|e| StoreError::Io(e.to_string()))
    }

    /// Queue a write; [`Offline::get`] sees it at once, [`Offline::apply`] makes the queued
    /// writes visible in the tree (atomically).
    pub fn insert(&mut self, k: Vec<u8>, v: Vec<u8>) {
        self.pending.insert(k, v);
    }

    pub fn apply(&mut self) -> Result<(), StoreError> {
        if !self.pending.is_empty() {
            let mut b = sled::Batch::default();
            for (k, v) in std::mem::take(&mut self.pending) {
                b.insert(k, v);
            }
            self.db
                .apply_batch(b)
                .map_err(|e| StoreError::Io(e.to_string()))?;
        }
        Ok(())
    }

    pub fn scan_prefix(
        &self,
        prefix: &[u8],
    ) -> impl Iterator<Item = Result<KeyValue, StoreError>> + '_ {
        self.db.scan_prefix(prefix).map(|kv| {
            kv.map(|(k, v)| (k.to_vec(), v.to_vec()))
                .map_err(|e| StoreError::Io(e.to_string()))
        })
    }

    /// Apply what is queued, flush and fsync.
    pub fn finish(mut self) -> Result<(), StoreError> {
        self.sync()
    }

    /// Apply what is queued, flush and fsync: everything written so far is durable.
    pub fn sync(&mut self) -> Result<(), StoreError> {
        self.apply()?;
        self.files.flush_and_sync(&self.db)?;
        Ok(())
    }

    /// Start a new code index for `tenant` holding every bulk code the store has now:
    /// carried over from the current file when it is of the stored generation, else read
    /// from the store (records under `prefix`). Call before writing codes; add the new ones
    /// with [`codeindex::IndexBuilder::push_encoded`] and end with
    /// [`Offline::finish_code_index`] once they are durable.
    pub fn code_index_builder(
        &self,
        tenant: &str,
        (prefix, gen_key, entries): IndexSource<'_>,
    ) -> Result<codeindex::IndexBuilder, StoreError> {
        let path = CodeIndex::path_for(&CodeIndex::dir_in(&self.path), tenant);
        let stored = read_u64(&self.db, gen_key)?;
        let current = codeindex::Segment::open(&path)
            .ok()
            .filter(|s| s.generation() == stored);
        if let Some(s) = current {
            let mut b = codeindex::IndexBuilder::create(&path)?;
            match s.copy_into(&mut b) {
                Ok(()) => return Ok(b),
                // A damaged bucket: build from the store instead.
                Err(e) => tracing::warn!(error = %e, "code index not carried over"),
            }
        }
        let mut b = codeindex::IndexBuilder::create(&path)?;
        for kv in self.db.scan_prefix(prefix) {
            let (_, v) = kv.map_err(|e| StoreError::Io(e.to_string()))?;
            for (k, v) in entries(&v)? {
                b.push(k.as_bytes(), &v)?;
            }
        }
        Ok(b)
    }

    /// Write the index started with [`Offline::code_index_builder`], marked with the
    /// generation now stored under `gen_key`. Returns how many codes it holds.
    pub fn finish_code_index(
        &self,
        b: codeindex::IndexBuilder,
        gen_key: &[u8],
    ) -> Result<u64, StoreError> {
        let generation = read_u64(&self.db, gen_key)?;
        b.finish(generation).map(|s| s.entries())
    }

    /// Bytes the store's files take on disk.
    pub fn size_on_disk(&self) -> u64 {
        self.db.size_on_disk().unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn open(dir: &Path) -> Store<()> {
        let opts = StoreOptions {
            path: dir.to_path_buf(),
            cache_capacity_bytes: 1 << 20,
        };
        Store::open(&opts, |_| Ok(())).expect("store opens")
    }

    /// sled spills a log message over ~128 KiB to a file under `blobs/` and never fsyncs
    /// it: the writer does, before the answer.
    #[tokio::test]
    async fn a_record_large_enough_for_a_blob_file_is_fsynced_before_the_answer() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(dir.path());
        let small: Result<(), StoreError> = store
            .run(|txn, _| {
                txn.put(b"small".to_vec(), vec![1; 100]);
                Ok(())
            })
            .await;
        small.unwrap();
        assert_eq!(store.stats().blob_files_synced.load(Ordering::Relaxed), 0);
        store
            .run(|txn, _| {
                txn.put(b"large".to_vec(), vec![7; 300 * 1024]);
                Ok(())
            })
            .await
            .unwrap();
        let blobs = std::fs::read_dir(dir.path().join("blobs")).unwrap().count();
        assert!(blobs >= 1, "sled wrote no blob file");
        assert!(store.stats().blob_files_synced.load(Ordering::Relaxed) >= 1);
        store.close().await;
        let store = open(dir.path());
        let v = store.run(|txn, _| txn.get(b"large")).await.unwrap();
        assert_eq!(v.map(|v| v.len()), Some(300 * 1024));
    }

    /// A job that returns `Err` leaves none of its writes, and the next job of the same
    /// group keeps its own.
    #[tokio::test]
    async fn a_job_that_fails_leaves_none_of_its_writes() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(dir.path());
        let failed: Result<(), StoreError> = store
            .run(|txn, _| {
                txn.put(b"a".to_vec(), b"1".to_vec());
                txn.next_id()?;
                Err(StoreError::Io("no".into()))
            })
            .await;
        assert_eq!(failed, Err(StoreError::Io("no".into())));
        let (a, id) = store
            .run(|txn, _| Ok((txn.get(b"a")?, txn.get(NEXT_ID_KEY)?)))
            .await
            .unwrap();
        assert_eq!((a, id), (None, None));
        assert_eq!(store.stats().jobs_undone.load(Ordering::Relaxed), 1);
    }

    /// Pages cover the range once, in key order, with this group's writes and deletes
    /// merged in, whatever the page size.
    #[tokio::test]
    async fn pages_cover_the_range_once_with_the_overlay() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(dir.path());
        store
            .run(|txn, _| {
                for i in 0..10u8 {
                    txn.put(vec![b'p', b'/', i * 2], vec![i]);
                }
                txn.put(b"q/0".to_vec(), b"other".to_vec());
                Ok(())
            })
            .await
            .unwrap();
        let seen = store
            .run(|txn, _| {
                txn.put(vec![b'p', b'/', 5], vec![55]); // new, between stored keys
                txn.put(vec![b'p', b'/', 99], vec![99]); // new, after every stored key
                txn.delete(vec![b'p', b'/', 4]); // stored, deleted in this group
                let mut all = Vec::new();
                for limit in [1, 2, 3, 100] {
                    let (mut seen, mut after) = (Vec::new(), None::<Vec<u8>>);
                    loop {
                        let (page, next) = txn.scan_page(b"p/", after.as_deref(), limit)?;
                        seen.extend(page.iter().map(|(k, _)| k[2]));
                        match next {
                            Some(n) => after = Some(n),
                            None => break,
                        }
                    }
                    all.push(seen);
                }
                Ok(all)
            })
            .await
            .unwrap();
        let want: Vec<u8> = vec![0, 2, 5, 6, 8, 10, 12, 14, 16, 18, 99];
        assert_eq!(seen, vec![want; 4]);
    }
}
