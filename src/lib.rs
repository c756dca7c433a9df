//! karma-provider: the provider side of Karma's custom voucher (and, next, loyalty)
//! integrations. See ARCHITECTURE.md for the map; each module says what it owns.

pub mod app;
pub mod backup;
pub mod bench;
pub mod client;
pub mod clock;
pub mod codes_cli;
pub mod config;
pub mod console;
pub mod dispatch;
pub mod faults;
pub mod http;
pub mod metrics;
pub mod replay;
pub mod rules;
pub mod service;
pub mod setup_cli;
pub mod simulate;
pub mod sources;
pub mod store;

// The pure domain lives in crates/domain (no I/O: checked by its dependency list); each of
// its modules is re-exported under its own name, so `crate::voucher` reads as before.
pub use karma_domain::{codegen, contract, karma_urls, loyalty, voucher, webhook, wire};

pub use clock::Clock;
pub use config::Config;
pub use http::Server;
