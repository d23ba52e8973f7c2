//! CLI integration tests: the real `banger` and `bangerd` binaries against a temp
//! `BANGER_HOME`. VM tests run the CLI and its daemon in a private network namespace, with the
//! fake Firecracker standing in for the VMM and a real `banger-agent` behind its vsock;
//! `system` installs into trees and runs bangerd unprivileged behind the root helper; `api`
//! checks the daemon's OpenAPI document with a standard validator and schemathesis.

mod api;
mod catalog;
mod common;
mod dns;
mod exec;
mod foundation;
mod guest;
mod host;
mod inputs;
mod mcp;
mod oci;
mod ssh;
mod system;
mod vm;
mod warm;
mod web;
mod workspace;
