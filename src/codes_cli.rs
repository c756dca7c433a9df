//! `karma-provider codes import|generate|export`: bulk codes on a stopped server's data
//! directory, streaming, for millions of codes (the admin API does the same online, for
//! files that fit in a request). Import reads the file twice: first every row is checked
//! (invalid rows are listed by line and nothing is written), then each code is inserted
//! unless it exists, duplicates counted: a batch of rows is grouped by the record (bucket)
//! each code goes to and each bucket read and written once, the buckets shared out among
//! threads. Progress goes to
//! stderr. A crash during the second pass leaves a prefix imported; running the same
//! import again counts those codes as duplicates and imports the rest.

use std::collections::HashSet;
use std::io::Write;
use std::path::Path;
use std::time::Instant;

use crate::config::Config;
use crate::service::codes::{
    check_generation, export_line, generate, is_header, parse_row, BulkCode, CodeRow, CodeStore,
    GenTarget,
};
use crate::store::codeindex::IndexBuilder;
use crate::store::{Offline, StoreError, StoreOptions};
use crate::voucher::{match_key, CampaignSpec, CodeMatch};

/// Codes generated per batch (each code's bucket is read, changed and queued).
const BATCH: usize = 50_000;
/// Rows imported per batch unless `--batch` says otherwise: large, because each batch
/// rewrites every bucket it touches (at ten million codes a batch of a million touches
/// nearly all 262 144 of them once).
pub const IMPORT_BATCH: u64 = 1_000_000;

impl CodeStore for Offline {
    fn get(&mut self, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        Offline::get(self, key)
    }
    fn put(&mut self, key: Vec<u8>, value: Vec<u8>) -> Result<(), StoreError> {
        self.insert(key, value);
        Ok(())
    }
}

/// The tenant's code matching, its campaign ids, and the match keys of its shared codes
/// (config and API-made campaigns).
fn tenant_view(
    cfg: &Config,
    store: &Offline,
    tenant: &str,
) -> Result<(CodeMatch, HashSet<String>, HashSet<String>), String> {
    let t = cfg
        .tenant(tenant)
        .ok_or_else(|| format!("{}: no tenant {tenant:?}", cfg.origin))?;
    let mut campaigns: HashSet<String> = t.campaigns.iter().map(|c| c.id.clone()).collect();
    let mut shared: HashSet<String> = t
        .campaigns
        .iter()
        .flat_map(|c| c.spec.codes.iter().map(|k| match_key(t.code_match, k)))
        .collect();
    for kv in store.scan_prefix(&crate::service::keys::campaigns_prefix(tenant)) {
        let (_, v) = kv.map_err(|e| e.to_string())?;
        if let Ok(spec) = serde_json::from_slice::<CampaignSpec>(&v) {
            shared.extend(spec.codes.iter().map(|k| match_key(t.code_match, k)));
            campaigns.insert(spec.id);
        }
    }
    Ok((t.code_match, campaigns, shared))
}

fn open(cfg: &Config) -> Result<Offline, String> {
    if let crate::config::Engine::Postgres(_) = cfg.storage.engine {
        // The offline path writes sled's files; on PostgreSQL the running replicas take the
        // same import online (sliced jobs, every replica sees the codes at once).
        return Err("the offline codes commands work on the sled engine's data directory; \
             with storage.engine = \"postgres\" use the admin API while the service runs: \
             POST /admin/v1/tenants/{t}/campaigns/{c}/codes (CSV), POST …/codes/generate, GET …/codes"
            .into());
    }
    let store = Offline::open(&StoreOptions {
        path: cfg.storage.path.clone(),
        cache_capacity_bytes: cfg.storage.cache_capacity_mb * 1024 * 1024,
    })
    .map_err(|e| e.to_string())?;
    // An older store keeps its codes in an older layout: `serve` migrates it at start.
    let version = store
        .get(crate::store::SCHEMA_VERSION_KEY)
        .map_err(|e| e.to_string())?
        .and_then(|v| crate::store::decode_u64(&v))
        .unwrap_or(1);
    if version < crate::store::SCHEMA_VERSION {
        return Err(format!(
            "{}: the store's records are of schema version {version}; start `karma-provider serve` \
             on it once (it migrates them to version {}), stop it, then run this command",
            cfg.storage.path.display(),
            crate::store::SCHEMA_VERSION
        ));
    }
    Ok(store)
}

