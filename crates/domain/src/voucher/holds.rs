//! Holds: the reservation a check creates. [`HoldState`] is its life cycle;
//! [`LiveHolds`] counts the holds that still take capacity, per campaign, code and guest,
//! and lets expired ones go without any call (pruned by time on the next decision).

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use crate::clock::Millis;

/// `held` → `committed` → `reactivated` (use returned), or `held` → `released`.
/// A `held` hold past its expiry no longer takes capacity; it is shown as `expired`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HoldState {
    Held,
    Committed,
    Released,
    Reactivated,
}

/// What the capacity index needs to know of a live hold.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LiveHold {
    pub tenant: String,
    pub campaign: String,
    pub code: String,
    pub guest: Option<String>,
    pub expires_at: Millis,
    pub amount_cents: i64,
}

type CampaignKey = (String, String);

/// A code's key in the per-code counts: a 128-bit hash of (tenant, campaign, code).
/// Integer keys keep that B-tree compact and its comparisons cheap: with hundreds of
/// thousands of live holds on distinct bulk codes, string-tuple keys cost the writer a
/// pointer chase per comparison (measured with `perf`, BENCHMARKS.md). Two codes with the
/// same hash would share a count, which can only refuse a check, never allow one more; at
/// 128 bits that takes ~2^64 live codes to expect once.
fn code_key(tenant: &str, campaign: &str, code: &str) -> u128 {
    use std::hash::{DefaultHasher, Hash, Hasher};
    let half = |seed: u8| {
        let mut h = DefaultHasher::new();
        (seed, tenant, campaign, code).hash(&mut h);
        h.finish()
    };
    (u128::from(half(1)) << 64) | u128::from(half(2))
}

/// Ordered maps, not hash maps: a hash map doubles and rehashes everything at once, which
/// with a few hundred thousand live holds stalled the writer (and every answer behind it)
/// for 100–250 ms (measured under the bench's check load). A B-tree grows a node at a time.
#[derive(Debug, Default)]
pub struct LiveHolds {
    by_ref: BTreeMap<String, LiveHold>,
    queue: BTreeSet<(Millis, String)>,
    campaign: BTreeMap<CampaignKey, u64>,
    code: BTreeMap<u128, u64>,
    guest: BTreeMap<(CampaignKey, String), u64>,
    amount: BTreeMap<CampaignKey, i64>,
}

fn bump<K: Ord>(m: &mut BTreeMap<K, u64>, k: K, up: bool) {
    if up {
        let v = m.entry(k).or_insert(0);
        *v = v.saturating_add(1);
    } else if let Some(v) = m.get_mut(&k) {
        *v = v.saturating_sub(1);
        if *v == 0 {
            m.remove(&k);
        }
    }
}

impl LiveHolds {
    pub fn len(&self) -> usize {
        self.by_ref.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_ref.is_empty()
    }

    pub fn get(&self, provider_ref: &str) -> Option<&LiveHold> {
        self.by_ref.get(provider_ref)
    }

    pub fn iter(&self) -> impl Iterator<Item = (&String, &LiveHold)> {
        self.by_ref.iter()
    }

    pub fn insert(&mut self, provider_ref: String, h: LiveHold) {
        if self.by_ref.contains_key(&provider_ref) {
            return;
        }
        let ck = (h.tenant.clone(), h.campaign.clone());
        bump(&mut self.campaign, ck.clone(), true);
        bump(
            &mut self.code,
            code_key(&h.tenant, &h.campaign, &h.code),
            true,
        );
        if let Some(g) = &h.guest {
            bump(&mut self.guest, (ck, g.clone()), true);
        }
        let a = self
            .amount
            .entry((h.tenant.clone(), h.campaign.clone()))
            .or_insert(0);
        *a = a.saturating_add(h.amount_cents);
        self.queue.insert((h.expires_at, provider_ref.clone()));
        self.by_ref.insert(provider_ref, h);
    }

    pub fn remove(&mut self, provider_ref: &str) -> Option<LiveHold> {
        let h = self.by_ref.remove(provider_ref)?;
        self.queue.remove(&(h.expires_at, provider_ref.to_owned()));
        let ck = (h.tenant.clone(), h.campaign.clone());
        if let Some(a) = self.amount.get_mut(&ck) {
            *a = a.saturating_sub(h.amount_cents);
            if *a <= 0 {
                self.amount.remove(&ck);
            }
        }
        bump(&mut self.campaign, ck.clone(), false);
        bump(
            &mut self.code,
            code_key(&h.tenant, &h.campaign, &h.code),
            false,
        );
        if let Some(g) = &h.guest {
            bump(&mut self.guest, (ck, g.clone()), false);
        }
        Some(h)
    }

    /// Drop every hold whose expiry is at or before `now`; returns them with their refs.
    pub fn prune(&mut self, now: Millis) -> Vec<(String, LiveHold)> {
        let mut gone = Vec::new();
        while let Some((at, r)) = self.queue.first().cloned() {
            if at > now {
                break;
            }
            match self.remove(&r) {
                Some(h) => gone.push((r, h)),
                // Not in by_ref (cannot happen): drop the stray queue entry all the same.
                None => {
                    self.queue.remove(&(at, r));
                }
            }
        }
        gone
    }

    /// Discount cents held by a campaign's live holds.
    pub fn held_amount(&self, tenant: &str, campaign: &str) -> i64 {
        self.amount
            .get(&(tenant.to_owned(), campaign.to_owned()))
            .copied()
            .unwrap_or(0)
    }

    /// (campaign, code, guest) live-hold counts.
    pub fn counts(
        &self,
        tenant: &str,
        campaign: &str,
        code: &str,
        guest: Option<&str>,
    ) -> (u64, u64, u64) {
        let ck = (tenant.to_owned(), campaign.to_owned());
        let c = self.campaign.get(&ck).copied().unwrap_or(0);
        let k = self
            .code
            .get(&code_key(tenant, campaign, code))
            .copied()
            .unwrap_or(0);
        let g = guest
            .and_then(|g| self.guest.get(&(ck, g.to_owned())).copied())
            .unwrap_or(0);
        (c, k, g)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hold(code: &str, guest: Option<&str>, exp: Millis) -> LiveHold {
        LiveHold {
            tenant: "t".into(),
            campaign: "c".into(),
            code: code.into(),
            guest: guest.map(str::to_owned),
            expires_at: exp,
            amount_cents: 100,
        }
    }

    #[test]
    fn counts_and_expiry() {
        let mut l = LiveHolds::default();
        l.insert("a".into(), hold("X", Some("g"), 100));
        l.insert("b".into(), hold("X", None, 200));
        l.insert("c".into(), hold("Y", Some("g"), 300));
        assert_eq!(l.counts("t", "c", "X", Some("g")), (3, 2, 2));
        assert_eq!(
            l.prune(100),
            vec![("a".to_string(), hold("X", Some("g"), 100))]
        );
        assert_eq!(l.counts("t", "c", "X", Some("g")), (2, 1, 1));
        l.remove("c");
        assert_eq!(l.counts("t", "c", "Y", Some("g")), (1, 0, 0));
        assert_eq!(l.prune(1000).len(), 1);
        assert!(l.is_empty());
    }

    #[test]
    fn code_keys_tell_the_parts_apart() {
        let k = code_key("t", "ab", "c");
        assert_eq!(k, code_key("t", "ab", "c"));
        for other in [
            code_key("t", "a", "bc"),
            code_key("ta", "b", "c"),
            code_key("t", "ab", "C"),
            code_key("u", "ab", "c"),
        ] {
            assert_ne!(k, other);
        }
    }
}
