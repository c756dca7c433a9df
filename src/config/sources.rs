//! Order sources of a loyalty program (`[[tenants.loyalty.sources]]`): LOKE and Olympus
//! ordering platforms whose completed orders earn points in the program's ledger. This
//! file turns one program's raw entries into validated [`SourceConfig`]s; the poller is
//! `crate::sources`.

use std::time::Duration;

use serde::Deserialize;

use super::{ConfigError, Secret};

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

/// Reads a secret from `*_env` / `*_file` (the config's one reader).
pub type SecretReader<'a> =
    &'a dyn Fn(&str, &Option<String>, &Option<String>) -> Result<Option<Secret>, ConfigError>;
/// Parses a duration key with its default (the config's one parser).
pub type DurationReader<'a> =
    &'a dyn Fn(&str, &Option<String>, Duration) -> Result<Duration, ConfigError>;

/// The sources of program `program` (key prefix `pk`, e.g. `tenants[0].loyalty[1]`),
/// refusing a name already used by `taken` (the tenant's other sources).
pub fn parse(
    origin: &str,
    pk: &str,
    program: &str,
    raw: Vec<serde_json::Value>,
    taken: &[SourceConfig],
    secret: SecretReader<'_>,
    dur: DurationReader<'_>,
) -> Result<Vec<SourceConfig>, ConfigError> {
    let err = |key: String, message: String| ConfigError {
        file: origin.to_owned(),
        key,
        message,
    };
    let mut out: Vec<SourceConfig> = Vec::new();
    for (i, v) in raw.into_iter().enumerate() {
        let sk = format!("{pk}.sources[{i}]");
        let r: RawSource = serde_path_to_error::deserialize(v).map_err(|e| {
            let path = e.path().to_string();
            let key = if path == "." {
                sk.clone()
            } else {
                format!("{sk}.{path}")
            };
            err(key, e.into_inner().to_string())
        })?;
        if !crate::voucher::valid_id(&r.name)
            || taken.iter().chain(out.iter()).any(|s| s.name == r.name)
        {
            return Err(err(
                format!("{sk}.name"),
                "must be an id of A-Z a-z 0-9 - _ . unique within the tenant".into(),
            ));
        }
        let kind = kind_of(&r, &sk).map_err(|(k, m)| err(k, m))?;
        if !(r.base_url.starts_with("http://") || r.base_url.starts_with("https://"))
            || r.base_url.parse::<hyper::Uri>().is_err()
        {
            return Err(err(
                format!("{sk}.base_url"),
                "must be an http:// or https:// URL".into(),
            ));
        }
        let token =
            secret(&format!("{sk}.token_env"), &r.token_env, &r.token_file)?.ok_or_else(|| {
                err(
                    format!("{sk}.token_env"),
                    "names no token that is set (token_env or token_file)".into(),
                )
            })?;
        let page_size = r.page_size.unwrap_or(50);
        if !(1..=500).contains(&page_size) {
            return Err(err(format!("{sk}.page_size"), "must be 1..=500".into()));
        }
        out.push(SourceConfig {
            name: r.name.clone(),
            program: program.to_owned(),
            kind,
            base_url: r.base_url.trim_end_matches('/').to_owned(),
            token,
            poll_every: dur(
                &format!("{sk}.poll_every"),
                &r.poll_every,
                Duration::from_secs(60),
            )?,
            timeout: dur(
                &format!("{sk}.timeout"),
                &r.timeout,
                Duration::from_secs(10),
            )?,
            backoff: dur(&format!("{sk}.backoff"), &r.backoff, Duration::from_secs(1))?,
            backoff_max: dur(
                &format!("{sk}.backoff_max"),
                &r.backoff_max,
                Duration::from_secs(300),
            )?,
            page_size,
            watch: dur(
                &format!("{sk}.watch"),
                &r.watch,
                Duration::from_secs(86_400),
            )?,
        });
    }
    Ok(out)
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
