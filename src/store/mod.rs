//! The only module that touches sled. Everything that changes state goes through one
//! writer thread: it runs each job against an overlay of the store (so a job sees the
//! writes of the jobs before it in the same group), applies the whole group as one sled
//! `Batch`, flushes, fsyncs the data file, and only then releases the answers. That gives
//! atomic effects (a job's effect and its idempotency record land together or not at
//! all), a total order (no two decisions race), and group commit (one flush for every job
//! that arrived while the previous flush ran).
//!
//! The writer also owns an in-memory state `S` (indexes the domain rebuilds at start,
//! such as live holds). If a flush ever fails the store stops taking writes (fail-stop):
//! memory may then be ahead of disk, and only a restart from disk is safe.

pub mod codeindex;
mod keys;

pub use codeindex::CodeIndex;
pub use keys::{key, last, prefix};

use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

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
}

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
type Job<S> = Box<dyn FnOnce(&mut Txn<'_>, &mut S) -> Done + Send>;

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
}

pub struct Store<S> {
    tx: mpsc::Sender<Msg<S>>,
    failed: Arc<AtomicBool>,
    stats: Arc<StoreStats>,
    thread: Mutex<Option<std::thread::JoinHandle<()>>>,
    /// For the code index's background rebuilds only (every write goes through the writer);
    /// taken at [`Store::close`] so the files close with the writer.
    db: Mutex<Option<sled::Db>>,
    /// Tells running index rebuilds to give up (at close).
    cancel_rebuilds: Arc<AtomicBool>,
    codes: Arc<CodeIndex>,
    /// Tenants whose code index is being rebuilt; `true`: rebuild once more when done.
    rebuilding: Arc<Mutex<HashMap<String, bool>>>,
}

/// Read and write access inside a writer job. Reads see this group's earlier writes.
pub struct Txn<'a> {
    db: &'a sled::Db,
    overlay: HashMap<Vec<u8>, Option<Vec<u8>>>,
    /// Previous overlay entries of keys the current job touched, to undo a panicked job.
    undo: Vec<Undo>,
    /// The next id [`Txn::next_id`] hands out.
    next: u64,
}

const NEXT_ID_KEY: &[u8] = b"meta\x1fnext_id";

