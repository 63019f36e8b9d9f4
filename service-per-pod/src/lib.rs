//! service-per-pod: every pod of an opted-in StatefulSet gets its own NodePort Service at
//! `base port + ordinal`, kept until that pod is really gone, so a draining Jitsi Videobridge keeps its
//! port until its last call ends.
//!
//! [`annotations`], [`grants`], [`ordinals`] and [`desired`] are the pure core (what Services should
//! exist, within the node-port range and the administrator's port grants), and [`public`] the
//! `LoadBalancer` mode's (one Service, one port and one EndpointSlice per pod); [`reconciler`] reads the watch
//! caches, calls them and writes the difference; [`leader`] makes sure only one replica writes, and
//! [`leader::decide`] is its pure takeover decision; [`runtime`] wires it all together.

pub mod annotations;
pub mod cached_pod;
pub mod cli;
pub mod desired;
pub mod grants;
pub mod leader;
pub mod metrics;
pub mod ordinals;
pub mod public;
pub mod reconciler;
pub mod runtime;

#[cfg(test)]
mod property_tests;
