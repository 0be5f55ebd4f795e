//! Orchestration for Keelson's build.
fn main() {}
