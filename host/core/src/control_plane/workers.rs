//! [`WorkerTable`]: the subworkers the control plane knows, and the choice of who runs
//! the next task.
//!
//! A subworker's credits are its `--concurrency`: [`WorkerTable::pick`] finds a free
//! slot. A subworker that takes prefetched tasks may also be handed tasks of a name it
//! runs quickly past its slots, up to a window sized from that name's measured run time
//! ([`WorkerEntry::window_for`], found by [`WorkerTable::pick_prefetch`]), so it never
//! waits a round trip between two short tasks; long tasks and names it has not run yet
//! are never prefetched. Among active, non-draining subworkers that serve a task name and
//! have a free slot, the least loaded (running / concurrency) wins; ties go to the one
//! that was handed work longest ago, so equal workers share evenly. A fallback worker
//! (the control plane's own subworker) is chosen only when no other can take the task.
//!
//! The table keeps its workers ranked in that order (`Rank`), updated wherever a
//! worker's load changes, so a pick walks from the least loaded and stops at the first
//! that can take the task, or as soon as the rest have no free slot: with 1,000
//! subworkers, scanning them all was more than half of the control plane's time per
//! task. Prefetch questions look only at the workers that take prefetched tasks.

use std::{
    collections::BTreeSet,
    time::{Duration, Instant},
};

use super::FastMap;
use crate::{
    protocol::{TaskId, TaskSpec, WorkerId, WorkerSecret},
    transport::PeerId,
};

/// One subworker.
#[derive(Debug)]
pub struct WorkerEntry {
    /// Its id (its rank and the prefetching set name it: set only by the table).
    id: WorkerId,
    /// Its current connection.
    pub peer: PeerId,
    /// The tasks it serves.
    pub tasks: FastMap<String, TaskSpec>,
    /// Its slots (its rank depends on it: changed only by the table).
    concurrency: u32,
    /// Tasks it holds now (its rank depends on them: changed only by the table).
    in_flight: super::TaskSet,
    /// When it last said anything.
    pub last_seen: Instant,
    /// Whether it gets work (false after `inactive_after` of silence).
    pub active: bool,
    /// It asked for no more work.
    pub draining: bool,
    /// Its own status endpoint.
    pub address: Option<String>,
    /// Its process id (as it says; for people, never trusted).
    pub pid: u32,
    /// What it must show to register again under this id.
    pub secret: WorkerSecret,
    /// Tasks handed to it in all.
    pub assigned_total: u64,
    /// Tasks it finished in all.
    pub completed_total: u64,
    /// It said it is restarting in place; set when its connection then drops.
    pub restarting: bool,
    /// When its connection dropped while restarting.
    pub gone_since: Option<Instant>,
    /// Chosen only when no other worker can take a task (changed only by the table).
    fallback: bool,
    /// Known from the store and not connected since this start.
    pub from_store: bool,
    /// It takes prefetched tasks (it registered with `prefetch`; changed only by the
    /// table, which keeps the set of those that do).
    prefetch: bool,
    /// Each task name's recent mean run time in ns, as it reports it.
    pub run_ns: FastMap<String, u64>,
    /// It handed back tasks because every slot was taken (by long tasks, or by one
    /// taken away from it while it was silent): nothing more goes to it until it
    /// reports an outcome (a slot freed).
    pub stalled: bool,
    /// The most tasks per slot its window holds (the table's setting).
    max_per_slot: u32,
    /// Tick of the last assignment (for fair ties).
    last_assigned: u64,
}

/// How much work, in plugin run time, a subworker may hold queued per slot: tasks of
/// 50 µs get 20 tasks per slot, tasks of 1 ms or more exactly one.
pub const PREFETCH_BUDGET_NS: u64 = 1_000_000;

/// The most tasks per slot a window holds by default, however short the tasks (the
/// control plane's `--prefetch`).
pub const MAX_PREFETCH_PER_SLOT: u32 = 256;

/// The most tasks a window holds past the slots: a subworker with many slots gets no
/// more than this many queued.
pub const MAX_PREFETCHED: u32 = 512;

