//! The writer's in-memory [`State`] and its undo journal.
//!
//! Its fields are private to this module: a job reads them through accessors and changes
//! them only through the mutators below, each of which records how to undo itself. The
//! store's writer ([`crate::store::Journal`]) then undoes a failed job's changes (`Err` or
//! panic), undoes a whole group's when its flush fails, and forgets them once the group is
//! durable — only then are the `/metrics` gauges published. So a job cannot leave memory
//! ahead of the store, however it is written.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use crate::loyalty::Program;
use crate::metrics::Gauges;
use crate::store::Journal;
use crate::voucher::{Campaign, Held, LiveHold, LiveHolds};

use super::{CampaignEntry, Source, TenantState};

/// How to undo one change.
enum Undo {
    /// A live hold was added: remove it.
    HoldAdded(String),
    /// A live hold was removed: put it back.
    HoldRemoved(String, Held),
    /// A campaign was installed over `prev` (none: it was new).
    Campaign {
        tenant: String,
        id: String,
        prev: Option<CampaignEntry>,
    },
    /// A program was installed over `prev`.
    Program {
        tenant: String,
        id: String,
        prev: Option<Arc<Program>>,
    },
    /// The webhook counters moved by these amounts: move them back.
    Webhooks { queued: i64, dead: i64 },
}

/// The loyalty programs as of the last durable group, for reads beside the writer
/// (`App`'s read calls): replaced whole when a group that installed a program is durable.
#[derive(Debug, Default)]
pub struct Programs(std::sync::RwLock<Arc<ProgramMap>>);

/// Programs by (tenant, program id).
type ProgramMap = HashMap<(String, String), Arc<Program>>;

impl Programs {
    /// Tenant `t`'s program `id`, if it has one.
    pub fn get(&self, t: &str, id: &str) -> Option<Arc<Program>> {
        let map = self.0.read().unwrap_or_else(|e| e.into_inner()).clone();
        map.get(&(t.to_owned(), id.to_owned())).cloned()
    }
}

pub struct State {
    tenants: HashMap<String, TenantState>,
    /// Published when a group is durable, if `programs_changed`.
    programs: Arc<Programs>,
    programs_changed: bool,
    holds: LiveHolds,
    /// Webhook events waiting for onward delivery (one per event and route).
    webhook_queued: u64,
    webhook_dead: u64,
    /// Published for `/metrics` when a group is durable.
    gauges: Arc<Gauges>,
    /// Undo entries of the current group, oldest first.
    journal: Vec<Undo>,
    /// Where the current job's entries start in `journal`.
    job_start: usize,
}

impl State {
    pub(super) fn new(
        tenants: HashMap<String, TenantState>,
        holds: LiveHolds,
        (webhook_queued, webhook_dead): (u64, u64),
        (gauges, programs): (Arc<Gauges>, Arc<Programs>),
    ) -> State {
        let mut st = State {
            tenants,
            programs,
            programs_changed: true,
            holds,
            webhook_queued,
            webhook_dead,
            gauges,
            journal: Vec::new(),
            job_start: 0,
        };
        st.publish();
        st
    }

    pub fn tenant(&self, id: &str) -> Option<&TenantState> {
        self.tenants.get(id)
    }

    pub fn holds(&self) -> &LiveHolds {
        &self.holds
    }

    /// Count a new live hold.
    pub fn add_hold(&mut self, provider_ref: String, h: LiveHold) {
        if !self.holds.contains(&provider_ref) {
            self.holds.insert(provider_ref.clone(), h);
            self.journal.push(Undo::HoldAdded(provider_ref));
        }
    }

    /// Stop counting a live hold; returns whether it was live.
    pub fn remove_hold(&mut self, provider_ref: &str) -> bool {
        let Some(h) = self.holds.remove(provider_ref) else {
            return false;
        };
        self.journal
            .push(Undo::HoldRemoved(provider_ref.to_owned(), h));
        true
    }

