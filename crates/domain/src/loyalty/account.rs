//! A member's points as credit lots, and the ledger entries every change produces.
//!
//! Each credit (earn, signup bonus, import, positive adjustment) is a [`Lot`]: spendable
//! from `available_at` (pending before), gone at `expires_at`. Spending takes from the
//! oldest spendable lots first. Expired remainders leave as expiry entries when the account
//! is settled. Balances are derived from the lots; the lots change only together with a
//! ledger [`Entry`], so the sum of a member's entries always equals the sum of their lots.

use serde::{Deserialize, Serialize};

use crate::clock::Millis;

/// The most points a member may hold, and the most a lifetime total may reach (10^15):
/// every credit and restore is checked against it, so no sum of lots can overflow.
pub const MAX_POINTS: i64 = 1_000_000_000_000_000;

/// A credit or restore refused: the member would hold more than [`MAX_POINTS`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TooManyPoints;

impl std::fmt::Display for TooManyPoints {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "the member would hold more than {MAX_POINTS} points (the most a member may hold)"
        )
    }
}

/// `a + b` when it stays within [`MAX_POINTS`].
fn add_points(a: i64, b: i64) -> Result<i64, TooManyPoints> {
    a.checked_add(b)
        .filter(|s| *s <= MAX_POINTS)
        .ok_or(TooManyPoints)
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Lot {
    /// The ledger entry that created it.
    pub seq: u64,
    pub remaining: i64,
    /// What still counts toward lifetime while the lot is pending (0 when it never counts).
    pub lifetime_part: i64,
    pub available_at: Millis,
    pub expires_at: Option<Millis>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EntryKind {
    Earn,
    SignupBonus,
    Redeem,
    Reversal,
    RedemptionReversal,
    Expiry,
    Adjustment,
    Import,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Entry {
    pub seq: u64,
    pub at: Millis,
    pub kind: EntryKind,
    /// Signed change to the member's points (pending included).
    pub points: i64,
    /// Spendable balance right after this entry.
    pub balance_after: i64,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub reason: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub transaction_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub purchase_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub redemption_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reference: Option<String>,
}

/// Where spent points came from, so a reversal can put them back where they were.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Spent(pub Vec<SpentPart>);

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SpentPart {
    pub lot: u64,
    pub points: i64,
    pub available_at: Millis,
    pub expires_at: Option<Millis>,
}

impl Spent {
    pub fn total(&self) -> i64 {
        self.0.iter().map(|p| p.points).sum()
    }
}

/// A credit to add: its kind, size, when it becomes spendable (after `pending_ms`), when
/// it expires (after `expire_ms`; never when `None`), and whether it moves the member
/// toward tiers.
#[derive(Debug, Clone, Copy)]
pub struct Credit {
    pub kind: EntryKind,
    pub points: i64,
    pub pending_ms: i64,
    pub expire_ms: Option<i64>,
    pub counts_lifetime: bool,
}

/// Source ids and reason carried by an entry.
#[derive(Debug, Clone, Default)]
pub struct Why {
    pub reason: String,
    pub transaction_id: Option<String>,
    pub purchase_id: Option<String>,
    pub redemption_id: Option<String>,
    pub reference: Option<String>,
}

/// Where a member's credit lots are kept: each lot a record of its own, found by its
/// `seq`, in `seq` order (oldest first), by expiry time, and — for lots that were pending
/// when made — by the time they become spendable. The service keeps them in the store;
/// [`MemLots`] keeps them in memory. Reads only: see [`LotStore`] for the writes.
pub trait LotRead {
    type Error;
    /// The lot made by ledger entry `seq`, if it still holds points.
    fn lot(&self, seq: u64) -> Result<Option<Lot>, Self::Error>;
    /// The lot with the smallest `seq` ≥ `from`.
    fn first_from(&self, from: u64) -> Result<Option<Lot>, Self::Error>;
    /// Every lot whose `expires_at` ≤ `now`.
    fn expired(&self, now: Millis) -> Result<Vec<Lot>, Self::Error>;
    /// Every lot inserted as pending whose `available_at` is in (`after`, `now`].
    fn matured(&self, after: Millis, now: Millis) -> Result<Vec<Lot>, Self::Error>;
    /// The earliest `expires_at` of the lots (`None`: no lot expires).
    fn first_expiry(&self) -> Result<Option<Millis>, Self::Error>;
}

/// The writes on a member's lots.
pub trait LotStore: LotRead {
    /// A new lot (`pending`: it becomes spendable later, index it by that time).
    fn insert(&mut self, lot: &Lot, pending: bool) -> Result<(), Self::Error>;
    /// A lot's new `remaining` / `lifetime_part` (its times never change).
    fn update(&mut self, lot: &Lot) -> Result<(), Self::Error>;
    /// A lot that holds no more points.
    fn remove(&mut self, lot: &Lot) -> Result<(), Self::Error>;
}

/// Lots in memory, for tests and for views built from a list of lots.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MemLots {
    pub lots: std::collections::BTreeMap<u64, Lot>,
    /// Seqs of the lots inserted as pending.
    pub pending: std::collections::BTreeSet<u64>,
}

impl LotRead for MemLots {
    type Error = std::convert::Infallible;
    fn lot(&self, seq: u64) -> Result<Option<Lot>, Self::Error> {
        Ok(self.lots.get(&seq).cloned())
    }
    fn first_from(&self, from: u64) -> Result<Option<Lot>, Self::Error> {
        Ok(self.lots.range(from..).next().map(|(_, l)| l.clone()))
    }
    fn expired(&self, now: Millis) -> Result<Vec<Lot>, Self::Error> {
        Ok(self
            .lots
            .values()
            .filter(|l| l.expires_at.is_some_and(|e| e <= now))
            .cloned()
            .collect())
    }
    fn matured(&self, after: Millis, now: Millis) -> Result<Vec<Lot>, Self::Error> {
        Ok(self
            .lots
            .values()
            .filter(|l| self.pending.contains(&l.seq))
            .filter(|l| l.available_at > after && l.available_at <= now)
            .cloned()
            .collect())
    }
    fn first_expiry(&self) -> Result<Option<Millis>, Self::Error> {
        Ok(self.lots.values().filter_map(|l| l.expires_at).min())
    }
}

impl LotStore for MemLots {
    fn insert(&mut self, lot: &Lot, pending: bool) -> Result<(), Self::Error> {
        if pending {
            self.pending.insert(lot.seq);
        }
        self.lots.insert(lot.seq, lot.clone());
        Ok(())
    }
    fn update(&mut self, lot: &Lot) -> Result<(), Self::Error> {
        self.lots.insert(lot.seq, lot.clone());
        Ok(())
    }
    fn remove(&mut self, lot: &Lot) -> Result<(), Self::Error> {
        self.pending.remove(&lot.seq);
        self.lots.remove(&lot.seq);
        Ok(())
    }
}

/// A member's totals: what every call needs without reading the lots. The lots
/// themselves are in a [`LotStore`]; every change below touches only the lots it
/// consumes or makes, so its cost does not grow with the member's history.
///
/// `pending` and `pending_lifetime` are the sums of `remaining` and `lifetime_part` over
/// the lots whose `available_at` is after `matured_at`; every change first moves
/// `matured_at` to its `now` ([`Account::mature`]), so the balances below are as of then.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Account {
    /// All points held, pending included (the sum of the lots, and of the ledger).
    pub total: i64,
    pub pending: i64,
    pub pending_lifetime: i64,
    pub matured_at: Millis,
    /// Everything ever counted toward lifetime, pending included, less reversals.
    pub lifetime_total: i64,
    pub next_seq: u64,
    /// No lot expires before this (`None`: no lot expires): expiry reads the lots only
    /// once it is due. Kept by every change that makes a lot, renewed by each settle.
    pub next_expiry: Option<Millis>,
}

/// A ledger change's outcome: the store's error outside, the rule's refusal inside.
pub type Ledger<T, R, E> = Result<Result<T, R>, E>;

impl Account {
    fn is_pending(&self, l: &Lot) -> bool {
        l.available_at > self.matured_at
    }

    /// Spendable points as of `matured_at`, once expired lots are settled.
    pub fn spendable(&self) -> i64 {
        self.total.saturating_sub(self.pending)
    }

    /// Points not yet spendable.
    pub fn pending_points(&self) -> i64 {
        self.pending
    }

    /// All points held, pending included (equals the sum of the ledger).
    pub fn total(&self) -> i64 {
        self.total
    }

    /// Lifetime earned, pending points excluded.
    pub fn lifetime(&self) -> i64 {
        self.lifetime_total.saturating_sub(self.pending_lifetime)
    }

    /// Whether a lot may have expired at `now`.
    fn expiry_due(&self, now: Millis) -> bool {
        self.next_expiry.is_some_and(|e| e <= now)
    }

    /// A lot expiring at `e` exists.
    fn note_expiry(&mut self, e: Option<Millis>) {
        if let Some(e) = e {
            self.next_expiry = Some(self.next_expiry.map_or(e, |n| n.min(e)));
        }
    }

    /// Lots pending until `now` become spendable: out of the pending sums. With nothing
    /// pending there is nothing to read.
    pub fn mature<L: LotRead>(&mut self, lots: &L, now: Millis) -> Result<(), L::Error> {
        if now <= self.matured_at {
            return Ok(());
        }
        if self.pending == 0 && self.pending_lifetime == 0 {
            // Every lot made pending since `matured_at` is spent or gone.
            self.matured_at = now;
            return Ok(());
        }
        for l in lots.matured(self.matured_at, now)? {
            self.pending = self.pending.saturating_sub(l.remaining);
            self.pending_lifetime = self.pending_lifetime.saturating_sub(l.lifetime_part);
        }
        self.matured_at = now;
        Ok(())
    }

    /// The totals without the `expired` lots (already matured to `now`).
    fn drop_expired(&mut self, expired: &[Lot]) {
        for l in expired {
            self.total = self.total.saturating_sub(l.remaining);
            if self.is_pending(l) {
                self.pending = self.pending.saturating_sub(l.remaining);
                self.pending_lifetime = self.pending_lifetime.saturating_sub(l.lifetime_part);
            }
        }
    }

    /// What the account would be after settling at `now`, and the points that would
    /// expire, without writing anything (reads: account, the member view).
    pub fn view<L: LotRead>(&self, lots: &L, now: Millis) -> Result<(Account, i64), L::Error> {
        let mut a = self.clone();
        a.mature(lots, now)?;
        let expired = if a.expiry_due(now) {
            lots.expired(now)?
        } else {
            Vec::new()
        };
        a.drop_expired(&expired);
        Ok((a, expired.iter().map(|l| l.remaining).sum()))
    }

    fn entry(&mut self, now: Millis, kind: EntryKind, points: i64, why: Why) -> Entry {
        let seq = self.next_seq;
        self.next_seq = self.next_seq.saturating_add(1);
        Entry {
            seq,
            at: now,
            kind,
            points,
            balance_after: self.spendable(),
            reason: why.reason,
            transaction_id: why.transaction_id,
            purchase_id: why.purchase_id,
            redemption_id: why.redemption_id,
            reference: why.reference,
        }
    }

    /// Let expired remainders go, one expiry entry per lot (oldest first); matures the
    /// account to `now` first. Reads only the lots that expire.
    pub fn settle<L: LotStore>(
        &mut self,
        lots: &mut L,
        now: Millis,
    ) -> Result<Vec<Entry>, L::Error> {
        self.mature(lots, now)?;
        if !self.expiry_due(now) {
            return Ok(Vec::new());
        }
        let mut expired = lots.expired(now)?;
        expired.sort_by_key(|l| l.seq);
        self.drop_expired(&expired);
        let mut out = Vec::with_capacity(expired.len());
        for l in expired {
            lots.remove(&l)?;
            let why = Why {
                reason: format!("credit #{} expired", l.seq),
                ..Why::default()
            };
            out.push(self.entry(now, EntryKind::Expiry, l.remaining.saturating_neg(), why));
        }
        self.next_expiry = lots.first_expiry()?;
        Ok(out)
    }

    /// Add a credit lot; refused (changing nothing) when the member's points or lifetime
    /// total would pass [`MAX_POINTS`].
    pub fn credit<L: LotStore>(
        &mut self,
        lots: &mut L,
        now: Millis,
        c: Credit,
        why: Why,
    ) -> Ledger<Entry, TooManyPoints, L::Error> {
        let Credit {
            kind,
            points,
            pending_ms,
            expire_ms,
            counts_lifetime,
        } = c;
        self.mature(lots, now)?;
        let total = match add_points(self.total, points) {
            Ok(t) => t,
            Err(e) => return Ok(Err(e)),
        };
        let lifetime_total = if counts_lifetime {
            match add_points(self.lifetime_total, points) {
                Ok(t) => t,
                Err(e) => return Ok(Err(e)),
            }
        } else {
            self.lifetime_total
        };
        if points > 0 {
            let lot = Lot {
                seq: self.next_seq,
                remaining: points,
                lifetime_part: if counts_lifetime { points } else { 0 },
                available_at: now.saturating_add(pending_ms),
                expires_at: expire_ms.map(|e| now.saturating_add(e)),
            };
            let pending = self.is_pending(&lot);
            if pending {
                self.pending = self.pending.saturating_add(lot.remaining);
                self.pending_lifetime = self.pending_lifetime.saturating_add(lot.lifetime_part);
            }
            lots.insert(&lot, pending)?;
            self.note_expiry(lot.expires_at);
        }
        self.total = total;
        self.lifetime_total = lifetime_total;
        Ok(Ok(self.entry(now, kind, points, why)))
    }

    /// Take up to `left` points from the oldest spendable lots, reading only the lots it
    /// takes from (and pending lots in between); returns what it took, by lot.
    fn take_oldest<L: LotStore>(
        &mut self,
        lots: &mut L,
        now: Millis,
        mut left: i64,
    ) -> Result<Spent, L::Error> {
        let mut spent = Spent::default();
        let mut from = 0u64;
        while left > 0 {
            let Some(mut l) = lots.first_from(from)? else {
                break;
            };
            from = l.seq.saturating_add(1);
            if self.is_pending(&l) || l.expires_at.is_some_and(|e| e <= now) {
                continue;
            }
            let take = left.min(l.remaining);
            l.remaining = l.remaining.saturating_sub(take);
            left = left.saturating_sub(take);
            self.total = self.total.saturating_sub(take);
            spent.0.push(SpentPart {
                lot: l.seq,
                points: take,
                available_at: l.available_at,
                expires_at: l.expires_at,
            });
            if l.remaining > 0 {
                lots.update(&l)?;
            } else {
                lots.remove(&l)?;
            }
        }
        Ok(spent)
    }

    /// Spend from the oldest spendable lots. Refuses (changing nothing) with the
    /// spendable balance when short. Settle first.
    pub fn spend<L: LotStore>(
        &mut self,
        lots: &mut L,
        now: Millis,
        points: i64,
        kind: EntryKind,
        why: Why,
    ) -> Ledger<(Spent, Entry), i64, L::Error> {
        self.mature(lots, now)?;
        let have = self.spendable();
        if have < points {
            return Ok(Err(have));
        }
        let spent = self.take_oldest(lots, now, points)?;
        let e = self.entry(now, kind, points.saturating_neg(), why);
        Ok(Ok((spent, e)))
    }

    /// Put spent points back on the lots they came from (expired ones leave again at the
    /// next settle, and do not count in the entry's balance).
    /// Refused (changing nothing) when the member would hold more than [`MAX_POINTS`].
    pub fn restore<L: LotStore>(
        &mut self,
        lots: &mut L,
        now: Millis,
        spent: &Spent,
        why: Why,
    ) -> Ledger<Entry, TooManyPoints, L::Error> {
        self.mature(lots, now)?;
        let back = match spent
            .0
            .iter()
            .try_fold(0i64, |acc, p| add_points(acc, p.points))
            .and_then(|back| add_points(self.total, back).map(|_| back))
        {
            Ok(b) => b,
            Err(e) => return Ok(Err(e)),
        };
        let mut expired_back = 0i64;
        for p in &spent.0 {
            let lot = match lots.lot(p.lot)? {
                Some(mut l) => {
                    l.remaining = l.remaining.saturating_add(p.points);
                    lots.update(&l)?;
                    l
                }
                None => {
                    let l = Lot {
                        seq: p.lot,
                        remaining: p.points,
                        lifetime_part: 0,
                        available_at: p.available_at,
                        expires_at: p.expires_at,
                    };
                    lots.insert(&l, self.is_pending(&l))?;
                    l
                }
            };
            self.note_expiry(lot.expires_at);
            if self.is_pending(&lot) {
                self.pending = self.pending.saturating_add(p.points);
            } else if lot.expires_at.is_some_and(|e| e <= now) {
                expired_back = expired_back.saturating_add(p.points);
            }
        }
        self.total = self.total.saturating_add(back);
        let mut e = self.entry(now, EntryKind::RedemptionReversal, back, why);
        e.balance_after = e.balance_after.saturating_sub(expired_back);
        Ok(Ok(e))
    }

    /// Take back `points` of an award: from the award's own lot first (pending or not),
    /// then from the oldest spendable lots. Points already spent elsewhere are not
    /// recovered (the balance never goes below zero); the shortfall is returned.
    /// Lifetime drops by the whole `points`. Settle first.
    pub fn reverse<L: LotStore>(
        &mut self,
        lots: &mut L,
        now: Millis,
        award_lot: u64,
        points: i64,
        why: Why,
    ) -> Result<(Entry, i64), L::Error> {
        self.mature(lots, now)?;
        let mut left = points;
        if let Some(mut l) = lots.lot(award_lot)? {
            let take = left.min(l.remaining);
            let life = points.min(l.lifetime_part);
            l.remaining = l.remaining.saturating_sub(take);
            l.lifetime_part = l.lifetime_part.saturating_sub(life);
            left = left.saturating_sub(take);
            self.total = self.total.saturating_sub(take);
            if self.is_pending(&l) {
                self.pending = self.pending.saturating_sub(take);
                self.pending_lifetime = self.pending_lifetime.saturating_sub(life);
            }
            if l.remaining > 0 {
                lots.update(&l)?;
            } else {
                lots.remove(&l)?;
            }
        }
        let rest = self.take_oldest(lots, now, left)?;
        left = left.saturating_sub(rest.total());
        self.lifetime_total = self.lifetime_total.saturating_sub(points);
        let taken = points.saturating_sub(left);
        Ok((
            self.entry(now, EntryKind::Reversal, taken.saturating_neg(), why),
            left,
        ))
    }
}

#[cfg(test)]
#[allow(clippy::arithmetic_side_effects)]
mod tests {
    use super::*;

    const DAY: i64 = 86_400_000;

    fn earn(points: i64, pending_ms: i64, expire_ms: Option<i64>) -> Credit {
        Credit {
            kind: EntryKind::Earn,
            points,
            pending_ms,
            expire_ms,
            counts_lifetime: true,
        }
    }

    fn view(a: &Account, l: &MemLots, now: Millis) -> Account {
        a.view(l, now).unwrap().0
    }

    #[test]
    fn pending_then_spendable_then_expired() {
        let (mut a, mut l) = (Account::default(), MemLots::default());
        a.credit(&mut l, 0, earn(100, DAY, Some(10 * DAY)), Why::default())
            .unwrap()
            .unwrap();
        let v = view(&a, &l, 0);
        assert_eq!(
            (v.spendable(), v.pending_points(), v.lifetime()),
            (0, 100, 0)
        );
        let v = view(&a, &l, DAY);
        assert_eq!((v.spendable(), v.lifetime()), (100, 100));
        assert_eq!(view(&a, &l, 10 * DAY).spendable(), 0);
        let e = a.settle(&mut l, 10 * DAY).unwrap();
        assert_eq!(e.len(), 1);
        assert_eq!(e[0].points, -100);
        assert_eq!(a.total(), 0);
        assert!(l.lots.is_empty());
        assert_eq!(a.lifetime(), 100);
    }

    #[test]
    fn a_lot_expiring_while_pending_leaves_both_sums() {
        let (mut a, mut l) = (Account::default(), MemLots::default());
        a.credit(&mut l, 0, earn(40, 5 * DAY, Some(2 * DAY)), Why::default())
            .unwrap()
            .unwrap();
        let e = a.settle(&mut l, 3 * DAY).unwrap();
        assert_eq!(e[0].points, -40);
        assert_eq!((a.total(), a.pending_points(), a.lifetime()), (0, 0, 40));
        // maturing later finds nothing left
        a.mature(&l, 6 * DAY).unwrap();
        assert_eq!((a.spendable(), a.lifetime()), (0, 40));
    }

    #[test]
    fn spends_oldest_first_and_restores() {
        let (mut a, mut l) = (Account::default(), MemLots::default());
        a.credit(&mut l, 0, earn(50, 0, Some(5 * DAY)), Why::default())
            .unwrap()
            .unwrap();
        a.credit(&mut l, DAY, earn(50, 0, Some(5 * DAY)), Why::default())
            .unwrap()
            .unwrap();
        let (spent, e) = a
            .spend(&mut l, DAY, 70, EntryKind::Redeem, Why::default())
            .unwrap()
            .unwrap();
        assert_eq!(e.points, -70);
        assert_eq!(
            spent
                .0
                .iter()
                .map(|p| (p.lot, p.points))
                .collect::<Vec<_>>(),
            vec![(0, 50), (1, 20)]
        );
        assert_eq!(
            a.spend(&mut l, DAY, 31, EntryKind::Redeem, Why::default())
                .unwrap()
                .unwrap_err(),
            30
        );
        a.restore(&mut l, DAY, &spent, Why::default())
            .unwrap()
            .unwrap();
        assert_eq!(a.spendable(), 100);
        // the restored oldest lot still expires on its own date
        a.settle(&mut l, 5 * DAY).unwrap();
        assert_eq!(a.total(), 50);
    }

    #[test]
    fn spending_skips_pending_lots() {
        let (mut a, mut l) = (Account::default(), MemLots::default());
        a.credit(&mut l, 0, earn(30, DAY, None), Why::default())
            .unwrap()
            .unwrap();
        a.credit(&mut l, 0, earn(30, 0, None), Why::default())
            .unwrap()
            .unwrap();
        let (spent, _) = a
            .spend(&mut l, 0, 20, EntryKind::Redeem, Why::default())
            .unwrap()
            .unwrap();
        assert_eq!(spent.0[0].lot, 1);
        assert_eq!((a.spendable(), a.pending_points(), a.total()), (10, 30, 40));
    }

    #[test]
    fn reversal_never_goes_below_zero() {
        let (mut a, mut l) = (Account::default(), MemLots::default());
        a.credit(&mut l, 0, earn(100, 0, None), Why::default())
            .unwrap()
            .unwrap();
        a.spend(&mut l, 0, 80, EntryKind::Redeem, Why::default())
            .unwrap()
            .unwrap();
        let (e, short) = a.reverse(&mut l, 0, 0, 100, Why::default()).unwrap();
        assert_eq!((e.points, short), (-20, 80));
        assert_eq!((a.total(), a.lifetime()), (0, 0));
    }

    #[test]
    fn reversing_a_pending_award_leaves_the_pending_sums() {
        let (mut a, mut l) = (Account::default(), MemLots::default());
        a.credit(&mut l, 0, earn(100, DAY, None), Why::default())
            .unwrap()
            .unwrap();
        let (e, short) = a.reverse(&mut l, 0, 0, 60, Why::default()).unwrap();
        assert_eq!((e.points, short), (-60, 0));
        assert_eq!(
            (a.pending_points(), a.lifetime_total, a.lifetime()),
            (40, 40, 0)
        );
        a.mature(&l, DAY).unwrap();
        assert_eq!((a.spendable(), a.lifetime()), (40, 40));
    }

    #[test]
    fn credits_and_restores_stop_at_max_points() {
        let (mut a, mut l) = (Account::default(), MemLots::default());
        let credit = |points| earn(points, 0, None);
        a.credit(&mut l, 0, credit(MAX_POINTS), Why::default())
            .unwrap()
            .unwrap();
        assert_eq!(
            a.credit(&mut l, 0, credit(1), Why::default()).unwrap(),
            Err(TooManyPoints)
        );
        assert_eq!(
            a.credit(&mut l, 0, credit(i64::MAX), Why::default())
                .unwrap(),
            Err(TooManyPoints)
        );
        assert_eq!(
            (a.total(), a.lifetime_total, l.lots.len()),
            (MAX_POINTS, MAX_POINTS, 1)
        );
        let (spent, _) = a
            .spend(&mut l, 0, 10, EntryKind::Redeem, Why::default())
            .unwrap()
            .unwrap();
        a.credit(&mut l, 0, credit(10), Why::default())
            .unwrap()
            .unwrap_err();
        let (mut b, mut bl) = (a.clone(), l.clone());
        b.lifetime_total = 0;
        b.credit(&mut bl, 0, credit(5), Why::default())
            .unwrap()
            .unwrap();
        assert_eq!(
            b.restore(&mut bl, 0, &spent, Why::default()).unwrap(),
            Err(TooManyPoints)
        );
        assert_eq!(b.total(), MAX_POINTS - 5);
    }
}
