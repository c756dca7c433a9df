//! A loyalty program as written in the config (`[[tenants.loyalty]]`) and as used: the
//! earn rule, item bonuses, tiers and rewards.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::wire::{valid_id, FieldError, StrOrInt};

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ProgramSpec {
    pub program_id: StrOrInt,
    pub earn: EarnSpec,
    #[serde(default)]
    pub signup_bonus: i64,
    #[serde(default)]
    pub item_bonus: BTreeMap<String, i64>,
    #[serde(default)]
    pub auto_enroll: bool,
    #[serde(default)]
    pub pending_days: i64,
    #[serde(default)]
    pub expire_days: Option<i64>,
    #[serde(default)]
    pub tiers: Vec<TierSpec>,
    #[serde(default)]
    pub rewards: Vec<RewardSpec>,
    /// Order sources earning in this program (`[[tenants.loyalty.sources]]`), as written:
    /// validated by `config::sources`, taken out before the program is built, never
    /// stored with a program.
    #[serde(default, skip_serializing)]
    pub sources: Vec<serde_json::Value>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct EarnSpec {
    pub points: i64,
    pub per_cents: i64,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct TierSpec {
    pub id: String,
    pub name: String,
    pub min_lifetime: i64,
    #[serde(default)]
    pub multiplier_percent: Option<i64>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct RewardSpec {
    pub id: String,
    pub title: String,
    #[serde(default)]
    pub description: String,
    pub points_cost: i64,
    #[serde(default)]
    pub category: Option<String>,
    #[serde(default)]
    pub image_url: Option<String>,
    #[serde(default)]
    pub stock: Option<i64>,
    #[serde(default)]
    pub code_pattern: Option<String>,
    #[serde(default = "yes")]
    pub active: bool,
}

fn yes() -> bool {
    true
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tier {
    pub id: String,
    pub name: String,
    pub min_lifetime: i64,
    pub multiplier_percent: i64,
}

pub const DAY_MS: i64 = 86_400_000;

/// Points earned per `per_cents` at most (the earn rule's `points`).
pub const MAX_EARN_POINTS: i64 = 1_000_000;
/// A bonus or the signup bonus at most.
pub const MAX_CONFIG_POINTS: i64 = 1_000_000_000_000;
pub use super::account::MAX_POINTS;
pub use crate::wire::MAX_CONFIG_CENTS;

#[derive(Debug, Clone)]
pub struct Program {
    /// Karma's loyaltyProgramId, as text.
    pub id: String,
    pub spec: ProgramSpec,
    /// Sorted by `min_lifetime`.
    pub tiers: Vec<Tier>,
}

/// `v` within `lo..=hi`, or an error at `key`.
fn within(key: String, v: i64, lo: i64, hi: i64) -> Result<(), FieldError> {
    if (lo..=hi).contains(&v) {
        Ok(())
    } else {
        Err(FieldError::new(key, format!("must be {lo}..={hi}")))
    }
}

/// The earn rule, bonuses, and the pending and expiry days.
fn check_earning(spec: &ProgramSpec) -> Result<(), FieldError> {
    within("earn.points".into(), spec.earn.points, 0, MAX_EARN_POINTS)?;
    within(
        "earn.per_cents".into(),
        spec.earn.per_cents,
        1,
        MAX_CONFIG_CENTS,
    )?;
    within(
        "signup_bonus".into(),
        spec.signup_bonus,
        0,
        MAX_CONFIG_POINTS,
    )?;
    for (item, b) in &spec.item_bonus {
        within(format!("item_bonus.{item}"), *b, 0, MAX_CONFIG_POINTS)?;
    }
    if !(0..=3650).contains(&spec.pending_days) {
        return Err(FieldError::new("pending_days", "must be 0..=3650"));
    }
    if matches!(spec.expire_days, Some(d) if !(1..=36500).contains(&d)) {
        return Err(FieldError::new(
            "expire_days",
            "must be 1..=36500 (omit for points that never expire)",
        ));
    }
    Ok(())
}

/// The tiers, checked and sorted by `min_lifetime` (no two the same).
fn tiers(specs: &[TierSpec]) -> Result<Vec<Tier>, FieldError> {
    let mut tiers = Vec::new();
    let mut seen = std::collections::HashSet::new();
    for (i, t) in specs.iter().enumerate() {
        if !valid_id(&t.id) || !seen.insert(t.id.clone()) {
            return Err(FieldError::new(
                format!("tiers[{i}].id"),
                "must be a unique id of A-Z a-z 0-9 - _ .",
            ));
        }
        within(
            format!("tiers[{i}].min_lifetime"),
            t.min_lifetime,
            0,
            MAX_POINTS,
        )?;
        let m = t.multiplier_percent.unwrap_or(100);
        if !(0..=1000).contains(&m) {
            return Err(FieldError::new(
                format!("tiers[{i}].multiplier_percent"),
                "must be 0..=1000",
            ));
        }
        tiers.push(Tier {
            id: t.id.clone(),
            name: t.name.clone(),
            min_lifetime: t.min_lifetime,
            multiplier_percent: m,
        });
    }
    tiers.sort_by_key(|t| t.min_lifetime);
    if tiers
        .windows(2)
        .any(|w| w[0].min_lifetime == w[1].min_lifetime)
    {
        return Err(FieldError::new(
            "tiers",
            "two tiers have the same min_lifetime",
        ));
    }
    Ok(tiers)
}

/// Reward `i` (its id already checked): cost, stock, code pattern, image.
fn check_reward(i: usize, r: &RewardSpec) -> Result<(), FieldError> {
    let k = |f: &str| format!("rewards[{i}].{f}");
    within(k("points_cost"), r.points_cost, 1, MAX_POINTS)?;
    if matches!(r.stock, Some(s) if s < 0) {
        return Err(FieldError::new(
            k("stock"),
            "must be >= 0 (omit for unlimited)",
        ));
    }
    if let Some(p) = &r.code_pattern {
        crate::codegen::check_pattern(p).map_err(|m| FieldError::new(k("code_pattern"), m))?;
        let cap = crate::codegen::capacity(p);
        if cap == 0
            || r.stock
                .is_some_and(|s| u128::try_from(s).unwrap_or(0) > cap)
        {
            return Err(FieldError::new(
                k("code_pattern"),
                format!(
                    "holds {} codes and may issue 1 % of them ({cap}): too few{}; use a longer pattern",
                    crate::codegen::space(p),
                    r.stock.map(|s| format!(" for a stock of {s}")).unwrap_or_default()
                ),
            ));
        }
    }
    if let Some(u) = &r.image_url {
        if !u.starts_with("https://") {
            return Err(FieldError::new(
                k("image_url"),
                "must be an absolute https:// URL",
            ));
        }
    }
    Ok(())
}

impl Program {
    pub fn from_spec(spec: ProgramSpec) -> Result<Program, FieldError> {
        let id = spec.program_id.clone().into_text();
        if !valid_id(&id) {
            return Err(FieldError::new(
                "program_id",
                "must be an integer or 1-64 of A-Z a-z 0-9 - _ .",
            ));
        }
        if !spec.sources.is_empty() {
            return Err(FieldError::new(
                "sources",
                "order sources are configured in the config file ([[tenants.loyalty.sources]])",
            ));
        }
        check_earning(&spec)?;
        let tiers = tiers(&spec.tiers)?;
        let mut rids = std::collections::HashSet::new();
        for (i, r) in spec.rewards.iter().enumerate() {
            if !valid_id(&r.id) || !rids.insert(r.id.clone()) {
                return Err(FieldError::new(
                    format!("rewards[{i}].id"),
                    "must be a unique id of A-Z a-z 0-9 - _ .",
                ));
            }
            check_reward(i, r)?;
        }
        Ok(Program { id, spec, tiers })
    }

    /// Points for a purchase: floor(amount / per_cents) × points, plus the bonus of each
    /// configured item present in `item_ids` (once per item), times the tier multiplier
    /// (floor). Integers only, checked: `None` when the result would exceed
    /// [`MAX_POINTS`] (or overflow on the way).
    pub fn award_points(
        &self,
        purchase_cents: i64,
        item_ids: &[String],
        lifetime: i64,
    ) -> Option<i64> {
        let earn = &self.spec.earn;
        let base = purchase_cents
            .max(0)
            .checked_div(earn.per_cents)?
            .checked_mul(earn.points)?;
        let mut sum = base;
        for (item, b) in &self.spec.item_bonus {
            if item_ids.iter().any(|i| i == item) {
                sum = sum.checked_add(*b)?;
            }
        }
        let mult = self
            .tier_for(lifetime)
            .map(|t| t.multiplier_percent)
            .unwrap_or(100);
        let points = sum.checked_mul(mult)? / 100;
        (points <= MAX_POINTS).then_some(points)
    }

    /// The highest tier whose threshold `lifetime` reaches; `None` without tiers or below
    /// the first threshold.
    pub fn tier_for(&self, lifetime: i64) -> Option<&Tier> {
        self.tiers.iter().rev().find(|t| lifetime >= t.min_lifetime)
    }

    pub fn reward(&self, id: &str) -> Option<&RewardSpec> {
        self.spec.rewards.iter().find(|r| r.id == id && r.active)
    }

    /// Bounded at load (`pending_days` ≤ 3650), so the product cannot overflow.
    pub fn pending_ms(&self) -> i64 {
        self.spec.pending_days.saturating_mul(DAY_MS)
    }

    /// Bounded at load (`expire_days` ≤ 36500), so the product cannot overflow.
    pub fn expire_ms(&self) -> Option<i64> {
        self.spec.expire_days.map(|d| d.saturating_mul(DAY_MS))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn program() -> Program {
        Program::from_spec(
            toml::from_str(
                r#"
program_id = 7
earn = { points = 1, per_cents = 100 }
item_bonus = { "1001" = 20 }
tiers = [ { id = "bronze", name = "Bronze", min_lifetime = 0 },
          { id = "silver", name = "Silver", min_lifetime = 500, multiplier_percent = 150 } ]
"#,
            )
            .unwrap(),
        )
        .unwrap()
    }

    #[test]
    fn earn_rule_bonus_and_multiplier_floor() {
        let p = program();
        assert_eq!(p.award_points(1299, &[], 0), Some(12));
        assert_eq!(
            p.award_points(1299, &["1001".into(), "1001".into()], 0),
            Some(32)
        );
        assert_eq!(p.award_points(1299, &[], 500), Some(18));
        assert_eq!(p.award_points(1099, &[], 500), Some(15)); // floor(10 * 1.5)
        assert_eq!(p.award_points(i64::MAX, &[], 500), None);
        assert_eq!(p.tier_for(499).unwrap().id, "bronze");
        assert_eq!(p.tier_for(500).unwrap().id, "silver");
    }
}
