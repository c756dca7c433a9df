//! `karma-provider karma-setup`: what an integrator enters in Karma to point a location at
//! this service — the nine absolute URLs and the auth (never a secret, only where it is
//! kept) — each URL checked against Karma's rules (`karma_urls`; every address a name
//! resolves to is judged), and, given the admin API, whether the tenant is safe to switch
//! now (`GET /admin/v1/tenants/{t}/switch-readiness`). The report is plain text; every
//! problem is one line saying what to do.

use std::collections::HashMap;
use std::net::IpAddr;
use std::time::Duration;

use crate::config::{Auth, Config};
use crate::karma_urls::{
    check_base, parse_https, provider_urls, refused, resolved_verdict, Target,
};

/// What `karma-setup` was asked.
pub struct SetupOptions {
    pub tenant: String,
    pub base_url: String,
    /// The tenant's config, for the auth lines (and to know the tenant exists).
    pub config: Option<Config>,
    /// The admin API's base URL and the admin token, for the readiness check.
    pub admin: Option<(String, Result<String, String>)>,
}

/// The printed report and its problems (none: exit 0).
pub struct SetupReport {
    pub lines: Vec<String>,
    pub problems: Vec<String>,
}

/// How long a name may take to resolve.
const RESOLVE_TIMEOUT: Duration = Duration::from_secs(5);

pub async fn run(o: &SetupOptions) -> SetupReport {
    let mut r = SetupReport {
        lines: vec![format!("Karma setup for tenant {:?}", o.tenant)],
        problems: Vec::new(),
    };
    if let Err(e) = check_base(&o.base_url, &o.tenant) {
        r.problems.push(e);
        return r;
    }
    let urls = provider_urls(&o.base_url, &o.tenant);
    r.lines.push(
        "URLs (Karma: location settings, voucher provider \"custom\" and custom loyalty):".into(),
    );
    for (call, url) in &urls {
        r.lines.push(format!("  {call:<20} {url}"));
    }
    auth_lines(o, &mut r);
    r.lines.push("URL checks (Karma's rules):".into());
    let mut judged: HashMap<(String, u16), Result<String, String>> = HashMap::new();
    for (call, url) in &urls {
        let verdict = match parse_https(url) {
            Err(e) => Err(e),
            Ok(t) => {
                let key = (t.host.clone(), t.port);
                match judged.get(&key) {
                    Some(v) => v.clone(),
                    None => {
                        let v = judge(&t).await;
                        judged.insert(key, v.clone());
                        v
                    }
                }
            }
        };
        match verdict {
            Ok(addrs) => r.lines.push(format!("  ok   {call:<20} {addrs}")),
            Err(e) => {
                r.lines.push(format!("  FAIL {call:<20} {e}"));
                r.problems.push(format!("{call}: {e}"));
            }
        }
    }
    if let Some((admin_url, token)) = &o.admin {
        readiness(o, admin_url, token, &mut r).await;
    } else {
        r.lines.push(
            "Switch readiness: not checked (give --admin-url and the admin token to check)".into(),
        );
    }
    r
}

/// The auth lines: mode, header name or Basic user, and where the secret is kept.
fn auth_lines(o: &SetupOptions, r: &mut SetupReport) {
    let Some(cfg) = &o.config else {
        r.lines
            .push("Auth: not shown (give --config to print the tenant's auth mode)".into());
        return;
    };
    let Some(t) = cfg.tenant(&o.tenant) else {
        r.problems.push(format!(
            "tenant {:?} is not in {}: use a tenant id from that config or add [[tenants]] id = {:?}",
            o.tenant, cfg.origin, o.tenant
        ));
        return;
    };
    let from = |s: &crate::config::Secret| {
        s.origin()
            .map(|o| format!("the value in {o}"))
            .unwrap_or_else(|| "the configured secret".into())
    };
    match &t.auth {
        Auth::None => {
            r.lines.push("Auth: none (Karma: no authentication)".into());
            r.lines.push(format!(
                "  warning: anyone who finds the URLs can call them; consider auth = {{ mode = \"header\" | \"basic\", … }} in {}",
                cfg.origin
            ));
        }
        Auth::Header { name, value } => {
            r.lines
                .push(format!("Auth: custom header; header name: {name}"));
            r.lines.push(format!(
                "  header value: {} (enter it in Karma; not printed here)",
                from(value)
            ));
        }
        Auth::Basic { username, password } => {
            r.lines.push(format!("Auth: HTTP Basic; user: {username}"));
            r.lines.push(format!(
                "  password: {} (enter it in Karma; not printed here)",
                from(password)
            ));
        }
    }
}

