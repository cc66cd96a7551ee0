//! The agent's operations and CLI, end to end against the temp-dir fake kernel (no root).

use std::path::PathBuf;

use klive_kernel::Kernel;
use klive_kernel::fake::{Call, TransitionPlan};
use klive_testkit::agent::{self, Host};
use klive_testkit::elf::module_bytes;

#[test]
fn status_without_patch_exits_1_and_reports_identity() {
    let h = Host::new();
    let (code, v) = h.json(&["status"]);
    assert_eq!(code, 1);
    assert_eq!(v["kernel"]["release"], agent::FAKE_RELEASE);
    assert_eq!(v["kernel"]["build_id"], agent::FAKE_BUILD_ID);
    assert_eq!(v["kernel"]["package_version"], "6.1.192-2");
    assert_eq!(v["support"]["livepatch"], true);
    assert_eq!(v["klive"], serde_json::Value::Null);
    assert_eq!(v["effective_release"], agent::FAKE_RELEASE);
}

#[test]
fn apply_then_replace_then_revert() {
    let h = Host::new();
    let l1 = h.module("klive_t_l1", 1);
    let l2 = h.module("klive_t_l2", 2);

    let (code, v) = h.json(&["apply", Host::p(&l1)]);
    assert_eq!(code, 0, "{v}");
    assert_eq!(v["result"], "applied");
    let (code, v) = h.json(&["status"]);
    assert_eq!(code, 0);
    assert_eq!(v["klive"]["level"], 1);
    assert_eq!(v["klive"]["state"], "applied");
    assert!(
        v["taint"]["flags"]
            .as_array()
            .unwrap()
            .iter()
            .any(|f| f["letter"] == "K")
    );
    assert_eq!(h.klive(&["uname", "-r"]).1.trim(), "6.1.0-56-amd64+klive.1");

    let (code, v) = h.json(&["apply", Host::p(&l2)]);
    assert_eq!(code, 0, "{v}");
    assert_eq!(v["replaced"], serde_json::json!(["klive_t_l1"]));
    assert_eq!(h.patch_names(), vec!["klive_t_l2"]);
    assert_eq!(
        h.kernel.loaded_modules(),
        vec!["klive_t_l2"],
        "level 1 module is unloaded"
    );

    // Applying the same level again changes nothing.
    let (code, v) = h.json(&["apply", Host::p(&l2)]);
    assert_eq!((code, v["result"].as_str()), (0, Some("already-applied")));

    let (code, _, err) = h.klive(&["revert"]);
    assert_eq!(code, 0, "{err}");
    assert!(h.patch_names().is_empty());
    assert!(h.kernel.loaded_modules().is_empty());
    assert_eq!(h.json(&["status"]).0, 1);
    // After an explicit revert, boot restores nothing.
    let (code, v) = h.json(&["boot"]);
    assert_eq!(
        (code, v["result"].as_str()),
        (0, Some("nothing-to-restore"))
    );
}

#[test]
fn stalled_transition_is_reversed_and_reported() {
    let h = Host::new();
    let l1 = h.module("klive_t_l1", 1);
    assert_eq!(h.klive(&["apply", Host::p(&l1)]).0, 0);
    h.kernel.set_plan(TransitionPlan::Stalls {
        pid: 4242,
        comm: "reader".into(),
        stack: "[<0>] pipe_read+0x2f0/0x480\n[<0>] vfs_read+0x2c4/0x2f0\n".into(),
    });
    let stall = h.module("klive_t_stall", 3);
    let (code, out, err) = h.klive(&["apply", "--timeout", "0", Host::p(&stall)]);
    assert_eq!(code, 5, "{out}{err}");
    assert!(
        err.contains("pid 4242") && err.contains("reader") && err.contains("pipe_read"),
        "{err}"
    );
    assert!(err.contains("klive_t_l1 is still active"), "{err}");
    assert_eq!(
        h.patch_names(),
        vec!["klive_t_l1"],
        "level 1 is still the active patch"
    );
    assert!(
        !h.kernel
            .loaded_modules()
            .contains(&"klive_t_stall".to_string())
    );
    assert!(
        h.kernel
            .calls()
            .contains(&Call::SetEnabled("klive_t_stall".into(), false))
    );
    let (code, v) = h.json(&["status"]);
    assert_eq!((code, v["klive"]["level"].as_u64()), (0, Some(1)));
}

