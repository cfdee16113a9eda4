//! A minimal `log` backend: one line per message on stderr, prefixed with
//! "kiln:" so it stands apart from the guest's console output.

use std::io::Write;

struct Logger;

impl log::Log for Logger {
    fn enabled(&self, m: &log::Metadata) -> bool {
        m.level() <= log::max_level()
    }

    fn log(&self, r: &log::Record) {
        if !self.enabled(r.metadata()) {
            return;
        }
        let level = match r.level() {
            log::Level::Error => "error: ",
            log::Level::Warn => "warning: ",
            _ => "",
        };
        // One write per line, so lines from several threads do not interleave.
        let line = format!("kiln: {level}{}\n", r.args());
        let _ = std::io::stderr().write_all(line.as_bytes());
    }

    fn flush(&self) {}
}

static LOGGER: Logger = Logger;

/// Installs the logger: 0 = warnings, 1 = info, 2 = debug, 3+ = trace.
pub fn init(verbosity: u8) {
    let level = match verbosity {
        0 => log::LevelFilter::Warn,
        1 => log::LevelFilter::Info,
        2 => log::LevelFilter::Debug,
        _ => log::LevelFilter::Trace,
    };
    let _ = log::set_logger(&LOGGER);
    log::set_max_level(level);
}
