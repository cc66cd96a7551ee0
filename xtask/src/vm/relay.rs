//! The byte relay QEMU runs for each guest connection of the fleet boot
//! (`guestfwd=...-cmd:<xtask> vm-relay ADDR KILL_FILE`). Not an HTTP client: it copies bytes
//! both ways and never looks at them, except to count those coming from the server.

use std::io::{Read, Write};
use std::net::{Shutdown, TcpStream};

use anyhow::Result;

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
