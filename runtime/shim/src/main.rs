//! `keelson-shim`: one per pod; the pause process, subreaper and stdio owner of the pod.
fn main() {}
