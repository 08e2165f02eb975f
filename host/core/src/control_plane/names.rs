//! [`Names`]: the task names and worker ids that the dashboard's events and timelines
//! share, interned. Every step of every task names its task and, once started, its
//! worker; a name shared by a count costs an atomic update on every clone and drop,
//! several per task on the event loop. An interned name is kept for the life of the
//! process and cloned by copying a pointer.
//!
//! The set is bounded per process: at most [`MAX_INTERNED`] names and
//! [`MAX_INTERNED_BYTES`] of text (names are chosen by clients and workers), shared by
//! every [`Names`]. Past either bound a name is shared by a count, as before. Each
//! [`Names`] remembers the interned names it has seen, so the process-wide set (behind
//! a lock) is consulted only for a name new to it.

use std::sync::{Mutex, OnceLock, PoisonError};

use crate::protocol::{api::SharedName, WorkerId};

/// The most names interned in a process.
pub const MAX_INTERNED: usize = 2_000;
/// The most bytes of text interned in a process.
pub const MAX_INTERNED_BYTES: usize = 256 << 10;

/// A bounded set of names kept for good.
#[derive(Debug, Default)]
struct Interned {
    kept: super::FastSet<&'static str>,
    bytes: usize,
}

impl Interned {
    /// `name` as kept, keeping it if there is room.
    fn intern(&mut self, name: &str) -> Option<&'static str> {
        if let Some(kept) = self.kept.get(name) {
            return Some(kept);
        }
        if self.kept.len() >= MAX_INTERNED || self.bytes + name.len() > MAX_INTERNED_BYTES {
            return None;
        }
        // Kept for good, within the bounds above.
        let kept: &'static str = Box::leak(Box::from(name));
        self.bytes += name.len();
        self.kept.insert(kept);
        Some(kept)
    }
}

/// The process's interned names.
fn process_wide() -> &'static Mutex<Interned> {
    static INTERNED: OnceLock<Mutex<Interned>> = OnceLock::new();
    INTERNED.get_or_init(Mutex::default)
}

/// The interned names one observer has seen.
#[derive(Debug, Default)]
pub struct Names {
    seen: super::FastSet<&'static str>,
}

impl Names {
    /// `name`, interned if it is or there is room, else shared by a count.
    pub fn get(&mut self, name: &str) -> SharedName {
        self.interned(name)
            .map_or_else(|| SharedName::from(name), SharedName::Interned)
    }

    /// Worker `worker`'s id, interned if it is or there is room, else its own shared
    /// string.
    pub fn worker(&mut self, worker: &WorkerId) -> SharedName {
        self.interned(worker.as_str()).map_or_else(
            || SharedName::Counted(worker.shared()),
            SharedName::Interned,
        )
    }

    fn interned(&mut self, name: &str) -> Option<&'static str> {
        if let Some(kept) = self.seen.get(name) {
            return Some(kept);
        }
        // A panic elsewhere while holding the lock leaves the set as it was.
        let kept = process_wide()
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .intern(name)?;
        self.seen.insert(kept);
        Some(kept)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_name_is_interned_once_for_the_whole_process() {
        let (mut one, mut other) = (Names::default(), Names::default());
        let a = one.get("add");
        let b = other.get("add");
        match (&a, &b) {
            (SharedName::Interned(x), SharedName::Interned(y)) => {
                assert!(std::ptr::eq(*x, *y), "the same text, not a copy")
            }
            _ => panic!("not interned: {a:?} {b:?}"),
        }
        assert!(matches!(
            one.worker(&WorkerId::from("sw1")),
            SharedName::Interned("sw1")
        ));
    }

    #[test]
    fn the_set_is_bounded_by_count_and_by_bytes() {
        let mut set = Interned::default();
        assert!(set.intern("add").is_some());
        for i in 0..MAX_INTERNED {
            set.intern(&format!("t{i}"));
        }
        assert_eq!(set.kept.len(), MAX_INTERNED);
        assert!(set.intern("one more").is_none());
        assert_eq!(set.intern("add"), Some("add"));

        let mut set = Interned::default();
        let long = "x".repeat(MAX_INTERNED_BYTES / 2 + 1);
        assert!(set.intern(&long).is_some());
        let other = "y".repeat(MAX_INTERNED_BYTES / 2 + 1);
        assert!(set.intern(&other).is_none());
        assert_eq!(set.kept.len(), 1);
    }
}
