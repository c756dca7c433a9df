//! Large-state preparation for `bench --members N`: N members, each with a balance to
//! spend, imported through the service's admin API (`POST …/loyalty/1/members/import`,
//! the online import path; there is no offline one) in chunks before the measured runs.
//! Award, redeem and the reads then spread over them instead of the bench's own few.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Instant;

use serde_json::{json, Value};

/// The admin token the bench gives the service it starts (`[admin] token_env`).
pub const ADMIN_TOKEN: &str = "bench-admin-token";

/// Rows per import request: one writer job each (the member import is not sliced), so the
/// import does not hold the writer for long. 1 000 like `storage.job_slice_records`: a job
/// of 20 000 members (~100 000 records in one sled batch) took the service's peak RSS to
/// ~1.6 GiB during a 1 M-member import, 1 000 keeps it near the steady state
/// (BENCHMARKS.md, "Memory").
const CHUNK: u64 = 1_000;

/// Points each imported member starts with (redeem costs 1).
const BALANCE: u64 = 1_000_000;

/// How many members the run imported (0: none; the flows use their own users).
static MEMBERS_N: AtomicU64 = AtomicU64::new(0);

/// The user id of imported member `k`.
fn member(k: u64) -> String {
    format!("bm{k:08}")
}

/// An imported member for connection `w`, iteration `i`, spread over the whole set; without
/// imported members, `fallback()`.
pub fn member_or(w: usize, i: u64, fallback: impl FnOnce() -> String) -> String {
    let n = MEMBERS_N.load(Relaxed);
    if n == 0 {
        return fallback();
    }
    let k = (w as u64)
        .wrapping_mul(1_000_003)
        .wrapping_add(i.wrapping_mul(7_919))
        % n;
    member(k)
}

/// Import `n` members into the running service at `base`; prints and returns what it did.
pub async fn import_members(base: &str, n: u64) -> Result<Value, String> {
    let start = Instant::now();
    let (mut imported, mut requests) = (0u64, 0u64);
    let mut from = 0;
    while from < n {
        let to = n.min(from.saturating_add(CHUNK));
        let mut csv = String::from("user_id,balance,lifetime_earned\n");
        for k in from..to {
            csv.push_str(&format!("{},{BALANCE},{BALANCE}\n", member(k)));
        }
        let answer = post_csv(
            base,
            "/admin/v1/tenants/bench/loyalty/1/members/import",
            csv,
        )
        .await?;
        imported = imported.saturating_add(answer["imported"].as_u64().unwrap_or(0));
        requests += 1;
        from = to;
    }
    if imported != n {
        return Err(format!("members import: {imported} of {n} imported"));
    }
    MEMBERS_N.store(n, Relaxed);
    let seconds = start.elapsed().as_secs_f64();
    println!(
        "members import: {imported} members in {seconds:.1} s = {:.0} members/s (admin API, {requests} requests of at most {CHUNK} rows)",
        imported as f64 / seconds.max(1e-9)
    );
    Ok(json!({"members": imported, "seconds": seconds, "requests": requests}))
}

/// POST a CSV body to the admin API; the answer's JSON when it is 2xx and `ok`.
async fn post_csv(base: &str, path: &str, csv: String) -> Result<Value, String> {
    let mut s = super::connect(base).await?;
    let headers = vec![
        ("content-type".to_string(), "text/csv".to_string()),
        ("authorization".to_string(), format!("Bearer {ADMIN_TOKEN}")),
    ];
    let req: super::Req = ("import", path.to_string(), csv.into_bytes(), headers);
    super::send(&mut s, base, &req)
        .await
        .map_err(|e| format!("members import: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn without_an_import_the_flows_keep_their_own_users() {
        assert_eq!(member_or(3, 7, || "rich3".into()), "rich3");
        assert_eq!(member(42), "bm00000042");
    }
}
