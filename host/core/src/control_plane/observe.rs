//! [`Observer`]: what the dispatcher tells the dashboard, the HTTP API and `/metrics`
//! as tasks move: an event per step (the feed the server publishes on `/api/events`),
//! the recent tasks' timelines, totals by name and status, wait and run time
//! histograms, and the plugins each subworker has loaded. Off (every method returns at
//! once) when the control plane serves no dashboard.
//!
//! Memory is bounded: at most [`MAX_TRAILS`] timelines, each of at most
//! [`MAX_TRAIL_STEPS`] steps, the payloads kept for a retry at most
//! [`MAX_KEPT_PAYLOAD_BYTES`] in all, at most [`MAX_NAMES`] task names counted.

use std::collections::{hash_map::Entry, HashMap, VecDeque};

use crate::protocol::{
    api::{ApiEvent, ApiPluginEvent, SharedName, TaskTotals, ThroughputSample, TimelineEntry},
    for_people,
    json::ErrorJson,
    PluginEvent, PluginInfo, Priority, TaskEnvelope, TaskError, TaskId, TaskRecord, TaskStatus,
    WorkerId,
};

/// The most recent tasks whose timelines are kept.
pub const MAX_TRAILS: usize = 10_000;
pub use super::timeline::MAX_TRAIL_STEPS;
/// Payload bytes kept for final tasks so the dashboard can retry them.
pub const MAX_KEPT_PAYLOAD_BYTES: u64 = 32 << 20;
/// The most task names counted by name in `/metrics` (the rest count as `_unknown`).
pub const MAX_NAMES: usize = 1_000;
/// The most bytes of an error message a timeline step or an event keeps (results and
/// errors themselves are in the result cache, under its byte budget).
pub const MAX_MESSAGE_BYTES: usize = 512;

/// `error` as an event carries it: its message cut to [`MAX_MESSAGE_BYTES`].
fn short_error(error: &TaskError) -> ErrorJson {
    let mut json = ErrorJson::default();
    json.kind = error.kind.as_str();
    json.message = for_people(&error.message, MAX_MESSAGE_BYTES);
    json
}

/// The name counted for tasks of names nobody serves, or beyond [`MAX_NAMES`].
pub const UNKNOWN: &str = "_unknown";
/// Plugin events kept for `/api/plugins`.
pub const MAX_PLUGIN_HISTORY: usize = 200;

/// Upper bounds (seconds) of the wait and run time histograms' buckets.
pub const BUCKETS_SECS: [f64; 14] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0, 60.0,
];

/// A histogram with [`BUCKETS_SECS`] bounds.
#[derive(Debug, Clone, Default)]
pub struct Histogram {
    /// Observations at or under each bound (not cumulative).
    pub buckets: [u64; BUCKETS_SECS.len()],
    /// Observations in all.
    pub count: u64,
    /// Their sum, seconds.
    pub sum: f64,
}

impl Histogram {
    fn observe(&mut self, secs: f64) {
        if let Some(i) = BUCKETS_SECS.iter().position(|b| secs <= *b) {
            self.buckets[i] += 1;
        }
        self.count += 1;
        self.sum += secs;
    }
}

use super::timeline::Steps;

/// One task's recent life.
#[derive(Debug)]
struct Trail {
    id: TaskId,
    /// The task's name, shared by its events.
    name: SharedName,
    priority: Priority,
    /// Queued again under its id: its steps moved to a newer trail, and this one only
    /// waits its turn to leave the ring.
    moved: bool,
    steps: Steps,
    /// The submission, kept once the task is final (for a retry), within the budget.
    /// Boxed: the trails are many, so each stays small.
    envelope: Option<Box<TaskEnvelope>>,
}

/// Where a task's trail is in the ring (its sequence number). The dispatcher keeps it
/// with the task, so a later step of the task finds its trail without a lookup of the
/// index: a lookup at a random place of a map of 10,000 ids is a cache miss, and
/// there were two per task (started, final).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TrailMark(u64);

