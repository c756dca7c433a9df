//! `karma-provider codes import|generate|export`: bulk codes on a stopped server's data
//! directory, streaming, for millions of codes (the admin API does the same online, for
//! files that fit in a request). Import reads the file twice: first every row is checked
//! (invalid rows are listed by line and nothing is written), then each code is inserted
//! unless it exists (one atomic insert-if-absent), duplicates counted. Progress goes to
//! stderr. A crash during the second pass leaves a prefix imported; running the same
//! import again counts those codes as duplicates and imports the rest.

use std::collections::HashSet;
use std::io::Write;
use std::path::Path;
use std::time::Instant;

use crate::config::Config;
use crate::service::codes::{
    check_generation, export_line, generate, is_header, parse_row, BulkCode, CodeStore, GenTarget,
};
use crate::store::{Offline, StoreError, StoreOptions};
use crate::voucher::{match_key, CampaignSpec, CodeMatch};

const BATCH: usize = 50_000;

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
    Offline::open(&StoreOptions {
        path: cfg.storage.path.clone(),
        cache_capacity_bytes: cfg.storage.cache_capacity_mb * 1024 * 1024,
    })
    .map_err(|e| e.to_string())
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
fn start_code_index(
    store: &Offline,
    tenant: &str,
) -> Result<crate::store::codeindex::IndexBuilder, String> {
    use crate::service::keys;
    store
        .code_index_builder(
            tenant,
            &keys::bulk_code_prefix(tenant),
            &keys::bulk_generation(tenant),
        )
        .map_err(|e| format!("starting the code index: {e}"))
}

fn index_size(cfg: &Config, tenant: &str) -> u64 {
    let dir = crate::store::CodeIndex::dir_in(&cfg.storage.path);
    std::fs::metadata(crate::store::CodeIndex::path_for(&dir, tenant))
        .map(|m| m.len())
        .unwrap_or(0)
}

