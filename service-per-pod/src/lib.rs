//! service-per-pod: every pod of an opted-in StatefulSet gets its own NodePort Service at
//! `base port + ordinal`, kept until that pod is really gone, so a draining Jitsi Videobridge keeps its
//! port until its last call ends.
//!
//! [`annotations`] and [`desired`] are the pure core (what Services should exist); [`reconciler`]
//! fetches from the watch caches, calls them and applies the difference; [`leader`] makes sure only one
//! replica writes; [`runtime`] wires it all together.

pub mod annotations;
pub mod cli;
pub mod desired;
pub mod leader;
pub mod metrics;
pub mod reconciler;
pub mod runtime;

#[cfg(test)]
mod property_tests;