    /// Stop counting the holds expired at `now`; returns their (tenant, ref).
    pub fn prune_holds(&mut self, now: crate::clock::Millis) -> Vec<(String, String)> {
        let gone = self.holds.prune(now);
        let mut out = Vec::with_capacity(gone.len());
        for (r, h) in gone {
            out.push((self.holds.tenant_of(&h).to_owned(), r.clone()));
            self.journal.push(Undo::HoldRemoved(r, h));
        }
        out
    }

    /// Install (or replace) a campaign of a known tenant; false when the tenant is unknown.
    pub fn install_campaign(&mut self, tenant: &str, c: Campaign, source: Source) -> bool {
        let Some(t) = self.tenants.get_mut(tenant) else {
            return false;
        };
        let id = c.id.clone();
        let prev = t.install_entry(CampaignEntry {
            campaign: Arc::new(c),
            source,
        });
        self.journal.push(Undo::Campaign {
            tenant: tenant.to_owned(),
            id,
            prev,
        });
        true
    }

    /// Install (or replace) a program of a known tenant; false when the tenant is unknown.
    pub fn install_program(&mut self, tenant: &str, p: Program) -> bool {
        let Some(t) = self.tenants.get_mut(tenant) else {
            return false;
        };
        let id = p.id.clone();
        let prev = t.programs.insert(id.clone(), Arc::new(p));
        self.programs_changed = true;
        self.journal.push(Undo::Program {
            tenant: tenant.to_owned(),
            id,
            prev,
        });
        true
    }

    /// Move the webhook counters (events queued for delivery, dead letters).
    pub fn count_webhooks(&mut self, queued: i64, dead: i64) {
        self.webhook_queued = self.webhook_queued.saturating_add_signed(queued);
        self.webhook_dead = self.webhook_dead.saturating_add_signed(dead);
        self.journal.push(Undo::Webhooks { queued, dead });
    }

    /// Set the webhook counters to what the store holds (a replica following others).
    pub fn set_webhook_counts(&mut self, queued: u64, dead: u64) {
        let d = |new: u64, old: u64| {
            i64::try_from(new)
                .unwrap_or(i64::MAX)
                .saturating_sub(i64::try_from(old).unwrap_or(i64::MAX))
        };
        let (dq, dd) = (d(queued, self.webhook_queued), d(dead, self.webhook_dead));
        self.count_webhooks(dq, dd);
    }

    fn publish(&mut self) {
        if std::mem::take(&mut self.programs_changed) {
            let map = self
                .tenants
                .iter()
                .flat_map(|(t, ts)| {
                    ts.programs
                        .iter()
                        .map(move |(id, p)| ((t.clone(), id.clone()), p.clone()))
                })
                .collect();
            *self.programs.0.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(map);
        }
        let g = &self.gauges;
        g.holds_in_flight
            .store(self.holds.len() as u64, Ordering::Relaxed);
        g.webhook_queued
            .store(self.webhook_queued, Ordering::Relaxed);
        g.webhook_dead_letters
            .store(self.webhook_dead, Ordering::Relaxed);
    }

    /// Undo the journal's entries back to `to`, newest first.
    fn undo_to(&mut self, to: usize) {
        while self.journal.len() > to {
            let Some(u) = self.journal.pop() else { break };
            match u {
                Undo::HoldAdded(r) => {
                    self.holds.remove(&r);
                }
                Undo::HoldRemoved(r, h) => self.holds.restore(&r, h),
                Undo::Campaign { tenant, id, prev } => {
                    if let Some(t) = self.tenants.get_mut(&tenant) {
                        t.uninstall(&id);
                        if let Some(p) = prev {
                            t.install_entry(p);
                        }
                    }
                }
                Undo::Program { tenant, id, prev } => {
                    if let Some(t) = self.tenants.get_mut(&tenant) {
                        match prev {
                            Some(p) => t.programs.insert(id, p),
                            None => t.programs.remove(&id),
                        };
                    }
                }
                Undo::Webhooks { queued, dead } => {
                    self.webhook_queued = self.webhook_queued.saturating_add_signed(-queued);
                    self.webhook_dead = self.webhook_dead.saturating_add_signed(-dead);
                }
            }
        }
    }
}

impl Journal for State {
    fn undo_job(&mut self) {
        self.undo_to(self.job_start);
    }