#[test]
fn refusals_change_nothing() {
    let h = Host::new();
    let cases: Vec<(PathBuf, &str)> = vec![
        (
            {
                let p = h.modules.join("klive_wrong.ko");
                std::fs::write(
                    &p,
                    module_bytes(&[
                        ("livepatch", "Y"),
                        ("klive_level", "1"),
                        ("klive_build_id", agent::FAKE_BUILD_ID),
                        ("name", "klive_wrong"),
                        (
                            "vermagic",
                            "6.1.0-99-amd64 SMP preempt mod_unload modversions ",
                        ),
                    ]),
                )
                .unwrap();
                p
            },
            "built for kernel 6.1.0-99-amd64",
        ),
        (
            agent::write_klive_module(
                &h.modules,
                "klive_other_build",
                1,
                "00112233445566778899aabbccddeeff00112233",
            ),
            "targets kernel build 001122334455",
        ),
        (
            {
                let p = h.modules.join("plain.ko");
                std::fs::write(
                    &p,
                    module_bytes(&[("name", "plain"), ("vermagic", agent::FAKE_VERMAGIC)]),
                )
                .unwrap();
                p
            },
            "not a livepatch module",
        ),
        (
            {
                let good = std::fs::read(h.module("klive_t_l1", 1)).unwrap();
                let p = h.modules.join("truncated.ko");
                std::fs::write(&p, &good[..good.len() / 2]).unwrap();
                p
            },
            "not a valid ELF object",
        ),
        (h.modules.join("missing.ko"), "cannot read"),
    ];
    for (path, expected) in cases {
        let (code, out, err) = h.klive(&["apply", Host::p(&path)]);
        assert_eq!(code, 4, "{}: {out}{err}", path.display());
        assert!(err.contains(expected), "{}: {err}", path.display());
        assert!(err.contains("nothing was loaded"), "{err}");
    }
    assert!(h.kernel.calls().is_empty(), "{:?}", h.kernel.calls());
    assert!(h.patch_names().is_empty());
}

#[test]
fn load_failure_from_kernel_leaves_previous_level() {
    let h = Host::new();
    assert_eq!(
        h.klive(&["apply", Host::p(&h.module("klive_t_l1", 1))]).0,
        0
    );
    h.kernel.fail_next_load(libc::ENOENT);
    let (code, _, err) = h.klive(&["apply", Host::p(&h.module("klive_t_l2", 2))]);
    assert_eq!(code, 6);
    assert!(err.contains("symbols this kernel lacks"), "{err}");
    assert_eq!(h.patch_names(), vec!["klive_t_l1"]);
    let (_, v) = h.json(&["status"]);
    assert_eq!(v["klive"]["level"], 1);
    assert_eq!(v["last_interrupted"], serde_json::Value::Null);
}

#[test]
fn unsupported_kernel_exits_3() {
    let h = Host::new();
    std::fs::remove_dir_all(h.kernel.root().path("/sys/kernel/livepatch")).unwrap();
    let (code, out, _) = h.klive(&["status"]);
    assert_eq!(code, 3);
    assert!(out.contains("CONFIG_LIVEPATCH"), "{out}");
    let (code, _, err) = h.klive(&["apply", Host::p(&h.module("klive_t_l1", 1))]);
    assert_eq!(code, 3, "{err}");
}

#[test]
fn usage_errors_exit_64() {
    let h = Host::new();
    assert_eq!(h.klive(&["frobnicate"]).0, 64);
    assert_eq!(h.klive(&["apply"]).0, 64);
    assert_eq!(h.klive(&["--help"]).0, 0);
}

#[test]
fn boot_restores_last_good_level_after_reboot() {
    let h = Host::new();
    let l2 = h.module("klive_t_l2", 2);
    assert_eq!(h.klive(&["apply", Host::p(&l2)]).0, 0);
    std::fs::remove_file(&l2).unwrap(); // only the cache has it now
    // "Reboot": the kernel forgets every module.
    h.forget("klive_t_l2");
    let (code, out, _) = h.klive(&["status"]);
    assert_eq!(code, 1);
    assert!(out.contains("run `klive boot`"), "{out}");
    let (code, v) = h.json(&["boot"]);
    assert_eq!(code, 0, "{v}");
    assert_eq!(v["result"], "applied");
    assert_eq!(h.patch_names(), vec!["klive_t_l2"]);
}

