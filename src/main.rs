//! The `karma-provider` command line: parses arguments and hands over to the library.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};
use karma_provider::{Clock, Config, Server};

/// sled allocates and frees a node per update; mimalloc halves that cost against glibc's
/// allocator (measured: BENCHMARKS.md).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "karma-provider",
    version,
    about = "Karma custom voucher and loyalty provider"
)]
struct Cli {
    /// Log format on stderr.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Pretty)]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    Json,
    Pretty,
}

#[derive(Subcommand)]
enum WebhookAction {
    /// Print `Name: value` header lines that make FILE a valid delivery.
    Sign {
        #[arg(long)]
        tenant: String,
        /// The config whose `[tenants.webhooks]` names the scheme and secrets.
        #[arg(long, short)]
        config: Option<PathBuf>,
        /// The envelope (JSON); its `id` is the delivery id.
        file: PathBuf,
    },
    /// Sign FILE and POST it to URL (a receiver URL, or a base URL to which
    /// `/v1/{tenant}/webhooks` is added); prints the answer.
    Send {
        #[arg(long)]
        url: String,
        #[arg(long)]
        tenant: String,
        #[arg(long, short)]
        config: Option<PathBuf>,
        file: PathBuf,
    },
}

/// Which campaign a `codes` command works on, and the config naming its data directory.
#[derive(clap::Args)]
struct CodesTarget {
    #[arg(long, short)]
    config: Option<PathBuf>,
    #[arg(long)]
    tenant: String,
    #[arg(long)]
    campaign: String,
}

#[derive(Subcommand)]
enum CodesAction {
    /// Import FILE.csv (`code[,valid_until][,assigned_user]`) into a campaign.
    Import {
        #[command(flatten)]
        to: CodesTarget,
        file: PathBuf,
        /// Rows read, grouped and written per pass: each pass rewrites every code bucket it
        /// touches, so larger passes write less in all (and hold more rows in memory).
        #[arg(long, default_value_t = karma_provider::codes_cli::IMPORT_BATCH,
              value_parser = clap::value_parser!(u64).range(1_000..=10_000_000))]
        batch: u64,
    },
    /// Generate COUNT new codes from a pattern (# digit 2-9, ? letter without I/L/O), drawn from
    /// the OS random source; at most 1 % of the pattern's space is ever issued (README).
    Generate {
        #[command(flatten)]
        to: CodesTarget,
        #[arg(long)]
        pattern: String,
        #[arg(long)]
        count: u64,
        /// Where the new codes are written (CSV).
        #[arg(long)]
        out: PathBuf,
    },
    /// Export a campaign's bulk codes with their state as CSV.
    Export {
        #[command(flatten)]
        to: CodesTarget,
        #[arg(long)]
        out: Option<PathBuf>,
    },
}

