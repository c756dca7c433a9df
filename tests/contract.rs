//! `contract/openapi.yaml` is a valid OpenAPI 3.1 description of the ten endpoints, every
//! `$ref` resolves, its own examples validate, and every fixture's request bodies and
//! expected answers validate against it (matchers stand in for sample values).

use serde_json::{json, Map, Value};
use yaml_rust2::{Yaml, YamlLoader};

fn to_json(y: &Yaml) -> Value {
    match y {
        Yaml::Real(s) => s.parse::<f64>().map(|f| json!(f)).unwrap_or(Value::Null),
        Yaml::Integer(i) => json!(i),
        Yaml::String(s) => json!(s),
        Yaml::Boolean(b) => json!(b),
        Yaml::Array(a) => Value::Array(a.iter().map(to_json).collect()),
        Yaml::Hash(h) => Value::Object(
            h.iter()
                .map(|(k, v)| {
                    (
                        k.as_str()
                            .map(str::to_owned)
                            .unwrap_or_else(|| format!("{k:?}")),
                        to_json(v),
                    )
                })
                .collect::<Map<_, _>>(),
        ),
        _ => Value::Null,
    }
}

fn spec() -> Value {
    let text = std::fs::read_to_string("contract/openapi.yaml").unwrap();
    to_json(&YamlLoader::load_from_str(&text).unwrap()[0])
}

const PATHS: [(&str, &str); 10] = [
    ("voucher.check", "/v1/{tenant}/voucher/check"),
    ("voucher.commit", "/v1/{tenant}/voucher/commit"),
    ("voucher.reactivate", "/v1/{tenant}/voucher/reactivate"),
    ("loyalty.lookup", "/v1/{tenant}/loyalty/lookup"),
    ("loyalty.enroll", "/v1/{tenant}/loyalty/enroll"),
    ("loyalty.award", "/v1/{tenant}/loyalty/award"),
    ("loyalty.account", "/v1/{tenant}/loyalty/account"),
    ("loyalty.rewards", "/v1/{tenant}/loyalty/rewards"),
    ("loyalty.redeem", "/v1/{tenant}/loyalty/redeem"),
    ("webhook", "/v1/{tenant}/webhooks"),
];

/// A validator for a schema inside the spec (its `$ref`s resolve against the spec).
fn validator(spec: &Value, schema: &Value) -> jsonschema::Validator {
    let mut root = schema.as_object().cloned().unwrap_or_default();
    root.insert("components".into(), spec["components"].clone());
    root.insert(
        "$schema".into(),
        json!("https://json-schema.org/draft/2020-12/schema"),
    );
    jsonschema::validator_for(&Value::Object(root)).unwrap()
}

fn check(spec: &Value, schema: &Value, instance: &Value, what: &str) {
    let v = validator(spec, schema);
    let errors: Vec<String> = v
        .iter_errors(instance)
        .map(|e| format!("{} at {}", e, e.instance_path))
        .collect();
    assert!(
        errors.is_empty(),
        "{what}: {instance}\n{}",
        errors.join("\n")
    );
}

fn refs(v: &Value, out: &mut Vec<String>) {
    match v {
        Value::Object(o) => {
            if let Some(Value::String(r)) = o.get("$ref") {
                out.push(r.clone());
            }
            o.values().for_each(|x| refs(x, out));
        }
        Value::Array(a) => a.iter().for_each(|x| refs(x, out)),
        _ => {}
    }
}

