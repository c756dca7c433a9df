//! The bulk-code index: for each tenant, one immutable file that maps a bulk code's match
//! key to its record (the code's JSON, as its bucket record `bcb/{tenant}/{bucket}` holds
//! it; `service::codes` turns a bucket into entries) in a
//! static hash table: the key's hash picks a bucket (~32 codes, ~1.5 KiB), the bucket
//! offsets and checksums are kept in memory (16 bytes per bucket), and a lookup is one positioned read
//! (`pread`) of one bucket on the calling thread, with no lock shared with the store's
//! writer.
//!
//! Why it exists: sled keeps at most a handful of keys per leaf, so ten million codes make
//! about a million leaves, far more than its page cache; a random code's leaf is read from
//! the file on the writer thread (~20 µs a check more than a code of a small campaign), and
//! sled reads from other threads hold up the writer's batch (sled 0.34 takes one
//! process-wide lock for a batch that waits for every read in flight). The index moves
//! that read off the writer. See ARCHITECTURE.md ("Bulk codes").
//!
//! The index is derived, never the source of truth. Bulk codes are insert-only (never
//! changed, never deleted), so every entry of an index file stays true for ever; a code
//! missing from it (imported after the file was built) is looked up in the store as
//! before. Each file records the tenant's bulk-code *generation* it was built from (a
//! counter the store bumps before any bulk code is written); a file from an older
//! generation is still used and is rebuilt in the background. A file is written to a
//! temporary name, fsynced, renamed, and the directory fsynced, so a crash leaves the old
//! file or the new one. A file that fails its checks is ignored (and rebuilt); a bucket
//! whose bytes do not match their checksum (damage inside the data, which the footer's
//! checksum does not cover) is a failed read: that lookup goes to the store, and the
//! bucket is never carried into a new file.
//!
//! Building is linear, with no sort: entries are appended to 64 spill files by the top
//! bits of their hash, then each spill file (a contiguous range of buckets) is read back,
//! ordered by bucket and appended to the index. Memory stays at one spill file.
//!
//! File layout (integers little-endian):
//! ```text
//! "KPCIDX03"                                    8-byte magic
//! buckets: entries (u16 key len, key, u32 value len, value), bucket after bucket
//! footer: u64 start of every bucket, then the end of the last one; then for every
//!         bucket the first 8 bytes of the SHA-256 of its bytes
//! trailer: u64 footer offset, u64 footer length, u64 entries, u64 generation,
//!          32-byte SHA-256 of the footer, "KPCIDX03"
//! ```

