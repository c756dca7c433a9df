//! `rules = { http, secret_env | secret_file, timeout }` of a tenant or a campaign: where
//! a vendor's own decision service is, and the secret its requests are signed with.

use std::time::Duration;

use super::loader::{ConfigError, Loader};
use super::secret::Secret;

/// A vendor rules service (see `crate::rules`).
#[derive(Clone, Debug)]
pub struct RulesConfig {
    pub url: String,
    pub secret: Secret,
    pub timeout: Duration,
}

/// The rules spec at `key` (`tenants[0].rules`, `tenants[0].campaigns[2].rules`).
pub(super) fn rules(
    cx: &Loader<'_>,
    key: &str,
    r: &crate::voucher::RulesSpec,
) -> Result<RulesConfig, ConfigError> {
    cx.http_url(&format!("{key}.http"), &r.http)?;
    let secret = cx.required_secret(
        &format!("{key}.secret_env"),
        &r.secret_env,
        &r.secret_file,
        "names no secret that is set; vendor requests are always signed",
    )?;
    Ok(RulesConfig {
        url: r.http.clone(),
        secret,
        timeout: cx.dur(
            &format!("{key}.timeout"),
            &r.timeout,
            Duration::from_millis(800),
        )?,
    })
}