pub fn import(
    cfg: &Config,
    tenant: &str,
    campaign: &str,
    file: &Path,
    quiet: bool,
) -> Result<ImportSummary, String> {
    let store = open(cfg)?;
    let (mode, campaigns, shared) = tenant_view(cfg, &store, tenant)?;
    if !campaigns.contains(campaign) {
        return Err(format!("tenant {tenant:?} has no campaign {campaign:?}"));
    }
    let total = std::fs::metadata(file)
        .map_err(|e| format!("{}: {e}", file.display()))?
        .len();
    let reader = || -> Result<csv::Reader<std::fs::File>, String> {
        let f = std::fs::File::open(file).map_err(|e| format!("{}: {e}", file.display()))?;
        Ok(csv::ReaderBuilder::new()
            .has_headers(false)
            .flexible(true)
            .buffer_capacity(1 << 20)
            .from_reader(f))
    };
    let started = Instant::now();
    // Pass 1: every row must be valid, or nothing is written.
    let mut invalid = Vec::new();
    let mut p = Progress::new("checking", total);
    let mut rec = csv::StringRecord::new();
    let mut rdr = reader()?;
    let mut n = 0u64;
    loop {
        match rdr.read_record(&mut rec) {
            Ok(false) => break,
            Ok(true) => {
                n += 1;
                if !(n == 1 && is_header(&rec)) {
                    if let Err(m) = parse_row(campaign, mode, &rec) {
                        invalid.push((rec.position().map(|p| p.line()).unwrap_or(n), m));
                    }
                }
            }
            Err(e) => invalid.push((
                e.position().map(|p| p.line()).unwrap_or(n + 1),
                e.to_string(),
            )),
        }
        if !quiet && n % 100_000 == 0 {
            p.tick(n, rdr.position().byte(), false);
        }
    }
    if !quiet {
        p.done(n, total);
    }
    if !invalid.is_empty() {
        return Ok(ImportSummary {
            invalid,
            ..ImportSummary::default()
        });
    }
    // Pass 2: insert each code unless it exists (one atomic insert-if-absent per code, so
    // duplicates in the file or the store are found without a separate read). The tenant's
    // bulk-code generation is bumped first (and made visible before any code), so a crash
    // part-way leaves any code index marked old.
    // The new code index starts from every code the tenant has; this import's codes are
    // added as they are written.
    let mut store = store;
    let index = start_code_index(&store, tenant)?;
    // The index takes the written codes on a thread of its own, beside the inserts.
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
    let generation =
        crate::service::codes::bump_generation(&mut store, tenant).map_err(|e| e.to_string())?;
    store.apply().map_err(|e| e.to_string())?;
    let mut p = Progress::new("importing", total);
    let (mut imported, mut duplicates, mut rows_seen) = (0u64, 0u64, 0u64);
    let threads = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
        .clamp(1, 8);
    // A reader thread parses the next batch while this one is inserted.
    let mut rdr = reader()?;
    let (campaign_id, tenant_id) = (campaign.to_owned(), tenant.to_owned());
    type Batch = Result<(Vec<crate::service::codes::CodeRow>, u64, u64), String>;
    let (to_insert, batches) = std::sync::mpsc::sync_channel::<Batch>(2);
    let parser = std::thread::spawn(move || {
        let (mut rec, mut first, mut seen) = (csv::StringRecord::new(), true, 0u64);
        loop {
            let mut batch = Vec::with_capacity(BATCH);
            let mut more = true;
            while batch.len() < BATCH {
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
    for next in batches {
        let (rows, seen, pos) = next?;
        rows_seen = seen;
        // Insert the batch from as many threads as there are cores (sled takes concurrent
        // writers; each insert-if-absent is atomic on its own).
        let chunk = rows.len().div_ceil(threads);
        type Part = Result<(u64, u64, Vec<u8>), String>;
        let results: Vec<Part> = std::thread::scope(|sc| {
            let handles: Vec<_> = rows
                .chunks(chunk.max(1))
                .map(|part| {
                    let (store, shared, tenant) = (&store, &shared, tenant_id.as_str());
                    sc.spawn(move || -> Part {
                        let (mut i, mut d) = (0u64, 0u64);
                        // The written codes, encoded for the code index.
                        let mut written_codes = Vec::with_capacity(part.len() * 64);
                        for r in part {
                            let value = serde_json::to_vec(&r.code).unwrap_or_default();
                            let written = !shared.contains(&r.match_key)
                                && store
                                    .insert_new(
                                        &crate::service::keys::bulk_code(tenant, &r.match_key),
                                        &value,
                                    )
                                    .map_err(|e| e.to_string())?;
                            if written {
                                i += 1;
                                crate::store::codeindex::encode(
                                    &mut written_codes,
                                    r.match_key.as_bytes(),
                                    &value,
                                )
                                .map_err(|e| e.to_string())?;
                            } else {
                                d += 1;
                            }
                        }
                        Ok((i, d, written_codes))
                    })
                })
                .collect();
            handles
                .into_iter()
                .map(|h| {
                    h.join()
                        .unwrap_or_else(|_| Err("an import thread panicked".into()))
                })
                .collect()
        });
        for r in results {
            let (i, d, written_codes) = r?;
            imported += i;
            duplicates += d;
            // A failed index thread reports its error when joined, below.
            let _ = to_index.send(written_codes);
        }
        if !quiet {
            p.tick(rows_seen, pos, false);
        }
    }
    let _ = parser.join();
    // The store is made durable while the index file is written beside it; the file is put
    // in place only once the codes it names are durable.
    drop(to_index);
    let index = indexer
        .join()
        .unwrap_or_else(|_| Err("the code index thread panicked".into()))?;
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
    if !quiet {
        p.done(rows_seen, total);
    }
    let store_bytes = store.size_on_disk();
    let index_bytes = index_size(cfg, tenant);
    let seconds = started.elapsed().as_secs_f64();
    Ok(ImportSummary {
        imported,
        duplicates,
        invalid: Vec::new(),
        seconds,
        codes_per_second: imported as f64 / seconds.max(1e-9),
        store_bytes,
        indexed,
        index_seconds,
        index_bytes,
    })
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
        let Ok(b) = serde_json::from_slice::<BulkCode>(&v) else {
            continue;
        };
        if b.c != campaign {
            continue;
        }
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
    Ok(n)
}
