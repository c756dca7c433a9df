//! Model test: random sequences of enroll / award / redeem / reverse / adjust / advance
//! clock, run against the service over HTTP and against a plain in-memory model written
//! here from the rules in the issue; every member's balance, lifetime and tier are compared
//! after every step.

mod common;

use common::*;
use serde_json::{json, Value};

const PROGRAM: &str = r#"
[[tenants.loyalty]]
program_id = 9
earn = { points = 1, per_cents = 100 }
signup_bonus = 10
pending_days = 1
expire_days = 3
tiers = [ { id = "bronze", name = "Bronze", min_lifetime = 0 },
          { id = "gold", name = "Gold", min_lifetime = 300, multiplier_percent = 200 } ]
[[tenants.loyalty.rewards]]
id = "r"
title = "Reward"
points_cost = 25
"#;

const DAY: i64 = 86_400_000;

struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

#[derive(Clone, Debug)]
struct MLot {
    id: u64,
    left: i64,
    life: i64,
    avail: i64,
    exp: i64,
}

#[derive(Default, Debug)]
struct MMember {
    lots: Vec<MLot>,
    lifetime_total: i64,
}

impl MMember {
    fn spendable_lots(&mut self, now: i64) -> impl Iterator<Item = &mut MLot> {
        self.lots
            .iter_mut()
            .filter(move |l| l.avail <= now && l.exp > now)
    }
    fn balance(&self, now: i64) -> i64 {
        self.lots
            .iter()
            .filter(|l| l.avail <= now && l.exp > now)
            .map(|l| l.left)
            .sum()
    }
    fn lifetime(&self, now: i64) -> i64 {
        self.lifetime_total
            - self
                .lots
                .iter()
                .filter(|l| l.avail > now)
                .map(|l| l.life)
                .sum::<i64>()
    }
    fn expire(&mut self, now: i64) {
        for l in &mut self.lots {
            if l.exp <= now {
                l.left = 0;
            }
        }
    }
    fn take(&mut self, now: i64, mut pts: i64) -> bool {
        if self.balance(now) < pts {
            return false;
        }
        for l in self.spendable_lots(now) {
            let t = pts.min(l.left);
            l.left -= t;
            pts -= t;
        }
        true
    }
}

fn tier(lifetime: i64) -> &'static str {
    if lifetime >= 300 {
        "gold"
    } else {
        "bronze"
    }
}

struct MAward {
    user: usize,
    lot: u64,
    cents: i64,
    points: i64,
    reversed: i64,
    purchase: String,
}

#[tokio::test]
async fn random_sequences_match_the_model() {
    for seed in [1u64, 7, 42, 1234, 99_991] {
        run(seed, 160).await;
    }
}

