//! `[server]`: the listening address and the HTTP limits and timeouts.

use std::time::Duration;

use serde::Deserialize;

use super::loader::{ConfigError, Loader};

#[derive(Debug, Clone)]
pub struct ServerConfig {
    pub listen: String,
    pub max_body_bytes: usize,
    pub max_header_bytes: usize,
    pub header_read_timeout: Duration,
    pub body_read_timeout: Duration,
    pub shutdown_grace: Duration,
    pub max_connections: usize,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawServer {
    listen: Option<String>,
    max_body_bytes: Option<usize>,
    max_header_bytes: Option<usize>,
    header_read_timeout: Option<String>,
    body_read_timeout: Option<String>,
    shutdown_grace: Option<String>,
    max_connections: Option<usize>,
}

pub(super) fn server(cx: &Loader<'_>, s: &RawServer) -> Result<ServerConfig, ConfigError> {
    let server = ServerConfig {
        listen: s.listen.clone().unwrap_or_else(|| "127.0.0.1:8080".into()),
        max_body_bytes: s.max_body_bytes.unwrap_or(65_536),
        max_header_bytes: s.max_header_bytes.unwrap_or(16_384),
        header_read_timeout: cx.dur(
            "server.header_read_timeout",
            &s.header_read_timeout,
            Duration::from_secs(10),
        )?,
        body_read_timeout: cx.dur(
            "server.body_read_timeout",
            &s.body_read_timeout,
            Duration::from_secs(10),
        )?,
        shutdown_grace: cx.dur(
            "server.shutdown_grace",
            &s.shutdown_grace,
            Duration::from_secs(25),
        )?,
        max_connections: s.max_connections.unwrap_or(4096),
    };
    if server.listen.parse::<std::net::SocketAddr>().is_err() {
        return Err(cx.err(
            "server.listen",
            format!("{:?} is not an address like 127.0.0.1:8080", server.listen),
        ));
    }
    if !(64..=16 * 1024 * 1024).contains(&server.max_body_bytes) {
        return Err(cx.err("server.max_body_bytes", "must be between 64 and 16777216"));
    }
    if !(8192..=1024 * 1024).contains(&server.max_header_bytes) {
        return Err(cx.err(
            "server.max_header_bytes",
            "must be between 8192 and 1048576",
        ));
    }
    Ok(server)
}
