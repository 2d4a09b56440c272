//! One shutdown primitive for every long-running component.
//!
//! A [`Shutdown`] is a cheap, cloneable token: whoever owns the process (the `keel` binary, a test,
//! a service embedding keel) triggers it once, and every component holding a clone stops. A
//! component that takes a shutdown *future* (`consumer::run`, the projection runner, a rebuild) is
//! given [`Shutdown::wait`]. [`Shutdown::child`] gives a part its own token that also stops with the
//! parent, so the part can be stopped first (the API before the relay, for example).
//!
//! [`on_signals`] is the one place that turns SIGINT (Ctrl-C) and SIGTERM into a shutdown.
//!
//! Invariant: once triggered, a token stays triggered; [`Shutdown::wait`] on it completes at once.

use std::future::Future;

use tokio_util::sync::CancellationToken;

/// A cloneable "stop now" signal. Clones share the state: triggering one triggers all.
#[derive(Debug, Clone, Default)]
pub struct Shutdown(CancellationToken);

impl Shutdown {
    pub fn new() -> Self {
        Self::default()
    }

    /// Asks every holder of this token (and of its children) to stop. Idempotent.
    pub fn trigger(&self) {
        self.0.cancel();
    }

    pub fn is_triggered(&self) -> bool {
        self.0.is_cancelled()
    }

    /// Completes once the token is triggered. Owns a clone, so it can be moved into a task or
    /// handed to a component that takes `impl Future<Output = ()> + 'static`.
    pub fn wait(&self) -> impl Future<Output = ()> + Send + 'static {
        self.0.clone().cancelled_owned()
    }

    /// A token triggered with this one, which can also be triggered alone.
    pub fn child(&self) -> Self {
        Self(self.0.child_token())
    }

    /// A token triggered when `stop` completes (or by hand). For callers that hold a plain future,
    /// such as [`crate::app::Application::run_until_stopped`]'s.
    pub fn when(stop: impl Future<Output = ()> + Send + 'static) -> Self {
        let shutdown = Self::new();
        let trigger = shutdown.clone();
        tokio::spawn(async move {
            tokio::select! {
                _ = stop => trigger.trigger(),
                // Nothing waits on `stop` once the token was triggered by other means.
                _ = trigger.wait() => {}
            }
        });
        shutdown
    }
}

/// A token triggered on Ctrl-C (SIGINT) or SIGTERM. Must be called inside a tokio runtime.
pub fn on_signals() -> Shutdown {
    Shutdown::when(signalled())
}

/// Completes on the first SIGINT or SIGTERM. If a signal cannot be listened for, that one is
/// logged and never fires (the other still does).
async fn signalled() {
    let ctrl_c = async {
        if let Err(err) = tokio::signal::ctrl_c().await {
            tracing::error!(error = %err, "cannot listen for ctrl-c");
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(err) => {
                tracing::error!(error = %err, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
    tracing::info!("shutting down");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_trigger_reaches_every_clone_and_child_but_a_child_stops_alone() {
        let root = Shutdown::new();
        let clone = root.clone();
        let child = root.child();
        child.trigger();
        assert!(child.is_triggered());
        assert!(!root.is_triggered(), "a child does not stop its parent");
        let waiting = tokio::spawn(clone.wait());
        root.trigger();
        waiting.await.unwrap();
        assert!(clone.is_triggered() && root.child().is_triggered());
    }

    #[tokio::test]
    async fn when_turns_a_future_into_a_token() {
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let shutdown = Shutdown::when(async move {
            let _ = rx.await;
        });
        assert!(!shutdown.is_triggered());
        tx.send(()).unwrap();
        shutdown.wait().await;
        assert!(shutdown.is_triggered());
    }
}
