//! Store keys: one sled tree, records told apart by a short prefix and components joined
//! by 0x1F (unit separator), which no id or code may contain.

pub const SEP: u8 = 0x1f;

/// `key(&["hold", tenant, ref])` → `hold\x1ftenant\x1fref`.
pub fn key(parts: &[&str]) -> Vec<u8> {
    let mut k = Vec::with_capacity(parts.iter().map(|p| p.len() + 1).sum());
    for (i, p) in parts.iter().enumerate() {
        if i > 0 {
            k.push(SEP);
        }
        k.extend_from_slice(p.as_bytes());
    }
    k
}

/// Like [`key`] with a trailing separator: the prefix of every key below these parts.
pub fn prefix(parts: &[&str]) -> Vec<u8> {
    let mut k = key(parts);
    k.push(SEP);
    k
}

/// The last component of a key.
pub fn last(k: &[u8]) -> &str {
    let start = k
        .iter()
        .rposition(|b| *b == SEP)
        .map(|p| p + 1)
        .unwrap_or(0);
    std::str::from_utf8(&k[start..]).unwrap_or("")
}
