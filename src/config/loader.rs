//! What every section's loader shares: [`ConfigError`] (file, key, message), and
//! [`Loader`], which words errors for the file being read, resolves `*_env` / `*_file`
//! secrets and parses durations.

use std::time::Duration;

use super::secret::{Env, Secret};

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

/// The file being read (`origin`) and where its secrets come from.
pub(super) struct Loader<'a> {
    pub origin: &'a str,
    pub env: &'a dyn Env,
}

impl Loader<'_> {
    /// An error at `key` of this file.
    pub fn err(&self, key: &str, message: impl Into<String>) -> ConfigError {
        ConfigError {
            file: self.origin.to_owned(),
            key: key.to_owned(),
            message: message.into(),
        }
    }

    /// The secret named by `*_env` (unset or empty: `None`) or read from `*_file` (its
    /// trailing newline removed); giving both is an error at `key`.
    pub fn secret(
        &self,
        key: &str,
        env_name: &Option<String>,
        file: &Option<String>,
    ) -> Result<Option<Secret>, ConfigError> {
        match (env_name, file) {
            (Some(_), Some(_)) => Err(self.err(key, "give either *_env or *_file, not both")),
            (Some(name), None) => match self.env.var(name) {
                Some(v) if !v.is_empty() => Ok(Some(Secret::from(
                    v,
                    format!("environment variable {name}"),
                ))),
                _ => Ok(None),
            },
            (None, Some(path)) => std::fs::read_to_string(path)
                .map(|v| {
                    Some(Secret::from(
                        v.trim_end_matches(['\n', '\r']).to_owned(),
                        format!("file {path}"),
                    ))
                })
                .map_err(|e| self.err(key, format!("cannot read secret file {path}: {e}"))),
            (None, None) => Ok(None),
        }
    }

    /// Like [`Loader::secret`], for a secret that must be there: `missing` is the error.
    pub fn required_secret(
        &self,
        key: &str,
        env_name: &Option<String>,
        file: &Option<String>,
        missing: &str,
    ) -> Result<Secret, ConfigError> {
        self.secret(key, env_name, file)?
            .ok_or_else(|| self.err(key, missing))
    }

    /// The duration at `key`, or `default` when it is not given.
    pub fn dur(
        &self,
        key: &str,
        v: &Option<String>,
        default: Duration,
    ) -> Result<Duration, ConfigError> {
        match v {
            None => Ok(default),
            Some(s) => parse_duration(s).map_err(|m| self.err(key, m)),
        }
    }

    /// An `http://` or `https://` URL at `key` (vendor rules, webhook sinks).
    pub fn http_url(&self, key: &str, url: &str) -> Result<(), ConfigError> {
        if !url.starts_with("https://") && !url.starts_with("http://") {
            return Err(self.err(key, "must be an http:// or https:// URL"));
        }
        if url.parse::<hyper::Uri>().is_err() {
            return Err(self.err(key, format!("{url:?} is not a URL")));
        }
        Ok(())
    }
}
