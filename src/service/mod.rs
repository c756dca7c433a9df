//! Use cases: the glue between the pure domain (`voucher/`) and the store. Each public
//! function here runs as one job on the store's writer thread, so it sees a consistent
//! state, decides with the domain's plain functions, and writes its effect together with
//! its idempotency record; the store makes that durable before anyone sees the [`Reply`].
//!
//! [`State`] is the writer's in-memory state: each tenant's campaign catalog and code
//! index, and the live holds that count against limits. It is rebuilt from disk at start,
//! and changed only through its journaled mutators (see [`state`]), so that whatever a
//! failed job changed is undone with its writes.

pub mod admin;
pub mod codes;
pub mod lots;
pub mod loyalty;
pub mod migrate;
pub mod packed;
pub mod records;
mod replica;
pub mod sliced;
pub mod state;
pub mod states;
pub mod timeline;
pub mod voucher;
pub mod webhook;

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use sha2::{Digest, Sha256};

use crate::config::Config;
use crate::contract::ApiError;
use crate::store::{key, prefix, StoreError, Txn};
use crate::voucher::{match_key, Campaign, CampaignSpec, CodeMatch};

pub use state::{Programs, State};

/// What a job answers: an HTTP status, the exact body bytes, and an outcome label for
/// metrics (`ok` or the error code).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    pub status: u16,
    pub body: Vec<u8>,
    pub outcome: String,
}

impl Reply {
    pub fn ok(body: Vec<u8>) -> Reply {
        Reply {
            status: 200,
            body,
            outcome: "ok".into(),
        }
    }

    pub fn rejected(code: &str, message: &str) -> Reply {
        Reply {
            status: 200,
            body: crate::contract::rejection_body(code, message),
            outcome: code.to_owned(),
        }
    }

    /// A JSON value with a status (admin answers).
    pub fn json(status: u16, v: serde_json::Value) -> Reply {
        Reply {
            status,
            body: serde_json::to_vec(&v).unwrap_or_default(),
            outcome: if status < 300 {
                "ok".into()
            } else {
                status.to_string()
            },
        }
    }

    pub fn not_found(what: &str) -> Reply {
        Reply::error(&ApiError::new(404, "NOT_FOUND", what))
    }

    pub fn error(e: &ApiError) -> Reply {
        Reply {
            status: e.status,
            body: e.body(),
            outcome: e.code.to_owned(),
        }
    }
}

/// Whether a campaign came from the config file (read-only through the API) or the API.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Source {
    Config,
    Api,
}

#[derive(Debug, Clone)]
pub struct CampaignEntry {
    pub campaign: Arc<Campaign>,
    pub source: Source,
}

#[derive(Debug)]
pub struct TenantState {
    pub hold_ttl_ms: i64,
    pub code_match: CodeMatch,
    pub campaigns: BTreeMap<String, CampaignEntry>,
    /// match key → (campaign id, the code as configured)
    pub index: HashMap<String, (String, String)>,
    /// Loyalty programs by Karma loyaltyProgramId (as text).
    pub programs: HashMap<String, Arc<crate::loyalty::Program>>,
    /// Ids of the programs written in the config file (not replaceable at runtime).
    pub config_programs: std::collections::HashSet<String>,
}

impl TenantState {
    /// Codes of `spec` that another campaign already owns.
    pub fn code_conflict(&self, spec: &CampaignSpec) -> Option<(String, String)> {
        spec.codes.iter().find_map(|code| {
            self.index
                .get(&match_key(self.code_match, code))
                .filter(|(cid, _)| *cid != spec.id)
                .map(|(cid, _)| (code.clone(), cid.clone()))
        })
    }

    /// Install a campaign at load (at run time: [`State::install_campaign`]).
    pub fn install(&mut self, c: Campaign, source: Source) {
        self.install_entry(CampaignEntry {
            campaign: Arc::new(c),
            source,
        });
    }

    /// Install a campaign and its codes over the one of the same id; returns that one.
    fn install_entry(&mut self, e: CampaignEntry) -> Option<CampaignEntry> {
        let id = e.campaign.id.clone();
        let prev = self.uninstall(&id);
        for code in &e.campaign.spec.codes {
            self.index
                .insert(match_key(self.code_match, code), (id.clone(), code.clone()));
        }
        self.campaigns.insert(id, e);
        prev
    }

