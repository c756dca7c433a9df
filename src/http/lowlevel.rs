//! JSON bodies for the errors hyper answers by itself. When a request cannot be parsed
//! (malformed request line, bad header name or value, a duplicate or negative
//! Content-Length, headers over the size limit, a request target too long), hyper writes
//! a canned response — a status line, `content-length: 0`, `date` — and closes, before any
//! of our code runs. This wraps the connection's IO and replaces exactly that response
//! (a 4xx/5xx head with an empty body and no Content-Type, which our own responses never
//! are) with the same status and our JSON error body. Where hyper closes without
//! answering (the header read timeout, an HTTP/2 preface), nothing is written and there is
//! nothing to rewrite; `contract/README.md` says so.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::contract::ApiError;

/// The connection's IO, with hyper's canned error responses turned into JSON ones.
pub struct JsonErrors<T> {
    inner: T,
    max_header_bytes: usize,
    /// A replacement being written, and how much of it is out.
    pending: Option<(Vec<u8>, usize)>,
}

impl<T> JsonErrors<T> {
    pub fn new(inner: T, max_header_bytes: usize) -> JsonErrors<T> {
        JsonErrors {
            inner,
            max_header_bytes,
            pending: None,
        }
    }
}

/// Our error for a status hyper chose.
fn error_for(status: u16, max_header_bytes: usize) -> ApiError {
    match status {
        431 => ApiError::new(
            431,
            "HEADERS_TOO_LARGE",
            format!("the request's headers exceed the limit of {max_header_bytes} bytes"),
        ),
        414 => ApiError::new(
            414,
            "URI_TOO_LONG",
            "the request target is longer than the server accepts",
        ),
        400 => ApiError::new(
            400,
            "MALFORMED_REQUEST",
            "the request is not valid HTTP/1.1: check the request line (method, target, \
             version), header names and values, and Content-Length",
        ),
        s => ApiError::new(s, "MALFORMED_REQUEST", "the request is not valid HTTP/1.1"),
    }
}

/// The JSON replacement for a canned hyper error head, or `None` for anything else.
fn rewrite(buf: &[u8], max_header_bytes: usize) -> Option<Vec<u8>> {
    let head = std::str::from_utf8(buf).ok()?;
    let rest = head
        .strip_prefix("HTTP/1.1 ")
        .or_else(|| head.strip_prefix("HTTP/1.0 "))?;
    if !head.ends_with("\r\n\r\n") || head.len() > 512 {
        return None;
    }
    let status: u16 = rest.get(..3)?.parse().ok()?;
    if !(400..600).contains(&status) {
        return None;
    }
    let mut lines = head.trim_end_matches("\r\n").split("\r\n");
    let status_line = lines.next()?;
    let mut kept = Vec::new();
    let mut empty_body = false;
    for line in lines {
        let lower = line.to_ascii_lowercase();
        if lower.starts_with("content-type:") || lower.starts_with("transfer-encoding:") {
            return None;
        }
        if lower == "content-length: 0" {
            empty_body = true;
        } else {
            kept.push(line);
        }
    }
    if !empty_body {
        return None;
    }
    let body = error_for(status, max_header_bytes).body();
    let mut out = format!(
        "{status_line}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n",
        body.len()
    );
    for line in kept {
        out.push_str(line);
        out.push_str("\r\n");
    }
    out.push_str("\r\n");
    let mut out = out.into_bytes();
    out.extend_from_slice(&body);
    Some(out)
}

impl<T: AsyncWrite + Unpin> JsonErrors<T> {
    /// Write the pending replacement; `Ready(Ok(consumed))` once all of it is out.
    fn drain(&mut self, cx: &mut Context<'_>, consumed: usize) -> Poll<io::Result<usize>> {
        while let Some((bytes, off)) = &mut self.pending {
            if *off == bytes.len() {
                self.pending = None;
                break;
            }
            match Pin::new(&mut self.inner).poll_write(cx, &bytes[*off..]) {
                Poll::Ready(Ok(0)) => return Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
                Poll::Ready(Ok(n)) => *off += n,
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => return Poll::Pending,
            }
        }
        Poll::Ready(Ok(consumed))
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for JsonErrors<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for JsonErrors<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        if self.pending.is_none() {
            match rewrite(buf, self.max_header_bytes) {
                Some(r) => self.pending = Some((r, 0)),
                None => return Pin::new(&mut self.inner).poll_write(cx, buf),
            }
        }
        self.drain(cx, buf.len())
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let mut nonempty = bufs.iter().filter(|b| !b.is_empty());
        if let (Some(only), None) = (nonempty.next(), nonempty.next()) {
            if self.pending.is_some() || rewrite(only, self.max_header_bytes).is_some() {
                return self.poll_write(cx, only);
            }
        }
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if self.pending.is_some() {
            if let Poll::Ready(Err(e)) = self.drain(cx, 0) {
                return Poll::Ready(Err(e));
            }
            if self.pending.is_some() {
                return Poll::Pending;
            }
        }
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_canned_error_heads_are_rewritten() {
        let canned = b"HTTP/1.1 431 Request Header Fields Too Large\r\ncontent-length: 0\r\ndate: Wed, 02 Dec 2026 08:00:00 GMT\r\n\r\n";
        let out = String::from_utf8(rewrite(canned, 16384).unwrap()).unwrap();
        let (head, body) = out.split_once("\r\n\r\n").unwrap();
        assert!(head.starts_with("HTTP/1.1 431 "));
        assert!(head.contains("content-type: application/json"));
        assert!(head.contains(&format!("content-length: {}", body.len())));
        assert!(head.contains("date: "));
        let v: serde_json::Value = serde_json::from_str(body).unwrap();
        assert_eq!(v["error"], "HEADERS_TOO_LARGE");
        // our own answers carry a content type; a 1xx or 2xx is never touched
        assert!(rewrite(b"HTTP/1.1 400 Bad Request\r\ncontent-type: application/json\r\ncontent-length: 0\r\n\r\n", 1).is_none());
        assert!(rewrite(b"HTTP/1.1 100 Continue\r\n\r\n", 1).is_none());
        assert!(rewrite(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n", 1).is_none());
        assert!(rewrite(b"{\"ok\":false}", 1).is_none());
    }
}
