//! One order as Karma runs it: identify the guest (lookup, else enroll) and show the
//! balance (account); check each voucher; on payment commit each hold, award the purchase
//! (after the discount) and show the balance again; on cancel or failed payment reactivate
//! each hold; on refund, reactivate after the commit. Commit, reactivate and award are
//! sent a second time with the same `transactionId` (as when Karma's first answer is
//! lost) and must answer the same bytes.

use serde_json::{json, Value};

use super::checks::{self, Class, Hold};
use super::order::{voucher_cart, Order};
use super::{hex_id, Shared};

/// A voucher Karma holds for the order.
struct Held {
    code: String,
    hold: Hold,
    transaction_id: String,
}

pub(crate) async fn order(sh: &Shared, o: &Order) {
    let id = o.id.clone().unwrap_or_default();
    let member = identify(sh, &id, o).await;
    let (cart, total) = voucher_cart(o);
    // Karma sends its guest's user id with a check, loyalty program or not
    let guest = member
        .clone()
        .or_else(|| o.ordering_member.as_ref().and_then(|m| m.user_id()));
    let held = check_all(sh, &id, o, &cart, total, guest.as_deref()).await;
    let discounts: Vec<i64> = held.iter().map(|h| h.hold.discount).collect();
    let applied = checks::applied(&discounts, total);
    if discounts.iter().fold(0i64, |a, d| a.saturating_add(*d)) > total {
        sh.lock().clamped += 1;
    }
    if o.then.pays() {
        for h in &held {
            commit(sh, &id, h).await;
        }
        if let Some(user) = &member {
            award(sh, &id, o, user, total.saturating_sub(applied)).await;
            account(sh, &id, user).await;
        }
    }
    if o.then != super::order::Next::Paid {
        for h in &held {
            reactivate(sh, &id, h).await;
        }
    }
    *sh.lock().outcomes.entry(o.then.name().into()).or_default() += 1;
}

/// Parse a 200 answer; otherwise an unexpected-answer violation.
fn ok_json(sh: &Shared, order: &str, call: &str, ans: &(u16, Vec<u8>)) -> Option<Value> {
    let v: Option<Value> = serde_json::from_slice(&ans.1).ok();
    match (ans.0, v) {
        (200, Some(v)) if v.is_object() => Some(v),
        (s, _) => {
            let detail = format!("HTTP {s}: {}", String::from_utf8_lossy(&ans.1));
            sh.violation(Class::UnexpectedAnswer, order, call, detail);
            None
        }
    }
}

/// A 200 `ok:true` answer, or the violation saying what came instead.
fn success(sh: &Shared, order: &str, call: &str, ans: &(u16, Vec<u8>)) -> Option<Value> {
    let v = ok_json(sh, order, call, ans)?;
    if v["ok"] == json!(true) {
        return Some(v);
    }
    let detail = format!("refused: {}", String::from_utf8_lossy(&ans.1));
    sh.violation(Class::UnexpectedAnswer, order, call, detail);
    None
}

/// Lookup by Karma's best identifier, enroll when unknown, then show the balance.
async fn identify(sh: &Shared, id: &str, o: &Order) -> Option<String> {
    let m = o.ordering_member.as_ref()?;
    let program = sh.program.clone()?;
    let (kind, ident) = m.identifier()?;
    let mut user = m.user_id()?;
    let body = json!({"locationId": o.location_id, "loyaltyProgramId": program,
                      "identifier": ident, "identifierType": kind});
    let ans = sh.call(id, "loyalty.lookup", &body, false).await?;
    let v = ok_json(sh, id, "loyalty.lookup", &ans)?;
    match (&v["ok"], v["error"].as_str()) {
        (Value::Bool(true), _) => {
            if let Some(u) = v["userId"].as_str() {
                user = u.to_owned();
            }
        }
        (Value::Bool(false), Some("MEMBER_NOT_FOUND")) => {
            let mut body = json!({"userId": user, "loyaltyProgramId": program,
                                  "locationId": o.location_id});
            if let Some(e) = &m.email {
                body["email"] = json!(e);
            }
            if let Some(p) = &m.phone {
                body["phone"] = json!(p);
            }
            let ans = sh.call(id, "loyalty.enroll", &body, false).await?;
            success(sh, id, "loyalty.enroll", &ans)?;
        }
        _ => {
            let detail = format!("neither a member nor MEMBER_NOT_FOUND: {v}");
            sh.violation(Class::UnexpectedAnswer, id, "loyalty.lookup", detail);
            return None;
        }
    }
    account(sh, id, &user).await?;
    Some(user)
}

/// Show the balance; it must follow from what the run has seen.
async fn account(sh: &Shared, id: &str, user: &str) -> Option<()> {
    let body = json!({"userId": user, "loyaltyProgramId": sh.program.clone()?});
    let ans = sh.call(id, "loyalty.account", &body, false).await?;
    let v = success(sh, id, "loyalty.account", &ans)?;
    let Some(balance) = v["currentBalance"].as_i64() else {
        let detail = format!("no integer currentBalance: {v}");
        sh.violation(Class::UnexpectedAnswer, id, "loyalty.account", detail);
        return None;
    };
    follow(sh, id, "loyalty.account", user, |b| b.shown(balance));
    Some(())
}

