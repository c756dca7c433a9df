//! The bulk-code index: for each tenant, one immutable file that maps a bulk code's match
//! key to its record (the very bytes the store holds under `bcode/{tenant}/{key}`), sorted,
//! in blocks of about 4 KiB, with the first key of every block kept in memory. A lookup is
//! a binary search in memory and one positioned read (`pread`) of one block, on the
//! calling thread, with no lock shared with the store's writer.
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
//! file or the new one. A file that fails its checks is ignored (and rebuilt).
//!
//! File layout (integers little-endian):
//! ```text
//! "KPCIDX01"                                    8-byte magic
//! blocks: entries (u16 key len, key, u32 value len, value), ascending keys
//! footer: per block (u64 offset, u32 length, u16 first-key len, first key)
//! trailer: u64 footer offset, u64 footer length, u64 entries, u64 generation,
//!          32-byte SHA-256 of the footer, "KPCIDX01"
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

const MAGIC: &[u8; 8] = b"KPCIDX01";
const TRAILER: usize = 8 * 4 + 32 + 8;
/// Target block size: one page of the OS cache per lookup.
const BLOCK: usize = 4096;

fn io(what: &str, path: &Path, e: std::io::Error) -> StoreError {
    StoreError::Io(format!("{what} {}: {e}", path.display()))
}

fn corrupt(path: &Path, why: &str) -> StoreError {
    StoreError::Io(format!("code index {}: {why}", path.display()))
}

/// One tenant's index file, open for lookups.
pub struct Segment {
    file: File,
    generation: u64,
    entries: u64,
    /// First keys of the blocks, one after another.
    keys: Vec<u8>,
    /// Per block: (first key's start in `keys`, its length, file offset, block length).
    blocks: Vec<(u32, u16, u64, u32)>,
}

impl Segment {
    /// Open and check an index file (magic, trailer, footer checksum, block bounds).
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
            return Err(corrupt(path, "not a code index (bad magic)"));
        }
        let u = |i: usize| u64::from_le_bytes(t[i * 8..i * 8 + 8].try_into().unwrap_or([0; 8]));
        let (footer_off, footer_len, entries, generation) = (u(0), u(1), u(2), u(3));
        if footer_off < MAGIC.len() as u64
            || footer_off.checked_add(footer_len) != Some(len - TRAILER as u64)
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
        let mut keys = Vec::new();
        let mut blocks = Vec::new();
        let mut p = 0usize;
        let mut prev_end = MAGIC.len() as u64;
        while p < footer.len() {
            let f = footer
                .get(p..p + 14)
                .ok_or_else(|| corrupt(path, "truncated footer"))?;
            let off = u64::from_le_bytes(f[0..8].try_into().unwrap_or([0; 8]));
            let blen = u32::from_le_bytes(f[8..12].try_into().unwrap_or([0; 4]));
            let klen = u16::from_le_bytes(f[12..14].try_into().unwrap_or([0; 2]));
            let key = footer
                .get(p + 14..p + 14 + klen as usize)
                .ok_or_else(|| corrupt(path, "truncated footer"))?;
            if off != prev_end || off + u64::from(blen) > footer_off {
                return Err(corrupt(path, "block out of bounds"));
            }
            prev_end = off + u64::from(blen);
            blocks.push((keys.len() as u32, klen, off, blen));
            keys.extend_from_slice(key);
            p += 14 + klen as usize;
        }
        if prev_end != footer_off {
            return Err(corrupt(path, "blocks do not cover the file"));
        }
        Ok(Segment {
            file,
            generation,
            entries,
            keys,
            blocks,
        })
    }

    /// The bulk-code generation this file was built from.
    pub fn generation(&self) -> u64 {
        self.generation
    }

    pub fn entries(&self) -> u64 {
        self.entries
    }

    /// The value stored under `key`, if the file has it.
    pub fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        // Blocks whose first key is <= key: the last of them is the only one that may hold it.
        let n = self.blocks.partition_point(|&(s, l, _, _)| {
            &self.keys[s as usize..s as usize + l as usize] <= key
        });
        if n == 0 {
            return Ok(None);
        }
        let (_, _, off, len) = self.blocks[n - 1];
        let mut buf = vec![0u8; len as usize];
        self.file
            .read_exact_at(&mut buf, off)
            .map_err(|e| StoreError::Io(format!("reading the code index: {e}")))?;
        let mut p = 0usize;
        while p + 2 <= buf.len() {
            let klen = u16::from_le_bytes([buf[p], buf[p + 1]]) as usize;
            let k = buf.get(p + 2..p + 2 + klen);
            let vl = buf.get(p + 2 + klen..p + 6 + klen);
            let (Some(k), Some(vl)) = (k, vl) else {
                return Err(StoreError::Io("code index: truncated block".into()));
            };
            let vlen = u32::from_le_bytes(vl.try_into().unwrap_or([0; 4])) as usize;
            let vstart = p + 6 + klen;
            match k.cmp(key) {
                std::cmp::Ordering::Equal => {
                    return buf
                        .get(vstart..vstart + vlen)
                        .map(|v| Some(v.to_vec()))
                        .ok_or_else(|| StoreError::Io("code index: truncated block".into()));
                }
                std::cmp::Ordering::Greater => return Ok(None),
                std::cmp::Ordering::Less => p = vstart + vlen,
            }
        }
        Ok(None)
    }
}

