//! Leader election on a `coordination.k8s.io/v1` Lease, so two replicas can run and only one writes.
//!
//! As client-go does it: the leader renews the Lease every `renew_period`; a standby takes over once the
//! Lease record has not changed for a whole lease duration, measured on the standby's own clock (so the
//! replicas' clocks need not agree); every write carries the resourceVersion it read, so two replicas
//! can never both win. A leader that cannot renew within two thirds of the duration steps down before
//! anyone else may take over, and a leader that stops releases the Lease so a standby need not wait.

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
    state: watch::Receiver<bool>,
    /// Held by `always()`: with its sender alive, a watch on this state waits instead of ending.
    _constant: Option<std::sync::Arc<watch::Sender<bool>>>,
}

impl Leadership {
    /// Without leader election the only replica always leads.
    pub fn always() -> Self {
        let (sender, state) = watch::channel(true);
        Self {
            state,
            _constant: Some(std::sync::Arc::new(sender)),
        }
    }

    pub fn is_leader(&self) -> bool {
        *self.state.borrow()
    }

    /// A receiver that sees every change of leadership (`changed()` wakes on each).
    pub fn changes(&self) -> watch::Receiver<bool> {
        self.state.clone()
    }
}

#[derive(Clone, Debug)]
pub struct LeaseSettings {
    pub name: String,
    pub namespace: String,
    pub identity: String,
    pub duration: Duration,
    pub renew_period: Duration,
}

impl LeaseSettings {
    pub fn new(name: String, namespace: String, identity: String, duration: Duration) -> Self {
        // client-go's defaults keep the same proportions: 15 s lease, 2 s retry.
        let renew_period = (duration / 5).max(Duration::from_millis(500));
        Self {
            name,
            namespace,
            identity,
            duration,
            renew_period,
        }
    }

    fn renew_deadline(&self) -> Duration {
        self.duration * 2 / 3
    }
}

/// The election loop's half that writes the Lease.
#[derive(Debug)]
pub struct Elector {
    api: Api<Lease>,
    settings: LeaseSettings,
    state: watch::Sender<bool>,
    /// The holder and renew time we last saw, and when we first saw them.
    observed: Option<(Option<String>, Option<MicroTime>, Instant)>,
    last_renewal: Option<Instant>,
}

impl Elector {
    pub fn new(api: Api<Lease>, settings: LeaseSettings) -> (Self, Leadership) {
        let (state, receiver) = watch::channel(false);
        (
            Self {
                api,
                settings,
                state,
                observed: None,
                last_renewal: None,
            },
            Leadership {
                state: receiver,
                _constant: None,
            },
        )
    }

    /// Runs until `stop` resolves, then releases the Lease if held.
    pub async fn run(mut self, stop: impl std::future::Future<Output = ()>) {
        tokio::pin!(stop);
        loop {
            let leading = match self.try_acquire_or_renew().await {
                Ok(leading) => leading,
                Err(error) => {
                    // A leader keeps leading through short API trouble, but not past its renew deadline.
                    let within_deadline = self
                        .last_renewal
                        .is_some_and(|at| at.elapsed() < self.settings.renew_deadline());
                    tracing::warn!(%error, lease = %self.settings.name, "could not read or write the leader Lease");
                    self.is_leader() && within_deadline
                }
            };
            self.set_leader(leading);
            tokio::select! {
                _ = tokio::time::sleep(self.settings.renew_period) => {}
                _ = &mut stop => break,
            }
        }
        if self.is_leader() {
            self.set_leader(false);
            if let Err(error) = self.release().await {
                tracing::warn!(%error, "could not release the leader Lease; a standby takes over when it expires");
            }
        }
    }

    fn is_leader(&self) -> bool {
        *self.state.borrow()
    }

    fn set_leader(&mut self, leading: bool) {
        let changed = self
            .state
            .send_if_modified(|current| std::mem::replace(current, leading) != leading);
        if changed {
            if leading {
                tracing::info!(identity = %self.settings.identity, lease = %self.settings.name, "became the leader");
            } else {
                tracing::info!(identity = %self.settings.identity, lease = %self.settings.name, "no longer the leader");
                self.last_renewal = None;
            }
        }
    }

    async fn try_acquire_or_renew(&mut self) -> Result<bool, kube::Error> {
        let now = MicroTime(Timestamp::now());
        let Some(mut lease) = self.api.get_opt(&self.settings.name).await? else {
            let lease = Lease {
                metadata: ObjectMeta {
                    name: Some(self.settings.name.clone()),
                    ..Default::default()
                },
                spec: Some(self.spec_for_us(now, 0)),
            };
            return self.write(self.api.create(&PostParams::default(), &lease).await);
        };
        let spec = lease.spec.clone().unwrap_or_default();
        let holder = spec.holder_identity.clone().filter(|holder| !holder.is_empty());
        if holder.as_deref() == Some(self.settings.identity.as_str()) {
            let mut renewed = spec;
            renewed.renew_time = Some(now);
            renewed.lease_duration_seconds = Some(self.duration_seconds());
            lease.spec = Some(renewed);
            return self.write(
                self.api
                    .replace(&self.settings.name, &PostParams::default(), &lease)
                    .await,
            );
        }
        let record = (holder.clone(), spec.renew_time.clone());
        let first_seen = match &self.observed {
            Some((seen_holder, seen_renewal, at))
                if (seen_holder, seen_renewal) == (&record.0, &record.1) =>
            {
                *at
            }
            _ => {
                let at = Instant::now();
                self.observed = Some((record.0, record.1, at));
                at
            }
        };
        let their_duration = Duration::from_secs(
            spec.lease_duration_seconds
                .map_or(self.settings.duration.as_secs(), |s| s.max(1) as u64),
        );
        if holder.is_some() && first_seen.elapsed() < their_duration {
            return Ok(false);
        }
        tracing::info!(previous = ?holder, "taking over the leader Lease");
        let transitions = spec.lease_transitions.unwrap_or(0) + 1;
        lease.spec = Some(self.spec_for_us(now, transitions));
        self.write(
            self.api
                .replace(&self.settings.name, &PostParams::default(), &lease)
                .await,
        )
    }

    /// A 409 Conflict means another replica wrote first: not an error, just not the leader.
    fn write(&mut self, result: Result<Lease, kube::Error>) -> Result<bool, kube::Error> {
        match result {
            Ok(_) => {
                self.last_renewal = Some(Instant::now());
                Ok(true)
            }
            Err(kube::Error::Api(status)) if status.code == 409 => Ok(false),
            Err(error) => Err(error),
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
