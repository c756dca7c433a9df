//! Configuration: a TOML file (or the embedded default) plus secrets from environment
//! variables or files → a validated [`Config`]. Every error names the file and the key.
//! Secrets are wrapped in [`Secret`], whose `Debug` never shows the value.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

pub mod sources;
pub use sources::{SourceConfig, SourceKind};

use crate::loyalty::{Program, ProgramSpec};
use crate::voucher::{match_key, valid_id, Campaign, CampaignSpec, CodeMatch};

pub const DEFAULT_TOML: &str = include_str!("default.toml");
pub const DEFAULT_ORIGIN: &str = "<embedded default config>";

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub file: String,
    pub key: String,
    pub message: String,
}

impl std::fmt::Display for ConfigError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.key.is_empty() {
            write!(f, "{}: {}", self.file, self.message)
        } else {
            write!(f, "{}: key `{}`: {}", self.file, self.key, self.message)
        }
    }
}

impl std::error::Error for ConfigError {}

/// A secret value, and where it was read from (for operator output that must name the
/// source, never the value). `Debug` and `Display` print `***`; equality is on the value.
#[derive(Clone)]
pub struct Secret(String, Option<String>);

impl PartialEq for Secret {
    fn eq(&self, other: &Secret) -> bool {
        self.0 == other.0
    }
}

impl Eq for Secret {}

impl Secret {
    pub fn new(s: impl Into<String>) -> Secret {
        Secret(s.into(), None)
    }
    pub fn expose(&self) -> &str {
        &self.0
    }
    /// Where the value came from, e.g. `environment variable ACME_KEY` or `file /run/k`.
    pub fn origin(&self) -> Option<&str> {
        self.1.as_deref()
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("***")
    }
}

#[derive(Debug, Clone)]
pub struct Config {
    pub origin: String,
    pub server: ServerConfig,
    pub storage: StorageConfig,
    pub admin: AdminConfig,
    pub tenants: Vec<TenantConfig>,
}

#[derive(Debug, Clone)]
pub struct ServerConfig {
    pub listen: String,
    pub max_body_bytes: usize,
    pub max_header_bytes: usize,
    pub header_read_timeout: Duration,
    pub body_read_timeout: Duration,
    pub shutdown_grace: Duration,
    pub max_connections: usize,
}

#[derive(Debug, Clone)]
pub struct StorageConfig {
    pub path: PathBuf,
    pub cache_capacity_mb: u64,
    /// The most records one writer job reads or writes for a long operation (export,
    /// listing, janitor, online import or generation): see `service::sliced`.
    pub job_slice_records: usize,
}

#[derive(Debug, Clone)]
pub struct AdminConfig {
    /// `None`: the admin API answers 404.
    pub token: Option<Secret>,
    /// Enables `POST /admin/v1/tenants/{t}/provider-states` for `replay --state-url`.
    pub provider_states: bool,
}

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
    pub campaign_rules: std::collections::HashMap<String, RulesConfig>,
    /// The webhook receiver; `None`: `/v1/{tenant}/webhooks` answers 404.
    pub webhooks: Option<WebhookConfig>,
    /// Order sources (LOKE, Olympus) of the tenant's programs.
    pub sources: Vec<SourceConfig>,
}

/// A vendor rules service (see `crate::rules`).
#[derive(Clone, Debug)]
pub struct RulesConfig {
    pub url: String,
    pub secret: Secret,
    pub timeout: Duration,
}

#[derive(Clone)]
pub struct WebhookConfig {
    pub scheme: crate::webhook::Scheme,
    /// Active secrets (key bytes), newest first; several during rotation.
    pub secrets: Vec<Vec<u8>>,
    pub tolerance_ms: i64,
    pub retention_ms: i64,
    /// Refuse envelopes whose own `timestamp` is further than this from now (`max_age`).
    pub max_age_ms: Option<i64>,
    /// Onward delivery, in the order written.
    pub routes: Vec<RouteConfig>,
}

#[derive(Clone, Debug)]
pub struct RouteConfig {
    /// `name`, or `route{index}`; keys the route's queue and dead letters.
    pub name: String,
    /// Glob on the envelope's `event` (`*` any run of characters).
    pub events: String,
    pub sink: Sink,
    pub max_attempts: u32,
    /// First retry delay; doubles per attempt (with jitter) up to `backoff_max`.
    pub backoff: Duration,
    pub backoff_max: Duration,
}