/// The most recent timelines, oldest first, in a ring: a new one goes at the back and
/// pushes the oldest out of the front, so the eviction on every submission reads memory
/// in order instead of at a random place of a map. An index finds a task's trail by
/// its sequence number. A trail that leaves the ring stays in the index until the
/// index holds twice [`MAX_TRAILS`] ids, and then all that left go in one pass: taking
/// each out as it left was a lookup at a random place, a cache miss per task.
#[derive(Debug, Default)]
struct Trails {
    ring: VecDeque<Trail>,
    /// The sequence number of `ring[0]`.
    first: u64,
    /// Each kept task's trail (its sequence number), and some that left the ring
    /// (numbered before `first`).
    index: super::TaskMap<u64>,
}

impl Trails {
    fn get(&self, id: &TaskId) -> Option<&Trail> {
        self.ring.get(self.place(*self.index.get(id)?)?)
    }

    fn get_mut(&mut self, id: &TaskId) -> Option<&mut Trail> {
        let place = self.place(*self.index.get(id)?)?;
        self.ring.get_mut(place)
    }

    /// Task `id`'s trail, found by its `mark` when there is one (no lookup of the
    /// index): none when the marked trail left the ring since (a held task's mark is
    /// always its current trail: only a new submission under its id moves a trail,
    /// and that takes a task that is no longer held). Without a mark, or with one of
    /// another task's trail, the index finds it.
    fn get_marked(&mut self, mark: Option<TrailMark>, id: &TaskId) -> Option<&mut Trail> {
        let Some(TrailMark(seq)) = mark else {
            return self.get_mut(id);
        };
        let place = self.place(seq)?;
        let current = self
            .ring
            .get(place)
            .is_some_and(|t| t.id == *id && !t.moved);
        if current {
            self.ring.get_mut(place)
        } else {
            self.get_mut(id)
        }
    }

    fn contains(&self, id: &TaskId) -> bool {
        self.index.get(id).is_some_and(|seq| *seq >= self.first)
    }

    /// The place in the ring of the trail numbered `seq` (none if it left).
    fn place(&self, seq: u64) -> Option<usize> {
        usize::try_from(seq.checked_sub(self.first)?).ok()
    }

    /// Starts task `id`'s trail at the back of the ring. A task without one is named by
    /// `name` (called only then); a task queued again under its id keeps its name and
    /// steps: its trail moves to the back. The submissions kept with a moved trail and
    /// with the trails pushed out of the front (past [`MAX_TRAILS`]) go to
    /// `given_back`. One lookup of the index. Returns where the trail is.
    fn start(
        &mut self,
        id: TaskId,
        priority: Priority,
        name: impl FnOnce() -> SharedName,
        mut given_back: impl FnMut(Box<TaskEnvelope>),
    ) -> TrailMark {
        if self.ring.capacity() == 0 {
            // Room for the bound at once: growing by doubling would overshoot it, and
            // leave each smaller copy freed but resident. Pages are touched only as
            // trails fill them.
            self.ring.reserve_exact(MAX_TRAILS + 1);
        }
        let seq = self.first + self.ring.len() as u64;
        let old = match self.index.entry(id) {
            Entry::Occupied(mut at) => Some(at.insert(seq)),
            Entry::Vacant(at) => {
                at.insert(seq);
                None
            }
        };
        let old = old
            .and_then(|old| self.place(old))
            .and_then(|place| self.ring.get_mut(place));
        let (name, steps) = match old {
            Some(old) => {
                old.moved = true;
                if let Some(envelope) = old.envelope.take() {
                    given_back(envelope);
                }
                (old.name.clone(), std::mem::take(&mut old.steps))
            }
            None => (name(), Steps::default()),
        };
        self.ring.push_back(Trail {
            id,
            name,
            priority,
            moved: false,
            steps,
            envelope: None,
        });
        while self.ring.len() > MAX_TRAILS {
            let Some(oldest) = self.ring.pop_front() else {
                break;
            };
            self.first += 1;
            if let Some(envelope) = oldest.envelope {
                given_back(envelope);
            }
        }
        if self.index.len() >= 2 * MAX_TRAILS {
            let first = self.first;
            self.index.retain(|_, seq| *seq >= first);
        }
        TrailMark(seq)
    }

    /// The kept tasks, newest first.
    fn recent(&self) -> impl Iterator<Item = &TaskId> {
        self.ring.iter().rev().filter(|t| !t.moved).map(|t| &t.id)
    }
}

