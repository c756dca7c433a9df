//! Comparing an answer with a fixture's expectation. Exact by default (objects must have
//! the same keys); an expected object with a single `$`-key is a matcher:
//! `{"$type": "string"|"integer"|"number"|"boolean"|"object"|"array"|"null"}`,
//! `{"$regex": "…"}` (the whole string must match), `{"$any": true}`,
//! `{"$capture": "name"}` (any value, remembered for `${name}` in later steps),
//! `{"$sameAs": "stepName"}` (the byte-identical body of an earlier step; only as the
//! whole body).

use std::collections::BTreeMap;

use serde_json::Value;

/// One difference, with the JSON path where it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mismatch {
    pub path: String,
    pub expected: String,
    pub actual: String,
}

fn short(v: &Value) -> String {
    let s = v.to_string();
    if s.len() > 200 {
        format!("{}…", &s[..200])
    } else {
        s
    }
}

/// Replace every `${name}` in the strings of `v` with its captured value (a whole-string
/// `"${name}"` takes the captured JSON value itself, so numbers stay numbers).
pub fn substitute(v: &Value, vars: &BTreeMap<String, Value>) -> Value {
    match v {
        Value::String(s) => {
            if let Some(name) = s.strip_prefix("${").and_then(|r| r.strip_suffix('}')) {
                if !name.contains("${") {
                    if let Some(val) = vars.get(name) {
                        return val.clone();
                    }
                }
            }
            let mut out = s.clone();
            for (k, val) in vars {
                let pat = format!("${{{k}}}");
                if out.contains(&pat) {
                    let text = match val {
                        Value::String(x) => x.clone(),
                        other => other.to_string(),
                    };
                    out = out.replace(&pat, &text);
                }
            }
            Value::String(out)
        }
        Value::Array(a) => Value::Array(a.iter().map(|x| substitute(x, vars)).collect()),
        Value::Object(o) => Value::Object(
            o.iter()
                .map(|(k, x)| (k.clone(), substitute(x, vars)))
                .collect(),
        ),
        other => other.clone(),
    }
}

fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(n) if n.is_i64() || n.is_u64() => "integer",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

/// A matcher object: exactly one key, starting with `$`.
fn matcher(v: &Value) -> Option<(&str, &Value)> {
    let o = v.as_object()?;
    if o.len() != 1 {
        return None;
    }
    let (k, val) = o.iter().next()?;
    k.starts_with('$').then_some((k.as_str(), val))
}

/// Compare `actual` with `expected`; captures go into `captures`.
pub fn compare(
    expected: &Value,
    actual: &Value,
    path: &str,
    captures: &mut BTreeMap<String, Value>,
    out: &mut Vec<Mismatch>,
) {
    let miss = |out: &mut Vec<Mismatch>, e: String| {
        out.push(Mismatch {
            path: path.to_owned(),
            expected: e,
            actual: short(actual),
        })
    };
    if let Some((m, arg)) = matcher(expected) {
        match m {
            "$any" => {}
            "$capture" => {
                if let Some(name) = arg.as_str() {
                    captures.insert(name.to_owned(), actual.clone());
                }
            }
            "$type" => {
                let want = arg.as_str().unwrap_or("");
                let got = type_name(actual);
                if want != got && !(want == "number" && got == "integer") {
                    miss(out, format!("a value of type {want}"));
                }
            }
            "$regex" => {
                let pat = arg.as_str().unwrap_or("");
                match (regex::Regex::new(&format!("^(?:{pat})$")), actual.as_str()) {
                    (Ok(re), Some(s)) if re.is_match(s) => {}
                    (Err(e), _) => miss(out, format!("(bad $regex {pat:?}: {e})")),
                    _ => miss(out, format!("a string matching /{pat}/")),
                }
            }
            other => miss(out, format!("(unknown matcher {other})")),
        }
        return;
    }
    match (expected, actual) {
        (Value::Object(e), Value::Object(a)) => {
            for (k, ev) in e {
                let p = format!("{path}.{k}");
                match a.get(k) {
                    Some(av) => compare(ev, av, &p, captures, out),
                    None => out.push(Mismatch {
                        path: p,
                        expected: short(ev),
                        actual: "(missing)".into(),
                    }),
                }
            }
            for k in a.keys().filter(|k| !e.contains_key(*k)) {
                out.push(Mismatch {
                    path: format!("{path}.{k}"),
                    expected: "(no such field)".into(),
                    actual: short(&a[k]),
                });
            }
        }
        (Value::Array(e), Value::Array(a)) => {
            if e.len() != a.len() {
                miss(out, format!("an array of {} items", e.len()));
                return;
            }
            for (i, (ev, av)) in e.iter().zip(a).enumerate() {
                compare(ev, av, &format!("{path}[{i}]"), captures, out);
            }
        }
        (e, a) if e == a => {}
        (e, _) => miss(out, short(e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn diff(e: Value, a: Value) -> (Vec<Mismatch>, BTreeMap<String, Value>) {
        let mut caps = BTreeMap::new();
        let mut out = Vec::new();
        compare(&e, &a, "body", &mut caps, &mut out);
        (out, caps)
    }

    #[test]
    fn exact_by_default_with_matchers() {
        let (m, caps) = diff(
            json!({"ok": true, "ref": {"$capture": "r"}, "n": {"$type": "integer"}, "code": {"$regex": "CF-[0-9]{6}"}, "x": {"$any": true}}),
            json!({"ok": true, "ref": "kph_1", "n": 5, "code": "CF-123456", "x": [1]}),
        );
        assert!(m.is_empty(), "{m:?}");
        assert_eq!(caps["r"], json!("kph_1"));
        let (m, _) = diff(json!({"ok": true}), json!({"ok": false, "extra": 1}));
        assert_eq!(
            m.iter().map(|x| x.path.as_str()).collect::<Vec<_>>(),
            ["body.ok", "body.extra"]
        );
        let (m, _) = diff(
            json!({"code": {"$regex": "CF-[0-9]+"}}),
            json!({"code": "CF-12X"}),
        );
        assert_eq!(m.len(), 1);
    }

    #[test]
    fn substitution_keeps_types() {
        let mut vars = BTreeMap::new();
        vars.insert("amount".to_string(), json!(500));
        vars.insert("run".to_string(), json!("abc"));
        let v = substitute(
            &json!({"a": "${amount}", "t": "res_${run}01", "n": ["${run}"]}),
            &vars,
        );
        assert_eq!(v, json!({"a": 500, "t": "res_abc01", "n": ["abc"]}));
    }
}
