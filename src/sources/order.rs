//! **Pure**: the order shapes of LOKE (`seeds/003`) and Olympus (`seeds/004`), and what
//! one order means for the ledger: its id, whether it is open, completed (earns) or
//! reversed (refunded, cancelled, rejected), the amount in cents after discounts, the
//! guest's phone and email. Amounts never pass through a float: LOKE's are integers in
//! the lowest denomination, Olympus's decimals (JSON numbers or strings) are read from
//! their literal text and converted exactly, refusing more than two decimals. Also the
//! standing of an order in this service ([`OrderState`]), which records and listings name.

#![warn(clippy::arithmetic_side_effects)]

use serde::{Deserialize, Deserializer, Serialize};

use crate::loyalty::{normalize_identifier, IdentifierType};

/// Where an order stands, for the ledger.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Status {
    /// Not final yet (pending, accepted, preparing…): nothing to do, look again later.
    Open,
    /// Completed: earns once.
    Completed,
    /// Refunded, cancelled or rejected: an award made for it is reversed.
    Reversed(String),
}

/// An order's standing in this service.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, PartialOrd, Ord)]
#[serde(rename_all = "snake_case")]
pub enum OrderState {
    /// Seen, not final yet.
    Open,
    /// Points credited (to a matched guest, or by the operator).
    Awarded,
    /// Completed, but no member has its phone or email: waits for the operator.
    Unmatched,
    /// Completed, but its amount could not be read exactly: never awarded.
    Failed,
    /// Awarded, then refunded / cancelled / rejected: the award was reversed.
    Reversed,
    /// Refunded / cancelled / rejected before any award: nothing to do.
    Cancelled,
}

impl OrderState {
    pub const ALL: [OrderState; 6] = [
        OrderState::Open,
        OrderState::Awarded,
        OrderState::Unmatched,
        OrderState::Failed,
        OrderState::Reversed,
        OrderState::Cancelled,
    ];
    pub fn name(self) -> &'static str {
        match self {
            OrderState::Open => "open",
            OrderState::Awarded => "awarded",
            OrderState::Unmatched => "unmatched",
            OrderState::Failed => "failed",
            OrderState::Reversed => "reversed",
            OrderState::Cancelled => "cancelled",
        }
    }
    pub fn parse(s: &str) -> Option<OrderState> {
        OrderState::ALL.into_iter().find(|x| x.name() == s)
    }
}

/// One order, whatever its platform.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Order {
    pub id: String,
    pub status: Status,
    /// The platform's own word for its state (`completed`, `rejected`, …).
    pub state: String,
    /// Cents after discounts, or why it cannot be known (the order is then recorded as
    /// failed, never awarded).
    pub amount_cents: Result<i64, String>,
    /// Normalised as lookup normalises (`loyalty::normalize_identifier`); `None` when
    /// absent or not a phone / an email.
    pub phone: Option<String>,
    pub email: Option<String>,
    /// Item ids for the program's item bonus (LOKE `items[].id`, Olympus `menu_item_id`).
    pub item_ids: Vec<String>,
}

fn normalized(kind: IdentifierType, v: Option<&str>) -> Option<String> {
    v.filter(|s| !s.trim().is_empty())
        .and_then(|s| normalize_identifier(kind, s).ok())
}

// ---- LOKE ------------------------------------------------------------------------------

/// `Order` of LOKE's Orders API; fields this service does not use are ignored.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LokeOrder {
    pub id: String,
    pub state: String,
    #[serde(default)]
    pub created_at: Option<String>,
    #[serde(default)]
    pub completed_at: Option<String>,
    #[serde(default)]
    pub rejected_at: Option<String>,
    #[serde(default)]
    pub cart: Option<LokeCart>,
    #[serde(default)]
    pub payment: Option<LokePayment>,
    #[serde(default)]
    pub customer: Option<LokeCustomer>,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LokeCart {
    #[serde(default)]
    pub currency: Option<String>,
    #[serde(default)]
    pub total: Option<i64>,
    #[serde(default)]
    pub items: Vec<LokeItem>,
    #[serde(default)]
    pub adjustments: Vec<LokeAdjustment>,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LokeItem {
    pub id: String,
    #[serde(default)]
    pub title: Option<String>,
    #[serde(default)]
    pub quantity: Option<i64>,
    #[serde(default)]
    pub amount: Option<i64>,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LokeAdjustment {
    pub id: String,
    pub amount: i64,
    #[serde(default)]
    pub label: Option<String>,
}

/// `OrderPayment`: every amount in the lowest denomination.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LokePayment {
    pub id: String,
    pub state: String,
    pub currency: String,
    pub total: i64,
    pub discount_amount: i64,
    pub credit_amount: i64,
    pub charged_amount: i64,
    pub tip_amount: i64,
    pub delivery_amount: i64,
    #[serde(default)]
    pub refunded_at: Option<String>,
}

/// `CustomerTiny`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LokeCustomer {
    pub id: String,
    #[serde(default)]
    pub email: Option<String>,
    #[serde(default)]
    pub phone_number: Option<String>,
}