/// What the dispatcher reports, for the dashboard.
#[derive(Debug, Default)]
pub struct Observer {
    on: bool,
    feed: Vec<ApiEvent>,
    trails: Trails,
    kept_bytes: u64,
    totals: TaskTotals,
    /// Final statuses by task name (`success`, `failure`, `cancelled`, `retrying`).
    by_name: super::FastMap<String, [u64; 4]>,
    wait: Histogram,
    run: Histogram,
    reloads: u64,
    plugins: HashMap<WorkerId, Vec<PluginInfo>>,
    /// Task names and worker ids as events and timelines share them.
    names: super::names::Names,
    plugin_history: VecDeque<ApiPluginEvent>,
    /// Totals per [`SAMPLE_INTERVAL_MS`], the newest last, and the totals at the last
    /// sample.
    samples: VecDeque<ThroughputSample>,
    sampled: Option<(u64, TaskTotals)>,
}

/// Milliseconds between throughput samples.
pub const SAMPLE_INTERVAL_MS: u64 = 1_000;
/// Throughput samples kept (five minutes).
pub const MAX_SAMPLES: usize = 300;

/// A task at one moment: which, its name, the attempt, and when (unix ms).
#[derive(Debug, Clone, Copy)]
pub struct TaskRef<'a> {
    /// The task.
    pub id: TaskId,
    /// Its name.
    pub name: &'a str,
    /// The attempt.
    pub attempt: u32,
    /// Unix ms.
    pub at: u64,
}

/// The slot of a status in [`Observer::by_name`]'s counts.
fn slot(status: &str) -> Option<usize> {
    ["success", "failure", "cancelled", "retrying"]
        .iter()
        .position(|s| *s == status)
}

impl Observer {
    /// An observer that records (`on`) or ignores everything.
    pub fn new(on: bool) -> Self {
        Observer {
            on,
            ..Observer::default()
        }
    }

    /// Whether it records.
    pub fn is_on(&self) -> bool {
        self.on
    }

