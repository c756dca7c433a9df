//! The console's HTML, as maud templates (checked at compile time; every value is escaped
//! unless wrapped in `PreEscaped`, which is never used for data). No page carries a secret
//! but its own session's CSRF token.

use maud::{html, Markup, DOCTYPE};
use serde_json::Value;

use super::session::Active;
use crate::app::App;

/// Ledger lines per page.
pub const LEDGER_PAGE: usize = 20;

pub(super) fn layout(title: &str, s: Option<&Active>, body: Markup) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { (title) " · karma-provider console" }
                link rel="stylesheet" href="/console/assets/console.css";
            }
            body {
                header {
                    a.brand href="/console/" { "karma-provider console" }
                    @if let Some(s) = s {
                        form.logout method="post" action="/console/logout" {
                            input type="hidden" name="csrf" value=(s.csrf);
                            button type="submit" { "Sign out" }
                        }
                    }
                }
                main { h1 { (title) } (body) }
            }
        }
    }
}

/// The sign-in page, with what went wrong last time.
pub fn sign_in(error: Option<&str>) -> Markup {
    layout(
        "Sign in",
        None,
        html! {
            @if let Some(e) = error { p.error role="alert" { (e) } }
            form method="post" action="/console/login" {
                label for="token" { "Admin token" }
                input #token type="password" name="token" autocomplete="current-password" required autofocus;
                button type="submit" { "Sign in" }
            }
            p.hint { "The token named by [admin] token_env in the server's config (the demo prints one at start)." }
        },
    )
}

/// A page that only says what went wrong.
pub fn problem(text: &str) -> Markup {
    layout(
        "Cannot do that",
        None,
        html! {
            p.error role="alert" { (text) }
            p { a href="/console/" { "Back to the console" } }
        },
    )
}

/// A page about one thing an operation answered: a link back, then the refusal if the
/// operation failed, else `body` of its answer.
pub(super) fn detail(
    title: &str,
    s: &Active,
    (back, back_text): (&str, &str),
    reply: &crate::app::Reply,
    body: impl FnOnce(&Value) -> Markup,
) -> Markup {
    let v = super::actions::json(reply);
    let outcome = (reply.status != 200).then(|| Outcome::refused(&v));
    layout(
        title,
        Some(s),
        html! {
            p { a href=(back) { "← " (back_text) } }
            (banner(&outcome))
            @if reply.status == 200 { (body(&v)) }
        },
    )
}

/// The start page: each tenant's pages.
pub fn home(app: &App, s: &Active) -> Markup {
    layout(
        "Tenants",
        Some(s),
        html! {
            ul.cards {
                @for t in &app.config.tenants {
                    li {
                        h2 { (t.id) }
                        nav aria-label={ "Pages of " (t.id) } {
                            a href={ "/console/" (t.id) "/overview" } { "Overview" }
                            " "
                            a href={ "/console/" (t.id) "/members" } { "Find a member" }
                            " "
                            a href={ "/console/" (t.id) "/transactions" } { "Find a transaction" }
                            " "
                            a href={ "/console/" (t.id) "/campaigns" } { "Campaigns and codes" }
                            " "
                            a href={ "/console/" (t.id) "/webhooks" } { "Webhooks" }
                        }
                    }
                }
            }
        },
    )
}

/// What an action did, for the banner above the page.
pub struct Outcome {
    pub ok: bool,
    pub text: String,
}

impl Outcome {
    /// A refusal's words (its code, field and message).
    pub fn refused(v: &Value) -> Outcome {
        Outcome {
            ok: false,
            text: super::actions::refusal(v),
        }
    }

    /// An operation's outcome: `done`'s words for its answer when it succeeded (200, and
    /// not `ok: false`), its refusal otherwise.
    pub fn of(reply: &crate::app::Reply, done: impl FnOnce(&Value) -> String) -> Outcome {
        let v = super::actions::json(reply);
        if reply.status == 200 && v["ok"] != Value::Bool(false) {
            Outcome {
                ok: true,
                text: done(&v),
            }
        } else {
            Outcome::refused(&v)
        }
    }
}

pub(super) fn banner(o: &Option<Outcome>) -> Markup {
    html! {
        @if let Some(o) = o {
            @if o.ok { p.ok role="status" { (o.text) } } @else { p.error role="alert" { (o.text) } }
        }
    }
}

