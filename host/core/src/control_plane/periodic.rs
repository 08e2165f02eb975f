//! [`PeriodicScheduler`]: when each periodic task fires next. Only the control plane
//! schedules periodic tasks, from the schedules plugins declare (its own and its
//! subworkers'), so a task served by five subworkers still runs once per tick.
//!
//! - Interval: the first run at start-up (when the schedule is first seen), then every
//!   `interval` after the previous *scheduled start*, so runs do not drift.
//! - Cron: 5 fields (`*`, `*/N`, lists, ranges, ranges with steps; day-of-week 0-6,
//!   Sunday 0), in local time, parsed by `croner`.
//! - `repeat_count` stops it after that many runs; `repeat_until` stops it after that
//!   time.
//! - A tick is skipped while the previous run of the same task is not finished.

use std::collections::HashMap;

use chrono::{Local, TimeZone};

use super::store::PeriodicPlace;
use crate::protocol::{PeriodicSpec, TaskId};

/// A schedule that cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("bad schedule `{expr}`: {reason}")]
pub struct ScheduleError {
    expr: String,
    reason: String,
}

/// A parsed schedule.
#[derive(Debug, Clone)]
pub enum Schedule {
    /// Every so many milliseconds.
    Interval(u64),
    /// A cron expression.
    Cron(Box<croner::Cron>),
}

impl Schedule {
    /// Parses a plugin's declaration.
    pub fn from_spec(spec: &PeriodicSpec) -> Result<Self, ScheduleError> {
        if let Some(expr) = &spec.cron {
            return parse_cron(expr).map(|c| Schedule::Cron(Box::new(c)));
        }
        match spec.interval_secs {
            Some(secs) if secs > 0.0 && secs.is_finite() => {
                Ok(Schedule::Interval((secs * 1000.0).round().max(1.0) as u64))
            }
            other => Err(ScheduleError {
                expr: format!("{other:?}"),
                reason: "an interval must be a positive number of seconds".into(),
            }),
        }
    }

    /// The first fire time at or after `now_ms` for a schedule first seen at `now_ms`.
    pub fn first(&self, now_ms: u64) -> Option<u64> {
        match self {
            Schedule::Interval(_) => Some(now_ms),
            Schedule::Cron(cron) => next_cron(cron, now_ms),
        }
    }

    /// The fire time after the one at `fired_ms`.
    pub fn after(&self, fired_ms: u64) -> Option<u64> {
        match self {
            Schedule::Interval(every) => Some(fired_ms + every),
            Schedule::Cron(cron) => next_cron(cron, fired_ms),
        }
    }
}

/// Parses a 5-field cron expression.
pub fn parse_cron(expr: &str) -> Result<croner::Cron, ScheduleError> {
    let err = |reason: String| ScheduleError {
        expr: expr.to_string(),
        reason,
    };
    let fields = expr.split_whitespace().count();
    if fields != 5 {
        return Err(err(format!("expected 5 fields, found {fields}")));
    }
    croner::parser::CronParser::builder()
        .seconds(croner::parser::Seconds::Disallowed)
        .build()
        .parse(expr)
        .map_err(|e| err(e.to_string()))
}

/// The first minute matching `cron` strictly after `after_ms`, in Unix ms.
pub fn next_cron(cron: &croner::Cron, after_ms: u64) -> Option<u64> {
    let start = Local.timestamp_millis_opt(after_ms as i64).single()?;
    let next = cron.find_next_occurrence(&start, false).ok()?;
    u64::try_from(next.timestamp_millis()).ok()
}

#[derive(Debug)]
struct Entry {
    spec: PeriodicSpec,
    schedule: Schedule,
    next_ms: Option<u64>,
    runs: u64,
    last_task: Option<TaskId>,
    skipped: u64,
    dormant: bool,
    /// The scheduled time of the tick that fired last.
    last_fired: Option<u64>,
}

/// The periodic tasks and when each fires next.
#[derive(Debug, Default)]
pub struct PeriodicScheduler {
    entries: HashMap<String, Entry>,
    /// Schedules that did not parse, kept so each is reported once, not every tick.
    invalid: HashMap<String, PeriodicSpec>,
    /// Places loaded from the store, taken up when each schedule is first seen.
    restored: HashMap<String, PeriodicPlace>,
    /// Schedules whose place moved since the last [`PeriodicScheduler::take_moved`].
    moved: std::collections::HashSet<String>,
}

