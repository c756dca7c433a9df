//! **Pure**: what Karma holds a provider to while it simulates orders — the classes of
//! contract violation, the judgement of each answer (a discount above the cart total, an
//! answer that changes on retry, a missing `expiresAt`), and the two run-wide trackers: the
//! uses of single-use codes and each member's balance.

use std::collections::BTreeMap;

use serde::Serialize;
use serde_json::Value;

/// Karma assumes a hold lives this long when `expiresAt` is missing.
pub const DEFAULT_HOLD_MS: i64 = 2 * 60 * 60 * 1000;

/// A class of contract violation; each is a testcase of the JUnit report.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Class {
    /// A check's `discountAmountCents` above `cart.totalCents`.
    DiscountAboveTotal,
    /// A repeated call (same `transactionId`, same body) got other bytes.
    AnswerChangedOnRetry,
    /// A member's balance does not follow from the awards of the run.
    BalanceDoesNotAddUp,
    /// A single-use code succeeded while another order held or had used it.
    SingleUseCodeUsedTwice,
    /// An answer outside the contract (status, JSON shape, a refusal of a valid call).
    UnexpectedAnswer,
    /// No answer after every retry (timeouts, 5xx, connection errors).
    CallFailed,
    /// A call's average latency is above the budget.
    LatencyOverBudget,
}

impl Class {
    pub const ALL: [Class; 7] = [
        Class::DiscountAboveTotal,
        Class::AnswerChangedOnRetry,
        Class::BalanceDoesNotAddUp,
        Class::SingleUseCodeUsedTwice,
        Class::UnexpectedAnswer,
        Class::CallFailed,
        Class::LatencyOverBudget,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Class::DiscountAboveTotal => "discount-above-total",
            Class::AnswerChangedOnRetry => "answer-changed-on-retry",
            Class::BalanceDoesNotAddUp => "balance-does-not-add-up",
            Class::SingleUseCodeUsedTwice => "single-use-code-used-twice",
            Class::UnexpectedAnswer => "unexpected-answer",
            Class::CallFailed => "call-failed",
            Class::LatencyOverBudget => "latency-over-budget",
        }
    }
}

/// One violation: its class, the order and call where it showed, and what was seen.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Violation {
    pub class: Class,
    pub order: String,
    pub call: String,
    pub detail: String,
}

/// A successful check as Karma reads it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hold {
    pub discount: i64,
    pub provider_ref: String,
    /// `expiresAt` was missing: Karma assumes [`DEFAULT_HOLD_MS`].
    pub expiry_assumed: bool,
}

/// Read a check answer (HTTP 200): `Ok(Some)` a hold, `Ok(None)` a refusal (`ok:false`),
/// `Err` an answer outside the contract.
pub fn read_check(body: &Value) -> Result<Option<Hold>, String> {
    match body["ok"] {
        Value::Bool(false) => match body["error"].as_str() {
            Some(_) => Ok(None),
            None => Err("ok:false without an error code".into()),
        },
        Value::Bool(true) => {
            let discount = body["discountAmountCents"]
                .as_i64()
                .filter(|d| *d >= 0)
                .ok_or("ok:true without a non-negative integer discountAmountCents")?;
            let provider_ref = body["providerRef"]
                .as_str()
                .ok_or("ok:true without a providerRef string")?
                .to_owned();
            let expiry_assumed = match &body["expiresAt"] {
                Value::Null => true,
                Value::String(s) if s.parse::<jiff::Timestamp>().is_ok() => false,
                other => return Err(format!("expiresAt {other} is not an RFC 3339 time")),
            };
            Ok(Some(Hold {
                discount,
                provider_ref,
                expiry_assumed,
            }))
        }
        _ => Err("no boolean ok".into()),
    }
}

/// Karma's clamp: the discount it applies to a cart never exceeds the total. `Some` with
/// the violation's detail when the provider offered more.
pub fn above_total(discount: i64, total: i64) -> Option<String> {
    (discount > total).then(|| {
        format!("discountAmountCents {discount} is above cart.totalCents {total} (Karma applies {total})")
    })
}

/// The discount Karma applies for several vouchers: their sum, clamped to the total.
pub fn applied(discounts: &[i64], total: i64) -> i64 {
    discounts
        .iter()
        .fold(0i64, |a, d| a.saturating_add(*d))
        .clamp(0, total.max(0))
}

/// Compare a repeated call's answer with the first one.
pub fn changed_on_retry(first: &(u16, Vec<u8>), again: &(u16, Vec<u8>)) -> Option<String> {
    (first != again).then(|| {
        format!(
            "first {} {}, repeated {} {}",
            first.0,
            String::from_utf8_lossy(&first.1),
            again.0,
            String::from_utf8_lossy(&again.1)
        )
    })
}

