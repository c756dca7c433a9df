//! The one outgoing HTTP client: every request this program makes goes through
//! [`Client`] — vendor rules (`rules.rs`), onward webhook delivery (`dispatch.rs`), the
//! order sources' pollers (`sources/poll.rs`), `replay`, and the CLI's operator
//! commands (`karma-provider admin …`, `webhook send`, `healthcheck`, `karma-setup`).
//! It speaks `http://` and `https://` (rustls through hyper-rustls, verified against
//! Mozilla's roots, bundled, plus any extra roots a caller trusts), bounds an exchange
//! by a timeout and an answer's body by a size limit, and reports failures as an
//! [`Error`] each caller words for its own audience. The store belongs to the running
//! server, so operator tools go through its admin API rather than opening the data
//! directory.

use std::time::Duration;

use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Bytes;
use hyper_util::client::legacy::Client as HyperClient;
use hyper_util::rt::TokioExecutor;

type HttpsClient = HyperClient<
    hyper_rustls::HttpsConnector<hyper_util::client::legacy::connect::HttpConnector>,
    Full<Bytes>,
>;

/// A request to send: method, absolute URL, headers, body.
#[derive(Debug, Clone)]
pub struct Request {
    method: String,
    url: String,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Request {
    pub fn new(method: &str, url: &str) -> Request {
        Request {
            method: method.to_ascii_uppercase(),
            url: url.to_owned(),
            headers: Vec::new(),
            body: Vec::new(),
        }
    }

    pub fn get(url: &str) -> Request {
        Request::new("GET", url)
    }

    /// A POST of a JSON body (`content-type: application/json`).
    pub fn post_json(url: &str, body: Vec<u8>) -> Request {
        Request::new("POST", url)
            .header("content-type", "application/json")
            .body(body)
    }

    pub fn header(mut self, name: impl Into<String>, value: impl Into<String>) -> Request {
        self.headers.push((name.into(), value.into()));
        self
    }

    pub fn headers<K: Into<String>, V: Into<String>>(
        mut self,
        headers: impl IntoIterator<Item = (K, V)>,
    ) -> Request {
        for (k, v) in headers {
            self.headers.push((k.into(), v.into()));
        }
        self
    }

    pub fn body(mut self, body: Vec<u8>) -> Request {
        self.body = body;
        self
    }

    pub fn url(&self) -> &str {
        &self.url
    }
}

/// What came back. `body` is empty for [`Client::send_head`].
#[derive(Debug)]
pub struct Answer {
    pub status: u16,
    pub headers: hyper::HeaderMap,
    pub body: Vec<u8>,
}

/// Why no answer came back; `Display` gives the bare cause, callers add their context.
#[derive(Debug)]
pub enum Error {
    /// The request could not be built (a malformed URL or header).
    Request(String),
    /// No connection, or the connection failed before the answer's head.
    Unreachable(String),
    /// No complete answer within the client's timeout.
    Timeout(Duration),
    /// The answer's body failed while being read.
    Body(String),
    /// The answer's body is longer than the client's limit.
    TooLarge(usize),
}

impl std::fmt::Display for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Error::Request(e) | Error::Unreachable(e) | Error::Body(e) => f.write_str(e),
            Error::Timeout(d) => write!(f, "no answer within {} ms", d.as_millis()),
            Error::TooLarge(n) => write!(f, "answer body longer than {n} bytes"),
        }
    }
}

/// An HTTP(S) client with its limits. Cheap to clone (the connection pool is shared).
#[derive(Clone)]
pub struct Client {
    inner: HttpsClient,
    timeout: Option<Duration>,
    body_limit: Option<usize>,
}

impl Client {
    /// A client trusting the public web roots plus `extra_roots` (DER certificates), with
    /// no timeout and no body limit until [`Client::timeout`] / [`Client::body_limit`].
    pub fn new(extra_roots: &[Vec<u8>]) -> Result<Client, String> {
        Ok(Client {
            inner: https_client(extra_roots)?,
            timeout: None,
            body_limit: None,
        })
    }

    /// Bound each exchange (connect, request, answer head and body) by `d`.
    pub fn timeout(mut self, d: Duration) -> Client {
        self.timeout = Some(d);
        self
    }

    /// Refuse an answer whose body is longer than `bytes`.
    pub fn body_limit(mut self, bytes: usize) -> Client {
        self.body_limit = Some(bytes);
        self
    }

