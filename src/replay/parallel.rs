//! **Pure**: the expectations of a `parallel` step on the *set* of its answers (N copies of
//! a request sent at once): how many answered `ok: true`, whether all are byte-identical,
//! and how many fell in each outcome. An answer's outcome is `ok` (`ok: true`), its
//! `error` code (`ok: false`), or `HTTP <status>` when the body says neither.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::matcher::Mismatch;

/// `expect.set` of a parallel step.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct SetExpect {
    /// Exactly this many answers with `ok: true`.
    #[serde(default)]
    pub ok_true: Option<usize>,
    /// Every answer has the same status and the same bytes.
    #[serde(default)]
    pub identical: bool,
    /// Exactly these counts per outcome (and no other outcome).
    #[serde(default)]
    pub outcomes: Option<BTreeMap<String, usize>>,
}

impl SetExpect {
    /// A fixture error, if the expectation cannot hold for `copies` answers.
    pub fn invalid_for(&self, copies: usize) -> Option<String> {
        if self.ok_true.is_some_and(|n| n > copies) {
            return Some(format!("okTrue is more than the {copies} copies"));
        }
        let sum: usize = self
            .outcomes
            .as_ref()
            .map(|m| m.values().fold(0usize, |a, v| a.saturating_add(*v)))
            .unwrap_or(copies);
        (sum != copies).then(|| format!("outcomes add up to {sum}, not to the {copies} copies"))
    }
}

/// The outcome of one answer, as counted by `outcomes`.
pub fn outcome(status: u16, body: &[u8]) -> String {
    let v: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
    match (&v["ok"], v["error"].as_str()) {
        (Value::Bool(true), _) => "ok".into(),
        (Value::Bool(false), Some(code)) => code.to_string(),
        _ => format!("HTTP {status}"),
    }
}

/// The index of the answer that stands for the set (captures, `$sameAs`): the first with
/// `ok: true`, else the first.
pub fn representative(answers: &[(u16, Vec<u8>)]) -> usize {
    answers
        .iter()
        .position(|(s, b)| outcome(*s, b) == "ok")
        .unwrap_or(0)
}

/// Compare the set of answers with the expectation.
pub fn judge(want: &SetExpect, answers: &[(u16, Vec<u8>)]) -> Vec<Mismatch> {
    let mut out = Vec::new();
    let mut counts: BTreeMap<String, usize> = BTreeMap::new();
    for (s, b) in answers {
        *counts.entry(outcome(*s, b)).or_default() += 1;
    }
    if let Some(n) = want.ok_true {
        let got = counts.get("ok").copied().unwrap_or(0);
        if got != n {
            out.push(Mismatch {
                path: "set.okTrue".into(),
                expected: format!("{n} of {} answers with ok:true", answers.len()),
                actual: format!("{got} ({})", describe(&counts)),
            });
        }
    }
    if want.identical {
        let mut distinct: Vec<&(u16, Vec<u8>)> = Vec::new();
        for a in answers {
            if !distinct.contains(&a) {
                distinct.push(a);
            }
        }
        if distinct.len() > 1 {
            let shown: Vec<String> = distinct
                .iter()
                .map(|(s, b)| format!("{s} {}", String::from_utf8_lossy(b)))
                .collect();
            out.push(Mismatch {
                path: "set.identical".into(),
                expected: format!("{} byte-identical answers", answers.len()),
                actual: format!("{} distinct answers: {}", distinct.len(), shown.join(" | ")),
            });
        }
    }
    if let Some(w) = &want.outcomes {
        if *w != counts {
            out.push(Mismatch {
                path: "set.outcomes".into(),
                expected: describe(w),
                actual: describe(&counts),
            });
        }
    }
    out
}

fn describe(counts: &BTreeMap<String, usize>) -> String {
    let parts: Vec<String> = counts.iter().map(|(k, v)| format!("{k} ×{v}")).collect();
    parts.join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn a(s: &str) -> (u16, Vec<u8>) {
        (200, s.as_bytes().to_vec())
    }

    #[test]
    fn exactly_one_ok_and_outcome_counts() {
        let answers = [
            a(r#"{"ok":false,"error":"VOUCHER_HELD"}"#),
            a(r#"{"ok":true,"providerRef":"kph_1"}"#),
            a(r#"{"ok":false,"error":"VOUCHER_HELD"}"#),
        ];
        let want = SetExpect {
            ok_true: Some(1),
            identical: false,
            outcomes: Some([("ok".into(), 1), ("VOUCHER_HELD".into(), 2)].into()),
        };
        assert!(judge(&want, &answers).is_empty());
        assert_eq!(representative(&answers), 1);
        let two_ok = [
            a(r#"{"ok":true}"#),
            a(r#"{"ok":true}"#),
            (503, b"x".to_vec()),
        ];
        let m = judge(&want, &two_ok);
        assert_eq!(
            m,
            [
                Mismatch {
                    path: "set.okTrue".into(),
                    expected: "1 of 3 answers with ok:true".into(),
                    actual: "2 (HTTP 503 ×1, ok ×2)".into(),
                },
                Mismatch {
                    path: "set.outcomes".into(),
                    expected: "VOUCHER_HELD ×2, ok ×1".into(),
                    actual: "HTTP 503 ×1, ok ×2".into(),
                }
            ]
        );
    }

    #[test]
    fn identical_names_the_distinct_answers() {
        let want = SetExpect {
            identical: true,
            ..SetExpect::default()
        };
        assert!(judge(&want, &[a("{}"), a("{}")]).is_empty());
        let m = judge(&want, &[a("{}"), a("{} "), a("{}")]);
        assert_eq!(m.len(), 1);
        assert_eq!(m[0].actual, "2 distinct answers: 200 {} | 200 {} ");
    }

    #[test]
    fn impossible_expectations_are_fixture_errors() {
        let want = SetExpect {
            ok_true: Some(4),
            ..SetExpect::default()
        };
        assert_eq!(
            want.invalid_for(3).as_deref(),
            Some("okTrue is more than the 3 copies")
        );
        let want = SetExpect {
            outcomes: Some([("ok".into(), 1)].into()),
            ..SetExpect::default()
        };
        assert_eq!(
            want.invalid_for(3).as_deref(),
            Some("outcomes add up to 1, not to the 3 copies")
        );
    }
}