#[derive(Subcommand)]
enum Command {
    /// Run the HTTP service (the embedded demo config when no --config is given).
    Serve {
        /// A TOML config file; see deploy/config.example.toml.
        #[arg(long, short)]
        config: Option<PathBuf>,
    },
    /// Call the admin API of a running server (operator tools: campaigns, holds, members,
    /// reversals, adjustments, imports). PATH is relative to /admin/v1/, e.g.
    /// `admin POST tenants/demo/loyalty/1/reversals --data '{"id":"r1","purchaseId":"p1"}'`.
    Admin(AdminArgs),
    /// Produce signed webhook deliveries by hand (QA): `sign` prints the headers a valid
    /// delivery of FILE needs for the tenant's scheme; `send` signs and POSTs it.
    Webhook {
        #[command(subcommand)]
        action: WebhookAction,
    },
    /// Benchmark: start this service and a bare-hyper yardstick, drive the same flows
    /// against both, print a table (and JSON). Run it from a release build.
    Bench(BenchArgs),
    /// Back up a running server: all state as JSON lines (admin API), read page by page; a
    /// consistent snapshot when nothing is written meanwhile (README "Backup and restore").
    Export(ExportArgs),
    /// Restore an export into the config's storage, with the servers stopped: an empty sled
    /// data directory, or a PostgreSQL database that holds no records (moves between engines).
    Import {
        #[arg(long, short)]
        config: Option<PathBuf>,
        file: PathBuf,
    },
    /// Run contract fixtures against a provider (this one or any other). Exit 0: all
    /// passed; 1: some failed; 2: the run could not happen (bad fixture, unreachable target).
    Replay(ReplayArgs),
    /// Karma's side of orders (files or generated) against a provider: lookup/enroll,
    /// check, commit/reactivate, award, account, with Karma's retries; every contract
    /// violation reported. Exit 0: none; 1: violations; 2: the run could not happen.
    Simulate(karma_provider::simulate::cli::SimulateArgs),
    /// Exit 0 when URL answers 2xx (for container health checks; no shell or curl needed).
    Healthcheck {
        #[arg(long, default_value = "http://127.0.0.1:8080/readyz")]
        url: String,
    },
    /// The benchmark's yardstick server (started by `bench`).
    #[command(hide = true)]
    BenchYardstick,
    /// Bulk codes on a stopped server's data dir (millions, streaming). Online, use the
    /// admin API: POST/GET /admin/v1/tenants/{t}/campaigns/{c}/codes[/generate].
    Codes {
        #[command(subcommand)]
        action: CodesAction,
    },
    /// What to enter in Karma to switch a location to this provider: the nine absolute URLs
    /// and the auth (where its secret is kept, never the secret), each URL checked against
    /// Karma's rules (https only; no name resolving to a loopback, private, link-local or
    /// unspecified address or an IPv4-mapped form of one), and with --admin-url whether the
    /// tenant is safe to switch now. Exit 0: all good; 1: one line per problem on stderr.
    KarmaSetup(SetupArgs),
    /// Check a config file and exit (non-zero with the key at fault when invalid).
    CheckConfig {
        #[arg(long, short)]
        config: Option<PathBuf>,
    },
}

// The arguments of the larger subcommands (their help text is the variant's doc comment).

#[derive(clap::Args)]
struct AdminArgs {
    /// GET, POST or PUT.
    method: String,
    path: String,
    /// Base URL of the server.
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    url: String,
    /// Environment variable holding the admin token.
    #[arg(long, default_value = "KP_ADMIN_TOKEN")]
    token_env: String,
    /// JSON body.
    #[arg(long, conflicts_with = "csv")]
    data: Option<String>,
    /// A CSV file to send as the body (member import).
    #[arg(long)]
    csv: Option<PathBuf>,
}

#[derive(clap::Args)]
struct BenchArgs {
    /// Scenarios (default: every flow): check-commit, check-reactivate, award, award-hot,
    /// enroll, redeem, reads (the three in turn), account, rewards, lookup, webhook; and
    /// check-small, check-bulk (with --bulk-codes).
    #[arg(long, value_delimiter = ',', default_value = karma_provider::bench::DEFAULT_SCENARIOS)]
    scenarios: Vec<String>,
    #[arg(long, default_value_t = 32)]
    connections: usize,
    /// Seconds per run.
    #[arg(long, default_value_t = 10)]
    seconds: u64,
    /// Length of each run as a duration (`300ms`, `20s`), instead of --seconds.
    #[arg(long, conflicts_with = "seconds", value_parser = karma_provider::config::parse_duration)]
    duration: Option<std::time::Duration>,
    /// Import this many members (each with a balance) through the admin API first; award,
    /// redeem and the reads then spread over them (large-state runs).
    #[arg(long)]
    members: Option<u64>,
    /// Arrival rate of the open-loop webhook run.
    #[arg(long, default_value_t = 100)]
    webhook_rate: u64,
    /// Also write the results as JSON here.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Import this many unique codes first, offline with `codes import`'s path before the
    /// service starts: the check-bulk campaign, and a large store for large-state runs.
    #[arg(long)]
    bulk_codes: Option<u64>,
    /// Arrival rate of the open-loop check-small and check-bulk runs.
    #[arg(long, default_value_t = 2000)]
    check_rate: u64,
    /// The service's `storage.cache_capacity_mb` for the run.
    #[arg(long, default_value_t = karma_provider::config::DEFAULT_CACHE_MB)]
    cache_mb: u64,
    /// Split each run into this many slices and go through the scenarios once per
    /// slice, in reverse order every other time (ABBA): scenarios measured on the same
    /// service then see the same store growth and machine drift.
    #[arg(long, default_value_t = 1)]
    rounds: u32,
    /// Run the service on the PostgreSQL engine: a fresh database made for the run on the
    /// server this URL names (its own database is only connected to), dropped afterwards.
    #[arg(long, env = "KP_BENCH_DATABASE_URL")]
    database_url: Option<String>,
    /// Service processes sharing the database (PostgreSQL only); each connection of a run
    /// talks to one of them, in turn.
    #[arg(long, default_value_t = 1)]
    replicas: usize,
}

