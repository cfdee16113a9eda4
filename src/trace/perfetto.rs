//! `--trace-out FILE`: the trace as a Chrome/Perfetto trace file (the JSON
//! trace-event format: `{"traceEvents": [...]}`), which opens in
//! <https://ui.perfetto.dev> and chrome://tracing. One process (the VM),
//! one track per vCPU, one for kiln's event loop (the device side: queue
//! notifications through ioeventfds, backend I/O) and one for the boot
//! recipe's phases. Exits are complete events ("X") as long as kiln took
//! to handle them. Events are streamed to the file as they happen; the
//! track names and the closing bracket come at the end.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use serde_json::{json, Value};

/// Thread IDs of the tracks.
pub const TID_PHASES: u64 = 1;
/// The event loop's track.
pub const TID_EVENT_LOOP: u64 = 2;
/// The disks' threads' track.
pub const TID_DISK_IO: u64 = 3;
/// vCPU n's track is `TID_VCPU0 + n`.
pub const TID_VCPU0: u64 = 10;
/// The one process.
const PID: u64 = 1;

/// The open trace file.
pub struct TraceFile {
    path: PathBuf,
    w: BufWriter<File>,
    events: u64,
    failed: bool,
    /// Whether a disk thread's event was written (its track is named then).
    disk_track: bool,
}

impl TraceFile {
    /// Creates (or truncates) `path` and writes the opening bracket.
    pub fn create(path: &Path) -> std::io::Result<TraceFile> {
        let mut w = BufWriter::new(File::create(path)?);
        w.write_all(b"{\"displayTimeUnit\":\"ms\",\"traceEvents\":[\n")?;
        Ok(TraceFile {
            path: path.to_path_buf(),
            w,
            events: 0,
            disk_track: false,
            failed: false,
        })
    }

    /// Appends one event. A write error is reported once; later events
    /// are dropped (the VM goes on).
    pub fn event(&mut self, e: &Value) {
        if self.failed {
            return;
        }
        let sep: &[u8] = if self.events == 0 { b"" } else { b",\n" };
        let r = self
            .w
            .write_all(sep)
            .and_then(|()| serde_json::to_writer(&mut self.w, e).map_err(std::io::Error::other));
        match r {
            Ok(()) => self.events += 1,
            Err(err) => {
                self.failed = true;
                log::error!(
                    "trace file {}: {err}; the trace stops here",
                    self.path.display()
                );
            }
        }
    }

    /// A complete event: `name` on track `tid` from `ts` for `dur`
    /// microseconds, with `args`.
    pub fn span(&mut self, tid: u64, name: &str, cat: &str, ts: f64, dur: f64, args: Value) {
        self.disk_track |= tid == TID_DISK_IO;
        self.event(&json!({
            "name": name, "cat": cat, "ph": "X", "ts": ts, "dur": dur,
            "pid": PID, "tid": tid, "args": args,
        }));
    }

    /// Names the tracks and closes the JSON; returns the path and the
    /// number of events.
    pub fn finish(mut self, vcpus: u8) -> std::io::Result<(PathBuf, u64)> {
        let mut meta = vec![
            json!({"name": "process_name", "ph": "M", "pid": PID, "args": {"name": "kiln VM"}}),
        ];
        meta.extend(thread(TID_PHASES, "kiln: boot recipe phases", 0));
        meta.extend(thread(TID_EVENT_LOOP, "kiln: event loop (devices)", 1));
        if self.disk_track {
            meta.extend(thread(TID_DISK_IO, "kiln: disk threads (virtio-blk)", 1));
        }
        for n in 0..u64::from(vcpus) {
            meta.extend(thread(TID_VCPU0 + n, &format!("vCPU {n}: exits"), 2 + n));
        }
        for m in &meta {
            self.event(m);
        }
        if self.failed {
            return Err(std::io::Error::other("an earlier write failed"));
        }
        self.w.write_all(b"\n]}\n")?;
        self.w.flush()?;
        Ok((self.path, self.events))
    }
}

/// A track's name and its place in the list.
fn thread(tid: u64, name: &str, order: u64) -> [Value; 2] {
    [
        json!({"name": "thread_name", "ph": "M", "pid": PID, "tid": tid, "args": {"name": name}}),
        json!({"name": "thread_sort_index", "ph": "M", "pid": PID, "tid": tid, "args": {"sort_index": order}}),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_file_is_json_in_the_trace_event_schema() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.json");
        let mut f = TraceFile::create(&path).unwrap();
        f.span(
            TID_VCPU0,
            "io-out com1",
            "exit",
            12.5,
            3.0,
            json!({"what": "COM1 THR <- 'h'"}),
        );
        f.span(
            TID_PHASES,
            "5. load the kernel",
            "phase",
            1.0,
            10.0,
            json!({}),
        );
        let (_, n) = f.finish(2).unwrap();
        let v: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        let events = v["traceEvents"].as_array().unwrap();
        assert_eq!(events.len() as u64, n);
        assert_eq!(events[0]["ph"], "X");
        assert_eq!(events[0]["tid"], TID_VCPU0);
        assert_eq!(events[0]["args"]["what"], "COM1 THR <- 'h'");
        // Metadata: the process, and each track's name and order.
        assert!(events.iter().all(|e| e.is_object() && e["ph"].is_string()));
        let names: Vec<&str> = events
            .iter()
            .filter(|e| e["name"] == "thread_name")
            .map(|e| e["args"]["name"].as_str().unwrap())
            .collect();
        assert_eq!(
            names,
            [
                "kiln: boot recipe phases",
                "kiln: event loop (devices)",
                "vCPU 0: exits",
                "vCPU 1: exits"
            ]
        );
    }
}
