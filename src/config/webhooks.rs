//! `[tenants.webhooks]`: the receiver (signature scheme and secrets, tolerance, dedupe
//! retention, `max_age`) and its onward routes, each with an HTTP or a file sink.

use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use super::loader::{ConfigError, Loader};
use super::secret::Secret;
use crate::webhook::{secret_bytes, Scheme};
use crate::wire::valid_id;

#[derive(Clone)]
pub struct WebhookConfig {
    pub scheme: Scheme,
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

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawWebhooks {
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

/// The webhook section at `wk` of tenant `tenant`.
pub(super) fn webhooks(
    cx: &Loader<'_>,
    wk: &str,
    tenant: &str,
    w: RawWebhooks,
) -> Result<WebhookConfig, ConfigError> {
    let mut routes = Vec::new();
    for (ri, r) in w.routes.iter().enumerate() {
        let next = route(cx, &format!("{wk}.routes[{ri}]"), ri, r, &routes)?;
        routes.push(next);
    }
    let scheme = Scheme::parse(&w.verify.scheme, w.verify.header.as_deref(), true)
        .map_err(|m| cx.err(&format!("{wk}.verify.scheme"), m))?;
    let secrets = verify_secrets(cx, wk, &scheme, &w.verify)?;
    if scheme == Scheme::None {
        tracing::warn!(tenant = %tenant, "webhook signatures are NOT verified (scheme = \"none\")");
    } else if secrets.is_empty() {
        return Err(cx.err(
            &format!("{wk}.verify.secrets_env"),
            "names no secret that is set",
        ));
    }
    let retention_ms = cx
        .dur(
            &format!("{wk}.retention"),
            &w.retention,
            Duration::from_secs(7 * 86_400),
        )?
        .as_millis() as i64;
    let max_age_ms = max_age(cx, wk, &w.max_age, retention_ms)?;
    Ok(WebhookConfig {
        scheme,
        secrets,
        routes,
        tolerance_ms: cx
            .dur(
                &format!("{wk}.tolerance"),
                &w.tolerance,
                Duration::from_secs(300),
            )?
            .as_millis() as i64,
        retention_ms,
        max_age_ms,
    })
}

/// The receiver's secrets as key bytes: those of `secrets_env` that are set, then those
/// of `secrets_file`.
fn verify_secrets(
    cx: &Loader<'_>,
    wk: &str,
    scheme: &Scheme,
    v: &RawVerify,
) -> Result<Vec<Vec<u8>>, ConfigError> {
    let key_bytes =
        |key: String, text: &str| secret_bytes(scheme, text).map_err(|m| cx.err(&key, m));
    let mut secrets = Vec::new();
    for (i, name) in v.secrets_env.iter().enumerate() {
        if let Some(text) = cx.env.var(name).filter(|v| !v.is_empty()) {
            secrets.push(key_bytes(format!("{wk}.verify.secrets_env[{i}]"), &text)?);
        }
    }
    for (i, path) in v.secrets_file.iter().enumerate() {
        let key = format!("{wk}.verify.secrets_file[{i}]");
        let text = std::fs::read_to_string(path)
            .map_err(|e| cx.err(&key, format!("cannot read {path}: {e}")))?;
        secrets.push(key_bytes(key, text.trim_end_matches(['\n', '\r']))?);
    }
    Ok(secrets)
}

/// `max_age`, when given: more than zero and at most the dedupe retention.
fn max_age(
    cx: &Loader<'_>,
    wk: &str,
    v: &Option<String>,
    retention_ms: i64,
) -> Result<Option<i64>, ConfigError> {
    if v.is_none() {
        return Ok(None);
    }
    let ms = cx
        .dur(&format!("{wk}.max_age"), v, Duration::ZERO)?
        .as_millis() as i64;
    if ms <= 0 || ms > retention_ms {
        return Err(cx.err(
            &format!("{wk}.max_age"),
            "must be more than 0 and at most retention, or a replay older than the dedupe window would be accepted",
        ));
    }
    Ok(Some(ms))
}

/// Route `ri` at `rk`; its name unique among the `earlier` ones.
fn route(
    cx: &Loader<'_>,
    rk: &str,
    ri: usize,
    r: &RawRoute,
    earlier: &[RouteConfig],
) -> Result<RouteConfig, ConfigError> {
    let name = r.name.clone().unwrap_or_else(|| format!("route{ri}"));
    if !valid_id(&name) || earlier.iter().any(|x| x.name == name) {
        return Err(cx.err(
            &format!("{rk}.name"),
            "must be a unique id of A-Z a-z 0-9 - _ .",
        ));
    }
    if r.events.is_empty() || r.events.len() > 200 {
        return Err(cx.err(
            &format!("{rk}.events"),
            "a glob such as \"inventory.*\" or \"*\"",
        ));
    }
    let sink = sink(cx, rk, &r.sink)?;
    let max_attempts = r.max_attempts.unwrap_or(10);
    if !(1..=100).contains(&max_attempts) {
        return Err(cx.err(&format!("{rk}.max_attempts"), "must be 1..=100"));
    }
    Ok(RouteConfig {
        name,
        events: r.events.clone(),
        sink,
        max_attempts,
        backoff: cx.dur(&format!("{rk}.backoff"), &r.backoff, Duration::from_secs(1))?,
        backoff_max: cx.dur(
            &format!("{rk}.backoff_max"),
            &r.backoff_max,
            Duration::from_secs(3600),
        )?,
    })
}

fn sink(cx: &Loader<'_>, rk: &str, s: &RawSink) -> Result<Sink, ConfigError> {
    match (&s.http, &s.file) {
        (Some(url), None) => {
            cx.http_url(&format!("{rk}.sink.http"), url)?;
            let extra_roots = match &s.ca_file {
                Some(ca) => ca_roots(cx, &format!("{rk}.sink.ca_file"), ca)?,
                None => Vec::new(),
            };
            let secret = cx.required_secret(
                &format!("{rk}.sink.secret_env"),
                &s.secret_env,
                &s.secret_file,
                "names no secret that is set; HTTP sinks are always signed",
            )?;
            Ok(Sink::Http {
                url: url.clone(),
                secret,
                timeout: cx.dur(
                    &format!("{rk}.sink.timeout"),
                    &s.timeout,
                    Duration::from_secs(10),
                )?,
                extra_roots,
            })
        }
        (None, Some(path)) => Ok(Sink::File {
            path: PathBuf::from(path),
        }),
        _ => Err(cx.err(
            &format!("{rk}.sink"),
            "give exactly one of { http = \"…\", secret_env = \"…\" } or { file = \"…\" }",
        )),
    }
}

/// The PEM certificates of `ca_file` (at least one), as DER.
fn ca_roots(cx: &Loader<'_>, key: &str, ca: &str) -> Result<Vec<Vec<u8>>, ConfigError> {
    use rustls::pki_types::pem::PemObject;
    let certs = rustls::pki_types::CertificateDer::pem_file_iter(ca)
        .map_err(|e| cx.err(key, format!("cannot read {ca}: {e}")))?;
    let mut roots = Vec::new();
    for c in certs {
        roots.push(c.map_err(|e| cx.err(key, format!("{ca}: {e}")))?.to_vec());
    }
    if roots.is_empty() {
        return Err(cx.err(key, format!("{ca} holds no PEM certificate")));
    }
    Ok(roots)
}