/// Where a worker stands for the next task among the workers of its group (the
/// fallback, or the others), in the order a pick prefers: the least loaded, then the
/// fewest tasks held, then the one handed work longest ago (its id last, so the order
/// is total).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct Rank {
    /// running / concurrency, as the bits of a non-negative `f64` (which order as the
    /// numbers do).
    load: u64,
    held: usize,
    last_assigned: u64,
    id: WorkerId,
}

impl Rank {
    /// No free slot: its load is at least 1.
    fn full(&self) -> bool {
        self.load >= 1.0f64.to_bits()
    }
}

impl WorkerEntry {
    /// Its id.
    pub fn id(&self) -> &WorkerId {
        &self.id
    }

    /// Its slots.
    pub fn concurrency(&self) -> u32 {
        self.concurrency
    }

    /// The tasks it holds now.
    pub fn in_flight(&self) -> &super::TaskSet {
        &self.in_flight
    }

    /// The tasks it held, once it is out of the table.
    pub fn into_in_flight(self) -> super::TaskSet {
        self.in_flight
    }

    /// Is it the fallback (chosen only when no other worker can take a task)?
    pub fn is_fallback(&self) -> bool {
        self.fallback
    }

    /// Did it register as taking prefetched tasks?
    pub fn takes_prefetched(&self) -> bool {
        self.prefetch
    }

    fn rank(&self) -> Rank {
        Rank {
            load: self.load().to_bits(),
            held: self.in_flight.len(),
            last_assigned: self.last_assigned,
            id: self.id.clone(),
        }
    }

    /// The most tasks it may hold at once when handed one named `name`: its slots,
    /// and for a subworker that takes prefetched tasks, as many more per slot as fit
    /// in [`PREFETCH_BUDGET_NS`] of that name's measured run time (none until it has
    /// reported one).
    pub fn window_for(&self, name: &str) -> u32 {
        let Some(&run_ns) = self.run_ns.get(name).filter(|_| self.prefetch) else {
            return self.concurrency;
        };
        let per_slot =
            (PREFETCH_BUDGET_NS / run_ns.max(1)).clamp(1, u64::from(self.max_per_slot.max(1)));
        let window = u64::from(self.concurrency) * per_slot;
        let most = u64::from(self.concurrency) + u64::from(MAX_PREFETCHED);
        window.min(most) as u32
    }

    /// The largest window over the names it has run (for people).
    pub fn widest_window(&self) -> u32 {
        self.run_ns
            .keys()
            .map(|name| self.window_for(name))
            .max()
            .unwrap_or(self.concurrency)
            .max(self.concurrency)
    }

    /// Free slots.
    pub fn free_slots(&self) -> u32 {
        self.concurrency.saturating_sub(self.in_flight.len() as u32)
    }

    /// Could it be handed a task named `name` now, past its slots?
    pub fn can_prefetch(&self, name: &str) -> bool {
        self.prefetch
            && !self.stalled
            && self.active
            && !self.draining
            && self.tasks.contains_key(name)
            && (self.in_flight.len() as u32) < self.window_for(name)
    }

    /// Does it take prefetched tasks now (busy or not)?
    pub fn prefetches_now(&self) -> bool {
        self.prefetch && self.active && !self.draining
    }

    /// Does it take prefetched tasks named `name` now (busy or not)?
    pub fn prefetches_now_for(&self, name: &str) -> bool {
        self.prefetches_now() && self.tasks.contains_key(name)
    }

    /// Would a task handed to it now wait in its queue (all its slots taken)?
    pub fn would_prefetch(&self) -> bool {
        self.in_flight.len() as u32 >= self.concurrency
    }

    /// Can it take a task named `name` now? Not while it is stalled: it handed back a
    /// task because its slots were all taken, whatever the count here says (it may
    /// still run a task taken away from it while it was silent).
    pub fn can_take(&self, name: &str) -> bool {
        self.active
            && !self.draining
            && !self.stalled
            && self.free_slots() > 0
            && self.tasks.contains_key(name)
    }

