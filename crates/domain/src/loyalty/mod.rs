//! Loyalty decisions as plain functions, with no I/O: programs (earn rule, item bonuses,
//! tiers, rewards), a member's account as credit lots (pending, spendable, expiring, spent
//! oldest first), every change as a ledger entry, reversals, and identifier normalisation.
//! The store and the clock are the caller's.

mod account;
mod ids;
mod program;

pub use account::{
    Account, Credit, Entry, EntryKind, Ledger, Lot, LotRead, LotStore, MemLots, Spent, SpentPart,
    TooManyPoints, Why, MAX_POINTS,
};
pub use ids::{normalize_identifier, IdentifierType, IDENTIFIER_TYPES};
pub use program::{Program, ProgramSpec, RewardSpec, Tier, TierSpec};

/// Why a loyalty call is refused; each maps to a stable `error` code.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    ProgramNotFound,
    MemberNotFound,
    RewardNotFound,
    OutOfStock,
    InsufficientPoints { balance: i64, needed: i64 },
    AwardNotFound,
    RedemptionNotFound,
    AlreadyReversed,
}

impl Refusal {
    pub fn code(&self) -> &'static str {
        match self {
            Refusal::ProgramNotFound => "PROGRAM_NOT_FOUND",
            Refusal::MemberNotFound => "MEMBER_NOT_FOUND",
            Refusal::RewardNotFound => "REWARD_NOT_FOUND",
            Refusal::OutOfStock => "OUT_OF_STOCK",
            Refusal::InsufficientPoints { .. } => "INSUFFICIENT_POINTS",
            Refusal::AwardNotFound => "AWARD_NOT_FOUND",
            Refusal::RedemptionNotFound => "REDEMPTION_NOT_FOUND",
            Refusal::AlreadyReversed => "ALREADY_REVERSED",
        }
    }

    pub fn message(&self) -> String {
        match self {
            Refusal::ProgramNotFound => "No loyalty program with this loyaltyProgramId.".into(),
            Refusal::MemberNotFound => "No member matches; enroll the guest first.".into(),
            Refusal::RewardNotFound => "No active reward with this rewardId.".into(),
            Refusal::OutOfStock => "This reward is out of stock.".into(),
            Refusal::InsufficientPoints { balance, needed } => {
                format!("This needs {needed} points; the spendable balance is {balance}.")
            }
            Refusal::AwardNotFound => "No award matches this purchaseId or transactionId.".into(),
            Refusal::RedemptionNotFound => "No redemption with this redemptionId.".into(),
            Refusal::AlreadyReversed => "This was already fully reversed.".into(),
        }
    }
}
