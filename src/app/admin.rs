//! The admin operations of the application core: campaigns, bulk codes, holds, switch
//! readiness, loyalty operator tools, the webhook inbox and dead letters, provider states,
//! and the export. Each takes typed arguments and answers a [`Reply`]; long ones run as
//! bounded slices (`service::sliced`).

use super::{answer, App, InboxFilter, Reply};
use crate::service::{admin, loyalty as loy, sliced, timeline, webhook, State};
use crate::store::{StoreError, Txn};

pub use crate::service::loyalty::{AdjustRequest, RedemptionReversalRequest, ReversalRequest};
pub use crate::voucher::CampaignSpec;

/// `POST …/campaigns/{c}/codes/generate`.
#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields, rename = "Gen")] // the name serde's messages have always shown
pub struct GenerateRequest {
    pub pattern: String,
    pub count: u64,
}

/// `POST …/provider-states`.
#[derive(Debug, serde::Deserialize)]
#[serde(rename = "StateReq")] // the name serde's messages have always shown
pub struct StateRequest {
    pub state: String,
    #[serde(default)]
    pub params: serde_json::Value,
    #[serde(default = "setup")]
    pub action: String,
}

fn setup() -> String {
    "setup".into()
}

/// One page of the export: records in key order, and the cursor of the next page.
pub struct ExportPage {
    pub records: Vec<(Vec<u8>, Vec<u8>)>,
    pub next: Option<Vec<u8>>,
}

pub use crate::service::loyalty::{LedgerPage, MemberRef, MAX_LEDGER_PAGE};

