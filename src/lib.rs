//! karma-provider: the provider side of Karma's custom voucher (and, next, loyalty)
//! integrations. See ARCHITECTURE.md for the map; each module says what it owns.

pub mod app;
pub mod backup;
pub mod bench;
pub mod client;
pub mod clock;
pub mod codegen;
pub mod codes_cli;
pub mod config;
pub mod console;
pub mod contract;
pub mod dispatch;
pub mod faults;
pub mod http;
pub mod karma_urls;
pub mod loyalty;
pub mod metrics;
pub mod replay;
pub mod rules;
pub mod service;
pub mod setup_cli;
pub mod simulate;
pub mod store;
pub mod voucher;
pub mod webhook;
pub mod wire;

pub use clock::Clock;
pub use config::Config;
pub use http::Server;
