//! `klive`: the agent binary. Everything happens in [`klive_agent::cli::run`].

use klive_kernel::LinuxKernel;

fn main() {
    let kernel = LinuxKernel::new();
    let code = klive_agent::cli::run(
        std::env::args_os(),
        &kernel,
        &mut std::io::stdout().lock(),
        &mut std::io::stderr().lock(),
    );
    std::process::exit(code);
}