    /// running / concurrency.
    pub fn load(&self) -> f64 {
        self.in_flight.len() as f64 / f64::from(self.concurrency.max(1))
    }
}

/// The subworkers, by id, with a peer → id index.
#[derive(Debug)]
pub struct WorkerTable {
    workers: FastMap<WorkerId, WorkerEntry>,
    /// Every worker by its [`Rank`], the others first, then the fallback: kept in step
    /// with `workers` by [`Self::change`], [`Self::insert`] and [`Self::remove`].
    ranked: [BTreeSet<Rank>; 2],
    /// The workers that registered as taking prefetched tasks.
    prefetchers: BTreeSet<WorkerId>,
    by_peer: FastMap<PeerId, WorkerId>,
    assign_clock: u64,
    /// The most tasks per slot a window holds (1: no prefetching).
    max_per_slot: u32,
}

/// What registering did.
#[derive(Debug, Default)]
pub struct Registered {
    /// Tasks the previous connection of the same worker held that it no longer runs.
    pub orphaned: Vec<TaskId>,
}

impl WorkerTable {
    /// An empty table whose windows hold at most `max_per_slot` tasks per slot.
    pub fn new(max_per_slot: u32) -> Self {
        WorkerTable {
            workers: FastMap::default(),
            ranked: Default::default(),
            prefetchers: BTreeSet::new(),
            by_peer: FastMap::default(),
            assign_clock: 0,
            max_per_slot: max_per_slot.max(1),
        }
    }

    /// Adds or refreshes a worker on connection `peer`. A worker that reconnects keeps
    /// the tasks it says it still runs; the rest of what it held is returned.
    #[allow(clippy::too_many_arguments)]
    pub fn register(
        &mut self,
        peer: PeerId,
        id: WorkerId,
        tasks: Vec<TaskSpec>,
        concurrency: u32,
        address: Option<String>,
        pid: u32,
        secret: WorkerSecret,
        still_running: &[TaskId],
        now: Instant,
    ) -> Registered {
        let mut registered = Registered::default();
        let tasks = tasks.into_iter().map(|t| (t.name.clone(), t)).collect();
        let mut in_flight = super::TaskSet::default();
        let mut totals = (0, 0);
        if let Some(old) = self.remove(&id) {
            totals = (old.assigned_total, old.completed_total);
            for task in old.in_flight {
                if still_running.contains(&task) {
                    in_flight.insert(task);
                } else {
                    registered.orphaned.push(task);
                }
            }
        }
        self.by_peer.insert(peer, id.clone());
        self.insert(WorkerEntry {
            id,
            peer,
            tasks,
            concurrency: concurrency.max(1),
            in_flight,
            last_seen: now,
            active: true,
            draining: false,
            address,
            pid,
            secret,
            assigned_total: totals.0,
            completed_total: totals.1,
            restarting: false,
            gone_since: None,
            fallback: false,
            from_store: false,
            prefetch: false,
            run_ns: FastMap::default(),
            stalled: false,
            max_per_slot: self.max_per_slot,
            last_assigned: 0,
        });
        registered
    }

    /// A worker known from the store, not connected yet: it holds `in_flight` and is
    /// parked like one restarting in place, so it can register again with `secret`
    /// and claim its tasks by their leases; past the inactivity limit it is removed
    /// (see [`Self::overdue_restarts`]) and its tasks go back to the queue.
    pub fn restore_parked(
        &mut self,
        id: WorkerId,
        secret: WorkerSecret,
        in_flight: super::TaskSet,
        now: Instant,
    ) {
        self.remove(&id);
        self.insert(WorkerEntry {
            id,
            peer: PeerId::new(),
            tasks: FastMap::default(),
            concurrency: 1,
            in_flight,
            last_seen: now,
            active: false,
            draining: true,
            address: None,
            pid: 0,
            secret,
            assigned_total: 0,
            completed_total: 0,
            restarting: true,
            gone_since: Some(now),
            fallback: false,
            from_store: true,
            prefetch: false,
            run_ns: FastMap::default(),
            stalled: false,
            max_per_slot: self.max_per_slot,
            last_assigned: 0,
        });
    }

