//! Webhook decisions with no I/O: signature schemes (hex HMAC-SHA256 in a header,
//! Stripe-style `t=…,v1=…`, Standard Webhooks), several active secrets for rotation, a
//! timestamp tolerance where a timestamp is signed, constant-time comparison through
//! `Mac::verify_slice`, and envelope validation that names the bad field.

use base64::Engine;
use hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::clock::Millis;

type HmacSha256 = Hmac<Sha256>;

/// Standard base64 that decodes with or without `=` padding, as the Standard Webhooks
/// libraries do for `whsec_` secrets and signatures.
const LENIENT_BASE64: base64::engine::GeneralPurpose = base64::engine::GeneralPurpose::new(
    &base64::alphabet::STANDARD,
    base64::engine::GeneralPurposeConfig::new()
        .with_decode_padding_mode(base64::engine::DecodePaddingMode::Indifferent),
);

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Scheme {
    /// Hex digest of HMAC-SHA256 over the raw body, bare or prefixed `sha256=`.
    HmacSha256Hex { header: String },
    /// `Stripe-Signature: t=…,v1=…`; HMAC over `"{t}.{body}"`.
    Stripe { header: String },
    /// `webhook-id`, `webhook-timestamp`, `webhook-signature: v1,<base64> …`;
    /// HMAC over `"{id}.{timestamp}.{body}"`; keys are `whsec_<base64>`.
    StandardWebhooks,
    /// No verification; only when written explicitly.
    None,
}

impl Scheme {
    /// The scheme named `name` (`hmac-sha256-hex`, `stripe`, `standard-webhooks`, and
    /// `none` when `allow_none`), its signature in `header` when the scheme takes one (else
    /// the scheme's usual header). `Err` lists the names accepted.
    pub fn parse(name: &str, header: Option<&str>, allow_none: bool) -> Result<Scheme, String> {
        let header = |default: &str| header.unwrap_or(default).to_ascii_lowercase();
        match name {
            "hmac-sha256-hex" => Ok(Scheme::HmacSha256Hex {
                header: header("x-karma-signature"),
            }),
            "stripe" => Ok(Scheme::Stripe {
                header: header("stripe-signature"),
            }),
            "standard-webhooks" => Ok(Scheme::StandardWebhooks),
            "none" if allow_none => Ok(Scheme::None),
            other => Err(format!(
                "unknown scheme {other:?}; use hmac-sha256-hex, stripe, standard-webhooks{}",
                if allow_none { " or none" } else { "" }
            )),
        }
    }
}

