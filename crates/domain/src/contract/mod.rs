//! The wire contract: serde types for each request and answer Karma exchanges with us,
//! request validation that names the offending field, and the JSON error shape shared by
//! every endpoint (`{"ok":false,"error":CODE,"message":…,"field"?:…}`).
//! The decisions behind these shapes are written up in `contract/README.md`.

pub mod loyalty;
pub mod rules;
pub mod voucher;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Deserializer, Serialize};

pub use crate::wire::{opaque_id, opt_opaque_id};
use crate::wire::{ours_at, OURS};

/// A transport or protocol fault: an HTTP status other than 200 and a JSON body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    pub status: u16,
    pub code: &'static str,
    pub message: String,
    pub field: Option<String>,
}

#[derive(Serialize)]
struct ErrorBody<'a> {
    ok: bool,
    error: &'a str,
    message: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    field: Option<&'a str>,
}

impl ApiError {
    pub fn new(status: u16, code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            code,
            message: message.into(),
            field: None,
        }
    }

    /// 400 naming the field path (`cart.items[0].priceCents`).
    pub fn invalid(field: impl Into<String>, message: impl Into<String>) -> ApiError {
        let field = field.into();
        ApiError {
            status: 400,
            code: "INVALID_FIELD",
            message: format!("{field}: {}", message.into()),
            field: Some(field),
        }
    }

    pub fn body(&self) -> Vec<u8> {
        serde_json::to_vec(&ErrorBody {
            ok: false,
            error: self.code,
            message: &self.message,
            field: self.field.as_deref(),
        })
        .unwrap_or_default()
    }
}

/// A business outcome body: `{"ok":false,"error":CODE,"message":…}`, sent with HTTP 200.
pub fn rejection_body(code: &str, message: &str) -> Vec<u8> {
    serde_json::to_vec(&ErrorBody {
        ok: false,
        error: code,
        message,
        field: None,
    })
    .unwrap_or_default()
}

/// A pass over any JSON value refusing an object key written twice (serde_json keeps the
/// last one silently), at any depth.
struct NoDuplicates;

impl<'de> Deserialize<'de> for NoDuplicates {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(NoDuplicates)
    }
}

impl<'de> serde::de::Visitor<'de> for NoDuplicates {
    type Value = NoDuplicates;
    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("any JSON value")
    }
    fn visit_bool<E>(self, _: bool) -> Result<Self, E> {
        Ok(self)
    }
    fn visit_i64<E>(self, _: i64) -> Result<Self, E> {
        Ok(self)
    }
    fn visit_u64<E>(self, _: u64) -> Result<Self, E> {
        Ok(self)
    }
    fn visit_f64<E>(self, _: f64) -> Result<Self, E> {
        Ok(self)
    }
    fn visit_str<E>(self, _: &str) -> Result<Self, E> {
        Ok(self)
    }
    fn visit_unit<E>(self) -> Result<Self, E> {
        Ok(self)
    }
    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Self, A::Error> {
        while seq.next_element::<NoDuplicates>()?.is_some() {}
        Ok(self)
    }
    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<Self, A::Error> {
        let mut seen = std::collections::HashSet::new();
        while let Some(key) = map.next_key::<String>()? {
            if seen.contains(&key) {
                return Err(serde::de::Error::custom(ours_at(
                    &key,
                    "appears more than once; each key may be given once",
                )));
            }
            map.next_value::<NoDuplicates>()?;
            seen.insert(key);
        }
        Ok(self)
    }
}

/// Parse a JSON body into `T`. Every refusal is our own sentence: a body that is not JSON
/// is `MALFORMED_JSON`; a duplicate key, a missing or mistyped field is `INVALID_FIELD`
/// naming the field's path; a body of the wrong kind is `INVALID_BODY`.
pub fn parse<T: DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    let mut de = serde_json::Deserializer::from_slice(body);
    serde_path_to_error::deserialize::<_, NoDuplicates>(&mut de).map_err(map_error)?;
    de.end().map_err(|e| {
        ApiError::new(
            400,
            "MALFORMED_JSON",
            format!(
                "the body holds more than one JSON value (extra data at line {}, column {})",
                e.line(),
                e.column()
            ),
        )
    })?;
    let mut de = serde_json::Deserializer::from_slice(body);
    serde_path_to_error::deserialize(&mut de).map_err(map_error)
}

