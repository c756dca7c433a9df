//! Who may call: per-tenant auth exactly as Karma offers it (none, HTTP Basic, a custom
//! header) and the admin bearer token. Secrets are compared in constant time, as SHA-256
//! digests so that lengths do not leak either.

use base64::Engine;
use hyper::HeaderMap;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::config::Auth;

/// A tenant's auth, with the expected secret kept only as a digest.
pub enum TenantAuth {
    None,
    Header { name: String, digest: [u8; 32] },
    Basic { digest: [u8; 32] },
}

fn digest(b: &[u8]) -> [u8; 32] {
    Sha256::digest(b).into()
}

/// Constant-time equality of a presented secret with an expected digest.
pub fn matches(presented: &[u8], expected: &[u8; 32]) -> bool {
    digest(presented).ct_eq(expected).into()
}

impl TenantAuth {
    pub fn from_config(a: &Auth) -> TenantAuth {
        match a {
            Auth::None => TenantAuth::None,
            Auth::Header { name, value } => TenantAuth::Header {
                name: name.clone(),
                digest: digest(value.expose().as_bytes()),
            },
            Auth::Basic { username, password } => TenantAuth::Basic {
                digest: digest(format!("{username}:{}", password.expose()).as_bytes()),
            },
        }
    }

    /// `Err(message)` says what is missing or wrong, never what was expected.
    pub fn check(&self, headers: &HeaderMap) -> Result<(), &'static str> {
        match self {
            TenantAuth::None => Ok(()),
            TenantAuth::Header { name, digest } => match headers.get(name.as_str()) {
                None => Err("missing the credentials header"),
                Some(v) if matches(v.as_bytes(), digest) => Ok(()),
                Some(_) => Err("wrong credentials"),
            },
            TenantAuth::Basic { digest } => {
                let Some(v) = headers.get(hyper::header::AUTHORIZATION) else {
                    return Err("missing Authorization: Basic credentials");
                };
                let v = v.as_bytes();
                if v.len() < 6 || !v[..6].eq_ignore_ascii_case(b"basic ") {
                    return Err("Authorization must use the Basic scheme");
                }
                let decoded = base64::engine::general_purpose::STANDARD
                    .decode(v[6..].trim_ascii())
                    .map_err(|_| "Authorization: Basic value is not base64")?;
                if matches(&decoded, digest) {
                    Ok(())
                } else {
                    Err("wrong credentials")
                }
            }
        }
    }

    pub fn is_basic(&self) -> bool {
        matches!(self, TenantAuth::Basic { .. })
    }
}

/// The admin API's `Authorization: Bearer <token>`, or the token alone in `X-Admin-Token`
/// (so that a caller such as the Pact verifier can send a tenant's credentials in
/// `Authorization` to every request and still reach the provider-states URL).
pub fn check_bearer(headers: &HeaderMap, expected: &[u8; 32]) -> bool {
    let bearer = headers
        .get(hyper::header::AUTHORIZATION)
        .map(|v| v.as_bytes())
        .filter(|v| v.len() > 7 && v[..7].eq_ignore_ascii_case(b"bearer "))
        .is_some_and(|v| matches(v[7..].trim_ascii(), expected));
    bearer
        || headers
            .get("x-admin-token")
            .is_some_and(|v| matches(v.as_bytes().trim_ascii(), expected))
}

pub fn admin_digest(token: &str) -> [u8; 32] {
    digest(token.as_bytes())
}