/// Writes an index file from keys given in ascending order.
pub struct SegmentWriter {
    path: PathBuf,
    tmp: PathBuf,
    out: BufWriter<File>,
    block: Vec<u8>,
    block_first: Vec<u8>,
    footer: Vec<u8>,
    offset: u64,
    entries: u64,
    last: Option<Vec<u8>>,
}

impl SegmentWriter {
    pub fn create(path: &Path) -> Result<SegmentWriter, StoreError> {
        let tmp = path.with_extension("tmp");
        if let Some(d) = path.parent() {
            std::fs::create_dir_all(d).map_err(|e| io("creating", d, e))?;
        }
        let f = File::create(&tmp).map_err(|e| io("creating", &tmp, e))?;
        let mut out = BufWriter::with_capacity(1 << 20, f);
        out.write_all(MAGIC).map_err(|e| io("writing", &tmp, e))?;
        Ok(SegmentWriter {
            path: path.to_owned(),
            tmp,
            out,
            block: Vec::with_capacity(BLOCK * 2),
            block_first: Vec::new(),
            footer: Vec::new(),
            offset: MAGIC.len() as u64,
            entries: 0,
            last: None,
        })
    }

    pub fn push(&mut self, key: &[u8], value: &[u8]) -> Result<(), StoreError> {
        if self.last.as_deref().is_some_and(|l| l >= key) {
            return Err(StoreError::Io(
                "code index: keys must be written in ascending order".into(),
            ));
        }
        let klen = u16::try_from(key.len())
            .map_err(|_| StoreError::Io("code index: key longer than 65535 bytes".into()))?;
        let vlen = u32::try_from(value.len())
            .map_err(|_| StoreError::Io("code index: value too long".into()))?;
        let size = 6 + key.len() + value.len();
        if !self.block.is_empty() && self.block.len() + size > BLOCK {
            self.end_block()?;
        }
        if self.block.is_empty() {
            self.block_first.clear();
            self.block_first.extend_from_slice(key);
        }
        self.block.extend_from_slice(&klen.to_le_bytes());
        self.block.extend_from_slice(key);
        self.block.extend_from_slice(&vlen.to_le_bytes());
        self.block.extend_from_slice(value);
        self.entries += 1;
        match &mut self.last {
            Some(l) => {
                l.clear();
                l.extend_from_slice(key);
            }
            None => self.last = Some(key.to_vec()),
        }
        Ok(())
    }

    fn end_block(&mut self) -> Result<(), StoreError> {
        if self.block.is_empty() {
            return Ok(());
        }
        self.out
            .write_all(&self.block)
            .map_err(|e| io("writing", &self.tmp, e))?;
        self.footer.extend_from_slice(&self.offset.to_le_bytes());
        self.footer
            .extend_from_slice(&(self.block.len() as u32).to_le_bytes());
        self.footer
            .extend_from_slice(&(self.block_first.len() as u16).to_le_bytes());
        self.footer.extend_from_slice(&self.block_first);
        self.offset += self.block.len() as u64;
        self.block.clear();
        Ok(())
    }

