//! `stats.md`: the report a person reads.

use super::Stats;

/// The whole report.
pub(super) fn render(_stats: &Stats) -> String {
    String::new()
}
