//! Routing: the path parsed once into an [`Endpoint`] (its label names it in metrics),
//! then the same steps for every provider call — tenant, method, auth, content type, body
//! limits, parse, validate — and the call of the application operation; the admin API is
//! in `admin.rs`.

use std::future::Future;

use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use hyper::{Method, Request};
use percent_encoding::percent_decode_str;

use super::admin::AdminPath;
use super::{Front, Out};
use crate::app::{App, Call, Reply};
use crate::contract::loyalty::{
    AccountRequest, AwardRequest, EnrollRequest, LookupRequest, RedeemRequest, RewardsRequest,
};
use crate::contract::voucher::{CheckRequest, CommitRequest};
use crate::contract::{parse_object, ApiError};

/// What a request asks for, from its path alone (the method is checked per endpoint).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Endpoint {
    /// `/healthz`
    Health,
    /// `/readyz`
    Ready,
    /// `/metrics`
    Metrics,
    /// `/v1/{tenant}/voucher/{call}`, `/v1/{tenant}/loyalty/{call}`
    Provider {
        tenant: String,
        call: Call,
    },
    /// `/v1/{tenant}/webhooks`
    Webhook {
        tenant: String,
    },
    /// `/admin/v1/…`, segments percent-decoded
    Admin(AdminPath),
    /// `/console` and `/console/…`, the segments after it percent-decoded
    Console(Vec<String>),
    Unknown,
}

impl Endpoint {
    pub(super) fn parse(path: &str) -> Endpoint {
        let segs: Vec<&str> = path.trim_start_matches('/').split('/').collect();
        match segs.as_slice() {
            ["healthz"] => Endpoint::Health,
            ["readyz"] => Endpoint::Ready,
            ["metrics"] => Endpoint::Metrics,
            ["v1", tenant, kind, op] => match Call::parse(kind, op) {
                Some(call) => Endpoint::Provider {
                    tenant: tenant.to_string(),
                    call,
                },
                None => Endpoint::Unknown,
            },
            ["v1", tenant, "webhooks"] => Endpoint::Webhook {
                tenant: tenant.to_string(),
            },
            ["admin", "v1", rest @ ..] => {
                let rest: Vec<String> = rest
                    .iter()
                    .map(|s| percent_decode_str(s).decode_utf8_lossy().into_owned())
                    .collect();
                Endpoint::Admin(AdminPath::parse(&rest))
            }
            ["console", rest @ ..] => Endpoint::Console(
                rest.iter()
                    .filter(|s| !s.is_empty())
                    .map(|s| percent_decode_str(s).decode_utf8_lossy().into_owned())
                    .collect(),
            ),
            _ => Endpoint::Unknown,
        }
    }

    /// The tenant and endpoint label injected faults may apply to: provider calls and the
    /// webhook receiver only (never admin, health, readiness or metrics).
    pub(super) fn fault_target(&self) -> Option<(&str, &'static str)> {
        match self {
            Endpoint::Provider { tenant, call } => Some((tenant, call.label())),
            Endpoint::Webhook { tenant } => Some((tenant, "webhook")),
            _ => None,
        }
    }

    /// The metrics label.
    pub(super) fn label(&self) -> &'static str {
        match self {
            Endpoint::Health | Endpoint::Ready => "health",
            Endpoint::Metrics => "metrics",
            Endpoint::Provider { call, .. } => call.label(),
            Endpoint::Webhook { .. } => "webhook",
            Endpoint::Admin(_) => "admin",
            Endpoint::Console(_) => "console",
            Endpoint::Unknown => "other",
        }
    }
}

pub(super) fn err(e: ApiError) -> Out {
    Out::from(Reply::error(&e))
}

pub(super) fn not_found() -> Out {
    err(ApiError::new(404, "NOT_FOUND", "no such endpoint"))
}

pub(super) fn method_not_allowed(allow: &'static str) -> Out {
    let mut o = err(ApiError::new(
        405,
        "METHOD_NOT_ALLOWED",
        format!("use {allow}"),
    ));
    o.allow = Some(allow);
    o
}

/// `reply`, sent as `content_type` when it succeeded (an error stays JSON).
pub(super) fn typed_out(reply: Reply, content_type: &'static str) -> Out {
    let ok = reply.status == 200;
    let mut o = Out::from(reply);
    if ok {
        o.content_type = content_type;
    }
    o
}