#[derive(clap::Args)]
struct ExportArgs {
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    url: String,
    #[arg(long, default_value = "KP_ADMIN_TOKEN")]
    token_env: String,
    /// Write here instead of stdout.
    #[arg(long)]
    out: Option<PathBuf>,
}

#[derive(clap::Args)]
struct ReplayArgs {
    /// Fixture files or directories (default: fixtures/).
    paths: Vec<PathBuf>,
    /// Base URL such as http://host:port/v1/acme (calls map to …/voucher/check etc.).
    #[arg(long, conflicts_with = "endpoints")]
    target: Option<String>,
    /// JSON or TOML map from each call (voucher.check … webhook) to an absolute URL.
    #[arg(long)]
    endpoints: Option<PathBuf>,
    /// basic:USER:PASS or header:NAME:VALUE
    #[arg(long)]
    auth: Option<String>,
    /// Provider-state endpoint (Pact style); POSTed before and after each scenario.
    #[arg(long)]
    state_url: Option<String>,
    /// NAME:VALUE header for the state endpoint (repeatable), e.g. "Authorization:Bearer …".
    #[arg(long)]
    state_header: Vec<String>,
    /// Sign webhook fixtures with this secret at send time.
    #[arg(long)]
    webhook_secret: Option<String>,
    /// hmac-sha256-hex (default), stripe or standard-webhooks.
    #[arg(long, default_value = "hmac-sha256-hex")]
    webhook_scheme: String,
    /// Signature header for hmac-sha256-hex / stripe.
    #[arg(long)]
    webhook_header: Option<String>,
    /// Only scenarios whose name matches this glob.
    #[arg(long)]
    filter: Option<String>,
    #[arg(long)]
    fail_fast: bool,
    /// Re-run only what failed last time.
    #[arg(long)]
    last_failed: bool,
    /// Where the names of failed scenarios are kept between runs.
    #[arg(long, default_value = ".karma-replay-last-failed")]
    last_failed_file: PathBuf,
    #[arg(long)]
    junit: Option<PathBuf>,
    #[arg(long)]
    json: Option<PathBuf>,
    /// Skip scenarios tagged `decision` (our decisions where Karma's contract is silent).
    #[arg(long)]
    contract_only: bool,
    /// PEM file of CA certificates to trust besides the public roots (HTTPS targets
    /// behind a private CA).
    #[arg(long)]
    ca_file: Option<PathBuf>,
    /// Latency budget in ms of every step without its own `budgetMs`.
    #[arg(long)]
    budget_ms: Option<u64>,
}

#[derive(clap::Args)]
struct SetupArgs {
    /// The tenant id (the `{tenant}` in /v1/{tenant}/…).
    #[arg(long)]
    tenant: String,
    /// This service's public root, e.g. https://provider.example.com.
    #[arg(long)]
    base_url: String,
    /// The config holding the tenant (for the auth lines).
    #[arg(long, short)]
    config: Option<PathBuf>,
    /// The admin API's base URL, to check switch readiness.
    #[arg(long)]
    admin_url: Option<String>,
    /// Environment variable holding the admin token.
    #[arg(long, default_value = "KP_ADMIN_TOKEN")]
    admin_token_env: String,
}

/// Print a banner line; a closed stdout (a supervisor, a test that stopped reading) must
/// never take the service down, so write errors are ignored.
macro_rules! say {
    ($($arg:tt)*) => {{
        use std::io::Write;
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, $($arg)*);
        let _ = out.flush();
    }};
}

