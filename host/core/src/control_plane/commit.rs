//! [`Committer`]: group commit between the [`Dispatcher`] and the [`Store`]. With
//! `--data-dir`, every reply that reports state waits until the changes that produced
//! it are durable: `Accepted`, a result, a status, `Registered`, a callback. One
//! commit (one fsync) covers everything that happened while the previous one was
//! being written, so the rate of fsyncs, not the rate of tasks, bounds it.
//!
//! Assignments do not wait: an `Assign` goes out at once and its lease is written with
//! the commit in progress or the next one. Holding it would put an fsync between every
//! outcome and the next task a worker gets (measured: a subworker with 4 slots went
//! from 8,200 to 1,400 tasks/s). What that costs: a task assigned in the last few
//! milliseconds before a crash, whose lease was not written yet, is not reclaimed by
//! its worker after the restart and runs again (execution is at least once; its
//! result is recorded once).
//!
//! A failed commit (a full disk, an I/O error): the tasks it would have accepted are
//! dropped and their submitters get `Rejected` with the reason, as are tasks accepted
//! while it was being written; the rest is sent and written again later; submissions
//! are refused until a commit succeeds (retried every [`RETRY_EVERY`]).

use std::{
    collections::HashSet,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use tokio::sync::mpsc;
use tracing::{error, info};

use super::{
    dispatcher::{Action, Dispatcher, Unsaved},
    store::{Changes, Store, StoreError},
};
use crate::{
    protocol::{FromControlPlane, TaskId},
    task_error::{ErrorKind, TaskError},
};

/// How soon a failed commit is tried again.
pub const RETRY_EVERY: Duration = Duration::from_millis(500);

/// A commit that was written (or failed), with the actions that waited for it.
pub struct Written {
    result: Result<(), StoreError>,
    changes: Changes,
    unsaved: Unsaved,
    actions: Vec<Action>,
}

/// Where written commits arrive; the event loop selects on it and hands each to
/// [`Committer::finish`].
pub type CommitsDone = mpsc::UnboundedReceiver<Written>;

/// The commit pipeline (at most one commit in flight).
pub struct Committer {
    store: Arc<Mutex<Box<dyn Store>>>,
    /// Actions waiting for the next commit.
    staged: Vec<Action>,
    /// A commit is being written.
    writing: bool,
    done: mpsc::UnboundedSender<Written>,
    /// After a failure: no commit before this.
    retry_at: Option<Instant>,
    /// Commits written, for the log at exit.
    commits: u64,
}

impl Committer {
    /// A pipeline onto `store`, and where its commits arrive when written.
    pub fn new(store: Box<dyn Store>) -> (Self, CommitsDone) {
        let (done, arrivals) = mpsc::unbounded_channel();
        let committer = Committer {
            store: Arc::new(Mutex::new(store)),
            staged: Vec::new(),
            writing: false,
            done,
            retry_at: None,
            commits: 0,
        };
        (committer, arrivals)
    }

    /// Takes the dispatcher's actions and, unless a commit is being written, starts
    /// the next one. Returns the actions that may go now (they changed nothing, or
    /// the store is failing and they are sent without waiting).
    pub fn stage(&mut self, dispatcher: &mut Dispatcher) -> Vec<Action> {
        let (mut out, held): (Vec<Action>, Vec<Action>) = dispatcher
            .take_actions()
            .into_iter()
            .partition(|a| !waits_for_commit(a));
        self.staged.extend(held);
        if self.writing {
            return out;
        }
        if self.retry_at.is_some_and(|at| Instant::now() < at) {
            // Degraded until the retry: tasks accepted meanwhile (before the refusal
            // began) were never written, so they are refused too; what is left goes
            // without waiting for a commit that is not coming.
            let unsaved = dispatcher.drop_unsaved_accepted();
            let reason = dispatcher.store_error().unwrap_or_default().to_string();
            out.extend(refuse_unsaved(
                std::mem::take(&mut self.staged),
                &unsaved,
                &reason,
            ));
            return out;
        }
        if !dispatcher.has_changes() {
            out.append(&mut self.staged);
            return out;
        }
        let (changes, unsaved) = dispatcher.take_changes();
        let actions = std::mem::take(&mut self.staged);
        let store = self.store.clone();
        let done = self.done.clone();
        self.writing = true;
        tokio::task::spawn_blocking(move || {
            let result = store
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .commit(&changes);
            // The receiver lives as long as the event loop.
            let _ = done.send(Written {
                result,
                changes,
                unsaved,
                actions,
            });
        });
        out
    }

    /// A commit was written: returns what may be sent now.
    pub fn finish(&mut self, dispatcher: &mut Dispatcher, written: Written) -> Vec<Action> {
        self.writing = false;
        let Written {
            result,
            changes,
            unsaved,
            actions,
        } = written;
        match result {
            Ok(()) => {
                self.commits += 1;
                if self.retry_at.take().is_some() {
                    info!("the data directory is writable again: accepting tasks");
                }
                dispatcher.commit_succeeded();
                actions
            }
            Err(err) => {
                let reason = err.to_string();
                error!(
                    "commit failed ({reason}): {} new task(s) refused; submissions are refused until a commit succeeds",
                    unsaved.tasks().len()
                );
                dispatcher.commit_failed(&changes, &unsaved, reason.clone());
                self.retry_at = Some(Instant::now() + RETRY_EVERY);
                // What waits for the next commit may speak of the dropped tasks too.
                self.staged =
                    refuse_unsaved(std::mem::take(&mut self.staged), unsaved.tasks(), &reason);
                refuse_unsaved(actions, unsaved.tasks(), &reason)
            }
        }
    }

    /// Writes what is left (at exit), waiting for it; returns what may be sent.
    pub async fn flush(
        &mut self,
        dispatcher: &mut Dispatcher,
        arrivals: &mut CommitsDone,
    ) -> Vec<Action> {
        let mut out = Vec::new();
        // The commit being written, then one with what is left (bounded: a failing
        // store gets a few tries, not a loop).
        for _ in 0..4 {
            if self.writing {
                match arrivals.recv().await {
                    Some(written) => out.extend(self.finish(dispatcher, written)),
                    None => break,
                }
            }
            self.retry_at = None;
            out.extend(self.stage(dispatcher));
            if !self.writing {
                break;
            }
        }
        info!("{} commits written to the data directory", self.commits);
        out
    }
}

/// Whether `action` must wait until the state it reports is on disk. Assignments,
/// cancel signals and liveness answers do not (see the module docs).
fn waits_for_commit(action: &Action) -> bool {
    match action {
        Action::Send { msg, .. } => !matches!(
            msg,
            FromControlPlane::Assign { .. }
                | FromControlPlane::CancelTask { .. }
                | FromControlPlane::Pong { .. }
                | FromControlPlane::HeartbeatAck
                | FromControlPlane::Welcome(_)
                | FromControlPlane::Announce(_)
        ),
        Action::Callback { .. } => true,
    }
}

/// The actions of a failed commit: `Accepted` for a task that was not saved becomes
/// `Rejected` (with why), its assignment is not sent; the rest goes as it is.
fn refuse_unsaved(actions: Vec<Action>, unsaved: &[TaskId], reason: &str) -> Vec<Action> {
    let unsaved: HashSet<&TaskId> = unsaved.iter().collect();
    actions
        .into_iter()
        .filter_map(|action| match action {
            Action::Send {
                peer,
                msg:
                    FromControlPlane::Accepted {
                        request_id,
                        task_ids,
                    },
            } if task_ids.iter().any(|id| unsaved.contains(id)) => Some(Action::Send {
                peer,
                msg: FromControlPlane::Rejected {
                    request_id,
                    error: TaskError::new(
                        ErrorKind::Rejected,
                        format!("not accepted: the control plane could not write its data directory ({reason})"),
                    ),
                },
            }),
            Action::Send {
                msg: FromControlPlane::Assign { ref task, .. },
                ..
            } if unsaved.contains(&task.id) => None,
            other => Some(other),
        })
        .collect()
}
