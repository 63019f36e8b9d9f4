//! service-per-pod: every pod of an opted-in StatefulSet gets its own NodePort Service at
//! `base port + ordinal`, kept until that pod is really gone, so a draining Jitsi Videobridge keeps its
//! port until its last call ends.
//!
//! A reconcile is one line: [`index`] (the watch caches, indexed as events arrive) → [`desired`] (what
//! Services should exist, within the node-port range and the administrator's port grants; with
//! [`annotations`], [`grants`], [`ordinals`]) → [`plan`] (every write, in order, for either mode;
//! [`public`] is the `LoadBalancer` mode's manifests) → [`executor`] (the writes, under the leadership
//! deadline) → [`report`] (Events, aggregated, once); [`reconciler`] strings them together. The pure
//! parts (`desired`, `plan`, `report`, `public`) take no client and no clock. [`leader`] makes sure only
//! one replica writes ([`leader::decide`] is its pure takeover decision); [`runtime`] wires it all.

pub mod annotations;
pub mod cached_pod;
pub mod cached_service;
pub mod cli;
pub mod desired;
pub mod executor;
pub mod grants;
pub mod index;
pub mod leader;
pub mod metrics;
pub mod ordinals;
pub mod plan;
pub mod public;
pub mod reconciler;
pub mod report;
pub mod runtime;

#[cfg(test)]
mod property_tests;
