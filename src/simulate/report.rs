//! **Pure**: the simulation report — per-call latency percentiles (HDR histograms, µs)
//! against the budget, every violation grouped by class, the retries that recovered, the
//! orders by outcome — and its three forms: human text, JSON and JUnit XML.

use std::collections::BTreeMap;

use hdrhistogram::Histogram;
use serde::Serialize;

use super::checks::{Class, Violation};
use crate::replay::xml;

/// Latencies of one call, one sample per attempt.
#[derive(Debug, Default)]
pub struct Latencies {
    hist: BTreeMap<String, Histogram<u64>>,
}

impl Latencies {
    pub fn record(&mut self, call: &str, micros: u64) {
        let h = self.hist.entry(call.to_owned()).or_insert_with(|| {
            Histogram::new_with_bounds(1, 3_600_000_000, 3).expect("valid bounds")
        });
        h.saturating_record(micros.max(1));
    }

    /// Per call: count, average and percentiles in ms, and whether the average is within
    /// `budget_ms`.
    pub fn stats(&self, budget_ms: u64) -> Vec<CallStats> {
        let ms = |us: f64| (us / 1000.0 * 100.0).round() / 100.0;
        self.hist
            .iter()
            .map(|(call, h)| CallStats {
                call: call.clone(),
                count: h.len(),
                avg_ms: ms(h.mean()),
                p50_ms: ms(h.value_at_quantile(0.50) as f64),
                p90_ms: ms(h.value_at_quantile(0.90) as f64),
                p99_ms: ms(h.value_at_quantile(0.99) as f64),
                max_ms: ms(h.max() as f64),
                within_budget: h.mean() <= budget_ms as f64 * 1000.0,
            })
            .collect()
    }
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct CallStats {
    pub call: String,
    pub count: u64,
    pub avg_ms: f64,
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
    pub within_budget: bool,
}

/// A call that needed more than one attempt and what each attempt got.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Retry {
    pub order: String,
    pub call: String,
    /// The `transactionId` every attempt carried (none for lookup, enroll, account).
    pub transaction_id: Option<String>,
    /// One entry per attempt: `HTTP 503`, `timeout`, `HTTP 200`, ….
    pub attempts: Vec<String>,
    pub recovered: bool,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Report {
    pub run: String,
    pub seed: Option<u64>,
    pub orders: usize,
    /// Orders by how they ended (`paid`, `cancelled`, …).
    pub outcomes: BTreeMap<String, usize>,
    pub budget_ms: u64,
    pub calls: Vec<CallStats>,
    /// Checks whose answer had no `expiresAt` (Karma assumed 2 hours).
    pub expiry_assumed: usize,
    /// Orders whose discounts Karma clamped to the cart total.
    pub discounts_clamped: usize,
    /// Checks the provider refused, by error code.
    pub refusals: BTreeMap<String, usize>,
    pub retries: Vec<Retry>,
    pub violations: Vec<Violation>,
}

impl Report {
    /// Violations by class, every class present (empty when none).
    pub fn by_class(&self) -> BTreeMap<Class, Vec<&Violation>> {
        let mut m: BTreeMap<Class, Vec<&Violation>> =
            Class::ALL.iter().map(|c| (*c, Vec::new())).collect();
        for v in &self.violations {
            m.entry(v.class).or_default().push(v);
        }
        m
    }