/// A periodic task's state, for listings.
#[derive(Debug, Clone, PartialEq)]
pub struct PeriodicStatus {
    /// The task name.
    pub name: String,
    /// Next fire time (Unix ms), if any remain.
    pub next_ms: Option<u64>,
    /// Runs so far.
    pub runs: u64,
    /// Ticks skipped because the previous run was still going.
    pub skipped: u64,
}

impl PeriodicScheduler {
    /// No periodic tasks.
    pub fn new() -> Self {
        Self::default()
    }

    /// Brings the schedules up to date with `specs` (what the hosts serving periodic
    /// tasks declare now): new ones start (an interval fires at once), changed ones
    /// restart. One missing from `specs` goes dormant rather than away: while nobody
    /// serves it, it does not fire, and when a host serving it comes back it keeps its
    /// place (a crash-looping subworker does not re-run an `every = 30` task each time).
    /// Returns schedules that did not parse, with the task name.
    pub fn sync<'a>(
        &mut self,
        specs: impl IntoIterator<Item = (&'a str, &'a PeriodicSpec)>,
        now_ms: u64,
    ) -> Vec<(String, ScheduleError)> {
        let mut errors = Vec::new();
        let mut present = Vec::new();
        for (name, spec) in specs {
            present.push(name.to_string());
            if self.entries.get(name).is_some_and(|e| &e.spec == spec)
                || self.invalid.get(name) == Some(spec)
            {
                continue;
            }
            match Schedule::from_spec(spec) {
                Ok(schedule) => {
                    // Restored from the store: it keeps its place (a tick missed while
                    // the control plane was down fires once, now; see `due`).
                    let (next_ms, runs, last_task) = match self.restored.remove(name) {
                        Some(place) => (place.next_ms, place.runs, place.last_task),
                        None => (schedule.first(now_ms), 0, None),
                    };
                    self.entries.insert(
                        name.to_string(),
                        Entry {
                            spec: spec.clone(),
                            schedule,
                            next_ms,
                            runs,
                            last_task,
                            skipped: 0,
                            dormant: false,
                            last_fired: None,
                        },
                    );
                }
                Err(err) => {
                    self.entries.remove(name);
                    self.invalid.insert(name.to_string(), spec.clone());
                    errors.push((name.to_string(), err));
                }
            }
        }
        for (name, entry) in &mut self.entries {
            entry.dormant = !present.contains(name);
        }
        errors
    }

    /// The names due at `now_ms`, advancing each one's schedule. `still_running` says
    /// whether a previous run has not finished (that tick is skipped).
    pub fn due(&mut self, now_ms: u64, still_running: impl Fn(&TaskId) -> bool) -> Vec<String> {
        let mut due = Vec::new();
        for (name, entry) in &mut self.entries {
            if entry.dormant {
                continue;
            }
            let Some(next) = entry.next_ms else { continue };
            if next > now_ms {
                continue;
            }
            // Catch up without a burst: the next fire is the first one after now.
            let mut following = entry.schedule.after(next);
            while let Some(f) = following {
                if f > now_ms {
                    break;
                }
                following = entry.schedule.after(f);
            }
            entry.next_ms = following;
            self.moved.insert(name.clone());
            let over_count = entry.spec.repeat_count.is_some_and(|n| entry.runs >= n);
            let over_time = entry
                .spec
                .repeat_until_unix
                .is_some_and(|until| now_ms as i64 > until.saturating_mul(1000));
            if over_count || over_time {
                entry.next_ms = None;
                continue;
            }
            if entry.last_task.as_ref().is_some_and(&still_running) {
                entry.skipped += 1;
                continue;
            }
            entry.last_fired = Some(next);
            due.push(name.clone());
        }
        due.sort();
        due
    }

    /// Records the task submitted for a due tick of `name`.
    pub fn submitted(&mut self, name: &str, id: TaskId) {
        self.moved.insert(name.to_string());
        if let Some(entry) = self.entries.get_mut(name) {
            entry.runs += 1;
            entry.last_task = Some(id);
        }
    }

    /// Takes up places loaded from the store (before the first `sync`).
    pub fn restore(&mut self, places: impl IntoIterator<Item = (String, PeriodicPlace)>) {
        self.restored.extend(places);
    }

    /// The schedules whose place moved (fired, skipped or ended) since the last call.
    pub fn take_moved(&mut self) -> Vec<String> {
        self.moved.drain().collect()
    }

    /// Where `name`'s schedule stands, for the store.
    pub fn place(&self, name: &str) -> Option<PeriodicPlace> {
        self.entries.get(name).map(|e| PeriodicPlace {
            next_ms: e.next_ms,
            runs: e.runs,
            last_task: e.last_task,
        })
    }

    /// The scheduled time of `name`'s last tick that fired.
    pub fn last_fired(&self, name: &str) -> Option<u64> {
        self.entries.get(name).and_then(|e| e.last_fired)
    }

    /// Every periodic task's state, by name.
    pub fn statuses(&self) -> Vec<PeriodicStatus> {
        let mut out: Vec<PeriodicStatus> = self
            .entries
            .iter()
            .map(|(name, e)| PeriodicStatus {
                name: name.clone(),
                next_ms: e.next_ms,
                runs: e.runs,
                skipped: e.skipped,
            })
            .collect();
        out.sort_by(|a, b| a.name.cmp(&b.name));
        out
    }
}

