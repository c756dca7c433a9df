//! Store keys: one sled tree, records told apart by a short prefix and components joined
//! by 0x1F (unit separator), which no id or code may contain.

pub const SEP: u8 = 0x1f;

/// Every record prefix the store holds, and what it keys: the one list. [`key`] and
/// [`prefix`] refuse (panic, in debug builds: every test) a key whose first component is
/// not here, and `tests/durability.rs` checks that every key a real store holds after a
/// workload is registered. ARCHITECTURE.md's "Store layout" describes each.
pub const PREFIXES: &[(&str, &str)] = &[
    (
        "meta",
        "store metadata: the id counter, the record schema version",
    ),
    ("prog", "a program made through provider states"),
    ("pstate", "what a hold / committed provider state made"),
    ("camp", "a campaign made through the admin API"),
    ("hold", "a hold record"),
    ("live", "a live-hold marker"),
    ("used", "uses consumed per campaign"),
    ("useda", "cents consumed per campaign (budget)"),
    ("usedc", "uses consumed per code"),
    ("usedg", "uses consumed per guest"),
    ("idem", "an idempotency record: fingerprint and answer"),
    ("hist", "a code's history event"),
    (
        "bcode",
        "a bulk code, one to a record (schema 2; moved to bcb at start)",
    ),
    (
        "bcb",
        "bulk codes, many to a record by the hash of their match key (schema 3)",
    ),
    ("bgen", "a tenant's bulk-code generation"),
    (
        "bgcount",
        "gift codes issued per pattern (guessing-odds rule)",
    ),
    ("lmem", "a loyalty member"),
    (
        "lid",
        "an identifier linked to a member, one to a record (schema 2; moved to lidb at start)",
    ),
    (
        "lidb",
        "identifiers linked to members, many to a record by hash (schema 3)",
    ),
    (
        "lenr",
        "an enrollment's answer, one to a record (schema 2; moved to lenrb at start)",
    ),
    (
        "lenrb",
        "enrollments' answers, many to a record by hash of the userId (schema 3)",
    ),
    ("lled", "a ledger entry"),
    ("llot", "a member's credit lot, by seq (schema 2)"),
    ("llexp", "a credit lot by expiry time (index, schema 2)"),
    (
        "llpen",
        "a credit lot by the time it stops pending (index, schema 2)",
    ),
    ("lawd", "an award"),
    ("lpur", "a purchase awarded (purchaseId dedupe)"),
    ("lred", "a redemption"),
    ("lcode", "a reward code issued"),
    (
        "lcount",
        "reward codes issued per pattern (guessing-odds rule)",
    ),
    ("lstock", "a reward's stock used"),
    ("whin", "a webhook inbox entry"),
    ("whd", "a webhook delivery id seen (dedupe)"),
    ("whq", "a webhook route's queue entry"),
    ("whs", "a webhook delivered to a route"),
    ("wha", "an onward delivery attempt"),
    ("whdl", "a dead letter"),
    (
        "whl",
        "a webhook route's delivery lease (replicas on PostgreSQL)",
    ),
    ("srcp", "an order source's position, last poll and counts"),
    ("srco", "an order seen from an order source (LOKE, Olympus)"),
    (
        "srcw",
        "an order source's order fetched again until its watch ends",
    ),
];

/// Whether `first` is a registered record prefix.
pub fn registered(first: &[u8]) -> bool {
    PREFIXES.iter().any(|(p, _)| p.as_bytes() == first)
}

/// The first component of a key.
pub fn first(k: &[u8]) -> &[u8] {
    k.split(|b| *b == SEP).next().unwrap_or(k)
}

/// `key(&["hold", tenant, ref])` → `hold\x1ftenant\x1fref`.
pub fn key(parts: &[&str]) -> Vec<u8> {
    debug_assert!(
        parts.first().is_some_and(|p| registered(p.as_bytes())),
        "unregistered key prefix {:?}: add it to store::keys::PREFIXES",
        parts.first()
    );
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefixes_are_unique_and_told_apart() {
        for (i, (a, _)) in PREFIXES.iter().enumerate() {
            assert!(!a.is_empty() && !a.as_bytes().contains(&SEP), "{a}");
            assert!(PREFIXES[i + 1..].iter().all(|(b, _)| a != b), "{a} twice");
        }
        assert_eq!(first(&key(&["whdl", "t", "r"])), b"whdl");
        assert!(registered(first(&key(&["lled", "t"]))));
        assert!(!registered(b"wh"));
    }

    #[test]
    #[cfg(debug_assertions)]
    #[should_panic(expected = "unregistered key prefix")]
    fn an_unregistered_prefix_is_refused() {
        key(&["nope", "t"]);
    }
}
