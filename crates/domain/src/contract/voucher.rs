//! Voucher requests and answers (check, commit, reactivate).

use serde::{Deserialize, Serialize};

use super::rules::{check_cents, check_opt_text, check_text};
use super::{check_transaction_id, ApiError};
use crate::voucher::Cart;

pub const MAX_CART_ITEMS: usize = 1000;
pub use super::rules::MAX_CENTS;

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
        check_text("code", &self.code)?;
        check_cents("cart.totalCents", self.cart.total_cents)?;
        if self.cart.items.len() > MAX_CART_ITEMS {
            return Err(ApiError::invalid(
                "cart.items",
                format!("must hold at most {MAX_CART_ITEMS} lines"),
            ));
        }
        for (i, it) in self.cart.items.iter().enumerate() {
            check_cents(&format!("cart.items[{i}].priceCents"), it.price_cents)?;
            check_text(
                &format!("cart.items[{i}].inventoryItemId"),
                &it.inventory_item_id,
            )?;
        }
        check_opt_text("locationId", &self.location_id)?;
        check_opt_text("userId", &self.user_id)
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
    #[serde(deserialize_with = "super::rules::int")]
    pub amount_cents: i64,
    pub transaction_id: String,
    #[serde(default)]
    pub provider_ref: Option<String>,
}

impl CommitRequest {
    pub fn validate(&self) -> Result<(), ApiError> {
        check_transaction_id("transactionId", &self.transaction_id, "res_")?;
        check_cents("amountCents", self.amount_cents)?;
        check_opt_text("providerRef", &self.provider_ref)
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
