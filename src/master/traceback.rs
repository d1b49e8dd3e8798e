//! A Python traceback in an exec worker's output, as one log event: the
//! lines from `Traceback (most recent call last):` to the exception line
//! are held and handed over together, so the log has one ERROR event
//! (message: the exception; field: the frames) instead of one INFO event
//! per line.

/// Most lines one traceback event holds; a longer one is handed over in
/// parts (a deep recursion is not held whole).
pub const TRACEBACK_MAX_LINES: usize = 200;
/// Most bytes one traceback event holds.
pub const TRACEBACK_MAX_BYTES: usize = 32 * 1024;

const START: &str = "Traceback (most recent call last):";

/// What a line of output becomes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Output {
    /// An ordinary line.
    Line(String),
    /// A traceback: the exception line (or what ended it early) and the
    /// lines before it, newline-separated.
    Traceback { exception: String, frames: String },
}

impl Output {
    /// The lines of output it stands for (what the line budget counts).
    pub fn lines(&self) -> usize {
        match self {
            Output::Line(_) => 1,
            Output::Traceback { frames, .. } => frames.lines().count() + 1,
        }
    }
}

/// One output stream's traceback in progress.
#[derive(Debug, Default)]
pub struct Grouper {
    /// Inside a traceback (possibly between two parts of a long one).
    active: bool,
    lines: Vec<String>,
    bytes: usize,
}

impl Grouper {
    /// Takes the stream's next line.
    pub fn push(&mut self, line: String) -> Option<Output> {
        if !self.active {
            if line.starts_with(START) {
                self.active = true;
                self.bytes = line.len();
                self.lines.push(line);
                return None;
            }
            return Some(Output::Line(line));
        }
        // Frames and source lines are indented; the exception is not.
        let continues = line.is_empty() || line.starts_with([' ', '\t']);
        if !continues {
            self.active = false;
            return Some(self.take(line));
        }
        self.bytes += line.len() + 1;
        self.lines.push(line);
        if self.lines.len() >= TRACEBACK_MAX_LINES || self.bytes >= TRACEBACK_MAX_BYTES {
            return Some(self.take("(traceback continues)".into()));
        }
        None
    }

    /// What is held, when the stream ends or the process exits.
    pub fn flush(&mut self) -> Option<Output> {
        self.active = false;
        (!self.lines.is_empty()).then(|| self.take("(traceback cut off: the output ended)".into()))
    }

    fn take(&mut self, exception: String) -> Output {
        let frames = std::mem::take(&mut self.lines).join("\n");
        self.bytes = 0;
        Output::Traceback { exception, frames }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn feed(g: &mut Grouper, text: &str) -> Vec<Output> {
        text.lines().filter_map(|l| g.push(l.to_string())).collect()
    }

    #[test]
    fn a_traceback_is_one_output_and_other_lines_pass() {
        let mut g = Grouper::default();
        let out = feed(
            &mut g,
            "INFO: started\n\
             Traceback (most recent call last):\n  File \"main.py\", line 6\n    syntax error(\n                ^\n\
             SyntaxError: '(' was never closed\nafter\n",
        );
        assert_eq!(
            out,
            vec![
                Output::Line("INFO: started".into()),
                Output::Traceback {
                    exception: "SyntaxError: '(' was never closed".into(),
                    frames: "Traceback (most recent call last):\n  File \"main.py\", line 6\n    \
                             syntax error(\n                ^"
                        .into()
                },
                Output::Line("after".into()),
            ]
        );
        assert_eq!(g.flush(), None);
    }

    #[test]
    fn an_unfinished_traceback_is_flushed_and_a_huge_one_split() {
        let mut g = Grouper::default();
        assert!(feed(&mut g, "Traceback (most recent call last):\n  File \"x\"\n").is_empty());
        assert!(matches!(g.flush(), Some(Output::Traceback { .. })));
        let mut text = String::from("Traceback (most recent call last):\n");
        for _ in 0..TRACEBACK_MAX_LINES * 2 {
            text.push_str("  File \"deep.py\", line 1, in f\n");
        }
        text.push_str("RecursionError: maximum recursion depth exceeded\n");
        let parts = feed(&mut g, &text);
        assert_eq!(parts.len(), 3, "{parts:?}");
        for p in parts {
            let Output::Traceback { frames, .. } = p else {
                panic!("{p:?}")
            };
            assert!(frames.lines().count() <= TRACEBACK_MAX_LINES);
        }
    }
}
