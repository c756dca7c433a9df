//! A campaign as users write it ([`CampaignSpec`], the same keys in TOML and in the admin
//! API's JSON) and as the decisions use it ([`Campaign`]: parsed, checked, ready).

use serde::{Deserialize, Serialize};

use crate::clock::Millis;
use crate::wire::{valid_id, FieldError, StrOrInt, MAX_CONFIG_CENTS};

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct CampaignSpec {
    pub id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    #[serde(default)]
    pub codes: Vec<String>,
    pub discount: DiscountSpec,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_discount_cents: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_total_cents: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub items: Option<Vec<StrOrInt>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub valid_from: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub valid_until: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub schedule: Option<ScheduleSpec>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub locations: Option<Vec<StrOrInt>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_uses: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_uses_per_code: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_uses_per_guest: Option<u64>,
    /// Budget: the sum of committed discounts plus live holds may not exceed this.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_discount_total_cents: Option<i64>,
    /// Per-campaign vendor rules (see `rules` in the docs).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rules: Option<RulesSpec>,
}

/// A vendor's own decision service: `{ http = "https://…", secret_env = "…", timeout = "800ms" }`
/// (`secret_env` is resolved by the config loader into `secret`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct RulesSpec {
    pub http: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_env: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_file: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct DiscountSpec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub percent: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub amount_cents: Option<i64>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct ScheduleSpec {
    pub days: Vec<String>,
    pub from: String,
    pub until: String,
    pub timezone: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Discount {
    Percent(u32),
    AmountCents(i64),
}

/// Weekly opening window in a named time zone. `from > until` means the window runs past
/// midnight into the next day (22:00–02:00 on a Friday covers Saturday 01:00).
#[derive(Debug, Clone)]
pub struct Schedule {
    /// Bit i set = weekday i allowed, Monday = 0.
    days: u8,
    from_min: u32,
    until_min: u32,
    tz: jiff::tz::TimeZone,
}

impl Schedule {
    pub fn contains(&self, now: Millis) -> bool {
        let Ok(ts) = jiff::Timestamp::from_millisecond(now) else {
            return false;
        };
        let local = ts.to_zoned(self.tz.clone());
        let minute = u32::from(local.hour().unsigned_abs())
            .saturating_mul(60)
            .saturating_add(u32::from(local.minute().unsigned_abs()));
        let day = local.weekday().to_monday_zero_offset().unsigned_abs();
        let prev = day.checked_sub(1).unwrap_or(6);
        let on = |d: u8| self.days & (1 << d) != 0;
        if self.from_min <= self.until_min {
            on(day) && minute >= self.from_min && minute < self.until_min
        } else {
            (on(day) && minute >= self.from_min) || (on(prev) && minute < self.until_min)
        }
    }
}

#[derive(Debug, Clone)]
pub struct Campaign {
    pub id: String,
    pub spec: CampaignSpec,
    pub discount: Discount,
    pub max_discount_cents: Option<i64>,
    pub min_total_cents: Option<i64>,
    pub items: Option<Vec<String>>,
    pub valid_from: Option<Millis>,
    pub valid_until: Option<Millis>,
    pub schedule: Option<Schedule>,
    pub locations: Option<Vec<String>>,
    pub max_uses: Option<u64>,
    pub max_uses_per_code: Option<u64>,
    pub max_uses_per_guest: Option<u64>,
    pub max_discount_total_cents: Option<i64>,
}

fn parse_time(key: &str, s: &str) -> Result<Millis, FieldError> {
    s.parse::<jiff::Timestamp>()
        .map(|t| t.as_millisecond())
        .map_err(|e| {
            FieldError::new(
                key,
                format!("expected an RFC 3339 instant like 2026-01-01T00:00:00Z: {e}"),
            )
        })
}

fn parse_hhmm(key: &str, s: &str) -> Result<u32, FieldError> {
    let bad = || FieldError::new(key, format!("expected HH:MM (24-hour), got {s:?}"));
    let (h, m) = s.split_once(':').ok_or_else(bad)?;
    let (h, m): (u32, u32) = (h.parse().map_err(|_| bad())?, m.parse().map_err(|_| bad())?);
    if h == 24 && m == 0 {
        return Ok(24 * 60);
    }
    if h > 23 || m > 59 || s.len() != 5 {
        return Err(bad());
    }
    Ok(h.saturating_mul(60).saturating_add(m))
}

impl Campaign {
    pub fn from_spec(spec: CampaignSpec) -> Result<Campaign, FieldError> {
        if !valid_id(&spec.id) {
            return Err(FieldError::new(
                "id",
                "must be 1-64 characters of A-Z a-z 0-9 - _ .",
            ));
        }
        for (i, code) in spec.codes.iter().enumerate() {
            if code.trim().is_empty() || code.len() > 128 || code.chars().any(char::is_control) {
                return Err(FieldError::new(
                    format!("codes[{i}]"),
                    "a code must be 1-128 characters without control characters",
                ));
            }
        }
        let discount = match (spec.discount.percent, spec.discount.amount_cents) {
            (Some(p), None) if (1..=100).contains(&p) => Discount::Percent(p),
            (Some(_), None) => return Err(FieldError::new("discount.percent", "must be 1..=100")),
            (None, Some(a)) if (1..=MAX_CONFIG_CENTS).contains(&a) => Discount::AmountCents(a),
            (None, Some(_)) => {
                return Err(FieldError::new(
                    "discount.amount_cents",
                    format!("must be 1..={MAX_CONFIG_CENTS}"),
                ))
            }
            _ => {
                return Err(FieldError::new(
                    "discount",
                    "give exactly one of { percent = N } or { amount_cents = N }",
                ))
            }
        };
        for (key, v) in [
            ("max_discount_cents", spec.max_discount_cents),
            ("min_total_cents", spec.min_total_cents),
            ("max_discount_total_cents", spec.max_discount_total_cents),
        ] {
            if matches!(v, Some(x) if !(0..=MAX_CONFIG_CENTS).contains(&x)) {
                return Err(FieldError::new(
                    key,
                    format!("must be 0..={MAX_CONFIG_CENTS}"),
                ));
            }
        }
        let valid_from = spec
            .valid_from
            .as_deref()
            .map(|s| parse_time("valid_from", s))
            .transpose()?;
        let valid_until = spec
            .valid_until
            .as_deref()
            .map(|s| parse_time("valid_until", s))
            .transpose()?;
        if let (Some(f), Some(u)) = (valid_from, valid_until) {
            if f > u {
                return Err(FieldError::new("valid_until", "is before valid_from"));
            }
        }
        let schedule = spec.schedule.as_ref().map(parse_schedule).transpose()?;
        Ok(Campaign {
            id: spec.id.clone(),
            discount,
            max_discount_cents: spec.max_discount_cents,
            min_total_cents: spec.min_total_cents,
            items: spec
                .items
                .clone()
                .map(|v| v.into_iter().map(StrOrInt::into_text).collect()),
            valid_from,
            valid_until,
            schedule,
            locations: spec
                .locations
                .clone()
                .map(|v| v.into_iter().map(StrOrInt::into_text).collect()),
            max_uses: spec.max_uses,
            max_uses_per_code: spec.max_uses_per_code,
            max_uses_per_guest: spec.max_uses_per_guest,
            max_discount_total_cents: spec.max_discount_total_cents,
            spec,
        })
    }
}

fn parse_schedule(s: &ScheduleSpec) -> Result<Schedule, FieldError> {
    const NAMES: [&str; 7] = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"];
    let mut days = 0u8;
    for (i, d) in s.days.iter().enumerate() {
        let lower = d.to_ascii_lowercase();
        let Some(pos) = NAMES
            .iter()
            .position(|n| lower.starts_with(n) && lower.len() >= 3)
        else {
            return Err(FieldError::new(
                format!("schedule.days[{i}]"),
                format!("unknown day {d:?}; use mon tue wed thu fri sat sun"),
            ));
        };
        days |= 1 << pos;
    }
    if days == 0 {
        return Err(FieldError::new("schedule.days", "name at least one day"));
    }
    let tz = jiff::tz::TimeZone::get(&s.timezone).map_err(|_| {
        FieldError::new(
            "schedule.timezone",
            format!("unknown IANA time zone {:?}", s.timezone),
        )
    })?;
    let from_min = parse_hhmm("schedule.from", &s.from)?;
    let until_min = parse_hhmm("schedule.until", &s.until)?;
    if from_min == until_min {
        return Err(FieldError::new("schedule.until", "equals schedule.from"));
    }
    Ok(Schedule {
        days,
        from_min,
        until_min,
        tz,
    })
}

/// How typed codes are compared with configured ones (per tenant).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum CodeMatch {
    Exact,
    CaseInsensitive,
    /// Trim, ignore case, spaces and dashes: " welcome-10 " matches "WELCOME10".
    #[default]
    Normalized,
}