/// Uses of single-use codes across the run: a code is taken by a successful check and
/// given back by a reactivate (counted as given back when the reactivate is *sent*, so a
/// race can hide a violation but never invent one).
#[derive(Debug, Default)]
pub struct SingleUse {
    /// code → the order holding or having used it.
    taken: BTreeMap<String, String>,
}

impl SingleUse {
    /// A successful check of `code` by `order`: the order already holding it, if another.
    pub fn take(&mut self, code: &str, order: &str) -> Option<String> {
        match self.taken.get(code) {
            Some(other) if other != order => Some(other.clone()),
            _ => {
                self.taken.insert(code.to_owned(), order.to_owned());
                None
            }
        }
    }

    /// `order` gives `code` back (its reactivate is about to be sent).
    pub fn give_back(&mut self, code: &str, order: &str) {
        if self.taken.get(code).is_some_and(|o| o == order) {
            self.taken.remove(code);
        }
    }
}

/// One member's balance as the run has seen it (a member's orders run one after another).
#[derive(Debug, Default, Clone)]
pub struct Balance {
    expected: Option<i64>,
    /// The first balance seen and the points awarded since.
    pub start: Option<i64>,
    pub awarded: i64,
}

impl Balance {
    /// A balance shown by `account`: the mismatch, if it does not add up.
    pub fn shown(&mut self, balance: i64) -> Option<String> {
        let out = match self.expected {
            Some(e) if e != balance => Some(format!(
                "account shows {balance}; the run expects {e} (first seen {}, awarded {} since)",
                self.start.unwrap_or(0),
                self.awarded
            )),
            _ => None,
        };
        self.start.get_or_insert(balance);
        self.expected = Some(balance);
        out
    }

    /// An award answer: `newBalance` must be the balance before plus `pointsAwarded`.
    pub fn awarded(&mut self, points: i64, new_balance: i64) -> Option<String> {
        let out = match self.expected {
            Some(e) if e.checked_add(points) != Some(new_balance) => Some(format!(
                "award of {points} points answers newBalance {new_balance}; the balance before was {e}"
            )),
            _ => None,
        };
        self.awarded = self.awarded.saturating_add(points);
        self.expected = Some(new_balance);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn check_answers() {
        let ok = json!({"ok": true, "voucherNr": "A", "discountAmountCents": 500,
                        "providerRef": "r1", "expiresAt": "2026-06-01T12:00:00Z"});
        assert_eq!(
            read_check(&ok),
            Ok(Some(Hold {
                discount: 500,
                provider_ref: "r1".into(),
                expiry_assumed: false
            }))
        );
        let no_expiry = json!({"ok": true, "discountAmountCents": 5, "providerRef": "r"});
        assert!(read_check(&no_expiry).unwrap().unwrap().expiry_assumed);
        assert_eq!(read_check(&json!({"ok": false, "error": "X"})), Ok(None));
        assert_eq!(
            read_check(&json!({"ok": true, "providerRef": "r"})),
            Err("ok:true without a non-negative integer discountAmountCents".into())
        );
        assert_eq!(
            read_check(
                &json!({"ok": true, "discountAmountCents": 1, "providerRef": "r", "expiresAt": "soon"})
            ),
            Err("expiresAt \"soon\" is not an RFC 3339 time".into())
        );
    }

    #[test]
    fn clamp_and_above_total() {
        assert_eq!(above_total(500, 500), None);
        assert_eq!(
            above_total(2000, 1500).as_deref(),
            Some("discountAmountCents 2000 is above cart.totalCents 1500 (Karma applies 1500)")
        );
        assert_eq!(applied(&[500, 700], 1000), 1000);
        assert_eq!(applied(&[500, 200], 1000), 700);
        assert_eq!(applied(&[], 1000), 0);
    }

    #[test]
    fn single_use_codes() {
        let mut s = SingleUse::default();
        assert_eq!(s.take("ONE", "o1"), None);
        assert_eq!(s.take("ONE", "o1"), None);
        assert_eq!(s.take("ONE", "o2").as_deref(), Some("o1"));
        s.give_back("ONE", "o2"); // not the holder: nothing changes
        assert_eq!(s.take("ONE", "o3").as_deref(), Some("o1"));
        s.give_back("ONE", "o1");
        assert_eq!(s.take("ONE", "o3"), None);
    }

    #[test]
    fn balances_add_up_or_are_named() {
        let mut b = Balance::default();
        assert_eq!(b.shown(50), None);
        assert_eq!(b.awarded(12, 62), None);
        assert_eq!(b.shown(62), None);
        assert_eq!(
            b.awarded(10, 84).as_deref(),
            Some("award of 10 points answers newBalance 84; the balance before was 62")
        );
        assert_eq!(
            b.shown(94).as_deref(),
            Some("account shows 94; the run expects 84 (first seen 50, awarded 22 since)")
        );
    }
}
