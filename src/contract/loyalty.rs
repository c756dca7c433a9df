//! Loyalty requests and answers (lookup, enroll, award, account, rewards, redeem), with
//! the seed's field names.

use serde::{Deserialize, Serialize};

use super::{check_transaction_id, opaque_id, opt_opaque_id, ApiError};

fn printable(field: &str, v: &str) -> Result<(), ApiError> {
    if v.trim().is_empty() || v.len() > 128 || v.chars().any(char::is_control) {
        return Err(ApiError::invalid(
            field,
            "must be 1-128 printable characters",
        ));
    }
    Ok(())
}

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
        printable("userId", &self.user_id)
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
        printable("userId", &self.user_id)?;
        printable("purchaseId", &self.purchase_id)?;
        if !(0..=super::voucher::MAX_CENTS).contains(&self.purchase_amount_cents) {
            return Err(ApiError::invalid(
                "purchaseAmountCents",
                format!("must be between 0 and {}", super::voucher::MAX_CENTS),
            ));
        }
        if self.item_ids.len() > 1000 {
            return Err(ApiError::invalid("itemIds", "at most 1000 items"));
        }
        Ok(())
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct AccountRequest {
    #[serde(deserialize_with = "opaque_id")]
    pub user_id: String,
    #[serde(deserialize_with = "opaque_id")]
    pub loyalty_program_id: String,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RewardsRequest {
    #[serde(deserialize_with = "opaque_id")]
    pub loyalty_program_id: String,
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
        printable("userId", &self.user_id)?;
        printable("rewardId", &self.reward_id)
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
