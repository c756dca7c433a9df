//! The wire contract: serde types for each request and answer Karma exchanges with us,
//! request validation that names the offending field, and the JSON error shape shared by
//! every endpoint (`{"ok":false,"error":CODE,"message":…,"field"?:…}`).
//! The decisions behind these shapes are written up in `contract/README.md`.

pub mod loyalty;
pub mod voucher;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Deserializer, Serialize};

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

/// Parse a JSON body into `T`; a syntax error is `MALFORMED_JSON`, a missing or mistyped
/// field is `INVALID_FIELD` with the field's path.
pub fn parse<T: DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    let mut de = serde_json::Deserializer::from_slice(body);
    let value: T = serde_path_to_error::deserialize(&mut de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        use serde_json::error::Category;
        match inner.classify() {
            Category::Syntax | Category::Eof | Category::Io => ApiError::new(
                400,
                "MALFORMED_JSON",
                format!("the body is not valid JSON: {inner}"),
            ),
            Category::Data => {
                let msg = strip_position(&inner.to_string());
                if let Some(name) = msg
                    .strip_prefix("missing field `")
                    .and_then(|r| r.split('`').next())
                {
                    let field = if path == "." {
                        name.to_owned()
                    } else {
                        format!("{path}.{name}")
                    };
                    ApiError::invalid(field, "is required")
                } else if path == "." {
                    ApiError::new(400, "INVALID_BODY", format!("the body {msg}"))
                } else {
                    ApiError::invalid(path, msg)
                }
            }
        }
    })?;
    de.end().map_err(|e| {
        ApiError::new(
            400,
            "MALFORMED_JSON",
            format!("unexpected data after the JSON value: {e}"),
        )
    })?;
    Ok(value)
}

fn strip_position(s: &str) -> String {
    match s.rfind(" at line ") {
        Some(i) => s[..i].to_owned(),
        None => s.to_owned(),
    }
}

/// Opaque ids (inventory items, locations, users) may arrive as strings or numbers;
/// we keep their text.
pub fn opaque_id<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Id {
        S(String),
        I(i64),
        U(u64),
    }
    match Id::deserialize(d)
        .map_err(|_| serde::de::Error::custom("expected a string or an integer id"))?
    {
        Id::S(s) => Ok(s),
        Id::I(i) => Ok(i.to_string()),
        Id::U(u) => Ok(u.to_string()),
    }
}

pub fn opt_opaque_id<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    #[derive(Deserialize)]
    struct W(#[serde(deserialize_with = "opaque_id")] String);
    Ok(Option::<W>::deserialize(d)?.map(|w| w.0))
}

/// `prefix` + 32 hex digits, as Karma's `res_…` and `loy_…` transaction ids.
pub fn check_transaction_id(field: &str, id: &str, prefix: &str) -> Result<(), ApiError> {
    let ok = id.len() == prefix.len() + 32
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
    fn transaction_ids() {
        assert!(check_transaction_id("t", "res_0123456789abcdef0123456789abcdef", "res_").is_ok());
        assert!(check_transaction_id("t", "res_0123", "res_").is_err());
        assert!(check_transaction_id("t", "loy_0123456789abcdef0123456789abcdef", "res_").is_err());
    }
}
