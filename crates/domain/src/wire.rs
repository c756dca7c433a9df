//! Wire helpers shared by the contract and the pure domains: the one rule table per field
//! name (ids, cents, envelope text), exact integers from decimal JSON literals, opaque ids
//! written as strings or integers, our deserializer sentences (read back by
//! `contract::parse`), and the spec-level pieces both domains' specs use (`FieldError`,
//! `StrOrInt`, `valid_id`, `MAX_CONFIG_CENTS`). It imports nothing of ours, so `contract`,
//! `voucher`, `loyalty` and `webhook` depend on it and not on each other.

use serde::de::Error as _;
use serde::{Deserialize, Deserializer, Serialize};

// ---- the rule table ------------------------------------------------------------------

/// Ten billion cents: far above any real cart, far below overflow.
pub const MAX_CENTS: i64 = 10_000_000_000;
/// The longest id or identifier accepted anywhere.
pub const MAX_ID_CHARS: usize = 128;

/// What a field must be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rule {
    /// 1-128 characters, not only blanks, no control characters.
    Id,
    /// A webhook envelope's `id` and `event`: 1-256 characters, not only blanks, no control
    /// characters (Karma's delivery ids and event names are not ours to shorten).
    EnvelopeText,
    /// An integer number of cents in 0..=MAX_CENTS.
    Cents,
}

/// The rule for a field name (the last segment of its path, without an index).
pub fn rule_for(field: &str) -> Option<Rule> {
    match field {
        "code" | "userId" | "locationId" | "memberId" | "identifier" | "loyaltyProgramId"
        | "purchaseId" | "rewardId" | "itemIds" | "inventoryItemId" | "providerRef" | "phone"
        | "email" | "cardNumber" => Some(Rule::Id),
        "id" | "event" => Some(Rule::EnvelopeText),
        "amountCents" | "totalCents" | "priceCents" | "purchaseAmountCents" => Some(Rule::Cents),
        _ => None,
    }
}

/// `cart.items[3].priceCents` → `priceCents`; `itemIds[0]` → `itemIds`.
fn field_name(path: &str) -> &str {
    let last = path.rsplit('.').next().unwrap_or(path);
    last.split('[').next().unwrap_or(last)
}

fn rule(path: &str) -> Rule {
    // A field missing from the table is a programming error caught by the unit test below;
    // on input it is held to the strictest text rule.
    rule_for(field_name(path)).unwrap_or(Rule::Id)
}

/// The sentence saying which rule `v` breaks as the field at `path`, if it breaks one.
pub fn text_rule_broken(path: &str, v: &str) -> Option<String> {
    // Text fields follow a length rule; a cents field is never text (see check_cents).
    let max = match rule(path) {
        Rule::EnvelopeText => 256,
        Rule::Id | Rule::Cents => MAX_ID_CHARS,
    };
    let ok = !v.trim().is_empty() && v.chars().count() <= max && !v.chars().any(char::is_control);
    (!ok).then(|| format!("must be 1-{max} characters, not blank, with no control characters"))
}

// ---- integers and opaque ids as written -----------------------------------------------

/// The exact integer a JSON number literal denotes, if it is one within i64 (or u64 when
/// `unsigned`): `500`, `500.0`, `5e2`, `5000e-1` are 500; `500.5` and `1e400` are not.
/// The literal has already been checked as JSON by serde_json; no float is involved.
pub fn exact_integer(literal: &str) -> Option<i128> {
    let (neg, rest) = match literal.strip_prefix('-') {
        Some(r) => (true, r),
        None => (false, literal),
    };
    let (mantissa, exp) = match rest.split_once(['e', 'E']) {
        Some((m, e)) => (m, e.parse::<i64>().ok()?),
        None => (rest, 0),
    };
    let (int, frac) = mantissa.split_once('.').unwrap_or((mantissa, ""));
    if int.is_empty() || !int.bytes().chain(frac.bytes()).all(|b| b.is_ascii_digit()) {
        return None;
    }
    let digits = format!("{int}{frac}");
    let digits = digits.trim_start_matches('0');
    let mut exp10 = exp.checked_sub(i64::try_from(frac.len()).ok()?)?;
    let trimmed = digits.trim_end_matches('0');
    exp10 = exp10.checked_add(i64::try_from(digits.len().checked_sub(trimmed.len())?).ok()?)?;
    if trimmed.is_empty() {
        return Some(0);
    }
    if exp10 < 0 || exp10.checked_add(i64::try_from(trimmed.len()).ok()?)? > 20 {
        return None;
    }
    let text = format!("{trimmed}{}", "0".repeat(usize::try_from(exp10).ok()?));
    let v: i128 = text.parse().ok()?;
    Some(if neg { v.checked_neg()? } else { v })
}

