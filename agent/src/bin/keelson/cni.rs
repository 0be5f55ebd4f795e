//! `keelson cni`: the CNI plugin. Runtimes run it the way they run any plugin binary (with
//! `CNI_COMMAND` and friends in the environment and the network configuration on stdin), by
//! installing a symlink named `keelson` in their `CNI_PATH` or by calling it with this
//! subcommand. See [`keelson_cni::plugin`] for the configuration and the protocol.

use std::io::Write;

/// Runs one plugin command; returns the exit code.
pub fn main() -> i32 {
    let mut stdin = std::io::stdin().lock();
    let mut stdout = std::io::stdout().lock();
    let code = keelson_cni::plugin::run(
        &|name| std::env::var(name).ok(),
        &mut stdin,
        &mut stdout,
        &keelson_cni::plugin::NetworkBackend,
    );
    let _ = stdout.flush();
    code
}
