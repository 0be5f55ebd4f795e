//! The multi-call `keelson` binary.
fn main() {}
