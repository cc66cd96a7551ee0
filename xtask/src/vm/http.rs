//! HTTP calls of the xtask to a klive-server or moto on loopback (the fleet VM test's admin
//! API calls, the server benchmark's load generator, moto's bucket), through `ureq`: plain
//! HTTP/1.1, keep-alive connections, every status an answer rather than an error.

use std::time::Duration;

use anyhow::{Context, Result};
use ureq::Agent;
use ureq::http::Request;

/// Longest wait for an answer's head, and then for its body.
const TIMEOUT: Duration = Duration::from_secs(30);

/// A client of one server at `host:port`; it keeps its connection alive between requests
/// (one `Client` per load thread gives one keep-alive connection per thread).
#[derive(Debug)]
pub struct Client {
    agent: Agent,
    base: String,
}

/// An answer: status and body.
#[derive(Debug)]
pub struct Answer {
    pub status: u16,
    pub body: Vec<u8>,
}

impl Answer {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

impl Client {
    pub fn new(addr: &str) -> Client {
        let agent = Agent::config_builder()
            // An error status is an answer the caller looks at, not a transport failure.
            .http_status_as_error(false)
            .timeout_recv_response(Some(TIMEOUT))
            .timeout_recv_body(Some(TIMEOUT))
            .build()
            .new_agent();
        Client {
            agent,
            base: format!("http://{addr}"),
        }
    }

    /// Sends one request (a JSON body when given, with the bearer token when given) and
    /// reads its whole answer.
    pub fn request(
        &self,
        method: &str,
        path: &str,
        bearer: Option<&str>,
        body: Option<&[u8]>,
    ) -> Result<Answer> {
        let url = format!("{}{path}", self.base);
        let mut req = Request::builder().method(method).uri(&url);
        if let Some(token) = bearer {
            req = req.header("Authorization", format!("Bearer {token}"));
        }
        let sent = match body {
            Some(body) => self.agent.run(
                req.header("Content-Type", "application/json")
                    .body(body)
                    .with_context(|| format!("building {method} {url}"))?,
            ),
            None => self.agent.run(
                req.body(())
                    .with_context(|| format!("building {method} {url}"))?,
            ),
        };
        let mut answer = sent.with_context(|| format!("{method} {url}"))?;
        let status = answer.status().as_u16();
        let body = answer
            .body_mut()
            .with_config()
            .limit(u64::MAX)
            .read_to_vec()
            .with_context(|| format!("reading the answer to {method} {url}"))?;
        Ok(Answer { status, body })
    }
}

/// One request with a client of its own.
pub fn call(
    addr: &str,
    method: &str,
    path: &str,
    bearer: Option<&str>,
    body: Option<&[u8]>,
) -> Result<Answer> {
    Client::new(addr).request(method, path, bearer, body)
}

#[cfg(test)]
mod tests {
    use std::io::{BufRead, BufReader, Read, Write};
    use std::net::TcpListener;

    use super::*;

    /// A one-connection server: answers each request on it with `404` and the request's
    /// method, path, authorization and body, so the test sees what was sent and that the
    /// connection was kept alive.
    fn echo_server(requests: usize) -> String {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        std::thread::spawn(move || {
            let (stream, _) = listener.accept().unwrap();
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            let mut writer = stream;
            for _ in 0..requests {
                let (mut head, mut line, mut length) = (String::new(), String::new(), 0);
                reader.read_line(&mut head).unwrap();
                let mut auth = String::new();
                loop {
                    line.clear();
                    reader.read_line(&mut line).unwrap();
                    let l = line.trim_end().to_ascii_lowercase();
                    if l.is_empty() {
                        break;
                    }
                    if let Some(v) = l.strip_prefix("content-length:") {
                        length = v.trim().parse().unwrap();
                    }
                    if l.starts_with("authorization:") {
                        auth = line["authorization:".len()..].trim().to_owned();
                    }
                }
                let mut body = vec![0; length];
                reader.read_exact(&mut body).unwrap();
                let text = format!(
                    "{} {auth} {}",
                    head.trim_end(),
                    String::from_utf8_lossy(&body)
                );
                write!(
                    writer,
                    "HTTP/1.1 404 Not Found\r\nContent-Length: {}\r\n\r\n{text}",
                    text.len()
                )
                .unwrap();
            }
        });
        addr
    }

    #[test]
    fn statuses_are_answers_and_the_connection_is_reused() {
        let addr = echo_server(2);
        let client = Client::new(&addr);
        let a = client
            .request("POST", "/api/v1/x", Some("kla_t"), Some(b"{\"a\":1}"))
            .unwrap();
        assert_eq!(a.status, 404);
        assert_eq!(a.text(), "POST /api/v1/x HTTP/1.1 Bearer kla_t {\"a\":1}");
        // The server accepts one connection only: a second request works only over it.
        let a = client.request("GET", "/h", None, None).unwrap();
        assert_eq!(a.text(), "GET /h HTTP/1.1  ");
    }
}
