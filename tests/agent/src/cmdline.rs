//! The agent's options on the kernel command line. kiln adds its own
//! defaults (console=..., reboot=k, ...) in front; we ignore everything
//! that does not start with `agent.`.
//!
//! - `agent.test=NAME[,NAME...]`: the tests to run, in order (default
//!   `selftest`);
//! - `agent.fail=NAME`: report check NAME as failed even if it passes, to
//!   show that the host-side harness notices failures.
//!
//! A test name may carry an argument after a colon (`blk-rw:1`: the
//! check `blk-rw` on the second disk); checks read further options of
//! their own with [`get`] (`agent.seed=`, `agent.blk_id=`, ...), and the
//! virtio-mmio devices a VMM describes with [`values`]
//! (`virtio_mmio.device=`).
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

/// The words before a bare `--` (the rest belongs to init).
fn words(cmdline: &str) -> impl Iterator<Item = &str> {
    cmdline.split_ascii_whitespace().take_while(|w| *w != "--")
}

/// Every value of `key=VALUE` on the command line, in order.
pub fn values<'a>(cmdline: &'a str, key: &'a str) -> impl Iterator<Item = &'a str> + 'a {
    words(cmdline).filter_map(move |w| w.strip_prefix(key)?.strip_prefix('='))
}

/// The value of the last `key=VALUE`, if any. A bare `key` counts as
/// `key=` (an empty value), so flags can be tested with `is_some()`.
pub fn get<'a>(cmdline: &'a str, key: &str) -> Option<&'a str> {
    words(cmdline)
        .filter_map(|w| {
            let rest = w.strip_prefix(key)?;
            if rest.is_empty() {
                Some(rest)
            } else {
                rest.strip_prefix('=')
            }
        })
        .last()
}

/// A number in decimal or with a 0x prefix.
pub fn number(text: &str) -> Option<u64> {
    match text.strip_prefix("0x").or_else(|| text.strip_prefix("0X")) {
        Some(hex) => u64::from_str_radix(hex, 16).ok(),
        None => text.parse().ok(),
    }
}

/// A size with an optional K, M or G suffix (powers of 1024).
pub fn size(text: &str) -> Option<u64> {
    let (digits, shift) = match text.as_bytes().last()? {
        b'k' | b'K' => (&text[..text.len() - 1], 10),
        b'm' | b'M' => (&text[..text.len() - 1], 20),
        b'g' | b'G' => (&text[..text.len() - 1], 30),
        _ => (text, 0),
    };
    number(digits)?.checked_mul(1 << shift)
}
