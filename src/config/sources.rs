//! Order sources of a loyalty program (`[[tenants.loyalty.sources]]`): LOKE and Olympus
//! ordering platforms whose completed orders earn points in the program's ledger. This
//! file takes them out of the tenant's programs as validated [`SourceConfig`]s; the poller
//! is `crate::sources`.

use std::time::Duration;

use serde::Deserialize;

use super::loader::Loader;
use super::{ConfigError, Secret};
use crate::loyalty::ProgramSpec;
use crate::wire::valid_id;

/// Which platform, and what addresses its orders.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SourceKind {
    /// `GET {base_url}/organizations/{organization_id}/locations/{location_id}/orders`,
    /// paged by the cursor the response headers give.
    Loke {
        organization_id: String,
        location_id: String,
    },
    /// `GET {base_url}/v1/commerce/orders?status=…&limit=…&offset=…[&location_id=…]`.
    Olympus { location_id: Option<String> },
}

impl SourceKind {
    pub fn name(&self) -> &'static str {
        match self {
            SourceKind::Loke { .. } => "loke",
            SourceKind::Olympus { .. } => "olympus",
        }
    }
}

#[derive(Debug, Clone)]
pub struct SourceConfig {
    /// Unique within the tenant; part of every record key and purchase id of its orders.
    pub name: String,
    /// The loyalty program its orders earn in.
    pub program: String,
    pub kind: SourceKind,
    /// Without a trailing slash.
    pub base_url: String,
    /// Sent as `Authorization: Bearer …`.
    pub token: Secret,
    /// Pause between polls once the platform has nothing new.
    pub poll_every: Duration,
    /// Per request.
    pub timeout: Duration,
    /// First retry delay after a failed request (doubles, with jitter, up to `backoff_max`);
    /// a 429's `Retry-After` wins.
    pub backoff: Duration,
    pub backoff_max: Duration,
    /// Orders per page (Olympus `limit`).
    pub page_size: u32,
    /// LOKE: how long an order that was open or awarded when seen is fetched again by id
    /// (to see it complete, or be refunded/rejected). `0s`: never.
    pub watch: Duration,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSource {
    name: String,
    kind: String,
    base_url: String,
    organization_id: Option<String>,
    location_id: Option<String>,
    token_env: Option<String>,
    token_file: Option<String>,
    poll_every: Option<String>,
    timeout: Option<String>,
    backoff: Option<String>,
    backoff_max: Option<String>,
    page_size: Option<u32>,
    watch: Option<String>,
}

/// Take the sources out of each program (`{tk}.loyalty[i].sources`), validated; names
/// unique within the tenant. The programs come back without them.
pub(super) fn take(
    cx: &Loader<'_>,
    tk: &str,
    mut specs: Vec<ProgramSpec>,
) -> Result<(Vec<ProgramSpec>, Vec<SourceConfig>), ConfigError> {
    let mut out: Vec<SourceConfig> = Vec::new();
    for (pi, spec) in specs.iter_mut().enumerate() {
        let program = spec.program_id.clone().into_text();
        for (i, v) in std::mem::take(&mut spec.sources).into_iter().enumerate() {
            let sk = format!("{tk}.loyalty[{pi}].sources[{i}]");
            let s = source(cx, &sk, &program, v)?;
            if out.iter().any(|o| o.name == s.name) {
                return Err(cx.err(
                    &format!("{sk}.name"),
                    "must be an id of A-Z a-z 0-9 - _ . unique within the tenant",
                ));
            }
            out.push(s);
        }
    }
    Ok((specs, out))
}

/// One source at key `sk`, earning in `program`.
fn source(
    cx: &Loader<'_>,
    sk: &str,
    program: &str,
    v: serde_json::Value,
) -> Result<SourceConfig, ConfigError> {
    let r: RawSource = serde_path_to_error::deserialize(v).map_err(|e| {
        let path = e.path().to_string();
        let key = if path == "." {
            sk.to_owned()
        } else {
            format!("{sk}.{path}")
        };
        cx.err(&key, e.into_inner().to_string())
    })?;
    if !valid_id(&r.name) {
        return Err(cx.err(
            &format!("{sk}.name"),
            "must be an id of A-Z a-z 0-9 - _ . unique within the tenant",
        ));
    }
    let kind = kind_of(&r, sk).map_err(|(k, m)| cx.err(&k, m))?;
    if !(r.base_url.starts_with("http://") || r.base_url.starts_with("https://"))
        || r.base_url.parse::<hyper::Uri>().is_err()
    {
        return Err(cx.err(
            &format!("{sk}.base_url"),
            "must be an http:// or https:// URL",
        ));
    }
    let token = cx.required_secret(
        &format!("{sk}.token_env"),
        &r.token_env,
        &r.token_file,
        "names no token that is set (token_env or token_file)",
    )?;
    let page_size = r.page_size.unwrap_or(50);
    if !(1..=500).contains(&page_size) {
        return Err(cx.err(&format!("{sk}.page_size"), "must be 1..=500"));
    }
    let dur = |key: &str, v: &Option<String>, secs: u64| {
        cx.dur(&format!("{sk}.{key}"), v, Duration::from_secs(secs))
    };
    Ok(SourceConfig {
        name: r.name.clone(),
        program: program.to_owned(),
        kind,
        base_url: r.base_url.trim_end_matches('/').to_owned(),
        token,
        poll_every: dur("poll_every", &r.poll_every, 60)?,
        timeout: dur("timeout", &r.timeout, 10)?,
        backoff: dur("backoff", &r.backoff, 1)?,
        backoff_max: dur("backoff_max", &r.backoff_max, 300)?,
        page_size,
        watch: dur("watch", &r.watch, 86_400)?,
    })
}

fn kind_of(r: &RawSource, sk: &str) -> Result<SourceKind, (String, String)> {
    let id = |key: &str, v: &Option<String>| match v {
        Some(s) if !s.is_empty() && !s.contains(['/', '?', '#', '%']) && s.len() <= 128 => {
            Ok(s.clone())
        }
        Some(_) => Err((
            format!("{sk}.{key}"),
            "must be 1-128 characters without / ? # %".to_string(),
        )),
        None => Err((
            format!("{sk}.{key}"),
            "is required for this kind".to_string(),
        )),
    };
    match r.kind.as_str() {
        "loke" => Ok(SourceKind::Loke {
            organization_id: id("organization_id", &r.organization_id)?,
            location_id: id("location_id", &r.location_id)?,
        }),
        "olympus" => {
            if r.organization_id.is_some() {
                return Err((
                    format!("{sk}.organization_id"),
                    "is a LOKE key; Olympus sources take location_id only".into(),
                ));
            }
            let location_id = match &r.location_id {
                None => None,
                loc => Some(id("location_id", loc)?),
            };
            Ok(SourceKind::Olympus { location_id })
        }
        other => Err((
            format!("{sk}.kind"),
            format!("{other:?} is not one of \"loke\", \"olympus\""),
        )),
    }
}
