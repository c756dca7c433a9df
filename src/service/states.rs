//! Pact-style provider states for `replay --state-url`: before a scenario, make what it
//! names exist. States: `campaign` (params: a campaign as in the config), `program` (a
//! loyalty program with its rewards), `member` (params: program, userId, phone, email,
//! card, balance, lifetimeEarned). Teardown is a no-op: fixtures use ids unique to their
//! run, so nothing collides. Only when `[admin] provider_states = true`.

use serde_json::{json, Value};

use crate::clock::Millis;
use crate::contract::ApiError;
use crate::loyalty::{Program, ProgramSpec};
use crate::store::{StoreError, Txn};
use crate::voucher::CampaignSpec;

use super::{admin, keys, loyalty, Reply, State};

pub const STATES: &str = "campaign, program, member";

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
