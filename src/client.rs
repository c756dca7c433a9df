//! A small HTTP client behind the CLI's operator commands: the admin API
//! (`karma-provider admin …`) and hand-made webhook deliveries (`webhook send`). The store belongs to the running server, so operator tools
//! go through its admin API rather than opening the data directory.

use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

/// A hyper client for `http://` and `https://` URLs; HTTPS is verified against the public
/// web roots (Mozilla's, bundled) plus `extra_roots` (DER certificates).
pub type HttpsClient = Client<
    hyper_rustls::HttpsConnector<hyper_util::client::legacy::connect::HttpConnector>,
    Full<Bytes>,
>;

pub fn https_client(extra_roots: &[Vec<u8>]) -> Result<HttpsClient, String> {
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
    Ok(Client::builder(TokioExecutor::new()).build(https))
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
    let mut b = hyper::Request::builder()
        .method(method.to_ascii_uppercase().as_str())
        .uri(&url)
        .header(hyper::header::AUTHORIZATION, format!("Bearer {token}"));
    let payload = match body {
        Some((bytes, content_type)) => {
            b = b.header(hyper::header::CONTENT_TYPE, content_type);
            bytes
        }
        None => Vec::new(),
    };
    send(b, &url, payload).await
}

/// GET a URL; returns (status, body).
pub async fn get(url: &str) -> Result<(u16, Vec<u8>), String> {
    send(
        hyper::Request::builder().method("GET").uri(url),
        url,
        Vec::new(),
    )
    .await
}

/// POST a JSON body with extra headers; returns (status, body).
pub async fn post(
    url: &str,
    headers: &[(String, String)],
    body: Vec<u8>,
) -> Result<(u16, Vec<u8>), String> {
    let mut b = hyper::Request::builder()
        .method("POST")
        .uri(url)
        .header(hyper::header::CONTENT_TYPE, "application/json");
    for (k, v) in headers {
        b = b.header(k.as_str(), v.as_str());
    }
    send(b, url, body).await
}

async fn send(
    b: hyper::http::request::Builder,
    url: &str,
    body: Vec<u8>,
) -> Result<(u16, Vec<u8>), String> {
    let req = b
        .body(Full::new(Bytes::from(body)))
        .map_err(|e| format!("bad request {url}: {e}"))?;
    let client: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
    let resp = client
        .request(req)
        .await
        .map_err(|e| format!("cannot reach {url}: {e}"))?;
    let status = resp.status().as_u16();
    let bytes = resp
        .into_body()
        .collect()
        .await
        .map_err(|e| e.to_string())?
        .to_bytes()
        .to_vec();
    Ok((status, bytes))
}
