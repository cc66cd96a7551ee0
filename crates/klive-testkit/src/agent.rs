//! A host for the agent's tests: the fake kernel in a temp dir, a state directory, a
//! directory for modules, and the `klive` CLI run in-process against them over a network the
//! test chooses.

use std::ffi::OsString;
use std::path::{Path, PathBuf};

use klive_agent::cli;
use klive_agent::transport::{Connector, UreqConnector};
use klive_kernel::fake::{Call, FakeKernel};
use klive_kernel::{Kernel, livepatch};

pub use klive_kernel::fake::{FAKE_BUILD_ID, FAKE_RELEASE, FAKE_VERMAGIC};

use crate::elf::ModuleBuilder;

/// One host: everything lives in a temp dir removed when the host is dropped.
#[derive(Debug)]
pub struct Host<N: Connector = UreqConnector> {
    pub kernel: FakeKernel,
    /// `klive --state-dir`.
    pub state: PathBuf,
    /// Where [`Host::module`] writes modules (an empty directory at the start).
    pub modules: PathBuf,
    /// The network `klive` reaches servers through.
    pub net: N,
    _dir: tempfile::TempDir,
}

impl Host {
    /// A host whose network is the real one (`klive`'s default).
    pub fn new() -> Self {
        Self::with_net(UreqConnector::default())
    }

    /// `path` as a command-line argument.
    pub fn p(path: &Path) -> &str {
        path.to_str().expect("test paths are UTF-8")
    }
}

impl Default for Host {
    fn default() -> Self {
        Self::new()
    }
}

impl<N: Connector> Host<N> {
    pub fn with_net(net: N) -> Self {
        let dir = tempfile::tempdir().expect("creating the host's temp dir");
        let kernel = FakeKernel::new(&dir.path().join("root")).expect("setting up the fake kernel");
        let modules = dir.path().join("modules");
        std::fs::create_dir_all(&modules).expect("creating the modules dir");
        Host {
            kernel,
            state: dir.path().join("state"),
            modules,
            net,
            _dir: dir,
        }
    }

    /// Runs `klive --state-dir STATE ARGS` in-process; returns (exit code, stdout, stderr).
    pub fn klive(&self, args: &[&str]) -> (i32, String, String) {
        let mut argv: Vec<OsString> = vec![
            "klive".into(),
            "--state-dir".into(),
            self.state.clone().into(),
        ];
        argv.extend(args.iter().map(OsString::from));
        let (mut out, mut err) = (Vec::new(), Vec::new());
        let code = cli::run_with(argv, &self.kernel, &self.net, &mut out, &mut err);
        (
            code,
            String::from_utf8(out).expect("klive's stdout is UTF-8"),
            String::from_utf8(err).expect("klive's stderr is UTF-8"),
        )
    }

    /// [`Host::klive`] with `--json`: the exit code and the parsed stdout.
    pub fn json(&self, args: &[&str]) -> (i32, serde_json::Value) {
        let mut a = args.to_vec();
        a.push("--json");
        let (code, out, err) = self.klive(&a);
        let v = serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out} / {err}"));
        (code, v)
    }

    /// Writes klive module `name` at `level` for the fake kernel into [`Host::modules`].
    pub fn module(&self, name: &str, level: u32) -> PathBuf {
        write_klive_module(&self.modules, name, level, FAKE_BUILD_ID)
    }

    /// The livepatches the kernel shows, in sysfs order.
    pub fn patch_names(&self) -> Vec<String> {
        livepatch::patches(self.kernel.root())
            .expect("reading the fake livepatch dir")
            .into_iter()
            .map(|p| p.name)
            .collect()
    }

    /// The klive level `klive status` reports.
    pub fn level(&self) -> Option<u64> {
        let (_, v) = self.json(&["status"]);
        v["klive"]["level"].as_u64()
    }

    /// The images the fake kernel was asked to load, oldest first. Asserts that the file
    /// named for the `finit_module` fallback holds the same bytes.
    pub fn loads(&self) -> Vec<Vec<u8>> {
        self.kernel
            .calls()
            .into_iter()
            .filter_map(|c| match c {
                Call::Load { image, source } => {
                    assert_eq!(
                        std::fs::read(&source).expect("reading the load's source file"),
                        image,
                        "{source}"
                    );
                    Some(image)
                }
                _ => None,
            })
            .collect()
    }

    /// The last module the fake kernel was asked to load is exactly `published`.
    pub fn assert_last_load_is(&self, published: &[u8]) {
        let loads = self.loads();
        let last = loads.last().expect("a module was loaded");
        assert_eq!(
            klive_format::digest::sha256_hex(last),
            klive_format::digest::sha256_hex(published),
            "the kernel got other bytes"
        );
    }

    /// The kernel forgets module `name` and its livepatch (both must be there), as a reboot
    /// would.
    pub fn forget(&self, name: &str) {
        for dir in [
            format!("/sys/kernel/livepatch/{name}"),
            format!("/sys/module/{name}"),
        ] {
            std::fs::remove_dir_all(self.kernel.root().path(&dir))
                .unwrap_or_else(|e| panic!("removing {dir}: {e}"));
        }
    }

    /// A reboot (clean or not, the fake cannot tell): the kernel forgets every module and
    /// gets a new boot id; `uptime` seconds have passed since it started.
    pub fn reboot(&self, boot_id: &str, uptime: u64) {
        for name in self.patch_names() {
            let _ = std::fs::remove_dir_all(
                self.kernel
                    .root()
                    .path(&format!("/sys/kernel/livepatch/{name}")),
            );
            let _ =
                std::fs::remove_dir_all(self.kernel.root().path(&format!("/sys/module/{name}")));
        }
        self.kernel
            .put("/proc/sys/kernel/random/boot_id", boot_id)
            .expect("writing the boot id");
        self.set_uptime(uptime);
    }

    pub fn set_uptime(&self, secs: u64) {
        self.kernel
            .put("/proc/uptime", &format!("{secs}.25 1.00"))
            .expect("writing the uptime");
    }
}

/// A klive module for kernel `build_id` with the fake kernel's vermagic.
pub fn klive_module(name: &str, level: u32, build_id: &str) -> ModuleBuilder {
    ModuleBuilder::klive(name, level, build_id).vermagic(FAKE_VERMAGIC)
}

/// Writes [`klive_module`] to `dir/NAME.ko` and returns its path (the former
/// `klive_kernel::fake::write_klive_module`).
pub fn write_klive_module(dir: &Path, name: &str, level: u32, build_id: &str) -> PathBuf {
    klive_module(name, level, build_id).write_to(dir)
}
