//! `drain`: the preStop hook. Asks the bridge for a graceful shutdown (or drain mode), then waits
//! until no participant is left on it, the bridge is gone (it exits by itself, 1 minute after its last
//! local endpoint left), or the timeout passes.
//!
//! A busy bridge is exactly when this runs, so slowness is not absence: timeouts, error statuses, resets
//! and bodies that are not stats are logged and tried again until the deadline. The bridge counts as gone
//! only when its port *refuses* connections, again and again, for `--gone-after`. Only a disabled REST API
//! (Jetty's HTML 404) fails at once: waiting would not change it.

use std::process::ExitCode;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::bridge_api::{self, BridgeApi, Failure};
use crate::cli::DrainArgs;

#[derive(Debug, thiserror::Error)]
pub enum DrainError {
    #[error(
        "the bridge refused the {what} request with HTTP 404 and an HTML page: its REST API is disabled \
         (set COLIBRI_REST_ENABLED=true and SHUTDOWN_REST_ENABLED=true, as jvb-startup exec does)"
    )]
    RestDisabled { what: &'static str },
    #[error("--jvb-url {0:?} is not a valid URL")]
    BadUrl(String),
    #[error("cannot start: {0}")]
    Runtime(String),
}

/// How the wait ended: all of these let the pod go on stopping.
#[derive(Debug, PartialEq, Eq)]
pub enum Outcome {
    /// No participant is left.
    Drained,
    /// The bridge stopped answering: it exited by itself.
    BridgeGone,
    /// The bridge was not running when the hook started.
    NotRunning,
    /// The timeout passed with participants still there (`None`: their number was unknown).
    TimedOut(Option<u64>),
}

/// The participants a bridge still serves: `local_endpoints` (participants relayed from other bridges
/// do not count), or `participants` on bridges older than that field.
pub fn participants(stats: &Value) -> Option<u64> {
    let number = |key: &str| {
        let value = stats.get(key)?;
        value
            .as_u64()
            .or_else(|| value.as_f64().filter(|v| *v >= 0.0).map(|v| v as u64))
    };
    number("local_endpoints").or_else(|| number("participants"))
}

pub fn main(args: &DrainArgs) -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(error) => {
            tracing::error!("{}", DrainError::Runtime(error.to_string()));
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(drain(args)) {
        Ok(outcome) => {
            tracing::info!(outcome = ?outcome, "drain finished");
            ExitCode::SUCCESS
        }
        Err(error) => {
            tracing::error!("{error}");
            ExitCode::FAILURE
        }
    }
}

/// How often to look again while the port refuses connections, to tell a restart from an exit.
const REFUSED_RETRY: Duration = Duration::from_millis(500);

/// Consecutive refusals, and since when: the bridge is gone once they last `gone_after`.
#[derive(Debug, Default)]
struct Refusals {
    since: Option<Instant>,
    count: u32,
}

impl Refusals {
    /// Notes one more refusal; whether the port has now refused long enough (and often enough).
    fn refused(&mut self, gone_after: Duration) -> bool {
        let since = *self.since.get_or_insert_with(Instant::now);
        self.count += 1;
        self.count >= 3 && since.elapsed() >= gone_after
    }

    fn answered(&mut self) {
        *self = Self::default();
    }

    fn any(&self) -> bool {
        self.count > 0
    }
}

