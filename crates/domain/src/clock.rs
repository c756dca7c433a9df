//! Time as the domain sees it: a plain number of milliseconds, and its RFC 3339 text. The
//! clock that produces the number (system or manual) lives in the service crate; the domain
//! only compares, adds and prints.

/// Milliseconds since the Unix epoch, UTC.
pub type Millis = i64;

/// RFC 3339 text for an instant, in UTC (`2026-11-23T10:00:00Z`, with milliseconds only
/// when they are not zero).
pub fn rfc3339(ms: Millis) -> String {
    match jiff::Timestamp::from_millisecond(ms) {
        Ok(ts) => ts.to_string(),
        Err(_) => ms.to_string(),
    }
}