fn init_logs(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("KP_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let b = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Json => b.json().init(),
        LogFormat::Pretty => b.init(),
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logs(cli.log_format);
    match cli.command {
        Command::Serve { config } => serve_cmd(config),
        Command::CheckConfig { config } => check_config(config),
        Command::Admin(args) => admin(args),
        Command::Webhook { action } => webhook_cli(action),
        Command::Bench(args) => bench(args),
        Command::BenchYardstick => bench_yardstick(),
        Command::Export(args) => export(args),
        Command::Import { config, file } => import(config, file),
        Command::Replay(args) => replay(args),
        Command::Simulate(args) => karma_provider::simulate::cli::main(args),
        Command::Healthcheck { url } => healthcheck(url),
        Command::Codes { action } => codes_cli(action),
        Command::KarmaSetup(args) => karma_setup(args),
    }
}

/// `serve`: load the config, then run the server until SIGTERM or Ctrl-C.
fn serve_cmd(config: Option<PathBuf>) -> ExitCode {
    let Some(config) = load_config(config.as_deref()) else {
        return ExitCode::from(2);
    };
    let Some(rt) = runtime(true) else {
        return ExitCode::FAILURE;
    };
    rt.block_on(serve(config))
}

/// `check-config`: exit 0 with a line when the config loads, 2 naming the key when not.
fn check_config(config: Option<PathBuf>) -> ExitCode {
    match Config::load(config.as_deref()) {
        Ok(c) => {
            println!("{}: ok ({} tenant(s))", c.origin, c.tenants.len());
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("config error: {e}");
            ExitCode::from(2)
        }
    }
}

/// The admin token from the environment variable `token_env`, or the error printed.
fn admin_token(token_env: &str) -> Option<String> {
    std::env::var(token_env)
        .map_err(|_| eprintln!("set {token_env} to the admin token"))
        .ok()
}

/// `admin METHOD PATH`: one admin API call; prints the answer's body.
fn admin(a: AdminArgs) -> ExitCode {
    let Some(token) = admin_token(&a.token_env) else {
        return ExitCode::from(2);
    };
    let body = match (a.data, a.csv) {
        (Some(d), _) => Some((d.into_bytes(), "application/json")),
        (None, Some(p)) => match std::fs::read(&p) {
            Ok(b) => Some((b, "text/csv")),
            Err(e) => {
                eprintln!("cannot read {}: {e}", p.display());
                return ExitCode::from(2);
            }
        },
        (None, None) => None,
    };
    let Some(rt) = runtime(false) else {
        return ExitCode::FAILURE;
    };
    let answer = rt.block_on(karma_provider::client::admin_request(
        &a.url, &token, &a.method, &a.path, body,
    ));
    print_answer(answer, |_, body| say!("{body}"))
}

/// Print an operator call's answer with `print(status, body)`: exit 0 on a 2xx, 1 on
/// another status, and failure (the error on stderr) when there was no answer.
fn print_answer(answer: Result<(u16, Vec<u8>), String>, print: impl Fn(u16, &str)) -> ExitCode {
    match answer {
        Ok((status, bytes)) => {
            print(status, &String::from_utf8_lossy(&bytes));
            if (200..300).contains(&status) {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            }
        }
        Err(e) => {
            eprintln!("{e}");
            ExitCode::FAILURE
        }
    }
}

/// `export`: the running server's records as JSON lines, to `--out` or stdout.
fn export(a: ExportArgs) -> ExitCode {
    let Some(token) = admin_token(&a.token_env) else {
        return ExitCode::from(2);
    };
    let Some(rt) = runtime(false) else {
        return ExitCode::FAILURE;
    };
    let bytes = match rt.block_on(karma_provider::client::admin_request(
        &a.url, &token, "GET", "export", None,
    )) {
        Ok((200, bytes)) => bytes,
        Ok((status, bytes)) => {
            eprintln!("HTTP {status}: {}", String::from_utf8_lossy(&bytes));
            return ExitCode::FAILURE;
        }
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::FAILURE;
        }
    };
    let written = match &a.out {
        Some(p) => std::fs::write(p, &bytes).map_err(|e| format!("{}: {e}", p.display())),
        None => {
            use std::io::Write;
            std::io::stdout()
                .lock()
                .write_all(&bytes)
                .map_err(|e| e.to_string())
        }
    };
    match written {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("{e}");
            ExitCode::FAILURE
        }
    }
}

