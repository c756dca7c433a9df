//! The operator console: in a real browser (Debian's headless Chromium through
//! chromedriver, driven over WebDriver by fantoccini) and over plain HTTP (sessions,
//! cookie flags, CSRF). Screenshots of each page go to `docs/console/`.

mod common;

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::*;
use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::{json, Value};

const PROGRAM: &str = r#"
[[tenants.loyalty]]
program_id = 7
earn = { points = 1, per_cents = 100 }
signup_bonus = 50
expire_days = 365
tiers = [ { id = "bronze", name = "Bronze", min_lifetime = 0 },
          { id = "silver", name = "Silver", min_lifetime = 500, multiplier_percent = 150 } ]
"#;

/// A member `u1` with the phone +46 70 123 45 67: 50 signup points and an award of 13
/// points for purchase `p1` (1300 cents): a balance of 63.
async fn harness_with_member() -> (Harness, String) {
    let h = Harness::start(&config_with(PROGRAM)).await;
    let e = h
        .call(
            "loyalty/enroll",
            &json!({"userId": "u1", "loyaltyProgramId": 7, "phone": "+46 70-123 45 67"}),
        )
        .await;
    assert_eq!(e.status, 200);
    let member = e.json()["memberId"].as_str().unwrap().to_owned();
    let a = h
        .call(
            "loyalty/award",
            &json!({"userId": "u1", "loyaltyProgramId": 7, "purchaseId": "p1",
                    "purchaseAmountCents": 1300, "transactionId": format!("loy_{:032x}", 1)}),
        )
        .await;
    assert_eq!(a.json()["pointsAwarded"], json!(13));
    (h, member)
}

async fn balance(h: &Harness, member: &str) -> Value {
    h.admin("GET", &format!("loyalty/7/members/{member}"), None)
        .await
        .json()["currentBalance"]
        .clone()
}

// ---------------------------------------------------------------- over plain HTTP

fn header(r: &Resp, name: &str) -> String {
    r.headers
        .get(name)
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_default()
}

async fn sign_in(h: &Harness, token: &str, extra: &[(&str, &str)]) -> Resp {
    let mut headers = vec![("content-type", "application/x-www-form-urlencoded")];
    headers.extend_from_slice(extra);
    h.request(
        "POST",
        "/console/login",
        &headers,
        format!("token={token}").into_bytes(),
    )
    .await
}

/// The session id from a sign-in's `Set-Cookie`.
fn session_of(r: &Resp) -> String {
    let c = header(r, "set-cookie");
    c["kp_console=".len()..]
        .split(';')
        .next()
        .unwrap()
        .to_owned()
}

