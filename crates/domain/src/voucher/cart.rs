//! The cart Karma sends with a check: lines of `{inventoryItemId, quantity, priceCents}`
//! and `totalCents`. Money is integer cents; quantity is kept as integer thousandths so
//! weight-based lines (`0.347` kg) are exact.

use serde::de::{self, Deserializer, Visitor};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Cart {
    #[serde(default)]
    pub items: Vec<CartItem>,
    #[serde(deserialize_with = "crate::wire::int")]
    pub total_cents: i64,
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct CartItem {
    #[serde(deserialize_with = "crate::wire::opaque_id")]
    pub inventory_item_id: String,
    pub quantity: Quantity,
    #[serde(deserialize_with = "crate::wire::int")]
    pub price_cents: i64,
}

impl CartItem {
    /// priceCents × quantity, rounded half up to whole cents.
    pub fn line_cents(&self) -> i128 {
        let milli = (self.price_cents as i128).saturating_mul(self.quantity.milli as i128);
        milli.saturating_add(500).div_euclid(1000)
    }
}

/// A quantity in thousandths of a unit: `2` is 2000, `0.5` is 500.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Quantity {
    pub milli: i64,
}

impl Quantity {
    pub fn from_units(units: i64) -> Quantity {
        Quantity {
            milli: units.saturating_mul(1000),
        }
    }
}

impl Serialize for Quantity {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        if self.milli % 1000 == 0 {
            s.serialize_i64(self.milli / 1000)
        } else {
            // Only ever printed back in fixtures and logs; three decimals are exact text.
            s.serialize_str(&format!("{}.{:03}", self.milli / 1000, self.milli % 1000))
        }
    }
}

const MAX_UNITS: i64 = 1_000_000;

impl<'de> Deserialize<'de> for Quantity {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = Quantity;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                write!(
                    f,
                    "a positive number of at most {MAX_UNITS} with at most 3 decimals"
                )
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Quantity, E> {
                if v <= 0 || v > MAX_UNITS {
                    return Err(E::invalid_value(de::Unexpected::Signed(v), &self));
                }
                Ok(Quantity::from_units(v))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Quantity, E> {
                if v == 0 || v > MAX_UNITS as u64 {
                    return Err(E::invalid_value(de::Unexpected::Unsigned(v), &self));
                }
                let units = i64::try_from(v)
                    .map_err(|_| E::invalid_value(de::Unexpected::Unsigned(v), &self))?;
                Ok(Quantity::from_units(units))
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<Quantity, E> {
                // JSON has no decimal type; a decimal literal is turned into exact
                // thousandths here and never used as a float again.
                let scaled = v * 1000.0;
                let milli = scaled.round();
                if !v.is_finite()
                    || milli <= 0.0
                    || milli > (MAX_UNITS * 1000) as f64
                    || (scaled - milli).abs() > 1e-6
                {
                    return Err(E::invalid_value(de::Unexpected::Float(v), &self));
                }
                #[expect(
                    clippy::cast_possible_truncation,
                    reason = "milli is a whole number in (0, MAX_UNITS * 1000], checked above"
                )]
                Ok(Quantity {
                    milli: milli as i64,
                })
            }
        }
        d.deserialize_any(V)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantities_are_exact_thousandths() {
        let q: Quantity = serde_json::from_str("0.347").unwrap();
        assert_eq!(q.milli, 347);
        let q: Quantity = serde_json::from_str("3").unwrap();
        assert_eq!(q.milli, 3000);
        assert!(serde_json::from_str::<Quantity>("0.0001").is_err());
        assert!(serde_json::from_str::<Quantity>("0").is_err());
        assert!(serde_json::from_str::<Quantity>("-1").is_err());
        assert!(serde_json::from_str::<Quantity>("\"2\"").is_err());
    }

    #[test]
    fn line_rounds_half_up() {
        let item = CartItem {
            inventory_item_id: "1".into(),
            quantity: Quantity { milli: 347 },
            price_cents: 19_900,
        };
        // 19900 * 0.347 = 6905.3
        assert_eq!(item.line_cents(), 6905);
    }
}