    /// The worker on connection `peer`.
    pub fn by_peer(&self, peer: &PeerId) -> Option<&WorkerId> {
        self.by_peer.get(peer)
    }

    /// A worker by id.
    pub fn get(&self, id: &WorkerId) -> Option<&WorkerEntry> {
        self.workers.get(id)
    }

    /// A worker by id, to change.
    pub fn get_mut(&mut self, id: &WorkerId) -> Option<&mut WorkerEntry> {
        self.workers.get_mut(id)
    }

    /// Marks the worker on `peer` as alive now; returns its id.
    pub fn touch(&mut self, peer: &PeerId, now: Instant) -> Option<WorkerId> {
        let id = self.by_peer.get(peer)?;
        let worker = self.workers.get_mut(id)?;
        worker.last_seen = now;
        worker.active = true;
        Some(id.clone())
    }

    /// Removes a worker; returns what it held.
    pub fn remove(&mut self, id: &WorkerId) -> Option<WorkerEntry> {
        let worker = self.workers.remove(id)?;
        self.ranked[usize::from(worker.fallback)].remove(&worker.rank());
        self.prefetchers.remove(id);
        self.by_peer.remove(&worker.peer);
        Some(worker)
    }

    /// Adds `worker` (none under its id may be in the table).
    fn insert(&mut self, worker: WorkerEntry) {
        self.ranked[usize::from(worker.fallback)].insert(worker.rank());
        if worker.prefetch {
            self.prefetchers.insert(worker.id.clone());
        }
        self.workers.insert(worker.id.clone(), worker);
    }

    /// Changes worker `id` by `f`, keeping its rank and the prefetching set in step.
    fn change<R>(&mut self, id: &WorkerId, f: impl FnOnce(&mut WorkerEntry) -> R) -> Option<R> {
        let worker = self.workers.get_mut(id)?;
        self.ranked[usize::from(worker.fallback)].remove(&worker.rank());
        let prefetched = worker.prefetch;
        let result = f(worker);
        self.ranked[usize::from(worker.fallback)].insert(worker.rank());
        match (prefetched, worker.prefetch) {
            (false, true) => {
                self.prefetchers.insert(worker.id.clone());
            }
            (true, false) => {
                self.prefetchers.remove(id);
            }
            _ => {}
        }
        Some(result)
    }

    /// Sets whether worker `id` takes prefetched tasks.
    pub fn set_prefetch(&mut self, id: &WorkerId, prefetch: bool) {
        self.change(id, |w| w.prefetch = prefetch);
    }

    /// Takes every task worker `id` holds away from it.
    pub fn take_in_flight(&mut self, id: &WorkerId) -> Vec<TaskId> {
        self.change(id, |w| w.in_flight.drain().collect())
            .unwrap_or_default()
    }

    /// A restarting worker's connection dropped: keep it (inactive) until it registers
    /// again. False if the worker is not restarting (the caller removes it).
    pub fn park_restarting(&mut self, id: &WorkerId, now: Instant) -> bool {
        let Some(worker) = self.workers.get_mut(id) else {
            return false;
        };
        if !worker.restarting {
            return false;
        }
        self.by_peer.remove(&worker.peer);
        worker.active = false;
        worker.gone_since = Some(now);
        true
    }

    /// Restarting workers that have been gone for `limit`: they are not coming back.
    pub fn overdue_restarts(&self, now: Instant, limit: Duration) -> Vec<WorkerId> {
        self.workers
            .values()
            .filter(|w| w.gone_since.is_some_and(|t| now.duration_since(t) >= limit))
            .map(|w| w.id.clone())
            .collect()
    }

    /// Marks workers silent for `inactive_after` inactive; returns their ids.
    pub fn expire(&mut self, now: Instant, inactive_after: Duration) -> Vec<WorkerId> {
        let mut expired = Vec::new();
        for worker in self.workers.values_mut() {
            if worker.active
                && worker.gone_since.is_none()
                && now.duration_since(worker.last_seen) >= inactive_after
            {
                worker.active = false;
                expired.push(worker.id.clone());
            }
        }
        expired
    }

