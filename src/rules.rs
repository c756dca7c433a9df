//! Vendor rules: where a voucher vendor's own decision plugs in. On check, for a campaign
//! (or a whole tenant) with rules, the service asks the vendor first — code, cart, guest,
//! location — and gets `{ok, discountAmountCents, voucherNr?, reason?}`. The service still
//! owns holds, limits, budgets, idempotency, durability and the contract answer, and fails
//! closed (`VENDOR_UNAVAILABLE`) when the vendor is slow, down or answers garbage.
//!
//! Two ways in: [`HttpRules`] (config `rules = { http = "https://…", secret_env = "…",
//! timeout = "800ms" }`; protocol in `contract/vendor-rules.md`), or, for teams embedding
//! the crate, any type implementing [`VoucherRules`] (see `examples/vendor_rules.rs`).

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::voucher::Cart;

/// What the vendor is asked.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RulesRequest {
    pub tenant: String,
    pub campaign: String,
    /// What the guest typed.
    pub code: String,
    /// The code as stored (canonical).
    pub voucher_nr: String,
    pub cart: Cart,
    pub location_id: Option<String>,
    pub user_id: Option<String>,
}

/// What the vendor decides.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct RulesDecision {
    pub ok: bool,
    #[serde(default)]
    pub discount_amount_cents: Option<i64>,
    #[serde(default)]
    pub voucher_nr: Option<String>,
    /// Why not, in words a guest can read; passed on as the refusal's message.
    #[serde(default)]
    pub reason: Option<String>,
}

pub type Decision<'a> = Pin<Box<dyn Future<Output = Result<RulesDecision, String>> + Send + 'a>>;

/// A vendor's decision point. `Err` means "could not decide" and fails closed.
pub trait VoucherRules: Send + Sync {
    fn decide<'a>(&'a self, req: &'a RulesRequest) -> Decision<'a>;
}

/// Check a decision's shape: an approval needs a non-negative discount.
pub fn validate(d: RulesDecision) -> Result<RulesDecision, String> {
    if d.ok {
        match d.discount_amount_cents {
            Some(c) if (0..=crate::contract::voucher::MAX_CENTS).contains(&c) => {}
            Some(c) => return Err(format!("discountAmountCents {c} out of range")),
            None => return Err("an approval without discountAmountCents".into()),
        }
        if d.voucher_nr
            .as_ref()
            .is_some_and(|v| v.is_empty() || v.len() > 128)
        {
            return Err("voucherNr must be 1-128 characters".into());
        }
    }
    if d.reason.as_ref().is_some_and(|r| r.len() > 500) {
        return Err("reason longer than 500 characters".into());
    }
    Ok(d)
}

/// The longest answer a vendor may give (a decision is a few hundred bytes).
const MAX_ANSWER_BYTES: usize = 64 * 1024;

/// The vendor's rules over HTTP: a POST of the [`RulesRequest`] as JSON, signed in
/// Standard Webhooks format with the configured secret.
pub struct HttpRules {
    pub url: String,
    pub secret: Vec<u8>,
    pub timeout: Duration,
    client: crate::client::Client,
}

impl HttpRules {
    pub fn new(url: String, secret: Vec<u8>, timeout: Duration) -> Result<HttpRules, String> {
        Ok(HttpRules {
            url,
            secret,
            timeout,
            client: crate::client::Client::new(&[])?
                .timeout(timeout)
                .body_limit(MAX_ANSWER_BYTES),
        })
    }

    async fn call(&self, req: &RulesRequest) -> Result<RulesDecision, String> {
        use crate::client::{Error, Request};
        let body = serde_json::to_vec(req).map_err(|e| e.to_string())?;
        let id = {
            use sha2::Digest;
            format!(
                "rules_{}",
                hex::encode(
                    &sha2::Sha256::digest(format!(
                        "{:?}{}",
                        std::time::SystemTime::now(),
                        body.len()
                    ))[..12]
                )
            )
        };
        let ts = crate::clock::Clock::System.now_ms() / 1000;
        let signed = crate::webhook::sign_headers(
            &crate::webhook::Scheme::StandardWebhooks,
            &self.secret,
            &id,
            ts,
            &body,
        );
        let answer = match self
            .client
            .send(Request::post_json(&self.url, body).headers(signed))
            .await
        {
            Ok(a) => a,
            Err(Error::Unreachable(e)) => return Err(format!("unreachable: {e}")),
            Err(e @ Error::TooLarge(_)) => return Err(format!("invalid answer: {e}")),
            Err(e) => return Err(e.to_string()),
        };
        if !(200..300).contains(&answer.status) {
            return Err(format!("HTTP {}", answer.status));
        }
        let d: RulesDecision =
            serde_json::from_slice(&answer.body).map_err(|e| format!("invalid answer: {e}"))?;
        validate(d).map_err(|e| format!("invalid answer: {e}"))
    }
}

impl VoucherRules for HttpRules {
    fn decide<'a>(&'a self, req: &'a RulesRequest) -> Decision<'a> {
        // The client bounds the exchange by `timeout` ("no answer within … ms").
        Box::pin(self.call(req))
    }
}