/// The CSRF token in a page's forms.
fn csrf_in(page: &str) -> String {
    let at = page.find(r#"name="csrf" value=""#).expect("a CSRF field") + 19;
    page[at..at + 64].to_owned()
}

#[tokio::test]
async fn sign_in_sets_an_exact_cookie_and_a_wrong_token_is_refused() {
    let (h, _) = harness_with_member().await;
    let bad = sign_in(&h, "not-the-token", &[]).await;
    assert_eq!(bad.status, 401);
    assert_eq!(header(&bad, "set-cookie"), "");
    assert!(String::from_utf8_lossy(&bad.bytes).contains("That is not the admin token."));

    let ok = sign_in(&h, ADMIN_TOKEN, &[]).await;
    assert_eq!(ok.status, 303);
    assert_eq!(header(&ok, "location"), "/console/");
    let id = session_of(&ok);
    assert_eq!(id.len(), 64);
    assert!(id.bytes().all(|b| b.is_ascii_hexdigit()));
    assert_eq!(
        header(&ok, "set-cookie"),
        format!("kp_console={id}; Path=/console; Max-Age=28800; HttpOnly; SameSite=Strict")
    );
    let tls = sign_in(&h, ADMIN_TOKEN, &[("x-forwarded-proto", "https")]).await;
    let id2 = session_of(&tls);
    assert_ne!(id, id2);
    assert_eq!(
        header(&tls, "set-cookie"),
        format!(
            "kp_console={id2}; Path=/console; Max-Age=28800; HttpOnly; SameSite=Strict; Secure"
        )
    );
    // Signed in, the start page lists the tenants and never shows the admin token.
    let cookie = format!("kp_console={id}");
    let home = h
        .request("GET", "/console/", &[("cookie", &cookie)], vec![])
        .await;
    assert_eq!(home.status, 200);
    assert_eq!(header(&home, "cache-control"), "no-store");
    let body = String::from_utf8_lossy(&home.bytes);
    assert!(body.contains(r#"href="/console/acme/members""#), "{body}");
    assert!(!body.contains(ADMIN_TOKEN));
}

#[tokio::test]
async fn without_a_session_pages_redirect_to_sign_in_and_actions_are_refused() {
    let (h, member) = harness_with_member().await;
    let r = h.request("GET", "/console/acme/members", &[], vec![]).await;
    assert_eq!(
        (r.status, header(&r, "location")),
        (303, "/console/login".into())
    );
    let forged = [(
        "cookie",
        "kp_console=0000000000000000000000000000000000000000000000000000000000000000",
    )];
    let r = h.request("GET", "/console/", &forged, vec![]).await;
    assert_eq!(
        (r.status, header(&r, "location")),
        (303, "/console/login".into())
    );
    let form = [("content-type", "application/x-www-form-urlencoded")];
    let body = b"program=7&points=5&reason=x&opid=console-a&csrf=x".to_vec();
    let path = format!("/console/acme/members/{member}/adjust");
    let r = h.request("POST", &path, &form, body).await;
    assert_eq!(r.status, 401);
    assert_eq!(balance(&h, &member).await, json!(63));
}

#[tokio::test]
async fn a_post_without_the_sessions_csrf_token_is_refused_and_with_it_acts() {
    let (h, member) = harness_with_member().await;
    let cookie = format!(
        "kp_console={}",
        session_of(&sign_in(&h, ADMIN_TOKEN, &[]).await)
    );
    let headers = [
        ("cookie", cookie.as_str()),
        ("content-type", "application/x-www-form-urlencoded"),
    ];
    let path = format!("/console/acme/members/{member}/adjust");
    let fields = "program=7&points=5&reason=goodwill&opid=console-t1";
    for body in [
        fields.to_owned(),
        format!("{fields}&csrf=wrong"),
        format!("{fields}&csrf="),
    ] {
        let r = h.request("POST", &path, &headers, body.into_bytes()).await;
        assert_eq!(r.status, 403);
        assert!(String::from_utf8_lossy(&r.bytes).contains("CSRF token missing or wrong"));
    }
    assert_eq!(balance(&h, &member).await, json!(63));
    let page = h
        .request(
            "GET",
            "/console/acme/members?program=7&type=userId&q=u1",
            &headers[..1],
            vec![],
        )
        .await;
    let csrf = csrf_in(&String::from_utf8_lossy(&page.bytes));
    let r = h
        .request(
            "POST",
            &path,
            &headers,
            format!("{fields}&csrf={csrf}").into_bytes(),
        )
        .await;
    assert_eq!(r.status, 200);
    assert!(
        String::from_utf8_lossy(&r.bytes).contains("Adjusted by 5 points; the balance is now 68.")
    );
    assert_eq!(balance(&h, &member).await, json!(68));
    // Logout ends the session: the cookie is cleared, and the old id no longer works.
    let out = h
        .request(
            "POST",
            "/console/logout",
            &headers,
            format!("csrf={csrf}").into_bytes(),
        )
        .await;
    assert_eq!(out.status, 303);
    assert_eq!(
        header(&out, "set-cookie"),
        "kp_console=; Path=/console; Max-Age=0; HttpOnly; SameSite=Strict"
    );
    let r = h.request("GET", "/console/", &headers[..1], vec![]).await;
    assert_eq!(
        (r.status, header(&r, "location")),
        (303, "/console/login".into())
    );
}

#[tokio::test]
async fn the_demo_has_the_console_on_with_a_token_made_for_the_run() {
    use karma_provider::config::{demo_admin_token, DemoEnv, DEFAULT_ORIGIN, DEFAULT_TOML};
    let cfg = karma_provider::Config::from_toml(DEFAULT_TOML, DEFAULT_ORIGIN, &DemoEnv).unwrap();
    let token = cfg
        .admin
        .token
        .as_ref()
        .expect("the demo's admin API is on")
        .expose();
    if let Some(chosen) = std::env::var("KP_ADMIN_TOKEN")
        .ok()
        .filter(|v| !v.is_empty())
    {
        assert_eq!(token, chosen); // a token the user chose wins (and is never printed)
        return;
    }
    assert_eq!(token.len(), 64);
    assert!(token.bytes().all(|b| b.is_ascii_hexdigit()));
    // One token per run: every load of the demo config in this process has the same.
    assert_eq!(Some(token.to_owned()), demo_admin_token());
}

// ---------------------------------------------------------------- in a real browser

/// chromedriver on a free port, killed when dropped.
struct Driver {
    child: Child,
    port: u16,
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn driver() -> Driver {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let child = Command::new("/usr/bin/chromedriver")
        .arg(format!("--port={port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("chromedriver (apt-get install chromium chromium-driver; .ci/run does)");
    // Killed and waited for by its Drop, whatever happens next.
    let d = Driver { child, port };
    for _ in 0..100 {
        if tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_ok()
        {
            return d;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("chromedriver did not listen on {port}");
}

async fn browser(d: &Driver, profile: &std::path::Path) -> Client {
    let args = [
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--hide-scrollbars",
        &format!("--user-data-dir={}", profile.display()),
    ];
    let caps = json!({"goog:chromeOptions": {"binary": "/usr/bin/chromium", "args": args}});
    let Value::Object(caps) = caps else {
        unreachable!()
    };
    let connector = hyper_util::client::legacy::connect::HttpConnector::new();
    ClientBuilder::new(connector)
        .capabilities(caps)
        .connect(&format!("http://127.0.0.1:{}", d.port))
        .await
        .expect("a Chromium session")
}

async fn shot(c: &Client, name: &str, (w, h): (u32, u32)) {
    c.set_window_size(w, h).await.unwrap();
    let png = c.screenshot().await.unwrap();
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("docs/console");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join(format!("{name}.png")), png).unwrap();
}

const WIDE: (u32, u32) = (1280, 900);
const PHONE: (u32, u32) = (390, 844);

async fn text(c: &Client, css: &str) -> String {
    c.find(Locator::Css(css))
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

async fn fill(c: &Client, id: &str, value: &str) {
    let e = c.find(Locator::Id(id)).await.unwrap();
    e.clear().await.unwrap();
    e.send_keys(value).await.unwrap();
}

/// Press the submit button of the form whose action ends so, or click the link `css`,
/// and wait until the next page has replaced this one.
async fn submit(c: &Client, form_action_ends: &str) {
    let css = format!(r#"form[action$="{form_action_ends}"] button[type="submit"]"#);
    follow(c, &css).await;
}

async fn follow(c: &Client, css: &str) {
    let old = c.find(Locator::Css("html")).await.unwrap();
    c.find(Locator::Css(css))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    for _ in 0..200 {
        if old.tag_name().await.is_err() {
            c.wait().for_element(Locator::Css("main")).await.unwrap();
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("{css} led to no new page");
}

#[tokio::test]
async fn in_a_browser_sign_in_find_a_member_by_phone_adjust_and_reverse_an_award() {
    let (h, member) = harness_with_member().await;
    let d = driver().await;
    let profile = tempfile::tempdir().unwrap();
    let c = browser(&d, profile.path()).await;
    c.set_window_size(WIDE.0, WIDE.1).await.unwrap();

    c.goto(&format!("{}/console/", h.base())).await.unwrap();
    assert_eq!(c.current_url().await.unwrap().path(), "/console/login");
    shot(&c, "sign-in", WIDE).await;
    fill(&c, "token", ADMIN_TOKEN).await;
    submit(&c, "/console/login").await;
    assert_eq!(c.current_url().await.unwrap().path(), "/console/");
    assert_eq!(text(&c, "h1").await, "Tenants");
    shot(&c, "home", WIDE).await;

    follow(&c, r#"a[href="/console/acme/members"]"#).await;
    fill(&c, "program", "7").await;
    c.find(Locator::Css(r#"#type option[value="phone"]"#))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    fill(&c, "q", "0046 70 123 45 67").await; // another spelling of the enrolled phone
    submit(&c, "/console/acme/members").await;
    assert_eq!(text(&c, "#who").await, format!("Member {member}"));
    assert_eq!(text(&c, "#balance").await, "63");
    assert_eq!(
        c.find_all(Locator::Css("#ledger-table tbody tr"))
            .await
            .unwrap()
            .len(),
        2
    );
    shot(&c, "member", WIDE).await;
    shot(&c, "member-phone", PHONE).await;
    c.set_window_size(WIDE.0, WIDE.1).await.unwrap();

    fill(&c, "points", "25").await;
    fill(&c, "reason", "goodwill: cold soup").await;
    submit(&c, "/adjust").await;
    assert_eq!(
        text(&c, "p.ok").await,
        "Adjusted by 25 points; the balance is now 88."
    );
    assert_eq!(text(&c, "#balance").await, "88");
    let new = text(&c, "#ledger-table tr.new").await;
    assert!(
        new.contains("adjustment") && new.contains("25") && new.contains("88"),
        "{new}"
    );
    assert!(new.contains("goodwill: cold soup"), "{new}");
    let line = text(&c, "ul.new-lines li").await;
    assert!(
        line.starts_with("New ledger line #")
            && line.ends_with(": adjustment 25 points, balance 88"),
        "{line}"
    );
    shot(&c, "adjusted", WIDE).await;

    fill(&c, "award", "p1").await;
    fill(&c, "rreason", "order refunded").await;
    submit(&c, "/reverse").await;
    assert_eq!(
        text(&c, "p.ok").await,
        "Reversed 13 points (0 already spent, not recovered); the balance is now 75."
    );
    let new = text(&c, "#ledger-table tr.new").await;
    assert!(
        new.contains("reversal") && new.contains("-13") && new.contains("75"),
        "{new}"
    );
    let line = text(&c, "ul.new-lines li").await;
    assert!(
        line.ends_with(": reversal -13 points, balance 75"),
        "{line}"
    );
    assert_eq!(balance(&h, &member).await, json!(75));
    shot(&c, "reversed", WIDE).await;

    submit(&c, "/console/logout").await;
    assert_eq!(c.current_url().await.unwrap().path(), "/console/login");
    c.close().await.unwrap();
}
