//! The last lines of a tool's output, kept for its error message only:
//! builds are quiet unless they fail.

use std::collections::VecDeque;

/// Lines kept for an error message.
pub(crate) const TAIL_LINES: usize = 40;
/// Longer lines are cut, so a tail is bounded whatever the tool prints.
const MAX_LINE_BYTES: usize = 500;

/// The last [`TAIL_LINES`] lines of text fed in pieces.
#[derive(Default)]
pub(crate) struct Tail {
    lines: VecDeque<String>,
    /// The line being fed, not yet ended by a newline.
    partial: String,
}

impl Tail {
    /// Feeds a piece of output; pieces need not end at line ends.
    pub(crate) fn push(&mut self, text: &str) {
        for c in text.chars() {
            match c {
                '\n' => self.end_line(),
                '\r' => {}
                c if self.partial.len() < MAX_LINE_BYTES => self.partial.push(c),
                _ => {}
            }
        }
    }

    fn end_line(&mut self) {
        let line = std::mem::take(&mut self.partial);
        if line.trim().is_empty() {
            return;
        }
        if self.lines.len() == TAIL_LINES {
            self.lines.pop_front();
        }
        self.lines.push_back(line);
    }

    /// The kept lines, indented, one per line (empty when nothing was kept).
    pub(crate) fn render(mut self) -> String {
        self.end_line();
        self.lines
            .iter()
            .map(|line| format!("\n    {line}"))
            .collect()
    }
}
