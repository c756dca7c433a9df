//! Long work as bounded writer jobs. An export, a listing, a janitor pass, an import of up
//! to 64 MiB or a generation of up to a million codes would each hold the single writer
//! for seconds and stall every commit behind it. Here each runs as a loop of jobs of at
//! most [`SLICE`] records, with a cursor carried between them; other jobs (checks,
//! commits, awards) get the writer between two slices.
//!
//! What a caller sees (README "Admin API"): an import (codes or members) is parsed and validated whole
//! before anything is written (an invalid row writes nothing); it is then written slice
//! by slice, each slice durable before the next, so its codes become usable slice by
//! slice. A generation is checked and counted against the pattern's room first, then
//! written slice by slice; the codes are answered only at the end. If the server stops
//! mid-way, the slices written stay (re-running the same import completes it, with the
//! codes already written counted as duplicates). An export or listing reads page by page:
//! a record written while it runs appears if its page is read after the write; so do the
//! backlog counts of switch readiness.

use std::collections::HashSet;
use std::sync::Arc;

use serde_json::json;

use crate::clock::Millis;
use crate::store::{Store, StoreError};

use super::codes::{self, CodeRow, GenTarget};
use super::loyalty;
use super::{Reply, State};

/// The default of `[storage] job_slice_records`: the most records one writer job reads or
/// writes for a long operation.
pub const SLICE: usize = 1_000;

/// A campaign's bulk codes as CSV (`code,valid_until,assigned_user,state`), page by page.
pub async fn export_codes(
    store: &Store<State>,
    slice: usize,
    tenant: &str,
    campaign: &str,
) -> Result<Reply, StoreError> {
    let mut out = String::from("code,valid_until,assigned_user,state\n");
    let mut after: Option<Vec<u8>> = None;
    loop {
        let (t, c, a) = (tenant.to_owned(), campaign.to_owned(), after.take());
        let page = store
            .run(move |txn, st| codes::export_page_job(txn, st, &t, &c, a.as_deref(), slice))
            .await?;
        let (lines, next) = match page {
            Ok(p) => p,
            Err(reply) => return Ok(reply),
        };
        out.push_str(&lines);
        match next {
            Some(n) => after = Some(n),
            None => break,
        }
    }
    Ok(Reply {
        status: 200,
        body: out.into_bytes(),
        outcome: "ok".into(),
    })
}

/// Import a CSV into a campaign: parsed whole off the writer (invalid rows: nothing is
/// written), then written in slices.
pub async fn import_codes(
    store: &Store<State>,
    slice: usize,
    tenant: &str,
    campaign: &str,
    csv: Vec<u8>,
) -> Result<Reply, StoreError> {
    let (t, c) = (tenant.to_owned(), campaign.to_owned());
    let mode = match store
        .run(move |_, st| Ok(codes::campaign_mode(st, &t, &c)))
        .await?
    {
        Ok(m) => m,
        Err(reply) => return Ok(reply),
    };
    let c = campaign.to_owned();
    let parsed = tokio::task::spawn_blocking(move || codes::parse_all(&c, mode, &csv))
        .await
        .map_err(|_| StoreError::JobPanicked)?;
    let rows = match parsed {
        Ok(rows) => rows,
        Err(invalid) => return Ok(codes::invalid_rows_reply(&invalid)),
    };
    let (mut imported, mut duplicates) = (0u64, 0u64);
    let mut seen: HashSet<String> = HashSet::new();
    let mut rows = rows.into_iter();
    loop {
        let slice: Vec<CodeRow> = rows.by_ref().take(slice.max(1)).collect();
        if slice.is_empty() {
            break;
        }
        let t = tenant.to_owned();
        let mut s = std::mem::take(&mut seen);
        let (i, d, s) = store
            .run(move |txn, st| {
                codes::import_slice_job(txn, st, &t, slice, &mut s).map(|(i, d)| (i, d, s))
            })
            .await?;
        seen = s;
        imported = imported.saturating_add(i);
        duplicates = duplicates.saturating_add(d);
    }
    Ok(Reply::json(
        200,
        json!({"ok": true, "imported": imported, "duplicates": duplicates, "invalid": []}),
    ))
}

/// Import a member base from CSV: parsed and checked whole off the writer (an invalid row:
/// nothing is written), then written in slices of `slice` rows, each its own job. One job
/// per file would hold the writer for the whole file and keep every version of the leaves
/// it touched in memory until its batch is applied (~7 KiB a row in sled). Stopped
/// mid-way, the slices written stay: the same import again skips them as duplicates.
pub async fn import_members(
    store: &Store<State>,
    slice: usize,
    tenant: &str,
    program: &str,
    csv: Vec<u8>,
    now: Millis,
) -> Result<Reply, StoreError> {
    let (t, p) = (tenant.to_owned(), program.to_owned());
    let prog = match store
        .run(move |_, st| Ok(loyalty::import_program(st, &t, &p)))
        .await?
    {
        Ok(prog) => Arc::new(prog),
        Err(reply) => return Ok(reply),
    };
    let parsed = tokio::task::spawn_blocking(move || loyalty::parse_member_rows(&csv))
        .await
        .map_err(|_| StoreError::JobPanicked)?;
    let mut rows = match parsed {
        Ok(rows) => rows.into_iter(),
        Err(refusal) => return Ok(refusal),
    };
    let (mut imported, mut duplicates) = (0u64, 0u64);
    loop {
        let part: Vec<loyalty::MemberRow> = rows.by_ref().take(slice.max(1)).collect();
        if part.is_empty() {
            break;
        }
        let (t, p, prog) = (tenant.to_owned(), program.to_owned(), prog.clone());
        let (i, d) = store
            .run(move |txn, _| loyalty::import_members_slice(txn, &t, &p, &prog, part, now))
            .await?;
        imported = imported.saturating_add(i);
        duplicates = duplicates.saturating_add(d);
    }
    Ok(Reply::json(
        200,
        json!({"ok": true, "imported": imported, "duplicates": duplicates, "invalid": []}),
    ))
}