    /// Remove a campaign and its codes; returns it.
    fn uninstall(&mut self, id: &str) -> Option<CampaignEntry> {
        let old = self.campaigns.remove(id)?;
        for code in &old.campaign.spec.codes {
            let mk = match_key(self.code_match, code);
            if self.index.get(&mk).is_some_and(|(cid, _)| cid == id) {
                self.index.remove(&mk);
            }
        }
        Some(old)
    }
}

pub mod keys {
    //! Record keys: every key the service writes is built here, from a prefix registered in
    //! [`crate::store::keys::PREFIXES`].
    use super::*;

    /// A sequence number as a fixed-width key component (keys sort in number order).
    pub fn seq_key(seq: u64) -> String {
        format!("{seq:016x}")
    }
    pub fn inbox_key(t: &str, seq: u64) -> Vec<u8> {
        key(&["whin", t, &seq_key(seq)])
    }
    pub fn inbox_prefix(t: &str) -> Vec<u8> {
        prefix(&["whin", t])
    }
    pub fn queue_key(t: &str, route: &str, seq: u64) -> Vec<u8> {
        key(&["whq", t, route, &seq_key(seq)])
    }
    pub fn queue_prefix(t: &str, route: &str) -> Vec<u8> {
        prefix(&["whq", t, route])
    }
    /// Every route's queue of the tenant.
    pub fn queues_prefix(t: &str) -> Vec<u8> {
        prefix(&["whq", t])
    }
    pub fn lease_key(t: &str, route: &str) -> Vec<u8> {
        key(&["whl", t, route])
    }
    pub fn dead_key(t: &str, route: &str, seq: u64) -> Vec<u8> {
        key(&["whdl", t, route, &seq_key(seq)])
    }
    pub fn dead_prefix(t: &str) -> Vec<u8> {
        prefix(&["whdl", t])
    }
    pub fn delivered_key(t: &str, seq: u64, route: &str) -> Vec<u8> {
        key(&["whs", t, &seq_key(seq), route])
    }
    pub fn attempt_key(t: &str, seq: u64, route: &str, n: u32) -> Vec<u8> {
        key(&["wha", t, &seq_key(seq), route, &format!("{n:04}")])
    }
    pub fn attempts_prefix(t: &str, seq: u64, route: &str) -> Vec<u8> {
        prefix(&["wha", t, &seq_key(seq), route])
    }
    pub fn dedupe_key(t: &str, delivery_id: &str) -> Vec<u8> {
        key(&["whd", t, delivery_id])
    }
    pub fn dedupe_prefix(t: &str) -> Vec<u8> {
        prefix(&["whd", t])
    }
    pub fn campaigns_prefix(t: &str) -> Vec<u8> {
        prefix(&["camp", t])
    }
    pub fn program(t: &str, id: &str) -> Vec<u8> {
        key(&["prog", t, id])
    }
    pub fn campaign(t: &str, id: &str) -> Vec<u8> {
        key(&["camp", t, id])
    }
    pub fn hold(t: &str, r: &str) -> Vec<u8> {
        key(&["hold", t, r])
    }
    pub fn live(t: &str, r: &str) -> Vec<u8> {
        key(&["live", t, r])
    }
    pub fn used(t: &str, c: &str) -> Vec<u8> {
        key(&["used", t, c])
    }
    pub fn used_code(t: &str, c: &str, code: &str) -> Vec<u8> {
        key(&["usedc", t, c, code])
    }
    /// Discount cents committed for a campaign (its budget).
    pub fn used_amount(t: &str, c: &str) -> Vec<u8> {
        key(&["useda", t, c])
    }
    /// The record holding a bulk code: its bucket (see `codes::bucket_of`), one record
    /// for every code whose match key hashes there.
    pub fn bulk_bucket(t: &str, bucket: u64) -> Vec<u8> {
        key(&["bcb", t, &format!("{bucket:05x}")])
    }
    /// Every bulk-code bucket of a tenant.
    pub fn bulk_code_prefix(t: &str) -> Vec<u8> {
        prefix(&["bcb", t])
    }
    /// Bulk codes one to a record (schema 2 and before; moved into buckets at start).
    pub fn old_bulk_code_prefix() -> Vec<u8> {
        prefix(&["bcode"])
    }
    /// The tenant's bulk-code generation: bumped with (or, offline, before) every write of
    /// bulk codes; the code index records the generation it was built from.
    pub fn bulk_generation(t: &str) -> Vec<u8> {
        key(&["bgen", t])
    }
    /// How many gift codes the tenant generated from a pattern (the 1 % rule).
    pub fn generated_count(t: &str, pattern: &str) -> Vec<u8> {
        key(&["bgcount", t, pattern])
    }
    /// How many reward codes a program issued from a pattern (the 1 % rule).
    pub fn reward_code_count(t: &str, p: &str, pattern: &str) -> Vec<u8> {
        key(&["lcount", t, p, pattern])
    }
    pub fn used_guest(t: &str, c: &str, g: &str) -> Vec<u8> {
        key(&["usedg", t, c, g])
    }
    pub fn idem(t: &str, op: &str, id: &str) -> Vec<u8> {
        key(&["idem", t, op, id])
    }
    pub fn history_prefix(t: &str, c: &str, code: &str) -> Vec<u8> {
        prefix(&["hist", t, c, code])
    }
    pub fn member(t: &str, p: &str, m: &str) -> Vec<u8> {
        key(&["lmem", t, p, m])
    }
    /// The bucket of identifiers (type key `user`, `phone`, … + normalised value →
    /// memberId) holding one (see `packed`).
    pub fn ident_bucket(t: &str, p: &str, bucket: &str) -> Vec<u8> {
        key(&["lidb", t, p, bucket])
    }
    /// A time as a fixed-width key component (times before 1970 sort as 1970).
    pub fn time_key(at: crate::clock::Millis) -> String {
        seq_key(u64::try_from(at).unwrap_or(0))
    }
    /// A member's credit lot, by the seq of the entry that made it (oldest first).
    pub fn lot(t: &str, p: &str, m: &str, seq: u64) -> Vec<u8> {
        key(&["llot", t, p, m, &seq_key(seq)])
    }
    pub fn lot_prefix(t: &str, p: &str, m: &str) -> Vec<u8> {
        prefix(&["llot", t, p, m])
    }
    /// A lot that expires, by expiry time (value empty).
    pub fn lot_expiry(t: &str, p: &str, m: &str, at: crate::clock::Millis, seq: u64) -> Vec<u8> {
        key(&["llexp", t, p, m, &time_key(at), &seq_key(seq)])
    }
    pub fn lot_expiry_prefix(t: &str, p: &str, m: &str) -> Vec<u8> {
        prefix(&["llexp", t, p, m])
    }
    /// A lot made pending, by the time it becomes spendable (value empty).
    pub fn lot_pending(t: &str, p: &str, m: &str, at: crate::clock::Millis, seq: u64) -> Vec<u8> {
        key(&["llpen", t, p, m, &time_key(at), &seq_key(seq)])
    }
    pub fn lot_pending_prefix(t: &str, p: &str, m: &str) -> Vec<u8> {
        prefix(&["llpen", t, p, m])
    }
    pub fn ledger_prefix(t: &str, p: &str, m: &str) -> Vec<u8> {
        prefix(&["lled", t, p, m])
    }
    pub fn ledger(t: &str, p: &str, m: &str, seq: u64) -> Vec<u8> {
        key(&["lled", t, p, m, &format!("{seq:016x}")])
    }
    pub fn award(t: &str, p: &str, tx: &str) -> Vec<u8> {
        key(&["lawd", t, p, tx])
    }
    pub fn purchase(t: &str, p: &str, id: &str) -> Vec<u8> {
        key(&["lpur", t, p, id])
    }
    pub fn redemption(t: &str, p: &str, id: &str) -> Vec<u8> {
        key(&["lred", t, p, id])
    }
    pub fn stock(t: &str, p: &str, reward: &str) -> Vec<u8> {
        key(&["lstock", t, p, reward])
    }
    pub fn reward_code(t: &str, p: &str, code: &str) -> Vec<u8> {
        key(&["lcode", t, p, code])
    }
    /// The bucket of enroll answers (by userId) holding one (see `packed`).
    pub fn enrollment_bucket(t: &str, p: &str, bucket: &str) -> Vec<u8> {
        key(&["lenrb", t, p, bucket])
    }
    /// What a provider state made (`hold`: params digest → providerRef; `committed`:
    /// transactionId → providerRef), so that setting it up again finds it.
    pub fn provider_state(t: &str, state: &str, id: &str) -> Vec<u8> {
        key(&["pstate", t, state, id])
    }
    /// An order source's position and counts (`crate::sources`).
    pub fn source_status(t: &str, source: &str) -> Vec<u8> {
        key(&["srcp", t, source])
    }
    pub fn source_order(t: &str, source: &str, order: &str) -> Vec<u8> {
        key(&["srco", t, source, order])
    }
    pub fn source_orders_prefix(t: &str, source: &str) -> Vec<u8> {
        prefix(&["srco", t, source])
    }
    /// A LOKE order to fetch again by id until its watch ends (value: the end, u64 ms).
    pub fn source_watch(t: &str, source: &str, order: &str) -> Vec<u8> {
        key(&["srcw", t, source, order])
    }
    pub fn source_watch_prefix(t: &str, source: &str) -> Vec<u8> {
        prefix(&["srcw", t, source])
    }
}