/// `import FILE`: restore an export into the config's storage engine: sled's empty data
/// directory, or a PostgreSQL database that holds no records.
fn import(config: Option<PathBuf>, file: PathBuf) -> ExitCode {
    use karma_provider::config::Engine;
    use karma_provider::store;
    let Some(config) = load_config(config.as_deref()) else {
        return ExitCode::from(2);
    };
    let records = match std::fs::read_to_string(&file)
        .map_err(|e| e.to_string())
        .and_then(|t| karma_provider::backup::decode(&t))
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("{}: {e}", file.display());
            return ExitCode::from(2);
        }
    };
    let done = match &config.storage.engine {
        Engine::Sled => {
            let opts = store::StoreOptions {
                path: config.storage.path.clone(),
                cache_capacity_bytes: config.storage.cache_capacity_mb * 1024 * 1024,
            };
            store::import_records(&opts, records).map(|n| (n, opts.path.display().to_string()))
        }
        Engine::Postgres(pg) => {
            let opts = store::PgOptions {
                url: pg.url.expose().to_owned(),
                connect_timeout: pg.connect_timeout,
                query_timeout: pg.query_timeout,
            };
            // Named by where its URL came from: the URL itself may hold a password.
            let at = format!(
                "the PostgreSQL database of {}",
                pg.url.origin().unwrap_or("storage.postgres")
            );
            store::pg::import_records(opts, records).map(|n| (n, at))
        }
    };
    match done {
        Ok((n, at)) => {
            say!("imported {n} records into {at}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("{e}");
            ExitCode::FAILURE
        }
    }
}

/// `replay`: run fixtures; exit 0 all passed, 1 some failed, 2 the run could not happen.
fn replay(a: ReplayArgs) -> ExitCode {
    use karma_provider::replay;
    let fail = |m: String| {
        eprintln!("replay: {m}");
        ExitCode::from(2)
    };
    let opts = match replay_options(a) {
        Ok(o) => o,
        Err(e) => return fail(e),
    };
    let Some(rt) = runtime(false) else {
        return ExitCode::from(2);
    };
    match rt.block_on(replay::run(&opts)) {
        Ok(report) => {
            say!("{}", replay::summary(&report));
            if report.failed == 0 {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            }
        }
        Err(e) => fail(e),
    }
}

/// The replay run the arguments describe; `Err` names the argument at fault.
fn replay_options(a: ReplayArgs) -> Result<karma_provider::replay::ReplayOptions, String> {
    use karma_provider::replay;
    if a.target.is_none() && a.endpoints.is_none() {
        return Err("give --target URL or --endpoints FILE".into());
    }
    let t = replay::target_args(
        a.endpoints.as_deref(),
        a.auth.as_deref(),
        a.ca_file.as_deref(),
        &a.state_header,
    )?;
    let webhook_scheme = karma_provider::webhook::Scheme::parse(
        &a.webhook_scheme,
        a.webhook_header.as_deref(),
        false,
    )
    .map_err(|e| format!("--webhook-scheme: {e}"))?;
    Ok(replay::ReplayOptions {
        paths: if a.paths.is_empty() {
            vec![PathBuf::from("fixtures")]
        } else {
            a.paths
        },
        target: a.target,
        endpoints: t.endpoints,
        auth: t.auth,
        state_url: a.state_url,
        state_headers: t.state_headers,
        webhook_secret: a.webhook_secret,
        webhook_scheme,
        filter: a.filter,
        fail_fast: a.fail_fast,
        last_failed: a.last_failed,
        last_failed_file: a.last_failed_file,
        junit: a.junit,
        json: a.json,
        run_id: None,
        contract_only: a.contract_only,
        extra_roots: t.extra_roots,
        budget_ms: a.budget_ms,
    })
}

/// `healthcheck`: exit 0 when the URL answers 2xx within 3 s.
fn healthcheck(url: String) -> ExitCode {
    let Some(rt) = runtime(false) else {
        return ExitCode::FAILURE;
    };
    match rt.block_on(async {
        tokio::time::timeout(
            std::time::Duration::from_secs(3),
            karma_provider::client::get(&url),
        )
        .await
    }) {
        Ok(Ok((status, _))) if (200..300).contains(&status) => ExitCode::SUCCESS,
        Ok(Ok((status, body))) => {
            eprintln!("{url}: HTTP {status} {}", String::from_utf8_lossy(&body));
            ExitCode::FAILURE
        }
        Ok(Err(e)) => {
            eprintln!("{e}");
            ExitCode::FAILURE
        }
        Err(_) => {
            eprintln!("{url}: no answer within 3s");
            ExitCode::FAILURE
        }
    }
}