struct Progress {
    what: &'static str,
    total_bytes: u64,
    started: Instant,
    last: Instant,
}

impl Progress {
    fn new(what: &'static str, total_bytes: u64) -> Progress {
        Progress {
            what,
            total_bytes,
            started: Instant::now(),
            last: Instant::now(),
        }
    }

    fn tick(&mut self, rows: u64, bytes: u64, force: bool) {
        if !force && self.last.elapsed().as_millis() < 200 {
            return;
        }
        self.last = Instant::now();
        let pct = (bytes * 100)
            .checked_div(self.total_bytes)
            .unwrap_or(100)
            .min(100);
        let filled = (pct / 5) as usize;
        let rate = rows as f64 / self.started.elapsed().as_secs_f64().max(1e-3);
        let mut e = std::io::stderr().lock();
        let _ = write!(
            e,
            "\r{:<9} [{}{}] {:>3}% {:>11} rows {:>9.0} rows/s",
            self.what,
            "#".repeat(filled),
            ".".repeat(20 - filled),
            pct,
            rows,
            rate
        );
        let _ = e.flush();
    }

    fn done(&mut self, rows: u64, bytes: u64) {
        self.tick(rows, bytes, true);
        let _ = writeln!(std::io::stderr());
    }
}

/// What `codes import` reports.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct ImportSummary {
    pub imported: u64,
    pub duplicates: u64,
    pub invalid: Vec<(u64, String)>,
    pub seconds: f64,
    pub codes_per_second: f64,
    pub store_bytes: u64,
    /// Codes in the tenant's code index afterwards (every bulk code of the tenant).
    pub indexed: u64,
    /// Time spent writing the code index file (beside the store's final flush).
    pub index_seconds: f64,
    pub index_bytes: u64,
}

/// Start the tenant's new code index (see [`Offline::code_index_builder`]).
fn start_code_index(store: &Offline, tenant: &str) -> Result<IndexBuilder, String> {
    use crate::service::keys;
    store
        .code_index_builder(
            tenant,
            (
                &keys::bulk_code_prefix(tenant),
                &keys::bulk_generation(tenant),
                crate::service::codes::index_entries,
            ),
        )
        .map_err(|e| format!("starting the code index: {e}"))
}

fn index_size(cfg: &Config, tenant: &str) -> u64 {
    let dir = crate::store::CodeIndex::dir_in(&cfg.storage.path);
    std::fs::metadata(crate::store::CodeIndex::path_for(&dir, tenant))
        .map(|m| m.len())
        .unwrap_or(0)
}

/// A CSV reader over `file`: no header handling (the first row is looked at by
/// [`is_header`]), rows of any length.
fn csv_reader(file: &Path) -> Result<csv::Reader<std::fs::File>, String> {
    let f = std::fs::File::open(file).map_err(|e| format!("{}: {e}", file.display()))?;
    Ok(csv::ReaderBuilder::new()
        .has_headers(false)
        .flexible(true)
        .buffer_capacity(1 << 20)
        .from_reader(f))
}

/// What the import is about: the file, its campaign and tenant, how codes match there,
/// and the match keys of the tenant's shared codes (never imported as bulk codes).
struct Import<'a> {
    file: &'a Path,
    total_bytes: u64,
    tenant: &'a str,
    campaign: &'a str,
    mode: CodeMatch,
    shared: HashSet<String>,
    /// Rows per batch.
    batch: usize,
    quiet: bool,
}

pub fn import(
    cfg: &Config,
    tenant: &str,
    campaign: &str,
    file: &Path,
    batch: usize,
    quiet: bool,
) -> Result<ImportSummary, String> {
    let store = open(cfg)?;
    let (mode, campaigns, shared) = tenant_view(cfg, &store, tenant)?;
    if !campaigns.contains(campaign) {
        return Err(format!("tenant {tenant:?} has no campaign {campaign:?}"));
    }
    let total_bytes = std::fs::metadata(file)
        .map_err(|e| format!("{}: {e}", file.display()))?
        .len();
    let job = Import {
        file,
        total_bytes,
        tenant,
        campaign,
        mode,
        shared,
        batch: batch.max(1),
        quiet,
    };
    let started = Instant::now();
    let invalid = check_pass(&job)?;
    if !invalid.is_empty() {
        return Ok(ImportSummary {
            invalid,
            ..ImportSummary::default()
        });
    }
    let (store, done) = insert_pass(&job, store)?;
    let store_bytes = store.size_on_disk();
    let seconds = started.elapsed().as_secs_f64();
    Ok(ImportSummary {
        imported: done.imported,
        duplicates: done.duplicates,
        invalid: Vec::new(),
        seconds,
        codes_per_second: done.imported as f64 / seconds.max(1e-9),
        store_bytes,
        indexed: done.indexed,
        index_seconds: done.index_seconds,
        index_bytes: index_size(cfg, tenant),
    })
}