impl Default for Scheme {
    /// The hex HMAC in `X-Karma-Signature`.
    fn default() -> Scheme {
        Scheme::HmacSha256Hex {
            header: "x-karma-signature".into(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VerifyError {
    MissingHeader(String),
    Malformed(String),
    OutsideTolerance,
    NoMatch,
}

impl VerifyError {
    pub fn message(&self) -> String {
        match self {
            VerifyError::MissingHeader(h) => format!("missing signature header {h}"),
            VerifyError::Malformed(why) => format!("malformed signature: {why}"),
            VerifyError::OutsideTolerance => "the signed timestamp is outside the tolerance".into(),
            VerifyError::NoMatch => "no signature matches any active secret".into(),
        }
    }
}

fn mac_ok(secret: &[u8], parts: &[&[u8]], sig: &[u8]) -> bool {
    let Ok(mut m) = HmacSha256::new_from_slice(secret) else {
        return false;
    };
    for p in parts {
        m.update(p);
    }
    // verify_slice compares in constant time and rejects a wrong length (an empty
    // signature never passes).
    m.verify_slice(sig).is_ok()
}

fn within(now: Millis, ts_secs: i64, tolerance_ms: i64) -> bool {
    now.saturating_sub(ts_secs.saturating_mul(1000))
        .saturating_abs()
        <= tolerance_ms
}

/// Check a delivery. `header` looks a header up by lowercase name.
pub fn verify(
    scheme: &Scheme,
    secrets: &[Vec<u8>],
    header: &dyn Fn(&str) -> Option<String>,
    body: &[u8],
    now: Millis,
    tolerance_ms: i64,
) -> Result<(), VerifyError> {
    match scheme {
        Scheme::None => Ok(()),
        Scheme::HmacSha256Hex { header: h } => {
            let v = header(h).ok_or_else(|| VerifyError::MissingHeader(h.clone()))?;
            let v = v.trim();
            let hexpart = v.strip_prefix("sha256=").unwrap_or(v);
            let sig = hex::decode(hexpart).map_err(|_| VerifyError::Malformed("not hex".into()))?;
            if sig.len() != 32 {
                return Err(VerifyError::Malformed(
                    "a SHA-256 digest is 64 hex characters".into(),
                ));
            }
            secrets
                .iter()
                .any(|s| mac_ok(s, &[body], &sig))
                .then_some(())
                .ok_or(VerifyError::NoMatch)
        }
        Scheme::Stripe { header: h } => {
            let v = header(h).ok_or_else(|| VerifyError::MissingHeader(h.clone()))?;
            let mut t = None;
            let mut sigs = Vec::new();
            for part in v.split(',') {
                match part.trim().split_once('=') {
                    Some(("t", x)) => t = x.parse::<i64>().ok(),
                    Some(("v1", x)) => sigs.extend(hex::decode(x).ok()),
                    _ => {} // other schemes (v0 …) are ignored, never trusted
                }
            }
            let t = t.ok_or_else(|| VerifyError::Malformed("no t=".into()))?;
            if sigs.is_empty() {
                return Err(VerifyError::Malformed("no v1= signature".into()));
            }
            if !within(now, t, tolerance_ms) {
                return Err(VerifyError::OutsideTolerance);
            }
            let ts = t.to_string();
            let ok = secrets.iter().any(|s| {
                sigs.iter()
                    .any(|sig| mac_ok(s, &[ts.as_bytes(), b".", body], sig))
            });
            ok.then_some(()).ok_or(VerifyError::NoMatch)
        }
        Scheme::StandardWebhooks => {
            let id = header("webhook-id")
                .ok_or_else(|| VerifyError::MissingHeader("webhook-id".into()))?;
            let ts = header("webhook-timestamp")
                .ok_or_else(|| VerifyError::MissingHeader("webhook-timestamp".into()))?;
            let sig = header("webhook-signature")
                .ok_or_else(|| VerifyError::MissingHeader("webhook-signature".into()))?;
            let t: i64 = ts.trim().parse().map_err(|_| {
                VerifyError::Malformed("webhook-timestamp is not integer seconds".into())
            })?;
            if !within(now, t, tolerance_ms) {
                return Err(VerifyError::OutsideTolerance);
            }
            let sigs: Vec<Vec<u8>> = sig
                .split_whitespace()
                .filter_map(|p| p.strip_prefix("v1,"))
                .filter_map(|b| LENIENT_BASE64.decode(b).ok())
                .collect();
            if sigs.is_empty() {
                return Err(VerifyError::Malformed("no v1 signature".into()));
            }
            let parts: [&[u8]; 5] = [id.trim().as_bytes(), b".", ts.trim().as_bytes(), b".", body];
            let ok = secrets
                .iter()
                .any(|s| sigs.iter().any(|sig| mac_ok(s, &parts, sig)));
            ok.then_some(()).ok_or(VerifyError::NoMatch)
        }
    }
}

/// The key bytes of a secret as configured: Standard Webhooks' `whsec_<base64>`, else the
/// text itself.
pub fn secret_bytes(scheme: &Scheme, s: &str) -> Result<Vec<u8>, String> {
    match (scheme, s.strip_prefix("whsec_")) {
        (Scheme::StandardWebhooks, Some(b)) => LENIENT_BASE64
            .decode(b)
            .map_err(|_| "a whsec_ secret must be base64 after the prefix".to_string()),
        (Scheme::StandardWebhooks, None) => {
            Err("Standard Webhooks secrets start with whsec_".into())
        }
        _ => Ok(s.as_bytes().to_vec()),
    }
}

/// The key to sign with: [`secret_bytes`], or the text itself when it is not in the
/// scheme's form (a sender signs with whatever it was given; only the receiver refuses).
pub fn signing_key(scheme: &Scheme, s: &str) -> Vec<u8> {
    secret_bytes(scheme, s).unwrap_or_else(|_| s.as_bytes().to_vec())
}

/// With `max_age` set: the envelope's own `timestamp` (signed as part of the body) must be
/// present and within `max_age_ms` of `now`, either way. `Err(message)` names the rule.
pub fn check_max_age(v: &serde_json::Value, now: Millis, max_age_ms: i64) -> Result<(), String> {
    let Some(ts) = v.get("timestamp") else {
        return Err("is required: this receiver refuses deliveries older than its max_age".into());
    };
    let at = ts
        .as_str()
        .and_then(|s| s.parse::<jiff::Timestamp>().ok())
        .map(|t| t.as_millisecond())
        .ok_or_else(|| "must be an ISO 8601 instant like 2026-11-23T10:00:00Z".to_string())?;
    if now.abs_diff(at) > max_age_ms.unsigned_abs() {
        return Err(format!(
            "is more than the receiver's max_age ({} s) away from now: a stale or replayed delivery",
            max_age_ms / 1000
        ));
    }
    Ok(())
}

/// Glob on event names: `*` matches any run of characters (dots included), `?` one.
#[expect(
    clippy::arithmetic_side_effects,
    reason = "each index stays below its slice's length, which fits a usize"
)]
pub fn glob_match(pattern: &str, s: &str) -> bool {
    let (p, t): (Vec<char>, Vec<char>) = (pattern.chars().collect(), s.chars().collect());
    let (mut pi, mut ti, mut star, mut mark) = (0, 0, None, 0);
    while ti < t.len() {
        if pi < p.len() && (p[pi] == '?' || p[pi] == t[ti]) {
            pi += 1;
            ti += 1;
        } else if pi < p.len() && p[pi] == '*' {
            star = Some(pi);
            mark = ti;
            pi += 1;
        } else if let Some(sp) = star {
            pi = sp + 1;
            mark += 1;
            ti = mark;
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|c| *c == '*')
}

fn hmac_bytes(secret: &[u8], parts: &[&[u8]]) -> Vec<u8> {
    // HMAC accepts keys of any length, so this cannot fail.
    let mut m = HmacSha256::new_from_slice(secret).expect("HMAC takes any key length");
    for p in parts {
        m.update(p);
    }
    m.finalize().into_bytes().to_vec()
}

/// The headers a delivery of `body` needs under `scheme`, signed with `secret` (key
/// bytes) at `ts_secs`; `id` is the delivery id.
pub fn sign_headers(
    scheme: &Scheme,
    secret: &[u8],
    id: &str,
    ts_secs: i64,
    body: &[u8],
) -> Vec<(String, String)> {
    let b64 = |b: Vec<u8>| base64::engine::general_purpose::STANDARD.encode(b);
    match scheme {
        Scheme::None => Vec::new(),
        Scheme::HmacSha256Hex { header } => vec![(
            header.clone(),
            format!("sha256={}", hex::encode(hmac_bytes(secret, &[body]))),
        )],
        Scheme::Stripe { header } => {
            let t = ts_secs.to_string();
            vec![(
                header.clone(),
                format!(
                    "t={t},v1={}",
                    hex::encode(hmac_bytes(secret, &[t.as_bytes(), b".", body]))
                ),
            )]
        }
        Scheme::StandardWebhooks => {
            let t = ts_secs.to_string();
            vec![
                ("webhook-id".into(), id.to_owned()),
                ("webhook-timestamp".into(), t.clone()),
                (
                    "webhook-signature".into(),
                    format!(
                        "v1,{}",
                        b64(hmac_bytes(
                            secret,
                            &[id.as_bytes(), b".", t.as_bytes(), b".", body]
                        ))
                    ),
                ),
            ]
        }
    }
}

/// Delay before retry number `attempt` (1 = after the first failure): `base × 2^(attempt-1)`
/// capped at `max`, scaled by a jitter factor in [0.5, 1.0] derived from `seed`.
pub fn backoff(
    attempt: u32,
    base: std::time::Duration,
    max: std::time::Duration,
    seed: &[u8],
) -> std::time::Duration {
    let exp = base
        .saturating_mul(1u32 << attempt.saturating_sub(1).min(20))
        .min(max);
    let h = <Sha256 as sha2::Digest>::digest(seed);
    let jitter_permille = (u64::from(u16::from_be_bytes([h[0], h[1]])) % 501).saturating_add(500);
    let exp_ms = u64::try_from(exp.as_millis()).unwrap_or(u64::MAX);
    std::time::Duration::from_millis(exp_ms.saturating_mul(jitter_permille) / 1000)
}

/// `Retry-After` in seconds (the HTTP-date form is not honoured).
pub fn retry_after(v: &str) -> Option<std::time::Duration> {
    v.trim()
        .parse::<u64>()
        .ok()
        .map(|s| std::time::Duration::from_secs(s.min(86_400)))
}

/// The fields of an envelope we rely on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Envelope {
    pub id: String,
    pub event: String,
}

/// Validate an envelope: a JSON object with a non-empty string `id` and `event`, and a
/// `timestamp` that, when present, is ISO 8601. `Err((field, message))`.
pub fn parse_envelope(v: &serde_json::Value) -> Result<Envelope, (&'static str, String)> {
    let obj = v
        .as_object()
        .ok_or(("", "the envelope must be a JSON object".to_string()))?;
    let text = |f: &'static str| -> Result<String, (&'static str, String)> {
        match obj.get(f) {
            Some(serde_json::Value::String(s)) => {
                crate::wire::text_rule_broken(f, s).map_or(Ok(s.clone()), |why| Err((f, why)))
            }
            Some(_) => Err((f, "must be a string".into())),
            None => Err((f, "is required".into())),
        }
    };
    let id = text("id")?;
    let event = text("event")?;
    if let Some(ts) = obj.get("timestamp") {
        let ok = ts
            .as_str()
            .is_some_and(|s| s.parse::<jiff::Timestamp>().is_ok());
        if !ok {
            return Err((
                "timestamp",
                "must be an ISO 8601 instant like 2026-11-23T10:00:00Z".into(),
            ));
        }
    }
    Ok(Envelope { id, event })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sign(secret: &[u8], parts: &[&[u8]]) -> Vec<u8> {
        let mut m = HmacSha256::new_from_slice(secret).unwrap();
        for p in parts {
            m.update(p);
        }
        m.finalize().into_bytes().to_vec()
    }

    #[test]
    fn hex_scheme_accepts_prefix_rotation_and_refuses_empty() {
        let s = Scheme::HmacSha256Hex {
            header: "x-sig".into(),
        };
        let body = b"{}";
        let good = hex::encode(sign(b"old", &[body]));
        let secrets = vec![b"new".to_vec(), b"old".to_vec()];
        let h = |v: String| move |n: &str| (n == "x-sig").then(|| v.clone());
        assert_eq!(verify(&s, &secrets, &h(good.clone()), body, 0, 0), Ok(()));
        assert_eq!(
            verify(&s, &secrets, &h(format!("sha256={good}")), body, 0, 0),
            Ok(())
        );
        assert!(verify(&s, &secrets, &h(String::new()), body, 0, 0).is_err());
        assert!(verify(&s, &secrets, &h(hex::encode([0u8; 32])), body, 0, 0).is_err());
        assert!(verify(&s, &secrets, &|_| None, body, 0, 0).is_err());
    }

    #[test]
    fn github_test_vector() {
        // https://docs.github.com/en/webhooks/using-webhooks/validating-webhook-deliveries
        let s = Scheme::HmacSha256Hex {
            header: "x-hub-signature-256".into(),
        };
        let sig =
            "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17".to_string();
        let h = move |n: &str| (n == "x-hub-signature-256").then(|| sig.clone());
        let secrets = vec![b"It's a Secret to Everybody".to_vec()];
        assert_eq!(verify(&s, &secrets, &h, b"Hello, World!", 0, 0), Ok(()));
        assert_eq!(
            sign_headers(&s, &secrets[0], "x", 0, b"Hello, World!")[0].1,
            "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17"
        );
    }

    #[test]
    fn standard_webhooks_test_vector() {
        // The Standard Webhooks reference libraries' example.
        let s = Scheme::StandardWebhooks;
        let key = secret_bytes(&s, "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").unwrap();
        let body = br#"{"test": 2432232314}"#;
        let hs = sign_headers(
            &s,
            &key,
            "msg_p5jXN8AQM9LWM0D4loKWxJek",
            1_614_265_330,
            body,
        );
        assert_eq!(hs[2].1, "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=");
        let get = |n: &str| hs.iter().find(|(k, _)| k == n).map(|(_, v)| v.clone());
        let now = 1_614_265_330_000;
        assert_eq!(
            verify(&s, std::slice::from_ref(&key), &get, body, now, 300_000),
            Ok(())
        );
        assert_eq!(
            verify(
                &s,
                std::slice::from_ref(&key),
                &get,
                body,
                now + 301_000,
                300_000
            ),
            Err(VerifyError::OutsideTolerance)
        );
        assert_eq!(
            verify(&s, &[key], &get, body, now - 301_000, 300_000),
            Err(VerifyError::OutsideTolerance)
        );
    }

    #[test]
    fn globs_and_backoff() {
        assert!(glob_match("inventory.*", "inventory.created"));
        assert!(glob_match("*", "anything.at.all"));
        assert!(glob_match("*.created", "inventory.created"));
        assert!(!glob_match("inventory.*", "locations.updated"));
        assert!(glob_match("inv?ntory.created", "inventory.created"));
        let d = |a| {
            backoff(
                a,
                std::time::Duration::from_secs(1),
                std::time::Duration::from_secs(60),
                b"s",
            )
        };
        assert!(
            d(1) >= std::time::Duration::from_millis(500)
                && d(1) <= std::time::Duration::from_secs(1)
        );
        assert!(
            d(3) >= std::time::Duration::from_secs(2) && d(3) <= std::time::Duration::from_secs(4)
        );
        assert!(d(30) <= std::time::Duration::from_secs(60));
        assert_eq!(retry_after(" 7 "), Some(std::time::Duration::from_secs(7)));
    }

    #[test]
    fn envelope_fields() {
        assert!(parse_envelope(
            &serde_json::json!({"id": "a", "event": "x.y", "timestamp": "2026-01-01T00:00:00Z"})
        )
        .is_ok());
        assert_eq!(
            parse_envelope(&serde_json::json!({"event": "x"}))
                .unwrap_err()
                .0,
            "id"
        );
        assert_eq!(
            parse_envelope(&serde_json::json!({"id": "a", "event": "x", "timestamp": "yesterday"}))
                .unwrap_err()
                .0,
            "timestamp"
        );
    }
}
