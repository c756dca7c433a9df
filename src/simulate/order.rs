//! **Pure**: orders in the shape of Karma's Public Order API (`location_id`, `items[]` with
//! `id`, `quantity_cents`, `price_cents`, `ordering_member`, `vouchers[]`) plus what
//! happens next (`then`), read from files with errors that name the file and the field;
//! and the voucher cart Karma builds from an order.

use std::path::Path;

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

/// What happens after the order is placed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Next {
    /// Payment succeeds: commit, award, account.
    Paid,
    /// The guest cancels: reactivate.
    Cancelled,
    /// Payment fails: reactivate.
    PaymentFailed,
    /// Paid, then refunded: commit, award, account, then reactivate (the use comes back;
    /// Karma's contract has no call that takes points back).
    Refunded,
}

impl Next {
    pub const ALL: [Next; 4] = [
        Next::Paid,
        Next::Cancelled,
        Next::PaymentFailed,
        Next::Refunded,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Next::Paid => "paid",
            Next::Cancelled => "cancelled",
            Next::PaymentFailed => "payment_failed",
            Next::Refunded => "refunded",
        }
    }

    /// Whether payment is collected (commit and award happen).
    pub fn pays(self) -> bool {
        matches!(self, Next::Paid | Next::Refunded)
    }
}

