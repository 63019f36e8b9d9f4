//! Leader election on a `coordination.k8s.io/v1` Lease, so two replicas can run and only one writes.
//!
//! As client-go does it: the leader renews the Lease every `renew_period`; a standby takes over once the
//! Lease record has not changed for a whole lease duration, measured on the standby's own clock (so the
//! replicas' clocks need not agree); every write carries the resourceVersion it read, so two replicas
//! can never both win.
//!
//! What keeps two writers apart even when the network misbehaves:
//! - leadership is a deadline, not a flag: a leader leads until `renew_deadline` after it *started* its
//!   last successful renewal, and [`Leadership::is_leader`] compares with the clock, so a hung renewal
//!   cannot extend it;
//! - every Lease call runs under that deadline, and every other API call under the client's timeout,
//!   and `renew_deadline + api timeout < lease duration` is checked at start: a write that began while
//!   leading ends before any standby may take over;
//! - the Lease is released only after the controller has stopped writing (the caller says when).
//!
//! [`decide`] is the takeover decision, a pure function.

use std::time::{Duration, Instant};

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use k8s_openapi::jiff::Timestamp;
use kube::api::{ObjectMeta, PostParams};
use kube::{Api, ResourceExt};
use tokio::sync::watch;

/// Whether this replica may write now. Cheap to clone.
#[derive(Clone, Debug)]
pub struct Leadership {
    /// Leading until this instant (`None`: not leading).
    until: watch::Receiver<Option<Instant>>,
    /// Held by `always()`: with its sender alive, a watch on this state waits instead of ending.
    _constant: Option<std::sync::Arc<watch::Sender<Option<Instant>>>>,
}

impl Leadership {
    /// Without leader election the only replica always leads.
    pub fn always() -> Self {
        // A century from now: never reached by a running process.
        let forever = Instant::now() + Duration::from_secs(100 * 365 * 24 * 3600);
        let (sender, until) = watch::channel(Some(forever));
        Self {
            until,
            _constant: Some(std::sync::Arc::new(sender)),
        }
    }

    pub fn is_leader(&self) -> bool {
        self.until.borrow().is_some_and(|until| Instant::now() < until)
    }

    /// A receiver that wakes on every change of leadership.
    pub fn changes(&self) -> watch::Receiver<Option<Instant>> {
        self.until.clone()
    }
}

#[derive(Clone, Debug)]
pub struct LeaseSettings {
    pub name: String,
    pub namespace: String,
    pub identity: String,
    pub duration: Duration,
    pub renew_period: Duration,
    pub renew_deadline: Duration,
}

impl LeaseSettings {
    pub fn new(name: String, namespace: String, identity: String, duration: Duration) -> Self {
        // client-go's defaults keep the same proportions: 15 s lease, 10 s renew deadline, 2 s retry.
        Self {
            name,
            namespace,
            identity,
            duration,
            renew_period: (duration / 5).max(Duration::from_millis(500)),
            renew_deadline: duration * 2 / 3,
        }
    }

    /// A write that starts while leading must end before a standby may take over.
    pub fn check_api_timeout(&self, api_timeout: Duration) -> Result<(), String> {
        if self.renew_deadline + api_timeout >= self.duration {
            return Err(format!(
                "the API timeout ({api_timeout:?}) must be shorter than the lease duration minus the renew deadline ({:?}), \
                 or a write begun while leading could land after a standby took over",
                self.duration - self.renew_deadline
            ));
        }
        Ok(())
    }
}

/// What the Lease says, as far as the decision goes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Record {
    /// `None` or empty: released.
    pub holder: Option<String>,
    /// The holder's last renewal as it wrote it — only ever compared for equality, never with our clock.
    pub renew_time: Option<String>,
    pub duration: Option<Duration>,
}

/// What to do with the Lease now.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decision {
    /// There is no Lease: create it, holding it.
    Create,
    /// We hold it: renew.
    Renew,
    /// Released, or its holder stopped renewing a whole lease duration ago (on our clock): take it.
    TakeOver,
    /// Someone else holds it and renewed recently enough.
    Wait,
}

