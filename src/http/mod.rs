//! The hyper server, kept thin: accept connections (with a cap), apply limits (header
//! size and read time, body size and read time), route, authenticate, parse, hand the
//! decision to a store job, and turn its [`Reply`] into bytes. Drains in-flight requests
//! and closes the store on shutdown.

mod auth;
mod lowlevel;
mod routes;

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
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

use crate::clock::Clock;
use crate::config::Config;
use crate::metrics::Metrics;
use crate::service::{Reply, State};
use crate::store::{Store, StoreError, StoreOptions};

pub use auth::TenantAuth;

/// Everything a request handler needs.
pub struct App {
    pub config: Config,
    pub store: Store<State>,
    pub clock: Clock,
    pub metrics: Metrics,
    pub tenants: HashMap<String, TenantAuth>,
    pub admin_digest: Option<[u8; 32]>,
    pub shutting_down: AtomicBool,
    /// Wake-up per (tenant, route) for the onward-delivery tasks.
    pub route_wake: HashMap<(String, String), Arc<tokio::sync::Notify>>,
    /// Stops the onward-delivery tasks.
    pub cancel: tokio_util::sync::CancellationToken,
    /// Vendor rules by (tenant, campaign); `None` campaign: the tenant's.
    pub rules: HashMap<(String, Option<String>), Arc<dyn crate::rules::VoucherRules>>,
    /// Rules given by an embedding program, for every campaign without HTTP rules.
    pub embedded_rules: Option<Arc<dyn crate::rules::VoucherRules>>,
    /// Test-only fault injection (see [`crate::faults`]).
    pub faults: Arc<crate::faults::Faults>,
}

impl App {
    /// The rules that decide checks of `campaign`, if any.
    pub fn rules_for(
        &self,
        tenant: &str,
        campaign: &str,
    ) -> Option<Arc<dyn crate::rules::VoucherRules>> {
        self.rules
            .get(&(tenant.to_owned(), Some(campaign.to_owned())))
            .or_else(|| self.rules.get(&(tenant.to_owned(), None)))
            .cloned()
            .or_else(|| self.embedded_rules.clone())
    }

    /// Tell a route's dispatcher that its queue has work.
    pub fn wake_route(&self, tenant: &str, route: &str) {
        if let Some(n) = self.route_wake.get(&(tenant.to_owned(), route.to_owned())) {
            n.notify_one();
        }
    }
}

/// A running server: its address, and a handle to stop it.
pub struct Server {
    pub addr: SocketAddr,
    pub app: Arc<App>,
    stop_tx: Option<oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
}

#[derive(Debug)]
pub enum StartError {
    Store(StoreError),
    Bind(String),
}

impl std::fmt::Display for StartError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StartError::Store(e) => write!(f, "{e}"),
            StartError::Bind(e) => write!(f, "{e}"),
        }
    }
}

