//! A minimal `log` backend: one line per message on stderr, prefixed with
//! "kiln:" so it stands apart from the guest's console output. Firecracker's
//! `PUT /logger` can send the lines to a file or named pipe instead, with
//! their level and origin, and only those of one module.

use std::io::Write;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

/// Where the lines go and what they carry, once `PUT /logger` said.
#[derive(Default)]
struct Target {
    file: Option<std::fs::File>,
    module: Option<String>,
}

struct Logger {
    target: Mutex<Target>,
    show_level: AtomicBool,
    show_origin: AtomicBool,
}

impl log::Log for Logger {
    fn enabled(&self, m: &log::Metadata) -> bool {
        m.level() <= log::max_level()
    }

    fn log(&self, r: &log::Record) {
        if !self.enabled(r.metadata()) {
            return;
        }
        let mut target = self.target.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(m) = &target.module {
            if !r.target().starts_with(m.as_str()) {
                return;
            }
        }
        let level = if self.show_level.load(Ordering::Relaxed) {
            format!("[{}] ", r.level())
        } else {
            match r.level() {
                log::Level::Error => "error: ".to_string(),
                log::Level::Warn => "warning: ".to_string(),
                _ => String::new(),
            }
        };
        let origin = match (self.show_origin.load(Ordering::Relaxed), r.file(), r.line()) {
            (true, Some(f), Some(l)) => format!("[{f}:{l}] "),
            _ => String::new(),
        };
        // One write per line, so lines from several threads do not interleave.
        let line = format!("kiln: {level}{origin}{}\n", r.args());
        match target.file.as_mut() {
            Some(f) => {
                let _ = f.write_all(line.as_bytes());
            }
            None => {
                let _ = std::io::stderr().write_all(line.as_bytes());
            }
        }
    }

    fn flush(&self) {}
}

static LOGGER: Logger = Logger {
    target: Mutex::new(Target {
        file: None,
        module: None,
    }),
    show_level: AtomicBool::new(false),
    show_origin: AtomicBool::new(false),
};

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

/// What `PUT /logger` asks for.
pub struct Settings<'a> {
    /// How much to log (None: as it is).
    pub level: Option<log::LevelFilter>,
    /// A file or named pipe to write the lines to, appended to (it is
    /// opened without waiting for a reader, as Firecracker does).
    pub path: Option<&'a Path>,
    /// Each line says its level.
    pub show_level: bool,
    /// Each line says its file and line.
    pub show_origin: bool,
    /// Only lines whose module path starts with this.
    pub module: Option<String>,
}

/// Applies `s`; an error names the file that cannot be opened.
pub fn configure(s: Settings) -> Result<(), String> {
    use std::os::unix::fs::OpenOptionsExt;
    let file = match s.path {
        Some(p) => Some(
            std::fs::OpenOptions::new()
                .append(true)
                .read(true)
                .custom_flags(libc::O_NONBLOCK)
                .open(p)
                .map_err(|e| format!("cannot open the log file {}: {e}", p.display()))?,
        ),
        None => None,
    };
    {
        let mut target = LOGGER.target.lock().unwrap_or_else(|p| p.into_inner());
        if file.is_some() {
            target.file = file;
        }
        target.module = s.module;
    }
    LOGGER.show_level.store(s.show_level, Ordering::Relaxed);
    LOGGER.show_origin.store(s.show_origin, Ordering::Relaxed);
    if let Some(level) = s.level {
        log::set_max_level(level);
    }
    Ok(())
}