/// The benchmark's yardstick server (started by `bench`).
fn bench_yardstick() -> ExitCode {
    let Some(rt) = runtime(true) else {
        return ExitCode::FAILURE;
    };
    match rt.block_on(karma_provider::bench::yardstick::serve()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("{e}");
            ExitCode::FAILURE
        }
    }
}

/// `bench`: check the scenario names, then run them on one load-generator thread.
fn bench(a: BenchArgs) -> ExitCode {
    use karma_provider::bench;
    if let Some(bad) = a
        .scenarios
        .iter()
        .find(|s| !bench::SCENARIOS.contains(&s.as_str()))
    {
        eprintln!(
            "unknown scenario {bad:?}; use {}",
            bench::SCENARIOS.join(", ")
        );
        return ExitCode::from(2);
    }
    // One thread for the load generator; the two servers share the rest.
    let Some(rt) = runtime(false) else {
        return ExitCode::FAILURE;
    };
    let opts = bench::BenchOptions {
        scenarios: a.scenarios,
        connections: a.connections,
        duration: a
            .duration
            .unwrap_or(std::time::Duration::from_secs(a.seconds)),
        webhook_rate: a.webhook_rate,
        json_out: a.json,
        bulk_codes: a.bulk_codes,
        check_rate: a.check_rate,
        cache_mb: a.cache_mb,
        rounds: a.rounds,
        members: a.members,
        database_url: a.database_url,
        replicas: a.replicas,
    };
    match rt.block_on(bench::run(opts)) {
        Ok(_) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("bench failed: {e}");
            ExitCode::FAILURE
        }
    }
}

/// `karma-setup`: print the report; problems go to stderr, one line each.
fn karma_setup(a: SetupArgs) -> ExitCode {
    use karma_provider::setup_cli;
    let config = match a.config {
        Some(p) => match Config::load(Some(&p)) {
            Ok(c) => Some(c),
            Err(e) => {
                eprintln!("problem: config error: {e}: fix the config or leave out --config");
                return ExitCode::from(1);
            }
        },
        None => None,
    };
    let token_env = a.admin_token_env;
    let admin = a.admin_url.map(|u| {
        let token = std::env::var(&token_env)
            .map_err(|_| format!("set {token_env} to the admin token to check switch readiness"));
        (u, token)
    });
    let opts = setup_cli::SetupOptions {
        tenant: a.tenant,
        base_url: a.base_url,
        config,
        admin,
    };
    let Some(rt) = runtime(false) else {
        return ExitCode::FAILURE;
    };
    let report = rt.block_on(setup_cli::run(&opts));
    for l in &report.lines {
        say!("{l}");
    }
    if report.problems.is_empty() {
        say!("All good: enter the URLs and auth above in Karma.");
        return ExitCode::SUCCESS;
    }
    say!("{} problem(s):", report.problems.len());
    for p in &report.problems {
        eprintln!("problem: {p}");
    }
    ExitCode::from(1)
}