/// Like [`parse`], for the provider calls whose body is always a JSON object (serde would
/// otherwise read a struct from an array, field by field).
pub fn parse_object<T: DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    let object = body.trim_ascii_start().first() == Some(&b'{');
    match parse(body) {
        Ok(v) if object => Ok(v),
        Err(e) if object || e.code == "MALFORMED_JSON" => Err(e),
        _ => Err(ApiError::new(
            400,
            "INVALID_BODY",
            "the body must be a JSON object",
        )),
    }
}

/// serde's error → our sentence naming the field and the rule.
fn map_error(e: serde_path_to_error::Error<serde_json::Error>) -> ApiError {
    use serde_json::error::Category;
    let path = e.path().to_string();
    let inner = e.into_inner();
    let (line, column) = (inner.line(), inner.column());
    let msg = strip_position(&inner.to_string());
    let at = |name: &str| {
        if path == "." {
            name.to_owned()
        } else {
            format!("{path}.{name}")
        }
    };
    let field_error = |field: String, sentence: String| {
        if field == "." {
            ApiError::new(400, "INVALID_BODY", format!("the body {sentence}"))
        } else {
            ApiError::invalid(field, sentence)
        }
    };
    if msg == "number out of range" {
        return field_error(path, "must be a number within 64-bit range".into());
    }
    if msg == "recursion limit exceeded" {
        return ApiError::new(
            400,
            "MALFORMED_JSON",
            "the body nests arrays and objects more than 127 levels deep",
        );
    }
    match inner.classify() {
        Category::Eof => ApiError::new(
            400,
            "MALFORMED_JSON",
            "the body ends before its JSON value is complete",
        ),
        Category::Syntax | Category::Io => ApiError::new(
            400,
            "MALFORMED_JSON",
            format!("the body is not valid JSON (at line {line}, column {column})"),
        ),
        Category::Data => {
            if let Some(rest) = msg.strip_prefix(OURS) {
                let (key, sentence) = rest.split_once(OURS).unwrap_or(("", rest));
                let field = if key.is_empty() { path } else { at(key) };
                return field_error(field, sentence.to_owned());
            }
            let quoted = |prefix: &str| {
                msg.strip_prefix(prefix)
                    .and_then(|r| r.split('`').next())
                    .map(str::to_owned)
            };
            if let Some(name) = quoted("missing field `") {
                return ApiError::invalid(at(&name), "is required");
            }
            if let Some(name) = quoted("unknown field `") {
                // serde_path_to_error's path already ends at the unknown key
                let ends_at_key = path == name || path.ends_with(&format!(".{name}"));
                let field = if ends_at_key { path.clone() } else { at(&name) };
                return ApiError::invalid(field, "is not a field of this request");
            }
            if let Some(name) = quoted("duplicate field `") {
                return ApiError::invalid(
                    at(&name),
                    "appears more than once; each key may be given once",
                );
            }
            let expected = msg.rsplit_once(", expected ").map(|(_, x)| x).unwrap_or("");
            field_error(path, format!("must be {}", our_words(expected)))
        }
    }
}

/// serde's name for what a field expects → ours.
fn our_words(expected: &str) -> String {
    match expected {
        "a string" => "a string".into(),
        "i8" | "i16" | "i32" | "i64" | "u8" | "u16" | "u32" | "u64" | "usize" | "isize" => {
            "an integer in range".into()
        }
        "f32" | "f64" => "a number".into(),
        "a boolean" => "true or false".into(),
        "a sequence" => "an array".into(),
        "unit" => "null".into(),
        x if x.starts_with("struct ") || x == "a map" => "an object".into(),
        x if x.starts_with("one of ") || x.starts_with('`') => x.replace('`', ""),
        x if x.starts_with("a ") || x.starts_with("an ") => x.to_owned(),
        _ => "of another type or value (see the contract)".into(),
    }
}

fn strip_position(s: &str) -> String {
    match s.rfind(" at line ") {
        Some(i) => s[..i].to_owned(),
        None => s.to_owned(),
    }
}

