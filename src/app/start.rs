//! Start-up and shutdown of the application: vendor rules from the config, the store and
//! the writer's state, the code-index refresh, the background tasks (one onward-delivery
//! task per webhook route, one janitor per tenant with webhooks, one poller per order
//! source), and their orderly end.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use super::{App, Rules};
use crate::clock::Clock;
use crate::config::Engine;
use crate::config::{Config, RulesConfig};
use crate::dispatch;
use crate::metrics::Metrics;
use crate::service::State;
use crate::sources::poll;
use crate::store::{PgOptions, Store, StoreError, StoreOptions};

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

/// The HTTP rules client of one `rules` table.
fn http_rules(r: &RulesConfig) -> Result<Rules, StartError> {
    let secret =
        crate::webhook::signing_key(&crate::webhook::Scheme::StandardWebhooks, r.secret.expose());
    Ok(Arc::new(
        crate::rules::HttpRules::new(r.url.clone(), secret, r.timeout).map_err(StartError::Bind)?,
    ))
}

/// Vendor rules by (tenant, campaign); `None` campaign: the tenant's.
fn rules_of(config: &Config) -> Result<HashMap<(String, Option<String>), Rules>, StartError> {
    let mut rules = HashMap::new();
    for t in &config.tenants {
        if let Some(r) = &t.rules {
            rules.insert((t.id.clone(), None), http_rules(r)?);
        }
        for (c, r) in &t.campaign_rules {
            rules.insert((t.id.clone(), Some(c.clone())), http_rules(r)?);
        }
    }
    Ok(rules)
}

/// A name for this process among the replicas on one database: the host's name (a pod's
/// name on Kubernetes) and 8 random bytes, so a restarted process is a new owner.
fn replica_name() -> String {
    let host = std::env::var("HOSTNAME").unwrap_or_else(|_| "replica".into());
    // Not a secret, only unique: without the OS's random source, the process id and time.
    let token = crate::codegen::os_token().unwrap_or_else(|| {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        format!("{:08x}{nanos:024x}", std::process::id())
    });
    format!("{host}-{}", token.get(..16).unwrap_or(&token))
}

/// Open the configured engine and build the writer's state from what it holds.
async fn open_store(
    config: &Config,
    published: (Arc<crate::metrics::Gauges>, Arc<crate::service::Programs>),
) -> Result<Store<State>, StartError> {
    let cfg2 = config.clone();
    let opened = match &config.storage.engine {
        Engine::Sled => {
            let opts = StoreOptions {
                path: config.storage.path.clone(),
                cache_capacity_bytes: config.storage.cache_capacity_mb * 1024 * 1024,
            };
            tokio::task::spawn_blocking(move || {
                Store::open(&opts, move |txn| State::load(&cfg2, txn, published))
            })
            .await
        }
        Engine::Postgres(pg) => {
            let opts = PgOptions {
                url: pg.url.expose().to_owned(),
                connect_timeout: pg.connect_timeout,
                query_timeout: pg.query_timeout,
            };
            tokio::task::spawn_blocking(move || {
                Store::open_pg(opts, move |txn| State::load(&cfg2, txn, published.clone()))
            })
            .await
        }
    };
    opened
        .map_err(|e| StartError::Store(StoreError::Io(e.to_string())))?
        .map_err(StartError::Store)
}