#[derive(Clone)]
pub enum Sink {
    Http {
        url: String,
        secret: Secret,
        timeout: Duration,
        /// DER certificates trusted besides the public web roots (from `ca_file`).
        extra_roots: Vec<Vec<u8>>,
    },
    File {
        path: PathBuf,
    },
}

impl std::fmt::Debug for Sink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Sink::Http { url, timeout, .. } => write!(
                f,
                "Http {{ url: {url:?}, secret: ***, timeout: {timeout:?} }}"
            ),
            Sink::File { path } => write!(f, "File {{ path: {path:?} }}"),
        }
    }
}

impl std::fmt::Debug for WebhookConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WebhookConfig")
            .field("scheme", &self.scheme)
            .field("secrets", &format_args!("[{} ***]", self.secrets.len()))
            .field("tolerance_ms", &self.tolerance_ms)
            .field("retention_ms", &self.retention_ms)
            .field("max_age_ms", &self.max_age_ms)
            .field("routes", &self.routes)
            .finish()
    }
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

// ---- the file as written -------------------------------------------------------------

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    #[serde(default)]
    server: RawServer,
    #[serde(default)]
    storage: RawStorage,
    #[serde(default)]
    admin: RawAdmin,
    #[serde(default)]
    tenants: Vec<RawTenant>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawServer {
    listen: Option<String>,
    max_body_bytes: Option<usize>,
    max_header_bytes: Option<usize>,
    header_read_timeout: Option<String>,
    body_read_timeout: Option<String>,
    shutdown_grace: Option<String>,
    max_connections: Option<usize>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawStorage {
    path: Option<String>,
    cache_capacity_mb: Option<u64>,
    job_slice_records: Option<usize>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawAdmin {
    token_env: Option<String>,
    token_file: Option<String>,
    #[serde(default)]
    provider_states: bool,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTenant {
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
struct RawWebhooks {
    verify: RawVerify,
    tolerance: Option<String>,
    retention: Option<String>,
    max_age: Option<String>,
    #[serde(default)]
    routes: Vec<RawRoute>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRoute {
    name: Option<String>,
    events: String,
    sink: RawSink,
    max_attempts: Option<u32>,
    backoff: Option<String>,
    backoff_max: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSink {
    http: Option<String>,
    secret_env: Option<String>,
    secret_file: Option<String>,
    timeout: Option<String>,
    ca_file: Option<String>,
    file: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawVerify {
    scheme: String,
    header: Option<String>,
    #[serde(default)]
    secrets_env: Vec<String>,
    #[serde(default)]
    secrets_file: Vec<String>,
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

/// `"800ms"`, `"30s"`, `"5m"`, `"2h"`, `"7d"`.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s
        .find(|c: char| !c.is_ascii_digit())
        .ok_or_else(|| format!("{s:?} has no unit; write e.g. 800ms, 30s, 5m, 2h, 7d"))?;
    let (n, unit) = s.split_at(split);
    let n: u64 = n
        .parse()
        .map_err(|_| format!("{s:?} does not start with a whole number"))?;
    let ms = match unit {
        "ms" => 1,
        "s" => 1_000,
        "m" => 60_000,
        "h" => 3_600_000,
        "d" => 86_400_000,
        _ => {
            return Err(format!(
                "unknown unit {unit:?} in {s:?}; use ms, s, m, h or d"
            ))
        }
    };
    n.checked_mul(ms)
        .map(Duration::from_millis)
        .ok_or_else(|| format!("{s:?} is too long"))
}

/// Where secrets come from; tests pass their own.
pub trait Env {
    fn var(&self, name: &str) -> Option<String>;
}

pub struct ProcessEnv;

impl Env for ProcessEnv {
    fn var(&self, name: &str) -> Option<String> {
        std::env::var(name).ok()
    }
}

/// The env var holding the embedded demo's webhook secret, and its value when unset.
pub const DEMO_WEBHOOK_SECRET_ENV: &str = "KP_DEMO_WEBHOOK_SECRET";
pub const DEMO_WEBHOOK_SECRET_DEFAULT: &str = "demo-secret";

/// The process env, with the demo's webhook secret defaulted (embedded config only).
pub struct DemoEnv;

impl Env for DemoEnv {
    fn var(&self, name: &str) -> Option<String> {
        ProcessEnv.var(name).filter(|v| !v.is_empty()).or_else(|| {
            (name == DEMO_WEBHOOK_SECRET_ENV).then(|| DEMO_WEBHOOK_SECRET_DEFAULT.to_string())
        })
    }
}

impl<F: Fn(&str) -> Option<String>> Env for F {
    fn var(&self, name: &str) -> Option<String> {
        self(name)
    }
}

impl Config {
    /// The embedded default, or the file at `path`, with secrets from the process env.
    pub fn load(path: Option<&Path>) -> Result<Config, ConfigError> {
        match path {
            None => Config::from_toml(DEFAULT_TOML, DEFAULT_ORIGIN, &DemoEnv),
            Some(p) => {
                let text = std::fs::read_to_string(p).map_err(|e| ConfigError {
                    file: p.display().to_string(),
                    key: String::new(),
                    message: format!("cannot read: {e}"),
                })?;
                Config::from_toml(&text, &p.display().to_string(), &ProcessEnv)
            }
        }
    }

    pub fn from_toml(text: &str, origin: &str, env: &dyn Env) -> Result<Config, ConfigError> {
        let err = |key: &str, message: String| ConfigError {
            file: origin.to_owned(),
            key: key.to_owned(),
            message,
        };
        let de = toml::Deserializer::new(text);
        let raw: RawConfig = serde_path_to_error::deserialize(de).map_err(|e| {
            let path = e.path().to_string();
            let inner = e.into_inner().to_string();
            let inner = inner.trim().replace('\n', " ");
            err(if path == "." { "" } else { &path }, inner)
        })?;

        let secret = |key: &str,
                      env_name: &Option<String>,
                      file: &Option<String>|
         -> Result<Option<Secret>, ConfigError> {
            match (env_name, file) {
                (Some(_), Some(_)) => Err(err(key, "give either *_env or *_file, not both".into())),
                (Some(name), None) => match env.var(name) {
                    Some(v) if !v.is_empty() => Ok(Some(Secret(
                        v,
                        Some(format!("environment variable {name}")),
                    ))),
                    _ => Ok(None),
                },
                (None, Some(path)) => std::fs::read_to_string(path)
                    .map(|v| {
                        Some(Secret(
                            v.trim_end_matches(['\n', '\r']).to_owned(),
                            Some(format!("file {path}")),
                        ))
                    })
                    .map_err(|e| err(key, format!("cannot read secret file {path}: {e}"))),
                (None, None) => Ok(None),
            }
        };

        let dur =
            |key: &str, v: &Option<String>, default: Duration| -> Result<Duration, ConfigError> {
                match v {
                    None => Ok(default),
                    Some(s) => parse_duration(s).map_err(|m| err(key, m)),
                }
            };

        let s = &raw.server;
        let server = ServerConfig {
            listen: s.listen.clone().unwrap_or_else(|| "127.0.0.1:8080".into()),
            max_body_bytes: s.max_body_bytes.unwrap_or(65_536),
            max_header_bytes: s.max_header_bytes.unwrap_or(16_384),
            header_read_timeout: dur(
                "server.header_read_timeout",
                &s.header_read_timeout,
                Duration::from_secs(10),
            )?,
            body_read_timeout: dur(
                "server.body_read_timeout",
                &s.body_read_timeout,
                Duration::from_secs(10),
            )?,
            shutdown_grace: dur(
                "server.shutdown_grace",
                &s.shutdown_grace,
                Duration::from_secs(25),
            )?,
            max_connections: s.max_connections.unwrap_or(4096),
        };
        if server.listen.parse::<std::net::SocketAddr>().is_err() {
            return Err(err(
                "server.listen",
                format!("{:?} is not an address like 127.0.0.1:8080", server.listen),
            ));
        }
        if !(64..=16 * 1024 * 1024).contains(&server.max_body_bytes) {
            return Err(err(
                "server.max_body_bytes",
                "must be between 64 and 16777216".into(),
            ));
        }
        if !(8192..=1024 * 1024).contains(&server.max_header_bytes) {
            return Err(err(
                "server.max_header_bytes",
                "must be between 8192 and 1048576".into(),
            ));
        }
        let storage = StorageConfig {
            path: PathBuf::from(raw.storage.path.clone().unwrap_or_else(|| "./data".into())),
            cache_capacity_mb: raw.storage.cache_capacity_mb.unwrap_or(64),
            job_slice_records: raw
                .storage
                .job_slice_records
                .unwrap_or(crate::service::sliced::SLICE),
        };
        if !(1..=1_000_000).contains(&storage.job_slice_records) {
            return Err(err(
                "storage.job_slice_records",
                "must be 1..=1000000".into(),
            ));
        }
        if storage.cache_capacity_mb == 0 {
            return Err(err(
                "storage.cache_capacity_mb",
                "must be at least 1".into(),
            ));
        }
        let admin = AdminConfig {
            token: secret(
                "admin.token_env",
                &raw.admin.token_env,
                &raw.admin.token_file,
            )?,
            provider_states: raw.admin.provider_states,
        };

        let mut tenants = Vec::new();
        let mut seen_tenants = HashSet::new();
        for (ti, t) in raw.tenants.into_iter().enumerate() {
            let tk = format!("tenants[{ti}]");
            if !valid_id(&t.id) {
                return Err(err(
                    &format!("{tk}.id"),
                    "must be 1-64 characters of A-Z a-z 0-9 - _ .".into(),
                ));
            }
            if !seen_tenants.insert(t.id.clone()) {
                return Err(err(
                    &format!("{tk}.id"),
                    format!("tenant {:?} is defined twice", t.id),
                ));
            }
            let auth = match &t.auth {
                None => {
                    return Err(err(
                        &format!("{tk}.auth"),
                        "is required: { mode = \"none\" | \"basic\" | \"header\", … }".into(),
                    ))
                }
                Some(a) => {
                    let ak = format!("{tk}.auth");
                    match a.mode.as_str() {
                        "none" => Auth::None,
                        "header" => {
                            let name = a.header.clone().ok_or_else(|| {
                                err(
                                    &format!("{ak}.header"),
                                    "is required for mode \"header\"".into(),
                                )
                            })?;
                            if hyper::header::HeaderName::from_bytes(name.as_bytes()).is_err() {
                                return Err(err(
                                    &format!("{ak}.header"),
                                    format!("{name:?} is not a valid header name"),
                                ));
                            }
                            let value = secret(&format!("{ak}.value_env"), &a.value_env, &a.value_file)?
                                .ok_or_else(|| err(&format!("{ak}.value_env"), "names no secret that is set (give value_env = \"VAR\" with VAR set, or value_file)".into()))?;
                            Auth::Header {
                                name: name.to_ascii_lowercase(),
                                value,
                            }
                        }
                        "basic" => {
                            let username = a.username.clone().ok_or_else(|| {
                                err(
                                    &format!("{ak}.username"),
                                    "is required for mode \"basic\"".into(),
                                )
                            })?;
                            if username.contains(':') {
                                return Err(err(
                                    &format!("{ak}.username"),
                                    "must not contain ':'".into(),
                                ));
                            }
                            let password = secret(&format!("{ak}.password_env"), &a.password_env, &a.password_file)?
                                .ok_or_else(|| err(&format!("{ak}.password_env"), "names no secret that is set (give password_env = \"VAR\" with VAR set, or password_file)".into()))?;
                            Auth::Basic { username, password }
                        }
                        other => {
                            return Err(err(
                                &format!("{ak}.mode"),
                                format!("unknown mode {other:?}; use none, basic or header"),
                            ))
                        }
                    }
                }
            };
            let hold_ttl = dur(
                &format!("{tk}.hold_ttl"),
                &t.hold_ttl,
                Duration::from_secs(7200),
            )?;
            if hold_ttl.is_zero() {
                return Err(err(
                    &format!("{tk}.hold_ttl"),
                    "must be longer than zero".into(),
                ));
            }
            let code_match = t.code_match.unwrap_or_default();
            let mut campaigns = Vec::new();
            let mut ids = HashSet::new();
            let mut codes = std::collections::HashMap::new();
            for (ci, spec) in t.campaigns.into_iter().enumerate() {
                let ck = format!("{tk}.campaigns[{ci}]");
                let c = Campaign::from_spec(spec)
                    .map_err(|e| err(&format!("{ck}.{}", e.key), e.message))?;
                if !ids.insert(c.id.clone()) {
                    return Err(err(
                        &format!("{ck}.id"),
                        format!("campaign {:?} is defined twice", c.id),
                    ));
                }
                for (i, code) in c.spec.codes.iter().enumerate() {
                    if let Some(other) = codes.insert(match_key(code_match, code), c.id.clone()) {
                        return Err(err(&format!("{ck}.codes[{i}]"), format!("code {code:?} also belongs to campaign {other:?} (under code_match = {code_match:?})")));
                    }
                }
                campaigns.push(c);
            }
            let rules_of = |key: &str,
                            r: &crate::voucher::RulesSpec|
             -> Result<RulesConfig, ConfigError> {
                if !r.http.starts_with("https://") && !r.http.starts_with("http://") {
                    return Err(err(
                        &format!("{key}.http"),
                        "must be an http:// or https:// URL".into(),
                    ));
                }
                if r.http.parse::<hyper::Uri>().is_err() {
                    return Err(err(
                        &format!("{key}.http"),
                        format!("{:?} is not a URL", r.http),
                    ));
                }
                let secret = secret(&format!("{key}.secret_env"), &r.secret_env, &r.secret_file)?
                    .ok_or_else(|| {
                    err(
                        &format!("{key}.secret_env"),
                        "names no secret that is set; vendor requests are always signed".into(),
                    )
                })?;
                Ok(RulesConfig {
                    url: r.http.clone(),
                    secret,
                    timeout: dur(
                        &format!("{key}.timeout"),
                        &r.timeout,
                        Duration::from_millis(800),
                    )?,
                })
            };
            let tenant_rules = t
                .rules
                .as_ref()
                .map(|r| rules_of(&format!("{tk}.rules"), r))
                .transpose()?;
            let mut campaign_rules = std::collections::HashMap::new();
            for (ci, c) in campaigns.iter().enumerate() {
                if let Some(r) = &c.spec.rules {
                    campaign_rules.insert(
                        c.id.clone(),
                        rules_of(&format!("{tk}.campaigns[{ci}].rules"), r)?,
                    );
                }
            }
            let mut programs: Vec<Program> = Vec::new();
            let mut srcs: Vec<SourceConfig> = Vec::new();
            for (pi, mut spec) in t.loyalty.into_iter().enumerate() {
                let pk = format!("{tk}.loyalty[{pi}]");
                srcs.extend(sources::parse(
                    origin,
                    &pk,
                    &spec.program_id.clone().into_text(),
                    std::mem::take(&mut spec.sources),
                    &srcs,
                    &secret,
                    &dur,
                )?);
                if let (Some(e), p) = (spec.expire_days, spec.pending_days) {
                    if p >= e {
                        return Err(err(
                            &format!("{pk}.pending_days"),
                            "must be less than expire_days".into(),
                        ));
                    }
                }
                let p = Program::from_spec(spec)
                    .map_err(|e| err(&format!("{pk}.{}", e.key), e.message))?;
                if programs.iter().any(|q| q.id == p.id) {
                    return Err(err(
                        &format!("{pk}.program_id"),
                        format!("program {} is defined twice", p.id),
                    ));
                }
                programs.push(p);
            }
            let webhooks = match t.webhooks {
                None => None,
                Some(w) => {
                    let wk = format!("{tk}.webhooks");
                    let mut routes = Vec::new();
                    for (ri, r) in w.routes.iter().enumerate() {
                        let rk = format!("{wk}.routes[{ri}]");
                        let name = r.name.clone().unwrap_or_else(|| format!("route{ri}"));
                        if !valid_id(&name) || routes.iter().any(|x: &RouteConfig| x.name == name) {
                            return Err(err(
                                &format!("{rk}.name"),
                                "must be a unique id of A-Z a-z 0-9 - _ .".into(),
                            ));
                        }
                        if r.events.is_empty() || r.events.len() > 200 {
                            return Err(err(
                                &format!("{rk}.events"),
                                "a glob such as \"inventory.*\" or \"*\"".into(),
                            ));
                        }
                        let sink = match (&r.sink.http, &r.sink.file) {
                            (Some(url), None) => {
                                if !url.starts_with("http://") && !url.starts_with("https://") {
                                    return Err(err(&format!("{rk}.sink.http"), "must be an http:// or https:// URL".into()));
                                }
                                if url.parse::<hyper::Uri>().is_err() {
                                    return Err(err(&format!("{rk}.sink.http"), format!("{url:?} is not a URL")));
                                }
                                let mut extra_roots = Vec::new();
                                if let Some(ca) = &r.sink.ca_file {
                                    use rustls::pki_types::pem::PemObject;
                                    let key = format!("{rk}.sink.ca_file");
                                    let certs = rustls::pki_types::CertificateDer::pem_file_iter(ca).map_err(|e| err(&key, format!("cannot read {ca}: {e}")))?;
                                    for c in certs {
                                        extra_roots.push(c.map_err(|e| err(&key, format!("{ca}: {e}")))?.to_vec());
                                    }
                                    if extra_roots.is_empty() {
                                        return Err(err(&key, format!("{ca} holds no PEM certificate")));
                                    }
                                }
                                let secret = secret(&format!("{rk}.sink.secret_env"), &r.sink.secret_env, &r.sink.secret_file)?
                                    .ok_or_else(|| err(&format!("{rk}.sink.secret_env"), "names no secret that is set; HTTP sinks are always signed".into()))?;
                                Sink::Http { url: url.clone(), secret, timeout: dur(&format!("{rk}.sink.timeout"), &r.sink.timeout, Duration::from_secs(10))?, extra_roots }
                            }
                            (None, Some(path)) => Sink::File { path: PathBuf::from(path) },
                            _ => return Err(err(&format!("{rk}.sink"), "give exactly one of { http = \"…\", secret_env = \"…\" } or { file = \"…\" }".into())),
                        };
                        let max_attempts = r.max_attempts.unwrap_or(10);
                        if !(1..=100).contains(&max_attempts) {
                            return Err(err(
                                &format!("{rk}.max_attempts"),
                                "must be 1..=100".into(),
                            ));
                        }
                        routes.push(RouteConfig {
                            name,
                            events: r.events.clone(),
                            sink,
                            max_attempts,
                            backoff: dur(
                                &format!("{rk}.backoff"),
                                &r.backoff,
                                Duration::from_secs(1),
                            )?,
                            backoff_max: dur(
                                &format!("{rk}.backoff_max"),
                                &r.backoff_max,
                                Duration::from_secs(3600),
                            )?,
                        });
                    }
                    let scheme = crate::webhook::Scheme::parse(
                        &w.verify.scheme,
                        w.verify.header.as_deref(),
                        true,
                    )
                    .map_err(|m| err(&format!("{wk}.verify.scheme"), m))?;
                    let mut secrets = Vec::new();
                    for (i, name) in w.verify.secrets_env.iter().enumerate() {
                        if let Some(v) = env.var(name).filter(|v| !v.is_empty()) {
                            secrets.push(
                                crate::webhook::secret_bytes(&scheme, &v).map_err(|m| {
                                    err(&format!("{wk}.verify.secrets_env[{i}]"), m)
                                })?,
                            );
                        }
                    }
                    for (i, path) in w.verify.secrets_file.iter().enumerate() {
                        let v = std::fs::read_to_string(path).map_err(|e| {
                            err(
                                &format!("{wk}.verify.secrets_file[{i}]"),
                                format!("cannot read {path}: {e}"),
                            )
                        })?;
                        secrets.push(
                            crate::webhook::secret_bytes(&scheme, v.trim_end_matches(['\n', '\r']))
                                .map_err(|m| err(&format!("{wk}.verify.secrets_file[{i}]"), m))?,
                        );
                    }
                    if scheme == crate::webhook::Scheme::None {
                        tracing::warn!(tenant = %t.id, "webhook signatures are NOT verified (scheme = \"none\")");
                    } else if secrets.is_empty() {
                        return Err(err(
                            &format!("{wk}.verify.secrets_env"),
                            "names no secret that is set".into(),
                        ));
                    }
                    let retention_ms = dur(
                        &format!("{wk}.retention"),
                        &w.retention,
                        Duration::from_secs(7 * 86_400),
                    )?
                    .as_millis() as i64;
                    let max_age_ms = match &w.max_age {
                        None => None,
                        Some(_) => {
                            let ms = dur(&format!("{wk}.max_age"), &w.max_age, Duration::ZERO)?
                                .as_millis() as i64;
                            if ms <= 0 || ms > retention_ms {
                                return Err(err(
                                    &format!("{wk}.max_age"),
                                    "must be more than 0 and at most retention, or a replay older than the dedupe window would be accepted".into(),
                                ));
                            }
                            Some(ms)
                        }
                    };
                    Some(WebhookConfig {
                        scheme,
                        secrets,
                        routes,
                        tolerance_ms: dur(
                            &format!("{wk}.tolerance"),
                            &w.tolerance,
                            Duration::from_secs(300),
                        )?
                        .as_millis() as i64,
                        retention_ms,
                        max_age_ms,
                    })
                }
            };
            tenants.push(TenantConfig {
                rules: tenant_rules,
                campaign_rules,
                webhooks,
                id: t.id,
                auth,
                hold_ttl_ms: hold_ttl.as_millis() as i64,
                code_match,
                campaigns,
                programs,
                sources: srcs,
            });
        }
        Ok(Config {
            origin: origin.to_owned(),
            server,
            storage,
            admin,
            tenants,
        })
    }

    pub fn tenant(&self, id: &str) -> Option<&TenantConfig> {
        self.tenants.iter().find(|t| t.id == id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn no_env(_: &str) -> Option<String> {
        None
    }

    #[test]
    fn embedded_default_is_valid() {
        let demo = |k: &str| (k == DEMO_WEBHOOK_SECRET_ENV).then(|| "demo-secret".to_string());
        let c = Config::from_toml(DEFAULT_TOML, DEFAULT_ORIGIN, &demo).unwrap();
        assert_eq!(c.tenants[0].id, "demo");
        let w = c.tenants[0].webhooks.as_ref().unwrap();
        assert_eq!(w.secrets, vec![b"demo-secret".to_vec()]);
        assert_eq!(c.server.listen, "127.0.0.1:8080");
        assert!(c.admin.token.is_none());
    }

    #[test]
    fn errors_name_file_and_key() {
        let e = Config::from_toml("[server]\nlisten = 5\n", "x.toml", &no_env).unwrap_err();
        assert_eq!(
            (e.file.as_str(), e.key.as_str()),
            ("x.toml", "server.listen")
        );
        let e = Config::from_toml("[[tenants]]\nid='a'\nauth={mode='none'}\n[[tenants.campaigns]]\nid='c'\ndiscount={percent=0}\n", "x.toml", &no_env).unwrap_err();
        assert_eq!(e.key, "tenants[0].campaigns[0].discount.percent");
        let e = Config::from_toml(
            "[[tenants]]\nid='a'\nauth={mode='header', header='X-K', value_env='NOPE'}\n",
            "x.toml",
            &no_env,
        )
        .unwrap_err();
        assert_eq!(e.key, "tenants[0].auth.value_env");
        let e = Config::from_toml(
            "[server]\nlisten='127.0.0.1:1'\nbogus=1\n",
            "x.toml",
            &no_env,
        )
        .unwrap_err();
        assert!(e.to_string().contains("bogus"), "{e}");
    }

    #[test]
    fn secrets_never_print() {
        let env = |n: &str| (n == "K").then(|| "hunter2".to_string());
        let c = Config::from_toml(
            "[[tenants]]\nid='a'\nauth={mode='header', header='X-K', value_env='K'}\n",
            "x",
            &env,
        )
        .unwrap();
        assert!(!format!("{c:?}").contains("hunter2"));
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("800ms").unwrap(), Duration::from_millis(800));
        assert_eq!(parse_duration("2h").unwrap(), Duration::from_secs(7200));
        assert_eq!(
            parse_duration("7d").unwrap(),
            Duration::from_secs(7 * 86400)
        );
        assert!(parse_duration("2 weeks").is_err());
        assert!(parse_duration("h").is_err());
    }
}
