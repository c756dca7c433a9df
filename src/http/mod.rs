//! The hyper server, kept thin: accept connections (with a cap), apply limits (header
//! size and read time, body size and read time), parse the path into an
//! [`Endpoint`](routes::Endpoint), authenticate, parse the body into the typed request of
//! an application operation ([`crate::app`]), call it, and turn its [`Reply`] into bytes.
//! Drains in-flight requests and closes the application on shutdown. Nothing here touches
//! the store.

mod admin;
mod auth;
mod console;
mod lowlevel;
mod routes;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::{oneshot, Semaphore};

use crate::app::chaos::{Injected, Kind};
use crate::app::{App, Reply};
use crate::clock::Clock;
use crate::config::Config;
use crate::contract::ApiError;

pub use crate::app::StartError;
pub use auth::TenantAuth;

/// What the HTTP layer holds: the application, and the credentials it checks.
pub(crate) struct Front {
    pub app: Arc<App>,
    pub tenants: HashMap<String, TenantAuth>,
    pub admin_digest: Option<[u8; 32]>,
    /// The operator console; on when the admin API is.
    pub console: Option<crate::console::Console>,
}

/// A running server: its address, the application it serves, and a handle to stop it.
pub struct Server {
    pub addr: SocketAddr,
    pub app: Arc<App>,
    stop_tx: Option<oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl Server {
    /// Open the store, bind the listen address, and start serving.
    pub async fn start(config: Config, clock: Clock) -> Result<Server, StartError> {
        Server::start_with_rules(config, clock, None).await
    }

    /// Like [`Server::start`], with a vendor decision point of the embedding program's
    /// own, used for every campaign that has no HTTP `rules` of its own.
    pub async fn start_with_rules(
        config: Config,
        clock: Clock,
        embedded_rules: Option<Arc<dyn crate::rules::VoucherRules>>,
    ) -> Result<Server, StartError> {
        let app = App::open(config, clock, embedded_rules).await?;
        let listen = &app.config.server.listen;
        let listener = TcpListener::bind(listen)
            .await
            .map_err(|e| StartError::Bind(format!("cannot listen on {listen}: {e}")))?;
        let addr = listener
            .local_addr()
            .map_err(|e| StartError::Bind(e.to_string()))?;
        let front = Arc::new(Front {
            tenants: app
                .config
                .tenants
                .iter()
                .map(|t| (t.id.clone(), TenantAuth::from_config(&t.auth)))
                .collect(),
            admin_digest: app
                .config
                .admin
                .token
                .as_ref()
                .map(|t| auth::admin_digest(t.expose())),
            console: app
                .config
                .admin
                .token
                .as_ref()
                .map(|t| crate::console::Console::new(auth::admin_digest(t.expose()))),
            app: app.clone(),
        });
        app.start_background();
        let (stop_tx, stop_rx) = oneshot::channel();
        let task = tokio::spawn(serve(front, listener, stop_rx));
        Ok(Server {
            addr,
            app,
            stop_tx: Some(stop_tx),
            task: Some(task),
        })
    }

    /// Stop accepting, let in-flight requests finish (up to `shutdown_grace`), flush and
    /// close the store.
    pub async fn stop(mut self) {
        if let Some(tx) = self.stop_tx.take() {
            let _ = tx.send(());
        }
        if let Some(t) = self.task.take() {
            let _ = t.await;
        }
    }
}

async fn serve(front: Arc<Front>, listener: TcpListener, mut stop: oneshot::Receiver<()>) {
    let app = front.app.clone();
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let permits = Arc::new(Semaphore::new(app.config.server.max_connections));
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(app.config.server.header_read_timeout)
        .max_buf_size(app.config.server.max_header_bytes.max(8192))
        // A client that shuts down its write side after the request still gets its answer
        // (hyper would otherwise drop the request at the EOF).
        .half_close(true)
        .keep_alive(true);
    loop {
        let permit = tokio::select! {
            p = permits.clone().acquire_owned() => match p { Ok(p) => p, Err(_) => break },
            _ = &mut stop => break,
        };
        let (stream, peer) = tokio::select! {
            r = listener.accept() => match r {
                Ok(s) => s,
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
                    continue;
                }
            },
            _ = &mut stop => break,
        };
        let _ = stream.set_nodelay(true);
        let front2 = front.clone();
        let io = lowlevel::JsonErrors::new(stream, app.config.server.max_header_bytes.max(8192));
        let conn = builder.serve_connection(
            TokioIo::new(io),
            service_fn(move |mut req: Request<Incoming>| {
                req.extensions_mut().insert(Peer(peer));
                handle(front2.clone(), req)
            }),
        );
        let conn = graceful.watch(conn);
        tokio::spawn(async move {
            let _ = conn.await;
            drop(permit);
        });
    }
    app.mark_draining();
    drop(listener);
    tokio::select! {
        _ = graceful.shutdown() => {}
        _ = tokio::time::sleep(app.config.server.shutdown_grace) => {
            tracing::warn!("shutdown grace period over; closing the remaining connections");
        }
    }
    app.close().await;
    tracing::info!("store flushed and closed");
}

