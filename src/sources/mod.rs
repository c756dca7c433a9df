//! Order sources: points for orders placed through LOKE (ordering app) and Olympus (POS),
//! in the same ledger as Karma's awards (issue 18). `order.rs` is pure (the platforms'
//! order shapes, status, exact amounts, the guest's contact, an order's standing here);
//! `jobs.rs` the writer jobs (dedupe by (source, order id), award, reversal, position,
//! counts, operator award, the admin views); `poll.rs` the background task per source
//! (paging, backoff, `Retry-After`), started by `app::start`. The config section is
//! `config::sources`; the admin operations are `app::sources`, reached through
//! `http::admin`.

pub mod jobs;
pub mod order;
pub mod poll;
