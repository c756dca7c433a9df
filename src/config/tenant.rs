//! `[[tenants]]`: one tenant's id, auth, hold time, code matching, campaigns, loyalty
//! programs, vendor rules and webhook receiver — one function each.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use serde::Deserialize;

use super::loader::{ConfigError, Loader};
use super::rules::{rules, RulesConfig};
use super::secret::Secret;
use super::webhooks::{webhooks, RawWebhooks, WebhookConfig};
use crate::loyalty::{Program, ProgramSpec};
use crate::voucher::{match_key, Campaign, CampaignSpec, CodeMatch};
use crate::wire::valid_id;

#[derive(Debug, Clone)]
pub struct TenantConfig {
    pub id: String,
    pub auth: Auth,
    pub hold_ttl_ms: i64,
    pub code_match: CodeMatch,
    pub campaigns: Vec<Campaign>,
    /// Loyalty programs, by Karma loyaltyProgramId.
    pub programs: Vec<Program>,
    /// Vendor rules for the whole tenant (a campaign's own rules win).
    pub rules: Option<RulesConfig>,
    /// Vendor rules per campaign id.
    pub campaign_rules: HashMap<String, RulesConfig>,
    /// The webhook receiver; `None`: `/v1/{tenant}/webhooks` answers 404.
    pub webhooks: Option<WebhookConfig>,
    /// Order sources (LOKE, Olympus) of the tenant's programs.
    pub sources: Vec<super::SourceConfig>,
}

