//! The dashboard's browser test: installs Debian's `chromium` and playwright-core (npm, into
//! `target/browser-test/`, no browser download), then runs the ignored test
//! `browser::dashboard_in_a_real_browser` of `klive-server --test it`, which seeds a fleet, serves the dashboard on 127.0.0.1 and
//! drives it with `crates/klive-server/tests/it/browser/dashboard.mjs`. Screenshots and the
//! downloaded evidence pack stay in `target/browser-artefacts/`.

use std::path::Path;
use std::process::Command;

use anyhow::{Context, Result};

use crate::deps;

const PLAYWRIGHT: &str = "playwright-core@1.65.1";

pub fn test(root: &Path) -> Result<()> {
    deps::ensure_apt(&["chromium", "nodejs"])?;
    let dir = root.join("target").join("browser-test");
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    if !dir
        .join("node_modules/playwright-core/package.json")
        .is_file()
    {
        eprintln!("xtask: installing {PLAYWRIGHT} into {}", dir.display());
        let mut npm = Command::new("npm");
        npm.args([
            "install",
            "--no-audit",
            "--no-fund",
            "--no-save",
            PLAYWRIGHT,
        ])
        .current_dir(&dir)
        // playwright-core never downloads browsers; this keeps its postinstall quiet too
        .env("PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD", "1");
        crate::run(npm).context("installing playwright-core with npm: check the npm registry")?;
    }
    let artefacts = root.join("target").join("browser-artefacts");
    let mut cmd = crate::cargo(&[
        "test",
        "-p",
        "klive-server",
        "--test",
        "it",
        "browser::",
        "--",
        "--ignored",
        "--nocapture",
    ]);
    cmd.env("KLIVE_PLAYWRIGHT_DIR", &dir)
        .env("KLIVE_CHROMIUM", "/usr/bin/chromium")
        .env("KLIVE_BROWSER_ARTEFACTS", &artefacts);
    crate::run(cmd).context("the dashboard browser test failed")?;
    eprintln!(
        "xtask: browser test passed; screenshots and the evidence pack are in {}",
        artefacts.display()
    );
    Ok(())
}
