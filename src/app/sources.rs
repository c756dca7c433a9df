//! The operator's side of the order sources (LOKE, Olympus; `crate::sources`): every
//! source's last poll, position and counts, one source's order records, and the award
//! of an unmatched order by hand (once). Each runs one writer job of `sources::jobs`;
//! an operator award also refreshes the source's counts in `/metrics`.

use super::{store_reply, App, Reply};
use crate::sources::jobs::{self, SourceRef};
use crate::sources::poll;

pub use crate::sources::order::OrderState;

/// The most order records one listing answers.
pub const MAX_LIST: usize = 1000;

/// `GET …/sources/{s}/orders?state=…&after=…&limit=…`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OrderQuery {
    /// Only orders in this state; `None`: all.
    pub state: Option<OrderState>,
    /// The order id the page starts after.
    pub after: Option<String>,
    /// 1..=[`MAX_LIST`].
    pub limit: usize,
}

/// `POST …/sources/{s}/orders/{order}/award`.
#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct OrderAwardRequest {
    pub member_id: String,
}

impl App {
    /// The source `name` of `tenant` as writer jobs name it, if configured.
    fn source_ref(&self, tenant: &str, name: &str) -> Option<SourceRef> {
        let t = self.config.tenant(tenant)?;
        let c = t.sources.iter().find(|s| s.name == name)?;
        Some(SourceRef::new(tenant, c))
    }

    /// Every source of `tenant`: last poll, last error, position, orders by state.
    pub async fn sources(&self, tenant: &str) -> Reply {
        let refs: Vec<_> = self
            .config
            .tenant(tenant)
            .map(|t| &t.sources[..])
            .unwrap_or_default()
            .iter()
            .map(|s| (SourceRef::new(tenant, s), s.kind.name()))
            .collect();
        self.run(move |txn, _| {
            let mut out = Vec::new();
            for (r, kind) in &refs {
                out.push(jobs::view(r, kind, &jobs::status(txn, r)?));
            }
            Ok(Reply::json(
                200,
                serde_json::json!({"ok": true, "sources": out}),
            ))
        })
        .await
    }

    /// A page of one source's order records, in order id order.
    pub async fn source_orders(&self, tenant: &str, source: &str, q: OrderQuery) -> Reply {
        let Some(r) = self.source_ref(tenant, source) else {
            return Reply::not_found("no such order source");
        };
        self.run(move |txn, _| jobs::list_orders(txn, &r, q.state, q.after.as_deref(), q.limit))
            .await
    }

    /// The operator's award of an unmatched order to a member (see `jobs::operator_award`).
    pub async fn award_source_order(
        &self,
        tenant: &str,
        source: &str,
        order: &str,
        req: OrderAwardRequest,
    ) -> Reply {
        let Some(r) = self.source_ref(tenant, source) else {
            return Reply::not_found("no such order source");
        };
        let (r2, order, now) = (r.clone(), order.to_owned(), self.clock.now_ms());
        let done = self
            .store
            .run(move |txn, st| {
                let reply = jobs::operator_award(txn, st, &r2, &order, &req.member_id, now)?;
                Ok((reply, jobs::status(txn, &r2)?))
            })
            .await;
        match done {
            Ok((reply, status)) => {
                poll::publish(&self.metrics, &r, &status);
                reply
            }
            Err(e) => store_reply(e),
        }
    }
}