pub(super) async fn route(front: &Front, endpoint: &Endpoint, req: Request<Incoming>) -> Out {
    let app = &front.app;
    match endpoint {
        Endpoint::Health => get_only(&req, || Out::from(Reply::ok(br#"{"ok":true}"#.to_vec()))),
        Endpoint::Ready => get_only(&req, || {
            if app.is_ready() {
                Out::from(Reply::ok(br#"{"ok":true}"#.to_vec()))
            } else {
                err(ApiError::new(
                    503,
                    "NOT_READY",
                    "the store is unavailable or the server is shutting down",
                ))
            }
        }),
        Endpoint::Metrics => get_only(&req, || {
            typed_out(
                Reply::ok(app.metrics_text().into_bytes()),
                "text/plain; version=0.0.4",
            )
        }),
        Endpoint::Provider { tenant, call } => provider_call(front, req, tenant, *call).await,
        Endpoint::Webhook { tenant } => webhook_call(app, req, tenant).await,
        Endpoint::Admin(path) => super::admin::call(front, req, path).await,
        Endpoint::Console(path) => super::console::call(front, req, path).await,
        Endpoint::Unknown => not_found(),
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
pub(super) async fn read_json_body(app: &App, req: Request<Incoming>) -> Result<Vec<u8>, ApiError> {
    read_body(app, req, app.config.server.max_body_bytes, BodyKind::Json).await
}

/// Largest CSV accepted by the member import.
pub(super) const MAX_IMPORT_BYTES: usize = 64 * 1024 * 1024;

/// The content types a body may have.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum BodyKind {
    Json,
    Csv,
    /// `application/x-www-form-urlencoded`, or `multipart/form-data` for a file (the
    /// console's forms).
    Form,
}

pub(super) async fn read_body(
    app: &App,
    req: Request<Incoming>,
    max: usize,
    kind: BodyKind,
) -> Result<Vec<u8>, ApiError> {
    if let Some(ct) = req.headers().get(hyper::header::CONTENT_TYPE) {
        let ct = ct.to_str().unwrap_or("").to_ascii_lowercase();
        let essence = ct.split(';').next().unwrap_or("").trim();
        let (ok, want) = match kind {
            BodyKind::Csv => (essence == "text/csv" || essence == "text/plain", "text/csv"),
            BodyKind::Json => (
                essence == "application/json" || essence.ends_with("+json"),
                "application/json",
            ),
            BodyKind::Form => (
                essence == "application/x-www-form-urlencoded" || essence == "multipart/form-data",
                "application/x-www-form-urlencoded or multipart/form-data",
            ),
        };
        if !ok {
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

/// Parse and validate `body` as `Req`, then run the operation `op` with it.
async fn typed<Req, Fut>(
    body: &[u8],
    validate: impl FnOnce(&Req) -> Result<(), ApiError>,
    op: impl FnOnce(Req) -> Fut,
) -> Reply
where
    Req: serde::de::DeserializeOwned,
    Fut: Future<Output = Reply>,
{
    match parse_object(body).and_then(|r: Req| validate(&r).map(|()| r)) {
        Ok(r) => op(r).await,
        Err(e) => Reply::error(&e),
    }
}

async fn provider_call(front: &Front, req: Request<Incoming>, tenant: &str, call: Call) -> Out {
    let Some(auth) = front.tenants.get(tenant) else {
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
    let (app, t) = (&front.app, tenant);
    let body = match read_json_body(app, req).await {
        Ok(b) => b,
        Err(e) => return err(e),
    };
    Out::from(match call {
        Call::Check => typed(&body, CheckRequest::validate, |r| app.check(t, r)).await,
        Call::Commit => typed(&body, CommitRequest::validate, |r| app.commit(t, r)).await,
        Call::Reactivate => typed(&body, CommitRequest::validate, |r| app.reactivate(t, r)).await,
        Call::Lookup => typed(&body, LookupRequest::validate, |r| app.lookup(t, r)).await,
        Call::Enroll => typed(&body, EnrollRequest::validate, |r| app.enroll(t, r)).await,
        Call::Award => typed(&body, AwardRequest::validate, |r| app.award(t, r)).await,
        Call::Account => typed(&body, AccountRequest::validate, |r| app.account(t, r)).await,
        Call::Rewards => typed(&body, RewardsRequest::validate, |r| app.rewards(t, r)).await,
        Call::Redeem => typed(&body, RedeemRequest::validate, |r| app.redeem(t, r)).await,
    })
}

async fn webhook_call(app: &App, req: Request<Incoming>, tenant: &str) -> Out {
    if !app.has_webhook_receiver(tenant) {
        return err(ApiError::new(
            404,
            "NOT_FOUND",
            format!("tenant {tenant:?} has no webhook receiver"),
        ));
    }
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
    match read_json_body(app, req).await {
        Ok(body) => Out::from(app.receive_webhook(tenant, headers, body).await),
        Err(e) => err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::admin::Op;

    #[test]
    fn a_path_is_parsed_once_into_its_endpoint_and_label() {
        let cases = [
            ("/healthz", "health"),
            ("/readyz", "health"),
            ("/metrics", "metrics"),
            ("/v1/acme/voucher/check", "voucher.check"),
            ("/v1/acme/voucher/commit", "voucher.commit"),
            ("/v1/acme/voucher/reactivate", "voucher.reactivate"),
            ("/v1/acme/loyalty/lookup", "loyalty.lookup"),
            ("/v1/acme/loyalty/enroll", "loyalty.enroll"),
            ("/v1/acme/loyalty/award", "loyalty.award"),
            ("/v1/acme/loyalty/account", "loyalty.account"),
            ("/v1/acme/loyalty/rewards", "loyalty.rewards"),
            ("/v1/acme/loyalty/redeem", "loyalty.redeem"),
            ("/v1/acme/voucher/lookup", "other"),
            ("/v1/acme/webhooks", "webhook"),
            ("/admin/v1/export", "admin"),
            ("/admin/v1/nothing", "admin"),
            ("/admin/v1/tenants/acme/sources", "admin"),
            ("/admin/v1/tenants/acme/sources/loke/orders", "admin"),
            (
                "/admin/v1/tenants/acme/sources/loke/orders/l1/award",
                "admin",
            ),
            ("/v2/acme/voucher/check", "other"),
            ("/", "other"),
        ];
        for (path, label) in cases {
            let e = Endpoint::parse(path);
            assert_eq!(e.label(), label, "{path}");
            let faultable = label.starts_with("voucher.") || label.starts_with("loyalty.");
            let target = e.fault_target().map(|(t, l)| (t.to_owned(), l));
            let want = (faultable || label == "webhook").then(|| ("acme".to_owned(), label));
            assert_eq!(target, want, "{path}");
        }
        assert_eq!(
            Endpoint::parse("/v1/acme/voucher/commit"),
            Endpoint::Provider {
                tenant: "acme".into(),
                call: Call::Commit
            }
        );
    }

    #[test]
    fn admin_paths_are_percent_decoded_and_name_their_operation() {
        let op = |p: &str| match Endpoint::parse(p) {
            Endpoint::Admin(AdminPath::Tenant { tenant, op }) => (tenant, op),
            other => panic!("{p}: {other:?}"),
        };
        assert_eq!(
            op("/admin/v1/tenants/acme/codes/SUMMER%2010"),
            ("acme".into(), Some(Op::Code("SUMMER 10".into())))
        );
        assert_eq!(
            op("/admin/v1/tenants/acme/loyalty/7/users/u%2F1"),
            (
                "acme".into(),
                Some(Op::Member {
                    program: "7".into(),
                    by_user: true,
                    id: "u/1".into()
                })
            )
        );
        assert_eq!(
            op("/admin/v1/tenants/acme/loyalty/7/members/import"),
            ("acme".into(), Some(Op::ImportMembers("7".into())))
        );
        assert_eq!(
            op("/admin/v1/tenants/acme/sources"),
            ("acme".into(), Some(Op::Sources))
        );
        assert_eq!(
            op("/admin/v1/tenants/acme/sources/pos/orders"),
            ("acme".into(), Some(Op::SourceOrders("pos".into())))
        );
        assert_eq!(
            op("/admin/v1/tenants/acme/sources/loke/orders/o%2F7/award"),
            (
                "acme".into(),
                Some(Op::AwardSourceOrder {
                    source: "loke".into(),
                    order: "o/7".into()
                })
            )
        );
        assert_eq!(
            op("/admin/v1/tenants/acme/sources/loke/orders/o1"),
            ("acme".into(), None)
        );
        assert_eq!(op("/admin/v1/tenants/acme/bogus"), ("acme".into(), None));
        assert_eq!(
            Endpoint::parse("/admin/v1/tenants"),
            Endpoint::Admin(AdminPath::Unknown)
        );
    }
}