async fn run(seed: u64, steps: usize) {
    let h = Harness::start(&config_with(PROGRAM)).await;
    let mut rng = Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1);
    let users = ["a", "b", "c"];
    let mut model: Vec<Option<MMember>> = vec![None, None, None];
    let mut awards: Vec<MAward> = Vec::new();
    let mut next_lot = 0u64;
    let mut n = 0u64;
    let post = |path: &str, body: Value| {
        let h = &h;
        let path = path.to_string();
        async move {
            let r = h.call(&path, &body).await;
            assert!(
                r.status == 200,
                "{path}: {}",
                String::from_utf8_lossy(&r.bytes)
            );
            r.json()
        }
    };
    for step in 0..steps {
        n += 1;
        let now = h.clock.now_ms();
        let u = rng.below(3) as usize;
        let user = users[u];
        let what = rng.below(100);
        let ctx = format!("seed {seed} step {step}");
        if what < 10 {
            let v = post(
                "loyalty/enroll",
                json!({"userId": user, "loyaltyProgramId": 9}),
            )
            .await;
            if model[u].is_none() {
                assert_eq!(v["pointsAwarded"], json!(10), "{ctx}");
                let mut m = MMember::default();
                m.lots.push(MLot {
                    id: next_lot,
                    left: 10,
                    life: 0,
                    avail: now,
                    exp: now + 3 * DAY,
                });
                next_lot += 1;
                m.lifetime_total = 10;
                model[u] = Some(m);
            }
        } else if what < 45 {
            let cents = rng.below(20_000) as i64;
            let purchase = format!("p{n}");
            let v = post("loyalty/award", json!({"userId": user, "loyaltyProgramId": 9, "purchaseId": purchase, "purchaseAmountCents": cents, "itemIds": [], "transactionId": format!("loy_{n:032x}")})).await;
            match &mut model[u] {
                None => assert_eq!(v["error"], json!("MEMBER_NOT_FOUND"), "{ctx}"),
                Some(m) => {
                    m.expire(now);
                    let mult = if tier(m.lifetime(now)) == "gold" {
                        200
                    } else {
                        100
                    };
                    let pts = (cents / 100) * mult / 100;
                    assert_eq!(v["pointsAwarded"], json!(pts), "{ctx}");
                    m.lots.push(MLot {
                        id: next_lot,
                        left: pts,
                        life: pts,
                        avail: now + DAY,
                        exp: now + 3 * DAY,
                    });
                    m.lifetime_total += pts;
                    awards.push(MAward {
                        user: u,
                        lot: next_lot,
                        cents,
                        points: pts,
                        reversed: 0,
                        purchase,
                    });
                    next_lot += 1;
                }
            }
        } else if what < 65 {
            let v = post("loyalty/redeem", json!({"userId": user, "loyaltyProgramId": 9, "rewardId": "r", "transactionId": format!("loy_{n:032x}")})).await;
            match &mut model[u] {
                None => assert_eq!(v["error"], json!("MEMBER_NOT_FOUND"), "{ctx}"),
                Some(m) => {
                    m.expire(now);
                    if m.take(now, 25) {
                        assert_eq!(v["ok"], json!(true), "{ctx}: {v}");
                    } else {
                        assert_eq!(v["error"], json!("INSUFFICIENT_POINTS"), "{ctx}: {v}");
                    }
                }
            }
        } else if what < 75 && !awards.is_empty() {
            let i = rng.below(awards.len() as u64) as usize;
            let a = &mut awards[i];
            let partial = rng.below(2) == 0 && a.cents > 0;
            let amount = if partial {
                1 + rng.below(a.cents as u64) as i64
            } else {
                0
            };
            let mut body = json!({"id": format!("rev{n}"), "purchaseId": a.purchase});
            if partial {
                body["amountCents"] = json!(amount);
            }
            let r = h.admin("POST", "loyalty/9/reversals", Some(&body)).await;
            assert_eq!(
                r.status,
                200,
                "{ctx}: {}",
                String::from_utf8_lossy(&r.bytes)
            );
            let v = r.json();
            let left = a.points - a.reversed;
            let pts = if partial {
                (a.points * amount / a.cents).min(left)
            } else {
                left
            };
            if left == 0 {
                assert_eq!(v["error"], json!("ALREADY_REVERSED"), "{ctx}");
            } else {
                let m = model[a.user].as_mut().unwrap();
                m.expire(now);
                let mut rest = pts;
                if let Some(l) = m.lots.iter_mut().find(|l| l.id == a.lot) {
                    let t = rest.min(l.left);
                    l.left -= t;
                    l.life -= pts.min(l.life);
                    rest -= t;
                }
                for l in m.spendable_lots(now) {
                    let t = rest.min(l.left);
                    l.left -= t;
                    rest -= t;
                }
                m.lifetime_total -= pts;
                a.reversed += pts;
                assert_eq!(
                    (v["pointsReversed"].clone(), v["pointsUnrecovered"].clone()),
                    (json!(pts), json!(rest)),
                    "{ctx}"
                );
            }
        } else if what < 85 {
            if let Some(m) = &mut model[u] {
                let member = post(
                    "loyalty/lookup",
                    json!({"loyaltyProgramId": 9, "identifier": user, "identifierType": "userId"}),
                )
                .await;
                let id = member["memberId"].as_str().unwrap().to_string();
                let pts = rng.below(60) as i64 - 30;
                let pts = if pts == 0 { 1 } else { pts };
                let r = h
                    .admin(
                        "POST",
                        &format!("loyalty/9/members/{id}/adjustments"),
                        Some(&json!({"id": format!("adj{n}"), "points": pts, "reason": "model"})),
                    )
                    .await;
                let v = r.json();
                m.expire(now);
                if pts > 0 {
                    m.lots.push(MLot {
                        id: next_lot,
                        left: pts,
                        life: 0,
                        avail: now,
                        exp: now + 3 * DAY,
                    });
                    next_lot += 1;
                    assert_eq!(v["ok"], json!(true), "{ctx}");
                } else if m.take(now, -pts) {
                    assert_eq!(v["ok"], json!(true), "{ctx}: {v}");
                } else {
                    assert_eq!(v["error"], json!("INSUFFICIENT_POINTS"), "{ctx}: {v}");
                }
            }
        } else {
            h.clock.advance_ms(rng.below(30) as i64 * 3_600_000);
        }
        // Ledger ids advance once per entry in the service; keep the model's lot ids only
        // as identities, not as sequence numbers.
        let now = h.clock.now_ms();
        for (i, m) in model.iter().enumerate() {
            let v = post(
                "loyalty/account",
                json!({"userId": users[i], "loyaltyProgramId": 9}),
            )
            .await;
            match m {
                None => assert_eq!(v["error"], json!("MEMBER_NOT_FOUND"), "{ctx}"),
                Some(m) => {
                    let want = json!({"ok": true, "currentBalance": m.balance(now), "lifetimeEarned": m.lifetime(now), "tierName": if tier(m.lifetime(now)) == "gold" { "Gold" } else { "Bronze" }, "tierId": tier(m.lifetime(now))});
                    assert_eq!(v, want, "{ctx}: user {}", users[i]);
                }
            }
        }
    }
}
