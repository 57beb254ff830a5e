//! Signals, caught at the edge: `schedwatch run` turns SIGTERM and SIGINT into a cancelled
//! [`CancellationToken`] for the service ([`crate::service::run`]), which never touches
//! signals itself and so runs inside a test process as it runs here.

use std::time::Duration;

use tokio_util::sync::CancellationToken;

/// SIGTERM and SIGINT, registered when made: a signal that comes while the service is still
/// starting is not lost (nor does it kill the process, the default action).
pub struct Signals {
    #[cfg(unix)]
    term: tokio::signal::unix::Signal,
    #[cfg(unix)]
    int: tokio::signal::unix::Signal,
}

impl Signals {
    /// Registers the handlers now; needs a runtime's context.
    pub fn register() -> std::io::Result<Signals> {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{signal, SignalKind};
            Ok(Signals {
                term: signal(SignalKind::terminate())?,
                int: signal(SignalKind::interrupt())?,
            })
        }
        #[cfg(not(unix))]
        Ok(Signals {})
    }

    async fn recv(mut self) {
        #[cfg(unix)]
        tokio::select! {
            _ = self.term.recv() => {}
            _ = self.int.recv() => {}
        }
        #[cfg(not(unix))]
        let _ = tokio::signal::ctrl_c().await;
    }

    /// Waits for a signal, cancels `shutdown`, and gives the in-flight work `deadline`: past
    /// it the process exits 0 (Cloud Run's grace period ends anyway), and the messages not
    /// acked by then come back. Spawn it on a runtime worker, beside the service.
    pub async fn cancel_on_signal(self, shutdown: CancellationToken, deadline: Duration) {
        self.recv().await;
        tracing::info!("shutting down: no more pulling; finishing in-flight work");
        shutdown.cancel();
        tokio::time::sleep(deadline).await;
        tracing::warn!("in-flight work did not finish within {deadline:?}; exiting: unacked messages will be redelivered");
        std::process::exit(0);
    }
}