/// The takeover decision. `record` is the Lease now (`None`: absent); `first_seen` is when we first saw
/// this exact record (holder and renew time) — the holder's clock never enters into it, so clock skew
/// between replicas does not matter.
pub fn decide(
    record: Option<&Record>,
    identity: &str,
    first_seen: Instant,
    now: Instant,
    default_duration: Duration,
) -> Decision {
    let Some(record) = record else {
        return Decision::Create;
    };
    match record.holder.as_deref().filter(|holder| !holder.is_empty()) {
        None => Decision::TakeOver,
        // Our own record, however old: only this process carries our identity (a restarted process of
        // the same pod may take its own lease back at once).
        Some(holder) if holder == identity => Decision::Renew,
        Some(_) => {
            let duration = record.duration.unwrap_or(default_duration);
            if now.saturating_duration_since(first_seen) >= duration {
                Decision::TakeOver
            } else {
                Decision::Wait
            }
        }
    }
}

/// The election loop's half that writes the Lease.
#[derive(Debug)]
pub struct Elector {
    api: Api<Lease>,
    settings: LeaseSettings,
    state: watch::Sender<Option<Instant>>,
    /// The record we last saw, and when we first saw it.
    observed: Option<(Record, Instant)>,
}

impl Elector {
    pub fn new(api: Api<Lease>, settings: LeaseSettings) -> (Self, Leadership) {
        let (state, until) = watch::channel(None);
        (
            Self {
                api,
                settings,
                state,
                observed: None,
            },
            Leadership {
                until,
                _constant: None,
            },
        )
    }

    /// Campaigns and renews until `release` resolves, then steps down and releases the Lease if held.
    /// The caller resolves `release` once its writes have stopped.
    pub async fn run(mut self, release: impl std::future::Future<Output = ()>) {
        tokio::pin!(release);
        loop {
            let started = Instant::now();
            let leading_until = self.leading_until();
            // A leader's call may last only until its deadline; a standby's, one renew period.
            let budget = leading_until
                .map_or(self.settings.renew_period, |until| {
                    until.saturating_duration_since(started)
                })
                .max(Duration::from_millis(100));
            match tokio::time::timeout(budget, self.try_acquire_or_renew()).await {
                Ok(Ok(true)) => self.lead_until(started + self.settings.renew_deadline),
                Ok(Ok(false)) => self.step_down("another replica holds the Lease"),
                Ok(Err(error)) => {
                    tracing::warn!(%error, lease = %self.settings.name, "could not read or write the leader Lease");
                }
                Err(_) => {
                    tracing::warn!(lease = %self.settings.name, "the leader Lease call did not finish in time")
                }
            }
            // A leader that could not renew leads on only until its deadline.
            if let Some(until) = self.leading_until()
                && Instant::now() >= until
            {
                self.step_down("the renew deadline passed without a renewal");
            }
            let next = Instant::now() + self.settings.renew_period;
            let wake = self.leading_until().map_or(next, |until| next.min(until));
            tokio::select! {
                _ = tokio::time::sleep_until(wake.into()) => {}
                _ = &mut release => break,
            }
        }
        if self.leading_until().is_some() {
            self.step_down("stopping");
            match tokio::time::timeout(self.settings.renew_period, self.release()).await {
                Ok(Ok(())) => {}
                Ok(Err(error)) => {
                    tracing::warn!(%error, "could not release the leader Lease; a standby takes over when it expires");
                }
                Err(_) => tracing::warn!(
                    "releasing the leader Lease took too long; a standby takes over when it expires"
                ),
            }
        }
    }

    fn leading_until(&self) -> Option<Instant> {
        *self.state.borrow()
    }