/// The key a code is indexed and looked up by under a matching mode.
pub fn match_key(mode: CodeMatch, code: &str) -> String {
    match mode {
        CodeMatch::Exact => code.to_owned(),
        CodeMatch::CaseInsensitive => code.to_uppercase(),
        CodeMatch::Normalized => code
            .chars()
            .filter(|c| !c.is_whitespace() && *c != '-' && *c != '\u{2010}' && *c != '\u{2013}')
            .flat_map(char::to_uppercase)
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalized_matching() {
        assert_eq!(
            match_key(CodeMatch::Normalized, " welcome-10 "),
            "WELCOME10"
        );
        assert_eq!(
            match_key(CodeMatch::Normalized, "We Lc-ome 1 0"),
            "WELCOME10"
        );
        assert_eq!(match_key(CodeMatch::CaseInsensitive, "abc-1"), "ABC-1");
        assert_eq!(match_key(CodeMatch::Exact, "abc-1"), "abc-1");
    }

    fn sched(days: &[&str], from: &str, until: &str) -> Schedule {
        parse_schedule(&ScheduleSpec {
            days: days.iter().map(|s| s.to_string()).collect(),
            from: from.into(),
            until: until.into(),
            timezone: "Europe/Stockholm".into(),
        })
        .unwrap()
    }

    fn at(s: &str) -> Millis {
        s.parse::<jiff::Timestamp>().unwrap().as_millisecond()
    }

    #[test]
    fn schedule_in_local_time() {
        let s = sched(&["mon", "tue"], "11:00", "14:00");
        // 2026-11-23 is a Monday; Stockholm is UTC+1 in November.
        assert!(s.contains(at("2026-11-23T10:00:00Z")));
        assert!(!s.contains(at("2026-11-23T09:59:59Z")));
        assert!(!s.contains(at("2026-11-23T13:00:00Z")));
        assert!(!s.contains(at("2026-11-25T10:30:00Z"))); // Wednesday
    }

    #[test]
    fn schedule_past_midnight() {
        let s = sched(&["fri"], "22:00", "02:00");
        assert!(s.contains(at("2026-11-27T21:30:00Z"))); // Fri 22:30 local
        assert!(s.contains(at("2026-11-28T00:30:00Z"))); // Sat 01:30 local
        assert!(!s.contains(at("2026-11-28T01:30:00Z"))); // Sat 02:30 local
    }

    #[test]
    fn spec_errors_name_the_key() {
        let spec: CampaignSpec = toml::from_str("id='x'\ndiscount={percent=120}").unwrap();
        assert_eq!(
            Campaign::from_spec(spec).unwrap_err().key,
            "discount.percent"
        );
        let spec: CampaignSpec =
            toml::from_str("id='x'\ndiscount={percent=10}\nvalid_from='soon'").unwrap();
        assert_eq!(Campaign::from_spec(spec).unwrap_err().key, "valid_from");
    }
}