/// Pass 1: every row must be valid, or nothing is written. The invalid rows by line.
fn check_pass(job: &Import<'_>) -> Result<Vec<(u64, String)>, String> {
    let mut invalid = Vec::new();
    let mut p = Progress::new("checking", job.total_bytes);
    let mut rec = csv::StringRecord::new();
    let mut rdr = csv_reader(job.file)?;
    let mut n = 0u64;
    loop {
        match rdr.read_record(&mut rec) {
            Ok(false) => break,
            Ok(true) => {
                n += 1;
                if !(n == 1 && is_header(&rec)) {
                    if let Err(m) = parse_row(job.campaign, job.mode, &rec) {
                        invalid.push((rec.position().map(|p| p.line()).unwrap_or(n), m));
                    }
                }
            }
            Err(e) => invalid.push((
                e.position().map(|p| p.line()).unwrap_or(n + 1),
                e.to_string(),
            )),
        }
        if !job.quiet && n % 100_000 == 0 {
            p.tick(n, rdr.position().byte(), false);
        }
    }
    if !job.quiet {
        p.done(n, job.total_bytes);
    }
    Ok(invalid)
}

/// What pass 2 did.
struct Inserted {
    imported: u64,
    duplicates: u64,
    indexed: u64,
    index_seconds: f64,
}

/// A batch of parsed rows, the rows read so far and the byte position after them.
type Batch = Result<(Vec<CodeRow>, u64, u64), String>;

/// Pass 2: insert each code unless it exists (one atomic insert-if-absent per code, so
/// duplicates in the file or the store are found without a separate read). The tenant's
/// bulk-code generation is bumped first (and made visible before any code), so a crash
/// part-way leaves any code index marked old. The new code index starts from every code
/// the tenant has; this import's codes are added as they are written, on a thread of
/// its own, while a reader thread parses the next batch.
fn insert_pass(job: &Import<'_>, mut store: Offline) -> Result<(Offline, Inserted), String> {
    let (to_index, indexer) = spawn_indexer(start_code_index(&store, job.tenant)?);
    let generation = crate::service::codes::bump_generation(&mut store, job.tenant)
        .map_err(|e| e.to_string())?;
    store.apply().map_err(|e| e.to_string())?;
    let mut p = Progress::new("importing", job.total_bytes);
    let (mut imported, mut duplicates, mut rows_seen) = (0u64, 0u64, 0u64);
    let threads = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
        .clamp(1, 8);
    let (batches, parser) = spawn_parser(csv_reader(job.file)?, job, job.batch);
    for next in batches {
        let (rows, seen, pos) = next?;
        rows_seen = seen;
        for part in insert_batch(&store, &job.shared, job.tenant, rows, threads) {
            let (i, d, written_codes) = part?;
            imported += i;
            duplicates += d;
            // A failed index thread reports its error when joined, below.
            let _ = to_index.send(written_codes);
        }
        if !job.quiet {
            p.tick(rows_seen, pos, false);
        }
    }
    let _ = parser.join();
    drop(to_index);
    let index = indexer
        .join()
        .unwrap_or_else(|_| Err("the code index thread panicked".into()))?;
    let (indexed, index_seconds) = make_durable(&mut store, index, generation)?;
    if !job.quiet {
        p.done(rows_seen, job.total_bytes);
    }
    let done = Inserted {
        imported,
        duplicates,
        indexed,
        index_seconds,
    };
    Ok((store, done))
}

/// A thread adding written codes (encoded) to the code index; join it for the index.
fn spawn_indexer(
    index: IndexBuilder,
) -> (
    std::sync::mpsc::SyncSender<Vec<u8>>,
    std::thread::JoinHandle<Result<IndexBuilder, String>>,
) {
    let (to_index, index_rx) = std::sync::mpsc::sync_channel::<Vec<u8>>(4);
    let indexer = std::thread::spawn(move || -> Result<_, String> {
        let mut index = index;
        for written in index_rx {
            index
                .push_encoded(&written)
                .map_err(|e| format!("code index: {e}"))?;
        }
        Ok(index)
    });
    (to_index, indexer)
}

