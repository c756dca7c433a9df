//! Pact provider states, for `replay --state-url` and the Pact verifier: before a scenario,
//! bring the world to the named state. Every setup is idempotent (setting a state up again
//! finds what the first setup made) and answers the values it made, for Pact's
//! provider-state injected values. States: `""` (an interaction without a state: nothing
//! to do), `campaign` (params: a campaign as in the config), `program` (a loyalty program
//! with its rewards), `member` (params: program, userId, phone, email, card, balance,
//! lifetimeEarned), `hold` (a live hold: code, cart, userId, locationId) and `committed` (a
//! committed reservation: the same plus an optional transactionId). A state that cannot be reached
//! answers 409 `STATE_UNREACHABLE`. Teardown is a no-op. Only when
//! `[admin] provider_states = true`.

use serde_json::{json, Value};

use crate::clock::Millis;
use crate::contract::voucher::{CheckRequest, CommitRequest};
use crate::contract::{check_transaction_id, ApiError};
use crate::loyalty::{Program, ProgramSpec};
use crate::store::{StoreError, Txn};
use crate::voucher::{CampaignSpec, HoldState};

use super::voucher::HoldRecord;
use super::{admin, fingerprint, keys, loyalty, voucher, Reply, State};

type R = Result<Reply, StoreError>;

pub const STATES: &str = "campaign, program, member, hold, committed (or \"\")";

fn unreachable(state: &str, why: impl std::fmt::Display) -> Reply {
    Reply::error(&ApiError::new(
        409,
        "STATE_UNREACHABLE",
        format!("state {state}: {why}"),
    ))
}

pub fn apply(
    txn: &mut Txn<'_>,
    st: &mut State,
    t: &str,
    state: &str,
    params: Value,
    action: &str,
    now: Millis,
) -> Result<Reply, StoreError> {
    match action {
        "teardown" => return Ok(Reply::json(200, json!({"ok": true}))),
        "setup" => {}
        other => {
            return Ok(Reply::error(&ApiError::invalid(
                "action",
                format!("{other:?} is not setup or teardown"),
            )))
        }
    }
    match state {
        "" => Ok(Reply::json(200, json!({"ok": true}))),
        "hold" => hold(txn, st, t, &params, now),
        "committed" => committed(txn, st, t, &params, now),
        "campaign" => {
            let spec: CampaignSpec = match serde_json::from_value(params) {
                Ok(s) => s,
                Err(e) => return Ok(Reply::error(&ApiError::invalid("params", e.to_string()))),
            };
            let exists = st
                .tenant(t)
                .is_some_and(|ts| ts.campaigns.contains_key(&spec.id));
            let id = spec.id.clone();
            admin::put_campaign(txn, st, t, exists.then_some(id.as_str()), spec)
        }
        "program" => {
            let spec: ProgramSpec = match serde_json::from_value(params) {
                Ok(s) => s,
                Err(e) => return Ok(Reply::error(&ApiError::invalid("params", e.to_string()))),
            };
            let p = match Program::from_spec(spec) {
                Ok(p) => p,
                Err(e) => {
                    return Ok(Reply::error(&ApiError::invalid(
                        format!("params.{}", e.key),
                        e.message,
                    )))
                }
            };
            let Some(ts) = st.tenant(t) else {
                return Ok(Reply::not_found("unknown tenant"));
            };
            if ts.config_programs.contains(&p.id) {
                return Ok(Reply::error(&ApiError::new(
                    409,
                    "PROGRAM_FROM_CONFIG",
                    format!("program {} comes from the config file", p.id),
                )));
            }
            txn.put_json(keys::program(t, &p.id), &p.spec);
            st.install_program(t, p);
            Ok(Reply::json(200, json!({"ok": true})))
        }
        "member" => {
            let program = match params.get("program") {
                Some(Value::String(s)) => s.clone(),
                Some(Value::Number(n)) => n.to_string(),
                _ => {
                    return Ok(Reply::error(&ApiError::invalid(
                        "params.program",
                        "the loyaltyProgramId the member belongs to",
                    )))
                }
            };
            loyalty::provision_member(txn, st, t, &program, &params, now)
        }
        other => Ok(Reply::error(&ApiError::invalid(
            "state",
            format!("{other:?} is not one of {STATES}"),
        ))),
    }
}

/// The check a `hold` or `committed` state makes, from its params.
fn check_request(params: &Value) -> Result<CheckRequest, Reply> {
    let mut body = serde_json::Map::new();
    for k in ["code", "cart", "userId", "locationId"] {
        if let Some(v) = params.get(k) {
            body.insert(k.to_owned(), v.clone());
        }
    }
    let req: CheckRequest = serde_json::from_value(Value::Object(body)).map_err(|e| {
        Reply::error(&ApiError::invalid(
            "params",
            format!("code and cart as in a check request ({e})"),
        ))
    })?;
    req.validate().map_err(|e| {
        Reply::error(&ApiError {
            message: format!("params.{}", e.message),
            field: e.field.map(|f| format!("params.{f}")),
            ..e
        })
    })?;
    Ok(req)
}

/// What a state answers about its hold.
fn hold_values(h: &HoldRecord, fresh_tx: Option<String>) -> Value {
    json!({
        "ok": true,
        "providerRef": h.provider_ref,
        "voucherNr": h.code,
        "code": h.code,
        "discountAmountCents": h.amount_cents,
        "amountCents": h.amount_cents,
        "expiresAt": crate::clock::rfc3339(h.expires_at),
        "transactionId": h.transaction_id.clone().or(fresh_tx),
    })
}

