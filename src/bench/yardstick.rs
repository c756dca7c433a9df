//! The yardstick: a bare hyper server that reads the body, parses it as JSON (as the
//! service must), and answers a fixed JSON body that satisfies every flow of the load
//! generator. What hyper alone does on this machine, under the same load.

use std::convert::Infallible;

use http_body_util::{BodyExt, Full};
use hyper::body::{Bytes, Incoming};
use hyper::{Request, Response};

const ANSWER: &[u8] = br#"{"ok":true,"voucherNr":"BENCH","discountAmountCents":100,"expiresAt":"2026-11-23T12:00:00Z","providerRef":"kph_0","pointsAwarded":1,"newBalance":1,"tierChanged":false}"#;

async fn answer(req: Request<Incoming>) -> Result<Response<Full<Bytes>>, Infallible> {
    let body = req
        .into_body()
        .collect()
        .await
        .map(|c| c.to_bytes())
        .unwrap_or_default();
    let parsed = serde_json::from_slice::<serde_json::Value>(&body).is_ok();
    let mut r = Response::new(Full::new(Bytes::from_static(if parsed {
        ANSWER
    } else {
        br#"{"ok":false}"#
    })));
    r.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("application/json"),
    );
    Ok(r)
}

/// Serve on an ephemeral loopback port until killed; prints the address first.
pub async fn serve() -> std::io::Result<()> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    {
        use std::io::Write;
        let mut out = std::io::stdout().lock();
        let _ = writeln!(
            out,
            "yardstick listening on http://{}",
            listener.local_addr()?
        );
        let _ = out.flush();
    }
    loop {
        let (stream, _) = listener.accept().await?;
        let _ = stream.set_nodelay(true);
        tokio::spawn(async move {
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(
                    hyper_util::rt::TokioIo::new(stream),
                    hyper::service::service_fn(answer),
                )
                .await;
        });
    }
}
