//! jvb-startup: runs inside the Jitsi Videobridge container.
//!
//! - `exec`: works out the bridge's UDP port (base port + pod ordinal) and the address it advertises
//!   ([`plan`], pure) — from the flag, the shard's LoadBalancer Service ([`service`]), the Node ([`node`])
//!   or HOST_IP —, optionally writes the same as HOCON ([`hocon`]), and replaces itself with the image's
//!   `/init`, which must stay PID 1.
//! - `drain`: the preStop hook — asks the bridge for a graceful shutdown and waits for its calls to end
//!   ([`drain`]).
//! - `install`: copies this binary into a shared volume, from an init container.

pub mod bridge_api;
pub mod cli;
pub mod drain;
pub mod exec;
pub mod hocon;
pub mod install;
pub mod node;
pub mod plan;
pub mod service;

#[cfg(test)]
mod golden_tests;
