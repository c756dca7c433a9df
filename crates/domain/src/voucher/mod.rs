//! Voucher decisions as plain functions, with no I/O: what a campaign is (validated from its
//! spec), how a typed code is matched, what discount a cart gets, which rule rejects a
//! check, and how a hold moves between states. The store and the clock are the caller's.

mod campaign;
mod cart;
mod holds;

pub use campaign::{
    match_key, Campaign, CampaignSpec, CodeMatch, Discount, DiscountSpec, RulesSpec, Schedule,
    ScheduleSpec,
};
pub use cart::{Cart, CartItem, Quantity};
pub use holds::{Held, HoldState, LiveHold, LiveHolds};

use crate::clock::Millis;

/// Why a check or commit is refused. Each maps to a stable `error` code in the answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Rejection {
    UnknownCode,
    Expired {
        until: Millis,
    },
    NotYetValid {
        from: Millis,
    },
    OutsideSchedule,
    LocationNotAllowed {
        location: Option<String>,
    },
    MinTotalNotMet {
        min: i64,
        total: i64,
    },
    NoEligibleItems,
    VoucherHeld {
        scope: LimitScope,
    },
    UsageLimitReached {
        scope: LimitScope,
    },
    GuestLimitReached,
    AmountMismatch {
        expected: i64,
        got: i64,
    },
    ReservationNotFound,
    ReservationReleased,
    ReservationExpired,
    ReservationAlreadyCommitted,
    TransactionMismatch,
    BudgetExhausted,
    CodeAssignedToAnotherGuest,
    /// The vendor's rules service said no; its reason reaches the guest.
    VendorDeclined {
        reason: Option<String>,
    },
    /// The vendor's rules service was slow, down or answered garbage: fail closed.
    VendorUnavailable {
        why: String,
    },
}

/// Which limit a capacity rejection refers to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LimitScope {
    Campaign,
    Code,
}

impl Rejection {
    pub fn code(&self) -> &'static str {
        match self {
            Rejection::UnknownCode => "UNKNOWN_CODE",
            Rejection::Expired { .. } => "EXPIRED",
            Rejection::NotYetValid { .. } => "NOT_YET_VALID",
            Rejection::OutsideSchedule => "OUTSIDE_SCHEDULE",
            Rejection::LocationNotAllowed { .. } => "LOCATION_NOT_ALLOWED",
            Rejection::MinTotalNotMet { .. } => "MIN_TOTAL_NOT_MET",
            Rejection::NoEligibleItems => "NO_ELIGIBLE_ITEMS",
            Rejection::VoucherHeld { .. } => "VOUCHER_HELD",
            Rejection::UsageLimitReached { .. } => "USAGE_LIMIT_REACHED",
            Rejection::GuestLimitReached => "GUEST_LIMIT_REACHED",
            Rejection::AmountMismatch { .. } => "AMOUNT_MISMATCH",
            Rejection::ReservationNotFound => "RESERVATION_NOT_FOUND",
            Rejection::ReservationReleased => "RESERVATION_RELEASED",
            Rejection::ReservationExpired => "RESERVATION_EXPIRED",
            Rejection::ReservationAlreadyCommitted => "RESERVATION_ALREADY_COMMITTED",
            Rejection::TransactionMismatch => "TRANSACTION_MISMATCH",
            Rejection::BudgetExhausted => "BUDGET_EXHAUSTED",
            Rejection::CodeAssignedToAnotherGuest => "CODE_ASSIGNED_TO_ANOTHER_GUEST",
            Rejection::VendorDeclined { .. } => "VENDOR_DECLINED",
            Rejection::VendorUnavailable { .. } => "VENDOR_UNAVAILABLE",
        }
    }

    /// A sentence a cashier or guest can read.
    pub fn message(&self) -> String {
        let scope = |s: &LimitScope| match s {
            LimitScope::Campaign => "this campaign",
            LimitScope::Code => "this code",
        };
        match self {
            Rejection::UnknownCode => "This voucher code is not recognised.".into(),
            Rejection::Expired { until } => format!(
                "This voucher expired at {}.",
                crate::clock::rfc3339(*until)
            ),
            Rejection::NotYetValid { from } => format!(
                "This voucher is valid from {}.",
                crate::clock::rfc3339(*from)
            ),
            Rejection::OutsideSchedule => {
                "This voucher cannot be used at this day or time.".into()
            }
            Rejection::LocationNotAllowed { location: Some(l) } => {
                format!("This voucher is not valid at location {l}.")
            }
            Rejection::LocationNotAllowed { location: None } => {
                "This voucher is limited to certain locations and the request named none.".into()
            }
            Rejection::MinTotalNotMet { min, total } => format!(
                "This voucher needs an order of at least {min} cents; the cart totals {total} cents."
            ),
            Rejection::NoEligibleItems => {
                "None of the items in the cart qualify for this voucher.".into()
            }
            Rejection::VoucherHeld { scope: s } => format!(
                "The remaining uses of {} are reserved by orders in progress; try again later.",
                scope(s)
            ),
            Rejection::UsageLimitReached { scope: s } => {
                format!("All uses of {} have been consumed.", scope(s))
            }
            Rejection::GuestLimitReached => {
                "This guest has already used this voucher the maximum number of times.".into()
            }
            Rejection::AmountMismatch { expected, got } => format!(
                "amountCents {got} does not equal the reserved discount of {expected} cents."
            ),
            Rejection::ReservationNotFound => {
                "No reservation matches this providerRef.".into()
            }
            Rejection::ReservationReleased => {
                "This reservation was released by a reactivate and cannot be committed.".into()
            }
            Rejection::ReservationExpired => {
                "This reservation expired and the voucher has no capacity left to honour it.".into()
            }
            Rejection::ReservationAlreadyCommitted => {
                "This reservation was already committed by another transaction.".into()
            }
            Rejection::TransactionMismatch => {
                "This reservation was committed by a different transactionId.".into()
            }
            Rejection::BudgetExhausted => {
                "This campaign's discount budget is used up.".into()
            }
            Rejection::CodeAssignedToAnotherGuest => {
                "This code belongs to another guest.".into()
            }
            Rejection::VendorDeclined { reason: Some(r) } => r.clone(),
            Rejection::VendorDeclined { reason: None } => {
                "The voucher issuer declined this code.".into()
            }
            Rejection::VendorUnavailable { why } => format!(
                "The voucher issuer could not be reached to approve this code ({why}); try again."
            ),
        }
    }
}

