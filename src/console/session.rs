//! Console sessions: ids and CSRF tokens from the OS's CSPRNG, kept in memory with an
//! expiry (a restart signs everyone out), found by the SHA-256 digest of the id and then
//! compared in constant time.

use std::collections::HashMap;
use std::sync::Mutex;

use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::clock::Millis;

/// How long a session lasts after sign-in: one shift.
pub const SESSION_MS: Millis = 8 * 60 * 60 * 1000;
/// The most sessions kept at once; the oldest goes first beyond it.
const MAX_SESSIONS: usize = 10_000;

pub use crate::codegen::os_token as random_token;

fn digest(s: &str) -> [u8; 32] {
    Sha256::digest(s.as_bytes()).into()
}

/// Whether `presented` equals `expected`, in time independent of where they differ.
pub fn same(presented: &str, expected: &str) -> bool {
    digest(presented).ct_eq(&digest(expected)).into()
}

#[derive(Clone)]
struct Session {
    id: String,
    csrf: String,
    expires: Millis,
}

/// A signed-in session, as a page needs it.
pub struct Active {
    pub csrf: String,
}

/// The sessions of this process.
#[derive(Default)]
pub struct Sessions {
    by_digest: Mutex<HashMap<[u8; 32], Session>>,
}

impl Sessions {
    /// A new session: its id (for the cookie) and its CSRF token.
    pub fn create(&self, now: Millis) -> Option<(String, Active)> {
        let (id, csrf) = (random_token()?, random_token()?);
        let expires = now.checked_add(SESSION_MS)?;
        let mut m = self.by_digest.lock().unwrap_or_else(|p| p.into_inner());
        m.retain(|_, s| s.expires > now);
        if m.len() >= MAX_SESSIONS {
            if let Some(k) = m.iter().min_by_key(|(_, s)| s.expires).map(|(k, _)| *k) {
                m.remove(&k);
            }
        }
        let s = Session {
            id: id.clone(),
            csrf: csrf.clone(),
            expires,
        };
        m.insert(digest(&id), s);
        Some((id, Active { csrf }))
    }

    /// The live session whose id is `id`.
    pub fn find(&self, id: &str, now: Millis) -> Option<Active> {
        let m = self.by_digest.lock().unwrap_or_else(|p| p.into_inner());
        let s = m.get(&digest(id))?;
        let ok: bool = s.id.as_bytes().ct_eq(id.as_bytes()).into();
        (ok && s.expires > now).then(|| Active {
            csrf: s.csrf.clone(),
        })
    }

    /// Forget the session `id` (logout).
    pub fn remove(&self, id: &str) {
        let mut m = self.by_digest.lock().unwrap_or_else(|p| p.into_inner());
        m.remove(&digest(id));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_session_is_found_by_its_id_until_it_expires_and_not_after_logout() {
        let s = Sessions::default();
        let (id, a) = s.create(1_000).unwrap();
        assert_eq!(id.len(), 64);
        assert_ne!(id, a.csrf);
        assert_eq!(s.find(&id, 1_000).unwrap().csrf, a.csrf);
        assert!(s.find(&id, 1_000 + SESSION_MS).is_none());
        assert!(s.find("nope", 1_000).is_none());
        s.remove(&id);
        assert!(s.find(&id, 1_000).is_none());
    }
}
