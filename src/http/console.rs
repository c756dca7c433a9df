//! `/console/…` over HTTP: the method, the session cookie, the query and the form fields
//! read into a [`ConsoleRequest`], the console's answer turned into an [`Out`].

use hyper::body::Incoming;
use hyper::{Method, Request};

use super::admin::query_pairs;
use super::routes::{err, method_not_allowed, read_body, BodyKind, MAX_IMPORT_BYTES};
use super::{Front, Out};
use crate::app::Reply;
use crate::console::{ConsoleRequest, ConsoleResponse, COOKIE};
use crate::contract::ApiError;

pub(super) async fn call(front: &Front, req: Request<Incoming>, path: &[String]) -> Out {
    let Some(console) = &front.console else {
        return err(ApiError::new(
            404,
            "ADMIN_DISABLED",
            "the console is off with the admin API: set the token named by [admin] token_env",
        ));
    };
    if path.is_empty() && !req.uri().path().ends_with('/') {
        return page(ConsoleResponse {
            status: 308,
            content_type: "text/plain; charset=utf-8",
            body: Vec::new(),
            headers: vec![("location", "/console/".into())],
        });
    }
    let post = match *req.method() {
        Method::GET | Method::HEAD => false,
        Method::POST => true,
        _ => return method_not_allowed("GET, POST"),
    };
    let h = req.headers();
    let cookie = cookie(
        h.get_all(hyper::header::COOKIE)
            .iter()
            .filter_map(|v| v.to_str().ok()),
    );
    let tls = h
        .get("x-forwarded-proto")
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"https"));
    let client = req.extensions().get::<super::Peer>().map(|p| p.0.ip());
    let query = query_pairs(req.uri().query());
    let form = if post {
        // A code import may be as large as the admin API's, once the session is known.
        let import = path.last().is_some_and(|p| p == "import")
            && console.has_session(&front.app, cookie.as_deref());
        let max = if import {
            MAX_IMPORT_BYTES
        } else {
            front.app.config.server.max_body_bytes
        };
        match read_body(&front.app, req, max, BodyKind::Form).await {
            Ok(b) => query_pairs(Some(&String::from_utf8_lossy(&b))),
            Err(e) => return err(e),
        }
    } else {
        Vec::new()
    };
    let r = ConsoleRequest {
        post,
        path: path.to_vec(),
        query,
        form,
        cookie,
        tls,
        client,
    };
    page(console.handle(&front.app, r).await)
}

/// Our cookie's value among the `Cookie` headers.
fn cookie<'a>(headers: impl Iterator<Item = &'a str>) -> Option<String> {
    headers
        .flat_map(|h| h.split(';'))
        .filter_map(|c| c.trim().split_once('='))
        .find(|(k, _)| *k == COOKIE)
        .map(|(_, v)| v.to_owned())
}

fn page(r: ConsoleResponse) -> Out {
    let outcome = if r.status < 400 {
        "ok".to_owned()
    } else {
        r.status.to_string()
    };
    let mut o = Out::from(Reply {
        status: r.status,
        body: r.body,
        outcome,
    });
    o.content_type = r.content_type;
    o.extra = r.headers;
    o.extra.extend(
        ConsoleResponse::security_headers()
            .into_iter()
            .map(|(k, v)| (k, v.to_owned())),
    );
    o
}