#[test]
fn boot_refuses_a_tampered_cache() {
    let h = Host::new();
    assert_eq!(
        h.klive(&["apply", Host::p(&h.module("klive_t_l1", 1))]).0,
        0
    );
    h.forget("klive_t_l1");
    let cache = h.state.join("cache").join(agent::FAKE_BUILD_ID);
    for e in std::fs::read_dir(&cache).unwrap() {
        let p = e.unwrap().path();
        let mut b = std::fs::read(&p).unwrap();
        let last = b.len() - 1;
        b[last] ^= 0xff;
        std::fs::write(&p, b).unwrap();
    }
    let (code, _, err) = h.klive(&["boot"]);
    assert_eq!(code, 4, "{err}");
    assert!(err.contains("does not match the digest"), "{err}");
    assert!(h.patch_names().is_empty());
}

#[test]
fn boot_on_another_kernel_build_does_not_apply() {
    let h = Host::new();
    assert_eq!(
        h.klive(&["apply", Host::p(&h.module("klive_t_l1", 1))]).0,
        0
    );
    h.forget("klive_t_l1");
    std::fs::write(h.kernel.root().path("/sys/kernel/notes"), b"").unwrap();
    let (code, v) = h.json(&["boot"]);
    assert_eq!((code, v["result"].as_str()), (0, Some("kernel-changed")));
    assert!(h.patch_names().is_empty());
}

#[test]
fn interrupted_apply_is_rolled_forward_when_the_kernel_finished() {
    let h = Host::new();
    assert_eq!(
        h.klive(&["apply", Host::p(&h.module("klive_t_l1", 1))]).0,
        0
    );
    // Simulate a crash right after the module load: the kernel completed level 2, the agent
    // never unloaded level 1 nor recorded level 2.
    let l2 = h.module("klive_t_l2", 2);
    let state_before = std::fs::read_to_string(h.state.join("state.json")).unwrap();
    let intent = serde_json::json!({
        "operation": {"kind": "apply", "module": "klive_t_l2", "level": 2,
                      "cached_file": "klive_t_l2.ko", "sha256": "00", "fixes": []},
        "started_at": "2026-11-22T10:00:00Z", "pid": 999999, "boot_id": "",
        "previous": "klive_t_l1"
    });
    std::fs::write(h.state.join("intent.json"), intent.to_string()).unwrap();
    h.kernel
        .load_module(&std::fs::read(&l2).unwrap(), &l2)
        .unwrap();
    assert!(
        h.kernel
            .loaded_modules()
            .contains(&"klive_t_l1".to_string())
    );
    let (code, v) = h.json(&["status"]);
    assert_eq!(code, 0, "{v}");
    assert_eq!(v["klive"]["level"], 2);
    assert!(
        v["last_interrupted"]["resolution"]
            .as_str()
            .unwrap()
            .contains("completed the transition"),
        "{v}"
    );
    assert_eq!(h.kernel.loaded_modules(), vec!["klive_t_l2"]);
    assert!(!h.state.join("intent.json").exists());
    assert_ne!(
        std::fs::read_to_string(h.state.join("state.json")).unwrap(),
        state_before
    );
}

#[test]
fn interrupted_apply_is_reversed_when_the_transition_is_stuck() {
    let h = Host::new();
    h.kernel.set_plan(TransitionPlan::Stalls {
        pid: 77,
        comm: "sleeper".into(),
        stack: "[<0>] pipe_read+0x1/0x2\n".into(),
    });
    let l1 = h.module("klive_t_l1", 1);
    h.kernel
        .load_module(&std::fs::read(&l1).unwrap(), &l1)
        .unwrap();
    let intent = serde_json::json!({
        "operation": {"kind": "apply", "module": "klive_t_l1", "level": 1,
                      "cached_file": "klive_t_l1.ko", "sha256": "00", "fixes": []},
        "started_at": "2026-11-22T10:00:00Z", "pid": 999999, "boot_id": "",
        "previous": null
    });
    std::fs::create_dir_all(&h.state).unwrap();
    std::fs::write(h.state.join("intent.json"), intent.to_string()).unwrap();
    // `revert` with a zero timeout reconciles first: the stuck transition gets reversed.
    let (code, _, err) = h.klive(&["revert", "--timeout", "0"]);
    assert_eq!(code, 0, "{err}");
    assert!(h.patch_names().is_empty());
    assert!(h.kernel.loaded_modules().is_empty());
    let (_, v) = h.json(&["status"]);
    assert!(
        v["last_interrupted"]["resolution"]
            .as_str()
            .unwrap()
            .contains("reversed"),
        "{v}"
    );
}

