//! The admin API over HTTP: the path parsed into an [`AdminPath`], the admin token
//! checked, then a table from (operation, method) to one short handler each, which reads
//! the request into the typed arguments of an application operation (`app::admin`).

use hyper::body::Incoming;
use hyper::{Method, Request};
use percent_encoding::percent_decode_str;

use super::auth::check_bearer;
use super::routes::{
    err, method_not_allowed, not_found, read_body, read_json_body, typed_out, BodyKind,
    MAX_IMPORT_BYTES,
};
use super::{Front, Out};
use crate::app::admin::{
    AdjustRequest, CampaignSpec, GenerateRequest, LedgerPage, MemberRef, RedemptionReversalRequest,
    ReversalRequest, StateRequest, MAX_LEDGER_PAGE,
};
use crate::app::chaos::FaultSpec;
use crate::app::sources::{OrderAwardRequest, OrderQuery, OrderState, MAX_LIST};
use crate::app::{App, HoldPage, InboxFilter, Reply, DEFAULT_HOLDS_PAGE, MAX_HOLDS_PAGE};
use crate::contract::{parse, ApiError};

/// `/admin/v1/…`, parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum AdminPath {
    /// `export`
    Export,
    /// `tenants/{tenant}/…`; `None`: no such operation.
    Tenant {
        tenant: String,
        op: Option<Op>,
    },
    Unknown,
}

/// One admin operation under `tenants/{tenant}/`, with its path parameters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Op {
    Campaigns,
    Campaign(String),
    Codes(String),
    GenerateCodes(String),
    Code(String),
    Holds,
    Hold(String),
    /// `transactions/{id}`: a transaction's timeline.
    Transaction(String),
    ReleaseHold(String),
    SwitchReadiness,
    /// `loyalty/{p}/members/import` (a GET reads the member whose id is `import`).
    ImportMembers(String),
    Member {
        program: String,
        by_user: bool,
        id: String,
    },
    Adjust {
        program: String,
        member: String,
    },
    Reversals(String),
    ReverseRedemption {
        program: String,
        redemption: String,
    },
    Inbox,
    InboxEvent(String),
    DeadLetters,
    /// `webhooks/dead-letters/{…}`: `[action]` or `[route, seq, action]`.
    DeadLetterAction(Vec<String>),
    ProviderStates,
    /// `injected-faults`: the tenant's injected faults (`app::chaos`).
    InjectedFaults,
    /// `sources`: every order source's last poll, position and counts.
    Sources,
    /// `sources/{s}/orders`
    SourceOrders(String),
    /// `sources/{s}/orders/{order}/award`
    AwardSourceOrder {
        source: String,
        order: String,
    },
}

impl AdminPath {
    pub(crate) fn parse(rest: &[String]) -> AdminPath {
        let rest: Vec<&str> = rest.iter().map(String::as_str).collect();
        match rest.as_slice() {
            ["export"] => AdminPath::Export,
            ["tenants", tenant, tail @ ..] => AdminPath::Tenant {
                tenant: tenant.to_string(),
                op: Op::parse(tail),
            },
            _ => AdminPath::Unknown,
        }
    }
}

impl Op {
    fn parse(tail: &[&str]) -> Option<Op> {
        let s = |x: &&str| x.to_string();
        Some(match tail {
            ["campaigns"] => Op::Campaigns,
            ["campaigns", id] => Op::Campaign(s(id)),
            ["campaigns", c, "codes"] => Op::Codes(s(c)),
            ["campaigns", c, "codes", "generate"] => Op::GenerateCodes(s(c)),
            ["codes", code] => Op::Code(s(code)),
            ["holds"] => Op::Holds,
            ["transactions", id] => Op::Transaction(s(id)),
            ["holds", r] => Op::Hold(s(r)),
            ["holds", r, "release"] => Op::ReleaseHold(s(r)),
            ["switch-readiness"] => Op::SwitchReadiness,
            ["loyalty", p, "members", "import"] => Op::ImportMembers(s(p)),
            ["loyalty", p, kind @ ("members" | "users"), id] => Op::Member {
                program: s(p),
                by_user: *kind == "users",
                id: s(id),
            },
            ["loyalty", p, "members", m, "adjustments"] => Op::Adjust {
                program: s(p),
                member: s(m),
            },
            ["loyalty", p, "reversals"] => Op::Reversals(s(p)),
            ["loyalty", p, "redemptions", r, "reverse"] => Op::ReverseRedemption {
                program: s(p),
                redemption: s(r),
            },
            ["webhooks", "inbox"] => Op::Inbox,
            ["webhooks", "inbox", seq] => Op::InboxEvent(s(seq)),
            ["webhooks", "dead-letters"] => Op::DeadLetters,
            ["webhooks", "dead-letters", rest @ ..] => {
                Op::DeadLetterAction(rest.iter().map(s).collect())
            }
            ["provider-states"] => Op::ProviderStates,
            ["injected-faults"] => Op::InjectedFaults,
            ["sources"] => Op::Sources,
            ["sources", src, "orders"] => Op::SourceOrders(s(src)),
            ["sources", src, "orders", order, "award"] => Op::AwardSourceOrder {
                source: s(src),
                order: s(order),
            },
            _ => return None,
        })
    }