impl State {
    /// Build the writer state from the config and what is on disk.
    pub fn load(
        cfg: &Config,
        txn: &mut Txn<'_>,
        published: (Arc<crate::metrics::Gauges>, Arc<state::Programs>),
    ) -> Result<State, StoreError> {
        let mut tenants = HashMap::new();
        for t in &cfg.tenants {
            let mut ts = TenantState {
                hold_ttl_ms: t.hold_ttl_ms,
                code_match: t.code_match,
                campaigns: BTreeMap::new(),
                index: HashMap::new(),
                programs: t
                    .programs
                    .iter()
                    .map(|p| (p.id.clone(), Arc::new(p.clone())))
                    .collect(),
                config_programs: t.programs.iter().map(|p| p.id.clone()).collect(),
            };
            for c in &t.campaigns {
                ts.install(c.clone(), Source::Config);
            }
            for (_, v) in txn.scan_prefix(&prefix(&["camp", &t.id]))? {
                if let Some(c) = replica::stored_campaign(&ts, &t.id, &v) {
                    ts.install(c, Source::Api);
                }
            }
            for (_, v) in txn.scan_prefix(&prefix(&["prog", &t.id]))? {
                if let Some(p) = replica::stored_program(&ts, &t.id, &v) {
                    ts.programs.insert(p.id.clone(), Arc::new(p));
                }
            }
            tenants.insert(t.id.clone(), ts);
        }
        let holds = voucher::load_live_holds(txn)?;
        let queued = txn.scan_prefix(b"whq\x1f")?.len() as u64;
        let dead = txn.scan_prefix(b"whdl\x1f")?.len() as u64;
        Ok(State::new(tenants, holds, (queued, dead), published))
    }
}

