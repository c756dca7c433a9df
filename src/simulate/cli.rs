//! The `simulate` subcommand: its arguments, turned into [`SimOptions`], the run, the
//! reports written, and the exit code (0 no violation, 1 violations, 2 the run could not
//! happen).

use std::path::PathBuf;
use std::process::ExitCode;

use super::{SimOptions, DEFAULT_BUDGET_MS, DEFAULT_TIMEOUT_MS};
use crate::replay;

/// Karma's side of orders against a provider: order files (Public Order API shape plus
/// `then`) or a generated stream; every contract violation reported.
#[derive(clap::Args, Debug)]
pub struct SimulateArgs {
    /// Order files: one order or an array of orders each (see README, "simulate").
    pub files: Vec<PathBuf>,
    /// Generate this many orders (reproducible with --seed) instead of reading files.
    #[arg(long, conflicts_with = "files")]
    pub orders: Option<usize>,
    /// How many orders run at once (one guest's orders always run in turn).
    #[arg(long, default_value_t = 4)]
    pub concurrency: usize,
    /// Seed of the generated stream: the same seed, the same orders.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// location_id of generated orders.
    #[arg(long, default_value_t = 1)]
    pub location: u64,
    /// Base URL such as https://host/v1/acme (calls map to …/voucher/check etc.).
    #[arg(long, conflicts_with = "endpoints")]
    pub target: Option<String>,
    /// JSON or TOML map from each call to its absolute URL (as for replay).
    #[arg(long)]
    pub endpoints: Option<PathBuf>,
    /// basic:USER:PASS or header:NAME:VALUE
    #[arg(long)]
    pub auth: Option<String>,
    /// Provider-state endpoint: a generated run sets up its program and codes there.
    #[arg(long)]
    pub state_url: Option<String>,
    /// NAME:VALUE header for the state endpoint (repeatable).
    #[arg(long)]
    pub state_header: Vec<String>,
    /// The location's loyalty program id (no loyalty calls without one or --state-url).
    #[arg(long)]
    pub program: Option<String>,
    /// A code generated orders may use (repeatable).
    #[arg(long = "code")]
    pub codes: Vec<String>,
    /// A single-use code: generated orders use it, and a second success is a violation.
    #[arg(long)]
    pub single_use: Vec<String>,
    /// Waits in ms before each retry of commit/reactivate/award, comma-separated.
    #[arg(long, default_value = "200,1000,3000")]
    pub retry_ms: String,
    /// How long Karma waits for one answer, in ms.
    #[arg(long, default_value_t = DEFAULT_TIMEOUT_MS)]
    pub timeout_ms: u64,
    /// The average latency allowed per call, in ms.
    #[arg(long, default_value_t = DEFAULT_BUDGET_MS)]
    pub budget_ms: u64,
    /// Write the report as JSON here.
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// Write the report as JUnit XML here (one testcase per violation class).
    #[arg(long)]
    pub junit: Option<PathBuf>,
    /// PEM file of CA certificates to trust besides the public roots.
    #[arg(long)]
    pub ca_file: Option<PathBuf>,
}

/// `200,1000` → waits; an empty string: no retries.
pub fn parse_retry_ms(s: &str) -> Result<Vec<u64>, String> {
    s.split(',')
        .map(str::trim)
        .filter(|x| !x.is_empty())
        .map(|x| {
            x.parse::<u64>()
                .ok()
                .filter(|n| *n <= 600_000)
                .ok_or_else(|| format!("--retry-ms: {x:?} is not a wait of 0 to 600000 ms"))
        })
        .collect()
}

fn options(a: SimulateArgs) -> Result<SimOptions, String> {
    if a.target.is_none() && a.endpoints.is_none() {
        return Err("give --target URL or --endpoints FILE".into());
    }
    if a.files.is_empty() && a.orders.is_none() {
        return Err("give order files or --orders N".into());
    }
    if a.concurrency == 0 || a.concurrency > 1024 {
        return Err("--concurrency: 1 to 1024".into());
    }
    let t = replay::target_args(
        a.endpoints.as_deref(),
        a.auth.as_deref(),
        a.ca_file.as_deref(),
        &a.state_header,
    )?;
    Ok(SimOptions {
        files: a.files,
        generate: a.orders,
        seed: a.seed,
        concurrency: a.concurrency,
        location: a.location,
        target: a.target,
        endpoints: t.endpoints,
        auth: t.auth,
        state_url: a.state_url,
        state_headers: t.state_headers,
        program: a.program,
        codes: a.codes,
        single_use: a.single_use,
        retry_ms: parse_retry_ms(&a.retry_ms)?,
        timeout_ms: a.timeout_ms.max(1),
        budget_ms: a.budget_ms,
        json: a.json,
        junit: a.junit,
        run_id: None,
        extra_roots: t.extra_roots,
    })
}

/// Run the subcommand; print the human report.
pub fn main(a: SimulateArgs) -> ExitCode {
    let fail = |m: String| {
        eprintln!("simulate: {m}");
        ExitCode::from(2)
    };
    let o = match options(a) {
        Ok(o) => o,
        Err(e) => return fail(e),
    };
    let (json, junit) = (o.json.clone(), o.junit.clone());
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => return fail(format!("cannot start the runtime: {e}")),
    };
    let report = match rt.block_on(super::run(o)) {
        Ok(r) => r,
        Err(e) => return fail(e),
    };
    println!("{}", super::report::human(&report));
    if let Some(p) = json {
        let text = serde_json::to_vec_pretty(&report).unwrap_or_default();
        if let Err(e) = std::fs::write(&p, text) {
            return fail(format!("{}: {e}", p.display()));
        }
    }
    if let Some(p) = junit {
        if let Err(e) = std::fs::write(&p, super::report::junit(&report)) {
            return fail(format!("{}: {e}", p.display()));
        }
    }
    if report.passed() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_schedules() {
        assert_eq!(parse_retry_ms("200, 1000,3000"), Ok(vec![200, 1000, 3000]));
        assert_eq!(parse_retry_ms(""), Ok(vec![]));
        assert_eq!(
            parse_retry_ms("200,soon"),
            Err("--retry-ms: \"soon\" is not a wait of 0 to 600000 ms".into())
        );
    }
}
