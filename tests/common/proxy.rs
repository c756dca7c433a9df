//! A proxy in front of a real server that lets a test meddle with each exchange: answer a
//! request itself, rewrite it, wait, or forward it and rewrite the answer (the wrong
//! providers of `tests/wrong_providers.rs` and `tests/simulate.rs`).

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;

/// Status and body bytes.
pub type Answer = (u16, Vec<u8>);

type Client = hyper_util::client::legacy::Client<
    hyper_util::client::legacy::connect::HttpConnector,
    Full<Bytes>,
>;

/// One request that reached the proxy.
pub struct Exchange {
    pub path: String,
    pub body: Vec<u8>,
    parts: hyper::http::request::Parts,
    client: Client,
    target: String,
}

impl Exchange {
    /// Send `body` (the request's own or a rewritten one) on to the server, with the
    /// request's method and headers.
    pub async fn forward(&self, body: Vec<u8>) -> Answer {
        let headers: Vec<(&str, &str)> = self
            .parts
            .headers
            .iter()
            .filter(|(k, _)| *k != "content-length")
            .filter_map(|(k, v)| Some((k.as_str(), v.to_str().ok()?)))
            .collect();
        let url = format!("{}{}", self.target, self.path);
        let r = super::send(
            &self.client,
            self.parts.method.as_str(),
            &url,
            &headers,
            body,
        )
        .await;
        (r.status, r.bytes)
    }
}

/// What the proxy does with each exchange.
pub type Handler =
    Arc<dyn Fn(Exchange) -> Pin<Box<dyn Future<Output = Answer> + Send>> + Send + Sync>;

/// Start a proxy in front of `target` (a base URL); its own base URL.
pub async fn start(target: String, handler: Handler) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http::<Full<Bytes>>();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let (client, target, handler) = (client.clone(), target.clone(), handler.clone());
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(
                    move |req: hyper::Request<hyper::body::Incoming>| {
                        let (client, target, handler) =
                            (client.clone(), target.clone(), handler.clone());
                        async move {
                            let (parts, body) = req.into_parts();
                            let body = body.collect().await.unwrap().to_bytes().to_vec();
                            let path = parts.uri.path().to_string();
                            let ex = Exchange {
                                path,
                                body,
                                parts,
                                client,
                                target,
                            };
                            let ans = handler(ex).await;
                            let mut r = hyper::Response::new(Full::new(Bytes::from(ans.1)));
                            *r.status_mut() = hyper::StatusCode::from_u16(ans.0).unwrap();
                            Ok::<_, std::convert::Infallible>(r)
                        }
                    },
                );
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    format!("http://{addr}")
}