impl App {
    /// Run `f` as one job on the store's writer and answer its reply.
    pub(super) async fn run<F>(&self, f: F) -> Reply
    where
        F: FnOnce(&mut Txn<'_>, &mut State) -> Result<Reply, StoreError> + Send + 'static,
    {
        answer(self.store.run(f).await)
    }

    fn slice(&self) -> usize {
        self.config.storage.job_slice_records
    }

    /// One page of every record of the store, after `after` (`None`: from the start).
    pub async fn export_page(&self, after: Option<Vec<u8>>) -> Result<ExportPage, Reply> {
        let slice = self.slice();
        let (records, next) = self
            .store
            .run(move |txn, _| txn.scan_page(b"", after.as_deref(), slice))
            .await
            .map_err(super::store_reply)?;
        Ok(ExportPage { records, next })
    }

    /// Every record as JSON lines (`backup` format), read page by page so commits go on
    /// meanwhile.
    pub async fn export(&self) -> Reply {
        let at = crate::clock::rfc3339(self.clock.now_ms());
        let mut records = Vec::new();
        let mut after = None;
        loop {
            match self.export_page(after).await {
                Ok(page) => {
                    records.extend(page.records);
                    after = page.next;
                }
                Err(reply) => return reply,
            }
            if after.is_none() {
                return Reply::ok(crate::backup::encode(&records, &at));
            }
        }
    }

    pub async fn list_campaigns(&self, tenant: &str) -> Reply {
        let (t, now) = (tenant.to_owned(), self.clock.now_ms());
        self.run(move |txn, st| admin::list_campaigns(txn, st, &t, now))
            .await
    }

    /// Create (`id` `None`) or replace an API-made campaign.
    pub async fn put_campaign(
        &self,
        tenant: &str,
        id: Option<String>,
        spec: CampaignSpec,
    ) -> Reply {
        let t = tenant.to_owned();
        self.run(move |txn, st| admin::put_campaign(txn, st, &t, id.as_deref(), spec))
            .await
    }

    pub async fn import_codes(&self, tenant: &str, campaign: &str, csv: Vec<u8>) -> Reply {
        let r = sliced::import_codes(&self.store, self.slice(), tenant, campaign, csv).await;
        self.refresh_code_index(tenant);
        answer(r)
    }

    /// A campaign's bulk codes as CSV (status 200) or an error.
    pub async fn export_codes(&self, tenant: &str, campaign: &str) -> Reply {
        answer(sliced::export_codes(&self.store, self.slice(), tenant, campaign).await)
    }

    pub async fn generate_codes(&self, tenant: &str, campaign: &str, g: GenerateRequest) -> Reply {
        let r = sliced::generate_codes(
            &self.store,
            self.slice(),
            tenant,
            campaign,
            &g.pattern,
            g.count,
        )
        .await;
        self.refresh_code_index(tenant);
        answer(r)
    }

    pub async fn code_state(&self, tenant: &str, code: &str) -> Reply {
        let (t, code, now) = (tenant.to_owned(), code.to_owned(), self.clock.now_ms());
        self.run(move |txn, st| admin::code_state(txn, st, &t, &code, now))
            .await
    }

    /// A transaction's timeline by `res_`/`loy_` id, providerRef, purchaseId or redemption
    /// id (`service::timeline`). A `res_` id is looked for among the hold records page by
    /// page, so commits get the writer between pages.
    pub async fn find_transaction(&self, tenant: &str, id: &str) -> Reply {
        let mut hold = None;
        if id.starts_with("res_") {
            let mut after: Option<Vec<u8>> = None;
            loop {
                let (t, tx, a, slice) =
                    (tenant.to_owned(), id.to_owned(), after.take(), self.slice());
                let page = self
                    .store
                    .run(move |txn, _| {
                        timeline::hold_of_transaction_page(txn, &t, &tx, a.as_deref(), slice)
                    })
                    .await;
                match page {
                    Ok((Some(r), _)) => {
                        hold = Some(r);
                        break;
                    }
                    Ok((None, Some(next))) => after = Some(next),
                    Ok((None, None)) => break,
                    Err(e) => return super::store_reply(e),
                }
            }
        }
        let (t, id, now) = (tenant.to_owned(), id.to_owned(), self.clock.now_ms());
        self.run(move |txn, st| timeline::find(txn, st, &t, &id, hold.as_deref(), now))
            .await
    }

    pub async fn list_holds(&self, tenant: &str, page: super::HoldPage) -> Reply {
        let (t, now) = (tenant.to_owned(), self.clock.now_ms());
        self.run(move |txn, st| admin::list_holds(txn, st, &t, &page, now))
            .await
    }

    pub async fn get_hold(&self, tenant: &str, provider_ref: &str) -> Reply {
        let (t, r, now) = (
            tenant.to_owned(),
            provider_ref.to_owned(),
            self.clock.now_ms(),
        );
        self.run(move |txn, st| admin::get_hold(txn, st, &t, &r, now))
            .await
    }

    pub async fn release_hold(&self, tenant: &str, provider_ref: &str) -> Reply {
        let (t, r, now) = (
            tenant.to_owned(),
            provider_ref.to_owned(),
            self.clock.now_ms(),
        );
        self.run(move |txn, st| admin::release(txn, st, &t, &r, now))
            .await
    }

    pub async fn switch_readiness(&self, tenant: &str) -> Reply {
        let now = self.clock.now_ms();
        answer(sliced::switch_readiness(&self.store, self.slice(), tenant, now).await)
    }

    pub async fn import_members(&self, tenant: &str, program: &str, csv: Vec<u8>) -> Reply {
        let now = self.clock.now_ms();
        let slice = self.slice();
        answer(sliced::import_members(&self.store, slice, tenant, program, csv, now).await)
    }

    pub async fn show_member(&self, tenant: &str, program: &str, m: MemberRef) -> Reply {
        let (t, p, now) = (tenant.to_owned(), program.to_owned(), self.clock.now_ms());
        self.run(move |txn, st| loy::show_member(txn, st, &t, &p, &m, now))
            .await
    }

    pub async fn adjust(
        &self,
        tenant: &str,
        program: &str,
        member: &str,
        req: AdjustRequest,
    ) -> Reply {
        let (t, p, m) = (tenant.to_owned(), program.to_owned(), member.to_owned());
        let now = self.clock.now_ms();
        self.run(move |txn, st| loy::adjust(txn, st, &t, &p, &m, req, now))
            .await
    }

    pub async fn reverse_award(&self, tenant: &str, program: &str, req: ReversalRequest) -> Reply {
        let (t, p, now) = (tenant.to_owned(), program.to_owned(), self.clock.now_ms());
        self.run(move |txn, st| loy::reverse_award(txn, st, &t, &p, req, now))
            .await
    }

    pub async fn reverse_redemption(
        &self,
        tenant: &str,
        program: &str,
        redemption: &str,
        req: RedemptionReversalRequest,
    ) -> Reply {
        let (t, p, r) = (tenant.to_owned(), program.to_owned(), redemption.to_owned());
        let now = self.clock.now_ms();
        self.run(move |txn, st| loy::reverse_redemption(txn, st, &t, &p, &r, req, now))
            .await
    }

    pub async fn inbox(&self, tenant: &str, filter: InboxFilter) -> Reply {
        answer(sliced::inbox(&self.store, self.slice(), tenant, filter).await)
    }

    pub async fn inbox_event(&self, tenant: &str, seq: u64) -> Reply {
        let t = tenant.to_owned();
        self.run(move |txn, st| webhook::show(txn, st, &t, seq))
            .await
    }

    pub async fn dead_letters(&self, tenant: &str) -> Reply {
        let t = tenant.to_owned();
        self.run(move |txn, st| webhook::dead_letters(txn, st, &t))
            .await
    }

    /// Put dead letters (all, or one `(route, seq)`) back on their queues.
    pub async fn replay_dead(&self, tenant: &str, only: Option<(String, u64)>) -> Reply {
        let t = tenant.to_owned();
        match self
            .store
            .run(move |txn, st| webhook::replay_dead(txn, st, &t, only))
            .await
        {
            Ok((reply, routes)) => {
                for r in routes {
                    self.wake_route(tenant, &r);
                }
                reply
            }
            Err(e) => super::store_reply(e),
        }
    }

    pub async fn purge_dead(&self, tenant: &str, only: Option<(String, u64)>) -> Reply {
        let t = tenant.to_owned();
        self.run(move |txn, st| webhook::purge_dead(txn, st, &t, only))
            .await
    }

    /// Whether `[admin] provider_states` is on.
    pub fn provider_states_enabled(&self) -> bool {
        self.config.admin.provider_states
    }

    pub async fn provider_state(&self, tenant: &str, r: StateRequest) -> Reply {
        let (t, now) = (tenant.to_owned(), self.clock.now_ms());
        self.run(move |txn, st| {
            crate::service::states::apply(txn, st, &t, &r.state, r.params, &r.action, now)
        })
        .await
    }
}
