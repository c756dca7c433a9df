//! Generated codes — gift codes (`codes generate`, admin `…/codes/generate`) and reward
//! codes (`generatedCode` on redeem) — from one generator: each `#` is a digit 2-9 and each
//! `?` a letter without I, L, O, drawn uniformly (rejection sampling in `rand`'s uniform
//! ranges, no modulo bias) from a CSPRNG the caller passes in; anything else is literal.
//! The service and the CLI pass [`os_rng`]: rand's `StdRng` (ChaCha12) seeded afresh from
//! the operating system's CSPRNG for each generation, so nothing a client knows (tenant,
//! campaign, time, ids) determines a code.
//!
//! Guessing odds: at most [`MAX_SHARE_DIVISOR`]-th of a pattern's space may ever be issued
//! ([`capacity`]), so a guess that fits the pattern hits a live code with odds below 1 in
//! 100. [`check_room`] enforces it against a running count of the codes issued per pattern.

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// Digits without the look-alikes 0 and 1.
pub const DIGITS: &[u8] = b"23456789";
/// Letters without the look-alikes I, L and O.
pub const LETTERS: &[u8] = b"ABCDEFGHJKMNPQRSTUVWXYZ";
/// A pattern may issue at most 1/100 of its space (the 1 % guessing-odds rule).
pub const MAX_SHARE_DIVISOR: u128 = 100;
/// The longest pattern.
pub const MAX_PATTERN_LEN: usize = 64;

/// The random source of the service and the CLI: a CSPRNG seeded from the operating
/// system's random source. `Err` (the OS refused) is an internal error, never a panic.
pub fn os_rng() -> Result<StdRng, String> {
    StdRng::try_from_os_rng()
        .map_err(|e| format!("the operating system's random source failed: {e}"))
}

/// A secret token (console session ids and CSRF tokens, the demo's admin token): 32 bytes
/// straight from the operating system's CSPRNG, hex-encoded; `None` when the OS refuses.
pub fn os_token() -> Option<String> {
    use rand::TryRngCore;
    let mut b = [0u8; 32];
    rand::rngs::OsRng.try_fill_bytes(&mut b).ok()?;
    Some(hex::encode(b))
}

/// Whether `pattern` can make codes: at least one `#` or `?`, at most 64 printable
/// characters. `Err` says what is wrong.
pub fn check_pattern(pattern: &str) -> Result<(), String> {
    if !pattern.contains(['#', '?'])
        || pattern.len() > MAX_PATTERN_LEN
        || pattern.chars().any(char::is_control)
    {
        return Err(format!(
            "needs at least one # (digit) or ? (letter), at most {MAX_PATTERN_LEN} printable characters"
        ));
    }
    Ok(())
}

/// One code from `pattern`, every `#`/`?` drawn uniformly from its alphabet.
pub fn fill<R: Rng + ?Sized>(pattern: &str, rng: &mut R) -> String {
    let mut pick = |alphabet: &[u8]| char::from(alphabet[rng.random_range(0..alphabet.len())]);
    pattern
        .chars()
        .map(|c| match c {
            '#' => pick(DIGITS),
            '?' => pick(LETTERS),
            other => other,
        })
        .collect()
}

/// How many distinct codes a pattern can make (saturating at `u128::MAX`).
pub fn space(pattern: &str) -> u128 {
    pattern.chars().fold(1u128, |acc, c| match c {
        '#' => acc.saturating_mul(DIGITS.len() as u128),
        '?' => acc.saturating_mul(LETTERS.len() as u128),
        _ => acc,
    })
}

/// How many codes a pattern may issue in all: 1 % of its space.
pub fn capacity(pattern: &str) -> u128 {
    space(pattern) / MAX_SHARE_DIVISOR
}

/// Why a generation is refused: the field to name and the message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NoRoom {
    /// `count` when more codes were asked than the pattern holds at all, else `pattern`.
    pub field: &'static str,
    pub message: String,
}

/// Whether `count` more codes fit `pattern` when `issued` were issued from it before.
pub fn check_room(pattern: &str, issued: u64, count: u64) -> Result<(), NoRoom> {
    let (space, cap) = (space(pattern), capacity(pattern));
    if u128::from(count) > space {
        return Err(NoRoom {
            field: "count",
            message: format!(
                "pattern {pattern:?} holds only {space} distinct codes; {count} were asked"
            ),
        });
    }
    let total = u128::from(issued).saturating_add(u128::from(count));
    if total > cap {
        return Err(NoRoom {
            field: "pattern",
            message: format!(
                "pattern {pattern:?} holds {space} codes and may issue at most 1 % of them \
                 ({cap}) so that guessing stays unlikely; {issued} were issued before and \
                 {count} more were asked: use a longer pattern"
            ),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_follow_the_pattern() {
        let mut rng = os_rng().unwrap();
        let c = fill("SUMMER-####-????", &mut rng);
        assert!(c.starts_with("SUMMER-") && c.len() == 16);
        assert!(c[7..11].bytes().all(|b| DIGITS.contains(&b)));
        assert!(c[12..].bytes().all(|b| LETTERS.contains(&b)));
        assert_eq!(space("##"), 64);
        assert_eq!(capacity("X-####"), 40);
    }

    #[test]
    fn identical_inputs_give_different_codes() {
        let a = fill("????????????", &mut os_rng().unwrap());
        let b = fill("????????????", &mut os_rng().unwrap());
        assert_ne!(a, b);
    }

    #[test]
    fn room_counts_what_was_issued_before() {
        assert_eq!(check_room("X-####", 0, 40), Ok(()));
        assert_eq!(check_room("X-####", 30, 11).unwrap_err().field, "pattern");
        assert_eq!(check_room("##", 0, 65).unwrap_err().field, "count");
        assert_eq!(check_room("##", 0, 1).unwrap_err().field, "pattern");
        assert!(check_pattern("ABC").is_err());
        assert!(check_pattern("A\u{1f}#").is_err());
    }

    /// Chi-square per position over 100 000 codes: each position of `##??` is uniform over
    /// its alphabet. The bounds are the 99.99th percentiles of the chi-square distribution
    /// (df 7: 29.9; df 22: 55.5), so a fair generator fails with odds about 1 in 2 500; a
    /// modulo-biased one (a byte % 23) lands near 90 on a letter position.
    #[test]
    fn every_position_is_uniform_over_its_alphabet() {
        const N: usize = 100_000;
        let mut rng = os_rng().unwrap();
        let mut counts = [vec![0u32; 8], vec![0u32; 8], vec![0u32; 23], vec![0u32; 23]];
        for _ in 0..N {
            let c = fill("##??", &mut rng).into_bytes();
            for (i, b) in c.iter().enumerate() {
                let alphabet = if i < 2 { DIGITS } else { LETTERS };
                counts[i][alphabet.iter().position(|a| a == b).unwrap()] += 1;
            }
        }
        for (i, pos) in counts.iter().enumerate() {
            let e = N as f64 / pos.len() as f64;
            let chi: f64 = pos.iter().map(|&o| (f64::from(o) - e).powi(2) / e).sum();
            let bound = if i < 2 { 29.9 } else { 55.5 };
            assert!(
                chi < bound,
                "position {i}: chi-square {chi:.1}, counts {pos:?}"
            );
        }
    }
}