/// The id of periodic task `name`'s tick scheduled at `tick_ms` (Unix ms): the same
/// tick always has the same id, so it can be submitted only once.
pub fn tick_id(name: &str, tick_ms: u64) -> TaskId {
    let mut hasher = blake3::Hasher::new_derive_key("fastworker periodic tick v1");
    hasher.update(&(name.len() as u64).to_le_bytes());
    hasher.update(name.as_bytes());
    hasher.update(&tick_ms.to_le_bytes());
    let mut bytes = [0u8; 16];
    bytes.copy_from_slice(&hasher.finalize().as_bytes()[..16]);
    // A version-8 (custom) UUID.
    bytes[6] = (bytes[6] & 0x0f) | 0x80;
    bytes[8] = (bytes[8] & 0x3f) | 0x80;
    TaskId::from_bytes(bytes)
}

#[cfg(test)]
mod tests {
    use chrono::{Datelike, Timelike};

    use super::*;

    fn interval(secs: f64) -> PeriodicSpec {
        {
            let mut value = PeriodicSpec::interval(0.0);
            value.interval_secs = Some(secs);
            value.cron = None;
            value.repeat_count = None;
            value.repeat_until_unix = None;
            value
        }
    }

    fn at(ms: u64) -> chrono::DateTime<Local> {
        Local.timestamp_millis_opt(ms as i64).unwrap()
    }

    fn local_ms(y: i32, mo: u32, d: u32, h: u32, mi: u32) -> u64 {
        Local
            .with_ymd_and_hms(y, mo, d, h, mi, 0)
            .single()
            .unwrap()
            .timestamp_millis() as u64
    }

    #[test]
    fn interval_fires_at_start_up_then_spaced_from_each_start() {
        let mut s = PeriodicScheduler::new();
        let spec = interval(30.0);
        s.sync([("hb", &spec)], 1_000);
        assert_eq!(s.due(1_000, |_| false), ["hb"]);
        s.submitted("hb", TaskId::new());
        assert!(s.due(30_999, |_| false).is_empty());
        assert_eq!(s.due(31_000, |_| false), ["hb"]);
        // Late by 5 s: the next is still 61 s, not 66 s.
        assert!(s.due(60_999, |_| false).is_empty());
        assert_eq!(s.due(61_000, |_| false), ["hb"]);
    }

    #[test]
    fn repeat_count_and_until_stop_it() {
        let mut s = PeriodicScheduler::new();
        let spec = {
            let mut value = interval(1.0);
            value.repeat_count = Some(2);
            value
        };
        s.sync([("t", &spec)], 0);
        let mut runs = 0;
        for t in 0..10u64 {
            for name in s.due(t * 1000, |_| false) {
                s.submitted(&name, TaskId::new());
                runs += 1;
            }
        }
        assert_eq!(runs, 2);

        let spec = {
            let mut value = interval(1.0);
            value.repeat_until_unix = Some(3);
            value
        };
        let mut s = PeriodicScheduler::new();
        s.sync([("t", &spec)], 0);
        let fired: Vec<u64> = (0..10u64)
            .filter(|t| {
                let due = !s.due(t * 1000, |_| false).is_empty();
                if due {
                    s.submitted("t", TaskId::new());
                }
                due
            })
            .collect();
        assert_eq!(fired, [0, 1, 2, 3]);
    }

    #[test]
    fn a_tick_is_skipped_while_the_previous_run_is_going() {
        let mut s = PeriodicScheduler::new();
        let spec = interval(1.0);
        s.sync([("t", &spec)], 0);
        assert_eq!(s.due(0, |_| false), ["t"]);
        s.submitted("t", TaskId::new());
        assert!(s.due(1_000, |_| true).is_empty());
        assert_eq!(s.statuses()[0].skipped, 1);
        assert_eq!(s.due(2_000, |_| false), ["t"]);
    }