use std::collections::HashMap;
use std::fs::File;
use std::io::{BufWriter, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

use sha2::{Digest, Sha256};

use super::StoreError;

const MAGIC: &[u8; 8] = b"KPCIDX03";
const TRAILER: usize = 8 * 4 + 32 + 8;
/// Codes per bucket, on average.
const PER_BUCKET: u64 = 32;
/// Spill files while building (the top bits of the hash pick one).
const PARTITIONS: usize = 64;

fn io(what: &str, path: &Path, e: std::io::Error) -> StoreError {
    StoreError::Io(format!("{what} {}: {e}", path.display()))
}

fn corrupt(path: &Path, why: &str) -> StoreError {
    StoreError::Io(format!("code index {}: {why}", path.display()))
}

/// FNV-1a, then the splitmix64 finaliser to spread the bits. Stable across builds and
/// platforms: it is part of the file format. (Not for secrets; codes are not adversarial
/// here: a lookup never changes the table.)
pub fn hash(key: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in key {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h ^= h >> 30;
    h = h.wrapping_mul(0xbf58_476d_1ce4_e5b9);
    h ^= h >> 27;
    h = h.wrapping_mul(0x94d0_49bb_1331_11eb);
    h ^ (h >> 31)
}

/// The bucket of hash `h` among `n`: order-preserving, so a range of hashes (a spill
/// file) is a range of buckets.
pub fn bucket_of(h: u64, n: u64) -> u64 {
    ((u128::from(h) * u128::from(n)) >> 64) as u64
}

fn partition_of(h: u64) -> usize {
    (h >> 58) as usize
}

/// Append one entry (u16 key length, key, u32 value length, value).
pub fn encode(out: &mut Vec<u8>, key: &[u8], value: &[u8]) -> Result<(), StoreError> {
    let klen = u16::try_from(key.len())
        .map_err(|_| StoreError::Io("code index: key longer than 65535 bytes".into()))?;
    let vlen = u32::try_from(value.len())
        .map_err(|_| StoreError::Io("code index: value too long".into()))?;
    out.extend_from_slice(&klen.to_le_bytes());
    out.extend_from_slice(key);
    out.extend_from_slice(&vlen.to_le_bytes());
    out.extend_from_slice(value);
    Ok(())
}

/// The entry at `p`: (key, value, where the next one starts); `None` when cut short.
fn decode(buf: &[u8], p: usize) -> Option<(&[u8], &[u8], usize)> {
    let klen = u16::from_le_bytes(buf.get(p..p + 2)?.try_into().ok()?) as usize;
    let key = buf.get(p + 2..p + 2 + klen)?;
    let vs = p + 2 + klen;
    let vlen = u32::from_le_bytes(buf.get(vs..vs + 4)?.try_into().ok()?) as usize;
    let value = buf.get(vs + 4..vs + 4 + vlen)?;
    Some((key, value, vs + 4 + vlen))
}

/// Every entry of an encoded buffer, in order.
fn entries(buf: &[u8]) -> impl Iterator<Item = Result<(&[u8], &[u8]), StoreError>> {
    let mut p = 0;
    std::iter::from_fn(move || {
        if p >= buf.len() {
            return None;
        }
        match decode(buf, p) {
            Some((k, v, next)) => {
                p = next;
                Some(Ok((k, v)))
            }
            None => {
                p = buf.len();
                Some(Err(StoreError::Io("code index: truncated entry".into())))
            }
        }
    })
}

/// One tenant's index file, open for lookups.
pub struct Segment {
    file: File,
    path: PathBuf,
    generation: u64,
    entries: u64,
    /// Start of every bucket in the file, then the end of the last one.
    offsets: Vec<u64>,
    /// The first 8 bytes of each bucket's SHA-256, checked on every read of the bucket.
    sums: Vec<[u8; 8]>,
}

/// The checksum of one bucket's bytes as the footer keeps it.
fn bucket_sum(bytes: &[u8]) -> [u8; 8] {
    let d = Sha256::digest(bytes);
    let mut out = [0u8; 8];
    out.copy_from_slice(&d[..8]);
    out
}

impl Segment {
    /// Open and check an index file (magic, trailer, footer checksum, bucket bounds).
    /// Each bucket's own checksum is checked when the bucket is read.
    pub fn open(path: &Path) -> Result<Segment, StoreError> {
        let mut file = File::open(path).map_err(|e| io("opening", path, e))?;
        let len = file.metadata().map_err(|e| io("reading", path, e))?.len();
        if len < (MAGIC.len() + TRAILER) as u64 {
            return Err(corrupt(path, "too short"));
        }
        let mut head = [0u8; 8];
        file.read_exact_at(&mut head, 0)
            .map_err(|e| io("reading", path, e))?;
        let mut t = [0u8; TRAILER];
        file.read_exact_at(&mut t, len - TRAILER as u64)
            .map_err(|e| io("reading", path, e))?;
        if &head != MAGIC || &t[TRAILER - 8..] != MAGIC {
            return Err(corrupt(
                path,
                "not a code index of this version (bad magic)",
            ));
        }
        let u = |i: usize| u64::from_le_bytes(t[i * 8..i * 8 + 8].try_into().unwrap_or([0; 8]));
        let (footer_off, footer_len, entries, generation) = (u(0), u(1), u(2), u(3));
        if footer_off < MAGIC.len() as u64
            || footer_off.checked_add(footer_len) != Some(len - TRAILER as u64)
            || footer_len % 8 != 0
            || footer_len < 24
            || (footer_len / 8) % 2 != 1
        {
            return Err(corrupt(path, "footer out of bounds"));
        }
        let mut footer = vec![0u8; footer_len as usize];
        file.seek(SeekFrom::Start(footer_off))
            .map_err(|e| io("reading", path, e))?;
        file.read_exact(&mut footer)
            .map_err(|e| io("reading", path, e))?;
        if Sha256::digest(&footer).as_slice() != &t[32..64] {
            return Err(corrupt(path, "footer checksum mismatch"));
        }
        // The footer: n + 1 bucket offsets, then n bucket checksums.
        let buckets = (footer.len() / 8 - 1) / 2;
        let (offs, sums) = footer.split_at((buckets + 1) * 8);
        let offsets: Vec<u64> = offs
            .chunks_exact(8)
            .map(|c| u64::from_le_bytes(c.try_into().unwrap_or([0; 8])))
            .collect();
        let sums: Vec<[u8; 8]> = sums
            .chunks_exact(8)
            .map(|c| c.try_into().unwrap_or([0; 8]))
            .collect();
        if offsets.first() != Some(&(MAGIC.len() as u64))
            || offsets.last() != Some(&footer_off)
            || offsets.windows(2).any(|w| w[0] > w[1])
        {
            return Err(corrupt(path, "bucket offsets out of order"));
        }
        Ok(Segment {
            file,
            path: path.to_owned(),
            generation,
            entries,
            offsets,
            sums,
        })
    }

    /// The bytes of bucket `b`, checked against its checksum.
    fn bucket(&self, b: usize) -> Result<Vec<u8>, StoreError> {
        let (start, end) = (self.offsets[b], self.offsets[b + 1]);
        let mut buf = vec![0u8; (end - start) as usize];
        self.file
            .read_exact_at(&mut buf, start)
            .map_err(|e| StoreError::Io(format!("reading the code index: {e}")))?;
        if bucket_sum(&buf) != self.sums[b] {
            return Err(corrupt(
                &self.path,
                &format!("bucket {b} checksum mismatch"),
            ));
        }
        Ok(buf)
    }

    /// The bulk-code generation this file was built from.
    pub fn generation(&self) -> u64 {
        self.generation
    }

    pub fn entries(&self) -> u64 {
        self.entries
    }

    fn buckets(&self) -> u64 {
        self.offsets.len() as u64 - 1
    }

    /// The value stored under `key`, if the file has it.
    pub fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        let b = bucket_of(hash(key), self.buckets()) as usize;
        if self.offsets[b] == self.offsets[b + 1] {
            return Ok(None);
        }
        let buf = self.bucket(b)?;
        for e in entries(&buf) {
            let (k, v) = e?;
            if k == key {
                return Ok(Some(v.to_vec()));
            }
        }
        Ok(None)
    }

    /// Feed every entry of this file to `b` (to carry it into a new file), bucket by
    /// bucket, each checked against its checksum: a damaged file is never carried over.
    pub fn copy_into(&self, b: &mut IndexBuilder) -> Result<(), StoreError> {
        for i in 0..self.buckets() as usize {
            if self.offsets[i] == self.offsets[i + 1] {
                continue;
            }
            let buf = self.bucket(i)?;
            b.push_encoded(&buf)?;
        }
        Ok(())
    }
}

/// [`bucket_sum`] of the bytes fed to a hasher.
fn bucket_sum_of(h: Sha256) -> [u8; 8] {
    let mut out = [0u8; 8];
    out.copy_from_slice(&h.finalize()[..8]);
    out
}

/// Builds an index file from entries given in any order (see the module doc).
pub struct IndexBuilder {
    path: PathBuf,
    spill_dir: PathBuf,
    parts: Vec<BufWriter<File>>,
    entries: u64,
}

impl IndexBuilder {
    pub fn create(path: &Path) -> Result<IndexBuilder, StoreError> {
        let spill_dir = path.with_extension("build");
        let _ = std::fs::remove_dir_all(&spill_dir);
        std::fs::create_dir_all(&spill_dir).map_err(|e| io("creating", &spill_dir, e))?;
        let parts = (0..PARTITIONS)
            .map(|i| {
                let p = spill_dir.join(format!("{i:02}"));
                File::create(&p)
                    .map(|f| BufWriter::with_capacity(64 << 10, f))
                    .map_err(|e| io("creating", &p, e))
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(IndexBuilder {
            path: path.to_owned(),
            spill_dir,
            parts,
            entries: 0,
        })
    }

    pub fn push(&mut self, key: &[u8], value: &[u8]) -> Result<(), StoreError> {
        let mut e = Vec::with_capacity(6 + key.len() + value.len());
        encode(&mut e, key, value)?;
        self.push_entry(key, &e)
    }

    /// Add every entry of a buffer written with [`encode`].
    pub fn push_encoded(&mut self, buf: &[u8]) -> Result<(), StoreError> {
        let mut p = 0;
        while p < buf.len() {
            let (k, _, next) =
                decode(buf, p).ok_or_else(|| StoreError::Io("code index: bad entry".into()))?;
            self.push_entry(k, &buf[p..next])?;
            p = next;
        }
        Ok(())
    }

    fn push_entry(&mut self, key: &[u8], encoded: &[u8]) -> Result<(), StoreError> {
        let part = partition_of(hash(key));
        self.parts[part]
            .write_all(encoded)
            .map_err(|e| io("writing", &self.spill_dir, e))?;
        self.entries += 1;
        Ok(())
    }

    /// Write the index file (durably, in place of any older one) and open it.
    pub fn finish(self, generation: u64) -> Result<Segment, StoreError> {
        self.write(generation)?.publish()
    }

    /// Write and fsync the index file under a temporary name; [`Unpublished::publish`]
    /// puts it in place.
    pub fn write(mut self, generation: u64) -> Result<Unpublished, StoreError> {
        let n = self.entries.div_ceil(PER_BUCKET).max(1);
        let tmp = self.path.with_extension("tmp");
        let f = File::create(&tmp).map_err(|e| io("creating", &tmp, e))?;
        let mut out = BufWriter::with_capacity(1 << 20, f);
        out.write_all(MAGIC).map_err(|e| io("writing", &tmp, e))?;
        let mut pos = MAGIC.len() as u64;
        let mut offsets = Vec::with_capacity(n as usize + 1);
        let mut next_bucket = 0u64;
        let mut sums: Vec<[u8; 8]> = Vec::with_capacity(n as usize);
        let mut cur = Sha256::new();
        let parts = std::mem::take(&mut self.parts);
        let mut buf = Vec::new();
        for (i, part) in parts.into_iter().enumerate() {
            let spill = self.spill_dir.join(format!("{i:02}"));
            drop(
                part.into_inner()
                    .map_err(|e| io("writing", &spill, e.into_error()))?,
            );
            buf.clear();
            File::open(&spill)
                .and_then(|mut r| r.read_to_end(&mut buf))
                .map_err(|e| io("reading", &spill, e))?;
            let _ = std::fs::remove_file(&spill);
            let mut order: Vec<(u64, usize, usize)> = Vec::new();
            let mut p = 0;
            while p < buf.len() {
                let (k, _, next) = decode(&buf, p)
                    .ok_or_else(|| StoreError::Io("code index: bad spill entry".into()))?;
                order.push((bucket_of(hash(k), n), p, next));
                p = next;
            }
            order.sort_unstable_by_key(|e| e.0);
            for (bucket, start, end) in order {
                while next_bucket <= bucket {
                    if next_bucket > 0 {
                        sums.push(bucket_sum_of(std::mem::take(&mut cur)));
                    }
                    offsets.push(pos);
                    next_bucket += 1;
                }
                cur.update(&buf[start..end]);
                out.write_all(&buf[start..end])
                    .map_err(|e| io("writing", &tmp, e))?;
                pos += (end - start) as u64;
            }
        }
        while next_bucket <= n {
            if next_bucket > 0 {
                sums.push(bucket_sum_of(std::mem::take(&mut cur)));
            }
            offsets.push(pos);
            next_bucket += 1;
        }
        let mut footer = Vec::with_capacity(offsets.len() * 16);
        for o in &offsets {
            footer.extend_from_slice(&o.to_le_bytes());
        }
        for c in &sums {
            footer.extend_from_slice(c);
        }
        let mut t = Vec::with_capacity(TRAILER);
        t.extend_from_slice(&pos.to_le_bytes());
        t.extend_from_slice(&(footer.len() as u64).to_le_bytes());
        t.extend_from_slice(&self.entries.to_le_bytes());
        t.extend_from_slice(&generation.to_le_bytes());
        t.extend_from_slice(&Sha256::digest(&footer));
        t.extend_from_slice(MAGIC);
        out.write_all(&footer)
            .and_then(|()| out.write_all(&t))
            .and_then(|()| out.flush())
            .map_err(|e| io("writing", &tmp, e))?;
        let f = out
            .into_inner()
            .map_err(|e| io("writing", &tmp, e.into_error()))?;
        f.sync_all().map_err(|e| io("fsync", &tmp, e))?;
        drop(f);
        Ok(Unpublished {
            tmp,
            path: self.path.clone(),
        })
    }
}

impl Drop for IndexBuilder {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.spill_dir);
    }
}

/// An index file written and fsynced under a temporary name, not yet in place (dropped
/// unpublished, the file is removed).
pub struct Unpublished {
    tmp: PathBuf,
    path: PathBuf,
}

impl Drop for Unpublished {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.tmp);
    }
}

