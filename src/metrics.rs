//! Prometheus text metrics: requests by endpoint and outcome, a latency histogram per
//! endpoint, holds in flight, and the store's group-commit counters.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::store::StoreStats;

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

#[derive(Default)]
pub struct Metrics {
    requests: Mutex<BTreeMap<(&'static str, String), u64>>,
    latency: Mutex<BTreeMap<&'static str, Hist>>,
    pub holds_in_flight: Arc<AtomicU64>,
}

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

    pub fn render(&self, store: &StoreStats) -> String {
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
        let _ = writeln!(out, "# HELP kp_holds_in_flight Voucher holds that still take capacity.\n# TYPE kp_holds_in_flight gauge\nkp_holds_in_flight {}", self.holds_in_flight.load(Ordering::Relaxed));
        let _ = writeln!(out, "# HELP kp_store_groups_total Write groups applied by the store writer.\n# TYPE kp_store_groups_total counter\nkp_store_groups_total {}", store.groups.load(Ordering::Relaxed));
        let _ = writeln!(out, "# HELP kp_store_jobs_total Jobs run by the store writer.\n# TYPE kp_store_jobs_total counter\nkp_store_jobs_total {}", store.jobs.load(Ordering::Relaxed));
        let _ = writeln!(out, "# HELP kp_store_flushes_total Durable flushes (flush + fsync); jobs per flush shows group commit at work.\n# TYPE kp_store_flushes_total counter\nkp_store_flushes_total {}", store.flushes.load(Ordering::Relaxed));
        out
    }
}
