//! Request bodies and patches through every decoder and schema-driven function
//! (`keelson_controlplane::fuzzing::request_body`). Run: `cargo +nightly fuzz run request_body
//! controlplane/fuzz/seeds/request_body` from `controlplane/`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    keelson_controlplane::fuzzing::request_body(data);
});