/// `prefix` + 32 hex digits, as Karma's `res_…` and `loy_…` transaction ids.
pub fn check_transaction_id(field: &str, id: &str, prefix: &str) -> Result<(), ApiError> {
    let ok = Some(id.len()) == prefix.len().checked_add(32)
        && id.starts_with(prefix)
        && id[prefix.len()..].bytes().all(|b| b.is_ascii_hexdigit());
    if ok {
        Ok(())
    } else {
        Err(ApiError::invalid(
            field,
            format!("must be {prefix} followed by 32 hex characters"),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Deserialize, Debug)]
    #[allow(dead_code)]
    struct T {
        a: Inner,
    }
    #[derive(Deserialize, Debug)]
    #[allow(dead_code)]
    struct Inner {
        b: Vec<i64>,
        c: String,
    }

    #[test]
    fn errors_name_the_path() {
        let e = parse::<T>(br#"{"a":{"b":[1,"x"],"c":"y"}}"#).unwrap_err();
        assert_eq!(e.field.as_deref(), Some("a.b[1]"));
        let e = parse::<T>(br#"{"a":{"b":[1]}}"#).unwrap_err();
        assert_eq!(e.field.as_deref(), Some("a.c"));
        let e = parse::<T>(br#"{"a":"#).unwrap_err();
        assert_eq!(e.code, "MALFORMED_JSON");
        let e = parse::<T>(br#"{"a":{"b":[],"c":""}} x"#).unwrap_err();
        assert_eq!(e.code, "MALFORMED_JSON");
    }

    #[test]
    fn our_words_for_every_refusal() {
        use crate::contract::voucher::CommitRequest;
        let tx = "res_0123456789abcdef0123456789abcdef";
        let ok = |b: String| parse::<CommitRequest>(b.as_bytes()).map(|r| r.amount_cents);
        assert_eq!(
            ok(format!(r#"{{"amountCents":500.0,"transactionId":"{tx}"}}"#)),
            Ok(500)
        );
        assert_eq!(
            ok(format!(r#"{{"amountCents":5e2,"transactionId":"{tx}"}}"#)),
            Ok(500)
        );
        for (body, field) in [
            (
                format!(r#"{{"amountCents":500.5,"transactionId":"{tx}"}}"#),
                "amountCents",
            ),
            (
                format!(r#"{{"amountCents":"5","transactionId":"{tx}"}}"#),
                "amountCents",
            ),
            (
                format!(r#"{{"amountCents":1e400,"transactionId":"{tx}"}}"#),
                "amountCents",
            ),
            (
                format!(r#"{{"amountCents":1,"amountCents":1,"transactionId":"{tx}"}}"#),
                "amountCents",
            ),
            (
                r#"{"amountCents":1,"transactionId":5}"#.to_string(),
                "transactionId",
            ),
            (r#"{"transactionId":"x"}"#.to_string(), "amountCents"),
            (r#"{"a":{"b":[{"c":1,"c":2}]}}"#.to_string(), "a.b[0].c"),
        ] {
            let e = parse::<CommitRequest>(body.as_bytes()).unwrap_err();
            assert_eq!(e.field.as_deref(), Some(field), "{body}: {e:?}");
            assert!(
                !e.message.contains("expected") && !e.message.contains('`'),
                "{e:?}"
            );
        }
        let e = parse::<serde_json::Value>(br#"{"id":"a","id":"b"}"#).unwrap_err();
        assert_eq!(e.field.as_deref(), Some("id"));
        let e = parse::<CommitRequest>(b"[1]").unwrap_err();
        assert_eq!(e.code, "INVALID_BODY");
        let deep = "[".repeat(200) + &"]".repeat(200);
        assert_eq!(
            parse::<serde_json::Value>(deep.as_bytes())
                .unwrap_err()
                .code,
            "MALFORMED_JSON"
        );
    }

    #[test]
    fn transaction_ids() {
        assert!(check_transaction_id("t", "res_0123456789abcdef0123456789abcdef", "res_").is_ok());
        assert!(check_transaction_id("t", "res_0123", "res_").is_err());
        assert!(check_transaction_id("t", "loy_0123456789abcdef0123456789abcdef", "res_").is_err());
    }
}