    /// The events since the last call, in order (the buffer keeps its capacity).
    pub fn drain_feed(&mut self) -> std::vec::Drain<'_, ApiEvent> {
        self.feed.drain(..)
    }

    /// Records `step` of task `id` (named `name`) in its timeline and an event of
    /// `kind` for the feed, with one lookup of its trail (none with its `mark`); `fill`
    /// completes the event. `submission`, for a final step, is kept with the trail
    /// while the budget allows.
    #[allow(clippy::too_many_arguments)]
    fn task_step(
        &mut self,
        kind: &'static str,
        mark: Option<TrailMark>,
        id: TaskId,
        name: &str,
        step: TimelineEntry,
        submission: Option<TaskEnvelope>,
        fill: impl FnOnce(&mut ApiEvent),
    ) {
        let mut event = ApiEvent::new(kind, step.at);
        event.task_id = Some(id);
        event.attempt = Some(step.attempt);
        event.task_name = Some(match self.trails.get_marked(mark, &id) {
            Some(trail) => {
                trail.steps.push(step);
                if let Some(envelope) = submission {
                    let size = envelope.payload.len() as u64;
                    if trail.envelope.is_none() && self.kept_bytes + size <= MAX_KEPT_PAYLOAD_BYTES
                    {
                        trail.envelope = Some(Box::new(envelope));
                        self.kept_bytes += size;
                    }
                }
                trail.name.clone()
            }
            None => self.names.get(name),
        });
        fill(&mut event);
        self.feed.push(event);
    }

    /// A task was accepted (`scheduled` when it waits for a countdown or eta). Where
    /// its trail is, for its next steps (none when off).
    pub fn submitted(
        &mut self,
        envelope: &TaskEnvelope,
        scheduled: bool,
        at: u64,
    ) -> Option<TrailMark> {
        if !self.on {
            return None;
        }
        self.totals.submitted += 1;
        let id = envelope.id;
        let kind = if scheduled {
            "task.scheduled"
        } else {
            "task.queued"
        };
        let mark = self.start_trail(id, envelope.priority, &envelope.name);
        let step = entry(at, if scheduled { "scheduled" } else { "submitted" }, 1);
        self.task_step(kind, Some(mark), id, &envelope.name, step, None, |_| {});
        Some(mark)
    }

    /// A task (its trail at `mark`, if known) was handed to `worker` for `attempt`,
    /// after waiting `waited_ms`.
    #[allow(clippy::too_many_arguments)]
    pub fn started(
        &mut self,
        mark: Option<TrailMark>,
        id: TaskId,
        name: &str,
        attempt: u32,
        worker: &WorkerId,
        waited_ms: u64,
        at: u64,
    ) {
        if !self.on {
            return;
        }
        self.wait.observe(waited_ms as f64 / 1000.0);
        let worker = self.names.worker(worker);
        let mut step = entry(at, "started", attempt);
        step.worker_id = Some(worker.clone());
        self.task_step("task.started", mark, id, name, step, None, |event| {
            event.worker_id = Some(worker);
        });
    }

    /// An attempt failed and the task retries after `delay_ms`.
    pub fn retrying(&mut self, task: TaskRef<'_>, error: &TaskError, delay_ms: u64, served: bool) {
        if !self.on {
            return;
        }
        let TaskRef {
            id,
            name,
            attempt,
            at,
        } = task;
        self.totals.retried += 1;
        self.count(if served { name } else { UNKNOWN }, "retrying");
        let mut step = entry(at, "retrying", attempt);
        step.message = Some(format!(
            "{} (retry in {delay_ms} ms)",
            for_people(&error.message, MAX_MESSAGE_BYTES)
        ));
        self.task_step("task.retrying", None, id, name, step, None, |event| {
            event.error = Some(short_error(error));
            event.message = Some(format!("retrying in {delay_ms} ms"));
        });
    }

    /// A task went back to its queue (its worker was lost, or no longer serves it).
    pub fn requeued(&mut self, id: TaskId, name: &str, attempt: u32, why: &str, at: u64) {
        if !self.on {
            return;
        }
        let mut step = entry(at, "requeued", attempt);
        step.message = Some(for_people(why, MAX_MESSAGE_BYTES));
        self.task_step("task.requeued", None, id, name, step, None, |event| {
            event.message = Some(for_people(why, MAX_MESSAGE_BYTES));
        });
    }

    /// A task (its trail at `mark`, if known) became final; its submission is kept for
    /// a retry while the budget allows.
    /// `served`: whether a worker serves its name (else it counts as `_unknown`).
    pub fn finished(
        &mut self,
        mark: Option<TrailMark>,
        record: &TaskRecord,
        envelope: TaskEnvelope,
        at: u64,
        served: bool,
    ) {
        if !self.on {
            return;
        }
        let status = record.status.as_str();
        match record.status {
            TaskStatus::Success => self.totals.success += 1,
            TaskStatus::Failure => self.totals.failure += 1,
            TaskStatus::Cancelled => self.totals.cancelled += 1,
            _ => {}
        }
        self.count(if served { &record.name } else { UNKNOWN }, status);
        if let (Some(started), Some(done)) = (record.started_ms, record.completed_ms) {
            if record.status != TaskStatus::Cancelled || record.worker_id.is_some() {
                self.run
                    .observe(done.saturating_sub(started) as f64 / 1000.0);
            }
        }
        let worker = record.worker_id.as_ref().map(|w| self.names.worker(w));
        let attempt = record.attempts.max(1);
        let mut step = entry(at, status_step(record.status), attempt);
        step.worker_id = worker.clone();
        step.message = record
            .error
            .as_ref()
            .map(|e| for_people(&e.message, MAX_MESSAGE_BYTES));
        self.task_step(
            final_kind(record.status),
            mark,
            record.task_id,
            &record.name,
            step,
            Some(envelope),
            |event| {
                event.worker_id = worker;
                event.error = record.error.as_ref().map(short_error);
            },
        );
    }

    fn count(&mut self, name: &str, status: &str) {
        let Some(i) = slot(status) else {
            return;
        };
        if let Some(counts) = self.by_name.get_mut(name) {
            counts[i] += 1;
            return;
        }
        let key = if self.by_name.len() < MAX_NAMES {
            name
        } else {
            UNKNOWN
        };
        self.by_name.entry(key.to_string()).or_default()[i] += 1;
    }

    /// A worker or plugin event for the feed (`worker.registered`, `plugin.reloaded`).
    pub fn event(&mut self, kind: &str, subject: &str, message: &str, at: u64) {
        if !self.on {
            return;
        }
        let mut event = ApiEvent::new(kind.to_string(), at);
        event.worker_id = Some(SharedName::from(subject));
        event.message = Some(message.to_string());
        self.feed.push(event);
    }

    /// `worker` registered with these plugins.
    pub fn worker_plugins(&mut self, worker: &WorkerId, plugins: Vec<PluginInfo>) {
        if self.on {
            self.plugins.insert(worker.clone(), plugins);
        }
    }

    /// `worker` is gone.
    pub fn worker_gone(&mut self, worker: &WorkerId) {
        self.plugins.remove(worker);
    }

    /// A plugin of `worker` was reloaded, retired or rejected.
    pub fn plugin_event(&mut self, worker: &WorkerId, event: &PluginEvent, at: u64) {
        if !self.on {
            return;
        }
        let plugins = self.plugins.entry(worker.clone()).or_default();
        match event.kind.as_str() {
            "reloaded" => {
                self.reloads += 1;
                plugins.retain(|p| p.path != event.path && p.name != event.plugin);
                plugins.push(PluginInfo::new(
                    event.plugin.clone(),
                    event.new_version.clone().unwrap_or_default(),
                    event.new_build.clone().unwrap_or_default(),
                    event.path.clone(),
                    event.tasks.clone(),
                ));
                plugins.sort_by(|a, b| a.name.cmp(&b.name));
            }
            "retired" => plugins.retain(|p| p.path != event.path),
            _ => {}
        }
        if self.plugin_history.len() >= MAX_PLUGIN_HISTORY {
            self.plugin_history.pop_front();
        }
        self.plugin_history
            .push_back(ApiPluginEvent::new(at, worker.to_string(), event));
    }

    /// The plugins `worker` has loaded.
    pub fn plugins_of(&self, worker: &WorkerId) -> &[PluginInfo] {
        self.plugins.get(worker).map_or(&[], Vec::as_slice)
    }

    /// Reloads, retirements and rejections, oldest first.
    pub fn plugin_history(&self) -> impl Iterator<Item = &ApiPluginEvent> {
        self.plugin_history.iter()
    }

    /// The recent tasks, newest first.
    pub fn recent(&self) -> impl Iterator<Item = &TaskId> {
        self.trails.recent()
    }

    /// Adds task `id` to the recent tasks, without steps (a task restored from the
    /// data directory: what happened before the restart is not kept). Oldest first.
    /// Where its trail is (none when off, or when it has one already).
    pub fn seed(&mut self, id: TaskId, name: &str, priority: Priority) -> Option<TrailMark> {
        if self.on && !self.trails.contains(&id) {
            return Some(self.start_trail(id, priority, name));
        }
        None
    }

    /// Starts task `id`'s trail (see [`Trails::start`]); submissions it gives back no
    /// longer count toward the kept bytes.
    fn start_trail(&mut self, id: TaskId, priority: Priority, name: &str) -> TrailMark {
        let names = &mut self.names;
        let kept_bytes = &mut self.kept_bytes;
        self.trails.start(
            id,
            priority,
            || names.get(name),
            |kept| *kept_bytes -= kept.payload.len() as u64,
        )
    }

    /// A task's timeline and priority, if kept.
    pub fn timeline(&self, id: &TaskId) -> Option<(Priority, Vec<TimelineEntry>)> {
        self.trails.get(id).map(|t| (t.priority, t.steps.to_vec()))
    }

    /// The submission of a final task, if kept (for a retry).
    pub fn kept_submission(&self, id: &TaskId) -> Option<&TaskEnvelope> {
        self.trails.get(id).and_then(|t| t.envelope.as_deref())
    }

    /// Totals since the start.
    pub fn totals(&self) -> TaskTotals {
        self.totals
    }

    /// Counts by name: `[success, failure, cancelled, retrying]`.
    pub fn by_name(&self) -> impl Iterator<Item = (&String, &[u64; 4])> {
        self.by_name.iter()
    }

    /// How long tasks waited for a worker.
    pub fn wait(&self) -> &Histogram {
        &self.wait
    }

    /// How long attempts ran.
    pub fn run(&self) -> &Histogram {
        &self.run
    }

    /// Plugin reloads seen.
    pub fn reloads(&self) -> u64 {
        self.reloads
    }

    /// Takes a throughput sample if [`SAMPLE_INTERVAL_MS`] passed since the last one
    /// (called on every tick).
    pub fn sample(&mut self, at: u64) {
        if !self.on {
            return;
        }
        let Some((last_at, last)) = self.sampled else {
            self.sampled = Some((at, self.totals));
            return;
        };
        if at.saturating_sub(last_at) < SAMPLE_INTERVAL_MS {
            return;
        }
        let now = self.totals;
        let mut sample = ThroughputSample::default();
        sample.at = at;
        sample.success = now.success - last.success;
        sample.failure = now.failure - last.failure;
        sample.submitted = now.submitted - last.submitted;
        if self.samples.len() >= MAX_SAMPLES {
            self.samples.pop_front();
        }
        self.samples.push_back(sample);
        self.sampled = Some((at, now));
    }

    /// The throughput samples, oldest first.
    pub fn samples(&self) -> impl Iterator<Item = &ThroughputSample> {
        self.samples.iter()
    }
}