    /// Does any worker (active or not) serve `name`?
    pub fn anyone_serves(&self, name: &str) -> bool {
        self.workers.values().any(|w| w.tasks.contains_key(name))
    }

    /// The defaults a worker declared for `name`, if any worker serves it.
    pub fn spec(&self, name: &str) -> Option<&TaskSpec> {
        self.workers.values().find_map(|w| w.tasks.get(name))
    }

    /// Marks worker `id` as the fallback: it gets only what no other worker can take.
    pub fn set_fallback(&mut self, id: &WorkerId) {
        self.change(id, |w| w.fallback = true);
    }

    /// The least-loaded worker with a free slot that can take `name` now (a fallback
    /// worker last, and not while another worker may still be handed it past its
    /// slots: that one takes it, prefetched).
    pub fn pick(&self, name: &str) -> Option<&WorkerId> {
        let best = self
            .first_free(false, name)
            .or_else(|| self.first_free(true, name))?;
        if best.fallback
            && self
                .prefetching()
                .any(|w| !w.fallback && w.can_prefetch(name))
        {
            return None;
        }
        Some(&best.id)
    }

    /// In rank order, the first worker of the group `fallback` that can take `name`
    /// now; the walk ends where the group's workers have no free slot left.
    fn first_free(&self, fallback: bool, name: &str) -> Option<&WorkerEntry> {
        for rank in &self.ranked[usize::from(fallback)] {
            if rank.full() {
                return None;
            }
            let Some(worker) = self.workers.get(&rank.id) else {
                debug_assert!(false, "ranked worker {} is not in the table", rank.id);
                continue;
            };
            if worker.can_take(name) {
                return Some(worker);
            }
        }
        None
    }

    /// The workers that registered as taking prefetched tasks.
    fn prefetching(&self) -> impl Iterator<Item = &WorkerEntry> {
        self.prefetchers
            .iter()
            .filter_map(|id| self.workers.get(id))
    }

    /// The least-loaded worker, not in `reserved`, that may be handed `name` past its
    /// slots (a fallback worker last).
    pub fn pick_prefetch(&self, name: &str, reserved: &[WorkerId]) -> Option<&WorkerId> {
        self.prefetching()
            .filter(|w| w.can_prefetch(name) && !reserved.contains(&w.id))
            .min_by(|a, b| {
                a.fallback
                    .cmp(&b.fallback)
                    .then(a.load().total_cmp(&b.load()))
                    .then(a.last_assigned.cmp(&b.last_assigned))
            })
            .map(|w| &w.id)
    }

    /// Does any worker take prefetched tasks now?
    pub fn anyone_prefetches(&self) -> bool {
        self.prefetching().any(WorkerEntry::prefetches_now)
    }

    /// Does any worker not in `reserved` take prefetched tasks named `name` now?
    pub fn anyone_prefetches_for(&self, name: &str, reserved: &[WorkerId]) -> bool {
        self.prefetching()
            .any(|w| w.prefetches_now_for(name) && !reserved.contains(&w.id))
    }

    /// The workers not in `reserved` that take prefetched tasks named `name` now.
    pub fn prefetching_for(&self, name: &str, reserved: &[WorkerId]) -> Vec<WorkerId> {
        self.prefetching()
            .filter(|w| w.prefetches_now_for(name) && !reserved.contains(&w.id))
            .map(|w| w.id.clone())
            .collect()
    }

    /// Records `worker`'s measured run times, for the names it serves.
    pub fn record_run_times(
        &mut self,
        worker: &WorkerId,
        times: std::collections::BTreeMap<String, u64>,
    ) {
        let Some(w) = self.workers.get_mut(worker) else {
            return;
        };
        for (name, ns) in times {
            if w.tasks.contains_key(&name) {
                w.run_ns.insert(name, ns);
            }
        }
    }

