//! The console's tenant pages: each reads its fields, calls the same [`App`] operation the
//! admin API or the provider call does (lookup, member view, adjustment, award reversal),
//! and hands the answer to a template.

use maud::Markup;
use serde_json::Value;

use super::pages::{self, MemberPage, Outcome};
use super::session::{random_token, Active};
use super::{field, overview, vouchers, webhooks, ConsoleRequest, ConsoleResponse};
use crate::app::admin::{
    AdjustRequest, LedgerPage, MemberRef, RedemptionReversalRequest, ReversalRequest,
};
use crate::app::{App, Reply};
use crate::contract::loyalty::LookupRequest;

/// A page under `/console/{tenant}/`; `None`: no such page.
pub async fn tenant_page(
    app: &App,
    req: &ConsoleRequest,
    tenant: &str,
    rest: &[&str],
    s: &Active,
) -> Option<ConsoleResponse> {
    let page = match (rest, req.post) {
        (["members"], false) => find_member(app, req, tenant, s).await,
        (["members", member, "adjust"], true) => adjust(app, req, tenant, member, s).await,
        (["members", member, "reverse"], true) => reverse(app, req, tenant, member, s).await,
        (["members", member, "reverse-redemption"], true) => {
            reverse_redemption(app, req, tenant, member, s).await
        }
        (["transactions"], false) => vouchers::transaction(app, req, tenant, s).await,
        ([] | ["overview"], false) => overview::page(app, tenant, s).await,
        (["webhooks", ..], _) => return webhooks::page(app, req, tenant, &rest[1..], s).await,
        _ => return vouchers::page(app, req, tenant, rest, s).await,
    };
    Some(ConsoleResponse::html(200, page))
}

/// A fresh operation id for the forms of a page: submitting the same form twice replays
/// the first answer instead of acting twice.
pub(super) fn opid() -> String {
    format!(
        "console-{}",
        random_token().unwrap_or_default().get(..24).unwrap_or("")
    )
}

pub(super) fn json(r: &Reply) -> Value {
    serde_json::from_slice(&r.body).unwrap_or(Value::Null)
}

/// An error answer's words: its message, and the field it names.
pub(super) fn refusal(v: &Value) -> String {
    let msg = v["message"].as_str().unwrap_or("the operation failed");
    let code = v["error"].as_str().unwrap_or("ERROR");
    match v["field"].as_str() {
        Some(f) => format!("{code}: {f}: {msg}"),
        None => format!("{code}: {msg}"),
    }
}

fn first_program(app: &App, tenant: &str) -> String {
    app.config
        .tenants
        .iter()
        .find(|t| t.id == tenant)
        .and_then(|t| t.programs.first())
        .map(|p| p.id.clone())
        .unwrap_or_default()
}

async fn find_member(app: &App, req: &ConsoleRequest, tenant: &str, s: &Active) -> Markup {
    let q = &req.query;
    let program = field(q, "program")
        .map(str::to_owned)
        .unwrap_or_else(|| first_program(app, tenant));
    let kind = field(q, "type").unwrap_or("phone");
    let query = field(q, "q").unwrap_or("");
    let page = field(q, "page").and_then(|p| p.parse().ok()).unwrap_or(0);
    let mut p = MemberPage {
        tenant,
        program: &program,
        kind,
        query,
        outcome: None,
        member: None,
        page,
        new_ref: None,
        opid: opid(),
    };
    if !query.is_empty() {
        let found = app
            .lookup(
                tenant,
                LookupRequest {
                    location_id: None,
                    loyalty_program_id: program.clone(),
                    identifier: query.to_owned(),
                    identifier_type: kind.to_owned(),
                },
            )
            .await;
        let v = json(&found);
        match v["memberId"].as_str() {
            Some(id) if found.status == 200 => {
                p.member = show(app, tenant, &program, id, page).await
            }
            _ => p.outcome = Some(Outcome::refused(&v)),
        }
    }
    pages::member_page(&p, s)
}

/// The program and operation id every member action form carries.
fn program_and_op(f: &[(String, String)]) -> (&str, &str) {
    (
        field(f, "program").unwrap_or(""),
        field(f, "opid").unwrap_or(""),
    )
}