    #[test]
    fn unserved_schedules_sleep_and_keep_their_place_and_bad_ones_are_reported() {
        let mut s = PeriodicScheduler::new();
        let spec = interval(30.0);
        s.sync([("t", &spec)], 0);
        assert_eq!(s.due(0, |_| false), ["t"]);
        s.submitted("t", TaskId::new());
        // Nobody serves it for a while: it does not fire.
        s.sync(std::iter::empty(), 1_000);
        assert!(s.due(40_000, |_| false).is_empty());
        // Served again at 41 s: not a fresh start-up run, but the tick it missed.
        s.sync([("t", &spec)], 41_000);
        assert_eq!(s.due(41_000, |_| false), ["t"]);
        s.submitted("t", TaskId::new());
        assert!(s.due(50_000, |_| false).is_empty(), "next at 60 s");
        assert_eq!(s.due(60_000, |_| false), ["t"]);
        let bad = {
            let mut value = interval(1.0);
            value.cron = Some("* * *".into());
            value
        };
        let errors = s.sync([("b", &bad)], 0);
        assert_eq!(errors.len(), 1);
        assert!(errors[0].1.to_string().contains("5 fields"));
        assert!(
            s.sync([("b", &bad)], 20).is_empty(),
            "reported once, not every tick"
        );
    }

    /// The spec's syntax: `*`, `*/N`, lists, ranges, ranges with steps, day-of-week
    /// 0-6 with Sunday 0. Each row: expression, a start, the expected next fire.
    #[test]
    fn cron_expressions_table() {
        // 2026-11-27 is a Friday.
        let start = local_ms(2026, 11, 27, 10, 7);
        type Minute = (i32, u32, u32, u32, u32);
        let rows: [(&str, Minute); 10] = [
            ("* * * * *", (2026, 11, 27, 10, 8)),
            ("*/15 * * * *", (2026, 11, 27, 10, 15)),
            ("0 * * * *", (2026, 11, 27, 11, 0)),
            ("5,40 * * * *", (2026, 11, 27, 10, 40)),
            ("0 9-17 * * *", (2026, 11, 27, 11, 0)),
            ("0 8-18/4 * * *", (2026, 11, 27, 12, 0)),
            ("30 6 * * 0", (2026, 11, 29, 6, 30)),
            ("0 0 1 * *", (2026, 12, 1, 0, 0)),
            ("0 12 * * 1-5", (2026, 11, 27, 12, 0)),
            ("0 0 * * 6", (2026, 11, 28, 0, 0)),
        ];
        for (expr, (y, mo, d, h, mi)) in rows {
            let cron = parse_cron(expr).unwrap_or_else(|e| panic!("{expr}: {e}"));
            let next = next_cron(&cron, start).unwrap();
            let n = at(next);
            assert_eq!(
                (n.year(), n.month(), n.day(), n.hour(), n.minute()),
                (y, mo, d, h, mi),
                "{expr}"
            );
        }
        for bad in [
            "* * * *",
            "61 * * * *",
            "* * * * 9",
            "0 0 * * * *",
            "x * * * *",
        ] {
            assert!(parse_cron(bad).is_err(), "{bad} should be refused");
        }
    }

    #[test]
    fn a_restored_schedule_keeps_its_place_and_missed_ticks_fire_once() {
        let mut s = PeriodicScheduler::new();
        // Stored: next tick at 10 s, 3 runs; the control plane comes back at 55 s, so
        // the ticks at 10, 20, 30, 40 and 50 s were missed.
        s.restore([(
            "beat".to_string(),
            PeriodicPlace {
                next_ms: Some(10_000),
                runs: 3,
                last_task: None,
            },
        )]);
        let spec = interval(10.0);
        assert!(s.sync([("beat", &spec)], 55_000).is_empty());
        assert_eq!(s.due(55_000, |_| false), vec!["beat".to_string()]);
        assert_eq!(s.last_fired("beat"), Some(10_000));
        let run = TaskId::new();
        s.submitted("beat", run);
        assert_eq!(
            s.place("beat"),
            Some(PeriodicPlace {
                next_ms: Some(60_000),
                runs: 4,
                last_task: Some(run),
            })
        );
        assert!(
            s.due(59_999, |_| false).is_empty(),
            "once, not once per missed tick"
        );
    }
}
