//! A minimal HTTP/1.1 client over plain TCP for the xtask's own talks with a klive-server on
//! loopback (admin API calls of the fleet VM test, the server benchmark's load generator),
//! and the byte relay QEMU runs for each guest connection (`guestfwd=...-cmd:`).

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, TcpStream};
use std::time::Duration;

use anyhow::{Context, Result, bail};

/// One keep-alive connection to `host:port`.
#[derive(Debug)]
pub struct Conn {
    reader: BufReader<TcpStream>,
    writer: TcpStream,
    host: String,
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

impl Conn {
    pub fn open(addr: &str) -> Result<Conn> {
        let stream = TcpStream::connect(addr).with_context(|| format!("connecting to {addr}"))?;
        stream.set_nodelay(true).ok();
        stream.set_read_timeout(Some(Duration::from_secs(30))).ok();
        let writer = stream.try_clone().context("cloning a socket")?;
        Ok(Conn {
            reader: BufReader::new(stream),
            writer,
            host: addr.to_owned(),
        })
    }

    /// Sends one request and reads its answer (Content-Length bodies only, which is what
    /// axum sends for JSON).
    pub fn request(
        &mut self,
        method: &str,
        path: &str,
        bearer: Option<&str>,
        body: Option<&[u8]>,
    ) -> Result<Answer> {
        let mut head = format!("{method} {path} HTTP/1.1\r\nHost: {}\r\n", self.host);
        if let Some(b) = bearer {
            head.push_str(&format!("Authorization: Bearer {b}\r\n"));
        }
        let body = body.unwrap_or_default();
        if !body.is_empty() || method != "GET" {
            head.push_str(&format!(
                "Content-Type: application/json\r\nContent-Length: {}\r\n",
                body.len()
            ));
        }
        head.push_str("\r\n");
        let mut msg = head.into_bytes();
        msg.extend_from_slice(body);
        self.writer.write_all(&msg).context("sending a request")?;
        self.read_answer()
    }

    fn read_answer(&mut self) -> Result<Answer> {
        let mut line = String::new();
        if self
            .reader
            .read_line(&mut line)
            .context("reading a status line")?
            == 0
        {
            bail!("the server closed the connection");
        }
        let status: u16 = line
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .with_context(|| format!("bad status line {line:?}"))?;
        let mut length = None;
        let mut chunked = false;
        loop {
            line.clear();
            self.reader
                .read_line(&mut line)
                .context("reading headers")?;
            let l = line.trim_end();
            if l.is_empty() {
                break;
            }
            if let Some((k, v)) = l.split_once(':') {
                let k = k.trim().to_ascii_lowercase();
                if k == "content-length" {
                    length = v.trim().parse::<usize>().ok();
                } else if k == "transfer-encoding" && v.trim().eq_ignore_ascii_case("chunked") {
                    chunked = true;
                }
            }
        }
        let mut body = Vec::new();
        if chunked {
            loop {
                line.clear();
                self.reader.read_line(&mut line)?;
                let size = usize::from_str_radix(line.trim(), 16)
                    .with_context(|| format!("bad chunk size {line:?}"))?;
                let mut chunk = vec![0; size + 2];
                self.reader.read_exact(&mut chunk)?;
                if size == 0 {
                    break;
                }
                body.extend_from_slice(&chunk[..size]);
            }
        } else if let Some(n) = length {
            body.resize(n, 0);
            self.reader
                .read_exact(&mut body)
                .context("reading a body")?;
        }
        Ok(Answer { status, body })
    }
}

/// One request on a fresh connection.
pub fn call(
    addr: &str,
    method: &str,
    path: &str,
    bearer: Option<&str>,
    body: Option<&[u8]>,
) -> Result<Answer> {
    Conn::open(addr)?.request(method, path, bearer, body)
}

/// `xtask vm-relay ADDR [KILL_FILE]`: QEMU starts this for every guest connection to a
/// `guestfwd` address, with the connection as stdin and stdout (and stderr, so nothing may be
/// printed). It copies bytes both ways between that and a TCP connection to `addr` on the
/// host's loopback. If `addr` does not answer (the server is down), it exits at once: the
/// guest sees its connection closed.
///
/// `KILL_FILE` arms a crash in the middle of a download: when that file exists (it holds
/// `<bytes> <pid>`) and this connection has carried more than `<bytes>` from the server, the
/// relay claims the file (renaming it to `<KILL_FILE>.done`, so only one relay acts) and
/// kills the server process `<pid>` with SIGKILL.
pub fn relay(addr: &str, kill_file: Option<&std::path::Path>) -> Result<()> {
    let upstream = TcpStream::connect(addr)?;
    let armed: Option<(u64, String)> = kill_file
        .and_then(|f| std::fs::read_to_string(f).ok())
        .and_then(|t| {
            let mut w = t.split_whitespace();
            Some((w.next()?.parse().ok()?, w.next()?.to_owned()))
        });
    let mut to_server = upstream.try_clone()?;
    let mut from_server = upstream;
    let up = std::thread::spawn(move || {
        let mut stdin = std::io::stdin().lock();
        let _ = std::io::copy(&mut stdin, &mut to_server);
        let _ = to_server.shutdown(Shutdown::Write);
    });
    let mut stdout = std::io::stdout().lock();
    let mut buf = [0u8; 16 * 1024];
    let mut carried = 0u64;
    loop {
        match from_server.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                carried += n as u64;
                if stdout
                    .write_all(&buf[..n])
                    .and_then(|()| stdout.flush())
                    .is_err()
                {
                    break;
                }
                if let (Some((limit, pid)), Some(file)) = (&armed, kill_file)
                    && carried > *limit
                    && std::fs::rename(file, file.with_extension("done")).is_ok()
                {
                    let _ = std::process::Command::new("kill")
                        .args(["-9", pid])
                        .stdout(std::process::Stdio::null())
                        .stderr(std::process::Stdio::null())
                        .status();
                    break;
                }
            }
        }
    }
    drop(up);
    Ok(())
}