impl std::error::Error for StartError {}

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
        let mut rules: HashMap<(String, Option<String>), Arc<dyn crate::rules::VoucherRules>> =
            HashMap::new();
        for t in &config.tenants {
            let make = |r: &crate::config::RulesConfig| -> Result<Arc<dyn crate::rules::VoucherRules>, StartError> {
                let secret = crate::webhook::secret_bytes(&crate::webhook::Scheme::StandardWebhooks, r.secret.expose()).unwrap_or_else(|_| r.secret.expose().as_bytes().to_vec());
                Ok(Arc::new(crate::rules::HttpRules::new(r.url.clone(), secret, r.timeout).map_err(StartError::Bind)?))
            };
            if let Some(r) = &t.rules {
                rules.insert((t.id.clone(), None), make(r)?);
            }
            for (c, r) in &t.campaign_rules {
                rules.insert((t.id.clone(), Some(c.clone())), make(r)?);
            }
        }
        let metrics = Metrics::default();
        let gauge = metrics.gauges.clone();
        let opts = StoreOptions {
            path: config.storage.path.clone(),
            cache_capacity_bytes: config.storage.cache_capacity_mb * 1024 * 1024,
        };
        let cfg2 = config.clone();
        let store = tokio::task::spawn_blocking(move || {
            Store::open(&opts, move |txn| State::load(&cfg2, txn, gauge))
        })
        .await
        .map_err(|e| StartError::Store(StoreError::Io(e.to_string())))?
        .map_err(StartError::Store)?;
        let listener = TcpListener::bind(&config.server.listen)
            .await
            .map_err(|e| {
                StartError::Bind(format!("cannot listen on {}: {e}", config.server.listen))
            })?;
        let addr = listener
            .local_addr()
            .map_err(|e| StartError::Bind(e.to_string()))?;
        let tenants = config
            .tenants
            .iter()
            .map(|t| (t.id.clone(), TenantAuth::from_config(&t.auth)))
            .collect();
        let admin_digest = config
            .admin
            .token
            .as_ref()
            .map(|t| auth::admin_digest(t.expose()));
        let mut route_wake = HashMap::new();
        let mut webhook_routes = Vec::new();
        for t in &config.tenants {
            for r in t.webhooks.iter().flat_map(|w| w.routes.iter()) {
                let n = Arc::new(tokio::sync::Notify::new());
                route_wake.insert((t.id.clone(), r.name.clone()), n.clone());
                webhook_routes.push((t.id.clone(), r.clone(), n));
            }
        }
        // Code index files missing or older than the store are rebuilt in the background.
        for t in &config.tenants {
            store.refresh_code_index(
                &t.id,
                crate::service::keys::bulk_code_prefix(&t.id),
                crate::service::keys::bulk_generation(&t.id),
            );
        }
        let app = Arc::new(App {
            config,
            store,
            clock,
            metrics,
            tenants,
            admin_digest,
            shutting_down: AtomicBool::new(false),
            route_wake,
            cancel: tokio_util::sync::CancellationToken::new(),
            rules,
            embedded_rules,
            faults: Arc::default(),
        });
        let janitors: Vec<_> = app
            .config
            .tenants
            .iter()
            .filter_map(|t| t.webhooks.as_ref().map(|w| (t.id.clone(), w.retention_ms)))
            .map(|(t, r)| {
                tokio::spawn(crate::dispatch::run_janitor(
                    app.clone(),
                    t,
                    r,
                    app.cancel.clone(),
                ))
            })
            .collect();
        let dispatchers: Vec<_> = janitors
            .into_iter()
            .chain(
                webhook_routes
                    .into_iter()
                    .map(|(t, r, n)| {
                        tokio::spawn(crate::dispatch::run_route(
                            app.clone(),
                            t,
                            r,
                            n,
                            app.cancel.clone(),
                        ))
                    })
                    .collect::<Vec<_>>(),
            )
            .chain(crate::sources::poll::spawn_all(&app))
            .collect();
        let (stop_tx, stop_rx) = oneshot::channel();
        let task = tokio::spawn(serve(app.clone(), listener, stop_rx, dispatchers));
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

async fn serve(
    app: Arc<App>,
    listener: TcpListener,
    mut stop: oneshot::Receiver<()>,
    dispatchers: Vec<tokio::task::JoinHandle<()>>,
) {
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
        let (stream, _peer) = tokio::select! {
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
        let app2 = app.clone();
        let io = lowlevel::JsonErrors::new(stream, app.config.server.max_header_bytes.max(8192));
        let conn = builder.serve_connection(
            TokioIo::new(io),
            service_fn(move |req| handle(app2.clone(), req)),
        );
        let conn = graceful.watch(conn);
        tokio::spawn(async move {
            let _ = conn.await;
            drop(permit);
        });
    }
    app.shutting_down.store(true, Ordering::SeqCst);
    drop(listener);
    tokio::select! {
        _ = graceful.shutdown() => {}
        _ = tokio::time::sleep(app.config.server.shutdown_grace) => {
            tracing::warn!("shutdown grace period over; closing the remaining connections");
        }
    }
    app.cancel.cancel();
    for d in dispatchers {
        let _ = d.await;
    }
    app.store.close().await;
    tracing::info!("store flushed and closed");
}

async fn handle(
    app: Arc<App>,
    req: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let start = Instant::now();
    let (endpoint, resp) = routes::route(&app, req).await;
    app.metrics
        .observe(endpoint, &resp.reply.outcome, start.elapsed());
    Ok(resp.into_response())
}

/// A reply plus the headers some statuses need.
pub(crate) struct Out {
    pub reply: Reply,
    pub content_type: &'static str,
    pub allow: Option<&'static str>,
    pub www_authenticate: bool,
}

impl Out {
    fn from(reply: Reply) -> Out {
        Out {
            reply,
            content_type: "application/json",
            allow: None,
            www_authenticate: false,
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
        if self.reply.status == 503 || self.reply.status == 429 {
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
