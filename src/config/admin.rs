//! `[admin]`: the admin API's token, and whether provider states are served.

use serde::Deserialize;

use super::loader::{ConfigError, Loader};
use super::secret::Secret;

#[derive(Debug, Clone)]
pub struct AdminConfig {
    /// `None`: the admin API answers 404.
    pub token: Option<Secret>,
    /// Enables `POST /admin/v1/tenants/{t}/provider-states` for `replay --state-url`.
    pub provider_states: bool,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawAdmin {
    token_env: Option<String>,
    token_file: Option<String>,
    #[serde(default)]
    provider_states: bool,
}

pub(super) fn admin(cx: &Loader<'_>, a: &RawAdmin) -> Result<AdminConfig, ConfigError> {
    Ok(AdminConfig {
        token: cx.secret("admin.token_env", &a.token_env, &a.token_file)?,
        provider_states: a.provider_states,
    })
}