/// Sign (and maybe send) an envelope with a tenant's configured scheme and first secret.
fn webhook_cli(action: WebhookAction) -> ExitCode {
    let (tenant, config, file, url) = match action {
        WebhookAction::Sign {
            tenant,
            config,
            file,
        } => (tenant, config, file, None),
        WebhookAction::Send {
            url,
            tenant,
            config,
            file,
        } => (tenant, config, file, Some(url)),
    };
    let Some(config) = load_config(config.as_deref()) else {
        return ExitCode::from(2);
    };
    let Some(wh) = config.tenant(&tenant).and_then(|t| t.webhooks.clone()) else {
        eprintln!(
            "{}: tenant {tenant:?} has no [tenants.webhooks]",
            config.origin
        );
        return ExitCode::from(2);
    };
    let body = match std::fs::read(&file) {
        Ok(b) => b,
        Err(e) => {
            eprintln!("cannot read {}: {e}", file.display());
            return ExitCode::from(2);
        }
    };
    let id = match serde_json::from_slice::<serde_json::Value>(&body)
        .map(|v| karma_provider::webhook::parse_envelope(&v))
    {
        Ok(Ok(env)) => env.id,
        Ok(Err((field, msg))) => {
            eprintln!("{}: the envelope's {field} {msg}", file.display());
            return ExitCode::from(2);
        }
        Err(e) => {
            eprintln!("{}: not JSON: {e}", file.display());
            return ExitCode::from(2);
        }
    };
    let secret = wh.secrets.first().cloned().unwrap_or_default();
    let now = karma_provider::Clock::System.now_ms() / 1000;
    let headers = karma_provider::webhook::sign_headers(&wh.scheme, &secret, &id, now, &body);
    let Some(url) = url else {
        say!("Content-Type: application/json");
        for (k, v) in headers {
            say!("{k}: {v}");
        }
        return ExitCode::SUCCESS;
    };
    let url = if url.trim_end_matches('/').ends_with("/webhooks") {
        url
    } else {
        format!("{}/v1/{tenant}/webhooks", url.trim_end_matches('/'))
    };
    let Some(rt) = runtime(false) else {
        return ExitCode::FAILURE;
    };
    let answer = rt.block_on(karma_provider::client::post(&url, &headers, body));
    print_answer(answer, |status, body| say!("{status} {body}"))
}

fn codes_cli(action: CodesAction) -> ExitCode {
    let (CodesAction::Import { to, .. }
    | CodesAction::Generate { to, .. }
    | CodesAction::Export { to, .. }) = &action;
    let Some(cfg) = load_config(to.config.as_deref()) else {
        return ExitCode::from(2);
    };
    let result = match action {
        CodesAction::Import { to, file, batch } => codes_import(&cfg, &to, &file, batch),
        CodesAction::Generate {
            to,
            pattern,
            count,
            out,
        } => karma_provider::codes_cli::generate_cmd(
            &cfg,
            &to.tenant,
            &to.campaign,
            &pattern,
            count,
            &out,
        )
        .map(|n| {
            say!("generated {n} codes into {}", out.display());
            ExitCode::SUCCESS
        }),
        CodesAction::Export { to, out } => codes_export(&cfg, &to, out.as_deref()),
    };
    result.unwrap_or_else(|e| {
        eprintln!("codes: {e}");
        ExitCode::FAILURE
    })
}

/// `codes import`: the summary line, or every invalid row (the first 100) and exit 1.
fn codes_import(
    cfg: &Config,
    to: &CodesTarget,
    file: &Path,
    batch: u64,
) -> Result<ExitCode, String> {
    let batch = usize::try_from(batch).unwrap_or(karma_provider::codes_cli::IMPORT_BATCH as usize);
    let r = karma_provider::codes_cli::import(cfg, &to.tenant, &to.campaign, file, batch, false)?;
    if r.invalid.is_empty() {
        say!("imported {} codes, {} duplicates, 0 invalid rows in {:.1} s ({:.0} codes/s); store {} MiB; code index {} codes, {} MiB, written in {:.1} s", r.imported, r.duplicates, r.seconds, r.codes_per_second, r.store_bytes >> 20, r.indexed, r.index_bytes >> 20, r.index_seconds);
        return Ok(ExitCode::SUCCESS);
    }
    for (line, m) in r.invalid.iter().take(100) {
        eprintln!("line {line}: {m}");
    }
    say!(
        "imported 0 codes: {} invalid rows (nothing was written)",
        r.invalid.len()
    );
    Ok(ExitCode::from(1))
}

/// `codes export`: CSV to `out` or stdout; the count on stderr.
fn codes_export(cfg: &Config, to: &CodesTarget, out: Option<&Path>) -> Result<ExitCode, String> {
    use karma_provider::codes_cli::export;
    let n = match out {
        Some(p) => std::fs::File::create(p)
            .map_err(|e| e.to_string())
            .and_then(|f| {
                let mut w = std::io::BufWriter::new(f);
                export(cfg, &to.tenant, &to.campaign, &mut w)
            })?,
        None => export(cfg, &to.tenant, &to.campaign, &mut std::io::stdout().lock())?,
    };
    eprintln!("exported {n} codes");
    Ok(ExitCode::SUCCESS)
}

