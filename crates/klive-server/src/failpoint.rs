//! Named points on the write paths where a test kills the server process, to prove that a
//! crash at that exact step leaves all or nothing. Built only with the `failpoints` feature
//! (`cargo xtask test` turns it on); otherwise every point compiles to nothing. A run arms a
//! point with the `fail` crate's environment variable, e.g.
//! `FAILPOINTS=publish.before_commit=return`.

/// Ends the process here, as `kill -9` would (no destructor, no rollback, no flush), when the
/// point `name` is armed.
pub fn kill_point(name: &str) {
    #[cfg(feature = "failpoints")]
    if fail::eval(name, |_| ()).is_some() {
        std::process::abort();
    }
    #[cfg(not(feature = "failpoints"))]
    let _ = name;
}

/// Reads `FAILPOINTS` for the life of the returned guard (the binary's `main` holds it).
#[cfg(feature = "failpoints")]
pub fn from_env() -> fail::FailScenario<'static> {
    fail::FailScenario::setup()
}
