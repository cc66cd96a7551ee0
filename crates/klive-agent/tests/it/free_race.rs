//! Issue 12's revert race: the kernel frees a disabled or replaced livepatch, removing its
//! `/sys/kernel/livepatch/<name>/` directory, while the agent is still reading it. That is
//! the normal end of the transition: `klive revert` and `klive apply` (replacing a level)
//! must succeed, unload the freed module and leave kernel and state in agreement, whichever
//! read the directory vanishes at and whether that read fails with ENOENT or ENODEV.

use klive_agent::store::Store;
use klive_kernel::fake::FreePlan;
use klive_testkit::agent::Host;

/// 200 freeing points: the read at which `transition` turns 0, the read at which the
/// directory vanishes, and how that read fails.
fn plans() -> impl Iterator<Item = FreePlan> {
    (0..200u32).map(|i| FreePlan::Deferred {
        done_after: 1 + i % 5,
        gone_after: 1 + (i / 5) % 20,
        errno: if i % 2 == 0 {
            libc::ENODEV
        } else {
            libc::ENOENT
        },
    })
}

fn assert_consistent(h: &Host, plan: FreePlan, level: Option<u64>) {
    let store = Store::new(&h.state);
    assert!(
        store.load_intent().expect("reading the intent").is_none(),
        "{plan:?}: no operation is left unfinished"
    );
    assert_eq!(
        store
            .load_state()
            .expect("reading the state")
            .last_good
            .map(|g| u64::from(g.level.get())),
        level,
        "{plan:?}"
    );
    assert_eq!(h.level(), level, "{plan:?}: klive status");
}

#[test]
fn revert_succeeds_when_the_kernel_frees_the_patch_while_it_is_polled() {
    for plan in plans() {
        let h = Host::new();
        let l1 = h.module("klive_t_l1", 1);
        let (code, v) = h.json(&["apply", Host::p(&l1)]);
        assert_eq!(code, 0, "{plan:?}: {v}");

        h.kernel.set_free_plan(plan);
        let (code, v) = h.json(&["revert"]);
        assert_eq!(code, 0, "{plan:?}: {v}");
        assert_eq!(v["result"], "reverted", "{plan:?}: {v}");
        assert_eq!(v["replaced"], serde_json::json!(["klive_t_l1"]), "{plan:?}");
        assert!(h.patch_names().is_empty(), "{plan:?}");
        assert!(
            h.kernel.loaded_modules().is_empty(),
            "{plan:?}: nothing is left loaded"
        );
        assert_consistent(&h, plan, None);
    }
}

#[test]
fn apply_succeeds_when_the_kernel_frees_the_replaced_patch_while_it_is_read() {
    for plan in plans() {
        let h = Host::new();
        let l1 = h.module("klive_t_l1", 1);
        let l2 = h.module("klive_t_l2", 2);
        let (code, v) = h.json(&["apply", Host::p(&l1)]);
        assert_eq!(code, 0, "{plan:?}: {v}");

        h.kernel.set_free_plan(plan);
        let (code, v) = h.json(&["apply", Host::p(&l2)]);
        assert_eq!(code, 0, "{plan:?}: {v}");
        assert_eq!(v["result"], "applied", "{plan:?}: {v}");
        assert_eq!(v["replaced"], serde_json::json!(["klive_t_l1"]), "{plan:?}");
        assert_eq!(h.patch_names(), vec!["klive_t_l2"], "{plan:?}");
        assert_eq!(
            h.kernel.loaded_modules(),
            vec!["klive_t_l2"],
            "{plan:?}: the replaced level is unloaded"
        );
        assert_consistent(&h, plan, Some(2));

        // And the revert after it, under the same plan.
        let (code, v) = h.json(&["revert"]);
        assert_eq!(code, 0, "{plan:?}: {v}");
        assert!(h.kernel.loaded_modules().is_empty(), "{plan:?}");
        assert_consistent(&h, plan, None);
    }
}