#[test]
fn list_shows_foreign_patches_and_apply_refuses_to_replace_them() {
    let h = Host::new();
    for (f, v) in [
        ("enabled", "1"),
        ("transition", "0"),
        ("replace", "0"),
        ("vmlinux/patched", "1"),
    ] {
        h.kernel
            .put(&format!("/sys/kernel/livepatch/vendor_fix/{f}"), v)
            .unwrap();
    }
    let (code, out, _) = h.klive(&["list"]);
    assert_eq!(code, 0);
    assert!(
        out.contains("vendor_fix") && out.contains("foreign"),
        "{out}"
    );
    let (code, _, err) = h.klive(&["apply", Host::p(&h.module("klive_t_l1", 1))]);
    assert_eq!(code, 4);
    assert!(err.contains("vendor_fix"), "{err}");
}

#[test]
fn boot_honours_the_command_line_escape_hatch() {
    let h = Host::new();
    assert_eq!(
        h.klive(&["apply", Host::p(&h.module("klive_t_l1", 1))]).0,
        0
    );
    h.forget("klive_t_l1");
    h.kernel
        .put("/proc/cmdline", "console=ttyS0 klive.boot=0")
        .unwrap();
    let (code, v) = h.json(&["boot"]);
    assert_eq!((code, v["result"].as_str()), (0, Some("disabled")));
    assert!(h.patch_names().is_empty());
}

#[test]
fn list_shows_the_cache_and_an_unknown_replace_attribute() {
    let h = Host::new();
    let (code, v) = h.json(&["list"]);
    assert_eq!(code, 0);
    assert_eq!(v["loaded"].as_array().map(Vec::len), Some(0), "{v}");
    assert_eq!(v["cached"].as_array().map(Vec::len), Some(0), "{v}");
    assert_eq!(
        h.klive(&["apply", Host::p(&h.module("klive_t_l1", 1))]).0,
        0
    );
    assert_eq!(
        h.klive(&["apply", Host::p(&h.module("klive_t_l2", 2))]).0,
        0
    );
    // A kernel before 6.11 has no `replace` attribute: unknown, not "no".
    let _ = std::fs::remove_file(
        h.kernel
            .root()
            .path("/sys/kernel/livepatch/klive_t_l2/replace"),
    );
    let (code, v) = h.json(&["list"]);
    assert_eq!(code, 0);
    assert_eq!(v["loaded"][0]["name"], "klive_t_l2", "{v}");
    assert!(v["loaded"][0]["replace"].is_null(), "{v}");
    let cached = v["cached"].as_array().unwrap();
    assert_eq!(cached.len(), 2, "{v}");
    let l2 = cached.iter().find(|c| c["level"] == 2).unwrap();
    assert_eq!(l2["module"], "klive_t_l2");
    assert_eq!(l2["last_good"], true);
    assert_eq!(l2["running_kernel"], true);
    let l1 = cached.iter().find(|c| c["level"] == 1).unwrap();
    assert_eq!(l1["last_good"], false);
    let (_, text, _) = h.klive(&["list"]);
    let row = text
        .lines()
        .find(|l| l.starts_with("klive_t_l2"))
        .unwrap_or_else(|| panic!("{text}"));
    assert!(row.split_whitespace().nth(4) == Some("-"), "{text}");
    assert!(text.contains("last-good"), "{text}");
}