impl Unpublished {
    /// Rename it into place (atomically replacing an older file), fsync the directory, and
    /// open it.
    pub fn publish(self) -> Result<Segment, StoreError> {
        std::fs::rename(&self.tmp, &self.path).map_err(|e| io("renaming", &self.tmp, e))?;
        // (Dropping `self` now finds no temporary file to remove.)
        if let Some(d) = self.path.parent() {
            super::fsync_dir(d)?;
        }
        Segment::open(&self.path)
    }
}

/// Every tenant's index file, shared by the request threads.
pub struct CodeIndex {
    dir: PathBuf,
    segments: RwLock<HashMap<String, Arc<Segment>>>,
    /// Lookups answered by a file / not found in one (for `/metrics`).
    hits: AtomicU64,
    misses: AtomicU64,
}

impl CodeIndex {
    /// The index directory inside a data directory.
    pub fn dir_in(data_dir: &Path) -> PathBuf {
        data_dir.join("codeindex")
    }

    /// Where a tenant's file lives (the tenant id hex-encoded: any id is a safe name).
    pub fn path_for(dir: &Path, tenant: &str) -> PathBuf {
        dir.join(format!("{}.kpi", hex::encode(tenant.as_bytes())))
    }

    /// Open every tenant's file found in `data_dir`. A file that fails its checks is left
    /// out (and logged); the caller rebuilds what is missing or old.
    pub fn open(data_dir: &Path) -> CodeIndex {
        let dir = Self::dir_in(data_dir);
        let mut segments = HashMap::new();
        for entry in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
            let p = entry.path();
            let tenant = p
                .file_name()
                .and_then(|n| n.to_str())
                .and_then(|n| n.strip_suffix(".kpi"))
                .and_then(|h| hex::decode(h).ok())
                .and_then(|b| String::from_utf8(b).ok());
            let Some(t) = tenant else { continue };
            match Segment::open(&p) {
                Ok(s) => {
                    segments.insert(t, Arc::new(s));
                }
                Err(e) => {
                    tracing::warn!(tenant = %t, error = %e, "ignoring the code index; it will be rebuilt")
                }
            }
        }
        CodeIndex {
            dir,
            segments: RwLock::new(segments),
            hits: AtomicU64::new(0),
            misses: AtomicU64::new(0),
        }
    }

    /// No index at all (the PostgreSQL engine: every replica looks codes up in the
    /// database, which is the truth; a local file per replica would be one more copy to
    /// keep fresh).
    pub fn disabled() -> CodeIndex {
        CodeIndex {
            dir: PathBuf::new(),
            segments: RwLock::new(HashMap::new()),
            hits: AtomicU64::new(0),
            misses: AtomicU64::new(0),
        }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn segment(&self, tenant: &str) -> Option<Arc<Segment>> {
        self.segments
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(tenant)
            .cloned()
    }

    /// The stored record of bulk code `match_key`, if the tenant's file has it. `None` also
    /// when there is no file or it cannot be read: the caller then asks the store.
    pub fn get(&self, tenant: &str, match_key: &str) -> Option<Vec<u8>> {
        let s = self.segment(tenant)?;
        match s.get(match_key.as_bytes()) {
            Ok(v) => {
                let c = if v.is_some() {
                    &self.hits
                } else {
                    &self.misses
                };
                c.fetch_add(1, Ordering::Relaxed);
                v
            }
            Err(e) => {
                tracing::warn!(tenant = %tenant, error = %e, "code index read failed; using the store");
                None
            }
        }
    }

    /// The generation of the tenant's file, if it has one.
    pub fn generation(&self, tenant: &str) -> Option<u64> {
        self.segment(tenant).map(|s| s.generation())
    }

    /// (lookups found in a file, lookups a file did not have).
    pub fn lookups(&self) -> (u64, u64) {
        (
            self.hits.load(Ordering::Relaxed),
            self.misses.load(Ordering::Relaxed),
        )
    }

    /// Per tenant with a file: (tenant, codes in it, its generation), by tenant.
    pub fn files(&self) -> Vec<(String, u64, u64)> {
        let mut v: Vec<_> = self
            .segments
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .map(|(t, s)| (t.clone(), s.entries(), s.generation()))
            .collect();
        v.sort();
        v
    }

    pub(super) fn install(&self, tenant: &str, s: Segment) {
        self.segments
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .insert(tenant.to_owned(), Arc::new(s));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn build(dir: &Path, name: &str, keys: &[String], generation: u64) -> Segment {
        let p = dir.join(name);
        let mut b = IndexBuilder::create(&p).unwrap();
        for k in keys {
            b.push(k.as_bytes(), format!("v-{k}").as_bytes()).unwrap();
        }
        b.finish(generation).unwrap()
    }

    #[test]
    fn write_read_merge_and_refuse_damage() {
        let dir = tempfile::tempdir().unwrap();
        let keys: Vec<String> = (0..5000).map(|i| format!("CODE{:06}", i * 2)).collect();
        let s = build(dir.path(), "t.kpi", &keys, 7);
        assert_eq!((s.generation(), s.entries()), (7, 5000));
        assert_eq!(s.buckets(), 5000u64.div_ceil(PER_BUCKET));
        for k in &keys {
            assert_eq!(
                s.get(k.as_bytes()).unwrap(),
                Some(format!("v-{k}").into_bytes()),
                "{k}"
            );
        }
        for missing in ["A", "CODE000001", "CODE004999", "CODE009999", "Z", ""] {
            assert_eq!(s.get(missing.as_bytes()).unwrap(), None, "{missing}");
        }
        assert!(
            !dir.path().join("t.build").exists() && !dir.path().join("t.tmp").exists(),
            "no spill or temporary files left"
        );
        // Carried into a new file with more entries (a later import).
        let p2 = dir.path().join("u.kpi");
        let mut b = IndexBuilder::create(&p2).unwrap();
        s.copy_into(&mut b).unwrap();
        let mut more = Vec::new();
        encode(&mut more, b"NEW-1", b"v-NEW-1").unwrap();
        encode(&mut more, b"NEW-2", b"v-NEW-2").unwrap();
        b.push_encoded(&more).unwrap();
        let s2 = b.finish(8).unwrap();
        assert_eq!((s2.generation(), s2.entries()), (8, 5002));
        for k in keys.iter().map(String::as_str).chain(["NEW-1", "NEW-2"]) {
            assert_eq!(
                s2.get(k.as_bytes()).unwrap(),
                Some(format!("v-{k}").into_bytes())
            );
        }
        // Reopened from disk.
        let p = dir.path().join("t.kpi");
        let s3 = Segment::open(&p).unwrap();
        assert_eq!(
            s3.get(b"CODE004998").unwrap(),
            Some(b"v-CODE004998".to_vec())
        );
        // A flipped byte in the footer is caught; a cut file is refused.
        let mut bytes = std::fs::read(&p).unwrap();
        let n = bytes.len();
        bytes[n - TRAILER - 3] ^= 0xff;
        std::fs::write(&p, &bytes).unwrap();
        assert!(Segment::open(&p).is_err());
        std::fs::write(&p, &bytes[..n / 2]).unwrap();
        assert!(Segment::open(&p).is_err());
        // A flipped byte inside a bucket: that bucket's reads fail, the others still work,
        // and the file is not carried into a new one.
        let p = dir.path().join("u.kpi");
        let s2 = Segment::open(&p).unwrap();
        let b = bucket_of(hash(b"CODE000000"), s2.buckets()) as usize;
        let mut bytes = std::fs::read(&p).unwrap();
        bytes[s2.offsets[b] as usize + 3] ^= 0x01;
        std::fs::write(&p, &bytes).unwrap();
        let s3 = Segment::open(&p).unwrap();
        assert!(s3.get(b"CODE000000").is_err());
        let other = keys
            .iter()
            .find(|k| bucket_of(hash(k.as_bytes()), s3.buckets()) as usize != b)
            .unwrap();
        assert_eq!(
            s3.get(other.as_bytes()).unwrap(),
            Some(format!("v-{other}").into_bytes())
        );
        let mut b2 = IndexBuilder::create(&dir.path().join("w.kpi")).unwrap();
        assert!(s3.copy_into(&mut b2).is_err());
    }

    #[test]
    fn empty_and_single() {
        let dir = tempfile::tempdir().unwrap();
        let s = build(dir.path(), "e.kpi", &[], 0);
        assert_eq!(s.get(b"X").unwrap(), None);
        let s = build(dir.path(), "one.kpi", &["ONLY".to_string()], 1);
        assert_eq!(s.get(b"ONLY").unwrap(), Some(b"v-ONLY".to_vec()));
        assert_eq!(s.get(b"ONLX").unwrap(), None);
    }

    #[test]
    fn buckets_stay_small() {
        // The hash spreads sequential codes evenly: no bucket far above the average.
        let dir = tempfile::tempdir().unwrap();
        let keys: Vec<String> = (0..200_000).map(|i| format!("BULK{i:010}")).collect();
        let s = build(dir.path(), "b.kpi", &keys, 1);
        let biggest = s.offsets.windows(2).map(|w| w[1] - w[0]).max().unwrap();
        let entry = 6 + 14 + 16;
        assert!(
            biggest < 80 * entry,
            "largest bucket {} bytes (average {})",
            biggest,
            PER_BUCKET * entry
        );
    }
}