    /// Send `req`; the answer's status, headers and body (within the limits).
    pub async fn send(&self, req: Request) -> Result<Answer, Error> {
        self.bounded(async {
            let resp = self.head(req).await?;
            let (parts, body) = resp.into_parts();
            let bytes = match self.body_limit {
                Some(limit) => Limited::new(body, limit).collect().await.map_err(|e| {
                    if e.is::<http_body_util::LengthLimitError>() {
                        Error::TooLarge(limit)
                    } else {
                        Error::Body(e.to_string())
                    }
                })?,
                None => body
                    .collect()
                    .await
                    .map_err(|e| Error::Body(e.to_string()))?,
            };
            Ok(Answer {
                status: parts.status.as_u16(),
                headers: parts.headers,
                body: bytes.to_bytes().to_vec(),
            })
        })
        .await
    }

    /// Send `req` and wait only for the answer's status and headers (the body is not read,
    /// and `Answer::body` is empty): for a receiver whose word is its status.
    pub async fn send_head(&self, req: Request) -> Result<Answer, Error> {
        self.bounded(async {
            let resp = self.head(req).await?;
            Ok(Answer {
                status: resp.status().as_u16(),
                headers: resp.headers().clone(),
                body: Vec::new(),
            })
        })
        .await
    }

    async fn bounded<T>(
        &self,
        f: impl std::future::Future<Output = Result<T, Error>>,
    ) -> Result<T, Error> {
        match self.timeout {
            Some(d) => tokio::time::timeout(d, f)
                .await
                .unwrap_or(Err(Error::Timeout(d))),
            None => f.await,
        }
    }

    async fn head(&self, req: Request) -> Result<hyper::Response<hyper::body::Incoming>, Error> {
        let mut b = hyper::Request::builder()
            .method(req.method.as_str())
            .uri(req.url.as_str());
        for (k, v) in &req.headers {
            b = b.header(k.as_str(), v.as_str());
        }
        let req = b
            .body(Full::new(Bytes::from(req.body)))
            .map_err(|e| Error::Request(e.to_string()))?;
        self.inner
            .request(req)
            .await
            .map_err(|e| Error::Unreachable(e.to_string()))
    }
}

fn https_client(extra_roots: &[Vec<u8>]) -> Result<HttpsClient, String> {
    let mut roots = rustls::RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    for der in extra_roots {
        roots
            .add(rustls::pki_types::CertificateDer::from(der.clone()))
            .map_err(|e| format!("extra root certificate: {e}"))?;
    }
    let tls = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| e.to_string())?
    .with_root_certificates(roots)
    .with_no_client_auth();
    let https = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_or_http()
        .enable_http1()
        .build();
    Ok(HyperClient::builder(TokioExecutor::new()).build(https))
}

// ---- the CLI's operator requests ------------------------------------------------------

/// The CLI's client: no timeout and no body limit (an admin export can be long and large;
/// the operator interrupts a hung command).
fn cli_client() -> Result<Client, String> {
    Client::new(&[])
}

/// (status, body), or the sentence the CLI prints.
async fn cli_send(req: Request) -> Result<(u16, Vec<u8>), String> {
    let url = req.url().to_owned();
    match cli_client()?.send(req).await {
        Ok(a) => Ok((a.status, a.body)),
        Err(Error::Request(e)) => Err(format!("bad request {url}: {e}")),
        Err(Error::Unreachable(e)) => Err(format!("cannot reach {url}: {e}")),
        Err(e) => Err(e.to_string()),
    }
}

/// Send one admin request; returns (status, body). `path` is relative to `/admin/v1/`.
pub async fn admin_request(
    base: &str,
    token: &str,
    method: &str,
    path: &str,
    body: Option<(Vec<u8>, &str)>,
) -> Result<(u16, Vec<u8>), String> {
    let url = format!(
        "{}/admin/v1/{}",
        base.trim_end_matches('/'),
        path.trim_start_matches('/')
    );
    let mut req = Request::new(method, &url).header("authorization", format!("Bearer {token}"));
    if let Some((bytes, content_type)) = body {
        req = req.header("content-type", content_type).body(bytes);
    }
    cli_send(req).await
}

/// GET a URL; returns (status, body).
pub async fn get(url: &str) -> Result<(u16, Vec<u8>), String> {
    cli_send(Request::get(url)).await
}

/// POST a JSON body with extra headers; returns (status, body).
pub async fn post(
    url: &str,
    headers: &[(String, String)],
    body: Vec<u8>,
) -> Result<(u16, Vec<u8>), String> {
    cli_send(Request::post_json(url, body).headers(headers.iter().cloned())).await
}
