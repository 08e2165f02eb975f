//! Maps and sets on every task's path, keyed by task id, task name, worker id or
//! connection (in the control plane: the tasks, the queues, the worker table, the
//! dashboard's counts; in a subworker: the running tasks, the waiting ones, the loaded
//! task names, the run times): foldhash, seeded per process so keys a client picks
//! cannot be aimed at one bucket, instead of SipHash, which was a few percent of the
//! control plane's time under load (`perf`) and about a tenth of the dispatcher's
//! instructions (callgrind, `cargo bench --bench dispatcher`).

/// A hash map with foldhash, seeded per process.
pub type FastMap<K, V> = std::collections::HashMap<K, V, foldhash::fast::RandomState>;
/// See [`FastMap`].
pub type FastSet<K> = std::collections::HashSet<K, foldhash::fast::RandomState>;
/// A [`FastMap`] keyed by task id.
pub(crate) type TaskMap<V> = FastMap<crate::protocol::TaskId, V>;
/// A [`FastSet`] of task ids.
pub(crate) type TaskSet = FastSet<crate::protocol::TaskId>;