/// The text of a JSON value as written: numbers keep their literal.
pub(crate) fn raw<'de, D: Deserializer<'de>>(
    d: D,
) -> Result<Box<serde_json::value::RawValue>, D::Error> {
    Box::<serde_json::value::RawValue>::deserialize(d)
}

/// Deserialize an `i64` field, accepting exact integers written as decimals or exponents.
pub fn int<'de, D: Deserializer<'de>>(d: D) -> Result<i64, D::Error> {
    let r = raw(d)?;
    let text = r.get();
    if !text.starts_with(|c: char| c == '-' || c.is_ascii_digit()) {
        return Err(D::Error::custom(ours("must be an integer")));
    }
    exact_integer(text)
        .and_then(|v| i64::try_from(v).ok())
        .ok_or_else(|| {
            D::Error::custom(ours(
                "must be an integer (a number with no fractional part) within 64-bit range",
            ))
        })
}

/// Opaque ids (inventory items, locations, users) may arrive as strings or integers
/// (an integer may be written `12.0`); we keep their text.
pub fn opaque_id<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    let raw = raw(d)?;
    let text = raw.get();
    if text.starts_with('"') {
        return serde_json::from_str::<String>(text).map_err(D::Error::custom);
    }
    if text.starts_with(|c: char| c == '-' || c.is_ascii_digit()) {
        if let Some(v) =
            exact_integer(text).filter(|v| i64::try_from(*v).is_ok() || u64::try_from(*v).is_ok())
        {
            return Ok(v.to_string());
        }
    }
    Err(D::Error::custom(ours("must be a string or an integer id")))
}

pub fn opt_opaque_id<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    #[derive(Deserialize)]
    struct W(#[serde(deserialize_with = "opaque_id")] String);
    Ok(Option::<W>::deserialize(d)?.map(|w| w.0))
}

/// Marks an error message written by our own deserializers (see [`ours`]).
pub(crate) const OURS: char = '\u{1}';

/// A deserializer error message that is already our sentence about the value at its path.
pub(crate) fn ours(sentence: &str) -> String {
    format!("{OURS}{OURS}{sentence}")
}

/// Our sentence about `key` inside the object at the error's path.
pub(crate) fn ours_at(key: &str, sentence: &str) -> String {
    format!("{OURS}{key}{OURS}{sentence}")
}

// ---- spec pieces shared by the campaign and program specs -------------------------------

/// The largest amount of cents a config value may hold (ten trillion: a hundred billion
/// in currency units), so sums of held and spent cents stay far from overflow.
pub const MAX_CONFIG_CENTS: i64 = 10_000_000_000_000;

/// A problem in a spec, naming the key (relative to the campaign or program) and what is
/// wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldError {
    pub key: String,
    pub message: String,
}

impl FieldError {
    pub fn new(key: impl Into<String>, message: impl Into<String>) -> Self {
        FieldError {
            key: key.into(),
            message: message.into(),
        }
    }
}

/// Item and location ids are opaque: written as `"1001"` or `1001`, compared as text.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(untagged)]
pub enum StrOrInt {
    Str(String),
    Int(i64),
}

impl StrOrInt {
    pub fn into_text(self) -> String {
        match self {
            StrOrInt::Str(s) => s,
            StrOrInt::Int(i) => i.to_string(),
        }
    }
}

/// Ids of tenants, campaigns and rewards: what is safe in a URL path and a store key.
pub fn valid_id(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exact_integers() {
        for (s, v) in [
            ("500", Some(500)),
            ("500.0", Some(500)),
            ("5e2", Some(500)),
            ("5E+2", Some(500)),
            ("5000e-1", Some(500)),
            ("-0.0", Some(0)),
            ("0e999999", Some(0)),
            ("-12.000", Some(-12)),
            ("500.5", None),
            ("1e400", None),
            ("1000000000.0000000001", None),
            ("9223372036854775807", Some(i64::MAX as i128)),
        ] {
            assert_eq!(exact_integer(s), v, "{s}");
        }
    }

    #[test]
    fn every_validated_field_has_a_rule() {
        for f in [
            "code",
            "userId",
            "locationId",
            "identifier",
            "itemIds",
            "cart.items[2].inventoryItemId",
            "cart.totalCents",
        ] {
            assert!(rule_for(field_name(f)).is_some(), "{f}");
        }
        assert_eq!(field_name("itemIds[3]"), "itemIds");
        assert_eq!(field_name("cart.items[0].priceCents"), "priceCents");
    }
}