    /// Give up: remove the temporary file.
    pub fn abandon(self) {
        let tmp = self.tmp.clone();
        drop(self);
        let _ = std::fs::remove_file(tmp);
    }

    /// Write the footer, make the file durable and put it in place. Returns it open.
    pub fn finish(mut self, generation: u64) -> Result<Segment, StoreError> {
        self.end_block()?;
        let mut t = Vec::with_capacity(TRAILER);
        t.extend_from_slice(&self.offset.to_le_bytes());
        t.extend_from_slice(&(self.footer.len() as u64).to_le_bytes());
        t.extend_from_slice(&self.entries.to_le_bytes());
        t.extend_from_slice(&generation.to_le_bytes());
        t.extend_from_slice(&Sha256::digest(&self.footer));
        t.extend_from_slice(MAGIC);
        self.out
            .write_all(&self.footer)
            .and_then(|()| self.out.write_all(&t))
            .and_then(|()| self.out.flush())
            .map_err(|e| io("writing", &self.tmp, e))?;
        let f = self
            .out
            .into_inner()
            .map_err(|e| io("writing", &self.tmp, e.into_error()))?;
        f.sync_all().map_err(|e| io("fsync", &self.tmp, e))?;
        drop(f);
        std::fs::rename(&self.tmp, &self.path).map_err(|e| io("renaming", &self.tmp, e))?;
        if let Some(d) = self.path.parent() {
            File::open(d)
                .and_then(|d| d.sync_all())
                .map_err(|e| io("fsync", d, e))?;
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
                Err(e) => tracing::warn!(tenant = %t, error = %e, "ignoring the code index; it will be rebuilt"),
            }
        }
        CodeIndex {
            dir,
            segments: RwLock::new(segments),
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
                let c = if v.is_some() { &self.hits } else { &self.misses };
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

    pub fn entries(&self, tenant: &str) -> u64 {
        self.segment(tenant).map(|s| s.entries()).unwrap_or(0)
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

    #[test]
    fn write_read_and_refuse_damage() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("t.kpi");
        let mut w = SegmentWriter::create(&p).unwrap();
        let keys: Vec<String> = (0..5000).map(|i| format!("CODE{:06}", i * 2)).collect();
        for k in &keys {
            w.push(k.as_bytes(), format!("v-{k}").as_bytes()).unwrap();
        }
        assert!(w.push(b"CODE000000", b"x").is_err(), "out of order is refused");
        let s = w.finish(7).unwrap();
        assert_eq!((s.generation(), s.entries()), (7, 5000));
        assert!(s.blocks.len() > 10, "many blocks: {}", s.blocks.len());
        for k in &keys {
            assert_eq!(
                s.get(k.as_bytes()).unwrap(),
                Some(format!("v-{k}").into_bytes())
            );
        }
        for missing in ["A", "CODE000001", "CODE004999", "CODE009999", "Z", ""] {
            assert_eq!(s.get(missing.as_bytes()).unwrap(), None, "{missing}");
        }
        // Reopen from disk.
        let s2 = Segment::open(&p).unwrap();
        assert_eq!(s2.get(b"CODE004998").unwrap(), Some(b"v-CODE004998".to_vec()));
        // A flipped byte in the footer is caught; a cut file is refused.
        let mut bytes = std::fs::read(&p).unwrap();
        let n = bytes.len();
        bytes[n - TRAILER - 3] ^= 0xff;
        std::fs::write(&p, &bytes).unwrap();
        assert!(Segment::open(&p).is_err());
        std::fs::write(&p, &bytes[..n / 2]).unwrap();
        assert!(Segment::open(&p).is_err());
    }

    #[test]
    fn empty_index() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("e.kpi");
        let s = SegmentWriter::create(&p).unwrap().finish(0).unwrap();
        assert_eq!(s.get(b"X").unwrap(), None);
    }
}
