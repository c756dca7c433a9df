//! karma-domain: the rules of Karma's voucher and loyalty integrations, as pure code.
//!
//! Nothing here does I/O: this crate depends on no async runtime, no HTTP server or client
//! and no database (its `Cargo.toml` is the proof — a `tokio`, `hyper` or `sled` path here
//! does not compile). It holds the contract's wire types and their validation, the voucher
//! and loyalty decisions, webhook signatures, the code generator and Karma's URL rules. The
//! service crate (`karma-provider`) runs these rules inside its store jobs and re-exports
//! each module under the same name, so `karma_provider::voucher` is this crate's `voucher`.

pub mod clock;
pub mod codegen;
pub mod contract;
pub mod karma_urls;
pub mod loyalty;
pub mod voucher;
pub mod webhook;
pub mod wire;