impl LokeOrder {
    /// Status: a refunded payment or a rejected/cancelled order reverses; `completed` (or a
    /// `completedAt` without a rejection) earns; anything else is open. The amount is the
    /// payment's `total` (items, external discounts and surcharges, delivery) minus its
    /// `discountAmount` (LOKE's own discounts); tips are not spend, credits are.
    pub fn to_order(&self) -> Order {
        let state = self.state.to_ascii_lowercase();
        let refunded = self
            .payment
            .as_ref()
            .is_some_and(|p| p.state.eq_ignore_ascii_case("refunded"));
        let status = if refunded {
            Status::Reversed("refunded".into())
        } else if matches!(state.as_str(), "rejected" | "cancelled" | "canceled") {
            Status::Reversed(state.clone())
        } else if state == "completed" || self.completed_at.is_some() {
            Status::Completed
        } else {
            Status::Open
        };
        let amount_cents = match &self.payment {
            None => Err("the order has no payment".to_string()),
            Some(p) => p
                .total
                .checked_sub(p.discount_amount)
                .filter(|a| (0..=crate::contract::rules::MAX_CENTS).contains(a))
                .ok_or_else(|| {
                    format!(
                        "payment total {} minus discountAmount {} is not 0..={} cents",
                        p.total,
                        p.discount_amount,
                        crate::contract::rules::MAX_CENTS
                    )
                }),
        };
        let c = self.customer.as_ref();
        Order {
            id: self.id.clone(),
            status,
            state: self.state.clone(),
            amount_cents,
            phone: normalized(
                IdentifierType::Phone,
                c.and_then(|c| c.phone_number.as_deref()),
            ),
            email: normalized(IdentifierType::Email, c.and_then(|c| c.email.as_deref())),
            item_ids: self
                .cart
                .iter()
                .flat_map(|c| c.items.iter().map(|i| i.id.clone()))
                .collect(),
        }
    }
}

/// The cursor for the next page, from the response headers: `Link: <…?after=X…>;
/// rel="next"` (RFC 8288), else `X-Next-Cursor`. `None`: this was the last page.
pub fn loke_next_cursor(link: Option<&str>, next_cursor: Option<&str>) -> Option<String> {
    let from_link = link.and_then(|l| {
        l.split(',').find_map(|part| {
            let (url, params) = part.split_once(';')?;
            let is_next = params.split(';').any(|p| {
                let p = p.trim().to_ascii_lowercase();
                p == "rel=\"next\"" || p == "rel=next"
            });
            let url = url.trim().strip_prefix('<')?.strip_suffix('>')?;
            let query = url.split_once('?')?.1;
            let after = query.split('&').find_map(|kv| kv.strip_prefix("after="))?;
            let after = percent_encoding::percent_decode_str(after)
                .decode_utf8()
                .ok()?
                .into_owned();
            (is_next && !after.is_empty()).then_some(after)
        })
    });
    from_link.or_else(|| {
        next_cursor
            .map(str::trim)
            .filter(|c| !c.is_empty())
            .map(str::to_owned)
    })
}

// ---- Olympus ---------------------------------------------------------------------------

/// A decimal amount as written: a JSON number's literal, or a JSON string's content.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decimal(pub String);

impl<'de> Deserialize<'de> for Decimal {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Decimal, D::Error> {
        let raw = Box::<serde_json::value::RawValue>::deserialize(d)?;
        let text = raw.get();
        if text.starts_with('"') {
            let s: String = serde_json::from_str(text).map_err(serde::de::Error::custom)?;
            Ok(Decimal(s))
        } else {
            Ok(Decimal(text.to_owned()))
        }
    }
}

/// `16.19` → 1619, `"16.1"` → 1610, `"16"` → 1600; more than two decimals, a sign, an
/// exponent or anything but digits and one point is refused with a sentence.
pub fn decimal_cents(d: &Decimal) -> Result<i64, String> {
    let s = d.0.as_str();
    let (int, frac) = s.split_once('.').unwrap_or((s, ""));
    let digits = |t: &str| t.bytes().all(|b| b.is_ascii_digit());
    if int.is_empty() || !digits(int) || !digits(frac) || (s.contains('.') && frac.is_empty()) {
        return Err(format!("{s:?} is not a decimal amount such as 16.19"));
    }
    if frac.len() > 2 {
        return Err(format!(
            "{s:?} has more than 2 decimals; cents cannot hold it exactly"
        ));
    }
    // Scaled by 100 through the decimal's own digits; no float anywhere.
    let text = format!("{int}{frac:0<2}");
    let text = text.trim_start_matches('0');
    if text.is_empty() {
        return Ok(0);
    }
    text.parse::<i64>()
        .ok()
        .filter(|c| *c <= crate::contract::rules::MAX_CENTS)
        .ok_or_else(|| {
            format!(
                "{s:?} is more than {} cents",
                crate::contract::rules::MAX_CENTS
            )
        })
}

