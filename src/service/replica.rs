//! The writer's [`State`] as one replica among several (PostgreSQL engine): which records
//! it mirrors in memory, and how it follows another replica's change to one of them. The
//! start-up loader (`State::load`) reads the same records with the same functions, so a
//! replica that follows changes and one that starts afresh hold the same state.

use crate::loyalty::{Program, ProgramSpec};
use crate::store::{keys as store_keys, Replica, StoreError, Txn};
use crate::voucher::{Campaign, CampaignSpec};

use super::{voucher, Source, State, TenantState};

/// A campaign record made through the admin API, as the tenant may install it: `None` (and
/// a warning) when it is unreadable, no longer valid, has the id of a config-file campaign
/// (the config file wins), or one of its codes belongs to another campaign now.
pub(super) fn stored_campaign(ts: &TenantState, t: &str, v: &[u8]) -> Option<Campaign> {
    let Ok(spec) = serde_json::from_slice::<CampaignSpec>(v) else {
        tracing::warn!(tenant = %t, "skipping an unreadable stored campaign");
        return None;
    };
    if ts
        .campaigns
        .get(&spec.id)
        .is_some_and(|e| e.source == Source::Config)
    {
        tracing::warn!(tenant = %t, campaign = %spec.id, "a campaign made through the admin API has the id of a config-file campaign; the config file wins");
        return None;
    }
    if let Some((code, other)) = ts.code_conflict(&spec) {
        tracing::warn!(tenant = %t, campaign = %spec.id, code = %code, other = %other, "stored campaign skipped: one of its codes now belongs to another campaign");
        return None;
    }
    match Campaign::from_spec(spec) {
        Ok(c) => Some(c),
        Err(e) => {
            tracing::warn!(tenant = %t, key = %e.key, "stored campaign no longer valid: {}", e.message);
            None
        }
    }
}

/// A program record made through provider states, as the tenant may install it (`None`
/// when unreadable, invalid, or the id of a config-file program: the config file wins).
pub(super) fn stored_program(ts: &TenantState, t: &str, v: &[u8]) -> Option<Program> {
    let spec = serde_json::from_slice::<ProgramSpec>(v).ok()?;
    match Program::from_spec(spec) {
        Ok(p) if !ts.config_programs.contains(&p.id) => Some(p),
        Ok(p) => {
            tracing::warn!(tenant = %t, program = %p.id, "a stored program has the id of a config-file program; the config file wins");
            None
        }
        Err(e) => {
            tracing::warn!(tenant = %t, key = %e.key, "stored program no longer valid: {}", e.message);
            None
        }
    }
}

/// The second and third components of a key (tenant, then an id), as text.
fn tenant_and_id(key: &[u8]) -> Option<(&str, &str)> {
    let mut parts = key.split(|b| *b == store_keys::SEP).skip(1);
    let t = std::str::from_utf8(parts.next()?).ok()?;
    let id = std::str::from_utf8(parts.next()?).ok()?;
    Some((t, id))
}

impl Replica for State {
    fn watched(key: &[u8]) -> bool {
        matches!(
            store_keys::first(key),
            b"live" | b"camp" | b"prog" | b"whq" | b"whdl"
        )
    }

    fn observe(&mut self, txn: &mut Txn<'_>, keys: &[Vec<u8>]) -> Result<(), StoreError> {
        let mut webhooks = false;
        for key in keys {
            match store_keys::first(key) {
                b"live" => voucher::observe_live(txn, self, key)?,
                b"camp" | b"prog" => self.observe_spec(txn, key)?,
                b"whq" | b"whdl" => webhooks = true,
                _ => {}
            }
        }
        if webhooks {
            let queued = txn.scan_prefix(b"whq\x1f")?.len() as u64;
            let dead = txn.scan_prefix(b"whdl\x1f")?.len() as u64;
            self.set_webhook_counts(queued, dead);
        }
        Ok(())
    }
}

impl State {
    /// Install the campaign or program another replica stored (they are never deleted).
    fn observe_spec(&mut self, txn: &mut Txn<'_>, key: &[u8]) -> Result<(), StoreError> {
        let Some((t, _)) = tenant_and_id(key) else {
            return Ok(());
        };
        let (Some(v), Some(ts)) = (txn.get(key)?, self.tenant(t)) else {
            return Ok(());
        };
        if store_keys::first(key) == b"camp" {
            if let Some(c) = stored_campaign(ts, t, &v) {
                self.install_campaign(t, c, Source::Api);
            }
        } else if let Some(p) = stored_program(ts, t, &v) {
            self.install_program(t, p);
        }
        Ok(())
    }
}
