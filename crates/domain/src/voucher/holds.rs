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

/// What the capacity index needs to know of a new live hold.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LiveHold {
    pub tenant: String,
    pub campaign: String,
    pub code: String,
    pub guest: Option<String>,
    pub expires_at: Millis,
    pub amount_cents: i64,
}

/// A live hold as the index keeps it: no text, so no allocation per hold. The campaign is
/// an index into the names the index has seen; the code and the guest are their 64-bit
/// keys (see [`key`]). 40 bytes, against ~700 bytes a hold with its five strings and the
/// string-keyed maps before, and 56 with 128-bit keys (BENCHMARKS.md, "Memory"). Opaque:
/// taken out by `remove` or `prune`, put back by `restore` (a failed job's undo).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Held {
    code: Key,
    /// `NO_GUEST`: none ([`key`] never gives it).
    guest: Key,
    expires_at: Millis,
    amount_cents: i64,
    campaign: u32,
}

/// A code's (or guest's) key in the counts: a 64-bit hash.
type Key = u64;

const NO_GUEST: Key = 0;

/// Ours are `kph_` and 16 lowercase hex digits (`service::voucher`): the index keys a hold
/// by that integer. Below 2^63 in practice (a counter); a ref of any other spelling (or
/// above) gets a number from 2^63 up in `others`, so the index stays right for any ref.
fn canonical_id(r: &str) -> Option<u64> {
    let hex = r.strip_prefix("kph_")?;
    let ok = hex.len() == 16 && hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
    let n = u64::from_str_radix(hex, 16).ok().filter(|_| ok)?;
    (n < OTHER).then_some(n)
}

const OTHER: u64 = 1 << 63;

/// The key of a code (or a guest) in the per-code (per-guest) counts: a 64-bit hash of
/// (tenant, campaign, code), never 0. Integer keys keep those B-trees compact and their
/// comparisons cheap: with hundreds of thousands of live holds on distinct bulk codes,
/// string-tuple keys cost the writer a pointer chase per comparison (measured with `perf`,
/// BENCHMARKS.md) and ~100 bytes each. Two codes (guests) with the same key would share a
/// count, which can only refuse a check, never allow one more: at 64 bits, with 300 000
/// live codes, the chance that any two share one is ~2.4 × 10⁻⁹ (n²/2⁶⁵), and a guest
/// cannot choose an id that collides with a given other's (a second preimage of SipHash,
/// ~2⁶⁴ tries). 128-bit keys cost 16 bytes more a hold in three maps (~20 MiB at 300 000
/// holds) for no difference anyone could observe.
fn key(kind: u8, tenant: &str, campaign: &str, code: &str) -> Key {
    use std::hash::{DefaultHasher, Hash, Hasher};
    let mut h = DefaultHasher::new();
    (kind, tenant, campaign, code).hash(&mut h);
    h.finish() | 1
}

const CODE: u8 = 0;
const GUEST: u8 = 1;

/// Ordered maps, not hash maps: a hash map doubles and rehashes everything at once, which
/// with a few hundred thousand live holds stalled the writer (and every answer behind it)
/// for 100–250 ms (measured under the bench's check load). A B-tree grows a node at a time.
#[derive(Debug, Default)]
pub struct LiveHolds {
    by_ref: BTreeMap<u64, Held>,
    queue: BTreeSet<(Millis, u64)>,
    /// Refs not of our own shape, numbered from 2^63: both ways.
    others: BTreeMap<Box<str>, u64>,
    other_refs: BTreeMap<u64, Box<str>>,
    /// (tenant, campaign) of each campaign index; the index of each, by tenant.
    names: Vec<(String, String)>,
    index: BTreeMap<String, BTreeMap<String, u32>>,
    /// Per campaign index: live holds and the discount cents they hold.
    campaign: Vec<(u64, i64)>,
    code: BTreeMap<Key, u64>,
    guest: BTreeMap<Key, u64>,
}