    /// The methods it takes, for a 405's `Allow`.
    fn allow(&self) -> &'static str {
        match self {
            Op::Campaigns | Op::Codes(_) => "GET, POST",
            Op::Campaign(_) => "PUT",
            Op::InjectedFaults => "GET, PUT, DELETE",
            Op::GenerateCodes(_)
            | Op::ReleaseHold(_)
            | Op::Adjust { .. }
            | Op::Reversals(_)
            | Op::ReverseRedemption { .. }
            | Op::ProviderStates
            | Op::DeadLetterAction(_)
            | Op::AwardSourceOrder { .. } => "POST",
            _ => "GET",
        }
    }
}

/// An admin request: the admin token, then the operation.
pub(super) async fn call(front: &Front, req: Request<Incoming>, path: &AdminPath) -> Out {
    let Some(digest) = &front.admin_digest else {
        return err(ApiError::new(
            404,
            "ADMIN_DISABLED",
            "the admin API is off: set the token named by [admin] token_env",
        ));
    };
    if !check_bearer(req.headers(), digest) {
        return err(ApiError::new(
            401,
            "UNAUTHORIZED",
            "missing or wrong admin token (Authorization: Bearer, or X-Admin-Token)",
        ));
    }
    let app = &front.app;
    match path {
        AdminPath::Export if req.method() == Method::GET => {
            typed_out(app.export().await, "application/x-ndjson")
        }
        AdminPath::Export => method_not_allowed("GET"),
        AdminPath::Unknown => not_found(),
        AdminPath::Tenant { tenant, .. } if !front.tenants.contains_key(tenant) => err(
            ApiError::new(404, "UNKNOWN_TENANT", format!("no tenant {tenant:?}")),
        ),
        AdminPath::Tenant { op: None, .. } => not_found(),
        AdminPath::Tenant {
            tenant,
            op: Some(op),
        } => tenant_op(app, req, tenant, op).await,
    }
}

/// The table: one handler per (operation, method).
async fn tenant_op(app: &App, req: Request<Incoming>, t: &str, op: &Op) -> Out {
    let m = req.method().clone();
    let reply = match (op, &m) {
        (Op::Campaigns, &Method::GET) => Ok(app.list_campaigns(t).await),
        (Op::Campaigns, &Method::POST) => put_campaign(app, req, t, None).await,
        (Op::Campaign(id), &Method::PUT) => put_campaign(app, req, t, Some(id.clone())).await,
        (Op::Codes(c), &Method::POST) => import_codes(app, req, t, c).await,
        (Op::Codes(c), &Method::GET) => return typed_out(app.export_codes(t, c).await, "text/csv"),
        (Op::GenerateCodes(c), &Method::POST) => generate(app, req, t, c).await,
        (Op::Code(code), &Method::GET) => Ok(app.code_state(t, code).await),
        (Op::Holds, &Method::GET) => list_holds(app, &req, t).await,
        (Op::Transaction(id), &Method::GET) => Ok(app.find_transaction(t, id).await),
        (Op::Hold(r), &Method::GET) => Ok(app.get_hold(t, r).await),
        (Op::ReleaseHold(r), &Method::POST) => Ok(app.release_hold(t, r).await),
        (Op::SwitchReadiness, &Method::GET) => Ok(app.switch_readiness(t).await),
        (Op::ImportMembers(p), &Method::POST) => import_members(app, req, t, p).await,
        (Op::ImportMembers(p), &Method::GET) => Ok(app.show_member(t, p, member("import")).await),
        (
            Op::Member {
                program,
                by_user,
                id,
            },
            &Method::GET,
        ) => show_member(app, &req, t, program, *by_user, id).await,
        (Op::Adjust { program, member }, &Method::POST) => {
            adjust(app, req, t, program, member).await
        }
        (Op::Reversals(p), &Method::POST) => reverse_award(app, req, t, p).await,
        (
            Op::ReverseRedemption {
                program,
                redemption,
            },
            &Method::POST,
        ) => reverse_redemption(app, req, t, program, redemption).await,
        (Op::Inbox, &Method::GET) => inbox(app, req, t).await,
        (Op::InboxEvent(seq), &Method::GET) => inbox_event(app, t, seq).await,
        (Op::DeadLetters, &Method::GET) => Ok(app.dead_letters(t).await),
        (Op::DeadLetters, &Method::POST) => return not_found(),
        (Op::DeadLetterAction(rest), &Method::POST) => {
            return dead_letter_action(app, t, rest).await
        }
        (Op::DeadLetterAction(_), _) => return not_found(),
        (Op::ProviderStates, &Method::POST) => return provider_state(app, req, t).await,
        (Op::InjectedFaults, &Method::GET) => Ok(app.injected_faults(t)),
        (Op::InjectedFaults, &Method::PUT) => set_faults(app, req, t).await,
        (Op::InjectedFaults, &Method::DELETE) => Ok(app.clear_injected_faults(t)),
        (Op::Sources, &Method::GET) => Ok(app.sources(t).await),
        (Op::SourceOrders(s), &Method::GET) => source_orders(app, &req, t, s).await,
        (Op::AwardSourceOrder { source, order }, &Method::POST) => {
            award_source_order(app, req, t, source, order).await
        }
        (op, _) => return method_not_allowed(op.allow()),
    };
    Out::from(reply.unwrap_or_else(|e| Reply::error(&e)))
}

