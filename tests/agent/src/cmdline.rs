//! The agent's options on the kernel command line. kiln adds its own
//! defaults (console=..., reboot=k, ...) in front; we ignore everything
//! that does not start with `agent.`.
//!
//! - `agent.test=NAME[,NAME...]`: the tests to run, in order (default
//!   `selftest`);
//! - `agent.fail=NAME`: report check NAME as failed even if it passes, to
//!   show that the host-side harness notices failures.
//!
//! A later occurrence of an option replaces an earlier one. Words after a
//! bare `--` belong to init on Linux and are ignored here too.

/// The parsed options. Borrows from the command line: no allocation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Args<'a> {
    /// Comma-separated test names, as given.
    pub tests: &'a str,
    /// The check to fail on purpose, if any.
    pub fail: Option<&'a str>,
}

/// The tests run when the command line names none.
pub const DEFAULT_TESTS: &str = "selftest";

/// Parses `cmdline` (never fails: unknown words are ignored).
pub fn parse(cmdline: &str) -> Args<'_> {
    let mut args = Args {
        tests: DEFAULT_TESTS,
        fail: None,
    };
    for word in cmdline.split_ascii_whitespace() {
        if word == "--" {
            break;
        }
        if let Some(v) = word.strip_prefix("agent.test=") {
            args.tests = v;
        } else if let Some(v) = word.strip_prefix("agent.fail=") {
            args.fail = Some(v).filter(|v| !v.is_empty());
        }
    }
    args
}

impl<'a> Args<'a> {
    /// The test names, skipping empty ones (`a,,b` or a trailing comma).
    pub fn tests(&self) -> impl Iterator<Item = &'a str> {
        self.tests.split(',').filter(|t| !t.is_empty())
    }
}
