//! Keelson's node daemon.
