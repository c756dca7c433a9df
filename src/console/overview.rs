//! A tenant's overview: provider calls and webhooks per minute by outcome over the last
//! half hour (a stacked-bar chart, `chart.rs`, from the same counts `/metrics` keeps, per
//! tenant), the same counts by endpoint and outcome, live holds, the webhook queue and
//! dead letters (switch readiness, as the admin API answers it), and store health.

use std::collections::BTreeMap;

use maud::{html, Markup};

use super::actions::json;
use super::chart::{stacked_bars, Bar};
use super::pages::{layout, text};
use super::session::Active;
use crate::app::App;

/// Minutes the overview shows.
pub const MINUTES: i64 = 30;
/// Outcomes drawn as their own series; the rest are "other".
const SERIES: usize = 5;

pub async fn page(app: &App, tenant: &str, s: &Active) -> Markup {
    let now = app.clock.now_ms();
    let recent = app.metrics.recent(tenant, now, MINUTES);
    let mut by_outcome: BTreeMap<String, u64> = BTreeMap::new();
    let mut by_endpoint: BTreeMap<(&str, String), u64> = BTreeMap::new();
    for (_, counts) in &recent {
        for (e, o, n) in counts {
            *by_outcome.entry(o.clone()).or_insert(0) += n;
            *by_endpoint.entry((e, o.clone())).or_insert(0) += n;
        }
    }
    let series = series(&by_outcome);
    let bars: Vec<Bar> = recent
        .iter()
        .map(|(at, counts)| {
            let mut values = vec![0u64; series.len()];
            for (_, o, n) in counts {
                let i = series
                    .iter()
                    .position(|s| s == o)
                    .unwrap_or(series.len() - 1);
                values[i] += n;
            }
            let label = crate::clock::rfc3339(*at)
                .get(11..16)
                .unwrap_or("")
                .to_owned();
            Bar { label, values }
        })
        .collect();
    let ready = json(&app.switch_readiness(tenant).await);
    let base = format!("/console/{tenant}");
    layout(
        &format!("Overview · {tenant}"),
        Some(s),
        html! {
            dl.facts #status {
                dt { "Store" } dd #store { (if app.is_ready() { "healthy" } else { "not ready" }) }
                dt { "Live holds" } dd #live-holds { a href={ (base) "/campaigns" } { (text(&ready["holds"]["live"])) } }
                dt { "Webhooks queued" } dd #queued { (text(&ready["webhooks"]["queued"])) }
                dt { "Dead letters" } dd #dead-letters { a href={ (base) "/webhooks" } { (text(&ready["webhooks"]["deadLetters"])) } }
                dt { "Safe to switch in Karma" } dd #ready { (if ready["ready"] == true { "yes" } else { "no" }) }
            }
            h2 { "Requests per minute, last " (MINUTES) " minutes" }
            @if by_outcome.is_empty() { p #no-requests { "No provider calls or webhooks in the last " (MINUTES) " minutes." } }
            @else { (stacked_bars("requests-chart", "Requests per minute by outcome", &series, &bars)) }
            table #by-endpoint {
                thead { tr { th { "Endpoint" } th { "Outcome" } th.num { "Requests" } } }
                tbody { @for ((e, o), n) in &by_endpoint { tr { td { (e) } td { (o) } td.num { (n) } } } }
            }
        },
    )
}

/// The series of the chart: `ok` first (if any), then the most frequent outcomes, and
/// "other" for the rest when there are more than [`SERIES`].
fn series(by_outcome: &BTreeMap<String, u64>) -> Vec<String> {
    let mut ranked: Vec<(&String, &u64)> = by_outcome.iter().collect();
    ranked.sort_by(|a, b| {
        (a.0 != "ok", std::cmp::Reverse(a.1)).cmp(&(b.0 != "ok", std::cmp::Reverse(b.1)))
    });
    let mut out: Vec<String> = ranked
        .iter()
        .take(SERIES)
        .map(|(o, _)| (*o).clone())
        .collect();
    if ranked.len() > SERIES || out.is_empty() {
        out.push("other".into());
    }
    out
}
