//! The console's voucher pages: a transaction's timeline (`App::find_transaction`, also
//! the admin API's `transactions/{id}`), campaigns with uses, holds and budget left, one
//! code's state and history, code import (line-numbered errors) and generation, the
//! campaign's codes as CSV, holds in flight with a release button. Each calls the
//! `App` operation the admin API calls.

use maud::{html, Markup};
use serde_json::Value;

use super::actions::{json, refusal};
use super::pages::{banner, detail, layout, text, Outcome};
use super::session::Active;
use super::{field, ConsoleRequest, ConsoleResponse};
use crate::app::admin::GenerateRequest;
use crate::app::App;

/// A voucher page under `/console/{tenant}/`; `None`: no such page.
pub async fn page(
    app: &App,
    req: &ConsoleRequest,
    tenant: &str,
    rest: &[&str],
    s: &Active,
) -> Option<ConsoleResponse> {
    let f = &req.form;
    let done = match (rest, req.post) {
        (["campaigns"], false) => Done::default(),
        (["campaigns", c, "codes.csv"], false) => return Some(export(app, tenant, c).await),
        (["campaigns", "import"], true) => import(app, tenant, f).await,
        (["campaigns", "generate"], true) => generate(app, tenant, f).await,
        (["holds", r, "release"], true) => release(app, tenant, r).await,
        (["codes"], false) => return Some(code(app, req, tenant, s).await),
        _ => return None,
    };
    let m = campaigns(app, tenant, s, done).await;
    Some(ConsoleResponse::html(200, m))
}

/// What an action on the campaigns page did.
#[derive(Default)]
struct Done {
    outcome: Option<Outcome>,
    /// An import's invalid rows: (line, message).
    invalid: Vec<(u64, String)>,
    /// The codes a generation made, and their campaign.
    generated: Option<(String, Vec<String>)>,
}

impl From<Outcome> for Done {
    fn from(o: Outcome) -> Done {
        Done {
            outcome: Some(o),
            ..Done::default()
        }
    }
}

fn failed(v: &Value) -> Done {
    Outcome::refused(v).into()
}

async fn import(app: &App, tenant: &str, f: &[(String, String)]) -> Done {
    let campaign = field(f, "campaign").unwrap_or("");
    let file = field(f, "file").unwrap_or("");
    let pasted = field(f, "csv").unwrap_or("");
    let csv = if file.is_empty() { pasted } else { file }.replace("\r\n", "\n");
    let r = app.import_codes(tenant, campaign, csv.into_bytes()).await;
    let v = json(&r);
    let mut d = Done::from(Outcome::of(&r, |v| {
        format!(
            "Imported {} code(s) into {campaign} ({} duplicate(s) skipped).",
            v["imported"], v["duplicates"]
        )
    }));
    d.invalid = v["invalid"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|e| {
                    let line = e["line"].as_u64().unwrap_or(0);
                    (line, e["message"].as_str().unwrap_or("").to_owned())
                })
                .collect()
        })
        .unwrap_or_default();
    d
}

async fn generate(app: &App, tenant: &str, f: &[(String, String)]) -> Done {
    let campaign = field(f, "campaign").unwrap_or("").to_owned();
    let Ok(count) = field(f, "count").unwrap_or("").trim().parse::<u64>() else {
        return failed(
            &serde_json::json!({"error": "INVALID_FIELD", "field": "count",
            "message": "a whole number of codes"}),
        );
    };
    let g = GenerateRequest {
        pattern: field(f, "pattern").unwrap_or("").to_owned(),
        count,
    };
    let r = app.generate_codes(tenant, &campaign, g).await;
    let v = json(&r);
    if r.status != 200 {
        return failed(&v);
    }
    let codes: Vec<String> = v["codes"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|c| c.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default();
    let mut d = Done::from(Outcome {
        ok: true,
        text: format!("Generated {} code(s) for {campaign}.", codes.len()),
    });
    d.generated = Some((campaign, codes));
    d
}

async fn release(app: &App, tenant: &str, provider_ref: &str) -> Done {
    let r = app.release_hold(tenant, provider_ref).await;
    Outcome::of(&r, |_| format!("Released hold {provider_ref}.")).into()
}

async fn export(app: &App, tenant: &str, campaign: &str) -> ConsoleResponse {
    let r = app.export_codes(tenant, campaign).await;
    if r.status != 200 {
        let msg = refusal(&json(&r));
        return ConsoleResponse::html(r.status, super::pages::problem(&msg));
    }
    let name: String = campaign
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect();
    ConsoleResponse {
        status: 200,
        content_type: "text/csv; charset=utf-8",
        body: r.body,
        headers: vec![(
            "content-disposition",
            format!("attachment; filename=\"{tenant}-{name}-codes.csv\""),
        )],
    }
}

/// The campaigns page: campaigns, the forms, live holds.
async fn campaigns(app: &App, tenant: &str, s: &Active, d: Done) -> Markup {
    let list = json(&app.list_campaigns(tenant).await);
    let first = crate::app::HoldPage {
        after: None,
        limit: crate::app::DEFAULT_HOLDS_PAGE,
    };
    let holds = json(&app.list_holds(tenant, first).await);
    let live = holds["count"].as_u64().unwrap_or(0);
    let empty = Vec::new();
    let list = list["campaigns"].as_array().unwrap_or(&empty);
    let holds = holds["holds"].as_array().unwrap_or(&empty);
    let ids: Vec<String> = list.iter().map(|c| text(&c["spec"]["id"])).collect();
    let base = format!("/console/{tenant}");
    layout(
        &format!("Campaigns and codes · {tenant}"),
        Some(s),
        html! {
            (banner(&d.outcome))
            @if !d.invalid.is_empty() {
                ul #import-errors aria-label="Invalid rows" {
                    @for (line, msg) in &d.invalid { li { "line " (line) ": " (msg) } }
                }
            }
            @if let Some((c, codes)) = &d.generated { (generated(&base, c, codes)) }
            form.search method="get" action={ (base) "/codes" } {
                label for="code" { "Look up a code" }
                input #code name="code" required;
                button type="submit" { "Look up" }
            }
            (campaign_table(&base, list))
            (hold_table(&base, holds, live, s))
            (code_forms(&base, &ids, s))
        },
    )
}

