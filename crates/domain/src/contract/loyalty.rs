//! Loyalty requests and answers (lookup, enroll, award, account, rewards, redeem), with
//! the seed's field names.

use serde::{Deserialize, Serialize};

use super::rules::{check_cents, check_opt_text, check_text};
use super::{check_transaction_id, opaque_id, opt_opaque_id, ApiError};

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct LookupRequest {
    #[serde(default, deserialize_with = "opt_opaque_id")]
    pub location_id: Option<String>,
    #[serde(deserialize_with = "opaque_id")]
    pub loyalty_program_id: String,
    pub identifier: String,
    pub identifier_type: String,
}

impl LookupRequest {
    pub fn validate(&self) -> Result<(), ApiError> {
        check_opt_text("locationId", &self.location_id)?;
        check_text("loyaltyProgramId", &self.loyalty_program_id)?;
        check_text("identifier", &self.identifier)
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct EnrollRequest {
    #[serde(deserialize_with = "opaque_id")]
    pub user_id: String,
    #[serde(deserialize_with = "opaque_id")]
    pub loyalty_program_id: String,
    #[serde(default, deserialize_with = "opt_opaque_id")]
    pub location_id: Option<String>,
    /// Extensions (not in Karma's schema): identifiers to link at sign-up.
    #[serde(default)]
    pub phone: Option<String>,
    #[serde(default)]
    pub email: Option<String>,
    #[serde(default)]
    pub card_number: Option<String>,
}

impl EnrollRequest {
    pub fn validate(&self) -> Result<(), ApiError> {
        check_text("userId", &self.user_id)?;
        check_text("loyaltyProgramId", &self.loyalty_program_id)?;
        check_opt_text("locationId", &self.location_id)?;
        check_opt_text("phone", &self.phone)?;
        check_opt_text("email", &self.email)?;
        check_opt_text("cardNumber", &self.card_number)
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct AwardRequest {
    #[serde(deserialize_with = "opaque_id")]
    pub user_id: String,
    #[serde(deserialize_with = "opaque_id")]
    pub loyalty_program_id: String,
    #[serde(deserialize_with = "opaque_id")]
    pub purchase_id: String,
    #[serde(deserialize_with = "super::rules::int")]
    pub purchase_amount_cents: i64,
    #[serde(default, deserialize_with = "opaque_ids")]
    pub item_ids: Vec<String>,
    pub transaction_id: String,
}

fn opaque_ids<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    #[derive(Deserialize)]
    struct W(#[serde(deserialize_with = "opaque_id")] String);
    Ok(Vec::<W>::deserialize(d)?.into_iter().map(|w| w.0).collect())
}

impl AwardRequest {
    pub fn validate(&self) -> Result<(), ApiError> {
        check_transaction_id("transactionId", &self.transaction_id, "loy_")?;
        check_text("userId", &self.user_id)?;
        check_text("loyaltyProgramId", &self.loyalty_program_id)?;
        check_text("purchaseId", &self.purchase_id)?;
        check_cents("purchaseAmountCents", self.purchase_amount_cents)?;
        if self.item_ids.len() > MAX_ITEM_IDS {
            return Err(ApiError::invalid(
                "itemIds",
                format!("must hold at most {MAX_ITEM_IDS} ids"),
            ));
        }
        for (i, id) in self.item_ids.iter().enumerate() {
            check_text(&format!("itemIds[{i}]"), id)?;
        }
        Ok(())
    }
}

/// The most `itemIds` an award may carry.
pub const MAX_ITEM_IDS: usize = 1000;

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct AccountRequest {
    #[serde(deserialize_with = "opaque_id")]
    pub user_id: String,
    #[serde(deserialize_with = "opaque_id")]
    pub loyalty_program_id: String,
}

impl AccountRequest {
    pub fn validate(&self) -> Result<(), ApiError> {
        check_text("userId", &self.user_id)?;
        check_text("loyaltyProgramId", &self.loyalty_program_id)
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RewardsRequest {
    #[serde(deserialize_with = "opaque_id")]
    pub loyalty_program_id: String,
}

impl RewardsRequest {
    pub fn validate(&self) -> Result<(), ApiError> {
        check_text("loyaltyProgramId", &self.loyalty_program_id)
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RedeemRequest {
    #[serde(deserialize_with = "opaque_id")]
    pub user_id: String,
    #[serde(deserialize_with = "opaque_id")]
    pub loyalty_program_id: String,
    #[serde(deserialize_with = "opaque_id")]
    pub reward_id: String,
    pub transaction_id: String,
}

impl RedeemRequest {
    pub fn validate(&self) -> Result<(), ApiError> {
        check_transaction_id("transactionId", &self.transaction_id, "loy_")?;
        check_text("userId", &self.user_id)?;
        check_text("loyaltyProgramId", &self.loyalty_program_id)?;
        check_text("rewardId", &self.reward_id)
    }
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct LookupSuccess {
    pub ok: bool,
    pub member_id: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub user_id: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct EnrollSuccess {
    pub ok: bool,
    pub member_id: String,
    pub points_awarded: i64,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct AwardSuccess {
    pub ok: bool,
    pub points_awarded: i64,
    pub new_balance: i64,
    pub tier_changed: bool,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct AccountSuccess {
    pub ok: bool,
    pub current_balance: i64,
    pub lifetime_earned: i64,
    pub tier_name: Option<String>,
    pub tier_id: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Reward {
    pub reward_id: String,
    pub title: String,
    pub description: String,
    pub points_cost: i64,
    pub category: Option<String>,
    pub image_url: Option<String>,
    pub stock_remaining: Option<i64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct RewardsSuccess {
    pub ok: bool,
    pub rewards: Vec<Reward>,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RedeemSuccess {
    pub ok: bool,
    pub redemption_id: String,
    pub generated_code: Option<String>,
    pub new_balance: i64,
}