/// A thread reading and parsing `rdr` in batches of `rows` rows; the first invalid
/// row (the file changed since pass 1) ends it with an error.
fn spawn_parser(
    mut rdr: csv::Reader<std::fs::File>,
    job: &Import<'_>,
    rows: usize,
) -> (
    std::sync::mpsc::Receiver<Batch>,
    std::thread::JoinHandle<()>,
) {
    let (campaign_id, mode) = (job.campaign.to_owned(), job.mode);
    let (to_insert, batches) = std::sync::mpsc::sync_channel::<Batch>(2);
    let parser = std::thread::spawn(move || {
        let (mut rec, mut first, mut seen) = (csv::StringRecord::new(), true, 0u64);
        loop {
            let mut batch = Vec::with_capacity(rows);
            let mut more = true;
            while batch.len() < rows {
                match rdr.read_record(&mut rec) {
                    Ok(true) => {
                        seen += 1;
                        let header = first && is_header(&rec);
                        first = false;
                        if !header {
                            match parse_row(&campaign_id, mode, &rec) {
                                Ok(r) => batch.push(r),
                                Err(e) => {
                                    let _ = to_insert.send(Err(e));
                                    return;
                                }
                            }
                        }
                    }
                    Ok(false) => {
                        more = false;
                        break;
                    }
                    Err(e) => {
                        let _ = to_insert.send(Err(e.to_string()));
                        return;
                    }
                }
            }
            let pos = rdr.position().byte();
            if (!batch.is_empty() && to_insert.send(Ok((batch, seen, pos))).is_err()) || !more {
                return;
            }
        }
    });
    (batches, parser)
}

/// One thread's share of a batch: codes inserted, duplicates, the inserted codes encoded
/// for the code index.
type Part = Result<(u64, u64, Vec<u8>), String>;

/// Insert a batch from `threads` threads (as many as there are cores, up to 8), each
/// with its own share of the buckets the batch touches, so no two write one record.
fn insert_batch(
    store: &Offline,
    shared: &HashSet<String>,
    tenant: &str,
    rows: Vec<CodeRow>,
    threads: usize,
) -> Vec<Part> {
    let groups: Vec<(Vec<u8>, Vec<CodeRow>)> = crate::service::codes::by_bucket(tenant, rows)
        .into_iter()
        .collect();
    let chunk = groups.len().div_ceil(threads);
    std::thread::scope(|sc| {
        let handles: Vec<_> = groups
            .chunks(chunk.max(1))
            .map(|part| sc.spawn(move || insert_part(store, shared, part)))
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| Err("an import thread panicked".into()))
            })
            .collect()
    })
}

/// One thread's buckets: each read, given the codes it lacks, and written back.
fn insert_part(
    store: &Offline,
    shared: &HashSet<String>,
    part: &[(Vec<u8>, Vec<CodeRow>)],
) -> Part {
    use crate::service::codes::{decode_bucket, encode_bucket};
    let (mut i, mut d) = (0u64, 0u64);
    let mut written_codes = Vec::new();
    for (key, rows) in part {
        let stored = store.get(key).map_err(|e| e.to_string())?;
        let mut bucket = match stored {
            Some(v) => decode_bucket(&v).map_err(|e| e.to_string())?,
            None => Default::default(),
        };
        let before = i;
        for r in rows {
            if shared.contains(&r.match_key) || bucket.contains_key(&r.match_key) {
                d += 1;
                continue;
            }
            let value = serde_json::to_vec(&r.code).unwrap_or_default();
            crate::store::codeindex::encode(&mut written_codes, r.match_key.as_bytes(), &value)
                .map_err(|e| e.to_string())?;
            bucket.insert(r.match_key.clone(), r.code.clone());
            i += 1;
        }
        if i > before {
            store
                .put_now(key, &encode_bucket(&bucket))
                .map_err(|e| e.to_string())?;
        }
    }
    Ok((i, d, written_codes))
}

