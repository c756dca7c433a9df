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
    let member = enroll_u1_by_phone(&h).await;
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

/// Enroll user `u1` in program 7 with phone +46 70-123 45 67; the member id.
async fn enroll_u1_by_phone(h: &Harness) -> String {
    let e = h
        .call(
            "loyalty/enroll",
            &json!({"userId": "u1", "loyaltyProgramId": 7, "phone": "+46 70-123 45 67"}),
        )
        .await;
    assert_eq!(e.status, 200);
    e.json()["memberId"].as_str().unwrap().to_owned()
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
    new_page(c, old, css).await;
}

/// Wait until the page whose root was `old` has been replaced.
async fn new_page(c: &Client, old: fantoccini::elements::Element, what: &str) {
    for _ in 0..200 {
        if old.tag_name().await.is_err() {
            c.wait().for_element(Locator::Css("main")).await.unwrap();
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("{what} led to no new page");
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

// ---------------------------------------------------------------- vouchers and webhooks

/// A hold `kph_…` on A1 committed under `res_id(1)`, and a live hold on A2: their
/// providerRefs.
async fn committed_and_live_holds(h: &Harness) -> (String, String) {
    let r1 = h
        .call("voucher/check", &check_body("A1", 2000))
        .await
        .json()["providerRef"]
        .as_str()
        .unwrap()
        .to_owned();
    let c = h
        .call("voucher/commit", &commit_body(500, &res_id(1), &r1))
        .await;
    assert_eq!(c.status, 200);
    let r2 = h
        .call("voucher/check", &check_body("A2", 2000))
        .await
        .json()["providerRef"]
        .as_str()
        .unwrap()
        .to_owned();
    (r1, r2)
}

/// A browser signed in with the keyboard alone (the token field has the focus: type the
/// token, press Enter), on the start page.
async fn signed_in_browser(h: &Harness, d: &Driver, profile: &std::path::Path) -> Client {
    let c = browser(d, profile).await;
    c.set_window_size(WIDE.0, WIDE.1).await.unwrap();
    c.goto(&format!("{}/console/login", h.base()))
        .await
        .unwrap();
    let old = c.find(Locator::Css("html")).await.unwrap();
    let focused = c.active_element().await.unwrap();
    assert_eq!(focused.attr("id").await.unwrap().as_deref(), Some("token"));
    focused
        .send_keys(&format!("{ADMIN_TOKEN}\u{E007}"))
        .await
        .unwrap();
    new_page(&c, old, "Enter in the token field").await;
    assert_eq!(text(&c, "h1").await, "Tenants");
    c
}

async fn column(c: &Client, css: &str) -> Vec<String> {
    let mut out = Vec::new();
    for e in c.find_all(Locator::Css(css)).await.unwrap() {
        out.push(e.text().await.unwrap());
    }
    out
}

#[tokio::test]
async fn in_a_browser_find_a_transaction_by_its_res_id_look_up_a_code_and_release_a_hold() {
    let h = Harness::start(&config_with(ONCE_AND_PROGRAM_7)).await;
    let (r1, r2) = committed_and_live_holds(&h).await;
    let d = driver().await;
    let profile = tempfile::tempdir().unwrap();
    let c = signed_in_browser(&h, &d, profile.path()).await;

    follow(&c, r#"a[href="/console/acme/transactions"]"#).await;
    fill(&c, "txq", &res_id(1)).await;
    submit(&c, "/console/acme/transactions").await;
    assert_eq!(text(&c, "#tx-state").await, "committed");
    assert_eq!(text(&c, "#tx-providerRef").await, r1);
    assert_eq!(text(&c, "#tx-code").await, "A1");
    assert_eq!(
        column(&c, "#timeline tbody td:nth-child(2)").await,
        ["held", "committed"]
    );
    let answers = column(&c, "#answers li").await;
    assert_eq!(answers.len(), 1, "{answers:?}");
    assert!(
        answers[0].starts_with(&format!("commit {}: HTTP 200 ", res_id(1))),
        "{answers:?}"
    );
    shot(&c, "transaction", WIDE).await;

    c.goto(&format!("{}/console/", h.base())).await.unwrap();
    follow(&c, r#"a[href="/console/acme/campaigns"]"#).await;
    // once: 1 use (no limit), 1 live hold, budget 100000 - 500 committed - 500 held
    assert_eq!(
        column(&c, "#campaigns tbody td").await,
        ["once", "config", "1 / —", "1", "99000", "CSV"]
    );
    assert_eq!(
        column(&c, "#holds tbody td:first-child").await,
        std::slice::from_ref(&r2)
    );
    shot(&c, "campaigns", WIDE).await;
    shot(&c, "campaigns-phone", PHONE).await;
    c.set_window_size(WIDE.0, WIDE.1).await.unwrap();

    submit(&c, &format!("/holds/{r2}/release")).await;
    assert_eq!(text(&c, "p.ok").await, format!("Released hold {r2}."));
    assert_eq!(text(&c, "#no-holds").await, "No live holds.");
    let hold = h.admin("GET", &format!("holds/{r2}"), None).await.json();
    assert_eq!(hold["state"], json!("released"));

    fill(&c, "code", "a1").await; // normalised as checks match it
    submit(&c, "/console/acme/codes").await;
    assert_eq!(text(&c, "#code-name").await, "A1");
    assert_eq!(text(&c, "#code-state").await, "used");
    assert_eq!(
        column(&c, "#timeline tbody td:nth-child(2)").await,
        ["held", "committed"]
    );
    shot(&c, "code", WIDE).await;
    c.close().await.unwrap();
}

#[tokio::test]
async fn in_a_browser_an_import_with_a_bad_line_shows_it_and_a_dead_letter_is_replayed() {
    let dir = tempfile::tempdir().unwrap();
    let sink_dir = dir.path().join("not-yet");
    let sink = sink_dir.join("events.jsonl");
    let hooks = format!(
        r#"
[tenants.webhooks]
verify = {{ scheme = "hmac-sha256-hex", secrets_env = ["WH_SECRET"] }}
[[tenants.webhooks.routes]]
name = "inv"
events = "inventory.*"
sink = {{ file = "{}" }}
max_attempts = 1
backoff = "10ms"
"#,
        sink.display()
    );
    let h = Harness::start(&config_with(&format!("{ONCE_AND_PROGRAM_7}{hooks}"))).await;
    deliver_signed(&h, "evt_console").await;
    let mut dead = Value::Null;
    for _ in 0..500 {
        dead = h.admin("GET", "webhooks/dead-letters", None).await.json();
        if dead["count"] == json!(1) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(dead["count"], json!(1), "{dead}");
    let seq = dead["deadLetters"][0]["seq"].as_u64().unwrap();

    let d = driver().await;
    let profile = tempfile::tempdir().unwrap();
    let c = signed_in_browser(&h, &d, profile.path()).await;
    follow(&c, r#"a[href="/console/acme/campaigns"]"#).await;
    // Uploaded as a file (the form is multipart); the second import is pasted.
    let file = dir.path().join("codes.csv");
    std::fs::write(
        &file,
        "code,valid_until\r\nNEW-1\r\nNEW-2,not-a-date\r\nNEW-3\r\n",
    )
    .unwrap();
    c.find(Locator::Id("csv-file"))
        .await
        .unwrap()
        .send_keys(&file.display().to_string())
        .await
        .unwrap();
    submit(&c, "/campaigns/import").await;
    assert_eq!(
        text(&c, "p.error").await,
        "INVALID_ROWS: 1 invalid row(s); nothing was imported"
    );
    assert_eq!(
        column(&c, "#import-errors li").await,
        [r#"line 3: valid_until: "not-a-date" is not an RFC 3339 instant"#]
    );
    shot(&c, "import-errors", WIDE).await;
    assert_eq!(h.admin("GET", "codes/NEW-1", None).await.status, 404);
    fill(&c, "csv", "NEW-1\nNEW-3\n").await;
    submit(&c, "/campaigns/import").await;
    assert_eq!(
        text(&c, "p.ok").await,
        "Imported 2 code(s) into once (0 duplicate(s) skipped)."
    );
    assert_eq!(h.admin("GET", "codes/NEW-3", None).await.status, 200);

    c.goto(&format!("{}/console/", h.base())).await.unwrap();
    follow(&c, r#"a[href="/console/acme/webhooks"]"#).await;
    let row = column(&c, "#dead tbody td").await;
    assert_eq!(
        row[..4],
        [
            "inv".to_owned(),
            seq.to_string(),
            "inventory.created evt_console".into(),
            "1".into()
        ]
    );
    assert!(row[4].starts_with("file "), "{row:?}");
    assert_eq!(column(&c, "#inbox tbody td:nth-child(5)").await, ["dead"]);
    shot(&c, "webhooks", WIDE).await;

    std::fs::create_dir_all(&sink_dir).unwrap();
    submit(&c, &format!("/dead/inv/{seq}/replay")).await;
    assert_eq!(text(&c, "p.ok").await, "Replayed 1 dead letter(s).");
    let mut delivered = String::new();
    for _ in 0..500 {
        delivered = std::fs::read_to_string(&sink).unwrap_or_default();
        if !delivered.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(delivered.lines().count(), 1, "{delivered}");
    assert!(delivered.contains("evt_console"), "{delivered}");
    assert_eq!(
        h.admin("GET", "webhooks/dead-letters", None).await.json()["count"],
        json!(0)
    );
    // The event's page shows it delivered on its route.
    c.goto(&format!("{}/console/acme/webhooks/{seq}", h.base()))
        .await
        .unwrap();
    assert_eq!(text(&c, "#event-status").await, "delivered");
    assert_eq!(
        column(&c, "#attempts tbody td:nth-child(-n+2)").await,
        ["inv", "delivered"]
    );
    // Both attempts are listed: the one that dead-lettered it, then the replay's.
    let attempts: Vec<(u64, String)> = column(&c, "#attempts li")
        .await
        .iter()
        .map(|a| serde_json::from_str::<Value>(a).unwrap())
        .map(|a| {
            (
                a["n"].as_u64().unwrap(),
                a["outcome"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    assert_eq!(
        attempts,
        [(1, "dead".to_owned()), (2, "delivered".to_owned())]
    );
    shot(&c, "webhook-event", WIDE).await;
    c.close().await.unwrap();
}

/// Signed in over plain HTTP: the cookie header and a page's CSRF token.
async fn http_session(h: &Harness, page: &str) -> (String, String) {
    let cookie = format!(
        "kp_console={}",
        session_of(&sign_in(h, ADMIN_TOKEN, &[]).await)
    );
    let p = h.request("GET", page, &[("cookie", &cookie)], vec![]).await;
    assert_eq!(p.status, 200);
    (cookie, csrf_in(&String::from_utf8_lossy(&p.bytes)))
}

async fn post_form(h: &Harness, cookie: &str, path: &str, body: &str) -> Resp {
    let headers = [
        ("cookie", cookie),
        ("content-type", "application/x-www-form-urlencoded"),
    ];
    h.request("POST", path, &headers, body.as_bytes().to_vec())
        .await
}

#[tokio::test]
async fn release_replay_import_and_generate_without_the_csrf_token_are_refused() {
    let h = Harness::start(&config_with(ONCE_AND_PROGRAM_7)).await;
    let (_, r2) = committed_and_live_holds(&h).await;
    let (cookie, csrf) = http_session(&h, "/console/acme/campaigns").await;
    let release = format!("/console/acme/holds/{r2}/release");
    for (path, fields) in [
        (release.as_str(), String::new()),
        ("/console/acme/webhooks/dead/replay", String::new()),
        ("/console/acme/webhooks/dead/purge", String::new()),
        (
            "/console/acme/campaigns/import",
            "campaign=once&csv=Z1".into(),
        ),
        (
            "/console/acme/campaigns/generate",
            "campaign=once&pattern=G-%23%23%23%23&count=2".into(),
        ),
    ] {
        let r = post_form(&h, &cookie, path, &format!("{fields}&csrf=wrong")).await;
        assert_eq!(r.status, 403, "{path}");
        // And without the session cookie: 401, whatever the token.
        let r = post_form(&h, "", path, &format!("{fields}&csrf={csrf}")).await;
        assert_eq!(r.status, 401, "{path}");
    }
    assert_eq!(
        h.admin("GET", &format!("holds/{r2}"), None).await.json()["state"],
        json!("held")
    );
    assert_eq!(h.admin("GET", "codes/Z1", None).await.status, 404);
    let r = post_form(&h, &cookie, &release, &format!("csrf={csrf}")).await;
    assert_eq!(r.status, 200);
    assert!(String::from_utf8_lossy(&r.bytes).contains(&format!("Released hold {r2}.")));
}

#[tokio::test]
async fn generated_codes_download_as_csv() {
    let h = Harness::start(&config_with(ONCE_AND_PROGRAM_7)).await;
    let (cookie, csrf) = http_session(&h, "/console/acme/campaigns").await;
    let body = format!("campaign=once&pattern=GEN-%23%23%23%23&count=3&csrf={csrf}");
    let r = post_form(&h, &cookie, "/console/acme/campaigns/generate", &body).await;
    assert_eq!(r.status, 200);
    let page = String::from_utf8_lossy(&r.bytes).into_owned();
    assert!(page.contains("Generated 3 code(s) for once."), "{page}");
    assert!(page.contains(r#"href="/console/acme/campaigns/once/codes.csv""#));
    let csv = h
        .request(
            "GET",
            "/console/acme/campaigns/once/codes.csv",
            &[("cookie", &cookie)],
            vec![],
        )
        .await;
    assert_eq!(csv.status, 200);
    assert_eq!(header(&csv, "content-type"), "text/csv; charset=utf-8");
    assert_eq!(
        header(&csv, "content-disposition"),
        r#"attachment; filename="acme-once-codes.csv""#
    );
    let text = String::from_utf8(csv.bytes).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines[0], "code,valid_until,assigned_user,state");
    assert_eq!(lines.len(), 4, "{text}");
    for l in &lines[1..] {
        let code = l.split(',').next().unwrap();
        assert!(page.contains(&format!("<code>{code}</code>")), "{code}");
        assert_eq!(code.len(), 8);
        assert!(code.starts_with("GEN-"));
    }
    // Without a session, no CSV.
    let r = h
        .request("GET", "/console/acme/campaigns/once/codes.csv", &[], vec![])
        .await;
    assert_eq!(r.status, 303);
}

#[tokio::test]
async fn the_admin_api_finds_a_transaction_by_loy_id_purchase_and_redemption() {
    let h = Harness::start(&config_with(ONCE_AND_PROGRAM_7)).await;
    let enroll = json!({"userId": "u1", "loyaltyProgramId": 7, "phone": "+46701234567"});
    assert_eq!(h.call("loyalty/enroll", &enroll).await.status, 200);
    let loy = |n: u64| format!("loy_{n:032x}");
    let award = json!({"userId": "u1", "loyaltyProgramId": 7, "purchaseId": "p1",
                       "purchaseAmountCents": 5000, "transactionId": loy(1)});
    assert_eq!(
        h.call("loyalty/award", &award).await.json()["pointsAwarded"],
        json!(50)
    );
    let redeem = json!({"userId": "u1", "loyaltyProgramId": 7, "rewardId": "coffee",
                        "transactionId": loy(2)});
    let rdm = h.call("loyalty/redeem", &redeem).await.json()["redemptionId"]
        .as_str()
        .unwrap()
        .to_owned();
    let rev = json!({"id": "refund-1", "purchaseId": "p1", "amountCents": 2500, "reason": "half refunded"});
    assert_eq!(
        h.admin("POST", "loyalty/7/reversals", Some(&rev))
            .await
            .status,
        200
    );

    for q in [loy(1), "p1".to_owned()] {
        let t = h.admin("GET", &format!("transactions/{q}"), None).await;
        assert_eq!(t.status, 200);
        let t = t.json();
        assert_eq!(
            (
                t["kind"].clone(),
                t["transactionId"].clone(),
                t["points"].clone(),
                t["reversedPoints"].clone()
            ),
            (json!("award"), json!(loy(1)), json!(50), json!(25))
        );
        let events: Vec<(Value, Value)> = t["timeline"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| (e["event"].clone(), e["points"].clone()))
            .collect();
        // The 100 points went on the coffee: the reversal of 25 takes back nothing (never
        // below zero), and the award counts them as reversed.
        assert_eq!(
            events,
            [(json!("earn"), json!(50)), (json!("reversal"), json!(0))]
        );
        assert_eq!(t["answers"][0]["call"], json!("award"));
        assert_eq!(t["answers"][0]["answer"]["pointsAwarded"], json!(50));
    }
    for q in [rdm.clone(), loy(2)] {
        let t = h
            .admin("GET", &format!("transactions/{q}"), None)
            .await
            .json();
        assert_eq!(
            (t["kind"].clone(), t["redemptionId"].clone()),
            (json!("redemption"), json!(rdm))
        );
        assert_eq!(t["timeline"][0]["event"], json!("redeem"));
        assert_eq!(t["timeline"][0]["points"], json!(-100));
        assert_eq!(t["timeline"].as_array().unwrap().len(), 1);
    }
    let none = h
        .admin("GET", &format!("transactions/{}", res_id(9)), None)
        .await;
    assert_eq!(
        (none.status, none.json()["error"].clone()),
        (404, json!("NOT_FOUND"))
    );
}

/// Member u1 of program 7 with 50 + 50 points, all spent on a coffee: the redemption id.
async fn member_with_a_redemption(h: &Harness) -> String {
    let enroll = json!({"userId": "u1", "loyaltyProgramId": 7, "phone": "+46701234567"});
    assert_eq!(h.call("loyalty/enroll", &enroll).await.status, 200);
    let award = json!({"userId": "u1", "loyaltyProgramId": 7, "purchaseId": "p1",
                       "purchaseAmountCents": 5000, "transactionId": format!("loy_{:032x}", 1)});
    assert_eq!(h.call("loyalty/award", &award).await.status, 200);
    let redeem = json!({"userId": "u1", "loyaltyProgramId": 7, "rewardId": "coffee",
                        "transactionId": format!("loy_{:032x}", 2)});
    let r = h.call("loyalty/redeem", &redeem).await.json();
    assert_eq!(r["newBalance"], json!(0));
    r["redemptionId"].as_str().unwrap().to_owned()
}

#[tokio::test]
async fn in_a_browser_reverse_a_redemption_and_page_the_ledger_from_the_server() {
    let h = Harness::start(&config_with(ONCE_AND_PROGRAM_7)).await;
    let rdm = member_with_a_redemption(&h).await;
    let member = h.admin("GET", "loyalty/7/users/u1", None).await.json()["memberId"]
        .as_str()
        .unwrap()
        .to_owned();
    // 21 adjustments of 1..=21 points: 24 ledger lines in all.
    for n in 1..=21 {
        let adj = json!({"id": format!("adj-{n}"), "points": n, "reason": format!("goodwill {n}")});
        let path = format!("loyalty/7/members/{member}/adjustments");
        assert_eq!(h.admin("POST", &path, Some(&adj)).await.status, 200);
    }
    let d = driver().await;
    let profile = tempfile::tempdir().unwrap();
    let c = signed_in_browser(&h, &d, profile.path()).await;
    c.goto(&format!(
        "{}/console/acme/members?program=7&type=userId&q=u1",
        h.base()
    ))
    .await
    .unwrap();
    assert_eq!(text(&c, "#balance").await, "231");
    let rows = "#ledger-table tbody td:nth-child(4)";
    let newest: Vec<String> = (2..=21).rev().map(|n| n.to_string()).collect();
    assert_eq!(column(&c, rows).await, newest);
    assert_eq!(text(&c, "nav.pager").await, "Page 1 of 2 Older");
    follow(&c, "nav.pager a").await;
    assert_eq!(column(&c, rows).await, ["1", "-100", "50", "50"]);
    // The balance chart draws the page's lines, oldest first (a zero balance has no bar).
    let mut bars = Vec::new();
    for e in c
        .find_all(Locator::Css("#balance-chart rect[data-count]"))
        .await
        .unwrap()
    {
        bars.push(e.attr("data-count").await.unwrap().unwrap());
    }
    assert_eq!(bars, ["50", "100", "1"]);
    assert_eq!(text(&c, "nav.pager").await, "Newer Page 2 of 2");

    fill(&c, "redemption", &rdm).await;
    fill(&c, "dreason", "coffee machine broken").await;
    submit(&c, "/reverse-redemption").await;
    assert_eq!(
        text(&c, "p.ok").await,
        format!("Reversed redemption {rdm}: 100 points returned; the balance is now 331.")
    );
    let line = text(&c, "ul.new-lines li").await;
    assert!(
        line.ends_with(": redemption_reversal 100 points, balance 331"),
        "{line}"
    );
    assert_eq!(text(&c, "#balance").await, "331");
    shot(&c, "redemption-reversed", WIDE).await;
    c.close().await.unwrap();
    let after = h.admin("GET", "loyalty/7/users/u1", None).await.json();
    assert_eq!(after["currentBalance"], json!(331));
}

#[tokio::test]
async fn the_admin_member_view_pages_its_ledger_newest_first() {
    let h = Harness::start(&config_with(ONCE_AND_PROGRAM_7)).await;
    member_with_a_redemption(&h).await;
    let all = h.admin("GET", "loyalty/7/users/u1", None).await.json();
    let kinds = |v: &Value| -> Vec<Value> {
        v["ledger"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["kind"].clone())
            .collect()
    };
    assert_eq!(kinds(&all).len(), 3);
    assert_eq!(all["ledgerEntries"], json!(3));
    assert_eq!(all.get("ledgerPage"), None);
    let page = |q: &str| {
        let path = format!("loyalty/7/users/u1?{q}");
        let h = &h;
        async move { h.admin("GET", &path, None).await }
    };
    let p0 = page("ledgerPage=0&ledgerPerPage=2").await.json();
    assert_eq!(
        kinds(&p0),
        [
            all["ledger"][2]["kind"].clone(),
            all["ledger"][1]["kind"].clone()
        ]
    );
    assert_eq!(
        (
            p0["ledgerEntries"].clone(),
            p0["ledgerPage"].clone(),
            p0["ledgerPerPage"].clone()
        ),
        (json!(3), json!(0), json!(2))
    );
    let p1 = page("ledgerPage=1&ledgerPerPage=2").await.json();
    assert_eq!(kinds(&p1), [all["ledger"][0]["kind"].clone()]);
    let p9 = page("ledgerPage=9").await.json();
    assert_eq!(
        (kinds(&p9).len(), p9["ledgerPerPage"].clone()),
        (0, json!(50))
    );
    for bad in ["ledgerPerPage=0", "ledgerPerPage=1001", "ledgerPage=-1"] {
        let r = page(bad).await;
        let field = bad.split('=').next().unwrap();
        assert_eq!(
            (r.status, r.json()["field"].clone()),
            (400, json!(field)),
            "{bad}"
        );
    }
}

#[tokio::test]
async fn in_a_browser_the_overview_charts_requests_per_minute_by_outcome() {
    let h = Harness::start(&config_with(ONCE_AND_PROGRAM_7)).await;
    for code in ["A1", "A2", "NOPE"] {
        h.call("voucher/check", &check_body(code, 2000)).await;
    }
    // Another tenant's name in the path is not counted (nor kept).
    let r = h
        .request(
            "POST",
            "/v1/nobody/voucher/check",
            &[("content-type", "application/json")],
            b"{}".to_vec(),
        )
        .await;
    assert_eq!(r.status, 404);
    h.clock.advance_ms(60_000);
    h.call("voucher/check", &check_body("A3", 2000)).await;

    let d = driver().await;
    let profile = tempfile::tempdir().unwrap();
    let c = signed_in_browser(&h, &d, profile.path()).await;
    follow(&c, r#"a[href="/console/acme/overview"]"#).await;
    let mut marks = Vec::new();
    for e in c
        .find_all(Locator::Css("#requests-chart rect[data-series]"))
        .await
        .unwrap()
    {
        let mut m = Vec::new();
        for a in ["data-bar", "data-series", "data-count"] {
            m.push(e.attr(a).await.unwrap().unwrap());
        }
        marks.push(m.join(" "));
    }
    assert_eq!(marks, ["10:00 ok 2", "10:00 UNKNOWN_CODE 1", "10:01 ok 1"]);
    assert_eq!(
        column(&c, "#by-endpoint tbody td").await,
        [
            "voucher.check",
            "UNKNOWN_CODE",
            "1",
            "voucher.check",
            "ok",
            "3"
        ]
    );
    assert_eq!(text(&c, "#store").await, "healthy");
    assert_eq!(text(&c, "#live-holds").await, "3");
    assert_eq!(text(&c, "#dead-letters").await, "0");
    assert_eq!(text(&c, "#ready").await, "no");
    shot(&c, "overview", WIDE).await;
    shot(&c, "overview-phone", PHONE).await;
    c.close().await.unwrap();
}

#[tokio::test]
async fn five_wrong_tokens_in_a_minute_lock_sign_in_from_that_address_with_429() {
    let h = Harness::start(&config_with(ONCE_AND_PROGRAM_7)).await;
    for _ in 0..5 {
        assert_eq!(sign_in(&h, "guess", &[]).await.status, 401);
    }
    h.clock.advance_ms(30_000);
    for token in ["guess", ADMIN_TOKEN] {
        let r = sign_in(&h, token, &[]).await;
        assert_eq!(r.status, 429, "{token}");
        assert_eq!(header(&r, "retry-after"), "30");
        assert_eq!(header(&r, "set-cookie"), "");
        assert!(String::from_utf8_lossy(&r.bytes)
            .contains("Too many failed sign-ins from your address: try again in 30 s."));
    }
    h.clock.advance_ms(30_000);
    let r = sign_in(&h, ADMIN_TOKEN, &[]).await;
    assert_eq!(
        (r.status, header(&r, "location")),
        (303, "/console/".into())
    );
}

/// WCAG's contrast ratio of each element's own text against the background it is drawn
/// on (the nearest ancestor with one), for the elements below 4.5:1 (the chart's SVG aside).
const LOW_CONTRAST_JS: &str = r#"
const lum = c => { const [r, g, b] = c.match(/[\d.]+/g).map(Number).slice(0, 3).map(v => {
  v /= 255; return v <= 0.03928 ? v / 12.92 : Math.pow((v + 0.055) / 1.055, 2.4); });
  return 0.2126 * r + 0.7152 * g + 0.0722 * b; };
const bg = e => { for (; e; e = e.parentElement) { const c = getComputedStyle(e).backgroundColor;
  const m = c.match(/[\d.]+/g); if (m.length < 4 || +m[3] > 0) return c; } return 'rgb(255,255,255)'; };
const low = [];
for (const e of document.querySelectorAll('body *')) {
  if (e.closest('svg') || ![...e.childNodes].some(n => n.nodeType === 3 && n.textContent.trim())) continue;
  const a = lum(getComputedStyle(e).color), b = lum(bg(e));
  const r = (Math.max(a, b) + 0.05) / (Math.min(a, b) + 0.05);
  if (r < 4.5) low.push(e.tagName + ' "' + e.textContent.trim().slice(0, 30) + '" ' + r.toFixed(2));
}
return low;"#;

/// At a phone's width no console page is wider than the screen (nothing to scroll sideways
/// to, tables and forms included), and all text keeps WCAG AA contrast (4.5:1).
#[tokio::test]
async fn in_a_browser_every_page_fits_a_phone_screen_with_readable_contrast() {
    let h = Harness::start(&config_with(ONCE_AND_PROGRAM_7)).await;
    enroll_u1_by_phone(&h).await;
    let (committed, _held) = committed_and_live_holds(&h).await;
    let d = driver().await;
    let profile = tempfile::tempdir().unwrap();
    let c = signed_in_browser(&h, &d, profile.path()).await;
    c.set_window_size(PHONE.0, PHONE.1).await.unwrap();
    let pages = [
        String::new(),
        "acme/overview".into(),
        "acme/members?type=phone&q=%2B46701234567".into(),
        "acme/campaigns".into(),
        "acme/codes?code=A1".into(),
        format!("acme/transactions?q={committed}"),
        "acme/webhooks".into(),
    ];
    for page in pages {
        c.goto(&format!("{}/console/{page}", h.base()))
            .await
            .unwrap();
        c.wait().for_element(Locator::Css("main")).await.unwrap();
        let widths = c
            .execute(
                "return [document.documentElement.scrollWidth, window.innerWidth]",
                vec![],
            )
            .await
            .unwrap();
        let (page_w, screen_w) = (widths[0].as_u64().unwrap(), widths[1].as_u64().unwrap());
        assert!(screen_w <= u64::from(PHONE.0), "{page}: window {screen_w}");
        assert!(
            page_w <= screen_w,
            "/console/{page} is {page_w} px wide on a {screen_w} px screen"
        );
        let low = c.execute(LOW_CONTRAST_JS, vec![]).await.unwrap();
        assert_eq!(low, json!([]), "/console/{page}: text below 4.5:1");
    }
    c.close().await.unwrap();
}