/// SHA-256 of the canonical form of a request, to tell a retry from a different request
/// under the same transaction id.
pub fn fingerprint<T: serde::Serialize>(req: &T) -> [u8; 32] {
    let bytes = serde_json::to_vec(req).unwrap_or_default();
    Sha256::digest(&bytes).into()
}

/// Exactly-once wrapper: answer a seen id from its record (or 409 when the body differs);
/// otherwise run `f`, and store its reply under the id in the same atomic write.
pub fn idempotent(
    txn: &mut Txn<'_>,
    idem_key: Vec<u8>,
    fp: [u8; 32],
    f: impl FnOnce(&mut Txn<'_>) -> Result<Reply, StoreError>,
) -> Result<Reply, StoreError> {
    if let Some(rec) = txn.get(&idem_key)? {
        if rec.len() >= 34 && rec[..32] == fp {
            let status = u16::from_be_bytes([rec[32], rec[33]]);
            return Ok(Reply {
                status,
                body: rec[34..].to_vec(),
                outcome: "replay".into(),
            });
        }
        return Ok(Reply::error(&ApiError::new(
            409,
            "IDEMPOTENCY_CONFLICT",
            "this transactionId was already used with a different request body",
        )));
    }
    let reply = f(txn)?;
    let mut rec = Vec::with_capacity(34 + reply.body.len());
    rec.extend_from_slice(&fp);
    rec.extend_from_slice(&reply.status.to_be_bytes());
    rec.extend_from_slice(&reply.body);
    txn.put(idem_key, rec);
    Ok(reply)
}
