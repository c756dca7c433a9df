//! **Pure**: a random but reproducible stream of orders (`--orders N --seed S`) with
//! realistic carts — a café/restaurant menu, one to five lines, whole and weighed
//! quantities — returning guests known by user id, email or phone, anonymous guests,
//! vouchers (shared codes and single-use codes that guests sometimes race for) and every
//! way an order ends. The same seed gives the same orders (rand's `StdRng`, seeded).

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::order::{Item, Member, Next, Order};

/// The codes and program the generated orders use.
#[derive(Debug, Clone, Default)]
pub struct World {
    /// Codes any number of orders may use.
    pub shared_codes: Vec<String>,
    /// Codes of one use each.
    pub single_use_codes: Vec<String>,
    /// Tags guests' emails and phones so each run has its own guests.
    pub run_tag: String,
}

/// (inventory id, unit price in cents, weighed: quantity in hundredths of a kg).
const MENU: [(u64, i64, bool); 14] = [
    (1001, 350, false),  // espresso
    (1002, 420, false),  // latte
    (1003, 280, false),  // croissant
    (1004, 1150, false), // burrito
    (1005, 990, false),  // salad
    (1006, 650, false),  // soup
    (1007, 1400, false), // pizza
    (1008, 600, false),  // beer
    (1009, 3200, false), // bottle of wine
    (1010, 2399, true),  // cheese by weight (per kg)
    (1011, 1890, true),  // olives by weight (per kg)
    (1012, 250, false),  // water
    (1013, 1750, false), // steak frites
    (1014, 520, false),  // cake
];

/// `n` orders at location `location` from `seed`.
pub fn orders(n: usize, seed: u64, location: u64, w: &World) -> Vec<Order> {
    let mut rng = StdRng::seed_from_u64(seed);
    let guests = (n / 3).max(3);
    (0..n)
        .map(|i| {
            let member = (rng.random_range(0..10) < 7)
                .then(|| guest(rng.random_range(0..guests), &w.run_tag));
            Order {
                id: Some(format!("order-{:05}", i + 1)),
                location_id: location,
                items: cart(&mut rng),
                ordering_member: member,
                vouchers: vouchers(&mut rng, w),
                order_destination: None,
                order_destination_id: None,
                order_type: Some(["OTC", "TAKEAWAY", "TABLE"][rng.random_range(0..3)].into()),
                then: next(&mut rng),
            }
        })
        .collect()
}

/// Guest `g`: known by user id, email or phone (a third each), the same every time.
fn guest(g: usize, tag: &str) -> Member {
    let mut m = Member {
        name: Some(format!("Guest {g}")),
        ..Member::default()
    };
    match g % 3 {
        0 => m.user_id = Some(1_000_000 + g as u64),
        1 => m.email = Some(format!("guest{g}.{tag}@example.com")),
        _ => {
            let digits: u64 = tag
                .bytes()
                .fold(0u64, |a, b| a.wrapping_mul(31).wrapping_add(u64::from(b)))
                % 1_000_000;
            m.phone = Some(format!("+4670{digits:06}{:03}", g % 1000));
        }
    }
    m
}

fn cart(rng: &mut StdRng) -> Vec<Item> {
    let lines = rng.random_range(1..=5);
    (0..lines)
        .map(|_| {
            let (id, price, weighed) = MENU[rng.random_range(0..MENU.len())];
            let quantity_cents = if weighed {
                rng.random_range(10..=80) // 0.10 to 0.80 kg
            } else {
                100 * rng.random_range(1..=3)
            };
            Item {
                id,
                quantity_cents,
                price_cents: price,
                variants: None,
                coursing_order: None,
            }
        })
        .collect()
}

/// Half the orders bring no voucher; the others a shared code or a single-use one
/// (drawn from all of them, so guests sometimes race for the same one), rarely two.
fn vouchers(rng: &mut StdRng, w: &World) -> Vec<String> {
    let mut out = Vec::new();
    let roll = rng.random_range(0..100);
    if roll < 50 {
        return out;
    }
    let pick = |rng: &mut StdRng, from: &[String]| {
        from.get(rng.random_range(0..from.len().max(1))).cloned()
    };
    let single = roll >= 75 && !w.single_use_codes.is_empty();
    let first = if single || w.shared_codes.is_empty() {
        pick(rng, &w.single_use_codes)
    } else {
        pick(rng, &w.shared_codes)
    };
    out.extend(first);
    if rng.random_range(0..10) == 0 {
        if let Some(c) = pick(rng, &w.shared_codes).filter(|c| !out.contains(c)) {
            out.push(c);
        }
    }
    out
}

fn next(rng: &mut StdRng) -> Next {
    match rng.random_range(0..100) {
        0..75 => Next::Paid,
        75..85 => Next::Cancelled,
        85..95 => Next::PaymentFailed,
        _ => Next::Refunded,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn world() -> World {
        World {
            shared_codes: vec!["PCT".into(), "FIX".into()],
            single_use_codes: vec!["ONE1".into(), "ONE2".into()],
            run_tag: "t".into(),
        }
    }

    #[test]
    fn the_same_seed_gives_the_same_orders() {
        let a = orders(50, 7, 42, &world());
        assert_eq!(a, orders(50, 7, 42, &world()));
        assert_ne!(a, orders(50, 8, 42, &world()));
        assert!(a.iter().all(|o| o.invalid().is_none()));
    }

    #[test]
    fn the_stream_has_every_kind_of_order() {
        let a = orders(200, 1, 42, &world());
        for n in Next::ALL {
            assert!(a.iter().any(|o| o.then == n), "{n:?}");
        }
        assert!(a.iter().any(|o| o.ordering_member.is_none()));
        assert!(a.iter().any(|o| o.vouchers.is_empty()));
        assert!(a
            .iter()
            .any(|o| o.vouchers.iter().any(|v| v.starts_with("ONE"))));
        assert!(a
            .iter()
            .any(|o| o.items.iter().any(|i| i.quantity_cents % 100 != 0)));
        let members: std::collections::BTreeSet<_> =
            a.iter().filter_map(|o| o.ordering_member.clone()).collect();
        assert!(members.len() < a.len() / 2, "guests come back");
    }
}