/// One order: the Public Order API's request body plus `id` and `then`.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Order {
    /// Names the order in the report (default: the file name and position).
    #[serde(default)]
    pub id: Option<String>,
    pub location_id: u64,
    pub items: Vec<Item>,
    #[serde(default)]
    pub ordering_member: Option<Member>,
    #[serde(default)]
    pub vouchers: Vec<String>,
    #[serde(default)]
    pub order_destination: Option<String>,
    #[serde(default)]
    pub order_destination_id: Option<String>,
    #[serde(default)]
    pub order_type: Option<String>,
    pub then: Next,
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Item {
    pub id: u64,
    pub quantity_cents: i64,
    /// Required here: the simulator has no catalogue to default from.
    pub price_cents: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub variants: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub coursing_order: Option<u32>,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[serde(deny_unknown_fields)]
pub struct Member {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_id: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub email: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phone: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
}

impl Member {
    /// Karma's lookup: `user_id` first, then email, then phone.
    pub fn identifier(&self) -> Option<(&'static str, String)> {
        if let Some(u) = self.user_id {
            return Some(("userId", u.to_string()));
        }
        if let Some(e) = &self.email {
            return Some(("email", e.clone()));
        }
        self.phone.as_ref().map(|p| ("phone", p.clone()))
    }

    /// The userId sent to the loyalty provider: Karma's user id, or for a guest known
    /// only by email or phone a stable id derived from it (Karma creates the account).
    pub fn user_id(&self) -> Option<String> {
        use sha2::Digest;
        let (kind, value) = self.identifier()?;
        if kind == "userId" {
            return Some(value);
        }
        let digest = sha2::Sha256::digest(format!("{kind}:{value}").as_bytes());
        Some(format!("guest-{}", hex::encode(&digest[..6])))
    }
}

/// The most lines and the largest quantity and price the simulator accepts (keeps every
/// product inside i64).
const MAX_ITEMS: usize = 500;
const MAX_QUANTITY_CENTS: i64 = 100_000_000;
const MAX_PRICE_CENTS: i64 = 10_000_000_000;

impl Order {
    /// The first rule the order breaks, naming the field.
    pub fn invalid(&self) -> Option<String> {
        if self.items.is_empty() {
            return Some("items: at least one item".into());
        }
        if self.items.len() > MAX_ITEMS {
            return Some(format!("items: at most {MAX_ITEMS}"));
        }
        for (i, it) in self.items.iter().enumerate() {
            if !(1..=MAX_QUANTITY_CENTS).contains(&it.quantity_cents) {
                return Some(format!(
                    "items[{i}].quantity_cents: 1 to {MAX_QUANTITY_CENTS}"
                ));
            }
            if !(0..=MAX_PRICE_CENTS).contains(&it.price_cents) {
                return Some(format!("items[{i}].price_cents: 0 to {MAX_PRICE_CENTS}"));
            }
        }
        if let Some(i) = self.vouchers.iter().position(|v| v.trim().is_empty()) {
            return Some(format!("vouchers[{i}]: a code, not blank"));
        }
        None
    }
}

/// One line's cents: `price_cents × quantity_cents / 100`, rounded half up (as a
/// provider rounds `priceCents × quantity`).
pub fn line_cents(it: &Item) -> i64 {
    let milli = i128::from(it.price_cents) * i128::from(it.quantity_cents);
    let cents = (milli + 50).div_euclid(100);
    i64::try_from(cents).unwrap_or(i64::MAX)
}

/// `quantity_cents / 100` as a JSON number (`150` → `1.5`), exact in decimal.
fn quantity(qc: i64) -> Value {
    if qc % 100 == 0 {
        return json!(qc / 100);
    }
    let text = format!("{}.{:02}", qc / 100, qc % 100);
    serde_json::from_str(&text).unwrap_or(json!(qc as f64 / 100.0))
}

/// The voucher cart Karma sends with a check, and its total: the sum of the lines,
/// nothing taken off.
pub fn voucher_cart(o: &Order) -> (Value, i64) {
    let items: Vec<Value> = o
        .items
        .iter()
        .map(|it| {
            json!({"inventoryItemId": it.id.to_string(), "quantity": quantity(it.quantity_cents),
                   "priceCents": it.price_cents})
        })
        .collect();
    let total = o
        .items
        .iter()
        .fold(0i64, |a, it| a.saturating_add(line_cents(it)));
    (json!({"items": items, "totalCents": total}), total)
}

/// Read order files: each holds one order or an array of them. Orders without an `id`
/// are named `file#n`.
pub fn read(paths: &[std::path::PathBuf]) -> Result<Vec<Order>, String> {
    let mut out = Vec::new();
    for p in paths {
        out.extend(read_file(p)?);
    }
    if out.is_empty() {
        return Err("no orders in the files given".into());
    }
    Ok(out)
}

fn read_file(p: &Path) -> Result<Vec<Order>, String> {
    let text = std::fs::read_to_string(p).map_err(|e| format!("{}: {e}", p.display()))?;
    parse(&text, &p.display().to_string())
}

/// Parse one file's text (`name` names it in errors and default ids).
pub fn parse(text: &str, name: &str) -> Result<Vec<Order>, String> {
    let mut de = serde_json::Deserializer::from_str(text);
    let many = text.trim_start().starts_with('[');
    let orders: Vec<Order> = if many {
        serde_path_to_error::deserialize(&mut de)
    } else {
        serde_path_to_error::deserialize::<_, Order>(&mut de).map(|o| vec![o])
    }
    .map_err(|e| format!("{name}: at {}: {}", e.path(), e.inner()))?;
    let mut out = Vec::with_capacity(orders.len());
    for (i, mut o) in orders.into_iter().enumerate() {
        let at = if many {
            format!("[{i}].")
        } else {
            String::new()
        };
        if let Some(e) = o.invalid() {
            return Err(format!("{name}: at {at}{e}"));
        }
        o.id.get_or_insert_with(|| format!("{name}#{}", i + 1));
        out.push(o);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cart_from_items_with_fractional_quantities() {
        let o = &parse(
            r#"{"location_id": 7, "items": [{"id": 11, "quantity_cents": 200, "price_cents": 450},
                {"id": 12, "quantity_cents": 35, "price_cents": 2399}], "vouchers": ["TEN"],
                "ordering_member": {"email": "a@b.example"}, "then": "paid"}"#,
            "o.json",
        )
        .unwrap()[0];
        let (cart, total) = voucher_cart(o);
        // 2 × 450 = 900; 0.35 × 2399 = 839.65 → 840
        assert_eq!(total, 1740);
        assert_eq!(
            cart,
            json!({"items": [{"inventoryItemId": "11", "quantity": 2, "priceCents": 450},
                             {"inventoryItemId": "12", "quantity": 0.35, "priceCents": 2399}],
                   "totalCents": 1740})
        );
        assert_eq!(o.id.as_deref(), Some("o.json#1"));
        let m = o.ordering_member.as_ref().unwrap();
        assert_eq!(m.identifier(), Some(("email", "a@b.example".to_string())));
        assert!(m.user_id().unwrap().starts_with("guest-"));
    }

    #[test]
    fn errors_name_the_file_and_field() {
        let e = parse(
            r#"[{"location_id": 1, "items": [{"id": 1, "quantity_cents": 100}], "then": "paid"}]"#,
            "x.json",
        )
        .unwrap_err();
        assert_eq!(
            e,
            "x.json: at [0].items[0]: missing field `price_cents` at line 1 column 62"
        );
        let e = parse(
            r#"{"location_id": 1, "items": [{"id": 1, "quantity_cents": 0, "price_cents": 5}], "then": "paid"}"#,
            "y.json",
        )
        .unwrap_err();
        assert_eq!(e, "y.json: at items[0].quantity_cents: 1 to 100000000");
        let e = parse(
            r#"{"location_id": 1, "items": [], "then": "shipped"}"#,
            "z.json",
        )
        .unwrap_err();
        assert!(
            e.starts_with("z.json: at then: unknown variant `shipped`"),
            "{e}"
        );
    }
}
