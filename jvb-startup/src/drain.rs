//! `drain`: the preStop hook. Asks the bridge for a graceful shutdown (or drain mode), then waits
//! until no participant is left on it, the bridge stops answering (it exits by itself, 1 minute after
//! its last local endpoint left), or the timeout passes. Only a refused request is an error: whatever
//! else happens, the pod must be allowed to go on stopping.

use std::process::ExitCode;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::bridge_api::{BridgeApi, Failure};
use crate::cli::DrainArgs;

#[derive(Debug, thiserror::Error)]
pub enum DrainError {
    #[error(
        "the bridge refused the {what} request with HTTP 404 and an HTML page: its REST API is disabled \
         (set COLIBRI_REST_ENABLED=true and SHUTDOWN_REST_ENABLED=true, as jvb-startup exec does)"
    )]
    RestDisabled { what: &'static str },
    #[error("the bridge refused the {what} request with HTTP {status}: {body}")]
    Refused {
        what: &'static str,
        status: u16,
        body: String,
    },
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

enum Poll {
    Stats(Value),
    /// Answered, but not with stats (REST stats disabled, an error page, ...).
    NoStats(String),
    /// Slow: did not answer within the request timeout. Not gone.
    Slow,
    Gone,
}

pub async fn drain(args: &DrainArgs) -> Result<Outcome, DrainError> {
    let base = args.jvb_url.trim_end_matches('/').to_owned();
    let api =
        BridgeApi::new(&base, args.request_timeout).map_err(|_| DrainError::BadUrl(args.jvb_url.clone()))?;
    let started = Instant::now();

    let (what, path, body) = if args.drain_only {
        ("drain", "/colibri/drain/enable", None)
    } else {
        (
            "graceful shutdown",
            "/colibri/shutdown",
            Some(r#"{"graceful-shutdown": true}"#),
        )
    };
    match api.post_json(path, body.unwrap_or_default()).await {
        Err(Failure::Refused) => {
            tracing::info!(url = %base, "the bridge is not running: nothing to drain");
            return Ok(Outcome::NotRunning);
        }
        Err(error) => {
            // A bridge too busy to answer in time still got the request or will get the next signal.
            tracing::warn!(%error, "the {what} request got no answer; waiting for the bridge anyway");
        }
        Ok(answer) if answer.is_success() => tracing::info!("{what} requested"),
        Ok(answer) => {
            if answer.status == 404 && answer.is_html() {
                return Err(DrainError::RestDisabled { what });
            }
            let body: String = answer.text().chars().take(200).collect();
            return Err(DrainError::Refused {
                what,
                status: answer.status,
                body,
            });
        }
    }

    let mut last_known = None;
    loop {
        match poll(&api).await {
            Poll::Gone => {
                tracing::info!(elapsed = ?started.elapsed(), "the bridge stopped answering: it has exited");
                return Ok(Outcome::BridgeGone);
            }
            Poll::Stats(stats) => match participants(&stats) {
                Some(0) => {
                    tracing::info!(elapsed = ?started.elapsed(), "no participants left");
                    return Ok(Outcome::Drained);
                }
                Some(left) => {
                    last_known = Some(left);
                    tracing::info!(participants = left, elapsed = ?started.elapsed(), "waiting for participants to leave");
                }
                None => {
                    tracing::warn!("the bridge's stats carry no participant count; waiting for it to exit")
                }
            },
            Poll::NoStats(why) => {
                tracing::warn!("cannot read the bridge's stats ({why}); waiting for it to exit")
            }
            Poll::Slow => tracing::warn!(
                "the bridge did not answer within {:?}; still waiting",
                args.request_timeout
            ),
        }
        let elapsed = started.elapsed();
        if elapsed >= args.timeout {
            tracing::warn!(participants = ?last_known, "timeout of {:?} passed; letting the pod stop", args.timeout);
            return Ok(Outcome::TimedOut(last_known));
        }
        tokio::time::sleep(
            args.interval
                .min(args.timeout.saturating_sub(elapsed))
                .max(Duration::from_millis(10)),
        )
        .await;
    }
}

async fn poll(api: &BridgeApi) -> Poll {
    let answer = match api.get("/colibri/stats").await {
        Ok(answer) => answer,
        Err(Failure::Timeout) => return Poll::Slow,
        Err(_) => return Poll::Gone,
    };
    if !answer.is_success() {
        return Poll::NoStats(format!("HTTP {}", answer.status));
    }
    match serde_json::from_slice::<Value>(&answer.body) {
        Ok(stats) => Poll::Stats(stats),
        Err(_) => Poll::NoStats("not JSON".to_owned()),
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
