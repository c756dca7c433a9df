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

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Account {
    pub lots: Vec<Lot>,
    /// Everything ever counted toward lifetime, pending included, less reversals.
    pub lifetime_total: i64,
    pub next_seq: u64,
}

impl Account {
    fn is_spendable(l: &Lot, now: Millis) -> bool {
        l.available_at <= now && l.expires_at.is_none_or(|e| e > now)
    }

    pub fn spendable(&self, now: Millis) -> i64 {
        self.lots
            .iter()
            .filter(|l| Self::is_spendable(l, now))
            .map(|l| l.remaining)
            .sum()
    }

    pub fn pending(&self, now: Millis) -> i64 {
        self.lots
            .iter()
            .filter(|l| l.available_at > now)
            .map(|l| l.remaining)
            .sum()
    }

    /// All points held, pending included (equals the sum of the ledger).
    pub fn total(&self) -> i64 {
        self.lots.iter().map(|l| l.remaining).sum()
    }

    /// Lifetime earned, pending points excluded.
    pub fn lifetime(&self, now: Millis) -> i64 {
        let pending: i64 = self
            .lots
            .iter()
            .filter(|l| l.available_at > now)
            .map(|l| l.lifetime_part)
            .sum();
        self.lifetime_total.saturating_sub(pending)
    }

    fn entry(&mut self, now: Millis, kind: EntryKind, points: i64, why: Why) -> Entry {
        let seq = self.next_seq;
        self.next_seq = self.next_seq.saturating_add(1);
        Entry {
            seq,
            at: now,
            kind,
            points,
            balance_after: self.spendable(now),
            reason: why.reason,
            transaction_id: why.transaction_id,
            purchase_id: why.purchase_id,
            redemption_id: why.redemption_id,
            reference: why.reference,
        }
    }

    /// Let expired remainders go, one expiry entry per lot; drop empty lots.
    pub fn settle(&mut self, now: Millis) -> Vec<Entry> {
        let mut out = Vec::new();
        let mut expired = Vec::new();
        for l in &mut self.lots {
            if l.remaining > 0 && l.expires_at.is_some_and(|e| e <= now) {
                expired.push((l.seq, l.remaining));
                l.remaining = 0;
                l.lifetime_part = 0;
            }
        }
        for (lot, pts) in expired {
            let why = Why {
                reason: format!("credit #{lot} expired"),
                ..Why::default()
            };
            out.push(self.entry(now, EntryKind::Expiry, pts.saturating_neg(), why));
        }
        self.lots.retain(|l| l.remaining > 0);
        out
    }

    /// Add a credit lot; refused (changing nothing) when the member's points or lifetime
    /// total would pass [`MAX_POINTS`].
    pub fn credit(&mut self, now: Millis, c: Credit, why: Why) -> Result<Entry, TooManyPoints> {
        let Credit {
            kind,
            points,
            pending_ms,
            expire_ms,
            counts_lifetime,
        } = c;
        add_points(self.total(), points)?;
        let lifetime_total = if counts_lifetime {
            add_points(self.lifetime_total, points)?
        } else {
            self.lifetime_total
        };
        let seq = self.next_seq;
        if points > 0 {
            self.lots.push(Lot {
                seq,
                remaining: points,
                lifetime_part: if counts_lifetime { points } else { 0 },
                available_at: now.saturating_add(pending_ms),
                expires_at: expire_ms.map(|e| now.saturating_add(e)),
            });
        }
        self.lifetime_total = lifetime_total;
        Ok(self.entry(now, kind, points, why))
    }

    /// Spend from the oldest spendable lots. Refuses (changing nothing) when short.
    pub fn spend(
        &mut self,
        now: Millis,
        points: i64,
        kind: EntryKind,
        why: Why,
    ) -> Result<(Spent, Entry), i64> {
        let have = self.spendable(now);
        if have < points {
            return Err(have);
        }
        let mut left = points;
        let mut spent = Spent::default();
        for l in self.lots.iter_mut().filter(|l| Self::is_spendable(l, now)) {
            if left == 0 {
                break;
            }
            let take = left.min(l.remaining);
            if take > 0 {
                l.remaining = l.remaining.saturating_sub(take);
                left = left.saturating_sub(take);
                spent.0.push(SpentPart {
                    lot: l.seq,
                    points: take,
                    available_at: l.available_at,
                    expires_at: l.expires_at,
                });
            }
        }
        self.lots.retain(|l| l.remaining > 0);
        let e = self.entry(now, kind, points.saturating_neg(), why);
        Ok((spent, e))
    }

    /// Put spent points back on the lots they came from (expired ones leave again at the
    /// next settle).
    /// Refused (changing nothing) when the member would hold more than [`MAX_POINTS`].
    pub fn restore(
        &mut self,
        now: Millis,
        spent: &Spent,
        why: Why,
    ) -> Result<Entry, TooManyPoints> {
        let back = spent
            .0
            .iter()
            .try_fold(0i64, |acc, p| add_points(acc, p.points))?;
        add_points(self.total(), back)?;
        for p in &spent.0 {
            match self.lots.iter_mut().find(|l| l.seq == p.lot) {
                Some(l) => l.remaining = l.remaining.saturating_add(p.points),
                None => {
                    let pos = self
                        .lots
                        .iter()
                        .position(|l| l.seq > p.lot)
                        .unwrap_or(self.lots.len());
                    self.lots.insert(
                        pos,
                        Lot {
                            seq: p.lot,
                            remaining: p.points,
                            lifetime_part: 0,
                            available_at: p.available_at,
                            expires_at: p.expires_at,
                        },
                    );
                }
            }
        }
        Ok(self.entry(now, EntryKind::RedemptionReversal, back, why))
    }