type Handled = Result<Reply, ApiError>;

async fn list_holds(app: &App, req: &Request<Incoming>, t: &str) -> Handled {
    let page = hold_page(&query_pairs(req.uri().query()))?;
    Ok(app.list_holds(t, page).await)
}

fn member(id: &str) -> MemberRef {
    MemberRef {
        by_user: false,
        id: id.to_owned(),
        ledger_page: None,
    }
}

async fn show_member(
    app: &App,
    req: &Request<Incoming>,
    t: &str,
    program: &str,
    by_user: bool,
    id: &str,
) -> Handled {
    let m = MemberRef {
        by_user,
        id: id.to_owned(),
        ledger_page: ledger_page(&query_pairs(req.uri().query()))?,
    };
    Ok(app.show_member(t, program, m).await)
}

/// `ledgerPage` (0: newest) and `ledgerPerPage` of a member view; neither: the whole
/// ledger, oldest first.
fn ledger_page(q: &[(String, String)]) -> Result<Option<LedgerPage>, ApiError> {
    let get = |k: &str| q.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str());
    if get("ledgerPage").is_none() && get("ledgerPerPage").is_none() {
        return Ok(None);
    }
    let page = get("ledgerPage")
        .unwrap_or("0")
        .parse::<usize>()
        .map_err(|_| ApiError::invalid("ledgerPage", "a page number from 0 (the newest)"))?;
    let per_page = get("ledgerPerPage")
        .unwrap_or("50")
        .parse::<usize>()
        .ok()
        .filter(|n| (1..=MAX_LEDGER_PAGE).contains(n))
        .ok_or_else(|| {
            ApiError::invalid("ledgerPerPage", format!("an integer 1..={MAX_LEDGER_PAGE}"))
        })?;
    Ok(Some(LedgerPage { page, per_page }))
}

async fn read_json<T: serde::de::DeserializeOwned>(
    app: &App,
    req: Request<Incoming>,
) -> Result<T, ApiError> {
    let body = read_json_body(app, req).await?;
    parse(&body)
}

async fn put_campaign(app: &App, req: Request<Incoming>, t: &str, id: Option<String>) -> Handled {
    let spec: CampaignSpec = read_json(app, req).await?;
    Ok(app.put_campaign(t, id, spec).await)
}

async fn set_faults(app: &App, req: Request<Incoming>, t: &str) -> Handled {
    let spec: FaultSpec = read_json(app, req).await?;
    Ok(app.set_injected_faults(t, spec))
}

async fn import_codes(app: &App, req: Request<Incoming>, t: &str, c: &str) -> Handled {
    let csv = read_body(app, req, MAX_IMPORT_BYTES, BodyKind::Csv).await?;
    Ok(app.import_codes(t, c, csv).await)
}

async fn generate(app: &App, req: Request<Incoming>, t: &str, c: &str) -> Handled {
    let g: GenerateRequest = read_json(app, req).await?;
    Ok(app.generate_codes(t, c, g).await)
}

async fn import_members(app: &App, req: Request<Incoming>, t: &str, p: &str) -> Handled {
    let csv = read_body(app, req, MAX_IMPORT_BYTES, BodyKind::Csv).await?;
    Ok(app.import_members(t, p, csv).await)
}

async fn inbox(app: &App, req: Request<Incoming>, t: &str) -> Handled {
    let filter = InboxFilter::from_query(&query_pairs(req.uri().query()))?;
    Ok(app.inbox(t, filter).await)
}

