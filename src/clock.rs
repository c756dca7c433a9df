//! The one clock. Every decision that depends on time (hold expiry, validity windows,
//! schedules) reads [`Clock::now_ms`]; production uses the system clock, tests use a
//! manual clock they can set and advance, so no test depends on wall time.

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;

/// Milliseconds since the Unix epoch, UTC, and their RFC 3339 text: the domain's own.
pub use karma_domain::clock::{rfc3339, Millis};

#[derive(Clone, Debug)]
pub enum Clock {
    System,
    Manual(Arc<AtomicI64>),
}

impl Clock {
    /// A manual clock starting at `start_ms`.
    pub fn manual(start_ms: Millis) -> Clock {
        Clock::Manual(Arc::new(AtomicI64::new(start_ms)))
    }

    /// A manual clock starting at an RFC 3339 instant. Panics on a malformed literal
    /// (meant for tests and fixtures written by hand).
    pub fn manual_at(rfc3339: &str) -> Clock {
        let ts: jiff::Timestamp = rfc3339.parse().expect("valid RFC 3339 timestamp");
        Clock::manual(ts.as_millisecond())
    }

    pub fn now_ms(&self) -> Millis {
        match self {
            Clock::System => jiff::Timestamp::now().as_millisecond(),
            Clock::Manual(v) => v.load(Ordering::SeqCst),
        }
    }

    /// Set a manual clock; no effect on the system clock.
    pub fn set_ms(&self, ms: Millis) {
        if let Clock::Manual(v) = self {
            v.store(ms, Ordering::SeqCst);
        }
    }

    /// Move a manual clock forward; no effect on the system clock.
    pub fn advance_ms(&self, delta: Millis) {
        if let Clock::Manual(v) = self {
            v.fetch_add(delta, Ordering::SeqCst);
        }
    }
}
