//! Bringing a store's records to this build's schema (`store::SCHEMA_VERSION`) before it
//! serves: each step is a series of writer jobs of at most `job_slice_records` records,
//! safe to cut short (a restart resumes it), and the new version is written last.
//!
//! - 1 → 2: a member's credit lots become records of their own (`lots::migrate_page`).
//! - 2 → 3: bulk codes, identifiers and enrollment answers move from one record each into
//!   buckets (`codes::migrate_page`, `packed::migrate_idents`, `packed::migrate_enrollments`).
//! - 3 → 4: a member's first ledger entry and the lot it made move into the member record
//!   (`lots::migrate_first_page`).

use crate::clock::Millis;
use crate::store::{Journal, Store, StoreError, Txn, SCHEMA_VERSION, SCHEMA_VERSION_KEY};

use super::{codes, lots, packed};

/// One page of a step: (cursor) → the next cursor, `None` when the step is done.
type Page = fn(&mut Txn<'_>, Option<Vec<u8>>, usize, Millis) -> Result<Option<Vec<u8>>, StoreError>;

/// The steps: (the version they bring the store to, what they do, one page).
const STEPS: &[(u64, &str, Page)] = &[
    (2, "lots as records", lots::migrate_page),
    (3, "bulk codes in buckets", |txn, c, n, _| {
        codes::migrate_page(txn, c, n)
    }),
    (3, "identifiers in buckets", |txn, c, n, _| {
        packed::migrate_idents(txn, c, n)
    }),
    (3, "enrollment answers in buckets", |txn, c, n, _| {
        packed::migrate_enrollments(txn, c, n)
    }),
    (
        4,
        "first entries and lots in member records",
        lots::migrate_first_page,
    ),
];

/// Run every step the store still needs, then mark it with this build's version. Returns
/// how many pages ran (0: the store was current).
pub async fn run<S: Journal + Send + 'static>(
    store: &Store<S>,
    now: Millis,
    slice: usize,
) -> Result<u64, StoreError> {
    let version = store
        .run(|txn, _| txn.get_u64_opt(SCHEMA_VERSION_KEY))
        .await?
        .unwrap_or(1);
    if version >= SCHEMA_VERSION {
        return Ok(0);
    }
    let mut pages = 0u64;
    for &(to, what, page) in STEPS.iter().filter(|(to, _, _)| *to > version) {
        let mut cursor = None;
        loop {
            let c = cursor.take();
            pages += 1;
            cursor = store.run(move |txn, _| page(txn, c, slice, now)).await?;
            if cursor.is_none() {
                break;
            }
        }
        tracing::info!(pages, "records migrated to schema {to} ({what})");
    }
    store
        .run(|txn, _| {
            txn.put_u64(SCHEMA_VERSION_KEY.to_vec(), SCHEMA_VERSION);
            Ok(())
        })
        .await?;
    Ok(pages)
}