    fn lead_until(&mut self, until: Instant) {
        let was_leading = self.leading_until().is_some();
        self.state.send_replace(Some(until));
        if !was_leading {
            tracing::info!(identity = %self.settings.identity, lease = %self.settings.name, "became the leader");
        }
    }

    fn step_down(&mut self, why: &str) {
        if self.state.send_replace(None).is_some() {
            tracing::info!(identity = %self.settings.identity, lease = %self.settings.name, why, "no longer the leader");
        }
    }

    async fn try_acquire_or_renew(&mut self) -> Result<bool, kube::Error> {
        let now = MicroTime(Timestamp::now());
        let lease = self.api.get_opt(&self.settings.name).await?;
        let record = lease.as_ref().map(|lease| {
            let spec = lease.spec.clone().unwrap_or_default();
            Record {
                holder: spec.holder_identity,
                renew_time: spec.renew_time.map(|time| time.0.to_string()),
                duration: spec
                    .lease_duration_seconds
                    .map(|seconds| Duration::from_secs(u64::try_from(seconds.max(1)).unwrap_or(1))),
            }
        });
        let first_seen = match (&self.observed, &record) {
            (Some((seen, at)), Some(record)) if seen == record => *at,
            (_, Some(record)) => {
                let at = Instant::now();
                self.observed = Some((record.clone(), at));
                at
            }
            (_, None) => Instant::now(),
        };
        let decision = decide(
            record.as_ref(),
            &self.settings.identity,
            first_seen,
            Instant::now(),
            self.settings.duration,
        );
        match (decision, lease) {
            (Decision::Wait, _) => Ok(false),
            (Decision::Create, _) | (_, None) => {
                let lease = Lease {
                    metadata: ObjectMeta {
                        name: Some(self.settings.name.clone()),
                        ..Default::default()
                    },
                    spec: Some(self.spec_for_us(now, 0)),
                };
                written(self.api.create(&PostParams::default(), &lease).await)
            }
            (Decision::Renew, Some(mut lease)) => {
                let mut spec = lease.spec.take().unwrap_or_default();
                spec.renew_time = Some(now);
                spec.lease_duration_seconds = Some(self.duration_seconds());
                lease.spec = Some(spec);
                written(
                    self.api
                        .replace(&self.settings.name, &PostParams::default(), &lease)
                        .await,
                )
            }
            (Decision::TakeOver, Some(mut lease)) => {
                let previous = lease.spec.take().unwrap_or_default();
                tracing::info!(previous = ?previous.holder_identity, "taking over the leader Lease");
                let transitions = previous.lease_transitions.unwrap_or(0) + 1;
                lease.spec = Some(self.spec_for_us(now, transitions));
                written(
                    self.api
                        .replace(&self.settings.name, &PostParams::default(), &lease)
                        .await,
                )
            }
        }
    }

    fn spec_for_us(&self, now: MicroTime, transitions: i32) -> LeaseSpec {
        LeaseSpec {
            holder_identity: Some(self.settings.identity.clone()),
            lease_duration_seconds: Some(self.duration_seconds()),
            acquire_time: Some(now.clone()),
            renew_time: Some(now),
            lease_transitions: Some(transitions),
            ..Default::default()
        }
    }

    fn duration_seconds(&self) -> i32 {
        i32::try_from(self.settings.duration.as_secs()).unwrap_or(i32::MAX)
    }

    async fn release(&self) -> Result<(), kube::Error> {
        let Some(mut lease) = self.api.get_opt(&self.settings.name).await? else {
            return Ok(());
        };
        let Some(spec) = lease.spec.as_mut() else {
            return Ok(());
        };
        if spec.holder_identity.as_deref() != Some(self.settings.identity.as_str()) {
            return Ok(());
        }
        spec.holder_identity = None;
        spec.renew_time = Some(MicroTime(Timestamp::now()));
        self.api
            .replace(&lease.name_any(), &PostParams::default(), &lease)
            .await?;
        tracing::info!(lease = %self.settings.name, "released the leader Lease");
        Ok(())
    }
}

