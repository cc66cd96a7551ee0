//! Booting the guest in QEMU with a wall-clock limit, capturing its serial console.

use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};

/// How QEMU runs the guest's CPU.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Accel {
    Kvm,
    Tcg,
}

impl Accel {
    /// KVM when it demonstrably boots this kernel, else TCG.
    ///
    /// `/dev/kvm` existing is not enough: on some hosts (nested virtualisation) QEMU aborts
    /// on an MSR assertion or hangs. The probe boots the kernel without an initramfs under
    /// KVM for at most [`KVM_PROBE_LIMIT`]; reaching the kernel's "no root filesystem" panic
    /// proves KVM works. `KLIVE_VM_ACCEL=tcg|kvm` skips the probe.
    pub fn pick(kernel: &Path) -> Accel {
        match std::env::var("KLIVE_VM_ACCEL").as_deref() {
            Ok("tcg") => return Accel::Tcg,
            Ok("kvm") => return Accel::Kvm,
            _ => {}
        }
        if OpenOptions::new()
            .read(true)
            .write(true)
            .open("/dev/kvm")
            .is_err()
        {
            return Accel::Tcg;
        }
        let started = Instant::now();
        let works = probe_kvm(kernel).unwrap_or(false);
        eprintln!(
            "xtask: KVM probe {} in {:.1} s: using {}",
            if works { "booted" } else { "failed" },
            started.elapsed().as_secs_f64(),
            if works {
                "KVM"
            } else {
                "TCG (software emulation)"
            }
        );
        if works { Accel::Kvm } else { Accel::Tcg }
    }

    fn args(self) -> &'static [&'static str] {
        match self {
            Accel::Kvm => &["-accel", "kvm", "-cpu", "host"],
            Accel::Tcg => &["-accel", "tcg", "-cpu", "max"],
        }
    }
}

impl std::fmt::Display for Accel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Accel::Kvm => "KVM",
            Accel::Tcg => "TCG",
        })
    }
}

const KVM_PROBE_LIMIT: Duration = Duration::from_secs(10);

fn probe_kvm(kernel: &Path) -> Result<bool> {
    let mut cmd = Command::new("qemu-system-x86_64");
    cmd.args(Accel::Kvm.args())
        .args(["-m", "256", "-nographic", "-no-reboot", "-kernel"])
        .arg(kernel)
        .args(["-append", "console=ttyS0 panic=-1 loglevel=3"]);
    let (child, lines) = spawn(cmd)?;
    let outcome = collect(child, &lines, KVM_PROBE_LIMIT, |_| {})?;
    Ok(!outcome.timed_out && outcome.lines.iter().any(|l| l.contains("Kernel panic")))
}

/// One boot of the guest.
#[derive(Debug)]
pub struct Boot<'a> {
    pub accel: Accel,
    pub kernel: &'a Path,
    pub initrd: &'a Path,
    pub disk: &'a Path,
    pub append: String,
    pub log: PathBuf,
    pub limit: Duration,
    /// QEMU `-nic` value; `None` gives the guest no network.
    pub nic: Option<String>,
}

/// What the console showed.
#[derive(Debug)]
pub struct Outcome {
    pub lines: Vec<String>,
    pub timed_out: bool,
    pub elapsed: Duration,
}

impl Boot<'_> {
    /// Boots and returns the console lines, calling `each_line` as they arrive. QEMU is
    /// killed when the limit passes.
    pub fn run(&self, each_line: impl FnMut(&str)) -> Result<Outcome> {
        let mut cmd = Command::new("qemu-system-x86_64");
        cmd.args(self.accel.args())
            .args(["-m", "512", "-nographic", "-no-reboot", "-nic"])
            .arg(self.nic.as_deref().unwrap_or("none"))
            .arg("-kernel")
            .arg(self.kernel)
            .arg("-initrd")
            .arg(self.initrd)
            .arg("-drive")
            .arg(format!("file={},format=raw,if=virtio", self.disk.display()))
            .arg("-append")
            .arg(&self.append);
        let (child, lines) = spawn(cmd)?;
        let mut log = File::create(&self.log)
            .with_context(|| format!("creating the console log {}", self.log.display()))?;
        let mut each_line = each_line;
        let outcome = collect(child, &lines, self.limit, |line| {
            // The log is a convenience: a failed write must not stop the boot.
            let _ = writeln!(log, "{line}");
            each_line(line);
        })?;
        if outcome.timed_out {
            let _ = writeln!(log, "xtask: killed QEMU after {} s", self.limit.as_secs());
        }
        Ok(outcome)
    }
}

/// Starts QEMU with stdin closed and both output streams read into one channel of lines.
fn spawn(mut cmd: Command) -> Result<(Child, mpsc::Receiver<String>)> {
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("starting qemu-system-x86_64: install qemu-system-x86")?;
    let (tx, rx) = mpsc::channel();
    if let Some(stdout) = child.stdout.take() {
        forward_lines(stdout, tx.clone());
    }
    if let Some(stderr) = child.stderr.take() {
        forward_lines(stderr, tx);
    }
    Ok((child, rx))
}

fn forward_lines(stream: impl Read + Send + 'static, tx: mpsc::Sender<String>) {
    thread::spawn(move || {
        let mut reader = BufReader::new(stream);
        let mut buf = Vec::new();
        loop {
            buf.clear();
            match reader.read_until(b'\n', &mut buf) {
                Ok(0) | Err(_) => break,
                Ok(_) => {
                    if tx.send(clean_line(&buf)).is_err() {
                        break;
                    }
                }
            }
        }
    });
}

/// A console line without its line ending, carriage returns and terminal escape sequences
/// (SeaBIOS resets and clears the screen in front of the kernel's first line).
pub fn clean_line(raw: &[u8]) -> String {
    let text = String::from_utf8_lossy(raw);
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        match c {
            // ESC c (reset) and the like are two characters; CSI sequences (ESC [) run to
            // a final byte in @..~.
            '\x1b' => {
                if chars.next() == Some('[') {
                    for c in chars.by_ref() {
                        if ('@'..='~').contains(&c) {
                            break;
                        }
                    }
                }
            }
            '\r' | '\n' => {}
            c => out.push(c),
        }
    }
    out
}

fn collect(
    mut child: Child,
    lines: &mpsc::Receiver<String>,
    limit: Duration,
    mut each_line: impl FnMut(&str),
) -> Result<Outcome> {
    let started = Instant::now();
    let deadline = started + limit;
    let mut seen = Vec::new();
    let mut timed_out = false;
    loop {
        let now = Instant::now();
        if now >= deadline {
            timed_out = true;
            break;
        }
        match lines.recv_timeout(deadline - now) {
            Ok(line) => {
                each_line(&line);
                seen.push(line);
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {
                timed_out = true;
                break;
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
        }
    }
    if timed_out {
        // Already exited is fine: kill only fails then.
        let _ = child.kill();
    }
    child.wait().context("waiting for qemu-system-x86_64")?;
    Ok(Outcome {
        lines: seen,
        timed_out,
        elapsed: started.elapsed(),
    })
}

#[cfg(test)]
mod tests {
    use super::clean_line;

    #[test]
    fn escape_sequences_and_line_endings_are_dropped() {
        assert_eq!(
            clean_line(b"\x1bc\x1b[?7l\x1b[2JKLIVE-PHASE-START 1\r\n"),
            "KLIVE-PHASE-START 1"
        );
        assert_eq!(clean_line(b"plain \xff text\n"), "plain \u{fffd} text");
    }
}
