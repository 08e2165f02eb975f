//! [`Names`]: the task names and worker ids that the dashboard's events and timelines
//! share, interned. Every step of every task names its task and, once started, its
//! worker; a name shared by a count costs an atomic update on every clone and drop,
//! several per task on the event loop. An interned name is kept for the life of the
//! process and cloned by copying a pointer.
//!
//! The set is bounded: at most [`MAX_INTERNED`] names and [`MAX_INTERNED_BYTES`] of
//! text (names are chosen by clients and workers). Past either bound a name is shared
//! by a count, as before.

use crate::protocol::{api::SharedName, WorkerId};

/// The most names interned.
pub const MAX_INTERNED: usize = 2_000;
/// The most bytes of text interned.
pub const MAX_INTERNED_BYTES: usize = 256 << 10;

/// The interned names.
#[derive(Debug, Default)]
pub struct Names {
    kept: super::FastSet<&'static str>,
    bytes: usize,
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

    /// How many names are interned.
    pub fn len(&self) -> usize {
        self.kept.len()
    }

    /// Whether none is.
    pub fn is_empty(&self) -> bool {
        self.kept.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_name_is_interned_once_and_the_set_is_bounded() {
        let mut names = Names::default();
        let a = names.get("add");
        let b = names.get("add");
        match (&a, &b) {
            (SharedName::Interned(x), SharedName::Interned(y)) => {
                assert!(std::ptr::eq(*x, *y), "the same text, not a copy")
            }
            _ => panic!("not interned: {a:?} {b:?}"),
        }
        assert!(matches!(
            names.worker(&WorkerId::from("sw1")),
            SharedName::Interned("sw1")
        ));
        for i in 0..MAX_INTERNED {
            names.get(&format!("t{i}"));
        }
        assert_eq!(names.len(), MAX_INTERNED);
        let past = names.get("one more");
        assert!(matches!(past, SharedName::Counted(_)));
        assert_eq!(past.as_str(), "one more");
        assert!(matches!(names.get("add"), SharedName::Interned("add")));

        // Bounded by bytes too.
        let mut names = Names::default();
        let long = "x".repeat(MAX_INTERNED_BYTES / 2 + 1);
        assert!(matches!(names.get(&long), SharedName::Interned(_)));
        let other = "y".repeat(MAX_INTERNED_BYTES / 2 + 1);
        assert!(matches!(names.get(&other), SharedName::Counted(_)));
        assert_eq!(names.len(), 1);
    }
}