/// The client's address (the TCP peer), attached to each request of its connection: the
/// console limits failed sign-ins per address.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Peer(pub SocketAddr);

/// The connection is closed without an answer (an injected fault): hyper closes a
/// connection whose service fails, writing nothing.
#[derive(Debug)]
struct NoAnswer;

impl std::fmt::Display for NoAnswer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("closed without an answer (injected fault)")
    }
}

impl std::error::Error for NoAnswer {}

async fn handle(
    front: Arc<Front>,
    req: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, NoAnswer> {
    let start = Instant::now();
    let endpoint = routes::Endpoint::parse(req.uri().path());
    let fault = endpoint
        .fault_target()
        .and_then(|(tenant, label)| front.app.draw_fault(tenant, label));
    let resp = match fault {
        None => Some(routes::route(&front, &endpoint, req).await),
        Some(f) => inject(&front, &endpoint, req, f).await,
    };
    let outcome = resp
        .as_ref()
        .map_or("no_answer", |r| r.reply.outcome.as_str());
    let app = &front.app;
    app.metrics
        .observe(endpoint.label(), outcome, start.elapsed());
    // Per tenant for the console's overview; only configured tenants, so a client cannot
    // grow the counts with made-up names.
    if let Some((tenant, label)) = endpoint
        .fault_target()
        .filter(|(t, _)| front.tenants.contains_key(*t))
    {
        app.metrics
            .observe_tenant(tenant, label, outcome, app.clock.now_ms());
    }
    resp.map(Out::into_response).ok_or(NoAnswer)
}

/// Enact an injected fault (`app::chaos`) around a request; `None`: close the connection
/// without an answer. A request that is not served has its body read (within the limits)
/// first, so the client sees the connection end rather than a reset.
async fn inject(
    front: &Front,
    endpoint: &routes::Endpoint,
    req: Request<Incoming>,
    f: Injected,
) -> Option<Out> {
    tokio::time::sleep(f.delay).await;
    match f.kind {
        None => Some(routes::route(front, endpoint, req).await),
        Some(Kind::Error(status)) => {
            drain(&front.app, req).await;
            let e = ApiError::new(
                status,
                "INJECTED_FAULT",
                "an injected fault (admin API injected-faults): retry",
            );
            Some(routes::err(e))
        }
        Some(Kind::Timeout(hold)) => {
            drain(&front.app, req).await;
            tokio::time::sleep(hold).await;
            None
        }
        Some(Kind::Drop) => {
            drain(&front.app, req).await;
            None
        }
        Some(Kind::Forget) => {
            let served = routes::route(front, endpoint, req).await;
            tracing::debug!(outcome = %served.reply.outcome, "answer forgotten (injected fault)");
            None
        }
    }
}

/// Read and discard a request's body within the size and time limits.
async fn drain(app: &App, req: Request<Incoming>) {
    use http_body_util::{BodyExt, Limited};
    let body = Limited::new(req.into_body(), app.config.server.max_body_bytes);
    let _ = tokio::time::timeout(app.config.server.body_read_timeout, body.collect()).await;
}

/// A reply plus the headers some statuses need.
pub(crate) struct Out {
    pub reply: Reply,
    pub content_type: &'static str,
    pub allow: Option<&'static str>,
    pub www_authenticate: bool,
    /// More headers (the console's cookies, redirects and security headers).
    pub extra: Vec<(&'static str, String)>,
}

impl Out {
    fn from(reply: Reply) -> Out {
        Out {
            reply,
            content_type: "application/json",
            allow: None,
            www_authenticate: false,
            extra: Vec::new(),
        }
    }

    /// The response, built without a fallible builder: headers are static values, and a
    /// status hyper cannot send (outside 100-999) becomes a 500 with a JSON error body,
    /// never an empty 200.
    fn into_response(self) -> Response<Full<Bytes>> {
        use hyper::header::{HeaderValue, ALLOW, CONTENT_TYPE, RETRY_AFTER, WWW_AUTHENTICATE};
        let Ok(status) = hyper::StatusCode::from_u16(self.reply.status) else {
            let mut r = Response::new(Full::new(Bytes::from_static(
                br#"{"ok":false,"error":"INTERNAL","message":"the service built an answer it cannot send"}"#,
            )));
            *r.status_mut() = hyper::StatusCode::INTERNAL_SERVER_ERROR;
            r.headers_mut()
                .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
            return r;
        };
        let mut r = Response::new(Full::new(Bytes::from(self.reply.body)));
        *r.status_mut() = status;
        let h = r.headers_mut();
        h.insert(CONTENT_TYPE, HeaderValue::from_static(self.content_type));
        if let Some(a) = self.allow {
            h.insert(ALLOW, HeaderValue::from_static(a));
        }
        if self.www_authenticate {
            h.insert(
                WWW_AUTHENTICATE,
                HeaderValue::from_static("Basic realm=\"karma-provider\""),
            );
        }
        for (name, value) in self.extra {
            // Our own names and values; one that is not a valid header value is dropped.
            if let Ok(v) = HeaderValue::from_str(&value) {
                h.append(hyper::header::HeaderName::from_static(name), v);
            }
        }
        // A default for our 503s and 429s; an answer that says how long (the console's
        // sign-in limit) keeps its own.
        if (self.reply.status == 503 || self.reply.status == 429) && !h.contains_key(RETRY_AFTER) {
            h.insert(RETRY_AFTER, HeaderValue::from_static("1"));
        }
        r
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn out(status: u16) -> Out {
        Out::from(Reply {
            status,
            body: b"{}".to_vec(),
            outcome: "ok".into(),
        })
    }

    #[test]
    fn an_unsendable_status_is_a_500_with_a_json_body_never_an_empty_200() {
        for bad in [0, 42, 1000, u16::MAX] {
            let r = out(bad).into_response();
            assert_eq!(r.status(), 500);
            assert_eq!(r.headers()[hyper::header::CONTENT_TYPE], "application/json");
            let body = futures_body(r);
            let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
            assert_eq!(
                (v["ok"].clone(), v["error"].clone()),
                (serde_json::json!(false), serde_json::json!("INTERNAL"))
            );
        }
        let mut ok = out(503);
        ok.allow = Some("GET");
        let r = ok.into_response();
        assert_eq!(r.status(), 503);
        assert_eq!(r.headers()[hyper::header::RETRY_AFTER], "1");
        assert_eq!(r.headers()[hyper::header::ALLOW], "GET");
    }

    fn futures_body(r: Response<Full<Bytes>>) -> Bytes {
        use http_body_util::BodyExt;
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        rt.block_on(r.into_body().collect()).unwrap().to_bytes()
    }
}
