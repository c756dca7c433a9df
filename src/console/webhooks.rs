//! The console's webhook pages: the inbox filtered by event, status and time, one event
//! with its headers, body and delivery attempts per route, and the dead letters with
//! replay and purge (one or all). Each calls the `App` operation the admin API calls.

use maud::{html, Markup};
use serde_json::Value;

use super::actions::json;
use super::pages::{banner, detail, layout, text, Outcome};
use super::session::Active;
use super::{field, ConsoleRequest, ConsoleResponse};
use crate::app::{App, InboxFilter, Reply};

/// A page under `/console/{tenant}/webhooks/`; `None`: no such page.
pub async fn page(
    app: &App,
    req: &ConsoleRequest,
    tenant: &str,
    rest: &[&str],
    s: &Active,
) -> Option<ConsoleResponse> {
    let outcome = match (rest, req.post) {
        ([], false) => None,
        ([seq], false) => return Some(event(app, tenant, seq, s).await),
        (["dead", action], true) => Some(dead_action(app, tenant, None, action).await?),
        (["dead", route, seq, action], true) => {
            let seq = seq.parse().ok()?;
            let only = Some((route.to_string(), seq));
            Some(dead_action(app, tenant, only, action).await?)
        }
        _ => return None,
    };
    Some(ConsoleResponse::html(
        200,
        inbox(app, req, tenant, outcome, s).await,
    ))
}

/// Replay or purge dead letters; `None`: no such action.
async fn dead_action(
    app: &App,
    tenant: &str,
    only: Option<(String, u64)>,
    action: &str,
) -> Option<Outcome> {
    let (r, word, key): (Reply, _, _) = match action {
        "replay" => (app.replay_dead(tenant, only).await, "Replayed", "replayed"),
        "purge" => (app.purge_dead(tenant, only).await, "Purged", "purged"),
        _ => return None,
    };
    Some(Outcome::of(&r, |v| {
        format!("{word} {} dead letter(s).", v[key])
    }))
}

/// The inbox (filtered by the query) and the dead letters.
async fn inbox(
    app: &App,
    req: &ConsoleRequest,
    tenant: &str,
    mut outcome: Option<Outcome>,
    s: &Active,
) -> Markup {
    // An empty form field is no filter.
    let q: Vec<(String, String)> = if req.post {
        Vec::new()
    } else {
        req.query
            .iter()
            .filter(|(_, v)| !v.is_empty())
            .cloned()
            .collect()
    };
    let events = match InboxFilter::from_query(&q) {
        Ok(f) => json(&app.inbox(tenant, f).await),
        Err(e) => {
            outcome = Some(Outcome::refused(&json(&Reply::error(&e))));
            Value::Null
        }
    };
    let dead = json(&app.dead_letters(tenant).await);
    let empty = Vec::new();
    let base = format!("/console/{tenant}/webhooks");
    let get = |k: &str| field(&q, k).unwrap_or("").to_owned();
    layout(
        &format!("Webhooks · {tenant}"),
        Some(s),
        html! {
            (banner(&outcome))
            (dead_letters(&base, dead["deadLetters"].as_array().unwrap_or(&empty), s))
            section aria-labelledby="inbox-h" {
                h2 #inbox-h { "Inbox" }
                form.search method="get" action=(base) {
                    label for="event" { "Event" }
                    input #event name="event" value=(get("event")) placeholder="inventory.created";
                    label for="status" { "Status" }
                    select #status name="status" {
                        @for v in ["", "queued", "delivered", "dead"] {
                            option value=(v) selected[get("status") == v] { (if v.is_empty() { "any" } else { v }) }
                        }
                    }
                    label for="since" { "Since (RFC 3339)" }
                    input #since name="since" value=(get("since"));
                    label for="until" { "Until (RFC 3339)" }
                    input #until name="until" value=(get("until"));
                    button type="submit" { "Filter" }
                }
                table #inbox {
                    thead { tr { th { "#" } th { "Received" } th { "Event" } th { "Id" } th { "Status" } } }
                    tbody { @for e in events["events"].as_array().unwrap_or(&empty) {
                        tr {
                            td { a href={ (base) "/" (text(&e["seq"])) } { (text(&e["seq"])) } }
                            td { (text(&e["receivedAt"])) } td { (text(&e["event"])) }
                            td { (text(&e["id"])) } td { (text(&e["status"])) }
                        }
                    } }
                }
            }
        },
    )
}

fn dead_letters(base: &str, list: &[Value], s: &Active) -> Markup {
    let button = |action: &str, label: String, what: &str| {
        html! {
            form.inline method="post" action={ (base) "/dead/" (what) (action) } {
                input type="hidden" name="csrf" value=(s.csrf);
                button type="submit" { (label) }
            }
        }
    };
    html! {
        section aria-labelledby="dead-h" {
            h2 #dead-h { "Dead letters (" (list.len()) ")" }
            @if list.is_empty() { p #no-dead { "No dead letters." } } @else {
                (button("replay", "Replay all".into(), ""))
                (button("purge", "Purge all".into(), ""))
                table #dead {
                    thead { tr { th { "Route" } th { "#" } th { "Event" } th.num { "Attempts" } th { "Last error" } th { "" } } }
                    tbody { @for d in list {
                        @let what = format!("{}/{}/", text(&d["route"]), text(&d["seq"]));
                        tr {
                            td { (text(&d["route"])) } td { a href={ (base) "/" (text(&d["seq"])) } { (text(&d["seq"])) } }
                            td { (text(&d["event"])) " " (text(&d["id"])) }
                            td.num { (text(&d["attempts"])) } td { (text(&d["lastError"])) }
                            td { (button("replay", format!("Replay {what}"), &what)) (button("purge", format!("Purge {what}"), &what)) }
                        }
                    } }
                }
            }
        }
    }
}

/// One event: its body and each route's attempts (its headers, which may carry
/// signatures, are not shown).
async fn event(app: &App, tenant: &str, seq: &str, s: &Active) -> ConsoleResponse {
    let r = match seq.parse::<u64>() {
        Ok(n) => app.inbox_event(tenant, n).await,
        Err(_) => Reply::not_found("no inbox event with this seq"),
    };
    let back = format!("/console/{tenant}/webhooks");
    let title = format!("Webhook event {seq} · {tenant}");
    let m = detail(&title, s, (&back, "Webhooks"), &r, |v| {
        let empty = Vec::new();
        html! {
            dl.facts {
                dt { "Id" } dd { (text(&v["id"])) }
                dt { "Event" } dd { (text(&v["event"])) }
                dt { "Received" } dd { (text(&v["receivedAt"])) }
                dt { "Status" } dd #event-status { (text(&v["status"])) }
            }
            h2 { "Delivery" }
            table #attempts {
                thead { tr { th { "Route" } th { "Status" } th { "Attempts" } } }
                tbody { @for d in v["delivery"].as_array().unwrap_or(&empty) {
                    tr { td { (text(&d["route"])) } td { (text(&d["status"])) }
                         td { ul { @for a in d["attempts"].as_array().unwrap_or(&empty) {
                             li { code { (a.to_string()) } } } } } }
                } }
            }
            h2 { "Body" }
            pre { code { (serde_json::to_string_pretty(&v["body"]).unwrap_or_default()) } }
        }
    });
    ConsoleResponse::html(200, m)
}
