//! Routing: path → endpoint, then the same steps for every provider call: tenant, method,
//! auth, content type, body limits, parse, validate, run the decision on the store.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use hyper::{Method, Request};
use percent_encoding::percent_decode_str;

use super::auth::check_bearer;
use super::{App, Out};
use crate::contract::voucher::{CheckRequest, CommitRequest};
use crate::contract::{parse, parse_object, ApiError};
use crate::service::{admin, Reply, State};
use crate::store::{StoreError, Txn};
use crate::voucher::CampaignSpec;

fn err(e: ApiError) -> Out {
    Out::from(Reply::error(&e))
}

fn not_found() -> Out {
    err(ApiError::new(404, "NOT_FOUND", "no such endpoint"))
}

fn method_not_allowed(allow: &'static str) -> Out {
    let mut o = err(ApiError::new(
        405,
        "METHOD_NOT_ALLOWED",
        format!("use {allow}"),
    ));
    o.allow = Some(allow);
    o
}

fn store_error(e: StoreError) -> Out {
    match e {
        StoreError::JobPanicked => err(ApiError::new(500, "INTERNAL", e.to_string())),
        _ => err(ApiError::new(503, "UNAVAILABLE", e.to_string())),
    }
}

pub(super) async fn route(app: &Arc<App>, req: Request<Incoming>) -> (&'static str, Out) {
    let path = req.uri().path().to_owned();
    let segs: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    match segs.as_slice() {
        ["healthz"] => (
            "health",
            get_only(&req, || Out::from(Reply::ok(br#"{"ok":true}"#.to_vec()))),
        ),
        ["readyz"] => (
            "health",
            get_only(&req, || {
                if app.store.is_healthy() && !app.shutting_down.load(Ordering::Relaxed) {
                    Out::from(Reply::ok(br#"{"ok":true}"#.to_vec()))
                } else {
                    err(ApiError::new(
                        503,
                        "NOT_READY",
                        "the store is unavailable or the server is shutting down",
                    ))
                }
            }),
        ),
        ["metrics"] => (
            "metrics",
            get_only(&req, || {
                let mut o = Out::from(Reply::ok(
                    app.metrics
                        .render(app.store.stats(), app.store.code_index())
                        .into_bytes(),
                ));
                o.content_type = "text/plain; version=0.0.4";
                o
            }),
        ),
        ["v1", tenant, "voucher", op] => {
            let endpoint = match *op {
                "check" => "voucher.check",
                "commit" => "voucher.commit",
                "reactivate" => "voucher.reactivate",
                _ => return ("other", not_found()),
            };
            let tenant = tenant.to_string();
            (endpoint, provider_call(app, req, &tenant, endpoint).await)
        }
        ["v1", tenant, "loyalty", op] => {
            let endpoint = match *op {
                "lookup" => "loyalty.lookup",
                "enroll" => "loyalty.enroll",
                "award" => "loyalty.award",
                "account" => "loyalty.account",
                "rewards" => "loyalty.rewards",
                "redeem" => "loyalty.redeem",
                _ => return ("other", not_found()),
            };
            let tenant = tenant.to_string();
            (endpoint, provider_call(app, req, &tenant, endpoint).await)
        }
        ["v1", tenant, "webhooks"] => {
            let tenant = tenant.to_string();
            ("webhook", webhook_call(app, req, &tenant).await)
        }
        ["admin", "v1", rest @ ..] => {
            let rest: Vec<String> = rest
                .iter()
                .map(|s| percent_decode_str(s).decode_utf8_lossy().into_owned())
                .collect();
            ("admin", admin_call(app, req, rest).await)
        }
        _ => ("other", not_found()),
    }
}

fn get_only(req: &Request<Incoming>, f: impl FnOnce() -> Out) -> Out {
    if req.method() == Method::GET || req.method() == Method::HEAD {
        f()
    } else {
        method_not_allowed("GET")
    }
}

/// Read the body within the size and time limits, after checking its content type.
async fn read_json_body(app: &App, req: Request<Incoming>) -> Result<Vec<u8>, ApiError> {
    read_body(app, req, app.config.server.max_body_bytes, false).await
}

/// Largest CSV accepted by the member import.
const MAX_IMPORT_BYTES: usize = 64 * 1024 * 1024;

async fn read_body(
    app: &App,
    req: Request<Incoming>,
    max: usize,
    csv: bool,
) -> Result<Vec<u8>, ApiError> {
    if let Some(ct) = req.headers().get(hyper::header::CONTENT_TYPE) {
        let ct = ct.to_str().unwrap_or("").to_ascii_lowercase();
        let essence = ct.split(';').next().unwrap_or("").trim();
        let ok = if csv {
            essence == "text/csv" || essence == "text/plain"
        } else {
            essence == "application/json" || essence.ends_with("+json")
        };
        if !ok {
            let want = if csv { "text/csv" } else { "application/json" };
            return Err(ApiError::new(
                415,
                "UNSUPPORTED_MEDIA_TYPE",
                format!("Content-Type must be {want}, not {essence:?}"),
            ));
        }
    }
    let too_large = || {
        ApiError::new(
            413,
            "BODY_TOO_LARGE",
            format!("the body exceeds the limit of {max} bytes"),
        )
    };
    if let Some(len) = req.headers().get(hyper::header::CONTENT_LENGTH) {
        if len
            .to_str()
            .ok()
            .and_then(|s| s.parse::<u64>().ok())
            .is_some_and(|n| n > max as u64)
        {
            return Err(too_large());
        }
    }
    let body = Limited::new(req.into_body(), max);
    match tokio::time::timeout(app.config.server.body_read_timeout, body.collect()).await {
        Err(_) => Err(ApiError::new(
            408,
            "REQUEST_TIMEOUT",
            "the body did not arrive in time",
        )),
        Ok(Err(e))
            if e.downcast_ref::<http_body_util::LengthLimitError>()
                .is_some() =>
        {
            Err(too_large())
        }
        Ok(Err(_)) => Err(ApiError::new(
            400,
            "BAD_BODY",
            "the body could not be read: its chunked encoding is invalid or the connection \
             ended before Content-Length bytes arrived",
        )),
        Ok(Ok(c)) => Ok(c.to_bytes().to_vec()),
    }
}

async fn provider_call(
    app: &Arc<App>,
    req: Request<Incoming>,
    tenant: &str,
    endpoint: &'static str,
) -> Out {
    let Some(auth) = app.tenants.get(tenant) else {
        return err(ApiError::new(
            404,
            "UNKNOWN_TENANT",
            format!("no tenant {tenant:?}"),
        ));
    };
    if req.method() != Method::POST {
        return method_not_allowed("POST");
    }
    if let Err(why) = auth.check(req.headers()) {
        let mut o = err(ApiError::new(401, "UNAUTHORIZED", why));
        o.www_authenticate = auth.is_basic();
        return o;
    }
    let body = match read_json_body(app, req).await {
        Ok(b) => b,
        Err(e) => return err(e),
    };
    let now = app.clock.now_ms();
    let t = tenant.to_owned();
    use crate::contract::loyalty::*;
    use crate::service::loyalty as loy;
    use crate::service::voucher as v;
    match endpoint {
        "voucher.check" => check_call(app, &body, t, now).await,
        "voucher.commit" => {
            decide(
                app,
                endpoint,
                &body,
                CommitRequest::validate,
                move |x, s, r| v::commit(x, s, &t, &r, now),
            )
            .await
        }
        "voucher.reactivate" => {
            decide(
                app,
                endpoint,
                &body,
                CommitRequest::validate,
                move |x, s, r| v::reactivate(x, s, &t, &r, now),
            )
            .await
        }
        "loyalty.lookup" => {
            decide(
                app,
                endpoint,
                &body,
                LookupRequest::validate,
                move |x, s, r| loy::lookup(x, s, &t, &r),
            )
            .await
        }
        "loyalty.enroll" => {
            decide(
                app,
                endpoint,
                &body,
                EnrollRequest::validate,
                move |x, s, r| loy::enroll(x, s, &t, &r, now),
            )
            .await
        }
        "loyalty.award" => {
            decide(
                app,
                endpoint,
                &body,
                AwardRequest::validate,
                move |x, s, r| loy::award(x, s, &t, &r, now),
            )
            .await
        }
        "loyalty.account" => {
            decide(
                app,
                endpoint,
                &body,
                AccountRequest::validate,
                move |x, s, r| loy::account(x, s, &t, &r, now),
            )
            .await
        }
        "loyalty.rewards" => {
            decide(
                app,
                endpoint,
                &body,
                RewardsRequest::validate,
                move |x, s, r| loy::rewards(x, s, &t, &r),
            )
            .await
        }
        "loyalty.redeem" => {
            decide(
                app,
                endpoint,
                &body,
                RedeemRequest::validate,
                move |x, s, r| loy::redeem(x, s, &t, &r, now),
            )
            .await
        }
        _ => not_found(),
    }
}

/// Headers kept with an inbox event: the signature headers and the content type.
const KEPT_HEADERS: [&str; 6] = [
    "content-type",
    "webhook-id",
    "webhook-timestamp",
    "webhook-signature",
    "stripe-signature",
    "user-agent",
];

async fn webhook_call(app: &Arc<App>, req: Request<Incoming>, tenant: &str) -> Out {
    let Some(cfg) = app.config.tenant(tenant).and_then(|t| t.webhooks.clone()) else {
        return err(ApiError::new(
            404,
            "NOT_FOUND",
            format!("tenant {tenant:?} has no webhook receiver"),
        ));
    };
    if req.method() != Method::POST {
        return method_not_allowed("POST");
    }
    let headers: Vec<(String, String)> = req
        .headers()
        .iter()
        .map(|(k, v)| {
            (
                k.as_str().to_owned(),
                String::from_utf8_lossy(v.as_bytes()).into_owned(),
            )
        })
        .collect();
    let body = match read_json_body(app, req).await {
        Ok(b) => b,
        Err(e) => return err(e),
    };
    let now = app.clock.now_ms();
    let lookup = |name: &str| {
        headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.clone())
    };
    if let Err(e) = crate::webhook::verify(
        &cfg.scheme,
        &cfg.secrets,
        &lookup,
        &body,
        now,
        cfg.tolerance_ms,
    ) {
        return err(ApiError::new(401, "BAD_SIGNATURE", e.message()));
    }
    let value: serde_json::Value = match parse(&body) {
        Ok(v) => v,
        Err(e) => return err(e),
    };
    let env = match crate::webhook::parse_envelope(&value) {
        Ok(e) => e,
        Err(("", msg)) => return err(ApiError::new(400, "INVALID_BODY", msg)),
        Err((field, msg)) => return err(ApiError::invalid(field, msg)),
    };
    if let Some(max_age) = cfg.max_age_ms {
        if let Err(msg) = crate::webhook::check_max_age(&value, now, max_age) {
            return err(ApiError::invalid("timestamp", msg));
        }
    }
    let kept: Vec<(String, String)> = headers
        .into_iter()
        .filter(|(k, _)| {
            KEPT_HEADERS.contains(&k.as_str()) || Some(k.as_str()) == signature_header(&cfg.scheme)
        })
        .collect();
    let matching: Vec<String> = cfg
        .routes
        .iter()
        .filter(|r| crate::webhook::glob_match(&r.events, &env.event))
        .map(|r| r.name.clone())
        .collect();
    let delivery = crate::service::webhook::Delivery {
        id: env.id,
        event: env.event,
        body,
        headers: kept,
        routes: matching.clone(),
    };
    let t = tenant.to_owned();
    let retention = cfg.retention_ms;
    match app
        .store
        .run(move |txn, st| crate::service::webhook::receive(txn, st, &t, delivery, now, retention))
        .await
    {
        Ok(reply) => {
            if reply.outcome == "ok" {
                for r in &matching {
                    app.wake_route(tenant, r);
                }
            }
            Out::from(reply)
        }
        Err(e) => store_error(e),
    }
}

/// `?a=1&b=x` → pairs, percent-decoded.
fn query_pairs(q: Option<&str>) -> Vec<(String, String)> {
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

fn inbox_filter(q: &[(String, String)]) -> Result<crate::service::webhook::InboxFilter, ApiError> {
    let mut f = crate::service::webhook::InboxFilter {
        limit: 100,
        ..Default::default()
    };
    let time = |k: &str, v: &str| {
        v.parse::<jiff::Timestamp>()
            .map(|t| t.as_millisecond())
            .map_err(|_| ApiError::invalid(k.to_owned(), "an RFC 3339 instant"))
    };
    for (k, v) in q {
        match k.as_str() {
            "event" => f.event = Some(v.clone()),
            "status" if ["queued", "delivered", "dead"].contains(&v.as_str()) => {
                f.status = Some(v.clone())
            }
            "status" => {
                return Err(ApiError::invalid(
                    "status",
                    "one of queued, delivered, dead",
                ))
            }
            "since" => f.since = Some(time(k, v)?),
            "until" => f.until = Some(time(k, v)?),
            "limit" => {
                f.limit = v
                    .parse()
                    .ok()
                    .filter(|n| (1..=10_000).contains(n))
                    .ok_or_else(|| ApiError::invalid("limit", "1..=10000"))?
            }
            other => {
                return Err(ApiError::invalid(
                    other.to_owned(),
                    "unknown filter; use event, status, since, until, limit",
                ))
            }
        }
    }
    Ok(f)
}

fn signature_header(s: &crate::webhook::Scheme) -> Option<&str> {
    match s {
        crate::webhook::Scheme::HmacSha256Hex { header }
        | crate::webhook::Scheme::Stripe { header } => Some(header),
        _ => None,
    }
}

/// A check: when vendor rules apply to the code's campaign, ask the vendor first (outside
/// the writer), then let the writer decide limits and holds with the vendor's answer.
async fn check_call(app: &Arc<App>, body: &[u8], t: String, now: i64) -> Out {
    use crate::service::voucher as v;
    use crate::voucher::Rejection;
    let req: CheckRequest =
        match parse_object(body).and_then(|r: CheckRequest| r.validate().map(|()| r)) {
            Ok(r) => r,
            Err(e) => return err(e),
        };
    // A bulk code is looked up in the code index here, off the writer (see store::codeindex).
    let indexed = app
        .config
        .tenant(&t)
        .and_then(|tc| v::lookup_indexed(app.store.code_index(), tc.code_match, &t, &req.code));
    let mut decision = None;
    if !app.rules.is_empty() || app.embedded_rules.is_some() {
        let (t2, typed, ix) = (t.clone(), req.code.clone(), indexed.clone());
        let found = match app
            .store
            .run(move |txn, st| v::resolve_code(txn, st, &t2, &typed, ix))
            .await
        {
            Ok(f) => f,
            Err(e) => return store_error(e),
        };
        if let Some(found) = found {
            if let Some(rules) = app.rules_for(&t, &found.campaign) {
                let rr = crate::rules::RulesRequest {
                    tenant: t.clone(),
                    campaign: found.campaign.clone(),
                    code: req.code.clone(),
                    voucher_nr: found.code.clone(),
                    cart: req.cart.clone(),
                    location_id: req.location_id.clone(),
                    user_id: req.user_id.clone(),
                };
                let refuse = |r: Rejection| Out::from(Reply::rejected(r.code(), &r.message()));
                match rules.decide(&rr).await.and_then(crate::rules::validate) {
                    Ok(d) if d.ok => {
                        decision = Some(v::VendorDecision {
                            discount_cents: d.discount_amount_cents.unwrap_or(0),
                            voucher_nr: d.voucher_nr,
                        });
                    }
                    Ok(d) => return refuse(Rejection::VendorDeclined { reason: d.reason }),
                    Err(why) => {
                        tracing::warn!(tenant = %t, campaign = %found.campaign, error = %why, "vendor rules failed; refusing (fail closed)");
                        return refuse(Rejection::VendorUnavailable { why });
                    }
                }
            }
        }
    }
    let faults = app.faults.clone();
    match app
        .store
        .run(move |txn, st| {
            let reply = v::check(txn, st, &t, &req, decision.as_ref(), indexed, now)?;
            faults.hit("voucher.check", txn)?;
            Ok(reply)
        })
        .await
    {
        Ok(reply) => Out::from(reply),
        Err(e) => store_error(e),
    }
}

/// After bulk codes were written: rebuild the tenant's code index in the background (until
/// then the new codes are found in the store).
pub(crate) fn refresh_code_index(app: &App, tenant: &str) {
    use crate::service::keys;
    app.store.refresh_code_index(
        tenant,
        keys::bulk_code_prefix(tenant),
        keys::bulk_generation(tenant),
    );
}

/// Parse and validate `body` as `Req`, then run the decision `f` on the store's writer.
async fn decide<Req, V, F>(
    app: &Arc<App>,
    endpoint: &'static str,
    body: &[u8],
    validate: V,
    f: F,
) -> Out
where
    Req: serde::de::DeserializeOwned + Send + 'static,
    V: FnOnce(&Req) -> Result<(), ApiError>,
    F: FnOnce(&mut Txn<'_>, &mut State, Req) -> Result<Reply, StoreError> + Send + 'static,
{
    let req: Req = match parse_object(body).and_then(|r: Req| validate(&r).map(|()| r)) {
        Ok(r) => r,
        Err(e) => return err(e),
    };
    let faults = app.faults.clone();
    let job = move |txn: &mut Txn<'_>, st: &mut State| {
        let reply = f(txn, st, req)?;
        faults.hit(endpoint, txn)?;
        Ok(reply)
    };
    match app.store.run(job).await {
        Ok(reply) => Out::from(reply),
        Err(e) => store_error(e),
    }
}

async fn read_json<T: serde::de::DeserializeOwned>(
    app: &App,
    req: Request<Incoming>,
) -> Result<T, ApiError> {
    let body = read_json_body(app, req).await?;
    parse(&body)
}

async fn admin_call(app: &Arc<App>, req: Request<Incoming>, rest: Vec<String>) -> Out {
    let Some(digest) = &app.admin_digest else {
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
    let rest: Vec<&str> = rest.iter().map(String::as_str).collect();
    if rest.as_slice() == ["export"] {
        if req.method() != Method::GET {
            return method_not_allowed("GET");
        }
        let at = crate::clock::rfc3339(app.clock.now_ms());
        // Page by page, so commits go on meanwhile (service::sliced).
        return match crate::service::sliced::export_all(
            &app.store,
            app.config.storage.job_slice_records,
        )
        .await
        {
            Ok(records) => {
                let mut o = Out::from(Reply::ok(crate::backup::encode(&records, &at)));
                o.content_type = "application/x-ndjson";
                o
            }
            Err(e) => store_error(e),
        };
    }
    let ["tenants", tenant, tail @ ..] = rest.as_slice() else {
        return not_found();
    };
    let tenant = tenant.to_string();
    if !app.tenants.contains_key(&tenant) {
        return err(ApiError::new(
            404,
            "UNKNOWN_TENANT",
            format!("no tenant {tenant:?}"),
        ));
    }
    let now = app.clock.now_ms();
    let method = req.method().clone();
    let query = query_pairs(req.uri().query());
    use crate::service::loyalty as loy;
    let result = match (tail, &method) {
        (["campaigns"], &Method::GET) => {
            app.store
                .run(move |txn, st| admin::list_campaigns(txn, st, &tenant, now))
                .await
        }
        (["campaigns"], &Method::POST) | (["campaigns", _], &Method::PUT) => {
            let id = tail.get(1).map(|s| s.to_string());
            let body = match read_json_body(app, req).await {
                Ok(b) => b,
                Err(e) => return err(e),
            };
            let spec: CampaignSpec = match parse(&body) {
                Ok(s) => s,
                Err(e) => return err(e),
            };
            app.store
                .run(move |txn, st| admin::put_campaign(txn, st, &tenant, id.as_deref(), spec))
                .await
        }
        (["campaigns", c, "codes"], &Method::POST) => {
            let c = c.to_string();
            let body = match read_body(app, req, MAX_IMPORT_BYTES, true).await {
                Ok(b) => b,
                Err(e) => return err(e),
            };
            let r = crate::service::sliced::import_codes(
                &app.store,
                app.config.storage.job_slice_records,
                &tenant,
                &c,
                body,
            )
            .await;
            refresh_code_index(app, &tenant);
            r
        }
        (["campaigns", c, "codes"], &Method::GET) => {
            let c = c.to_string();
            return match crate::service::sliced::export_codes(
                &app.store,
                app.config.storage.job_slice_records,
                &tenant,
                &c,
            )
            .await
            {
                Ok(reply) if reply.status == 200 => {
                    let mut o = Out::from(reply);
                    o.content_type = "text/csv";
                    o
                }
                Ok(reply) => Out::from(reply),
                Err(e) => store_error(e),
            };
        }
        (["campaigns", c, "codes", "generate"], &Method::POST) => {
            #[derive(serde::Deserialize)]
            #[serde(deny_unknown_fields)]
            struct Gen {
                pattern: String,
                count: u64,
            }
            let c = c.to_string();
            let g: Gen = match read_json(app, req).await {
                Ok(g) => g,
                Err(e) => return err(e),
            };
            let r = crate::service::sliced::generate_codes(
                &app.store,
                app.config.storage.job_slice_records,
                &tenant,
                &c,
                &g.pattern,
                g.count,
            )
            .await;
            refresh_code_index(app, &tenant);
            r
        }
        (["campaigns", _, "codes"], _) => return method_not_allowed("GET, POST"),
        (["campaigns", _, "codes", "generate"], _) => return method_not_allowed("POST"),
        (["campaigns"], _) => return method_not_allowed("GET, POST"),
        (["campaigns", _], _) => return method_not_allowed("PUT"),
        (["codes", code], &Method::GET) => {
            let code = code.to_string();
            app.store
                .run(move |txn, st| admin::code_state(txn, st, &tenant, &code, now))
                .await
        }
        (["holds"], &Method::GET) => {
            app.store
                .run(move |txn, st| admin::list_holds(txn, st, &tenant, now))
                .await
        }
        (["holds", r], &Method::GET) => {
            let r = r.to_string();
            app.store
                .run(move |txn, st| admin::get_hold(txn, st, &tenant, &r, now))
                .await
        }
        (["switch-readiness"], &Method::GET) => {
            crate::service::sliced::switch_readiness(
                &app.store,
                app.config.storage.job_slice_records,
                &tenant,
                now,
            )
            .await
        }
        (["switch-readiness"], _) => return method_not_allowed("GET"),
        (["holds", r, "release"], &Method::POST) => {
            let r = r.to_string();
            app.store
                .run(move |txn, st| admin::release(txn, st, &tenant, &r, now))
                .await
        }
        (["loyalty", p, "members", "import"], &Method::POST) => {
            let p = p.to_string();
            let body = match read_body(app, req, MAX_IMPORT_BYTES, true).await {
                Ok(b) => b,
                Err(e) => return err(e),
            };
            app.store
                .run(move |txn, st| loy::import_members(txn, st, &tenant, &p, &body, now))
                .await
        }
        (["loyalty", p, kind @ ("members" | "users"), id], &Method::GET) => {
            let (p, id, by_user) = (p.to_string(), id.to_string(), *kind == "users");
            app.store
                .run(move |txn, st| loy::show_member(txn, st, &tenant, &p, by_user, &id, now))
                .await
        }
        (["loyalty", p, "members", m, "adjustments"], &Method::POST) => {
            let (p, m) = (p.to_string(), m.to_string());
            let req: loy::AdjustRequest = match read_json(app, req).await {
                Ok(r) => r,
                Err(e) => return err(e),
            };
            app.store
                .run(move |txn, st| loy::adjust(txn, st, &tenant, &p, &m, req, now))
                .await
        }
        (["loyalty", p, "reversals"], &Method::POST) => {
            let p = p.to_string();
            let req: loy::ReversalRequest = match read_json(app, req).await {
                Ok(r) => r,
                Err(e) => return err(e),
            };
            app.store
                .run(move |txn, st| loy::reverse_award(txn, st, &tenant, &p, req, now))
                .await
        }
        (["loyalty", p, "redemptions", r, "reverse"], &Method::POST) => {
            let (p, r) = (p.to_string(), r.to_string());
            let req: loy::RedemptionReversalRequest = match read_json(app, req).await {
                Ok(r) => r,
                Err(e) => return err(e),
            };
            app.store
                .run(move |txn, st| loy::reverse_redemption(txn, st, &tenant, &p, &r, req, now))
                .await
        }
        (["loyalty", _, "members" | "users", _], _) => return method_not_allowed("GET"),
        (["loyalty", _, "members", _, "adjustments"], _)
        | (["loyalty", _, "reversals"], _)
        | (["loyalty", _, "redemptions", _, "reverse"], _) => return method_not_allowed("POST"),
        (["webhooks", "inbox"], &Method::GET) => {
            let f = match inbox_filter(&query) {
                Ok(f) => f,
                Err(e) => return err(e),
            };
            crate::service::sliced::inbox(
                &app.store,
                app.config.storage.job_slice_records,
                &tenant,
                f,
            )
            .await
        }
        (["webhooks", "inbox", seq], &Method::GET) => {
            let Ok(seq) = seq.parse::<u64>() else {
                return err(ApiError::invalid("seq", "an inbox sequence number"));
            };
            app.store
                .run(move |txn, st| crate::service::webhook::show(txn, st, &tenant, seq))
                .await
        }
        (["webhooks", "dead-letters"], &Method::GET) => {
            app.store
                .run(move |txn, st| crate::service::webhook::dead_letters(txn, st, &tenant))
                .await
        }
        (["webhooks", "dead-letters", rest @ ..], &Method::POST) => {
            let (only, action) = match rest {
                [action] => (None, *action),
                [route, seq, action] => match seq.parse::<u64>() {
                    Ok(n) => (Some((route.to_string(), n)), *action),
                    Err(_) => return err(ApiError::invalid("seq", "an inbox sequence number")),
                },
                _ => return not_found(),
            };
            match action {
                "replay" => {
                    let t2 = tenant.clone();
                    match app
                        .store
                        .run(move |txn, st| {
                            crate::service::webhook::replay_dead(txn, st, &t2, only)
                        })
                        .await
                    {
                        Ok((reply, routes)) => {
                            for r in routes {
                                app.wake_route(&tenant, &r);
                            }
                            Ok(reply)
                        }
                        Err(e) => Err(e),
                    }
                }
                "purge" => {
                    app.store
                        .run(move |txn, st| {
                            crate::service::webhook::purge_dead(txn, st, &tenant, only)
                        })
                        .await
                }
                _ => return not_found(),
            }
        }
        (["sources", rest @ ..], m) => {
            if let Some(allow) = crate::sources::not_allowed(rest, m) {
                return method_not_allowed(allow);
            }
            let body = match *m == Method::POST {
                true => match read_json_body(app, req).await {
                    Ok(b) => Some(b),
                    Err(e) => return err(e),
                },
                false => None,
            };
            crate::sources::admin(app, &tenant, rest, m, &query, body).await
        }
        (["provider-states"], &Method::POST) => {
            if !app.config.admin.provider_states {
                return err(ApiError::new(
                    404,
                    "NOT_FOUND",
                    "provider states are off: set [admin] provider_states = true",
                ));
            }
            #[derive(serde::Deserialize)]
            struct StateReq {
                state: String,
                #[serde(default)]
                params: serde_json::Value,
                #[serde(default = "setup")]
                action: String,
            }
            fn setup() -> String {
                "setup".into()
            }
            let r: StateReq = match read_json(app, req).await {
                Ok(r) => r,
                Err(e) => return err(e),
            };
            app.store
                .run(move |txn, st| {
                    crate::service::states::apply(
                        txn, st, &tenant, &r.state, r.params, &r.action, now,
                    )
                })
                .await
        }
        (["provider-states"], _) => return method_not_allowed("POST"),
        (["webhooks", "inbox", _], _) | (["webhooks", "dead-letters"], _) => {
            return method_not_allowed("GET")
        }
        (["webhooks", "inbox"], _) => return method_not_allowed("GET"),
        (["codes", _], _) | (["holds"], _) | (["holds", _], _) => return method_not_allowed("GET"),
        (["holds", _, "release"], _) => return method_not_allowed("POST"),
        _ => return not_found(),
    };
    match result {
        Ok(reply) => Out::from(reply),
        Err(e) => store_error(e),
    }
}
