//! The exposition text of the bridge's metrics: the families and encoder the exporters share
//! ([`daemon_kit::exposition`]).

pub use daemon_kit::exposition::*;