/// The store is made durable while the index file is written beside it; the file is put
/// in place only once the codes it names are durable. Returns the codes in the new index
/// and the seconds spent writing it.
fn make_durable(
    store: &mut Offline,
    index: IndexBuilder,
    generation: u64,
) -> Result<(u64, f64), String> {
    let (synced, written) = std::thread::scope(|sc| {
        let w = sc.spawn(move || {
            let t = Instant::now();
            index
                .write(generation)
                .map(|f| (f, t.elapsed().as_secs_f64()))
        });
        let s = store.sync();
        (
            s,
            w.join()
                .unwrap_or_else(|_| Err(StoreError::Io("the code index thread panicked".into()))),
        )
    });
    synced.map_err(|e| e.to_string())?;
    let (file, index_seconds) = written.map_err(|e| format!("writing the code index: {e}"))?;
    let indexed = file
        .publish()
        .map_err(|e| format!("writing the code index: {e}"))?
        .entries();
    Ok((indexed, index_seconds))
}

/// Generate `count` codes into a campaign and write them (one per line) to `out`.
pub fn generate_cmd(
    cfg: &Config,
    tenant: &str,
    campaign: &str,
    pattern: &str,
    count: u64,
    out: &Path,
) -> Result<u64, String> {
    let mut store = open(cfg)?;
    let (mode, campaigns, shared) = tenant_view(cfg, &store, tenant)?;
    if !campaigns.contains(campaign) {
        return Err(format!("tenant {tenant:?} has no campaign {campaign:?}"));
    }
    // Refuse before anything is written: the whole count must fit the 1 % rule.
    if let Err((field, m)) =
        check_generation(&mut store, tenant, pattern, count).map_err(|e| e.to_string())?
    {
        return Err(format!("--{field}: {m}"));
    }
    let mut rng = crate::codegen::os_rng()?;
    let mut index = start_code_index(&store, tenant)?;
    let mut w = std::io::BufWriter::new(
        std::fs::File::create(out).map_err(|e| format!("{}: {e}", out.display()))?,
    );
    let _ = writeln!(w, "code");
    let mut made = 0u64;
    let mut p = Progress::new("generating", count);
    while made < count {
        let n = (count - made).min(BATCH as u64);
        let codes = generate(
            &mut store,
            &GenTarget {
                tenant,
                campaign,
                mode,
            },
            pattern,
            n,
            &shared,
            &mut rng,
        )
        .map_err(|e| e.to_string())?
        .map_err(|(field, m)| format!("--{field}: {m}"))?;
        store.apply().map_err(|e| e.to_string())?;
        for c in &codes {
            writeln!(w, "{c}").map_err(|e| e.to_string())?;
            let b = BulkCode {
                c: campaign.to_owned(),
                k: c.clone(),
                u: None,
                g: None,
            };
            index
                .push(
                    match_key(mode, c).as_bytes(),
                    &serde_json::to_vec(&b).unwrap_or_default(),
                )
                .map_err(|e| format!("code index: {e}"))?;
        }
        made += codes.len() as u64;
        p.tick(made, made, false);
    }
    w.flush().map_err(|e| e.to_string())?;
    store.sync().map_err(|e| e.to_string())?;
    p.done(made, made);
    store
        .finish_code_index(index, &crate::service::keys::bulk_generation(tenant))
        .map_err(|e| format!("writing the code index: {e}"))?;
    Ok(made)
}

/// Every bulk code of a campaign as CSV (`code,valid_until,assigned_user,state`).
pub fn export(
    cfg: &Config,
    tenant: &str,
    campaign: &str,
    out: &mut dyn Write,
) -> Result<u64, String> {
    let store = open(cfg)?;
    let limit = cfg
        .tenant(tenant)
        .and_then(|t| t.campaigns.iter().find(|c| c.id == campaign))
        .and_then(|c| c.max_uses_per_code)
        .unwrap_or(1);
    writeln!(out, "code,valid_until,assigned_user,state").map_err(|e| e.to_string())?;
    let mut n = 0;
    for kv in store.scan_prefix(&crate::service::keys::bulk_code_prefix(tenant)) {
        let (_, v) = kv.map_err(|e| e.to_string())?;
        let bucket = crate::service::codes::decode_bucket(&v).map_err(|e| e.to_string())?;
        for b in bucket.into_values().filter(|b| b.c == campaign) {
            let used = store
                .get(&crate::service::keys::used_code(tenant, &b.c, &b.k))
                .map_err(|e| e.to_string())?
                .and_then(|v| crate::store::decode_u64(&v))
                .unwrap_or(0);
            // Offline there are no live holds to count: a code is used or available.
            let state = if used >= limit { "used" } else { "available" };
            out.write_all(export_line(&b, state).as_bytes())
                .map_err(|e| e.to_string())?;
            n += 1;
        }
    }
    Ok(n)
}