fn bump(m: &mut BTreeMap<Key, u64>, k: Key, up: bool) {
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

    /// Whether this hold is live.
    pub fn contains(&self, provider_ref: &str) -> bool {
        self.id_of(provider_ref)
            .is_some_and(|id| self.by_ref.contains_key(&id))
    }

    /// The tenant a live hold belongs to.
    pub fn tenant_of(&self, h: &Held) -> &str {
        self.names
            .get(h.campaign as usize)
            .map_or("", |(t, _)| t.as_str())
    }

    /// A tenant's live holds, in ref order, with their ids.
    fn of_tenant<'a>(&'a self, tenant: &str) -> impl Iterator<Item = (&'a u64, &'a Held)> + 'a {
        let ids = self.index.get(tenant);
        self.by_ref
            .iter()
            .filter(move |(_, h)| ids.is_some_and(|m| m.values().any(|&c| c == h.campaign)))
    }

    /// The expiry of each of a tenant's live holds.
    pub fn expiries<'a>(&'a self, tenant: &str) -> impl Iterator<Item = Millis> + 'a {
        self.of_tenant(tenant).map(|(_, h)| h.expires_at)
    }

    /// A tenant's live holds as (expiry, provider ref), in ref order.
    pub fn refs_of_tenant<'a>(
        &'a self,
        tenant: &str,
    ) -> impl Iterator<Item = (Millis, String)> + 'a {
        self.of_tenant(tenant)
            .map(|(&id, h)| (h.expires_at, self.text_of(id)))
    }

    /// How many live holds a tenant has (from the per-campaign counts: no walk).
    pub fn count_of_tenant(&self, tenant: &str) -> u64 {
        self.index.get(tenant).map_or(0, |m| {
            m.values()
                .filter_map(|&i| self.campaign.get(i as usize))
                .fold(0u64, |n, &(c, _)| n.saturating_add(c))
        })
    }

    /// At most `limit` of a tenant's live holds as (expiry, provider ref), in the index's
    /// order (ours by number, so oldest first; then refs of other spellings in the order
    /// they were first seen), after the ref `after` (`None`: from the first). `None` when
    /// `after` is neither of our spelling nor a live hold's ref: there is no place to go
    /// on from.
    pub fn page_of_tenant(
        &self,
        tenant: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Option<Vec<(Millis, String)>> {
        use std::ops::Bound;
        let from = match after {
            None => Bound::Unbounded,
            Some(r) => Bound::Excluded(self.id_of(r)?),
        };
        let ids = self.index.get(tenant);
        let page = self
            .by_ref
            .range((from, Bound::Unbounded))
            .filter(|(_, h)| ids.is_some_and(|m| m.values().any(|&c| c == h.campaign)))
            .take(limit)
            .map(|(&id, h)| (h.expires_at, self.text_of(id)))
            .collect();
        Some(page)
    }

    /// The provider refs of the live holds on one code.
    pub fn refs_of_code(&self, tenant: &str, campaign: &str, code: &str) -> Vec<String> {
        let k = key(CODE, tenant, campaign, code);
        self.of_tenant(tenant)
            .filter(|(_, h)| h.code == k)
            .map(|(&id, _)| self.text_of(id))
            .collect()
    }

    /// Every live hold's provider ref, in ref order.
    pub fn refs(&self) -> impl Iterator<Item = String> + '_ {
        self.by_ref.keys().map(|&id| self.text_of(id))
    }

    fn id_of(&self, provider_ref: &str) -> Option<u64> {
        canonical_id(provider_ref).or_else(|| self.others.get(provider_ref).copied())
    }

    fn text_of(&self, id: u64) -> String {
        match self.other_refs.get(&id) {
            Some(r) => r.to_string(),
            None => format!("kph_{id:016x}"),
        }
    }

    /// The id of a ref about to be counted: its own, or the next from 2^63.
    fn new_id(&mut self, provider_ref: &str) -> u64 {
        if let Some(id) = self.id_of(provider_ref) {
            return id;
        }
        let id = self
            .other_refs
            .last_key_value()
            .map_or(OTHER, |(&last, _)| last.saturating_add(1));
        self.others.insert(provider_ref.into(), id);
        self.other_refs.insert(id, provider_ref.into());
        id
    }

    fn forget_other(&mut self, id: u64) {
        if let Some(r) = self.other_refs.remove(&id) {
            self.others.remove(&r);
        }
    }

    fn campaign_index(&self, tenant: &str, campaign: &str) -> Option<usize> {
        self.index.get(tenant)?.get(campaign).map(|&i| i as usize)
    }

    /// The index of (tenant, campaign), given it the first time. At most 2^32 names (far
    /// more than a configuration can hold: campaigns come from it).
    fn intern(&mut self, tenant: &str, campaign: &str) -> u32 {
        if let Some(i) = self.index.get(tenant).and_then(|m| m.get(campaign)) {
            return *i;
        }
        let i = u32::try_from(self.names.len()).unwrap_or(u32::MAX);
        self.names.push((tenant.to_owned(), campaign.to_owned()));
        self.campaign.push((0, 0));
        self.index
            .entry(tenant.to_owned())
            .or_default()
            .insert(campaign.to_owned(), i);
        i
    }

    pub fn insert(&mut self, provider_ref: String, h: LiveHold) {
        let campaign = self.intern(&h.tenant, &h.campaign);
        let held = Held {
            code: key(CODE, &h.tenant, &h.campaign, &h.code),
            guest: h
                .guest
                .as_deref()
                .map_or(NO_GUEST, |g| key(GUEST, &h.tenant, &h.campaign, g)),
            campaign,
            expires_at: h.expires_at,
            amount_cents: h.amount_cents,
        };
        self.restore(&provider_ref, held);
    }

    /// Count a hold again that `remove` or `prune` took out (or insert a new one).
    pub fn restore(&mut self, provider_ref: &str, h: Held) {
        let r = self.new_id(provider_ref);
        if self.by_ref.contains_key(&r) {
            return;
        }
        if let Some((n, cents)) = self.campaign.get_mut(h.campaign as usize) {
            *n = n.saturating_add(1);
            *cents = cents.saturating_add(h.amount_cents);
        }
        bump(&mut self.code, h.code, true);
        if h.guest != NO_GUEST {
            bump(&mut self.guest, h.guest, true);
        }
        self.queue.insert((h.expires_at, r));
        self.by_ref.insert(r, h);
    }

    pub fn remove(&mut self, provider_ref: &str) -> Option<Held> {
        let id = self.id_of(provider_ref)?;
        let h = self.take(id)?;
        self.forget_other(id);
        Some(h)
    }

    fn take(&mut self, r: u64) -> Option<Held> {
        let h = self.by_ref.remove(&r)?;
        self.queue.remove(&(h.expires_at, r));
        if let Some((n, cents)) = self.campaign.get_mut(h.campaign as usize) {
            *n = n.saturating_sub(1);
            *cents = if *n == 0 {
                0
            } else {
                cents.saturating_sub(h.amount_cents)
            };
        }
        bump(&mut self.code, h.code, false);
        if h.guest != NO_GUEST {
            bump(&mut self.guest, h.guest, false);
        }
        Some(h)
    }

    /// Drop every hold whose expiry is at or before `now`; returns them with their refs.
    pub fn prune(&mut self, now: Millis) -> Vec<(String, Held)> {
        let mut gone = Vec::new();
        while let Some(&(at, r)) = self.queue.first() {
            if at > now {
                break;
            }
            match self.take(r) {
                Some(h) => {
                    gone.push((self.text_of(r), h));
                    self.forget_other(r);
                }
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
        self.campaign_index(tenant, campaign)
            .and_then(|i| self.campaign.get(i))
            .map_or(0, |&(_, cents)| cents)
    }

    /// (campaign, code, guest) live-hold counts.
    pub fn counts(
        &self,
        tenant: &str,
        campaign: &str,
        code: &str,
        guest: Option<&str>,
    ) -> (u64, u64, u64) {
        let Some(c) = self
            .campaign_index(tenant, campaign)
            .and_then(|i| self.campaign.get(i))
            .map(|&(n, _)| n)
        else {
            return (0, 0, 0);
        };
        let k = self
            .code
            .get(&key(CODE, tenant, campaign, code))
            .copied()
            .unwrap_or(0);
        let g = guest
            .and_then(|g| self.guest.get(&key(GUEST, tenant, campaign, g)).copied())
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
        assert_eq!(l.held_amount("t", "c"), 300);
        let gone = l.prune(100);
        assert_eq!(gone.len(), 1);
        assert_eq!(gone[0].0, "a");
        assert_eq!(l.tenant_of(&gone[0].1), "t");
        assert_eq!(l.counts("t", "c", "X", Some("g")), (2, 1, 1));
        assert!(l.remove("c").is_some());
        assert_eq!(l.counts("t", "c", "Y", Some("g")), (1, 0, 0));
        assert_eq!(l.prune(1000).len(), 1);
        assert!(l.is_empty());
        assert_eq!(l.held_amount("t", "c"), 0);
        assert_eq!(l.counts("u", "c", "X", None), (0, 0, 0));
    }

    #[test]
    fn a_removed_hold_restores_exactly() {
        let mut l = LiveHolds::default();
        l.insert("kph_00000000000000ff".into(), hold("X", Some("g"), 100));
        l.insert("other".into(), hold("Y", None, 50));
        let before = (l.counts("t", "c", "X", Some("g")), l.held_amount("t", "c"));
        let h = l.remove("kph_00000000000000ff").unwrap();
        assert_eq!(l.counts("t", "c", "X", Some("g")), (1, 0, 0));
        l.restore("kph_00000000000000ff", h);
        assert_eq!(
            (l.counts("t", "c", "X", Some("g")), l.held_amount("t", "c")),
            before
        );
        assert_eq!(
            l.refs().collect::<Vec<_>>(),
            ["kph_00000000000000ff", "other"]
        );
        assert_eq!(l.refs_of_code("t", "c", "X"), ["kph_00000000000000ff"]);
        assert!(
            l.refs_of_code("t", "c", "Z").is_empty() && l.refs_of_code("u", "c", "X").is_empty()
        );
        assert_eq!(
            l.refs_of_tenant("t").collect::<Vec<_>>(),
            [
                (100, "kph_00000000000000ff".to_string()),
                (50, "other".into())
            ]
        );
        assert_eq!(l.refs_of_tenant("u").count(), 0);
        assert_eq!(
            l.prune(100)
                .iter()
                .map(|(r, _)| r.as_str())
                .collect::<Vec<_>>(),
            ["other", "kph_00000000000000ff"]
        );
    }

    #[test]
    fn a_tenant_is_listed_a_page_at_a_time() {
        let mut l = LiveHolds::default();
        for n in 1..=5i64 {
            l.insert(format!("kph_{n:016x}"), hold("X", None, 100 + n));
        }
        let mut other = hold("X", None, 1);
        other.tenant = "u".into();
        l.insert("kph_0000000000000003x".into(), other.clone());
        l.insert(format!("kph_{:016x}", 9), other);
        assert_eq!(l.count_of_tenant("t"), 5);
        assert_eq!(l.count_of_tenant("u"), 2);
        assert_eq!(l.count_of_tenant("v"), 0);
        let refs = |p: Vec<(Millis, String)>| p.into_iter().map(|(_, r)| r).collect::<Vec<_>>();
        let first = l.page_of_tenant("t", None, 2).unwrap();
        assert_eq!(first[0], (101, "kph_0000000000000001".to_string()));
        assert_eq!(
            refs(first),
            ["kph_0000000000000001", "kph_0000000000000002"]
        );
        // A cursor need not be live any more: ours are placed by their number.
        assert!(l.remove("kph_0000000000000002").is_some());
        let next = l
            .page_of_tenant("t", Some("kph_0000000000000002"), 2)
            .unwrap();
        assert_eq!(refs(next), ["kph_0000000000000003", "kph_0000000000000004"]);
        let last = l
            .page_of_tenant("t", Some("kph_0000000000000004"), 2)
            .unwrap();
        assert_eq!(refs(last), ["kph_0000000000000005"]);
        assert_eq!(
            refs(l.page_of_tenant("u", None, 10).unwrap()),
            ["kph_0000000000000009", "kph_0000000000000003x"]
        );
        assert!(l.page_of_tenant("t", Some("nothing-we-gave"), 2).is_none());
    }

    #[test]
    fn refs_of_other_spellings_stay_apart() {
        let mut l = LiveHolds::default();
        l.insert("kph_00000000000000ff".into(), hold("X", None, 100));
        for other in [
            "kph_ff",
            "kph_00000000000000FF",
            "KPH_00000000000000ff",
            "kph_+0000000000000ff",
        ] {
            assert!(!l.contains(other), "{other}");
        }
        l.insert("kph_ff".into(), hold("X", None, 100));
        assert_eq!(l.len(), 2);
        assert!(l.contains("kph_ff") && l.contains("kph_00000000000000ff"));
        assert_eq!(l.counts("t", "c", "X", None), (2, 2, 0));
    }

    #[test]
    fn keys_tell_the_parts_apart() {
        let k = key(CODE, "t", "ab", "c");
        assert_eq!(k, key(CODE, "t", "ab", "c"));
        for other in [
            key(CODE, "t", "a", "bc"),
            key(CODE, "ta", "b", "c"),
            key(CODE, "t", "ab", "C"),
            key(CODE, "u", "ab", "c"),
            key(GUEST, "t", "ab", "c"),
        ] {
            assert_ne!(k, other);
        }
    }

    #[test]
    fn a_held_entry_is_small() {
        assert!(std::mem::size_of::<Held>() <= 40);
    }
}
