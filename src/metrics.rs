//! Prometheus text metrics: requests by endpoint and outcome, a latency histogram per
//! endpoint, holds in flight, injected faults, and the store's group-commit counters.

use std::collections::{BTreeMap, VecDeque};
use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::store::{CodeIndex, StoreStats};

/// Upper bounds of the latency buckets, in seconds.
const BUCKETS: [f64; 12] = [
    0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0,
];

#[derive(Default)]
struct Hist {
    counts: [u64; BUCKETS.len()],
    count: u64,
    sum_micros: u64,
}

/// Gauges the store's writer keeps current.
#[derive(Default, Debug)]
pub struct Gauges {
    pub holds_in_flight: AtomicU64,
    /// Webhook events waiting for onward delivery (one per event and route).
    pub webhook_queued: AtomicU64,
    pub webhook_dead_letters: AtomicU64,
}

#[derive(Default)]
pub struct Metrics {
    requests: Mutex<BTreeMap<(&'static str, String), u64>>,
    latency: Mutex<BTreeMap<&'static str, Hist>>,
    onward: Mutex<BTreeMap<(String, String, &'static str), u64>>,
    injected: Mutex<BTreeMap<(String, &'static str, &'static str), u64>>,
    /// Order sources: polls by (tenant, source, outcome).
    source_polls: Mutex<BTreeMap<(String, String, &'static str), u64>>,
    /// Order sources: (seen, orders by state, last good poll in ms) by (tenant, source),
    /// as durably recorded.
    source_orders: Mutex<SourceOrders>,
    pub gauges: Arc<Gauges>,
    /// The last [`RECENT_MINUTES`] minutes of provider calls and webhooks by tenant, for
    /// the console's overview: (minute, counts by (tenant, endpoint, outcome)).
    recent: Mutex<VecDeque<(i64, RecentCounts)>>,
}

/// Minutes of per-tenant request counts kept in memory (the console's overview chart).
pub const RECENT_MINUTES: i64 = 60;

type RecentCounts = BTreeMap<(String, &'static str, String), u64>;

/// One minute of a tenant's requests: its start (ms) and counts by (endpoint, outcome).
pub type RecentMinute = (i64, Vec<(&'static str, String, u64)>);

type SourceOrders = BTreeMap<(String, String), (u64, Vec<(&'static str, u64)>, Option<i64>)>;

impl Metrics {
    pub fn observe(&self, endpoint: &'static str, outcome: &str, took: Duration) {
        if let Ok(mut m) = self.requests.lock() {
            *m.entry((endpoint, outcome.to_owned())).or_insert(0) += 1;
        }
        if let Ok(mut m) = self.latency.lock() {
            let h = m.entry(endpoint).or_default();
            let secs = took.as_secs_f64();
            for (i, b) in BUCKETS.iter().enumerate() {
                if secs <= *b {
                    h.counts[i] += 1;
                }
            }
            h.count += 1;
            h.sum_micros += took.as_micros() as u64;
        }
    }

    /// A provider call or webhook of a configured tenant, counted in its minute of
    /// `now_ms` (the app's clock); minutes older than [`RECENT_MINUTES`] are dropped.
    pub fn observe_tenant(&self, tenant: &str, endpoint: &'static str, outcome: &str, now_ms: i64) {
        let minute = now_ms.div_euclid(60_000);
        let Ok(mut r) = self.recent.lock() else {
            return;
        };
        if r.back().is_none_or(|(m, _)| *m < minute) {
            r.push_back((minute, BTreeMap::new()));
        }
        while r
            .front()
            .is_some_and(|(m, _)| *m <= minute - RECENT_MINUTES)
        {
            r.pop_front();
        }
        // A clock set back counts in the newest minute kept.
        if let Some((_, counts)) = r.back_mut() {
            *counts
                .entry((tenant.to_owned(), endpoint, outcome.to_owned()))
                .or_insert(0) += 1;
        }
    }

    /// `tenant`'s requests in each of the `minutes` minutes up to `now_ms`, oldest first
    /// (a minute without requests has no counts).
    pub fn recent(&self, tenant: &str, now_ms: i64, minutes: i64) -> Vec<RecentMinute> {
        let last = now_ms.div_euclid(60_000);
        let Ok(r) = self.recent.lock() else {
            return Vec::new();
        };
        (last - minutes.clamp(1, RECENT_MINUTES) + 1..=last)
            .map(|m| {
                let counts = r
                    .iter()
                    .find(|(x, _)| *x == m)
                    .map(|(_, c)| {
                        c.iter()
                            .filter(|((t, _, _), _)| t == tenant)
                            .map(|((_, e, o), n)| (*e, o.clone(), *n))
                            .collect()
                    })
                    .unwrap_or_default();
                (m * 60_000, counts)
            })
            .collect()
    }

    /// One onward delivery attempt of a webhook route: `delivered`, `failed` or `dead`.
    pub fn onward(&self, tenant: &str, route: &str, outcome: &'static str) {
        if let Ok(mut m) = self.onward.lock() {
            *m.entry((tenant.to_owned(), route.to_owned(), outcome))
                .or_insert(0) += 1;
        }
    }

    /// One injected fault (`app::chaos`): tenant, endpoint label, kind.
    pub fn injected(&self, tenant: &str, endpoint: &'static str, kind: &'static str) {
        if let Ok(mut m) = self.injected.lock() {
            *m.entry((tenant.to_owned(), endpoint, kind)).or_insert(0) += 1;
        }
    }

    /// One poll of an order source: `ok` or `failed`.
    pub fn source_poll(&self, tenant: &str, source: &str, outcome: &'static str) {
        if let Ok(mut m) = self.source_polls.lock() {
            *m.entry((tenant.to_owned(), source.to_owned(), outcome))
                .or_insert(0) += 1;
        }
    }

    /// An order source's durable counts, after each of its writes.
    pub fn source_counts(
        &self,
        tenant: &str,
        source: &str,
        seen: u64,
        by_state: &[(&'static str, u64)],
        last_poll_ms: Option<i64>,
    ) {
        if let Ok(mut m) = self.source_orders.lock() {
            m.insert(
                (tenant.to_owned(), source.to_owned()),
                (seen, by_state.to_vec(), last_poll_ms),
            );
        }
    }

    fn render_sources(&self, out: &mut String) {
        out.push_str("# HELP kp_source_polls_total Polls of an order source (LOKE, Olympus) by outcome.\n# TYPE kp_source_polls_total counter\n");
        if let Ok(m) = self.source_polls.lock() {
            for ((t, s, o), n) in m.iter() {
                let _ = writeln!(
                    out,
                    "kp_source_polls_total{{tenant=\"{t}\",source=\"{s}\",outcome=\"{o}\"}} {n}"
                );
            }
        }
        let Ok(m) = self.source_orders.lock() else {
            return;
        };
        out.push_str("# HELP kp_source_orders_seen_total Distinct orders an order source has recorded.\n# TYPE kp_source_orders_seen_total counter\n");
        for ((t, s), (seen, _, _)) in m.iter() {
            let _ = writeln!(
                out,
                "kp_source_orders_seen_total{{tenant=\"{t}\",source=\"{s}\"}} {seen}"
            );
        }
        out.push_str("# HELP kp_source_orders An order source's orders by state (open, awarded, unmatched, failed, reversed, cancelled).\n# TYPE kp_source_orders gauge\n");
        for ((t, s), (_, states, _)) in m.iter() {
            for (st, n) in states {
                let _ = writeln!(
                    out,
                    "kp_source_orders{{tenant=\"{t}\",source=\"{s}\",state=\"{st}\"}} {n}"
                );
            }
        }
        out.push_str("# HELP kp_source_last_poll_timestamp_seconds When an order source's last good poll ended.\n# TYPE kp_source_last_poll_timestamp_seconds gauge\n");
        for ((t, s), (_, _, at)) in m.iter() {
            if let Some(ms) = at {
                let _ = writeln!(
                    out,
                    "kp_source_last_poll_timestamp_seconds{{tenant=\"{t}\",source=\"{s}\"}} {}",
                    ms.div_euclid(1000)
                );
            }
        }
    }

    pub fn render(&self, store: &StoreStats, codes: &CodeIndex) -> String {
        let mut out = String::new();
        out.push_str("# HELP kp_requests_total Requests by endpoint and outcome (ok, an error code, or replay).\n# TYPE kp_requests_total counter\n");
        if let Ok(m) = self.requests.lock() {
            for ((e, o), n) in m.iter() {
                let _ = writeln!(
                    out,
                    "kp_requests_total{{endpoint=\"{e}\",outcome=\"{o}\"}} {n}"
                );
            }
        }
        out.push_str("# HELP kp_request_duration_seconds Time from request head to answer.\n# TYPE kp_request_duration_seconds histogram\n");
        if let Ok(m) = self.latency.lock() {
            for (e, h) in m.iter() {
                for (i, b) in BUCKETS.iter().enumerate() {
                    let _ = writeln!(
                        out,
                        "kp_request_duration_seconds_bucket{{endpoint=\"{e}\",le=\"{b}\"}} {}",
                        h.counts[i]
                    );
                }
                let _ = writeln!(
                    out,
                    "kp_request_duration_seconds_bucket{{endpoint=\"{e}\",le=\"+Inf\"}} {}",
                    h.count
                );
                let _ = writeln!(
                    out,
                    "kp_request_duration_seconds_sum{{endpoint=\"{e}\"}} {}",
                    h.sum_micros as f64 / 1e6
                );
                let _ = writeln!(
                    out,
                    "kp_request_duration_seconds_count{{endpoint=\"{e}\"}} {}",
                    h.count
                );
            }
        }
        let g = &self.gauges;
        let _ = writeln!(out, "# HELP kp_holds_in_flight Voucher holds that still take capacity.\n# TYPE kp_holds_in_flight gauge\nkp_holds_in_flight {}", g.holds_in_flight.load(Ordering::Relaxed));
        let _ = writeln!(out, "# HELP kp_webhook_queued Webhook events waiting for onward delivery (per route).\n# TYPE kp_webhook_queued gauge\nkp_webhook_queued {}", g.webhook_queued.load(Ordering::Relaxed));
        let _ = writeln!(out, "# HELP kp_webhook_dead_letters Webhook events in the dead-letter queue (per route).\n# TYPE kp_webhook_dead_letters gauge\nkp_webhook_dead_letters {}", g.webhook_dead_letters.load(Ordering::Relaxed));
        out.push_str("# HELP kp_webhook_onward_attempts_total Onward delivery attempts by tenant, route and outcome.\n# TYPE kp_webhook_onward_attempts_total counter\n");
        if let Ok(m) = self.onward.lock() {
            for ((t, r, o), n) in m.iter() {
                let _ = writeln!(out, "kp_webhook_onward_attempts_total{{tenant=\"{t}\",route=\"{r}\",outcome=\"{o}\"}} {n}");
            }
        }
        out.push_str("# HELP kp_injected_faults_total Faults injected on purpose (admin API injected-faults) by tenant, endpoint and kind (latency, error, timeout, drop, forget).\n# TYPE kp_injected_faults_total counter\n");
        if let Ok(m) = self.injected.lock() {
            for ((t, e, k), n) in m.iter() {
                let _ = writeln!(
                    out,
                    "kp_injected_faults_total{{tenant=\"{t}\",endpoint=\"{e}\",kind=\"{k}\"}} {n}"
                );
            }
        }
        self.render_sources(&mut out);
        let _ = writeln!(out, "# HELP kp_store_groups_total Write groups applied by the store writer.\n# TYPE kp_store_groups_total counter\nkp_store_groups_total {}", store.groups.load(Ordering::Relaxed));
        let _ = writeln!(out, "# HELP kp_store_jobs_total Jobs run by the store writer.\n# TYPE kp_store_jobs_total counter\nkp_store_jobs_total {}", store.jobs.load(Ordering::Relaxed));
        out.push_str("# HELP kp_code_index_codes Bulk codes in a tenant's code index file.\n# TYPE kp_code_index_codes gauge\n");
        let mut gens = String::new();
        for (t, n, g) in codes.files() {
            let _ = writeln!(out, "kp_code_index_codes{{tenant=\"{t}\"}} {n}");
            let _ = writeln!(gens, "kp_code_index_generation{{tenant=\"{t}\"}} {g}");
        }
        out.push_str("# HELP kp_code_index_generation The bulk-code generation a tenant's code index was built from.\n# TYPE kp_code_index_generation gauge\n");
        out.push_str(&gens);
        let (hits, misses) = codes.lookups();
        let _ = writeln!(out, "# HELP kp_code_index_lookups_total Code lookups in an index file: found (hit) or not (miss, then the store is asked).\n# TYPE kp_code_index_lookups_total counter\nkp_code_index_lookups_total{{result=\"hit\"}} {hits}\nkp_code_index_lookups_total{{result=\"miss\"}} {misses}");
        let _ = writeln!(out, "# HELP kp_store_flushes_total Durable flushes (flush + fsync); jobs per flush shows group commit at work.\n# TYPE kp_store_flushes_total counter\nkp_store_flushes_total {}", store.flushes.load(Ordering::Relaxed));
        let _ = writeln!(out, "# HELP kp_store_jobs_undone_total Jobs that failed (error or panic) and whose writes and memory changes were undone.\n# TYPE kp_store_jobs_undone_total counter\nkp_store_jobs_undone_total {}", store.jobs_undone.load(Ordering::Relaxed));
        let _ = writeln!(out, "# HELP kp_store_blob_files_synced_total Files sled spilled large log messages to, fsynced by the writer.\n# TYPE kp_store_blob_files_synced_total counter\nkp_store_blob_files_synced_total {}", store.blob_files_synced.load(Ordering::Relaxed));
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recent_counts_are_per_tenant_and_minute_and_forget_old_minutes() {
        let m = Metrics::default();
        let min = 60_000;
        m.observe_tenant("a", "voucher.check", "ok", 10 * min + 5);
        m.observe_tenant("a", "voucher.check", "ok", 10 * min + 59_999);
        m.observe_tenant("b", "voucher.check", "ok", 10 * min);
        m.observe_tenant("a", "loyalty.award", "NOT_ENROLLED", 12 * min);
        assert_eq!(
            m.recent("a", 12 * min + 1, 3),
            [
                (10 * min, vec![("voucher.check", "ok".to_owned(), 2)]),
                (11 * min, vec![]),
                (
                    12 * min,
                    vec![("loyalty.award", "NOT_ENROLLED".to_owned(), 1)]
                ),
            ]
        );
        // An hour later the minute of 10 is gone; 12 is still kept.
        m.observe_tenant("a", "voucher.check", "ok", (10 + RECENT_MINUTES) * min);
        let kept: Vec<i64> = m.recent.lock().unwrap().iter().map(|(x, _)| *x).collect();
        assert_eq!(kept, [12, 10 + RECENT_MINUTES]);
    }
}