#[derive(Debug, Clone)]
pub enum Auth {
    None,
    /// A custom header carrying a shared secret.
    Header {
        name: String,
        value: Secret,
    },
    /// HTTP Basic.
    Basic {
        username: String,
        password: Secret,
    },
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawTenant {
    id: String,
    auth: Option<RawAuth>,
    hold_ttl: Option<String>,
    code_match: Option<CodeMatch>,
    #[serde(default)]
    campaigns: Vec<CampaignSpec>,
    #[serde(default)]
    loyalty: Vec<ProgramSpec>,
    webhooks: Option<RawWebhooks>,
    rules: Option<crate::voucher::RulesSpec>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAuth {
    mode: String,
    header: Option<String>,
    value_env: Option<String>,
    value_file: Option<String>,
    username: Option<String>,
    password_env: Option<String>,
    password_file: Option<String>,
}

/// Every tenant, in the order written; ids unique.
pub(super) fn tenants(
    cx: &Loader<'_>,
    raw: Vec<RawTenant>,
) -> Result<Vec<TenantConfig>, ConfigError> {
    let mut tenants = Vec::new();
    let mut seen_tenants = HashSet::new();
    for (ti, t) in raw.into_iter().enumerate() {
        let tk = format!("tenants[{ti}]");
        if !valid_id(&t.id) {
            return Err(cx.err(
                &format!("{tk}.id"),
                "must be 1-64 characters of A-Z a-z 0-9 - _ .",
            ));
        }
        if !seen_tenants.insert(t.id.clone()) {
            return Err(cx.err(
                &format!("{tk}.id"),
                format!("tenant {:?} is defined twice", t.id),
            ));
        }
        tenants.push(tenant(cx, &tk, t)?);
    }
    Ok(tenants)
}

/// One tenant, its id already checked.
fn tenant(cx: &Loader<'_>, tk: &str, t: RawTenant) -> Result<TenantConfig, ConfigError> {
    let auth = auth(cx, tk, t.auth.as_ref())?;
    let hold_ttl = cx.dur(
        &format!("{tk}.hold_ttl"),
        &t.hold_ttl,
        Duration::from_secs(7200),
    )?;
    if hold_ttl.is_zero() {
        return Err(cx.err(&format!("{tk}.hold_ttl"), "must be longer than zero"));
    }
    let code_match = t.code_match.unwrap_or_default();
    let campaigns = campaigns(cx, tk, code_match, t.campaigns)?;
    let tenant_rules = t
        .rules
        .as_ref()
        .map(|r| rules(cx, &format!("{tk}.rules"), r))
        .transpose()?;
    let campaign_rules = campaign_rules(cx, tk, &campaigns)?;
    let (loyalty, sources) = super::sources::take(cx, tk, t.loyalty)?;
    let programs = programs(cx, tk, loyalty)?;
    let webhooks = t
        .webhooks
        .map(|w| webhooks(cx, &format!("{tk}.webhooks"), &t.id, w))
        .transpose()?;
    Ok(TenantConfig {
        rules: tenant_rules,
        campaign_rules,
        webhooks,
        id: t.id,
        auth,
        hold_ttl_ms: hold_ttl.as_millis() as i64,
        code_match,
        campaigns,
        programs,
        sources,
    })
}

fn auth(cx: &Loader<'_>, tk: &str, a: Option<&RawAuth>) -> Result<Auth, ConfigError> {
    let Some(a) = a else {
        return Err(cx.err(
            &format!("{tk}.auth"),
            "is required: { mode = \"none\" | \"basic\" | \"header\", … }",
        ));
    };
    let ak = format!("{tk}.auth");
    match a.mode.as_str() {
        "none" => Ok(Auth::None),
        "header" => header_auth(cx, &ak, a),
        "basic" => basic_auth(cx, &ak, a),
        other => Err(cx.err(
            &format!("{ak}.mode"),
            format!("unknown mode {other:?}; use none, basic or header"),
        )),
    }
}

fn header_auth(cx: &Loader<'_>, ak: &str, a: &RawAuth) -> Result<Auth, ConfigError> {
    let name = a
        .header
        .clone()
        .ok_or_else(|| cx.err(&format!("{ak}.header"), "is required for mode \"header\""))?;
    if hyper::header::HeaderName::from_bytes(name.as_bytes()).is_err() {
        return Err(cx.err(
            &format!("{ak}.header"),
            format!("{name:?} is not a valid header name"),
        ));
    }
    let value = cx.required_secret(
        &format!("{ak}.value_env"),
        &a.value_env,
        &a.value_file,
        "names no secret that is set (give value_env = \"VAR\" with VAR set, or value_file)",
    )?;
    Ok(Auth::Header {
        name: name.to_ascii_lowercase(),
        value,
    })
}

fn basic_auth(cx: &Loader<'_>, ak: &str, a: &RawAuth) -> Result<Auth, ConfigError> {
    let username = a
        .username
        .clone()
        .ok_or_else(|| cx.err(&format!("{ak}.username"), "is required for mode \"basic\""))?;
    if username.contains(':') {
        return Err(cx.err(&format!("{ak}.username"), "must not contain ':'"));
    }
    let password = cx.required_secret(
        &format!("{ak}.password_env"),
        &a.password_env,
        &a.password_file,
        "names no secret that is set (give password_env = \"VAR\" with VAR set, or password_file)",
    )?;
    Ok(Auth::Basic { username, password })
}

/// The tenant's campaigns: ids unique, and no code in two campaigns (under `code_match`).
fn campaigns(
    cx: &Loader<'_>,
    tk: &str,
    code_match: CodeMatch,
    specs: Vec<CampaignSpec>,
) -> Result<Vec<Campaign>, ConfigError> {
    let mut campaigns = Vec::new();
    let mut ids = HashSet::new();
    let mut codes = HashMap::new();
    for (ci, spec) in specs.into_iter().enumerate() {
        let ck = format!("{tk}.campaigns[{ci}]");
        let c =
            Campaign::from_spec(spec).map_err(|e| cx.err(&format!("{ck}.{}", e.key), e.message))?;
        if !ids.insert(c.id.clone()) {
            return Err(cx.err(
                &format!("{ck}.id"),
                format!("campaign {:?} is defined twice", c.id),
            ));
        }
        for (i, code) in c.spec.codes.iter().enumerate() {
            if let Some(other) = codes.insert(match_key(code_match, code), c.id.clone()) {
                return Err(cx.err(
                    &format!("{ck}.codes[{i}]"),
                    format!("code {code:?} also belongs to campaign {other:?} (under code_match = {code_match:?})"),
                ));
            }
        }
        campaigns.push(c);
    }
    Ok(campaigns)
}

/// Each campaign's own vendor rules, by campaign id.
fn campaign_rules(
    cx: &Loader<'_>,
    tk: &str,
    campaigns: &[Campaign],
) -> Result<HashMap<String, RulesConfig>, ConfigError> {
    let mut campaign_rules = HashMap::new();
    for (ci, c) in campaigns.iter().enumerate() {
        if let Some(r) = &c.spec.rules {
            campaign_rules.insert(
                c.id.clone(),
                rules(cx, &format!("{tk}.campaigns[{ci}].rules"), r)?,
            );
        }
    }
    Ok(campaign_rules)
}

/// The tenant's loyalty programs (`[[tenants.loyalty]]`): ids unique.
fn programs(
    cx: &Loader<'_>,
    tk: &str,
    specs: Vec<ProgramSpec>,
) -> Result<Vec<Program>, ConfigError> {
    let mut programs: Vec<Program> = Vec::new();
    for (pi, spec) in specs.into_iter().enumerate() {
        let pk = format!("{tk}.loyalty[{pi}]");
        if let (Some(e), p) = (spec.expire_days, spec.pending_days) {
            if p >= e {
                return Err(cx.err(
                    &format!("{pk}.pending_days"),
                    "must be less than expire_days",
                ));
            }
        }
        let p =
            Program::from_spec(spec).map_err(|e| cx.err(&format!("{pk}.{}", e.key), e.message))?;
        if programs.iter().any(|q| q.id == p.id) {
            return Err(cx.err(
                &format!("{pk}.program_id"),
                format!("program {} is defined twice", p.id),
            ));
        }
        programs.push(p);
    }
    Ok(programs)
}