    /// Take back `points` of an award: from the award's own lot first (pending or not),
    /// then from the oldest spendable lots. Points already spent elsewhere are not
    /// recovered (the balance never goes below zero); the shortfall is returned.
    /// Lifetime drops by the whole `points`.
    pub fn reverse(&mut self, now: Millis, award_lot: u64, points: i64, why: Why) -> (Entry, i64) {
        let mut left = points;
        if let Some(l) = self.lots.iter_mut().find(|l| l.seq == award_lot) {
            let take = left.min(l.remaining);
            l.remaining = l.remaining.saturating_sub(take);
            l.lifetime_part = l.lifetime_part.saturating_sub(points.min(l.lifetime_part));
            left = left.saturating_sub(take);
        }
        for l in self.lots.iter_mut().filter(|l| Self::is_spendable(l, now)) {
            if left == 0 {
                break;
            }
            let take = left.min(l.remaining);
            l.remaining = l.remaining.saturating_sub(take);
            left = left.saturating_sub(take);
        }
        self.lots.retain(|l| l.remaining > 0);
        self.lifetime_total = self.lifetime_total.saturating_sub(points);
        let taken = points.saturating_sub(left);
        (
            self.entry(now, EntryKind::Reversal, taken.saturating_neg(), why),
            left,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DAY: i64 = 86_400_000;

    #[test]
    fn pending_then_spendable_then_expired() {
        let mut a = Account::default();
        a.credit(
            0,
            Credit {
                kind: EntryKind::Earn,
                points: 100,
                pending_ms: DAY,
                expire_ms: Some(10 * DAY),
                counts_lifetime: true,
            },
            Why::default(),
        )
        .unwrap();
        assert_eq!((a.spendable(0), a.pending(0), a.lifetime(0)), (0, 100, 0));
        assert_eq!((a.spendable(DAY), a.lifetime(DAY)), (100, 100));
        assert_eq!(a.spendable(10 * DAY), 0);
        let e = a.settle(10 * DAY);
        assert_eq!(e.len(), 1);
        assert_eq!(e[0].points, -100);
        assert_eq!(a.total(), 0);
        assert_eq!(a.lifetime(10 * DAY), 100);
    }

    #[test]
    fn spends_oldest_first_and_restores() {
        let mut a = Account::default();
        a.credit(
            0,
            Credit {
                kind: EntryKind::Earn,
                points: 50,
                pending_ms: 0,
                expire_ms: Some(5 * DAY),
                counts_lifetime: true,
            },
            Why::default(),
        )
        .unwrap();
        a.credit(
            DAY,
            Credit {
                kind: EntryKind::Earn,
                points: 50,
                pending_ms: 0,
                expire_ms: Some(5 * DAY),
                counts_lifetime: true,
            },
            Why::default(),
        )
        .unwrap();
        let (spent, e) = a.spend(DAY, 70, EntryKind::Redeem, Why::default()).unwrap();
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
            a.spend(DAY, 31, EntryKind::Redeem, Why::default())
                .unwrap_err(),
            30
        );
        a.restore(DAY, &spent, Why::default()).unwrap();
        assert_eq!(a.spendable(DAY), 100);
        // the restored oldest lot still expires on its own date
        a.settle(5 * DAY);
        assert_eq!(a.total(), 50);
    }

    #[test]
    fn reversal_never_goes_below_zero() {
        let mut a = Account::default();
        a.credit(
            0,
            Credit {
                kind: EntryKind::Earn,
                points: 100,
                pending_ms: 0,
                expire_ms: None,
                counts_lifetime: true,
            },
            Why::default(),
        )
        .unwrap();
        a.spend(0, 80, EntryKind::Redeem, Why::default()).unwrap();
        let (e, short) = a.reverse(0, 0, 100, Why::default());
        assert_eq!((e.points, short), (-20, 80));
        assert_eq!((a.total(), a.lifetime(0)), (0, 0));
    }

    #[test]
    fn credits_and_restores_stop_at_max_points() {
        let mut a = Account::default();
        let credit = |points| Credit {
            kind: EntryKind::Earn,
            points,
            pending_ms: 0,
            expire_ms: None,
            counts_lifetime: true,
        };
        a.credit(0, credit(MAX_POINTS), Why::default()).unwrap();
        assert_eq!(a.credit(0, credit(1), Why::default()), Err(TooManyPoints));
        assert_eq!(
            a.credit(0, credit(i64::MAX), Why::default()),
            Err(TooManyPoints)
        );
        assert_eq!(
            (a.total(), a.lifetime_total, a.lots.len()),
            (MAX_POINTS, MAX_POINTS, 1)
        );
        let (spent, _) = a.spend(0, 10, EntryKind::Redeem, Why::default()).unwrap();
        a.credit(0, credit(10), Why::default()).unwrap_err();
        let mut b = a.clone();
        b.lifetime_total = 0;
        b.credit(0, credit(5), Why::default()).unwrap();
        assert_eq!(b.restore(0, &spent, Why::default()), Err(TooManyPoints));
        assert_eq!(b.total(), MAX_POINTS - 5);
    }
}