impl Txn<'_> {
    pub fn get(&self, k: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        if let Some(v) = self.overlay.get(k) {
            return Ok(v.clone());
        }
        self.db
            .get(k)
            .map(|o| o.map(|v| v.to_vec()))
            .map_err(|e| StoreError::Io(e.to_string()))
    }

    pub fn put(&mut self, k: Vec<u8>, v: Vec<u8>) {
        let prev = self.overlay.insert(k.clone(), Some(v));
        self.undo.push((k, prev));
    }

    pub fn delete(&mut self, k: Vec<u8>) {
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
        let mut out: BTreeMap<Vec<u8>, Vec<u8>> = BTreeMap::new();
        for kv in self.db.scan_prefix(prefix) {
            let (k, v) = kv.map_err(|e| StoreError::Io(e.to_string()))?;
            out.insert(k.to_vec(), v.to_vec());
        }
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

    /// The first (key, value) under `prefix` in key order, including this group's writes,
    /// without reading the whole range.
    pub fn first_with_prefix(&self, prefix: &[u8]) -> Result<Option<KeyValue>, StoreError> {
        let mut from_db = None;
        for kv in self.db.scan_prefix(prefix) {
            let (k, v) = kv.map_err(|e| StoreError::Io(e.to_string()))?;
            match self.overlay.get(k.as_ref()) {
                Some(None) => continue, // deleted in this group
                Some(Some(nv)) => from_db = Some((k.to_vec(), nv.clone())),
                None => from_db = Some((k.to_vec(), v.to_vec())),
            }
            break;
        }
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

    fn rollback_job(&mut self) {
        while let Some((k, prev)) = self.undo.pop() {
            match prev {
                Some(p) => self.overlay.insert(k, p),
                None => self.overlay.remove(&k),
            };
        }
    }
}

impl<S: Send + 'static> Store<S> {
    /// Open (or create) the store and start its writer. `init` builds the writer's
    /// in-memory state from what is on disk.
    pub fn open(
        opts: &StoreOptions,
        init: impl FnOnce(&mut Txn<'_>) -> Result<S, StoreError> + Send + 'static,
    ) -> Result<Store<S>, StoreError> {
        std::fs::create_dir_all(&opts.path)
            .map_err(|e| StoreError::Io(format!("creating {}: {e}", opts.path.display())))?;
        let db = sled::Config::new()
            .path(&opts.path)
            .cache_capacity(opts.cache_capacity_bytes)
            .open()
            .map_err(|e| StoreError::Io(format!("opening {}: {e}", opts.path.display())))?;
        let data_files = data_files(&opts.path);
        let db_for_index = db.clone();
        let codes = Arc::new(CodeIndex::open(&opts.path));
        let failed = Arc::new(AtomicBool::new(false));
        let stats = Arc::new(StoreStats::default());
        let (tx, rx) = mpsc::channel::<Msg<S>>(4096);
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let f2 = failed.clone();
        let s2 = stats.clone();
        let thread = std::thread::Builder::new()
            .name("kp-store-writer".into())
            .spawn(move || {
                let mut txn = Txn {
                    db: &db,
                    overlay: HashMap::new(),
                    undo: Vec::new(),
                    next: 0,
                };
                // Stores made before the counter was a record used sled's generator:
                // start above both.
                let stored = txn.get_u64(NEXT_ID_KEY).unwrap_or(0);
                txn.next = stored.max(db.generate_id().unwrap_or(0));
                let state = match init(&mut txn) {
                    Ok(s) => s,
                    Err(e) => {
                        let _ = ready_tx.send(Err(e));
                        return;
                    }
                };
                let first = commit(&db, &data_files, &mut txn);
                let _ = ready_tx.send(first);
                writer_loop(&db, &data_files, txn, state, rx, &f2, &s2);
            })
            .map_err(|e| StoreError::Io(e.to_string()))?;
        match ready_rx.recv() {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                let _ = thread.join();
                return Err(e);
            }
            Err(_) => return Err(StoreError::JobPanicked),
        }
        Ok(Store {
            tx,
            failed,
            stats,
            thread: Mutex::new(Some(thread)),
            db: Mutex::new(Some(db_for_index)),
            cancel_rebuilds: Arc::new(AtomicBool::new(false)),
            codes,
            rebuilding: Arc::new(Mutex::new(HashMap::new())),
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
    pub fn refresh_code_index(&self, tenant: &str, prefix: Vec<u8>, gen_key: Vec<u8>) {
        let Some(db) = self.db.lock().unwrap_or_else(|e| e.into_inner()).clone() else {
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
                if let Err(e) = refresh_index(&db, &codes, &name, &prefix, &gen_key, &cancel) {
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
        if spawned.is_err() {
            self.rebuilding
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .remove(tenant);
        }
    }

    /// Run `f` on the writer; its result comes back once everything it wrote is durable.
    pub async fn run<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Txn<'_>, &mut S) -> T + Send + 'static,
    ) -> Result<T, StoreError> {
        if self.failed.load(Ordering::Relaxed) {
            return Err(StoreError::Failed);
        }
        let (otx, orx) = oneshot::channel();
        let job: Job<S> = Box::new(move |txn, s| {
            let out = f(txn, s);
            Box::new(move |res: Result<(), StoreError>| {
                let _ = otx.send(res.map(|()| out));
            })
        });
        self.tx
            .send(Msg::Job(job))
            .await
            .map_err(|_| StoreError::Closed)?;
        match orx.await {
            Ok(r) => r,
            // The writer dropped the job: it panicked, or the store failed meanwhile.
            Err(_) if self.failed.load(Ordering::Relaxed) => Err(StoreError::Failed),
            Err(_) => Err(StoreError::JobPanicked),
        }
    }

    pub fn is_healthy(&self) -> bool {
        !self.failed.load(Ordering::Relaxed) && !self.tx.is_closed()
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
        // Stop index rebuilds and let go of the store's files.
        self.cancel_rebuilds.store(true, Ordering::Relaxed);
        while !self
            .rebuilding
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .is_empty()
        {
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
        self.db.lock().unwrap_or_else(|e| e.into_inner()).take();
    }
}

fn writer_loop<S>(
    db: &sled::Db,
    files: &[PathBuf],
    mut txn: Txn<'_>,
    mut state: S,
    mut rx: mpsc::Receiver<Msg<S>>,
    failed: &AtomicBool,
    stats: &StoreStats,
) {
    let mut msgs = Vec::with_capacity(MAX_GROUP);
    let mut dones: Vec<Done> = Vec::with_capacity(MAX_GROUP);
    loop {
        let Some(first) = rx.blocking_recv() else {
            let _ = commit(db, files, &mut txn);
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
                    txn.undo.clear();
                    match catch_unwind(AssertUnwindSafe(|| job(&mut txn, &mut state))) {
                        Ok(done) => dones.push(done),
                        Err(_) => {
                            txn.rollback_job();
                            tracing::error!("a store job panicked; its writes were discarded");
                        }
                    }
                }
            }
        }
        txn.undo.clear();
        stats.groups.fetch_add(1, Ordering::Relaxed);
        stats.jobs.fetch_add(dones.len() as u64, Ordering::Relaxed);
        let dirty = !txn.overlay.is_empty();
        let res = commit(db, files, &mut txn);
        if dirty {
            stats.flushes.fetch_add(1, Ordering::Relaxed);
        }
        if let Err(e) = &res {
            tracing::error!(error = %e, "flush failed; the store now refuses writes");
            failed.store(true, Ordering::Relaxed);
        }
        for d in dones.drain(..) {
            d(res.clone());
        }
        if let Some(c) = close {
            let _ = db.flush();
            let _ = c.send(());
            return;
        }
    }
}

/// Apply the overlay as one atomic batch, flush it, and fsync the data files.
fn commit(db: &sled::Db, files: &[PathBuf], txn: &mut Txn<'_>) -> Result<(), StoreError> {
    if txn.overlay.is_empty() {
        return Ok(());
    }
    let mut batch = sled::Batch::default();
    for (k, v) in txn.overlay.drain() {
        match v {
            Some(v) => batch.insert(k, v),
            None => batch.remove(k),
        }
    }
    db.apply_batch(batch)
        .map_err(|e| StoreError::Io(e.to_string()))?;
    db.flush().map_err(|e| StoreError::Io(e.to_string()))?;
    // sled's flush uses sync_file_range, which does not flush the drive's write cache
    // (sled issues #1351, #1452); fsync the files so an answer survives power loss.
    for f in files {
        if let Ok(file) = File::open(f) {
            file.sync_data()
                .map_err(|e| StoreError::Io(format!("fsync {}: {e}", f.display())))?;
        }
    }
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

/// Write `tenant`'s code index from every record under `prefix` (keys cut to what follows
/// it), marked with the generation stored under `gen_key` — read before the scan, so codes
/// written during it leave the file marked old. Records are insert-only, so whatever the
/// scan sees stays true.
fn build_index(
    db: &sled::Db,
    dir: &Path,
    tenant: &str,
    prefix: &[u8],
    gen_key: &[u8],
    cancel: &AtomicBool,
) -> Result<codeindex::Segment, StoreError> {
    let generation = read_u64(db, gen_key)?;
    let mut b = codeindex::IndexBuilder::create(&CodeIndex::path_for(dir, tenant))?;
    for (i, kv) in db.scan_prefix(prefix).enumerate() {
        if i % 4096 == 0 && cancel.load(Ordering::Relaxed) {
            drop(b); // its spill files go with it
            return Err(StoreError::Io("code index rebuild cancelled".into()));
        }
        let (k, v) = kv.map_err(|e| StoreError::Io(e.to_string()))?;
        b.push(&k[prefix.len()..], &v)?;
    }
    b.finish(generation)
}

/// Rebuild `tenant`'s code index if it is missing or old (see [`Store::refresh_code_index`]).
fn refresh_index(
    db: &sled::Db,
    codes: &CodeIndex,
    tenant: &str,
    prefix: &[u8],
    gen_key: &[u8],
    cancel: &AtomicBool,
) -> Result<(), StoreError> {
    let stored = read_u64(db, gen_key)?;
    let current = codes.generation(tenant);
    if current == Some(stored) {
        return Ok(());
    }
    if current.is_none() && db.scan_prefix(prefix).next().is_none() {
        return Ok(());
    }
    let started = std::time::Instant::now();
    let s = build_index(db, codes.dir(), tenant, prefix, gen_key, cancel)?;
    tracing::info!(tenant = %tenant, codes = s.entries(), generation = s.generation(), seconds = started.elapsed().as_secs_f64(), "code index rebuilt");
    codes.install(tenant, s);
    Ok(())
}

/// The files sled writes its log and pages to (sled 0.34: `db` and `conf`).
fn data_files(dir: &Path) -> Vec<PathBuf> {
    vec![dir.join("db")]
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
    std::fs::create_dir_all(&opts.path)
        .map_err(|e| StoreError::Io(format!("creating {}: {e}", opts.path.display())))?;
    let db = sled::Config::new()
        .path(&opts.path)
        .cache_capacity(opts.cache_capacity_bytes)
        .open()
        .map_err(|e| StoreError::Io(format!("opening {}: {e}", opts.path.display())))?;
    let n = records.len();
    for chunk in records.chunks(10_000) {
        let mut batch = sled::Batch::default();
        for (k, v) in chunk {
            batch.insert(k.as_slice(), v.as_slice());
        }
        db.apply_batch(batch)
            .map_err(|e| StoreError::Io(e.to_string()))?;
    }
    db.flush().map_err(|e| StoreError::Io(e.to_string()))?;
    for f in data_files(&opts.path) {
        if let Ok(file) = File::open(&f) {
            file.sync_data()
                .map_err(|e| StoreError::Io(format!("fsync {}: {e}", f.display())))?;
        }
    }
    Ok(n)
}

/// Direct access to a *stopped* server's store, for bulk operator commands (code import,
/// generation, export). Fails while a server holds the data directory.
pub struct Offline {
    db: sled::Db,
    path: PathBuf,
    pending: sled::Batch,
    pending_len: usize,
}

impl Offline {
    pub fn open(opts: &StoreOptions) -> Result<Offline, StoreError> {
        let db = sled::Config::new()
            .path(&opts.path)
            .cache_capacity(opts.cache_capacity_bytes)
            .mode(sled::Mode::HighThroughput)
            .open()
            .map_err(|e| {
                StoreError::Io(format!(
                    "opening {} (is the server still running? stop it, or use the admin API): {e}",
                    opts.path.display()
                ))
            })?;
        Ok(Offline {
            db,
            path: opts.path.clone(),
            pending: sled::Batch::default(),
            pending_len: 0,
        })
    }

    pub fn get(&self, k: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        self.db
            .get(k)
            .map(|o| o.map(|v| v.to_vec()))
            .map_err(|e| StoreError::Io(e.to_string()))
    }

    /// Write `v` under `k` unless `k` exists; true when written. One atomic tree operation
    /// (no separate read), durable at [`Offline::finish`].
    pub fn insert_new(&self, k: &[u8], v: &[u8]) -> Result<bool, StoreError> {
        match self.db.compare_and_swap(k, None as Option<&[u8]>, Some(v)) {
            Ok(Ok(())) => Ok(true),
            Ok(Err(_)) => Ok(false),
            Err(e) => Err(StoreError::Io(e.to_string())),
        }
    }

    /// Queue a write; [`Offline::apply`] makes the queued writes visible (atomically).
    pub fn insert(&mut self, k: Vec<u8>, v: Vec<u8>) {
        self.pending.insert(k, v);
        self.pending_len += 1;
    }

    pub fn apply(&mut self) -> Result<(), StoreError> {
        if self.pending_len > 0 {
            let b = std::mem::take(&mut self.pending);
            self.pending_len = 0;
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
        self.db.flush().map_err(|e| StoreError::Io(e.to_string()))?;
        for f in data_files(&self.path) {
            if let Ok(file) = File::open(&f) {
                file.sync_data()
                    .map_err(|e| StoreError::Io(format!("fsync {}: {e}", f.display())))?;
            }
        }
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
        prefix: &[u8],
        gen_key: &[u8],
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
            let (k, v) = kv.map_err(|e| StoreError::Io(e.to_string()))?;
            b.push(&k[prefix.len()..], &v)?;
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
