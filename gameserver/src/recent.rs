//! A world's last lines said, which its `Welcome` and `Resync` carry so a client that
//! joins (or catches up) shows the conversation so far.
//!
//! The same lines go to the activity log; a world that starts (restored, or moved here)
//! takes its last ones back from there ([`RecentLines::seed`]), so they outlive the
//! world's server. Lines still in the old server's log queue when it died are not among
//! them.

use std::collections::VecDeque;

use gaia_api::activity::WorldMessage;

/// The last `keep` lines, oldest first.
#[derive(Debug, Default)]
pub(crate) struct RecentLines {
    lines: VecDeque<WorldMessage>,
    keep: usize,
}

impl RecentLines {
    pub(crate) fn new(keep: usize) -> Self {
        Self { lines: VecDeque::with_capacity(keep), keep }
    }

    /// Whether it keeps any: with `keep` 0 the world need not report its lines.
    pub(crate) fn wanted(&self) -> bool {
        self.keep > 0
    }

    /// Lines from before the world started here (oldest first); what was said since
    /// stays newest.
    pub(crate) fn seed(&mut self, older: Vec<WorldMessage>) {
        let room = self.keep.saturating_sub(self.lines.len());
        let skip = older.len().saturating_sub(room);
        for line in older.into_iter().skip(skip).rev() {
            self.lines.push_front(line);
        }
    }

    pub(crate) fn push(&mut self, line: WorldMessage) {
        if self.keep == 0 {
            return;
        }
        if self.lines.len() == self.keep {
            self.lines.pop_front();
        }
        self.lines.push_back(line);
    }

    /// What a `Welcome` or `Resync` carries.
    pub(crate) fn to_vec(&self) -> Vec<WorldMessage> {
        self.lines.iter().cloned().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(tick: u64) -> WorldMessage {
        WorldMessage {
            epoch: 1,
            tick,
            seq: 0,
            at_ms: 0,
            author_id: 1,
            author: "ada".into(),
            text: format!("line {tick}"),
        }
    }

    fn ticks(recent: &RecentLines) -> Vec<u64> {
        recent.to_vec().iter().map(|l| l.tick).collect()
    }

    #[test]
    fn keeps_the_newest_oldest_first() {
        let mut recent = RecentLines::new(3);
        for tick in 1..=5 {
            recent.push(line(tick));
        }
        assert_eq!(ticks(&recent), [3, 4, 5]);
    }

    #[test]
    fn seeded_lines_go_before_and_give_way_to_newer_ones() {
        let mut recent = RecentLines::new(4);
        recent.push(line(10));
        recent.seed(vec![line(1), line(2), line(3), line(4)]);
        assert_eq!(ticks(&recent), [2, 3, 4, 10]);
        recent.push(line(11));
        assert_eq!(ticks(&recent), [3, 4, 10, 11]);
    }

    #[test]
    fn keeping_none_keeps_none() {
        let mut recent = RecentLines::new(0);
        recent.seed(vec![line(1)]);
        recent.push(line(2));
        assert!(!recent.wanted() && recent.to_vec().is_empty());
    }
}