/// An order of Olympus's `GET /v1/commerce/orders`; unused fields are ignored.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct OlympusOrder {
    pub id: String,
    pub status: String,
    #[serde(default)]
    pub currency: Option<String>,
    #[serde(default)]
    pub location_id: Option<String>,
    #[serde(default)]
    pub customer_id: Option<String>,
    #[serde(default)]
    pub subtotal: Option<Decimal>,
    #[serde(default)]
    pub tax_total: Option<Decimal>,
    #[serde(default)]
    pub discount_total: Option<Decimal>,
    pub total: Decimal,
    #[serde(default)]
    pub items: Vec<OlympusItem>,
    /// Custom key-value metadata set at order creation: `phone` and `email` are read.
    #[serde(default)]
    pub metadata: Option<serde_json::Map<String, serde_json::Value>>,
    #[serde(default)]
    pub created_at: Option<String>,
    #[serde(default)]
    pub updated_at: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct OlympusItem {
    pub id: String,
    pub name: String,
    pub quantity: i64,
    pub unit_price: Decimal,
    #[serde(default)]
    pub total_price: Option<Decimal>,
    #[serde(default)]
    pub menu_item_id: Option<String>,
}

impl OlympusOrder {
    /// `completed` earns; `cancelled` and `refunded` reverse; the rest of the flow
    /// (draft, pending, confirmed, preparing, ready) is open. The amount is `total`
    /// (after `discount_total`), exactly.
    pub fn to_order(&self) -> Order {
        let state = self.status.to_ascii_lowercase();
        let status = match state.as_str() {
            "completed" => Status::Completed,
            "cancelled" | "canceled" | "refunded" => Status::Reversed(state.clone()),
            _ => Status::Open,
        };
        let meta = |k: &str| {
            self.metadata
                .as_ref()
                .and_then(|m| m.get(k))
                .and_then(|v| v.as_str())
        };
        Order {
            id: self.id.clone(),
            status,
            state: self.status.clone(),
            amount_cents: decimal_cents(&self.total).map_err(|m| format!("total: {m}")),
            phone: normalized(IdentifierType::Phone, meta("phone")),
            email: normalized(IdentifierType::Email, meta("email")),
            item_ids: self
                .items
                .iter()
                .filter_map(|i| i.menu_item_id.clone())
                .collect(),
        }
    }
}

/// A list answer: a JSON array of orders, or an object holding it under `orders`, `data`
/// or `items` (Olympus does not document the list's envelope).
pub fn olympus_page(body: &[u8]) -> Result<Vec<OlympusOrder>, String> {
    use serde_json::value::RawValue;
    // Raw values throughout: a number is never parsed into a float on the way.
    let raw: &RawValue = serde_json::from_slice(body).map_err(|e| format!("not JSON: {e}"))?;
    let list: &RawValue = if raw.get().starts_with('[') {
        raw
    } else {
        let mut m: std::collections::HashMap<String, &RawValue> =
            serde_json::from_str(raw.get()).map_err(|_| "neither an array nor an object")?;
        ["orders", "data", "items"]
            .iter()
            .find_map(|k| m.remove(*k).filter(|v| v.get().starts_with('[')))
            .ok_or("an object without an orders, data or items array")?
    };
    let de = &mut serde_json::Deserializer::from_str(list.get());
    serde_path_to_error::deserialize(de).map_err(|e| format!("at {}: {}", e.path(), e.inner()))
}

/// A LOKE list answer: `Order[]`.
pub fn loke_page(body: &[u8]) -> Result<Vec<LokeOrder>, String> {
    let de = &mut serde_json::Deserializer::from_slice(body);
    serde_path_to_error::deserialize(de).map_err(|e| format!("at {}: {}", e.path(), e.inner()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decimals_to_cents_exactly() {
        for (s, v) in [
            ("16.19", Ok(1619)),
            ("0.1", Ok(10)),
            ("16", Ok(1600)),
            ("0.00", Ok(0)),
            ("007.50", Ok(750)),
            ("1.005", Err(())),
            ("16.", Err(())),
            ("-1.00", Err(())),
            ("1e2", Err(())),
            ("", Err(())),
            ("99999999999999999999.99", Err(())),
        ] {
            assert_eq!(decimal_cents(&Decimal(s.into())).map_err(|_| ()), v, "{s}");
        }
    }

    #[test]
    fn olympus_numbers_keep_their_literal() {
        // 0.29 * 100 is 28.999999999999996 as a float.
        let page =
            olympus_page(br#"{"orders":[{"id":"o1","status":"completed","total":0.29}]}"#).unwrap();
        assert_eq!(page[0].to_order().amount_cents, Ok(29));
        let page = olympus_page(br#"[{"id":"o1","status":"completed","total":"1.234"}]"#).unwrap();
        assert!(page[0].to_order().amount_cents.is_err());
    }

    #[test]
    fn loke_cursor_from_headers() {
        let link = r#"<https://api.example/orders?after=abc%3D%3D&x=1>; rel="next""#;
        assert_eq!(loke_next_cursor(Some(link), None).as_deref(), Some("abc=="));
        let prev = r#"<https://api.example/orders?after=zzz>; rel="prev""#;
        assert_eq!(loke_next_cursor(Some(prev), None), None);
        assert_eq!(loke_next_cursor(None, Some(" c2 ")).as_deref(), Some("c2"));
        assert_eq!(loke_next_cursor(None, None), None);
    }
}