    /// Records that `task` went to worker `id`.
    pub fn assign(&mut self, id: &WorkerId, task: TaskId) {
        self.assign_clock += 1;
        let clock = self.assign_clock;
        self.change(id, |worker| {
            worker.in_flight.insert(task);
            worker.assigned_total += 1;
            worker.last_assigned = clock;
        });
    }

    /// Records that worker `id` no longer holds `task`.
    pub fn release(&mut self, id: &WorkerId, task: &TaskId, completed: bool) {
        self.change(id, |worker| {
            if worker.in_flight.remove(task) && completed {
                worker.completed_total += 1;
            }
        });
    }

    /// Every worker.
    pub fn iter(&self) -> impl Iterator<Item = &WorkerEntry> {
        self.workers.values()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::control_plane::test_spec as spec;

    fn table(now: Instant) -> WorkerTable {
        let mut t = WorkerTable::new(MAX_PREFETCH_PER_SLOT);
        for (i, conc) in [(1u8, 2u32), (2, 2), (3, 1)] {
            t.register(
                PeerId::named([i]),
                WorkerId::new(format!("w{i}")),
                vec![spec("add")],
                conc,
                None,
                0,
                WorkerSecret::new(),
                &[],
                now,
            );
        }
        t
    }

    #[test]
    fn least_loaded_first_and_credits_respected() {
        let now = Instant::now();
        let mut t = table(now);
        let mut counts: std::collections::HashMap<String, u32> = std::collections::HashMap::new();
        for n in 0..5u8 {
            let id = t.pick("add").cloned().expect("a free worker");
            t.assign(&id, TaskId::from_bytes([n; 16]));
            *counts.entry(id.to_string()).or_default() += 1;
        }
        assert_eq!(counts["w1"], 2);
        assert_eq!(counts["w2"], 2);
        assert_eq!(counts["w3"], 1);
        assert!(t.pick("add").is_none(), "every slot is taken");
        assert!(t.pick("other").is_none());
    }

    #[test]
    fn a_fallback_worker_gets_only_what_no_other_can_take() {
        let now = Instant::now();
        let mut t = table(now);
        t.set_fallback(&WorkerId::new("w3"));
        let mut picked = Vec::new();
        for n in 0..5u8 {
            let id = t.pick("add").cloned().expect("a free worker");
            t.assign(&id, TaskId::from_bytes([n; 16]));
            picked.push(id.to_string());
        }
        assert_eq!(picked[4], "w3", "{picked:?}");
        assert!(!picked[..4].contains(&"w3".to_string()), "{picked:?}");
    }

    #[test]
    fn silent_workers_go_inactive_and_come_back() {
        let now = Instant::now();
        let mut t = table(now);
        let later = now + Duration::from_secs(31);
        assert_eq!(t.expire(later, Duration::from_secs(30)).len(), 3);
        assert!(t.pick("add").is_none());
        t.touch(&PeerId::named([2u8]), later);
        assert_eq!(t.pick("add").map(|w| w.as_str()), Some("w2"));
    }

    #[test]
    fn reconnect_keeps_running_tasks_and_returns_the_rest() {
        let now = Instant::now();
        let mut t = table(now);
        let (a, b) = (TaskId::from_bytes([1; 16]), TaskId::from_bytes([2; 16]));
        let w1 = WorkerId::new("w1");
        t.assign(&w1, a);
        t.assign(&w1, b);
        let r = t.register(
            PeerId::named(b"new"),
            w1.clone(),
            vec![spec("add")],
            2,
            None,
            0,
            WorkerSecret::new(),
            &[a],
            now,
        );
        assert_eq!(r.orphaned, vec![b]);
        assert!(t.get(&w1).unwrap().in_flight.contains(&a));
        assert_eq!(t.by_peer(&PeerId::named(b"new")), Some(&w1));
        assert!(t.by_peer(&PeerId::named([1u8])).is_none());
    }

    /// The pick as it was before the ranked index: a scan of every worker.
    fn scanned_pick<'t>(t: &'t WorkerTable, name: &str) -> Option<&'t WorkerId> {
        let best = t
            .workers
            .values()
            .filter(|w| w.can_take(name))
            .min_by(|a, b| {
                a.fallback
                    .cmp(&b.fallback)
                    .then(a.load().total_cmp(&b.load()))
                    .then(a.in_flight.len().cmp(&b.in_flight.len()))
                    .then(a.last_assigned.cmp(&b.last_assigned))
                    .then(a.id.cmp(&b.id))
            })?;
        if best.fallback
            && t.workers
                .values()
                .any(|w| !w.fallback && w.can_prefetch(name))
        {
            return None;
        }
        Some(&best.id)
    }

    /// The index holds exactly the table's workers, each at its current rank.
    fn assert_in_step(t: &WorkerTable) {
        let ranked: usize = t.ranked.iter().map(BTreeSet::len).sum();
        assert_eq!(ranked, t.workers.len());
        for w in t.workers.values() {
            assert!(
                t.ranked[usize::from(w.fallback)].contains(&w.rank()),
                "{}",
                w.id
            );
            assert_eq!(t.prefetchers.contains(&w.id), w.prefetch, "{}", w.id);
        }
        assert!(t.prefetchers.iter().all(|id| t.workers.contains_key(id)));
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(200))]
        /// Whatever happens to the workers, a pick through the index is the pick of a
        /// scan over all of them.
        #[test]
        fn the_ranked_pick_is_the_scanned_pick(
            ops in proptest::collection::vec((0u8..14, 0u8..6, 0u8..8), 1..150),
        ) {
            let now = Instant::now();
            let mut t = WorkerTable::new(MAX_PREFETCH_PER_SLOT);
            let mut next_task = 0u32;
            for (op, w, arg) in ops {
                let id = WorkerId::new(format!("w{w}"));
                let names = if w % 2 == 0 { vec![spec("add")] } else { vec![spec("add"), spec("mul")] };
                match op {
                    0 | 1 => {
                        let running: Vec<TaskId> = t
                            .get(&id)
                            .map(|e| e.in_flight.iter().copied().filter(|_| arg % 2 == 0).collect())
                            .unwrap_or_default();
                        t.register(PeerId::named([w, arg]), id.clone(), names, u32::from(arg % 3 + 1), None, 0, WorkerSecret::new(), &running, now);
                    }
                    2 | 3 => {
                        next_task += 1;
                        let mut bytes = [0u8; 16];
                        bytes[..4].copy_from_slice(&next_task.to_le_bytes());
                        t.assign(&id, TaskId::from_bytes(bytes));
                    }
                    4 => {
                        let held = t.get(&id).and_then(|e| e.in_flight.iter().next().copied());
                        if let Some(task) = held {
                            t.release(&id, &task, arg % 2 == 0);
                        }
                    }
                    5 => t.set_fallback(&id),
                    6 => t.set_prefetch(&id, arg % 2 == 0),
                    7 => {
                        t.remove(&id);
                    }
                    8 => {
                        t.take_in_flight(&id);
                    }
                    9 => {
                        if arg % 2 == 0 {
                            t.expire(now + Duration::from_secs(60), Duration::from_secs(30));
                        } else if let Some(peer) = t.get(&id).map(|e| e.peer) {
                            t.touch(&peer, now);
                        }
                    }
                    // Measured run times: a window past the slots for a prefetching
                    // worker (so the fallback rule's prefetch check can say no).
                    10 => t.record_run_times(
                        &id,
                        [("add".to_string(), 1_000u64 << arg), ("mul".to_string(), 50_000)].into(),
                    ),
                    11 => {
                        if let Some(w) = t.get_mut(&id) {
                            w.stalled = arg % 2 == 0;
                        }
                    }
                    12 => {
                        if let Some(w) = t.get_mut(&id) {
                            w.draining = arg % 2 == 0;
                        }
                    }
                    _ => {
                        if t.get(&id).is_none() {
                            t.restore_parked(id.clone(), WorkerSecret::new(), Default::default(), now);
                        }
                    }
                }
                assert_in_step(&t);
                for name in ["add", "mul", "none"] {
                    proptest::prop_assert_eq!(t.pick(name), scanned_pick(&t, name), "{}", name);
                }
            }
        }
    }
}