    fn keep_job(&mut self) {
        self.job_start = self.journal.len();
    }

    fn undo_group(&mut self) {
        self.undo_to(0);
        self.job_start = 0;
    }

    fn group_durable(&mut self) {
        self.journal.clear();
        self.job_start = 0;
        self.publish();
    }
}

#[cfg(test)]
mod tests {
    use std::collections::{BTreeMap, HashSet};

    use super::*;
    use crate::voucher::{CampaignSpec, CodeMatch};

    fn campaign(id: &str, codes: &[&str]) -> Campaign {
        let spec: CampaignSpec = serde_json::from_value(serde_json::json!({
            "id": id, "codes": codes, "discount": {"amount_cents": 100}
        }))
        .unwrap();
        Campaign::from_spec(spec).unwrap()
    }

    fn program(id: i64, bonus: i64) -> Program {
        let spec = serde_json::from_value(serde_json::json!({
            "program_id": id, "earn": {"points": 1, "per_cents": 100}, "signup_bonus": bonus
        }))
        .unwrap();
        Program::from_spec(spec).unwrap()
    }

    fn hold(code: &str, expires_at: i64) -> LiveHold {
        LiveHold {
            tenant: "t".into(),
            campaign: "c".into(),
            code: code.into(),
            guest: None,
            expires_at,
            amount_cents: 100,
        }
    }

    fn state() -> State {
        let mut t = TenantState {
            hold_ttl_ms: 1000,
            code_match: CodeMatch::Exact,
            campaigns: BTreeMap::new(),
            index: HashMap::new(),
            programs: HashMap::new(),
            config_programs: HashSet::new(),
        };
        t.install(campaign("c", &["A", "B"]), Source::Api);
        let mut holds = LiveHolds::default();
        holds.insert("h1".into(), hold("A", 10));
        let tenants = HashMap::from([("t".to_string(), t)]);
        State::new(tenants, holds, (2, 1), (Arc::default(), Arc::default()))
    }

    /// Everything a job can change, as text.
    fn look(st: &State) -> String {
        let t = st.tenant("t").unwrap();
        let mut index: Vec<_> = t.index.iter().collect();
        index.sort();
        let mut programs: Vec<_> = t.programs.keys().collect();
        programs.sort();
        let holds: Vec<_> = st.holds().refs().collect();
        let counts: Vec<_> = ["A", "B", "C"]
            .map(|k| st.holds().counts("t", "c", k, None))
            .to_vec();
        format!(
            "{:?} {index:?} {programs:?} {holds:?} {counts:?} {:?} {} {}",
            t.campaigns.keys().collect::<Vec<_>>(),
            st.holds().expiries("t").collect::<Vec<_>>(),
            st.webhook_queued,
            st.webhook_dead
        )
    }

    fn change_everything(st: &mut State) {
        st.add_hold("h2".into(), hold("B", 20));
        st.remove_hold("h1");
        st.prune_holds(25);
        st.install_campaign("t", campaign("c", &["B", "C"]), Source::Api);
        st.install_campaign("t", campaign("d", &["D"]), Source::Api);
        st.install_program("t", program(7, 5));
        st.count_webhooks(3, -1);
    }

    #[test]
    fn a_failed_job_leaves_the_state_as_it_was() {
        let mut st = state();
        let before = look(&st);
        change_everything(&mut st);
        assert_ne!(look(&st), before);
        st.undo_job();
        assert_eq!(look(&st), before);
    }

    #[test]
    fn a_failed_group_undoes_every_kept_job_and_a_durable_one_stays() {
        let mut st = state();
        let before = look(&st);
        change_everything(&mut st);
        st.keep_job();
        st.count_webhooks(1, 0);
        st.undo_job();
        st.add_hold("h3".into(), hold("C", 30));
        st.keep_job();
        st.undo_group();
        assert_eq!(look(&st), before);
        change_everything(&mut st);
        st.keep_job();
        let after = look(&st);
        st.group_durable();
        st.undo_group();
        assert_eq!(look(&st), after);
        assert_eq!(st.gauges.webhook_queued.load(Ordering::Relaxed), 5);
    }
}
