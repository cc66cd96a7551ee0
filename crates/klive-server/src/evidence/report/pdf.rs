//! The PDF of the report, printed by headless Chromium.

use std::path::{Path, PathBuf};

use klive_format::digest::hex;

/// Finds Chromium for the PDF: `KLIVE_CHROMIUM`, else `chromium` / `chromium-browser` on PATH.
pub fn find_chromium() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("KLIVE_CHROMIUM") {
        return Some(PathBuf::from(p));
    }
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .flat_map(|d| ["chromium", "chromium-browser"].map(|n| d.join(n)))
        .find(|p| p.is_file())
}

/// Headless Chromium printing a report to PDF; killed if dropped before it finished.
#[derive(Debug)]
pub struct PdfJob {
    child: Option<std::process::Child>,
    profile: PathBuf,
    pdf: PathBuf,
    deadline: std::time::Instant,
}

/// Starts printing `html` to `pdf` with headless Chromium (at most 120 s).
pub fn start_pdf(chromium: &Path, html: &Path, pdf: &Path) -> Result<PdfJob, String> {
    let profile = tempfile_dir().map_err(|e| format!("creating a Chromium profile dir: {e}"))?;
    let child = std::process::Command::new(chromium)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--no-first-run",
            "--no-pdf-header-footer",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .arg(format!("--print-to-pdf={}", pdf.display()))
        .arg(format!("file://{}", html.display()))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn();
    match child {
        Ok(child) => Ok(PdfJob {
            child: Some(child),
            profile,
            pdf: pdf.to_path_buf(),
            deadline: std::time::Instant::now() + std::time::Duration::from_secs(120),
        }),
        Err(e) => {
            let _ = std::fs::remove_dir_all(&profile);
            Err(format!("starting {}: {e}", chromium.display()))
        }
    }
}

impl PdfJob {
    /// Waits for Chromium; the error says why there is no PDF.
    pub fn wait(mut self) -> Result<(), String> {
        let Some(mut child) = self.child.take() else {
            return Err("chromium was already waited for".into());
        };
        let status = loop {
            match child.try_wait() {
                Ok(Some(s)) => break s,
                Ok(None) if std::time::Instant::now() < self.deadline => {
                    std::thread::sleep(std::time::Duration::from_millis(20))
                }
                Ok(None) => {
                    let _ = child.kill();
                    let _ = child.wait();
                    return Err("chromium did not finish within 120 s".into());
                }
                Err(e) => return Err(format!("waiting for chromium: {e}")),
            }
        };
        if !status.success() || !self.pdf.is_file() {
            return Err(format!(
                "chromium exited with {status} without writing the PDF"
            ));
        }
        Ok(())
    }
}

impl Drop for PdfJob {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        let _ = std::fs::remove_dir_all(&self.profile);
    }
}

/// Prints `html` to `pdf` with headless Chromium; the error says why when it cannot.
pub fn print_pdf(chromium: &Path, html: &Path, pdf: &Path) -> Result<(), String> {
    start_pdf(chromium, html, pdf)?.wait()
}

fn tempfile_dir() -> std::io::Result<PathBuf> {
    let mut raw = [0u8; 8];
    getrandom::fill(&mut raw).map_err(std::io::Error::other)?;
    let dir = std::env::temp_dir().join(format!("klive-chromium-{}", hex(&raw)));
    std::fs::create_dir(&dir)?;
    Ok(dir)
}
