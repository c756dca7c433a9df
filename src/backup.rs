//! Backup and restore as JSON lines: a header line, then one line per store record with
//! its key and value in base64 (exact bytes) and the key in readable form. `export` reads
//! every record page by page (`service::sliced`) while the service keeps serving: a
//! consistent snapshot when nothing is written meanwhile (README "Backup and restore");
//! `import` writes an export into the config's engine — an empty sled data directory
//! (`store::import_records`) or a PostgreSQL database without records
//! (`store::pg::import_records`) — so the format is also how records move between engines.

use base64::Engine;
use serde::{Deserialize, Serialize};

pub const FORMAT: &str = "karma-provider-export";
pub const VERSION: u32 = 1;

#[derive(Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Header {
    format: String,
    version: u32,
    exported_at: String,
    records: usize,
}

#[derive(Serialize, Deserialize)]
struct Line {
    /// The key with its 0x1F separators shown as `/` (for people; `k` is authoritative).
    key: String,
    k: String,
    v: String,
}

/// The whole snapshot as JSON lines.
pub fn encode(records: &[(Vec<u8>, Vec<u8>)], exported_at: &str) -> Vec<u8> {
    let b64 = base64::engine::general_purpose::STANDARD;
    let mut out = Vec::with_capacity(records.len() * 96);
    let header = Header {
        format: FORMAT.into(),
        version: VERSION,
        exported_at: exported_at.into(),
        records: records.len(),
    };
    out.extend(serde_json::to_vec(&header).unwrap_or_default());
    out.push(b'\n');
    for (k, v) in records {
        let line = Line {
            key: String::from_utf8_lossy(k).replace('\u{1f}', "/"),
            k: b64.encode(k),
            v: b64.encode(v),
        };
        out.extend(serde_json::to_vec(&line).unwrap_or_default());
        out.push(b'\n');
    }
    out
}

/// Parse a snapshot; errors name the line.
pub fn decode(text: &str) -> Result<crate::store::Pairs, String> {
    let b64 = base64::engine::general_purpose::STANDARD;
    let mut lines = text
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty());
    let (_, first) = lines.next().ok_or("empty export")?;
    let h: Header =
        serde_json::from_str(first).map_err(|e| format!("line 1: not an export header: {e}"))?;
    if h.format != FORMAT || h.version != VERSION {
        return Err(format!(
            "line 1: format {:?} version {} is not {FORMAT} version {VERSION}",
            h.format, h.version
        ));
    }
    let mut out = Vec::with_capacity(h.records);
    for (i, l) in lines {
        let line: Line = serde_json::from_str(l).map_err(|e| format!("line {}: {e}", i + 1))?;
        let k = b64
            .decode(&line.k)
            .map_err(|e| format!("line {}: k: {e}", i + 1))?;
        let v = b64
            .decode(&line.v)
            .map_err(|e| format!("line {}: v: {e}", i + 1))?;
        out.push((k, v));
    }
    if out.len() != h.records {
        return Err(format!(
            "the header announces {} records, the file has {} (truncated?)",
            h.records,
            out.len()
        ));
    }
    Ok(out)
}