/// Follow `user`'s balance with `step`; a mismatch is a violation of `call`.
fn follow(
    sh: &Shared,
    id: &str,
    call: &str,
    user: &str,
    step: impl FnOnce(&mut checks::Balance) -> Option<String>,
) {
    let wrong = step(sh.lock().balances.entry(user.to_owned()).or_default());
    if let Some(d) = wrong {
        sh.violation(Class::BalanceDoesNotAddUp, id, call, format!("{user}: {d}"));
    }
}

/// Check each voucher once (a check is not retried: it has no transactionId).
async fn check_all(
    sh: &Shared,
    id: &str,
    o: &Order,
    cart: &Value,
    total: i64,
    user: Option<&str>,
) -> Vec<Held> {
    let mut held = Vec::new();
    let mut seen = Vec::new();
    for (n, code) in o.vouchers.iter().enumerate() {
        if seen.contains(code) {
            continue;
        }
        seen.push(code.clone());
        let mut body = json!({"code": code, "cart": cart, "locationId": o.location_id});
        if let Some(u) = user {
            body["userId"] = json!(u);
        }
        let Some(ans) = sh.call(id, "voucher.check", &body, false).await else {
            continue;
        };
        let Some(v) = ok_json(sh, id, "voucher.check", &ans) else {
            continue;
        };
        match checks::read_check(&v) {
            Err(e) => sh.violation(
                Class::UnexpectedAnswer,
                id,
                "voucher.check",
                format!("{code}: {e}"),
            ),
            Ok(None) => {
                let code = v["error"].as_str().unwrap_or("").to_owned();
                *sh.lock().refusals.entry(code).or_default() += 1;
            }
            Ok(Some(hold)) => {
                judge_hold(sh, id, code, &hold, total);
                held.push(Held {
                    code: code.clone(),
                    hold,
                    transaction_id: format!("res_{}", hex_id(&sh.run, &format!("{id}/{n}"))),
                });
            }
        }
    }
    held
}

fn judge_hold(sh: &Shared, id: &str, code: &str, hold: &Hold, total: i64) {
    if let Some(d) = checks::above_total(hold.discount, total) {
        sh.violation(
            Class::DiscountAboveTotal,
            id,
            "voucher.check",
            format!("{code}: {d}"),
        );
    }
    let mut rec = sh.lock();
    if hold.expiry_assumed {
        rec.expiry_assumed += 1;
    }
    if sh.single_use.contains(code) {
        if let Some(other) = rec.single.take(code, id) {
            drop(rec);
            let detail =
                format!("single-use {code} checked ok:true while order {other} holds or used it");
            sh.violation(Class::SingleUseCodeUsedTwice, id, "voucher.check", detail);
        }
    }
}

/// Send an idempotent call, then once more with the same body: the bytes must match.
async fn twice(sh: &Shared, id: &str, call: &str, body: &Value) -> Option<Value> {
    let first = sh.call(id, call, body, true).await?;
    let v = success(sh, id, call, &first)?;
    if let Some(again) = sh.call(id, call, body, true).await {
        if let Some(d) = checks::changed_on_retry(&first, &again) {
            sh.violation(Class::AnswerChangedOnRetry, id, call, d);
        }
    }
    Some(v)
}

async fn commit(sh: &Shared, id: &str, h: &Held) {
    let body = json!({"amountCents": h.hold.discount, "transactionId": h.transaction_id,
                      "providerRef": h.hold.provider_ref});
    twice(sh, id, "voucher.commit", &body).await;
}

async fn reactivate(sh: &Shared, id: &str, h: &Held) {
    sh.lock().single.give_back(&h.code, id);
    let body = json!({"amountCents": h.hold.discount, "transactionId": h.transaction_id,
                      "providerRef": h.hold.provider_ref});
    twice(sh, id, "voucher.reactivate", &body).await;
}

/// Award the purchase after the discount; `newBalance` must follow from the balance.
async fn award(sh: &Shared, id: &str, o: &Order, user: &str, amount: i64) -> Option<()> {
    let items: Vec<String> = o.items.iter().map(|i| i.id.to_string()).collect();
    let body = json!({"userId": user, "loyaltyProgramId": sh.program.clone()?,
        "purchaseId": format!("{}-{id}", sh.run), "purchaseAmountCents": amount,
        "itemIds": items, "transactionId": format!("loy_{}", hex_id(&sh.run, &format!("{id}/award")))});
    let v = twice(sh, id, "loyalty.award", &body).await?;
    let (Some(points), Some(new_balance)) = (v["pointsAwarded"].as_i64(), v["newBalance"].as_i64())
    else {
        let detail = format!("no integer pointsAwarded/newBalance: {v}");
        sh.violation(Class::UnexpectedAnswer, id, "loyalty.award", detail);
        return None;
    };
    follow(sh, id, "loyalty.award", user, |b| {
        b.awarded(points, new_balance)
    });
    Some(())
}
