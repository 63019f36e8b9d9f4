//! SIGTERM or SIGINT starts a graceful stop; a second signal asks to abort at once.

use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::watch;

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Phase {
    Running,
    Draining,
    Aborting,
}

/// A handle on the process's stop signals, cheap to clone into every task that must stop.
#[derive(Clone, Debug)]
pub struct Shutdown {
    phase: watch::Receiver<Phase>,
    // Held only by `never()`: with the sender alive, `wait_for` keeps waiting instead of returning.
    _idle_sender: Option<std::sync::Arc<watch::Sender<Phase>>>,
}

impl Shutdown {
    /// Starts listening for SIGTERM and SIGINT. Must be called inside a Tokio runtime.
    pub fn install() -> std::io::Result<Self> {
        let mut terminate = signal(SignalKind::terminate())?;
        let mut interrupt = signal(SignalKind::interrupt())?;
        let (sender, phase) = watch::channel(Phase::Running);
        tokio::spawn(async move {
            for next in [Phase::Draining, Phase::Aborting] {
                let name = tokio::select! {
                    _ = terminate.recv() => "SIGTERM",
                    _ = interrupt.recv() => "SIGINT",
                };
                tracing::info!(signal = name, phase = ?next, "stop signal received");
                if sender.send(next).is_err() {
                    return;
                }
            }
        });
        Ok(Self {
            phase,
            _idle_sender: None,
        })
    }

    /// A handle that never fires, for tests and embedded use.
    pub fn never() -> Self {
        let (sender, phase) = watch::channel(Phase::Running);
        Self {
            phase,
            _idle_sender: Some(std::sync::Arc::new(sender)),
        }
    }

    /// Resolves at the first stop signal: stop taking new work and finish what is in flight.
    pub async fn draining(&self) {
        self.reached(Phase::Draining).await;
    }

    /// Resolves at the second stop signal: the operator wants the process gone now.
    pub async fn aborting(&self) {
        self.reached(Phase::Aborting).await;
    }

    async fn reached(&self, wanted: Phase) {
        let mut phase = self.phase.clone();
        // An Err means the sender is gone, which only happens when the runtime shuts down.
        let _ = phase.wait_for(|current| *current >= wanted).await;
    }
}
