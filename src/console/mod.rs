//! The operator console at `/console/`: server-rendered pages (maud, `pages.rs`) over the
//! same [`App`] operations as the admin API. Sign-in with the admin token once gives a
//! session cookie (`session.rs`); every state-changing form carries the session's CSRF
//! token. The HTTP layer hands over a [`ConsoleRequest`] (path, query, form fields,
//! cookie) and sends back the [`ConsoleResponse`]; nothing here knows hyper.

mod actions;
mod chart;
mod overview;
mod pages;
mod session;
mod throttle;
mod vouchers;
mod webhooks;

use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::app::App;
use session::{Active, Sessions};

/// The session cookie's name.
pub const COOKIE: &str = "kp_console";
/// The stylesheet, embedded in the binary.
const CSS: &str = include_str!("console.css");

/// A console request, as the HTTP layer read it.
pub struct ConsoleRequest {
    pub post: bool,
    /// The segments after `/console/`, percent-decoded (`[]` for the start page).
    pub path: Vec<String>,
    pub query: Vec<(String, String)>,
    /// The `application/x-www-form-urlencoded` fields of a POST.
    pub form: Vec<(String, String)>,
    /// The value of our cookie, if the browser sent it.
    pub cookie: Option<String>,
    /// Served over TLS (terminated in front: `X-Forwarded-Proto: https`): cookies get `Secure`.
    pub tls: bool,
    /// The client's address (the TCP peer), for the limit on failed sign-ins.
    pub client: Option<std::net::IpAddr>,
}

/// What to send back.
pub struct ConsoleResponse {
    pub status: u16,
    pub content_type: &'static str,
    pub body: Vec<u8>,
    pub headers: Vec<(&'static str, String)>,
}

impl ConsoleResponse {
    pub(crate) fn html(status: u16, markup: maud::Markup) -> ConsoleResponse {
        ConsoleResponse {
            status,
            content_type: "text/html; charset=utf-8",
            body: markup.into_string().into_bytes(),
            headers: Vec::new(),
        }
    }

    pub(crate) fn redirect(to: &str) -> ConsoleResponse {
        ConsoleResponse {
            status: 303,
            content_type: "text/plain; charset=utf-8",
            body: Vec::new(),
            headers: vec![("location", to.to_owned())],
        }
    }

    /// The headers every console answer carries: no caching, no framing, nothing but our
    /// own stylesheet and forms.
    pub fn security_headers() -> [(&'static str, &'static str); 4] {
        [
            (
                "content-security-policy",
                "default-src 'none'; style-src 'self'; img-src 'self'; form-action 'self'; \
                 frame-ancestors 'none'; base-uri 'none'",
            ),
            ("x-content-type-options", "nosniff"),
            ("referrer-policy", "no-referrer"),
            ("cache-control", "no-store"),
        ]
    }
}

/// The console of one server: the admin token's digest and the sessions.
pub struct Console {
    admin_digest: [u8; 32],
    sessions: Sessions,
    sign_ins: throttle::SignIns,
}

/// The value of `name` among form or query fields.
pub(crate) fn field<'a>(pairs: &'a [(String, String)], name: &str) -> Option<&'a str> {
    pairs
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
}

impl Console {
    pub fn new(admin_digest: [u8; 32]) -> Console {
        Console {
            admin_digest,
            sessions: Sessions::default(),
            sign_ins: throttle::SignIns::default(),
        }
    }

