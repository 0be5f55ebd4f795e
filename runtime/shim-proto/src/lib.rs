//! The versioned protocol between Keelson's runtime and its per-pod `keelson-shim`.