fn generated(base: &str, campaign: &str, codes: &[String]) -> Markup {
    html! {
        section aria-labelledby="gen" {
            h2 #gen { "New codes" }
            p { a #download href={ (base) "/campaigns/" (campaign) "/codes.csv" } download {
                "Download every code of " (campaign) " (CSV)" } }
            ul #generated-codes { @for c in codes.iter().take(50) { li { code { (c) } } } }
            @if codes.len() > 50 { p { "… and " (codes.len() - 50) " more in the CSV." } }
        }
    }
}

fn campaign_table(base: &str, list: &[Value]) -> Markup {
    html! {
        section aria-labelledby="camps" {
            h2 #camps { "Campaigns" }
            table #campaigns {
                thead { tr { th { "Campaign" } th { "From" } th.num { "Uses" } th.num { "Holds" }
                             th.num { "Budget left (cents)" } th { "Codes" } } }
                tbody { @for c in list {
                    @let id = text(&c["spec"]["id"]);
                    tr {
                        td { (id) } td { (text(&c["source"])) }
                        td.num { (text(&c["usesConsumed"])) " / " (text(&c["spec"]["max_uses"])) }
                        td.num { (text(&c["holdsLive"])) }
                        td.num { (text(&c["budgetCentsLeft"])) }
                        td { a href={ (base) "/campaigns/" (id) "/codes.csv" } download { "CSV" } }
                    }
                } }
            }
        }
    }
}

/// The oldest live holds (one page of the admin listing), and how many there are in all.
fn hold_table(base: &str, holds: &[Value], live: u64, s: &Active) -> Markup {
    html! {
        section aria-labelledby="holds-h" {
            h2 #holds-h { "Holds in flight" }
            @if (holds.len() as u64) < live {
                p #holds-shown { "The oldest " (holds.len()) " of " (live) " live holds." }
            }
            @if holds.is_empty() { p #no-holds { "No live holds." } } @else {
                table #holds {
                    thead { tr { th { "providerRef" } th { "Campaign" } th { "Code" } th.num { "Cents" }
                                 th { "Expires" } th { "" } } }
                    tbody { @for h in holds {
                        @let r = text(&h["providerRef"]);
                        tr {
                            td { (r) } td { (text(&h["campaign"])) } td { (text(&h["code"])) }
                            td.num { (text(&h["amountCents"])) } td { (text(&h["expiresAt"])) }
                            td { form method="post" action={ (base) "/holds/" (r) "/release" } {
                                input type="hidden" name="csrf" value=(s.csrf);
                                button type="submit" aria-label={ "Release " (r) } { "Release" }
                            } }
                        }
                    } }
                }
            }
        }
    }
}

fn campaign_select(id: &str, ids: &[String]) -> Markup {
    html! {
        select id=(id) name="campaign" required {
            @for c in ids { option value=(c) { (c) } }
        }
    }
}

