//! Named points on the write paths where a test kills the server process, to prove that a
//! crash at that exact step leaves all or nothing. Built only with the `failpoints` feature
//! (`cargo xtask test` turns it on); otherwise every point compiles to nothing. A run arms one
//! point by name: `KLIVE_FAILPOINT=publish.before_commit`.
//!
//! (The `fail` crate does this and much more, but pulls in a second generation of `rand` and
//! `getrandom`; one action, "die here", is all these tests need.)

/// Ends the process here, as `kill -9` would (no destructor, no rollback, no flush), when
/// `KLIVE_FAILPOINT` names `name`.
pub fn kill_point(name: &str) {
    #[cfg(feature = "failpoints")]
    if std::env::var_os("KLIVE_FAILPOINT").is_some_and(|armed| armed == name) {
        std::process::abort();
    }
    #[cfg(not(feature = "failpoints"))]
    let _ = name;
}
