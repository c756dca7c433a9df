//! The one rule table of the wire contract: every field name maps to one rule, and every
//! endpoint checks its fields through [`check_text`] / [`check_cents`], so the same field
//! is held to the same rule wherever it appears (check, commit, reactivate, the six
//! loyalty calls). The table itself, and the exact integer reading used for every integer
//! field (JSON numbers written `500`, `500.0` or `5e2` are the integer 500; `500.5` is
//! refused), live in `crate::wire`, which the domains share; this module turns a broken
//! rule into the contract's [`ApiError`].

use super::ApiError;
pub use crate::wire::{
    exact_integer, int, rule_for, text_rule_broken, Rule, MAX_CENTS, MAX_ID_CHARS,
};

/// Check a text field at `path` against its rule.
pub fn check_text(path: &str, v: &str) -> Result<(), ApiError> {
    text_rule_broken(path, v).map_or(Ok(()), |why| Err(ApiError::invalid(path, why)))
}

/// Check an optional text field: absent or `null` is fine, a present value follows the rule.
pub fn check_opt_text(path: &str, v: &Option<String>) -> Result<(), ApiError> {
    v.as_deref().map_or(Ok(()), |s| check_text(path, s))
}

/// Check an integer field at `path` against its rule.
pub fn check_cents(path: &str, v: i64) -> Result<(), ApiError> {
    if (0..=MAX_CENTS).contains(&v) {
        Ok(())
    } else {
        Err(ApiError::invalid(
            path,
            format!("must be an integer number of cents between 0 and {MAX_CENTS}"),
        ))
    }
}
