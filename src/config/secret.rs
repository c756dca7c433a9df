//! Secrets in the configuration: [`Secret`] (a value that never prints, and where it came
//! from), and [`Env`], where `*_env` keys are looked up (the process, the demo's defaults,
//! or a test's closure).

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
    /// A value read from `origin` (e.g. `environment variable ACME_KEY`, `file /run/k`).
    pub(super) fn from(s: String, origin: String) -> Secret {
        Secret(s, Some(origin))
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

/// The env var holding the admin token of the embedded demo (and of the example configs).
pub const DEMO_ADMIN_TOKEN_ENV: &str = "KP_ADMIN_TOKEN";

/// The demo's admin token when `KP_ADMIN_TOKEN` is unset: made once per run from the OS's
/// CSPRNG (so the console is on, and `serve` prints it), `None` if the OS source fails.
pub fn demo_admin_token() -> Option<String> {
    static TOKEN: std::sync::OnceLock<Option<String>> = std::sync::OnceLock::new();
    TOKEN.get_or_init(crate::codegen::os_token).clone()
}

/// The process env, with the demo's webhook secret and admin token defaulted (embedded
/// config only).
pub struct DemoEnv;

impl Env for DemoEnv {
    fn var(&self, name: &str) -> Option<String> {
        ProcessEnv
            .var(name)
            .filter(|v| !v.is_empty())
            .or_else(|| match name {
                DEMO_WEBHOOK_SECRET_ENV => Some(DEMO_WEBHOOK_SECRET_DEFAULT.to_string()),
                DEMO_ADMIN_TOKEN_ENV => demo_admin_token(),
                _ => None,
            })
    }
}

impl<F: Fn(&str) -> Option<String>> Env for F {
    fn var(&self, name: &str) -> Option<String> {
        self(name)
    }
}