/// A transaction id no call has used: `res_` + the store's next id in 32 hex digits.
fn fresh_transaction_id(txn: &mut Txn<'_>) -> Result<String, StoreError> {
    Ok(format!("res_{:032x}", txn.next_id()?))
}

/// Make a hold as a check would; `Err` is the refusal, as a state answer.
fn make_hold(
    txn: &mut Txn<'_>,
    st: &mut State,
    t: &str,
    state: &str,
    req: &CheckRequest,
    now: Millis,
) -> Result<Result<HoldRecord, Reply>, StoreError> {
    let reply = voucher::check(txn, st, t, req, None, None, now)?;
    let body: Value = serde_json::from_slice(&reply.body).unwrap_or(Value::Null);
    let Some(r) = body.get("providerRef").and_then(Value::as_str) else {
        let why = body.get("message").and_then(Value::as_str).unwrap_or("");
        return Ok(Err(unreachable(
            state,
            format!("a check of code {:?} is refused: {why}", req.code),
        )));
    };
    match txn.get_json::<HoldRecord>(&keys::hold(t, r))? {
        Some(h) => Ok(Ok(h)),
        None => Ok(Err(unreachable(state, "the hold just made is not stored"))),
    }
}

/// `hold`: a live hold for these params; the same one while it lives. Its answer carries a
/// fresh unused `transactionId` for the commit or reactivate that follows.
fn hold(txn: &mut Txn<'_>, st: &mut State, t: &str, params: &Value, now: Millis) -> R {
    let req = match check_request(params) {
        Ok(r) => r,
        Err(reply) => return Ok(reply),
    };
    super::voucher::prune(txn, st, now)?;
    let key = keys::provider_state(t, "hold", &hex::encode(fingerprint(&req)));
    if let Some(r) = txn.get(&key)? {
        let r = String::from_utf8_lossy(&r).into_owned();
        if st.holds().contains(&r) {
            if let Some(h) = txn.get_json::<HoldRecord>(&keys::hold(t, &r))? {
                let tx = fresh_transaction_id(txn)?;
                return Ok(Reply::json(200, hold_values(&h, Some(tx))));
            }
        }
    }
    Ok(match make_hold(txn, st, t, "hold", &req, now)? {
        Ok(h) => {
            txn.put(key, h.provider_ref.as_bytes().to_vec());
            Reply::json(200, hold_values(&h, Some(fresh_transaction_id(txn)?)))
        }
        Err(reply) => reply,
    })
}

/// `committed`: a reservation committed under `transactionId` (a new one when not given);
/// the same reservation on a repeat with the same id.
fn committed(txn: &mut Txn<'_>, st: &mut State, t: &str, params: &Value, now: Millis) -> R {
    let tx = match params.get("transactionId") {
        None | Some(Value::Null) => fresh_transaction_id(txn)?,
        Some(Value::String(tx)) => tx.clone(),
        Some(_) => {
            return Ok(Reply::error(&ApiError::invalid(
                "params.transactionId",
                "the transaction id the reservation is committed under, or none for a new one",
            )))
        }
    };
    if let Err(e) = check_transaction_id("params.transactionId", &tx, "res_") {
        return Ok(Reply::error(&e));
    }
    let req = match check_request(params) {
        Ok(r) => r,
        Err(reply) => return Ok(reply),
    };
    let key = keys::provider_state(t, "committed", &tx);
    if let Some(r) = txn.get(&key)? {
        let r = String::from_utf8_lossy(&r).into_owned();
        return Ok(match txn.get_json::<HoldRecord>(&keys::hold(t, &r))? {
            Some(h) if h.state == HoldState::Committed => Reply::json(200, hold_values(&h, None)),
            _ => unreachable(
                "committed",
                format!("transaction {tx} was committed and since given back; a transactionId commits once, use a new one"),
            ),
        });
    }
    if txn.get(&keys::idem(t, "commit", &tx))?.is_some() {
        return Ok(unreachable(
            "committed",
            format!("transaction {tx} was already used by a commit call; use a new transactionId"),
        ));
    }
    let h = match make_hold(txn, st, t, "committed", &req, now)? {
        Ok(h) => h,
        Err(reply) => return Ok(reply),
    };
    let commit = CommitRequest {
        amount_cents: h.amount_cents,
        transaction_id: tx,
        provider_ref: Some(h.provider_ref.clone()),
    };
    let reply = voucher::commit(txn, st, t, &commit, now)?;
    let body: Value = serde_json::from_slice(&reply.body).unwrap_or(Value::Null);
    if body.get("ok") != Some(&Value::Bool(true)) {
        let why = body.get("message").and_then(Value::as_str).unwrap_or("");
        return Ok(unreachable(
            "committed",
            format!("the commit is refused: {why}"),
        ));
    }
    txn.put(key, h.provider_ref.as_bytes().to_vec());
    Ok(
        match txn.get_json::<HoldRecord>(&keys::hold(t, &h.provider_ref))? {
            Some(h) => Reply::json(200, hold_values(&h, None)),
            None => unreachable("committed", "the committed hold is not stored"),
        },
    )
}
