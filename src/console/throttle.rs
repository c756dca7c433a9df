//! The limit on failed sign-ins: at most [`MAX_FAILURES`] wrong tokens per client address
//! in a [`WINDOW_MS`] window (by the app's clock); past it, every sign-in from that
//! address — right token or not — is a 429 until the window ends, so the admin token
//! cannot be guessed at network speed. In memory, bounded to [`MAX_ADDRESSES`] addresses
//! (the oldest windows go first). The address is the TCP peer's: behind a proxy, every
//! client shares the proxy's.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;

use crate::clock::Millis;

/// Wrong tokens allowed per address and window.
pub const MAX_FAILURES: u32 = 5;
/// The window, in ms.
pub const WINDOW_MS: Millis = 60_000;
/// Addresses tracked at once.
const MAX_ADDRESSES: usize = 10_000;

/// Failed sign-ins by address: (window start, failures in it).
#[derive(Default)]
pub struct SignIns {
    by_client: Mutex<HashMap<Option<IpAddr>, (Millis, u32)>>,
}

impl SignIns {
    /// Seconds until `client` may try again, if it is over the limit now.
    pub fn blocked(&self, client: Option<IpAddr>, now: Millis) -> Option<i64> {
        let map = self.by_client.lock().ok()?;
        let (start, failures) = *map.get(&client)?;
        let ends = start.saturating_add(WINDOW_MS);
        (failures >= MAX_FAILURES && now < ends).then(|| (ends - now + 999) / 1000)
    }

    /// Count a wrong token from `client`.
    pub fn failed(&self, client: Option<IpAddr>, now: Millis) {
        let Ok(mut map) = self.by_client.lock() else {
            return;
        };
        map.retain(|_, (start, _)| now < start.saturating_add(WINDOW_MS));
        if map.len() >= MAX_ADDRESSES && !map.contains_key(&client) {
            if let Some(oldest) = map.iter().min_by_key(|(_, (s, _))| *s).map(|(k, _)| *k) {
                map.remove(&oldest);
            }
        }
        let e = map.entry(client).or_insert((now, 0));
        e.1 = e.1.saturating_add(1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn five_failures_block_the_address_for_the_rest_of_the_window() {
        let t = SignIns::default();
        let a = Some(IpAddr::from([10, 0, 0, 1]));
        let b = Some(IpAddr::from([10, 0, 0, 2]));
        for i in 0..MAX_FAILURES {
            assert_eq!(t.blocked(a, 1_000), None, "failure {i}");
            t.failed(a, 1_000 + i64::from(i));
        }
        assert_eq!(t.blocked(a, 1_500), Some(60));
        assert_eq!(t.blocked(a, 60_001), Some(1));
        assert_eq!(t.blocked(b, 1_500), None);
        assert_eq!(t.blocked(a, 61_000), None);
        // A new window starts from the next failure.
        t.failed(a, 61_000);
        assert_eq!(t.blocked(a, 61_001), None);
    }
}
