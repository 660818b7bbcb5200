//! The HTTP client every server command shares, and how API errors become
//! exit codes.

use std::time::Duration;

use anyhow::Result;
use serde_json::Value;

use super::{
    EXIT_AUTH, EXIT_CONFLICT, EXIT_FAILURE, EXIT_INVALID, EXIT_NOT_FOUND, EXIT_UNREACHABLE,
};

/// Default server URL.
pub(crate) const DEFAULT_SERVER: &str = "http://127.0.0.1:8080";

/// An error the server answered (or the lack of an answer), with its exit
/// code.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub(crate) struct ApiFailure {
    pub(crate) status: Option<u16>,
    pub(crate) code: String,
    pub(crate) message: String,
    pub(crate) details: Value,
}

impl ApiFailure {
    pub(crate) fn exit_code(&self) -> u8 {
        match self.status {
            None => EXIT_UNREACHABLE,
            Some(401 | 403) => EXIT_AUTH,
            Some(404) => EXIT_NOT_FOUND,
            Some(409) => EXIT_CONFLICT,
            Some(400 | 413 | 422) => EXIT_INVALID,
            Some(_) => EXIT_FAILURE,
        }
    }
}

/// Talks to `outpost serve`.
#[derive(Debug)]
pub(crate) struct Client {
    base: String,
    token: Option<String>,
    agent: ureq::Agent,
}

impl Client {
    /// `--server` / `OUTPOST_SERVER` (default [`DEFAULT_SERVER`]) and
    /// `--token` / `OUTPOST_TOKEN`.
    pub(crate) fn new(server: Option<&str>, token: Option<&str>) -> Client {
        let base = server
            .map(str::to_owned)
            .or_else(|| {
                std::env::var("OUTPOST_SERVER")
                    .ok()
                    .filter(|s| !s.is_empty())
            })
            .unwrap_or_else(|| DEFAULT_SERVER.into())
            .trim_end_matches('/')
            .to_owned();
        let token = token
            .map(str::to_owned)
            .or_else(|| std::env::var("OUTPOST_TOKEN").ok())
            .map(|t| t.trim().to_owned())
            .filter(|t| !t.is_empty());
        let agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(Duration::from_secs(600)))
            .build()
            .into();
        Client { base, token, agent }
    }

    fn auth(&self) -> Option<String> {
        self.token.as_ref().map(|t| format!("Bearer {t}"))
    }

    fn unreachable(&self, e: ureq::Error) -> anyhow::Error {
        anyhow::Error::new(ApiFailure {
            status: None,
            code: "unreachable".into(),
            message: format!(
                "cannot reach the server at {}: {e} (is `outpost serve` running? set --server or OUTPOST_SERVER)",
                self.base
            ),
            details: Value::Null,
        })
    }

    fn finish(&self, resp: Result<http_response::Response, ureq::Error>) -> Result<Value> {
        let mut resp = resp.map_err(|e| self.unreachable(e))?;
        let status = resp.status().as_u16();
        let text = resp
            .body_mut()
            .with_config()
            .limit(64 << 20)
            .read_to_string()
            .map_err(|e| self.unreachable(e))?;
        let body: Value = serde_json::from_str(&text).unwrap_or(Value::String(text));
        if (200..300).contains(&status) {
            return Ok(body);
        }
        let message = body
            .get("error")
            .and_then(Value::as_str)
            .map(str::to_owned)
            .unwrap_or_else(|| format!("the server answered {status}: {body}"));
        Err(anyhow::Error::new(ApiFailure {
            status: Some(status),
            code: body
                .get("code")
                .and_then(Value::as_str)
                .unwrap_or("error")
                .to_owned(),
            message,
            details: body.get("details").cloned().unwrap_or(Value::Null),
        }))
    }

    pub(crate) fn get(&self, path: &str) -> Result<Value> {
        let mut req = self.agent.get(format!("{}{path}", self.base));
        if let Some(a) = self.auth() {
            req = req.header("Authorization", a);
        }
        self.finish(req.call())
    }

    pub(crate) fn post(&self, path: &str, body: &Value) -> Result<Value> {
        let mut req = self.agent.post(format!("{}{path}", self.base));
        if let Some(a) = self.auth() {
            req = req.header("Authorization", a);
        }
        self.finish(req.send_json(body))
    }

    pub(crate) fn delete(&self, path: &str) -> Result<Value> {
        let mut req = self.agent.delete(format!("{}{path}", self.base));
        if let Some(a) = self.auth() {
            req = req.header("Authorization", a);
        }
        self.finish(req.call())
    }

    /// Sends raw bytes with `method` (`POST` or `PATCH`).
    pub(crate) fn send_bytes(&self, method: &str, path: &str, bytes: &[u8]) -> Result<Value> {
        let url = format!("{}{path}", self.base);
        let mut req = if method == "PATCH" {
            self.agent.patch(url)
        } else {
            self.agent.post(url)
        };
        req = req.header("Content-Type", "application/octet-stream");
        if let Some(a) = self.auth() {
            req = req.header("Authorization", a);
        }
        self.finish(req.send(bytes))
    }
}

/// The response type ureq returns.
mod http_response {
    pub(crate) type Response = ureq::http::Response<ureq::Body>;
}

/// Percent-encodes one path segment or query value.
pub(crate) fn enc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Prints rows as an aligned table under `headers`.
pub(crate) fn table(headers: &[&str], rows: &[Vec<String>]) {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.chars().count()).collect();
    for r in rows {
        for (w, c) in widths.iter_mut().zip(r) {
            *w = (*w).max(c.chars().count());
        }
    }
    let line = |cells: Vec<String>| {
        let s: Vec<String> = cells
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        println!("{}", s.join("  ").trim_end());
    };
    line(headers.iter().map(|h| h.to_uppercase()).collect());
    for r in rows {
        line(r.clone());
    }
}

/// A JSON value as a table cell.
pub(crate) fn cell(v: &Value) -> String {
    match v {
        Value::Null => "-".into(),
        Value::String(s) => s.clone(),
        Value::Array(a) if a.is_empty() => "-".into(),
        Value::Array(a) => a.iter().map(cell).collect::<Vec<_>>().join(","),
        other => other.to_string(),
    }
}
