//! The generated protocol, `keelson.node.v1` (`proto/node.proto`): messages, the clients
//! and the server traits.

#![allow(missing_docs, clippy::all, missing_debug_implementations)]

tonic::include_proto!("keelson.node.v1");
