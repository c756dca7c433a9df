//! Member identifiers (lookup types and their normalisation). Reward codes come from
//! [`crate::codegen`], the generator gift codes use too.

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IdentifierType {
    Phone,
    Email,
    Card,
    MemberId,
    UserId,
}

pub const IDENTIFIER_TYPES: &str = "phone, email, card, memberId, userId";

impl IdentifierType {
    /// Case-insensitive (CONTRACT-NOTES decision 5).
    pub fn parse(s: &str) -> Option<IdentifierType> {
        match s.trim().to_ascii_lowercase().as_str() {
            "phone" => Some(IdentifierType::Phone),
            "email" => Some(IdentifierType::Email),
            "card" => Some(IdentifierType::Card),
            "memberid" => Some(IdentifierType::MemberId),
            "userid" => Some(IdentifierType::UserId),
            _ => None,
        }
    }

    pub fn key(self) -> &'static str {
        match self {
            IdentifierType::Phone => "phone",
            IdentifierType::Email => "email",
            IdentifierType::Card => "card",
            IdentifierType::MemberId => "member",
            IdentifierType::UserId => "user",
        }
    }
}

/// Phones → E.164 digits (`+46 70-123 45 67` and `0046701234567` → `46701234567`);
/// emails → trimmed, lowercased; cards → without spaces and dashes, uppercased.
pub fn normalize_identifier(t: IdentifierType, raw: &str) -> Result<String, &'static str> {
    let s = raw.trim();
    let out = match t {
        IdentifierType::Phone => {
            if s.chars()
                .any(|c| !(c.is_ascii_digit() || " +-().".contains(c)))
            {
                return Err("a phone number has only digits, spaces, + - ( ) .");
            }
            let digits: String = s.chars().filter(char::is_ascii_digit).collect();
            let digits = if !s.starts_with('+') && digits.starts_with("00") {
                digits[2..].to_owned()
            } else {
                digits
            };
            if !(6..=15).contains(&digits.len()) {
                return Err("a phone number has 6 to 15 digits");
            }
            digits
        }
        IdentifierType::Email => {
            let e = s.to_lowercase();
            if !e.contains('@') {
                return Err("not an email address");
            }
            e
        }
        IdentifierType::Card => s
            .chars()
            .filter(|c| !c.is_whitespace() && *c != '-')
            .flat_map(char::to_uppercase)
            .collect(),
        IdentifierType::MemberId | IdentifierType::UserId => s.to_owned(),
    };
    // The input is already 1-128 characters without control characters (the contract's
    // id rule); normalising only removes characters or changes their case.
    if out.is_empty() || out.chars().any(char::is_control) {
        return Err("must contain a character other than spaces and dashes");
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalises() {
        let p = |s| normalize_identifier(IdentifierType::Phone, s);
        assert_eq!(p("+46 70-123 45 67").unwrap(), "46701234567");
        assert_eq!(p("0046701234567").unwrap(), "46701234567");
        assert!(p("call me").is_err());
        assert_eq!(
            normalize_identifier(IdentifierType::Email, "  Ann@Example.COM ").unwrap(),
            "ann@example.com"
        );
        assert_eq!(
            normalize_identifier(IdentifierType::Card, "1234 5678-ab").unwrap(),
            "12345678AB"
        );
        assert_eq!(
            IdentifierType::parse("MemberID"),
            Some(IdentifierType::MemberId)
        );
        assert_eq!(IdentifierType::parse("ssn"), None);
    }
}
