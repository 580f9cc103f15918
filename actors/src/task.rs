//! Work an actor hands to a task: the one way the engine spawns it, so that
//! a panic inside the task reaches the actor as a message instead of
//! vanishing with the task (a bare `tokio::spawn` drops a panic on the
//! floor: a panicking `prepare` left its instance `deploying` until the
//! rollback timeout, which then ghosted a good release).

use std::any::Any;
use std::future::Future;
use std::panic::AssertUnwindSafe;

use futures::FutureExt;
use ractor::{ActorRef, Message};

/// A task's work panicked: `what` names the work, `message` is the
/// panic's text.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{what} panicked: {message}")]
pub struct TaskPanic {
    pub what: &'static str,
    pub message: String,
}

/// Runs `work` in a task and casts `done(result)` to `owner`; a panic in
/// `work` becomes `done(Err(TaskPanic.into()))`, so the work's own error
/// type carries it (no `Result<Result<…>>` to flatten). `what` names the
/// work in that error and in the log.
pub fn spawn_for<M, T, E, F>(
    owner: ActorRef<M>,
    what: &'static str,
    work: F,
    done: impl FnOnce(Result<T, E>) -> M + Send + 'static,
) where
    M: Message,
    T: Send + 'static,
    E: From<TaskPanic> + Send + 'static,
    F: Future<Output = Result<T, E>> + Send + 'static,
{
    tokio::spawn(async move {
        let result = match AssertUnwindSafe(work).catch_unwind().await {
            Ok(result) => result,
            Err(panic) => {
                let error = TaskPanic {
                    what,
                    message: panic_message(&*panic),
                };
                tracing::error!(%error, "a task of {} failed", owner.get_name().unwrap_or_default());
                Err(error.into())
            }
        };
        let _ = owner.cast(done(result));
    });
}

/// The text of a panic payload (`panic!("…")` gives a `&str` or a `String`).
pub fn panic_message(panic: &(dyn Any + Send)) -> String {
    if let Some(s) = panic.downcast_ref::<&str>() {
        (*s).to_string()
    } else if let Some(s) = panic.downcast_ref::<String>() {
        s.clone()
    } else {
        "(no message)".to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ractor::{Actor, ActorProcessingErr};

    struct Collect;
    impl Actor for Collect {
        type Msg = (
            Result<u32, TaskPanic>,
            tokio::sync::mpsc::UnboundedSender<Result<u32, TaskPanic>>,
        );
        type State = ();
        type Arguments = ();
        async fn pre_start(&self, _: ActorRef<Self::Msg>, _: ()) -> Result<(), ActorProcessingErr> {
            Ok(())
        }
        async fn handle(
            &self,
            _: ActorRef<Self::Msg>,
            (result, tx): Self::Msg,
            _: &mut (),
        ) -> Result<(), ActorProcessingErr> {
            let _ = tx.send(result);
            Ok(())
        }
    }

    #[tokio::test]
    async fn results_and_panics_both_reach_the_owner() {
        let (actor, _join) = Actor::spawn(None, Collect, ()).await.unwrap();
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let tx2 = tx.clone();
        spawn_for(actor.clone(), "fine work", async { Ok(7) }, move |r| {
            (r, tx)
        });
        assert_eq!(rx.recv().await.unwrap(), Ok(7));
        spawn_for(
            actor.clone(),
            "bad work",
            async {
                if true {
                    panic!("boom {}", 42);
                }
                Ok(0)
            },
            move |r| (r, tx2),
        );
        let err = rx.recv().await.unwrap().unwrap_err();
        assert_eq!(err.to_string(), "bad work panicked: boom 42");
        actor.stop(None);
    }
}
