//! [`Steps`]: the steps of one task's timeline, as the dashboard keeps them for the
//! 10,000 most recent tasks. Most tasks have three (submitted, started on a worker,
//! final on the same worker), with no message: those are kept in place in 16 bytes
//! each, the worker once. Anything else (a fourth step, a message, a second worker)
//! turns the timeline into a list of full entries. Small matters here: the kept
//! timelines are written once per task and read when the oldest leaves, long after
//! the cache forgot them, so each byte kept is memory traffic on the event loop.

use crate::protocol::api::{SharedName, TimelineEntry};

/// The most steps one timeline keeps (a task retried many times keeps its first and
/// last steps).
pub const MAX_TRAIL_STEPS: usize = 64;

/// What a step is, as the timeline's JSON names it.
const EVENTS: [&str; 9] = [
    "submitted",
    "scheduled",
    "started",
    "retrying",
    "requeued",
    "success",
    "failure",
    "cancelled",
    "final",
];

/// The steps kept in place.
const IN_PLACE: usize = 3;

/// One step kept in place.
#[derive(Debug, Clone, Copy, Default)]
struct Step {
    at: u64,
    attempt: u32,
    /// Its index in [`EVENTS`].
    event: u8,
    /// Whether the timeline's worker ran it.
    on_worker: bool,
}

/// A timeline's steps, oldest first.
#[derive(Debug, Default)]
pub struct Steps(Repr);

#[derive(Debug)]
enum Repr {
    /// Up to three steps without a message, on at most one worker.
    InPlace {
        steps: [Step; IN_PLACE],
        len: u8,
        worker: Option<SharedName>,
    },
    /// Any other.
    Listed(Vec<TimelineEntry>),
}

impl Default for Repr {
    fn default() -> Self {
        Repr::InPlace {
            steps: [Step::default(); IN_PLACE],
            len: 0,
            worker: None,
        }
    }
}

impl Steps {
    /// Adds `step` (past [`MAX_TRAIL_STEPS`], the oldest after the first goes).
    pub fn push(&mut self, step: TimelineEntry) {
        if let Repr::InPlace { steps, len, worker } = &mut self.0 {
            let event = EVENTS.iter().position(|e| *e == step.event);
            let same_worker = match (&step.worker_id, &*worker) {
                (None, _) | (Some(_), None) => true,
                (Some(new), Some(old)) => new == old,
            };
            let fits = usize::from(*len) < IN_PLACE && step.message.is_none() && same_worker;
            if let (Some(event), true) = (event, fits) {
                let on_worker = step.worker_id.is_some();
                if worker.is_none() {
                    *worker = step.worker_id;
                }
                steps[usize::from(*len)] = Step {
                    at: step.at,
                    attempt: step.attempt,
                    event: event as u8,
                    on_worker,
                };
                *len += 1;
                return;
            }
            self.0 = Repr::Listed(self.to_vec());
        }
        if let Repr::Listed(list) = &mut self.0 {
            if list.len() >= MAX_TRAIL_STEPS {
                // Keep the first step and the newest: drop the oldest after it.
                list.remove(1);
            }
            list.push(step);
        }
    }

    /// The steps as the API shows them, oldest first.
    pub fn to_vec(&self) -> Vec<TimelineEntry> {
        match &self.0 {
            Repr::InPlace { steps, len, worker } => steps[..usize::from(*len)]
                .iter()
                .map(|s| {
                    let mut entry = TimelineEntry::new(
                        s.at,
                        EVENTS.get(usize::from(s.event)).copied().unwrap_or("final"),
                        s.attempt,
                    );
                    if s.on_worker {
                        entry.worker_id = worker.clone();
                    }
                    entry
                })
                .collect(),
            Repr::Listed(list) => list.clone(),
        }
    }

    /// How many steps.
    pub fn len(&self) -> usize {
        match &self.0 {
            Repr::InPlace { len, .. } => usize::from(*len),
            Repr::Listed(list) => list.len(),
        }
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn step(at: u64, event: &'static str, worker: Option<&str>) -> TimelineEntry {
        let mut entry = TimelineEntry::new(at, event, 1);
        entry.worker_id = worker.map(SharedName::from);
        entry
    }

    #[test]
    fn the_usual_three_steps_stay_in_place_and_read_back_as_given() {
        let given = [
            step(1, "submitted", None),
            step(2, "started", Some("sw1")),
            step(3, "success", Some("sw1")),
        ];
        let mut steps = Steps::default();
        for s in given.iter().cloned() {
            steps.push(s);
        }
        assert!(matches!(steps.0, Repr::InPlace { len: 3, .. }));
        assert_eq!(steps.to_vec(), given);
    }

    #[test]
    fn a_message_a_second_worker_or_a_fourth_step_lists_them_all_in_order() {
        let mut with_message = step(3, "retrying", None);
        with_message.message = Some("boom".into());
        let cases = [
            vec![step(1, "submitted", None), with_message],
            vec![
                step(1, "submitted", None),
                step(2, "started", Some("sw1")),
                step(3, "requeued", None),
                step(4, "started", Some("sw2")),
            ],
            vec![
                step(1, "submitted", None),
                step(2, "started", Some("sw1")),
                step(3, "started", Some("sw2")),
            ],
        ];
        for given in cases {
            let mut steps = Steps::default();
            for s in given.iter().cloned() {
                steps.push(s);
            }
            assert!(matches!(steps.0, Repr::Listed(_)), "{given:?}");
            assert_eq!(steps.to_vec(), given);
        }
    }

    #[test]
    fn a_long_timeline_keeps_its_first_and_newest_steps() {
        let mut steps = Steps::default();
        for at in 0..(MAX_TRAIL_STEPS as u64 + 10) {
            steps.push(step(at, "requeued", None));
        }
        let kept = steps.to_vec();
        assert_eq!(kept.len(), MAX_TRAIL_STEPS);
        assert_eq!(kept[0].at, 0);
        assert_eq!(kept[1].at, 11);
        assert_eq!(kept.last().map(|s| s.at), Some(MAX_TRAIL_STEPS as u64 + 9));
    }
}
