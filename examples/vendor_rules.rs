//! Embedding karma-provider with your own voucher rules in Rust.
//!
//! `cargo run --example vendor_rules` serves the embedded demo config; every check is
//! decided by `LoyalCustomerRules` below (20 % off for guests whose id starts with "vip-",
//! declined otherwise), while the service keeps holds, limits, idempotency and durability.

use std::sync::Arc;

use karma_provider::rules::{Decision, RulesDecision, RulesRequest, VoucherRules};
use karma_provider::{Clock, Config, Server};

struct LoyalCustomerRules;

impl VoucherRules for LoyalCustomerRules {
    fn decide<'a>(&'a self, req: &'a RulesRequest) -> Decision<'a> {
        Box::pin(async move {
            // Call your own engine here (a database, a gRPC service…). An `Err` fails closed.
            let vip = req
                .user_id
                .as_deref()
                .is_some_and(|u| u.starts_with("vip-"));
            Ok(if vip {
                RulesDecision {
                    ok: true,
                    discount_amount_cents: Some(req.cart.total_cents / 5),
                    voucher_nr: None,
                    reason: None,
                }
            } else {
                RulesDecision {
                    ok: false,
                    discount_amount_cents: None,
                    voucher_nr: None,
                    reason: Some("This code is for VIP guests.".into()),
                }
            })
        })
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let config = Config::load(None)?;
    let server =
        Server::start_with_rules(config, Clock::System, Some(Arc::new(LoyalCustomerRules))).await?;
    println!(
        "karma-provider with embedded rules listening on http://{}",
        server.addr
    );
    tokio::signal::ctrl_c().await?;
    server.stop().await;
    Ok(())
}
