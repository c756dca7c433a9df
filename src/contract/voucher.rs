//! Voucher requests and answers (check, commit, reactivate).

use serde::{Deserialize, Serialize};

use super::{check_transaction_id, ApiError};
use crate::voucher::Cart;

pub const MAX_CART_ITEMS: usize = 1000;
/// Ten billion cents: far above any real cart, far below overflow.
pub const MAX_CENTS: i64 = 10_000_000_000;

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct CheckRequest {
    pub code: String,
    pub cart: Cart,
    /// Where the guest is ordering; needed by campaigns limited to locations.
    #[serde(default, deserialize_with = "super::opt_opaque_id")]
    pub location_id: Option<String>,
    /// The Karma user, when the guest is known; needed for per-guest limits.
    #[serde(default, deserialize_with = "super::opt_opaque_id")]
    pub user_id: Option<String>,
}

impl CheckRequest {
    pub fn validate(&self) -> Result<(), ApiError> {
        if self.code.trim().is_empty() {
            return Err(ApiError::invalid("code", "must not be empty"));
        }
        if self.code.len() > 128 || self.code.chars().any(char::is_control) {
            return Err(ApiError::invalid(
                "code",
                "must be at most 128 characters, none of them control characters",
            ));
        }
        if !(0..=MAX_CENTS).contains(&self.cart.total_cents) {
            return Err(ApiError::invalid(
                "cart.totalCents",
                format!("must be between 0 and {MAX_CENTS}"),
            ));
        }
        if self.cart.items.len() > MAX_CART_ITEMS {
            return Err(ApiError::invalid(
                "cart.items",
                format!("at most {MAX_CART_ITEMS} lines"),
            ));
        }
        for (i, it) in self.cart.items.iter().enumerate() {
            if !(0..=MAX_CENTS).contains(&it.price_cents) {
                return Err(ApiError::invalid(
                    format!("cart.items[{i}].priceCents"),
                    format!("must be between 0 and {MAX_CENTS}"),
                ));
            }
            if it.inventory_item_id.len() > 128 {
                return Err(ApiError::invalid(
                    format!("cart.items[{i}].inventoryItemId"),
                    "at most 128 characters",
                ));
            }
        }
        for (field, v) in [("locationId", &self.location_id), ("userId", &self.user_id)] {
            if matches!(v, Some(s) if s.len() > 128 || s.chars().any(char::is_control)) {
                return Err(ApiError::invalid(field, "at most 128 printable characters"));
            }
        }
        Ok(())
    }
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct CheckSuccess {
    pub ok: bool,
    pub voucher_nr: String,
    pub discount_amount_cents: i64,
    pub expires_at: String,
    pub provider_ref: String,
}

/// Commit and reactivate share this body (CONTRACT-NOTES decision 3).
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct CommitRequest {
    pub amount_cents: i64,
    pub transaction_id: String,
    #[serde(default)]
    pub provider_ref: Option<String>,
}

impl CommitRequest {
    pub fn validate(&self) -> Result<(), ApiError> {
        check_transaction_id("transactionId", &self.transaction_id, "res_")?;
        if !(0..=MAX_CENTS).contains(&self.amount_cents) {
            return Err(ApiError::invalid(
                "amountCents",
                format!("must be between 0 and {MAX_CENTS}"),
            ));
        }
        if matches!(&self.provider_ref, Some(r) if r.len() > 128) {
            return Err(ApiError::invalid("providerRef", "at most 128 characters"));
        }
        Ok(())
    }
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct CommitSuccess {
    pub ok: bool,
    pub voucher_nr: String,
    pub amount_cents: i64,
    pub transaction_id: String,
}

/// `status` says what the reactivate did: `released` (a hold let go), `returned` (a
/// committed use given back), `already_released` or `unknown` (nothing to do: safe to repeat).
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ReactivateSuccess {
    pub ok: bool,
    pub status: &'static str,
    pub transaction_id: String,
}
