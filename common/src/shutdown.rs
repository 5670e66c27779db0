//! When to stop: on SIGINT or SIGTERM, listened for from the moment the listener is made, so a
//! signal during start-up is not missed, and one listener for everything that must stop.

use std::future::Future;
use std::sync::Arc;

use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::watch;
use tracing::info;

/// A shutdown request; clones share it. Waiting on this one listener, rather than installing
/// handlers per task, matters: kube's per-controller handlers (`shutdown_on_signal`) stay
/// installed after their controller is dropped, so a leader that lost the Lease and stands by
/// would swallow SIGTERM and never exit.
#[derive(Clone)]
pub struct Shutdown {
    requested: watch::Receiver<bool>,
    /// Held by every copy: a closed channel would read as a request.
    sender: Arc<watch::Sender<bool>>,
}

impl Shutdown {
    /// Listens for SIGINT and SIGTERM from now on.
    pub fn on_signals() -> std::io::Result<Self> {
        let mut terminate = signal(SignalKind::terminate())?;
        let mut interrupt = signal(SignalKind::interrupt())?;
        let (sender, requested) = watch::channel(false);
        let sender = Arc::new(sender);
        let notify = sender.clone();
        tokio::spawn(async move {
            tokio::select! {
                _ = terminate.recv() => info!("SIGTERM: shutting down"),
                _ = interrupt.recv() => info!("SIGINT: shutting down"),
            }
            notify.send_replace(true);
        });
        Ok(Shutdown { requested, sender })
    }

    /// One that is never requested, or only by [`Shutdown::request`] (tests).
    pub fn never() -> Self {
        let (sender, requested) = watch::channel(false);
        Shutdown { requested, sender: Arc::new(sender) }
    }

    pub fn request(&self) {
        self.sender.send_replace(true);
    }

    /// Completes once shutdown is requested.
    pub fn requested(&self) -> impl Future<Output = ()> + Send + Sync + 'static {
        let this = self.clone();
        async move {
            let mut requested = this.requested.clone();
            let _ = requested.wait_for(|requested| *requested).await;
        }
    }

    /// The request as a flag that turns true, for loops that check it between steps. Keep this
    /// `Shutdown` alive meanwhile: once every copy is gone the channel closes.
    pub fn watch(&self) -> watch::Receiver<bool> {
        self.requested.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_request_completes_every_waiter_and_turns_the_flag() {
        let shutdown = Shutdown::never();
        let waiter = tokio::spawn(shutdown.requested());
        let flag = shutdown.watch();
        assert!(!*flag.borrow());
        shutdown.clone().request();
        waiter.await.expect("completes");
        assert!(*flag.borrow());
    }
}