fn code_forms(base: &str, ids: &[String], s: &Active) -> Markup {
    html! {
        section.actions aria-labelledby="codes-h" {
            h2 #codes-h { "Add codes" }
            form method="post" action={ (base) "/campaigns/import" } enctype="multipart/form-data" {
                h3 { "Import a CSV" }
                input type="hidden" name="csrf" value=(s.csrf);
                label for="import-campaign" { "Campaign" }
                (campaign_select("import-campaign", ids))
                label for="csv-file" { "A CSV file: code[,valid_until][,assigned_user], one per line" }
                input #csv-file type="file" name="file" accept=".csv,text/csv,text/plain";
                label for="csv" { "or paste its lines" }
                textarea #csv name="csv" rows="6" {}
                button type="submit" { "Import" }
            }
            form method="post" action={ (base) "/campaigns/generate" } {
                h3 { "Generate codes" }
                input type="hidden" name="csrf" value=(s.csrf);
                label for="gen-campaign" { "Campaign" }
                (campaign_select("gen-campaign", ids))
                label for="pattern" { "Pattern (# a digit, ? a letter)" }
                input #pattern name="pattern" required placeholder="SUMMER-####-????";
                label for="count" { "How many" }
                input #count name="count" type="number" min="1" step="1" required;
                button type="submit" { "Generate" }
            }
        }
    }
}

/// One code's state and history.
async fn code(app: &App, req: &ConsoleRequest, tenant: &str, s: &Active) -> ConsoleResponse {
    let typed = field(&req.query, "code").unwrap_or("").trim();
    let r = app.code_state(tenant, typed).await;
    let back = format!("/console/{tenant}/campaigns");
    let title = format!("Code · {tenant}");
    let m = detail(&title, s, (&back, "Campaigns and codes"), &r, |v| {
        let empty = Vec::new();
        html! {
            dl.facts {
                dt { "Code" } dd #code-name { (text(&v["code"])) }
                dt { "Campaign" } dd { (text(&v["campaign"])) }
                dt { "State" } dd #code-state { (text(&v["state"])) }
                dt { "Uses" } dd { (text(&v["usesConsumed"])) " of " (text(&v["maxUsesPerCode"])) }
                dt { "Live holds" } dd { (text(&v["holdsLive"])) }
                dt { "Valid until" } dd { (text(&v["validUntil"])) }
                dt { "Assigned to" } dd { (text(&v["assignedUser"])) }
            }
            h2 { "History (" (text(&v["historyEvents"])) " events, last 100 shown)" }
            (events(v["history"].as_array().unwrap_or(&empty)))
        }
    });
    ConsoleResponse::html(200, m)
}

/// Timeline rows: when, what, the rest.
fn events(list: &[Value]) -> Markup {
    html! {
        table #timeline {
            thead { tr { th { "When" } th { "Event" } th { "Details" } } }
            tbody { @for e in list {
                tr {
                    td { (text(&e["at"])) } td { (text(&e["event"])) }
                    td { @for k in ["providerRef", "transactionId", "amountCents", "points", "balanceAfter", "reason", "reference", "guest"] {
                        @if let Some(x) = e.get(k).filter(|x| !x.is_null() && x.as_str() != Some("")) {
                            small { (k) " " (text(x)) " " }
                        }
                    } }
                }
            } }
        }
    }
}

fn kind_name(kind: &Value) -> &'static str {
    match kind.as_str() {
        Some("voucher") => "Voucher hold",
        Some("award") => "Loyalty award",
        Some("redemption") => "Reward redemption",
        _ => "Transaction",
    }
}

/// Find a transaction: the form, and the timeline when found.
pub async fn transaction(app: &App, req: &ConsoleRequest, tenant: &str, s: &Active) -> Markup {
    let q = field(&req.query, "q").unwrap_or("").trim();
    let found = if q.is_empty() {
        None
    } else {
        let r = app.find_transaction(tenant, q).await;
        Some((r.status, json(&r)))
    };
    let outcome = match &found {
        Some((status, v)) if *status != 200 => Some(Outcome::refused(v)),
        _ => None,
    };
    let empty = Vec::new();
    layout(
        &format!("Find a transaction · {tenant}"),
        Some(s),
        html! {
            form.search method="get" action={ "/console/" (tenant) "/transactions" } {
                label for="txq" { "res_ or loy_ id, providerRef, purchaseId or redemption id" }
                input #txq name="q" value=(q) required;
                button type="submit" { "Find" }
            }
            (banner(&outcome))
            @if let Some((200, v)) = &found {
                section aria-labelledby="tx" {
                    h2 #tx { (kind_name(&v["kind"])) " " (q) }
                    dl.facts {
                        @for k in ["state", "providerRef", "transactionId", "campaign", "code", "guest", "amountCents",
                                   "memberId", "purchaseId", "purchaseAmountCents", "redemptionId", "rewardId", "points", "reversedPoints", "reversed"] {
                            @if let Some(x) = v.get(k).filter(|x| !x.is_null()) { dt { (k) } dd id={ "tx-" (k) } { (text(x)) } }
                        }
                    }
                    h3 { "Timeline" }
                    (events(v["timeline"].as_array().unwrap_or(&empty)))
                    h3 { "Answers given (replayed to a retry)" }
                    ul #answers { @for a in v["answers"].as_array().unwrap_or(&empty) {
                        li { (text(&a["call"])) " " (text(&a["transactionId"])) ": HTTP " (text(&a["status"])) " "
                             code { (a["answer"].to_string()) } }
                    } }
                }
            }
        },
    )
}