async fn adjust(app: &App, req: Request<Incoming>, t: &str, p: &str, m: &str) -> Handled {
    let r: AdjustRequest = read_json(app, req).await?;
    Ok(app.adjust(t, p, m, r).await)
}

async fn reverse_award(app: &App, req: Request<Incoming>, t: &str, p: &str) -> Handled {
    let r: ReversalRequest = read_json(app, req).await?;
    Ok(app.reverse_award(t, p, r).await)
}

async fn reverse_redemption(
    app: &App,
    req: Request<Incoming>,
    t: &str,
    p: &str,
    redemption: &str,
) -> Handled {
    let r: RedemptionReversalRequest = read_json(app, req).await?;
    Ok(app.reverse_redemption(t, p, redemption, r).await)
}

async fn inbox_event(app: &App, t: &str, seq: &str) -> Handled {
    Ok(app.inbox_event(t, inbox_seq(seq)?).await)
}

fn inbox_seq(seq: &str) -> Result<u64, ApiError> {
    seq.parse::<u64>()
        .map_err(|_| ApiError::invalid("seq", "an inbox sequence number"))
}

/// `dead-letters/{replay|purge}` or `dead-letters/{route}/{seq}/{replay|purge}`.
async fn dead_letter_action(app: &App, t: &str, rest: &[String]) -> Out {
    let (only, action) = match rest {
        [action] => (None, action.as_str()),
        [route, seq, action] => match inbox_seq(seq) {
            Ok(n) => (Some((route.clone(), n)), action.as_str()),
            Err(e) => return err(e),
        },
        _ => return not_found(),
    };
    match action {
        "replay" => Out::from(app.replay_dead(t, only).await),
        "purge" => Out::from(app.purge_dead(t, only).await),
        _ => not_found(),
    }
}

async fn provider_state(app: &App, req: Request<Incoming>, t: &str) -> Out {
    if !app.provider_states_enabled() {
        return err(ApiError::new(
            404,
            "NOT_FOUND",
            "provider states are off: set [admin] provider_states = true",
        ));
    }
    match read_json::<StateRequest>(app, req).await {
        Ok(r) => Out::from(app.provider_state(t, r).await),
        Err(e) => err(e),
    }
}

async fn source_orders(app: &App, req: &Request<Incoming>, t: &str, source: &str) -> Handled {
    let q = order_query(&query_pairs(req.uri().query()))?;
    Ok(app.source_orders(t, source, q).await)
}

async fn award_source_order(
    app: &App,
    req: Request<Incoming>,
    t: &str,
    source: &str,
    order: &str,
) -> Handled {
    let body = read_json_body(app, req).await?;
    let r: OrderAwardRequest = parse(&body).map_err(|e| {
        ApiError::invalid(
            "memberId",
            format!("the body is {{\"memberId\": \"mbr_…\"}}: {}", e.message),
        )
    })?;
    Ok(app.award_source_order(t, source, order, r).await)
}

/// `after` and `limit` of a holds listing (other parameters are ignored).
fn hold_page(q: &[(String, String)]) -> Result<HoldPage, ApiError> {
    let get = |k: &str| q.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str());
    Ok(HoldPage {
        after: get("after").map(str::to_owned),
        limit: list_limit(get("limit"), DEFAULT_HOLDS_PAGE, MAX_HOLDS_PAGE)?,
    })
}

/// A listing's `limit`: `default` when absent, else an integer 1..=`max`.
fn list_limit(v: Option<&str>, default: usize, max: usize) -> Result<usize, ApiError> {
    match v {
        None => Ok(default),
        Some(v) => v
            .parse::<usize>()
            .ok()
            .filter(|n| (1..=max).contains(n))
            .ok_or_else(|| ApiError::invalid("limit", format!("an integer 1..={max}"))),
    }
}

/// `state`, `after` and `limit` of an order listing (other parameters are ignored).
fn order_query(q: &[(String, String)]) -> Result<OrderQuery, ApiError> {
    let get = |k: &str| q.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str());
    let state = match get("state") {
        None => None,
        Some(v) => Some(OrderState::parse(v).ok_or_else(|| {
            ApiError::invalid(
                "state",
                "one of open, awarded, unmatched, failed, reversed, cancelled",
            )
        })?),
    };
    let limit = list_limit(get("limit"), 100, MAX_LIST)?;
    Ok(OrderQuery {
        state,
        after: get("after").map(str::to_owned),
        limit,
    })
}

/// `?a=1&b=x` → pairs, percent-decoded.
pub(super) fn query_pairs(q: Option<&str>) -> Vec<(String, String)> {
    q.unwrap_or("")
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            let dec = |x: &str| {
                percent_decode_str(&x.replace('+', " "))
                    .decode_utf8_lossy()
                    .into_owned()
            };
            (dec(k), dec(v))
        })
        .collect()
}