pub async fn drain(args: &DrainArgs) -> Result<Outcome, DrainError> {
    let base = args.jvb_url.trim_end_matches('/').to_owned();
    let api =
        BridgeApi::new(&base, args.request_timeout).map_err(|_| DrainError::BadUrl(args.jvb_url.clone()))?;
    let started = Instant::now();
    let deadline = started + args.timeout;
    let pause = |refusals: &Refusals| {
        let wanted = if refusals.any() {
            REFUSED_RETRY.min(args.interval)
        } else {
            args.interval
        };
        wanted
            .min(deadline.saturating_duration_since(Instant::now()))
            .max(Duration::from_millis(10))
    };

    let (what, path, body) = if args.drain_only {
        ("drain", bridge_api::DRAIN_ENABLE, None)
    } else {
        (
            "graceful shutdown",
            bridge_api::SHUTDOWN,
            Some(r#"{"graceful-shutdown": true}"#),
        )
    };
    let mut refusals = Refusals::default();
    loop {
        match api.post_json(path, body.unwrap_or_default()).await {
            Ok(answer) if answer.is_success() => {
                tracing::info!("{what} requested");
                break;
            }
            Ok(answer) if answer.status == 404 && answer.is_html() => {
                return Err(DrainError::RestDisabled { what });
            }
            Ok(answer) => {
                refusals.answered();
                let body: String = answer.text().chars().take(200).collect();
                tracing::warn!(status = answer.status, %body, "the bridge refused the {what} request; asking again");
            }
            Err(Failure::Refused) => {
                if refusals.refused(args.gone_after) {
                    tracing::info!(url = %base, "the bridge is not running (its port refuses connections): nothing to drain");
                    return Ok(Outcome::NotRunning);
                }
            }
            Err(error) => {
                refusals.answered();
                tracing::warn!(%error, "the {what} request got no answer; asking again");
            }
        }
        if Instant::now() >= deadline {
            tracing::warn!(
                "timeout of {:?} passed before the bridge took the {what} request; letting the pod stop",
                args.timeout
            );
            return Ok(Outcome::TimedOut(None));
        }
        tokio::time::sleep(pause(&refusals)).await;
    }

    let mut last_known = None;
    let mut refusals = Refusals::default();
    loop {
        match api.get(bridge_api::STATS).await {
            Err(Failure::Refused) => {
                if refusals.refused(args.gone_after) {
                    tracing::info!(elapsed = ?started.elapsed(), "the bridge's port refuses connections: it has exited");
                    return Ok(Outcome::BridgeGone);
                }
                tracing::info!("the bridge's port refused a connection; looking again");
            }
            Err(error) => {
                refusals.answered();
                tracing::warn!(%error, "the bridge did not answer; still waiting");
            }
            Ok(answer) if !answer.is_success() => {
                refusals.answered();
                tracing::warn!(
                    status = answer.status,
                    "the bridge answered with an error; still waiting"
                );
            }
            Ok(answer) => {
                refusals.answered();
                match serde_json::from_slice::<Value>(&answer.body)
                    .ok()
                    .as_ref()
                    .and_then(participants)
                {
                    Some(0) => {
                        tracing::info!(elapsed = ?started.elapsed(), "no participants left");
                        return Ok(Outcome::Drained);
                    }
                    Some(left) => {
                        last_known = Some(left);
                        tracing::info!(participants = left, elapsed = ?started.elapsed(), "waiting for participants to leave");
                    }
                    None => tracing::warn!(
                        "the bridge's answer carries no participant count; waiting for it to exit"
                    ),
                }
            }
        }
        if Instant::now() >= deadline {
            tracing::warn!(participants = ?last_known, "timeout of {:?} passed; letting the pod stop", args.timeout);
            return Ok(Outcome::TimedOut(last_known));
        }
        tokio::time::sleep(pause(&refusals)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn local_endpoints_count_not_relayed_ones() {
        assert_eq!(
            participants(&json!({ "local_endpoints": 2, "participants": 7 })),
            Some(2)
        );
    }

    #[test]
    fn older_bridges_count_participants() {
        assert_eq!(participants(&json!({ "participants": 3 })), Some(3));
        assert_eq!(participants(&json!({ "participants": 3.0 })), Some(3));
        assert_eq!(participants(&json!({ "conferences": 1 })), None);
        assert_eq!(
            participants(&json!({ "local_endpoints": "x", "participants": 1 })),
            Some(1)
        );
    }

    #[test]
    fn real_recorded_stats() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../testdata/colibri");
        let read = |name: &str| -> Value {
            serde_json::from_str(&std::fs::read_to_string(dir.join(name)).unwrap()).unwrap()
        };
        assert_eq!(participants(&read("2026-jvb-2.3.63-relay.json")), Some(0));
        assert_eq!(participants(&read("2021-jvb-2.1.508-active.json")), Some(2));
        assert_eq!(participants(&read("2020-jvb-2.1.169-idle.json")), Some(0));
    }
}