/// The config (the embedded default without a path); prints the error naming file and key.
fn load_config(path: Option<&Path>) -> Option<Config> {
    Config::load(path)
        .map_err(|e| eprintln!("config error: {e}"))
        .ok()
}

/// A tokio runtime: multi-threaded to serve, single-threaded for one client call.
fn runtime(multi_thread: bool) -> Option<tokio::runtime::Runtime> {
    let mut b = if multi_thread {
        tokio::runtime::Builder::new_multi_thread()
    } else {
        tokio::runtime::Builder::new_current_thread()
    };
    b.enable_all()
        .build()
        .map_err(|e| eprintln!("cannot start the runtime: {e}"))
        .ok()
}

async fn serve(config: Config) -> ExitCode {
    let origin = config.origin.clone();
    let data = config.storage.path.display().to_string();
    let first = config.tenants.first().map(|t| {
        (
            t.id.clone(),
            t.campaigns
                .first()
                .and_then(|c| c.spec.codes.first().cloned()),
        )
    });
    let admin_on = config.admin.token.is_some();
    // The embedded demo made its own admin token when KP_ADMIN_TOKEN is unset: print it, so
    // the console can be signed in to at once (a token the user chose is never printed).
    let demo_token = (config.origin == karma_provider::config::DEFAULT_ORIGIN)
        .then(|| {
            let env =
                std::env::var(karma_provider::config::DEMO_ADMIN_TOKEN_ENV).unwrap_or_default();
            let token = config.admin.token.as_ref()?.expose().to_owned();
            (env.is_empty() && Some(&token) == karma_provider::config::demo_admin_token().as_ref())
                .then_some(token)
        })
        .flatten();
    // The embedded demo prints its webhook secret so the README's signed delivery works.
    let demo_webhook = (config.origin == karma_provider::config::DEFAULT_ORIGIN)
        .then(|| {
            config.tenants.iter().find_map(|t| {
                let w = t.webhooks.as_ref()?;
                Some((
                    t.id.clone(),
                    String::from_utf8_lossy(w.secrets.first()?).into_owned(),
                ))
            })
        })
        .flatten();
    let server = match Server::start(config, Clock::System).await {
        Ok(s) => s,
        Err(e) => {
            eprintln!("cannot start: {e}");
            return ExitCode::FAILURE;
        }
    };
    let addr = server.addr;
    say!("karma-provider listening on http://{addr}");
    say!("  config: {origin}");
    say!("  data:   {data}");
    say!(
        "  admin API: {}",
        if admin_on {
            "on"
        } else {
            "off (set the token named by [admin] token_env)"
        }
    );
    if admin_on {
        say!("  console:   http://{addr}/console/");
    }
    if let Some(token) = demo_token {
        say!(
            "  admin token (made for this run; set {} to choose one): {token}",
            karma_provider::config::DEMO_ADMIN_TOKEN_ENV
        );
    }
    if let Some((tenant, Some(code))) = first {
        say!("Try a voucher check:");
        say!(
            "  curl -s http://{addr}/v1/{tenant}/voucher/check -H 'Content-Type: application/json' \\\n    -d '{{\"code\":\"{code}\",\"cart\":{{\"items\":[{{\"inventoryItemId\":\"1001\",\"quantity\":2,\"priceCents\":2500}}],\"totalCents\":5000}}}}'"
        );
    }
    if let Some((tenant, secret)) = demo_webhook {
        say!(
            "Webhook receiver: POST http://{addr}/v1/{tenant}/webhooks, X-Karma-Signature = hex HMAC-SHA256 of the body with the secret {secret:?} (from {})",
            karma_provider::config::DEMO_WEBHOOK_SECRET_ENV
        );
    }
    tracing::info!(%addr, "serving");
    wait_for_signal().await;
    tracing::info!("shutting down: draining in-flight requests");
    server.stop().await;
    ExitCode::SUCCESS
}

async fn wait_for_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let mut term = match signal(SignalKind::terminate()) {
            Ok(s) => s,
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
                return;
            }
        };
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}
