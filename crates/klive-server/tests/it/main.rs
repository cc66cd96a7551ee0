//! klive-server's integration tests, one binary (one link instead of eleven): one module per
//! area. `common` comes first so that its `backend_tests!` macro is in scope in the others.

#[macro_use]
mod common;

mod abuse;
mod bench_dashboard;
mod browser;
mod cli;
mod crash;
mod domain;
mod evidence;
mod group_commit;
mod http;
mod s3;
mod tls;
mod tuf;