/// The admin member view (balances, tier, lots, one page of the ledger), or `None` if it
/// is gone.
async fn show(app: &App, tenant: &str, program: &str, member: &str, page: usize) -> Option<Value> {
    let m = MemberRef {
        by_user: false,
        id: member.to_owned(),
        ledger_page: Some(LedgerPage {
            page,
            per_page: pages::LEDGER_PAGE,
        }),
    };
    let r = app.show_member(tenant, program, m).await;
    (r.status == 200).then(|| json(&r))
}

/// The member page after an action: the action's outcome above, its ledger lines marked.
async fn after_action(
    app: &App,
    tenant: &str,
    program: &str,
    member: &str,
    op: &str,
    outcome: Outcome,
    s: &Active,
) -> Markup {
    let p = MemberPage {
        tenant,
        program,
        kind: "memberId",
        query: member,
        member: show(app, tenant, program, member, 0).await,
        outcome: Some(outcome),
        page: 0,
        new_ref: Some(op),
        opid: opid(),
    };
    pages::member_page(&p, s)
}

async fn adjust(app: &App, req: &ConsoleRequest, tenant: &str, member: &str, s: &Active) -> Markup {
    let f = &req.form;
    let (program, op) = program_and_op(f);
    let outcome = match field(f, "points").unwrap_or("").trim().parse::<i64>() {
        Err(_) => Outcome {
            ok: false,
            text: "points: a whole number, negative to take points away".into(),
        },
        Ok(points) => {
            let r = AdjustRequest {
                id: op.to_owned(),
                points,
                reason: field(f, "reason").unwrap_or("").to_owned(),
                counts_toward_lifetime: false,
            };
            let reply = app.adjust(tenant, program, member, r).await;
            Outcome::of(&reply, |v| {
                format!(
                    "Adjusted by {points} points; the balance is now {}.",
                    v["newBalance"]
                )
            })
        }
    };
    after_action(app, tenant, program, member, op, outcome, s).await
}

async fn reverse(
    app: &App,
    req: &ConsoleRequest,
    tenant: &str,
    member: &str,
    s: &Active,
) -> Markup {
    let f = &req.form;
    let (program, op) = program_and_op(f);
    let award = field(f, "award").unwrap_or("").trim();
    let amount = field(f, "amountCents")
        .map(str::trim)
        .filter(|a| !a.is_empty());
    let amount_cents = match amount.map(str::parse::<i64>) {
        Some(Err(_)) => {
            let o = Outcome {
                ok: false,
                text: "amountCents: a whole number of cents".into(),
            };
            return after_action(app, tenant, program, member, op, o, s).await;
        }
        Some(Ok(n)) => Some(n),
        None => None,
    };
    let by_tx = award.starts_with("loy_");
    let r = ReversalRequest {
        id: op.to_owned(),
        purchase_id: (!by_tx).then(|| award.to_owned()),
        transaction_id: by_tx.then(|| award.to_owned()),
        amount_cents,
        reason: field(f, "reason").unwrap_or("").to_owned(),
    };
    let reply = app.reverse_award(tenant, program, r).await;
    let outcome = Outcome::of(&reply, |v| {
        format!(
            "Reversed {} points ({} already spent, not recovered); the balance is now {}.",
            v["pointsReversed"], v["pointsUnrecovered"], v["newBalance"]
        )
    });
    after_action(app, tenant, program, member, op, outcome, s).await
}

async fn reverse_redemption(
    app: &App,
    req: &ConsoleRequest,
    tenant: &str,
    member: &str,
    s: &Active,
) -> Markup {
    let f = &req.form;
    let (program, op) = program_and_op(f);
    let redemption = field(f, "redemption").unwrap_or("").trim();
    let r = RedemptionReversalRequest {
        id: op.to_owned(),
        reason: field(f, "reason").unwrap_or("").to_owned(),
    };
    let reply = app.reverse_redemption(tenant, program, redemption, r).await;
    let outcome = Outcome::of(&reply, |v| {
        format!(
            "Reversed redemption {redemption}: {} points returned; the balance is now {}.",
            v["pointsReturned"], v["newBalance"]
        )
    });
    after_action(app, tenant, program, member, op, outcome, s).await
}