impl App {
    /// Open the store and build the writer's state from it; start the background rebuild
    /// of stale code indexes. The delivery tasks start with [`App::start_background`].
    pub async fn open(
        config: Config,
        clock: Clock,
        embedded_rules: Option<Rules>,
    ) -> Result<Arc<App>, StartError> {
        let rules = rules_of(&config)?;
        let metrics = Arc::new(Metrics::default());
        let gauge = metrics.gauges.clone();
        let programs = Arc::new(crate::service::Programs::default());
        let store = open_store(&config, (gauge, programs.clone())).await?;
        // Older record schemas are migrated before anything else runs (a no-op on a
        // current store).
        let (now, slice) = (clock.now_ms(), config.storage.job_slice_records);
        crate::service::migrate::run(&store, now, slice)
            .await
            .map_err(StartError::Store)?;
        let route_wake = config
            .tenants
            .iter()
            .flat_map(|t| {
                t.webhooks
                    .iter()
                    .flat_map(|w| w.routes.iter())
                    .map(|r| (t.id.clone(), r.name.clone()))
            })
            .map(|k| (k, Arc::new(Notify::new())))
            .collect();
        let app = App {
            config,
            clock,
            metrics,
            faults: Arc::default(),
            chaos: Default::default(),
            store: Arc::new(store),
            programs,
            draining: AtomicBool::new(false),
            route_wake,
            cancel: CancellationToken::new(),
            tasks: Mutex::new(Vec::new()),
            rules,
            embedded_rules,
        };
        // Code index files missing or older than the store are rebuilt in the background.
        for t in &app.config.tenants {
            app.refresh_code_index(&t.id);
        }
        Ok(Arc::new(app))
    }

    /// After bulk codes were written (or at start): rebuild the tenant's code index in the
    /// background if it is missing or stale (until then new codes are found in the store).
    pub(super) fn refresh_code_index(&self, tenant: &str) {
        use crate::service::keys;
        self.store.refresh_code_index(
            tenant,
            keys::bulk_code_prefix(tenant),
            keys::bulk_generation(tenant),
            crate::service::codes::index_entries,
        );
    }

    /// Start one janitor per tenant with webhooks, one delivery task per route and one
    /// poller per order source.
    pub fn start_background(&self) {
        let ctx = Arc::new(dispatch::Ctx {
            store: self.store.clone(),
            clock: self.clock.clone(),
            metrics: self.metrics.clone(),
            slice: self.config.storage.job_slice_records,
            replica: match self.config.storage.engine {
                Engine::Sled => None,
                Engine::Postgres(_) => Some(replica_name()),
            },
        });
        let mut tasks = self.tasks.lock().unwrap_or_else(|e| e.into_inner());
        for t in &self.config.tenants {
            let Some(w) = &t.webhooks else { continue };
            tasks.push(tokio::spawn(dispatch::run_janitor(
                ctx.clone(),
                t.id.clone(),
                w.retention_ms,
                self.cancel.clone(),
            )));
        }
        for t in &self.config.tenants {
            for r in t.webhooks.iter().flat_map(|w| w.routes.iter()) {
                let Some(wake) = self.route_wake.get(&(t.id.clone(), r.name.clone())) else {
                    continue;
                };
                tasks.push(tokio::spawn(dispatch::run_route(
                    ctx.clone(),
                    t.id.clone(),
                    r.clone(),
                    wake.clone(),
                    self.cancel.clone(),
                )));
            }
        }
        self.start_pollers(&mut tasks);
    }

    /// One poller per order source, given what it needs (not the `App`).
    fn start_pollers(&self, tasks: &mut Vec<tokio::task::JoinHandle<()>>) {
        let ctx = Arc::new(poll::Ctx {
            store: self.store.clone(),
            clock: self.clock.clone(),
            metrics: self.metrics.clone(),
        });
        for t in &self.config.tenants {
            for s in &t.sources {
                tasks.push(tokio::spawn(poll::run(
                    ctx.clone(),
                    t.id.clone(),
                    s.clone(),
                    self.cancel.clone(),
                )));
            }
        }
    }

    /// Stop answering ready (`/readyz`): the server is draining.
    pub fn mark_draining(&self) {
        self.draining.store(true, Ordering::SeqCst);
    }

    /// Stop the background tasks, wait for them, then flush and close the store.
    pub async fn close(&self) {
        self.cancel.cancel();
        let tasks = std::mem::take(&mut *self.tasks.lock().unwrap_or_else(|e| e.into_inner()));
        for t in tasks {
            let _ = t.await;
        }
        self.store.close().await;
    }
}