/// The member search form and, when found, the member.
pub struct MemberPage<'a> {
    pub tenant: &'a str,
    pub program: &'a str,
    pub kind: &'a str,
    pub query: &'a str,
    pub outcome: Option<Outcome>,
    pub member: Option<Value>,
    pub page: usize,
    /// The operation id of the action just done: its ledger lines are marked new.
    pub new_ref: Option<&'a str>,
    pub opid: String,
}

const KINDS: [(&str, &str); 5] = [
    ("phone", "Phone"),
    ("email", "Email"),
    ("card", "Card"),
    ("memberId", "Member id"),
    ("userId", "Karma user id"),
];

pub fn member_page(p: &MemberPage<'_>, s: &Active) -> Markup {
    layout(
        &format!("Find a member · {}", p.tenant),
        Some(s),
        html! {
            form.search method="get" action={ "/console/" (p.tenant) "/members" } {
                label for="program" { "Program" }
                input #program name="program" value=(p.program) required;
                label for="type" { "Find by" }
                select #type name="type" {
                    @for (v, l) in KINDS { option value=(v) selected[v == p.kind] { (l) } }
                }
                label for="q" { "Identifier" }
                input #q name="q" value=(p.query) required;
                button type="submit" { "Find" }
            }
            (banner(&p.outcome))
            @if let Some(m) = &p.member { (new_lines(p, m)) (member(p, m, s)) }
        },
    )
}

