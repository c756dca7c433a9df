//! The webhook inbox, as a writer job: a delivery id seen within the retention window is a
//! duplicate and changes nothing; a new one is stored (raw body, headers of interest,
//! receive time) together with its dedupe record before the 200 leaves.

use serde::{Deserialize, Serialize};

use crate::clock::Millis;
use crate::store::{key, StoreError, Txn};

use super::{Reply, State};

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct InboxRecord {
    pub seq: u64,
    pub id: String,
    pub event: String,
    pub received_at: Millis,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

/// A verified delivery, ready for the inbox.
pub struct Delivery {
    pub id: String,
    pub event: String,
    pub body: Vec<u8>,
    /// Headers of interest (signature headers, content type).
    pub headers: Vec<(String, String)>,
}

pub fn receive(
    txn: &mut Txn<'_>,
    _st: &mut State,
    t: &str,
    d: Delivery,
    now: Millis,
    retention_ms: i64,
) -> Result<Reply, StoreError> {
    let Delivery {
        id,
        event,
        body,
        headers,
    } = d;
    let (id, event) = (id.as_str(), event.as_str());
    let dk = key(&["whd", t, id]);
    if let Some(seen) = txn.get_u64_opt(&dk)? {
        if now - (seen as i64) < retention_ms {
            let mut r = Reply::ok(br#"{"ok":true,"duplicate":true}"#.to_vec());
            r.outcome = "duplicate".into();
            return Ok(r);
        }
    }
    let seq = txn.next_id()?;
    let rec = InboxRecord {
        seq,
        id: id.to_owned(),
        event: event.to_owned(),
        received_at: now,
        headers,
        body: String::from_utf8_lossy(&body).into_owned(),
    };
    txn.put_json(key(&["whin", t, &format!("{seq:016x}")]), &rec);
    txn.put_u64(dk, now.max(0) as u64);
    Ok(Reply::ok(br#"{"ok":true}"#.to_vec()))
}

/// The inbox in arrival order (admin API).
pub fn inbox(
    txn: &mut Txn<'_>,
    _st: &mut State,
    t: &str,
    limit: usize,
) -> Result<Reply, StoreError> {
    let mut items = Vec::new();
    for (_, v) in txn.scan_prefix(&crate::store::prefix(&["whin", t]))? {
        if let Ok(r) = serde_json::from_slice::<InboxRecord>(&v) {
            items.push(serde_json::json!({"seq": r.seq, "id": r.id, "event": r.event, "receivedAt": crate::clock::rfc3339(r.received_at), "headers": r.headers, "body": r.body}));
        }
    }
    let total = items.len();
    if items.len() > limit {
        items.drain(..items.len() - limit);
    }
    Ok(Reply::ok(
        serde_json::to_vec(&serde_json::json!({"ok": true, "count": total, "events": items}))
            .unwrap_or_default(),
    ))
}