/// A 409 Conflict means another replica wrote first: not an error, just not the leader.
fn written(result: Result<Lease, kube::Error>) -> Result<bool, kube::Error> {
    match result {
        Ok(_) => Ok(true),
        Err(kube::Error::Api(status)) if status.code == 409 => Ok(false),
        Err(error) => Err(error),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DURATION: Duration = Duration::from_secs(10);

    fn held_by(holder: &str, renewed: &str) -> Record {
        Record {
            holder: Some(holder.to_owned()),
            renew_time: Some(renewed.to_owned()),
            duration: Some(DURATION),
        }
    }

    #[test]
    fn no_lease_is_created_and_our_own_is_renewed_however_old() {
        let now = Instant::now();
        assert_eq!(decide(None, "me", now, now, DURATION), Decision::Create);
        // Our own record, written long ago by a process of ours that is gone.
        let stale = held_by("me", "2001-01-01T00:00:00Z");
        assert_eq!(decide(Some(&stale), "me", now, now, DURATION), Decision::Renew);
    }

    #[test]
    fn a_foreign_holder_is_waited_for_a_whole_duration_on_our_clock() {
        let seen = Instant::now();
        let record = held_by("other", "2026-12-01T10:00:00Z");
        assert_eq!(decide(Some(&record), "me", seen, seen, DURATION), Decision::Wait);
        assert_eq!(
            decide(Some(&record), "me", seen, seen + Duration::from_secs(9), DURATION),
            Decision::Wait
        );
        assert_eq!(
            decide(Some(&record), "me", seen, seen + DURATION, DURATION),
            Decision::TakeOver,
            "expired"
        );
    }

    #[test]
    fn clock_skew_does_not_matter() {
        // The holder's clock runs a day ahead or behind: only how long we have seen the record counts.
        let seen = Instant::now();
        for renewed in ["2099-01-01T00:00:00Z", "1999-01-01T00:00:00Z"] {
            let record = held_by("other", renewed);
            assert_eq!(
                decide(Some(&record), "me", seen, seen + Duration::from_secs(1), DURATION),
                Decision::Wait,
                "{renewed}"
            );
            assert_eq!(
                decide(Some(&record), "me", seen, seen + DURATION, DURATION),
                Decision::TakeOver,
                "{renewed}"
            );
        }
    }

    #[test]
    fn a_released_lease_is_taken_at_once_and_the_holders_own_duration_counts() {
        let now = Instant::now();
        for holder in [None, Some(String::new())] {
            let released = Record {
                holder,
                renew_time: None,
                duration: None,
            };
            assert_eq!(
                decide(Some(&released), "me", now, now, DURATION),
                Decision::TakeOver
            );
        }
        let long = Record {
            duration: Some(Duration::from_secs(60)),
            ..held_by("other", "t")
        };
        assert_eq!(
            decide(Some(&long), "me", now, now + Duration::from_secs(30), DURATION),
            Decision::Wait
        );
    }

    #[test]
    fn the_api_timeout_must_end_before_a_standby_may_take_over() {
        let settings = LeaseSettings::new("l".into(), "ns".into(), "me".into(), Duration::from_secs(15));
        assert_eq!(settings.renew_deadline, Duration::from_secs(10));
        assert!(settings.check_api_timeout(Duration::from_secs(4)).is_ok());
        assert!(settings.check_api_timeout(Duration::from_secs(5)).is_err());
    }

    #[tokio::test]
    async fn leadership_ends_at_its_deadline_without_anyone_saying_so() {
        let (sender, until) = watch::channel(Some(Instant::now() + Duration::from_millis(50)));
        let leadership = Leadership {
            until,
            _constant: None,
        };
        assert!(leadership.is_leader());
        tokio::time::sleep(Duration::from_millis(80)).await;
        assert!(!leadership.is_leader(), "a hung renewal cannot extend leadership");
        drop(sender);
        assert!(Leadership::always().is_leader());
    }
}