    pub fn passed(&self) -> bool {
        self.violations.is_empty()
    }
}

/// The human report.
pub fn human(r: &Report) -> String {
    let plural = if r.orders == 1 { "" } else { "s" };
    let mut out = format!("simulate run {}: {} order{plural}", r.run, r.orders);
    let ends: Vec<String> = r.outcomes.iter().map(|(k, v)| format!("{v} {k}")).collect();
    out.push_str(&format!(" ({})\n\n", ends.join(", ")));
    out.push_str(&format!(
        "{:<20} {:>6} {:>9} {:>9} {:>9} {:>9} {:>9}  budget {} ms avg\n",
        "call", "count", "avg ms", "p50", "p90", "p99", "max", r.budget_ms
    ));
    for c in &r.calls {
        out.push_str(&format!(
            "{:<20} {:>6} {:>9.2} {:>9.2} {:>9.2} {:>9.2} {:>9.2}  {}\n",
            c.call,
            c.count,
            c.avg_ms,
            c.p50_ms,
            c.p90_ms,
            c.p99_ms,
            c.max_ms,
            if c.within_budget { "ok" } else { "OVER" }
        ));
    }
    let recovered = r.retries.iter().filter(|x| x.recovered).count();
    out.push_str(&format!(
        "\nretried calls: {} ({recovered} recovered) · expiresAt missing (2 h assumed): {} · \
         discounts clamped to the cart total: {}\n\n",
        r.retries.len(),
        r.expiry_assumed,
        r.discounts_clamped
    ));
    if !r.refusals.is_empty() {
        let shown: Vec<String> = r
            .refusals
            .iter()
            .map(|(k, v)| format!("{k} ×{v}"))
            .collect();
        out.push_str(&format!("checks refused: {}\n\n", shown.join(", ")));
    }
    for (class, vs) in r.by_class() {
        let verdict = if vs.is_empty() { "PASS" } else { "FAIL" };
        out.push_str(&format!("{verdict} {} ({})\n", class.name(), vs.len()));
        for v in vs.iter().take(20) {
            out.push_str(&format!("     {} {}: {}\n", v.order, v.call, v.detail));
        }
        if vs.len() > 20 {
            out.push_str(&format!("     … and {} more\n", vs.len() - 20));
        }
    }
    out.push_str(&format!(
        "\n{} violations\n",
        if r.passed() {
            "no".to_string()
        } else {
            r.violations.len().to_string()
        }
    ));
    out
}

/// JUnit XML: one testcase per violation class.
pub fn junit(r: &Report) -> String {
    let by = r.by_class();
    let failures = by.values().filter(|v| !v.is_empty()).count();
    let mut out = format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<testsuites>\n<testsuite name=\"karma-provider simulate\" tests=\"{}\" failures=\"{failures}\">\n",
        by.len()
    );
    for (class, vs) in by {
        out.push_str(&format!(
            "  <testcase classname=\"simulate\" name=\"{}\"",
            class.name()
        ));
        match vs.first() {
            None => out.push_str("/>\n"),
            Some(first) => {
                let lines: Vec<String> = vs
                    .iter()
                    .map(|v| format!("{} {}: {}", v.order, v.call, v.detail))
                    .collect();
                out.push_str(&format!(
                    ">\n    <failure message=\"{}\">{}</failure>\n  </testcase>\n",
                    xml(&format!("{} {}: {}", first.order, first.call, first.detail)),
                    xml(&lines.join("\n"))
                ));
            }
        }
    }
    out.push_str("</testsuite>\n</testsuites>\n");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_and_budget() {
        let mut l = Latencies::default();
        for us in [1_000u64, 2_000, 3_000, 4_000] {
            l.record("voucher.check", us);
        }
        l.record("loyalty.award", 900_000);
        let s = l.stats(500);
        assert_eq!(s[0].call, "loyalty.award");
        assert!(!s[0].within_budget);
        assert_eq!((s[1].count, s[1].avg_ms, s[1].max_ms), (4, 2.5, 4.0));
        assert!(s[1].within_budget);
    }

    #[test]
    fn junit_has_a_testcase_per_class() {
        let r = Report {
            run: "r".into(),
            seed: None,
            orders: 1,
            outcomes: BTreeMap::new(),
            budget_ms: 500,
            calls: vec![],
            expiry_assumed: 0,
            discounts_clamped: 0,
            refusals: BTreeMap::new(),
            retries: vec![],
            violations: vec![Violation {
                class: Class::DiscountAboveTotal,
                order: "o<1>".into(),
                call: "voucher.check".into(),
                detail: "d".into(),
            }],
        };
        let x = junit(&r);
        assert!(x.contains("tests=\"7\" failures=\"1\""), "{x}");
        assert!(
            x.contains("<failure message=\"o&lt;1&gt; voucher.check: d\">"),
            "{x}"
        );
        assert!(human(&r).contains("FAIL discount-above-total (1)\n     o<1> voucher.check: d\n"));
    }
}