/// Generate `count` codes from `pattern`: checked and counted first, written in slices.
pub async fn generate_codes(
    store: &Store<State>,
    slice: usize,
    tenant: &str,
    campaign: &str,
    pattern: &str,
    count: u64,
) -> Result<Reply, StoreError> {
    let (t, c, p) = (tenant.to_owned(), campaign.to_owned(), pattern.to_owned());
    let mode = match store
        .run(move |txn, st| codes::reserve_job(txn, st, &t, &c, &p, count))
        .await?
    {
        Ok(m) => m,
        Err(reply) => return Ok(reply),
    };
    let mut made: Vec<String> = Vec::new();
    while (made.len() as u64) < count {
        let n = (count - made.len() as u64).min(slice.max(1) as u64);
        let (t, c, p) = (tenant.to_owned(), campaign.to_owned(), pattern.to_owned());
        let slice = store
            .run(move |txn, st| {
                let to = GenTarget {
                    tenant: &t,
                    campaign: &c,
                    mode,
                };
                codes::generate_slice_job(txn, st, &to, &p, n)
            })
            .await?;
        match slice {
            Ok(codes) => made.extend(codes),
            Err(reply) => return Ok(reply),
        }
    }
    Ok(Reply::json(
        200,
        json!({"ok": true, "generated": made.len(), "codes": made}),
    ))
}

/// The webhook inbox listing, filtered, newest `limit` matches, read page by page.
pub async fn inbox(
    store: &Store<State>,
    slice: usize,
    tenant: &str,
    f: super::webhook::InboxFilter,
) -> Result<Reply, StoreError> {
    let f = std::sync::Arc::new(f);
    let mut items = Vec::new();
    let mut dropped = 0usize;
    let mut after: Option<Vec<u8>> = None;
    loop {
        let (t, fl, a) = (tenant.to_owned(), f.clone(), after.take());
        let (page, next) = store
            .run(move |txn, _| super::webhook::inbox_page(txn, &t, &fl, a.as_deref(), slice))
            .await?;
        items.extend(page);
        if items.len() > f.limit {
            // Keep the newest `limit`, and count the rest.
            let drop = items.len() - f.limit;
            items.drain(..drop);
            dropped = dropped.saturating_add(drop);
        }
        match next {
            Some(n) => after = Some(n),
            None => break,
        }
    }
    Ok(Reply::json(
        200,
        json!({"ok": true, "count": items.len() + dropped, "events": items}),
    ))
}

/// One janitor pass: forget webhook delivery ids past retention, page by page.
pub async fn prune_dedupe(
    store: &Store<State>,
    slice: usize,
    tenant: &str,
    now: crate::clock::Millis,
    retention_ms: i64,
) -> Result<usize, StoreError> {
    let mut forgotten = 0usize;
    let mut after: Option<Vec<u8>> = None;
    loop {
        let (t, a) = (tenant.to_owned(), after.take());
        let (n, next) = store
            .run(move |txn, _| {
                super::webhook::prune_dedupe_page(txn, &t, now, retention_ms, a.as_deref(), slice)
            })
            .await?;
        forgotten = forgotten.saturating_add(n);
        match next {
            Some(n) => after = Some(n),
            None => return Ok(forgotten),
        }
    }
}

/// Switch readiness (`admin::switch_readiness`): live holds in one job, then the tenant's
/// queued deliveries and dead letters counted page by page.
pub async fn switch_readiness(
    store: &Store<State>,
    slice: usize,
    tenant: &str,
    now: crate::clock::Millis,
) -> Result<Reply, StoreError> {
    use super::webhook::{count_backlog_page, Backlog};
    let t = tenant.to_owned();
    let holds = store
        .run(move |txn, st| super::admin::hold_summary(txn, st, &t, now))
        .await?;
    let mut counts = [0u64; 2];
    for (i, which) in [Backlog::Queued, Backlog::Dead].into_iter().enumerate() {
        let mut after: Option<Vec<u8>> = None;
        loop {
            let (t, a) = (tenant.to_owned(), after.take());
            let (n, next) = store
                .run(move |txn, _| count_backlog_page(txn, &t, which, a.as_deref(), slice))
                .await?;
            counts[i] = counts[i].saturating_add(n);
            match next {
                Some(n) => after = Some(n),
                None => break,
            }
        }
    }
    Ok(super::admin::switch_readiness(
        tenant,
        now,
        holds,
        (counts[0], counts[1]),
    ))
}