pub(super) fn text(v: &Value) -> String {
    match v {
        Value::Null => "—".into(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

pub(super) fn time(v: &Value) -> String {
    v.as_i64()
        .map(crate::clock::rfc3339)
        .unwrap_or_else(|| "—".into())
}

fn member(p: &MemberPage<'_>, m: &Value, s: &Active) -> Markup {
    let id = text(&m["memberId"]);
    html! {
        section aria-labelledby="who" {
            h2 #who { "Member " (id) }
            dl.facts {
                dt { "Karma user" } dd { (text(&m["userId"])) }
                dt { "Phone" } dd { (text(&m["phone"])) }
                dt { "Email" } dd { (text(&m["email"])) }
                dt { "Card" } dd { (text(&m["card"])) }
                dt { "Balance" } dd #balance { (text(&m["currentBalance"])) }
                dt { "Pending" } dd { (text(&m["pendingPoints"])) }
                dt { "Lifetime" } dd { (text(&m["lifetimeEarned"])) }
                dt { "Tier" } dd { (text(&m["tierName"])) }
            }
        }
        (actions(p, &id, s))
        (balance_chart(m))
        (lots(m))
        (ledger(p, m))
    }
}

/// What every action form carries: the CSRF token, the program, the operation id.
fn hidden(p: &MemberPage<'_>, s: &Active) -> Markup {
    html! {
        input type="hidden" name="csrf" value=(s.csrf);
        input type="hidden" name="program" value=(p.program);
        input type="hidden" name="opid" value=(p.opid);
    }
}

fn actions(p: &MemberPage<'_>, id: &str, s: &Active) -> Markup {
    let base = format!("/console/{}/members/{}", p.tenant, id);
    html! {
        section.actions aria-labelledby="act" {
            h2 #act { "Actions" }
            form method="post" action={ (base) "/adjust" } {
                h3 { "Adjust points" }
                (hidden(p, s))
                label for="points" { "Points (negative to take away)" }
                input #points name="points" type="number" step="1" required;
                label for="reason" { "Reason (kept in the ledger)" }
                input #reason name="reason" required;
                button type="submit" { "Adjust" }
            }
            form method="post" action={ (base) "/reverse" } {
                h3 { "Reverse an award" }
                (hidden(p, s))
                label for="award" { "Purchase id, or the award's loy_ transaction id" }
                input #award name="award" required;
                label for="amount" { "Refunded cents (empty: all that is left)" }
                input #amount name="amountCents" type="number" min="1" step="1";
                label for="rreason" { "Reason" }
                input #rreason name="reason" required;
                button type="submit" { "Reverse" }
            }
            form method="post" action={ (base) "/reverse-redemption" } {
                h3 { "Reverse a redemption" }
                (hidden(p, s))
                label for="redemption" { "Redemption id (rdm_…, in the ledger)" }
                input #redemption name="redemption" required;
                label for="dreason" { "Reason" }
                input #dreason name="reason" required;
                button type="submit" { "Reverse redemption" }
            }
        }
    }
}

/// The ledger lines the action just made, right under its outcome.
fn new_lines(p: &MemberPage<'_>, m: &Value) -> Markup {
    let empty = Vec::new();
    let new: Vec<&Value> = m["ledger"]
        .as_array()
        .unwrap_or(&empty)
        .iter()
        .filter(|e| p.new_ref.is_some() && e["reference"].as_str() == p.new_ref)
        .collect();
    html! {
        @if !new.is_empty() {
            ul.new-lines aria-label="New ledger lines" {
                @for e in new {
                    li { "New ledger line #" (text(&e["seq"])) ": " (text(&e["kind"])) " "
                         (text(&e["points"])) " points, balance " (text(&e["balanceAfter"])) }
                }
            }
        }
    }
}

/// The balance after each ledger line of the page shown, oldest first.
fn balance_chart(m: &Value) -> Markup {
    let empty = Vec::new();
    let bars: Vec<super::chart::Bar> = m["ledger"]
        .as_array()
        .unwrap_or(&empty)
        .iter()
        .rev()
        .map(|e| super::chart::Bar {
            label: format!("#{}", text(&e["seq"])),
            values: vec![e["balanceAfter"].as_u64().unwrap_or(0)],
        })
        .collect();
    html! {
        @if !bars.is_empty() {
            section aria-labelledby="balance-h" {
                h2 #balance-h { "Balance over time (the ledger lines below)" }
                (super::chart::stacked_bars("balance-chart", "Balance after each ledger line", &["balance".into()], &bars))
            }
        }
    }
}

fn lots(m: &Value) -> Markup {
    let empty = Vec::new();
    let lots = m["lots"].as_array().unwrap_or(&empty);
    html! {
        section aria-labelledby="lots" {
            h2 #lots { "Points lots" }
            @if lots.is_empty() { p { "No open lots." } } @else {
                table {
                    thead { tr { th { "Ledger line" } th.num { "Left" } th { "Available" } th { "Expires" } } }
                    tbody { @for l in lots { tr {
                        td { (text(&l["seq"])) } td.num { (text(&l["remaining"])) }
                        td { (time(&l["availableAt"])) } td { (time(&l["expiresAt"])) }
                    } } }
                }
            }
        }
    }
}

fn ledger(p: &MemberPage<'_>, m: &Value) -> Markup {
    let empty = Vec::new();
    // The server sent one page, newest first.
    let lines = m["ledger"].as_array().unwrap_or(&empty);
    let total = m["ledgerEntries"].as_u64().unwrap_or(0);
    let pages = usize::try_from(total)
        .unwrap_or(usize::MAX)
        .div_ceil(LEDGER_PAGE)
        .max(1);
    let page = p.page;
    let link = |n: usize| {
        format!(
            "/console/{}/members?program={}&type=memberId&q={}&page={n}",
            p.tenant,
            p.program,
            text(&m["memberId"])
        )
    };
    html! {
        section aria-labelledby="ledger" {
            h2 #ledger { "Ledger (newest first)" }
            table #ledger-table {
                thead { tr { th { "#" } th { "When" } th { "What" } th.num { "Points" } th.num { "Balance" } th { "Reason / reference" } } }
                tbody { @for e in lines {
                    @let new = p.new_ref.is_some() && e["reference"].as_str() == p.new_ref;
                    tr class=[new.then_some("new")] {
                        td { (text(&e["seq"])) } td { (time(&e["at"])) } td { (text(&e["kind"])) }
                        td.num { (text(&e["points"])) } td.num { (text(&e["balanceAfter"])) }
                        td { (e["reason"].as_str().unwrap_or("")) " "
                             @for k in ["transactionId", "purchaseId", "redemptionId", "reference"] {
                                 @if let Some(v) = e[k].as_str() { small { (k) " " (v) " " } } } }
                    }
                } }
            }
            nav.pager aria-label="Ledger pages" {
                @if page > 0 { a href=(link(page - 1)) { "Newer" } }
                " Page " (page + 1) " of " (pages) " "
                @if page + 1 < pages { a href=(link(page + 1)) { "Older" } }
            }
        }
    }
}