/// Consumed uses and live holds that a check is measured against.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Usage {
    pub campaign_used: u64,
    pub campaign_held: u64,
    pub code_used: u64,
    pub code_held: u64,
    pub guest_used: u64,
    pub guest_held: u64,
    /// Discount cents committed, and held by live holds, for the campaign (budgets).
    pub campaign_spent_cents: i64,
    pub campaign_held_cents: i64,
}

/// What a check request offers for a decision, after parsing.
#[derive(Debug, Clone)]
pub struct CheckInput<'a> {
    pub cart: &'a Cart,
    pub location: Option<&'a str>,
    pub guest: Option<&'a str>,
    pub now: Millis,
}

/// Every rule except capacity, in the order a guest would want to hear them: validity,
/// place, time, cart. Returns the discount in cents.
pub fn price(c: &Campaign, input: &CheckInput<'_>) -> Result<i64, Rejection> {
    if let Some(from) = c.valid_from {
        if input.now < from {
            return Err(Rejection::NotYetValid { from });
        }
    }
    if let Some(until) = c.valid_until {
        if input.now > until {
            return Err(Rejection::Expired { until });
        }
    }
    if let Some(locs) = &c.locations {
        match input.location {
            Some(l) if locs.iter().any(|x| x == l) => {}
            other => {
                return Err(Rejection::LocationNotAllowed {
                    location: other.map(str::to_owned),
                })
            }
        }
    }
    if let Some(s) = &c.schedule {
        if !s.contains(input.now) {
            return Err(Rejection::OutsideSchedule);
        }
    }
    let total = input.cart.total_cents;
    if let Some(min) = c.min_total_cents {
        if total < min {
            return Err(Rejection::MinTotalNotMet { min, total });
        }
    }
    let base = match &c.items {
        None => total,
        Some(items) => {
            let mut sum: i128 = 0;
            let mut any = false;
            for line in &input.cart.items {
                if items.contains(&line.inventory_item_id) {
                    any = true;
                    sum = sum.saturating_add(line.line_cents());
                }
            }
            if !any {
                return Err(Rejection::NoEligibleItems);
            }
            // At most `total`, an i64, so the conversion cannot fail.
            i64::try_from(sum.min(i128::from(total))).unwrap_or(total)
        }
    };
    let mut discount = match c.discount {
        // floor(base * percent / 100), in integers
        Discount::Percent(p) => {
            let d = i128::from(base)
                .saturating_mul(i128::from(p))
                .div_euclid(100);
            i64::try_from(d).unwrap_or(i64::MAX)
        }
        Discount::AmountCents(a) => a.min(base),
    };
    if let Some(cap) = c.max_discount_cents {
        discount = discount.min(cap);
    }
    Ok(discount.clamp(0, total.max(0)))
}