fn entry(at: u64, event: &'static str, attempt: u32) -> TimelineEntry {
    TimelineEntry::new(at, event, attempt)
}

fn final_kind(status: TaskStatus) -> &'static str {
    match status {
        TaskStatus::Success => "task.success",
        TaskStatus::Failure => "task.failure",
        TaskStatus::Cancelled => "task.cancelled",
        _ => "task.final",
    }
}

fn status_step(status: TaskStatus) -> &'static str {
    match status {
        TaskStatus::Success => "success",
        TaskStatus::Failure => "failure",
        TaskStatus::Cancelled => "cancelled",
        _ => "final",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    fn envelope(name: &str, payload: usize) -> TaskEnvelope {
        TaskEnvelope::new(
            name,
            crate::protocol::Codec::Json,
            Bytes::from(vec![b'1'; payload]),
        )
    }

    #[test]
    fn a_task_leaves_a_timeline_events_and_counts() {
        let mut observer = Observer::new(true);
        let task = envelope("add", 3);
        let id = task.id;
        let mark = observer.submitted(&task, false, 1);
        observer.started(mark, id, "add", 1, &WorkerId::from("w"), 4, 2);
        let mut record = TaskRecord::new(id, "add", TaskStatus::Success, task.codec);
        record.attempts = 1;
        record.started_ms = Some(2);
        record.completed_ms = Some(3);
        record.worker_id = Some(WorkerId::from("w"));
        observer.finished(mark, &record, task, 3, true);
        let kinds: Vec<_> = observer.drain_feed().map(|e| e.kind).collect();
        assert_eq!(kinds, ["task.queued", "task.started", "task.success"]);
        let (_, steps) = observer.timeline(&id).unwrap();
        let names: Vec<_> = steps.iter().map(|s| s.event).collect();
        assert_eq!(names, ["submitted", "started", "success"]);
        assert_eq!(observer.totals().success, 1);
        assert!(observer.kept_submission(&id).is_some());
        assert_eq!(observer.wait().count, 1);
        assert_eq!(observer.run().count, 1);
    }

    #[test]
    fn off_it_keeps_nothing_and_trails_and_payloads_are_bounded() {
        let mut off = Observer::new(false);
        let task = envelope("add", 3);
        off.submitted(&task, false, 1);
        assert!(off.drain_feed().next().is_none());
        assert!(off.timeline(&task.id).is_none());

        let mut observer = Observer::new(true);
        let mut first = None;
        for i in 0..MAX_TRAILS + 5 {
            let task = envelope("add", 1);
            first.get_or_insert(task.id);
            observer.submitted(&task, false, i as u64);
        }
        assert_eq!(observer.recent().count(), MAX_TRAILS);
        assert!(observer.timeline(&first.unwrap()).is_none());
        assert!(!observer.trails.contains(&first.unwrap()));
        // The ids that left the ring leave the index too, in passes; the kept ones
        // stay in it.
        let mut last = None;
        for i in 0..2 * MAX_TRAILS {
            let task = envelope("add", 0);
            last = Some(task.id);
            observer.submitted(&task, false, i as u64);
            assert!(observer.trails.index.len() < 2 * MAX_TRAILS);
        }
        assert_eq!(observer.recent().count(), MAX_TRAILS);
        let first = observer.trails.first;
        let stale = observer
            .trails
            .index
            .values()
            .filter(|seq| **seq < first)
            .count();
        assert!(
            stale < MAX_TRAILS,
            "{stale} ids that left the ring are still indexed"
        );
        assert!(observer.recent().all(|id| observer.trails.contains(id)));
        assert!(observer.timeline(&last.unwrap()).is_some());

        // A payload over what is left of the budget is not kept.
        let big = envelope("add", MAX_KEPT_PAYLOAD_BYTES as usize + 1);
        let id = big.id;
        observer.submitted(&big, false, 1);
        let record = TaskRecord::new(id, "add", TaskStatus::Failure, big.codec);
        observer.finished(None, &record, big, 2, true);
        assert!(observer.kept_submission(&id).is_none());
    }

    #[test]
    fn a_task_queued_again_keeps_one_timeline_until_it_leaves_the_ring() {
        let mut observer = Observer::new(true);
        let task = envelope("add", 2);
        let id = task.id;
        observer.submitted(&task, false, 1);
        let record = TaskRecord::new(id, "add", TaskStatus::Failure, task.codec);
        observer.finished(None, &record, task.clone(), 2, true);
        assert!(observer.kept_submission(&id).is_some());
        assert_eq!(observer.kept_bytes, 2);

        // Retried under its id: one timeline, the old steps first; the kept payload is
        // given back.
        observer.submitted(&task, false, 3);
        let (_, steps) = observer.timeline(&id).unwrap();
        let names: Vec<_> = steps.iter().map(|s| s.event).collect();
        assert_eq!(names, ["submitted", "failure", "submitted"]);
        assert!(observer.kept_submission(&id).is_none());
        assert_eq!(observer.kept_bytes, 0);
        assert_eq!(observer.recent().collect::<Vec<_>>(), [&id]);

        // The ring holds its old place too: filling it pushes that place out first,
        // then the task itself.
        for i in 0..MAX_TRAILS - 1 {
            observer.submitted(&envelope("add", 1), false, 10 + i as u64);
        }
        assert!(observer.timeline(&id).is_some());
        assert_eq!(observer.recent().count(), MAX_TRAILS);
        assert_eq!(observer.recent().last(), Some(&id));
        observer.submitted(&envelope("add", 1), false, 20_000);
        assert!(observer.timeline(&id).is_none());
        assert_eq!(observer.recent().count(), MAX_TRAILS);
        assert!(observer.recent().all(|t| *t != id));
    }

    #[test]
    fn a_mark_finds_its_trail_until_it_leaves_the_ring_and_a_stale_one_finds_the_current() {
        let mut observer = Observer::new(true);
        let task = envelope("add", 1);
        let id = task.id;
        let first = observer.submitted(&task, false, 1);
        // Queued again under its id: the first mark is of the moved trail, and the
        // step still lands on the task's current one.
        let second = observer.submitted(&task, false, 2);
        assert_ne!(first, second);
        observer.started(first, id, "add", 1, &WorkerId::from("w"), 0, 3);
        let (_, steps) = observer.timeline(&id).unwrap();
        let names: Vec<_> = steps.iter().map(|s| s.event).collect();
        assert_eq!(names, ["submitted", "submitted", "started"]);
        // Pushed out of the ring: its mark finds nothing, and the final step is an
        // event without a timeline.
        for i in 0..MAX_TRAILS {
            observer.submitted(&envelope("add", 1), false, 10 + i as u64);
        }
        observer.drain_feed();
        let record = TaskRecord::new(id, "add", TaskStatus::Success, task.codec);
        observer.finished(second, &record, task, 20_000, true);
        assert!(observer.timeline(&id).is_none());
        let events: Vec<_> = observer.drain_feed().collect();
        assert_eq!(events.len(), 1);
        assert_eq!(events[0].task_id, Some(id));
        assert_eq!(events[0].task_name.as_deref(), Some("add"));
    }

    #[test]
    fn names_beyond_the_limit_count_as_unknown() {
        let mut observer = Observer::new(true);
        for i in 0..MAX_NAMES + 3 {
            observer.count(&format!("t{i}"), "success");
        }
        let unknown = observer
            .by_name()
            .find(|(n, _)| n.as_str() == "_unknown")
            .map(|(_, c)| c[0]);
        assert_eq!(unknown, Some(3));
    }
}