/// Every address the host stands for, judged: `Ok` lists them, `Err` says what to do.
async fn judge(t: &Target) -> Result<String, String> {
    if t.is_localhost_name() {
        return Err(format!(
            "host {} is loopback; Karma refuses it: give a public DNS name",
            t.host
        ));
    }
    if let Some(ip) = t.literal_ip() {
        return match refused(ip) {
            Some(why) => Err(format!(
                "address {ip} is {why}; Karma refuses it: give a public address or a name that resolves only to public addresses"
            )),
            None => Ok(ip.to_string()),
        };
    }
    let addrs = resolve(t).await?;
    resolved_verdict(&t.host, &addrs)
}

async fn resolve(t: &Target) -> Result<Vec<IpAddr>, String> {
    let fail = |why: String| {
        format!(
            "host {} does not resolve ({why}): publish its DNS record before Karma can call it",
            t.host
        )
    };
    match tokio::time::timeout(
        RESOLVE_TIMEOUT,
        tokio::net::lookup_host((t.host.as_str(), t.port)),
    )
    .await
    {
        Err(_) => Err(fail(format!(
            "no answer within {}s",
            RESOLVE_TIMEOUT.as_secs()
        ))),
        Ok(Err(e)) => Err(fail(e.to_string())),
        Ok(Ok(it)) => {
            let mut v: Vec<IpAddr> = it.map(|sa| sa.ip()).collect();
            v.sort();
            v.dedup();
            if v.is_empty() {
                Err(fail("no addresses".into()))
            } else {
                Ok(v)
            }
        }
    }
}

/// Ask the admin API whether the tenant may switch now.
async fn readiness(
    o: &SetupOptions,
    admin_url: &str,
    token: &Result<String, String>,
    r: &mut SetupReport,
) {
    let token = match token {
        Ok(t) => t,
        Err(e) => {
            r.problems.push(e.clone());
            return;
        }
    };
    let path = format!("tenants/{}/switch-readiness", o.tenant);
    let (status, bytes) =
        match crate::client::admin_request(admin_url, token, "GET", &path, None).await {
            Ok(x) => x,
            Err(e) => {
                r.problems.push(format!(
                    "switch readiness: {admin_url} unreachable ({e}): check --admin-url"
                ));
                return;
            }
        };
    let v: serde_json::Value = serde_json::from_slice(&bytes).unwrap_or_default();
    match (status, v["ready"].as_bool()) {
        (200, Some(true)) => r.lines.push(format!(
            "Switch readiness: ready (no live holds, no dead letters; {} queued deliveries)",
            v["webhooks"]["queued"]
        )),
        (409, Some(false)) => {
            r.lines.push("Switch readiness: NOT ready".into());
            for b in v["blockers"].as_array().into_iter().flatten() {
                r.problems.push(format!(
                    "not safe to switch: {}: {}",
                    b["message"].as_str().unwrap_or("blocked"),
                    b["action"].as_str().unwrap_or("")
                ));
            }
        }
        _ => r.problems.push(format!(
            "switch readiness: HTTP {status} {}: check --admin-url and the admin token",
            String::from_utf8_lossy(&bytes)
        )),
    }
}