/// Capacity rules: consumed uses and live holds both count. A limit already filled by
/// consumed uses is `USAGE_LIMIT_REACHED`; one filled only thanks to live holds is
/// `VOUCHER_HELD` (it may free up).
pub fn capacity(c: &Campaign, u: &Usage, has_guest: bool, discount: i64) -> Result<(), Rejection> {
    if let Some(budget) = c.max_discount_total_cents {
        let wanted = u
            .campaign_spent_cents
            .saturating_add(u.campaign_held_cents)
            .saturating_add(discount);
        if wanted > budget {
            return Err(Rejection::BudgetExhausted);
        }
    }
    if let Some(max) = c.max_uses {
        if u.campaign_used >= max {
            return Err(Rejection::UsageLimitReached {
                scope: LimitScope::Campaign,
            });
        }
        if u.campaign_used.saturating_add(u.campaign_held) >= max {
            return Err(Rejection::VoucherHeld {
                scope: LimitScope::Campaign,
            });
        }
    }
    if let Some(max) = c.max_uses_per_code {
        if u.code_used >= max {
            return Err(Rejection::UsageLimitReached {
                scope: LimitScope::Code,
            });
        }
        if u.code_used.saturating_add(u.code_held) >= max {
            return Err(Rejection::VoucherHeld {
                scope: LimitScope::Code,
            });
        }
    }
    if let (Some(max), true) = (c.max_uses_per_guest, has_guest) {
        if u.guest_used.saturating_add(u.guest_held) >= max {
            return Err(Rejection::GuestLimitReached);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn campaign(toml_src: &str) -> Campaign {
        let spec: CampaignSpec = toml::from_str(toml_src).unwrap();
        Campaign::from_spec(spec).unwrap()
    }

    fn cart(items: &[(&str, i64, i64)], total: i64) -> Cart {
        Cart {
            items: items
                .iter()
                .map(|(id, q, p)| CartItem {
                    inventory_item_id: id.to_string(),
                    quantity: Quantity::from_units(*q),
                    price_cents: *p,
                })
                .collect(),
            total_cents: total,
        }
    }

    #[test]
    fn percent_floors_and_caps() {
        let c = campaign("id='a'\ncodes=['A']\ndiscount={percent=15}\nmax_discount_cents=1000");
        let k = cart(&[("1", 1, 999)], 999);
        let i = CheckInput {
            cart: &k,
            location: None,
            guest: None,
            now: 0,
        };
        assert_eq!(price(&c, &i), Ok(149)); // floor(149.85)
        let k = cart(&[("1", 1, 100_000)], 100_000);
        let i = CheckInput {
            cart: &k,
            location: None,
            guest: None,
            now: 0,
        };
        assert_eq!(price(&c, &i), Ok(1000));
    }

    #[test]
    fn amount_never_exceeds_total() {
        let c = campaign("id='a'\ncodes=['A']\ndiscount={amount_cents=500}");
        let k = cart(&[("1", 1, 300)], 300);
        let i = CheckInput {
            cart: &k,
            location: None,
            guest: None,
            now: 0,
        };
        assert_eq!(price(&c, &i), Ok(300));
    }

    #[test]
    fn item_scoped_discount_uses_only_matching_lines() {
        let c = campaign("id='a'\ncodes=['A']\ndiscount={percent=50}\nitems=['1001']");
        let k = cart(&[("1001", 2, 400), ("2", 1, 1000)], 1800);
        let i = CheckInput {
            cart: &k,
            location: None,
            guest: None,
            now: 0,
        };
        assert_eq!(price(&c, &i), Ok(400));
        let k = cart(&[("2", 1, 1000)], 1000);
        let i = CheckInput {
            cart: &k,
            location: None,
            guest: None,
            now: 0,
        };
        assert_eq!(price(&c, &i), Err(Rejection::NoEligibleItems));
    }

    #[test]
    fn capacity_distinguishes_held_from_used() {
        let c = campaign("id='a'\ncodes=['A']\ndiscount={percent=5}\nmax_uses=2");
        let u = Usage {
            campaign_used: 1,
            campaign_held: 1,
            ..Default::default()
        };
        assert_eq!(
            capacity(&c, &u, false, 0),
            Err(Rejection::VoucherHeld {
                scope: LimitScope::Campaign
            })
        );
        let u = Usage {
            campaign_used: 2,
            ..Default::default()
        };
        assert_eq!(
            capacity(&c, &u, false, 0),
            Err(Rejection::UsageLimitReached {
                scope: LimitScope::Campaign
            })
        );
        let u = Usage {
            campaign_used: 1,
            ..Default::default()
        };
        assert_eq!(capacity(&c, &u, false, 0), Ok(()));
    }
}
