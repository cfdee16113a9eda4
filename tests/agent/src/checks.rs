//! A tiny check framework. Each test is one check; it prints exactly one of
//!
//! ```text
//! AGENT: check NAME ok
//! AGENT: check NAME FAIL: reason
//! ```
//!
//! and after the last one the runner prints `AGENT: done passed=N failed=M`
//! and resets the machine. The host-side harness reads these lines; a run
//! without a `done` line (a fault, a panic, a hang) counts as failed.
//!
//! A check is a function returning [`CheckResult`]; use [`ensure!`] and
//! [`fail!`] inside it, they format the reason without any allocation.

use core::fmt::{self, Write};

use crate::println;

/// Room for one failure reason; longer reasons are cut off.
const REASON_LEN: usize = 160;

/// Why a check failed: a short formatted message kept in a fixed buffer.
pub struct Fail {
    buf: [u8; REASON_LEN],
    len: usize,
}

impl Fail {
    /// Formats a reason (see the [`fail!`] macro).
    pub fn new(args: fmt::Arguments) -> Self {
        let mut f = Fail {
            buf: [0; REASON_LEN],
            len: 0,
        };
        let _ = f.write_fmt(args);
        f
    }

    /// The reason as text.
    pub fn as_str(&self) -> &str {
        // write_str only ever stores whole characters.
        core::str::from_utf8(&self.buf[..self.len]).unwrap_or("?")
    }
}

impl Write for Fail {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        for c in s.chars() {
            // Keep the report on one line, whatever the message contains.
            let c = if c == '\n' || c == '\r' { ' ' } else { c };
            let mut tmp = [0; 4];
            let bytes = c.encode_utf8(&mut tmp).as_bytes();
            if self.len + bytes.len() > REASON_LEN {
                break;
            }
            self.buf[self.len..self.len + bytes.len()].copy_from_slice(bytes);
            self.len += bytes.len();
        }
        Ok(())
    }
}

/// What a check returns.
pub type CheckResult = Result<(), Fail>;

/// Returns from the current check with a formatted failure reason.
#[macro_export]
macro_rules! fail {
    ($($arg:tt)*) => {
        return Err($crate::checks::Fail::new(format_args!($($arg)*)))
    };
}

/// Fails the current check with the formatted reason unless `cond` holds.
#[macro_export]
macro_rules! ensure {
    ($cond:expr, $($arg:tt)*) => {
        if !$cond {
            $crate::fail!($($arg)*);
        }
    };
}

/// Runs checks, prints their lines and counts the results.
pub struct Runner<'a> {
    /// `agent.fail=NAME`: the check to report as failed anyway.
    forced: Option<&'a str>,
    passed: u32,
    failed: u32,
}

impl<'a> Runner<'a> {
    /// A runner that fails `forced` on purpose (if given).
    pub fn new(forced: Option<&'a str>) -> Self {
        Runner {
            forced,
            passed: 0,
            failed: 0,
        }
    }

    /// Runs one check and prints its line.
    pub fn check(&mut self, name: &str, f: impl FnOnce() -> CheckResult) {
        let mut result = f();
        // A forced failure still runs the check (its side effects and
        // output stay the same); only a success is turned into a failure.
        if result.is_ok() && self.forced == Some(name) {
            result = Err(Fail::new(format_args!("forced by agent.fail={name}")));
        }
        match result {
            Ok(()) => {
                self.passed += 1;
                println!("AGENT: check {name} ok");
            }
            Err(why) => {
                self.failed += 1;
                println!("AGENT: check {name} FAIL: {}", why.as_str());
            }
        }
    }

    /// Prints the summary line and resets the machine (kiln exits 0).
    pub fn finish(self) -> ! {
        println!("AGENT: done passed={} failed={}", self.passed, self.failed);
        crate::io::reset()
    }
}
