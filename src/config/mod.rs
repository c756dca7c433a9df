//! Configuration: a TOML file (or the embedded default) plus secrets from environment
//! variables or files → a validated [`Config`]. Every error names the file and the key.
//! Secrets are wrapped in [`Secret`], whose `Debug` never shows the value.
//!
//! One file per section: each holds the section as written (`Raw…`, serde), the validated
//! type, and one function from the first to the second, given a [`Loader`] (errors naming
//! the key, secrets, durations). [`Config::from_toml`] only calls them in order; a new
//! section is a new file and one line there.

mod admin;
mod loader;
mod rules;
mod secret;
mod server;
mod sources;
mod storage;
mod tenant;
mod webhooks;

use std::path::Path;

use serde::Deserialize;

pub use admin::AdminConfig;
use loader::Loader;
pub use loader::{parse_duration, ConfigError};
pub use rules::RulesConfig;
pub use secret::{
    demo_admin_token, DemoEnv, Env, ProcessEnv, Secret, DEMO_ADMIN_TOKEN_ENV,
    DEMO_WEBHOOK_SECRET_DEFAULT, DEMO_WEBHOOK_SECRET_ENV,
};
pub use server::ServerConfig;
pub use sources::{SourceConfig, SourceKind};
pub use storage::{Engine, PgConfig, StorageConfig, DEFAULT_CACHE_MB};
pub use tenant::{Auth, TenantConfig};
pub use webhooks::{RouteConfig, Sink, WebhookConfig};

pub const DEFAULT_TOML: &str = include_str!("default.toml");
pub const DEFAULT_ORIGIN: &str = "<embedded default config>";

#[derive(Debug, Clone)]
pub struct Config {
    pub origin: String,
    pub server: ServerConfig,
    pub storage: StorageConfig,
    pub admin: AdminConfig,
    pub tenants: Vec<TenantConfig>,
}

/// The file as written: one key per section, each section's own type.
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    #[serde(default)]
    server: server::RawServer,
    #[serde(default)]
    storage: storage::RawStorage,
    #[serde(default)]
    admin: admin::RawAdmin,
    #[serde(default)]
    tenants: Vec<tenant::RawTenant>,
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
        let cx = Loader { origin, env };
        let de = toml::Deserializer::new(text);
        let raw: RawConfig = serde_path_to_error::deserialize(de).map_err(|e| {
            let path = e.path().to_string();
            let inner = e.into_inner().to_string();
            let inner = inner.trim().replace('\n', " ");
            cx.err(if path == "." { "" } else { &path }, inner)
        })?;
        Ok(Config {
            origin: origin.to_owned(),
            server: server::server(&cx, &raw.server)?,
            storage: storage::storage(&cx, &raw.storage)?,
            admin: admin::admin(&cx, &raw.admin)?,
            tenants: tenant::tenants(&cx, raw.tenants)?,
        })
    }

    pub fn tenant(&self, id: &str) -> Option<&TenantConfig> {
        self.tenants.iter().find(|t| t.id == id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

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