#[test]
fn crash_loop_guard_holds_a_level_back_after_two_unconfirmed_boots() {
    let h = Host::new();
    assert_eq!(
        h.klive(&["apply", Host::p(&h.module("klive_t_l2", 2))]).0,
        0
    );
    // Two boots load level 2 and end without confirmation (crashes)...
    for (n, boot) in [(1, "boot-1"), (2, "boot-2")] {
        h.reboot(boot, 4);
        let (code, v) = h.json(&["boot"]);
        assert_eq!((code, v["result"].as_str()), (0, Some("applied")), "{v}");
        let (_, s) = h.json(&["status"]);
        assert_eq!(s["boot_probation"]["unconfirmed_boots"], n, "{s}");
        assert_eq!(s["boot_probation"]["boot_id"], boot, "{s}");
    }
    // ...so the third boot does not load it again.
    h.reboot("boot-3", 4);
    let (code, _, err) = h.klive(&["boot"]);
    assert_eq!(code, 4, "{err}");
    assert!(err.contains("crash-loop guard"), "{err}");
    assert!(err.contains("klive apply FILE.ko"), "{err}");
    assert!(h.patch_names().is_empty());
    let (code, s) = h.json(&["status"]);
    assert_eq!(code, 1);
    assert_eq!(s["held_back"]["level"], 2, "{s}");
    assert!(s["boot_probation"].is_null(), "{s}");
    assert!(s["summary"].as_str().unwrap().contains("held back"), "{s}");
    let (_, text, _) = h.klive(&["status"]);
    assert!(text.contains("HELD BACK"), "{text}");
    // It stays held on later boots, and `klive boot` run twice changes nothing.
    assert_eq!(h.klive(&["boot"]).0, 4);
    h.reboot("boot-4", 4);
    assert_eq!(h.klive(&["boot"]).0, 4);
    assert!(h.patch_names().is_empty());
    // The administrator applies it by hand: the hold is lifted.
    assert_eq!(
        h.klive(&["apply", Host::p(&h.module("klive_t_l2", 2))]).0,
        0
    );
    let (_, s) = h.json(&["status"]);
    assert!(s["held_back"].is_null(), "{s}");
}

#[test]
fn a_clean_shutdown_or_enough_uptime_confirms_the_boot() {
    let h = Host::new();
    assert_eq!(
        h.klive(&["apply", Host::p(&h.module("klive_t_l2", 2))]).0,
        0
    );
    h.reboot("boot-1", 4);
    assert_eq!(h.klive(&["boot"]).0, 0);
    // Nothing to confirm is not an error; the clean shutdown confirms.
    let (code, v) = h.json(&["boot", "--confirm"]);
    assert_eq!((code, v["result"].as_str()), (0, Some("confirmed")), "{v}");
    let (code, v) = h.json(&["boot", "--confirm"]);
    assert_eq!(
        (code, v["result"].as_str()),
        (0, Some("nothing-to-confirm")),
        "{v}"
    );
    // Two crashes after a confirmed boot: still loaded each time (the count restarted).
    for boot in ["boot-2", "boot-3"] {
        h.reboot(boot, 4);
        assert_eq!(h.klive(&["boot"]).0, 0, "{boot}");
    }
    // Uptime confirms too: not before the probation period has passed since the load.
    let agent =
        klive_agent::ops::Agent::new(&h.kernel, &h.state, klive_agent::ops::Options::default());
    h.set_uptime(4 + klive_format::agent_state::BOOT_PROBATION_SECS - 10);
    assert!(!agent.confirm_boot(false).unwrap());
    h.set_uptime(4 + klive_format::agent_state::BOOT_PROBATION_SECS + 1);
    assert!(agent.confirm_boot(false).unwrap());
    h.reboot("boot-4", 4);
    assert_eq!(h.klive(&["boot"]).0, 0);
    let (_, s) = h.json(&["status"]);
    assert_eq!(s["boot_probation"]["unconfirmed_boots"], 1, "{s}");
}

#[test]
fn an_idle_module_of_the_same_name_is_unloaded_before_the_load() {
    let h = Host::new();
    let l1 = h.module("klive_t_l1", 1);
    assert_eq!(h.klive(&["apply", Host::p(&l1)]).0, 0);
    // Disabled behind klive's back: the patch is gone, the module stays loaded.
    h.kernel.set_enabled("klive_t_l1", false).unwrap();
    assert!(h.patch_names().is_empty());
    assert!(h.kernel.root().is_dir("/sys/module/klive_t_l1"));
    let before = h.kernel.calls().len();
    let (code, _, err) = h.klive(&["apply", Host::p(&l1)]);
    assert_eq!(code, 0, "{err}");
    let calls: Vec<String> = h.kernel.calls()[before..]
        .iter()
        .map(|c| match c {
            Call::Load { .. } => "load".to_owned(),
            Call::Delete(m) => format!("delete {m}"),
            Call::SetEnabled(p, e) => format!("enabled {p} {e}"),
        })
        .collect();
    assert_eq!(calls, ["delete klive_t_l1", "load"]);
    assert_eq!(h.patch_names(), vec!["klive_t_l1"]);
}