    pub async fn handle(&self, app: &App, req: ConsoleRequest) -> ConsoleResponse {
        let path: Vec<&str> = req.path.iter().map(String::as_str).collect();
        match (path.as_slice(), req.post) {
            (["assets", "console.css"], false) => ConsoleResponse {
                status: 200,
                content_type: "text/css; charset=utf-8",
                body: CSS.as_bytes().to_vec(),
                headers: Vec::new(),
            },
            (["login"], false) => ConsoleResponse::html(200, pages::sign_in(None)),
            (["login"], true) => self.sign_in(app, &req),
            _ => match self.session(app, &req) {
                None if req.post => ConsoleResponse::html(401, pages::sign_in(Some(
                    "Your session has ended: sign in again, then repeat the action.",
                ))),
                None => ConsoleResponse::redirect("/console/login"),
                Some(s) if req.post && !csrf_ok(&req, &s) => ConsoleResponse::html(
                    403,
                    pages::problem("This form is stale or was not sent by the console (CSRF token missing or wrong). Reload the page and try again."),
                ),
                Some(s) => self.signed_in(app, &req, &path, &s).await,
            },
        }
    }

    /// Whether `cookie` names a live session (the HTTP layer's body limit depends on it).
    pub fn has_session(&self, app: &App, cookie: Option<&str>) -> bool {
        cookie.is_some_and(|id| self.sessions.find(id, app.clock.now_ms()).is_some())
    }

    fn session(&self, app: &App, req: &ConsoleRequest) -> Option<Active> {
        let id = req.cookie.as_deref()?;
        self.sessions.find(id, app.clock.now_ms())
    }

    fn sign_in(&self, app: &App, req: &ConsoleRequest) -> ConsoleResponse {
        let now = app.clock.now_ms();
        if let Some(wait_s) = self.sign_ins.blocked(req.client, now) {
            let mut r = ConsoleResponse::html(
                429,
                pages::sign_in(Some(&format!(
                    "Too many failed sign-ins from your address: try again in {wait_s} s."
                ))),
            );
            r.headers.push(("retry-after", wait_s.to_string()));
            return r;
        }
        let presented = field(&req.form, "token").unwrap_or("").trim();
        let digest: [u8; 32] = Sha256::digest(presented.as_bytes()).into();
        if !bool::from(digest.ct_eq(&self.admin_digest)) {
            self.sign_ins.failed(req.client, now);
            return ConsoleResponse::html(
                401,
                pages::sign_in(Some("That is not the admin token.")),
            );
        }
        let Some((id, _)) = self.sessions.create(app.clock.now_ms()) else {
            return ConsoleResponse::html(
                500,
                pages::problem("The OS random source failed; no session was made."),
            );
        };
        let mut r = ConsoleResponse::redirect("/console/");
        r.headers.push((
            "set-cookie",
            cookie(&id, session::SESSION_MS / 1000, req.tls),
        ));
        r
    }

    async fn signed_in(
        &self,
        app: &App,
        req: &ConsoleRequest,
        path: &[&str],
        s: &Active,
    ) -> ConsoleResponse {
        match (path, req.post) {
            ([] | [""], false) => ConsoleResponse::html(200, pages::home(app, s)),
            (["logout"], true) => {
                if let Some(id) = &req.cookie {
                    self.sessions.remove(id);
                }
                let mut r = ConsoleResponse::redirect("/console/login");
                r.headers.push(("set-cookie", cookie("", 0, req.tls)));
                r
            }
            ([tenant, rest @ ..], _) if app.config.tenants.iter().any(|t| t.id == *tenant) => {
                match actions::tenant_page(app, req, tenant, rest, s).await {
                    Some(r) => r,
                    None => ConsoleResponse::html(404, pages::problem("No such console page.")),
                }
            }
            _ => ConsoleResponse::html(404, pages::problem("No such console page.")),
        }
    }
}

fn csrf_ok(req: &ConsoleRequest, s: &Active) -> bool {
    field(&req.form, "csrf").is_some_and(|t| session::same(t, &s.csrf))
}

/// The session cookie: HttpOnly, SameSite=Strict, only for `/console`, `Secure` over TLS.
fn cookie(id: &str, max_age_s: i64, tls: bool) -> String {
    let secure = if tls { "; Secure" } else { "" };
    format!("{COOKIE}={id}; Path=/console; Max-Age={max_age_s}; HttpOnly; SameSite=Strict{secure}")
}