#[test]
fn the_spec_is_valid_openapi_3_1() {
    let s = spec();
    assert!(s["openapi"].as_str().unwrap().starts_with("3.1"));
    assert!(s["info"]["title"].is_string() && s["info"]["version"].is_string());
    let paths = s["paths"].as_object().unwrap();
    assert_eq!(paths.len(), PATHS.len());
    for (_, p) in PATHS {
        let op = &paths[p]["post"];
        assert!(op["operationId"].is_string(), "{p}");
        assert!(
            op["requestBody"]["content"]["application/json"]["schema"].is_object(),
            "{p}"
        );
        // every status the operation can answer (hyper's 414 and 431 included)
        let idempotent = ["commit", "reactivate", "award", "redeem"]
            .iter()
            .any(|o| p.ends_with(o));
        let statuses = [
            "200", "400", "401", "404", "405", "408", "413", "414", "415", "431", "503",
        ];
        for status in statuses.into_iter().chain(idempotent.then_some("409")) {
            assert!(
                op["responses"][status]["content"]["application/json"]["schema"].is_object(),
                "{p} {status}"
            );
        }
    }
    let mut all = Vec::new();
    refs(&s, &mut all);
    assert!(all.len() > 50);
    for r in all {
        let ptr = r
            .strip_prefix('#')
            .unwrap_or_else(|| panic!("external $ref {r}"));
        assert!(s.pointer(ptr).is_some(), "dangling $ref {r}");
    }
    // every schema compiles, and the spec's own examples validate
    for (_, p) in PATHS {
        let op = &s["paths"][p]["post"];
        let media = &op["requestBody"]["content"]["application/json"];
        check(
            &s,
            &media["schema"],
            &media["example"],
            &format!("{p} request example"),
        );
        for (_, ex) in op["responses"]["200"]["content"]["application/json"]["examples"]
            .as_object()
            .unwrap()
        {
            check(
                &s,
                &op["responses"]["200"]["content"]["application/json"]["schema"],
                &ex["value"],
                &format!("{p} 200 example"),
            );
        }
    }
}

/// Stand-ins for matchers and placeholders, so an expectation is an instance.
fn sample(v: &Value) -> Value {
    match v {
        Value::Object(o) if o.len() == 1 && o.keys().next().unwrap().starts_with('$') => {
            let (k, arg) = o.iter().next().unwrap();
            match (k.as_str(), arg.as_str()) {
                ("$type", Some("integer")) | ("$type", Some("number")) => json!(0),
                ("$type", Some("boolean")) => json!(true),
                ("$type", Some("null")) => Value::Null,
                ("$type", Some("array")) => json!([]),
                ("$type", Some("object")) => json!({}),
                _ => json!("sample"),
            }
        }
        Value::Object(o) => Value::Object(o.iter().map(|(k, x)| (k.clone(), sample(x))).collect()),
        Value::Array(a) => Value::Array(a.iter().map(sample).collect()),
        Value::String(s) if s.contains("${") => {
            let s = s
                .replace("${run}", "0123456789abcdef")
                .replace("${copy}", "0000");
            if s.contains("${") {
                json!("sample")
            } else {
                json!(s)
            }
        }
        other => other.clone(),
    }
}

#[test]
fn every_fixture_validates_against_the_spec() {
    let s = spec();
    let mut checked = 0;
    let mut files: Vec<_> = std::fs::read_dir("fixtures")
        .unwrap()
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .collect();
    files.sort();
    assert_eq!(files.len(), 40, "fixtures/*.json: {files:?}");
    for f in files {
        let fx: Value = serde_json::from_str(&std::fs::read_to_string(&f).unwrap()).unwrap();
        for step in fx["steps"].as_array().unwrap() {
            let call = step["call"].as_str().unwrap();
            let path = PATHS.iter().find(|(c, _)| *c == call).unwrap().1;
            let op = &s["paths"][path]["post"];
            let status = step["expect"]["status"].as_u64().unwrap().to_string();
            let what = format!("{} {call}", f.display());
            // deliberately malformed requests are the point of 400 scenarios
            if status != "400" {
                check(
                    &s,
                    &op["requestBody"]["content"]["application/json"]["schema"],
                    &sample(&step["request"]["body"]),
                    &format!("{what} request"),
                );
            }
            let body = &step["expect"]["body"];
            if body.is_null() || body.get("$sameAs").is_some() {
                continue;
            }
            let schema = &op["responses"][status.as_str()]["content"]["application/json"]["schema"];
            assert!(
                schema.is_object(),
                "{what}: the spec has no {status} answer"
            );
            check(
                &s,
                schema,
                &sample(body),
                &format!("{what} expected {status}"),
            );
            checked += 1;
        }
    }
    assert!(checked > 60, "{checked}");
}
