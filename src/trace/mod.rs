//! Teaching mode: `kiln run --trace[=FILTER]` prints every VM exit as one
//! line a learner can read — when, which vCPU, why the guest stopped, what
//! the access means (device, register, value), where the guest was (RIP and
//! the function, from the kernel's symbols) and how long kiln took to
//! handle it — and, when the VM stops, a table of exits per reason and per
//! device.
//!
//! The vCPU thread turns each exit into a [`TracedExit`] (owned, so the
//! `kvm_run` page is free again), reads RIP only for exits the filter
//! prints, and hands both to the shared [`Tracer`]. Without `--trace` no
//! tracer exists and the run loop's only cost is one `Option` test.

pub mod decode;
pub mod explain;
pub mod filter;
pub mod kallsyms;
pub mod perfetto;
pub mod symbols;

use std::collections::BTreeMap;
use std::io::Write;
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use kvm_ioctls::VcpuExit;
use serde_json::json;

use decode::{Decoder, Device, Space};
use filter::Filter;
use perfetto::TraceFile;
use symbols::Symbols;

/// Whether this kiln was built with teaching mode (the cargo feature
/// `trace`, on by default). Without it every tracing branch in the run
/// loops is `false && ...` and compiles to nothing.
pub const COMPILED_IN: bool = cfg!(feature = "trace");

/// What `--trace` and `--trace-out` asked for.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TraceConfig {
    /// `--trace[=FILTER]`: print these exits on stderr.
    pub print: Option<Filter>,
    /// `--trace-out FILE`: write every event to this Perfetto file.
    pub file: Option<PathBuf>,
    /// `kiln explain`: narrate the phases, show this many exits.
    pub explain: Option<Explain>,
}

/// What `kiln explain` asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Explain {
    /// How many exits to show.
    pub exits: usize,
    /// Let the guest run on after them (else kiln stops the VM).
    pub keep_running: bool,
}

/// Which thread an event happened on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Thread {
    /// A vCPU thread.
    Vcpu(u8),
    /// kiln's event loop (the device side).
    EventLoop,
    /// A disk's own thread (src/event_loop.rs, `IoThread`).
    DiskIo,
}

impl Thread {
    /// The vCPU's number, for a vCPU thread.
    fn vcpu(self) -> Option<u8> {
        match self {
            Thread::Vcpu(n) => Some(n),
            Thread::EventLoop | Thread::DiskIo => None,
        }
    }

    /// Its track in a `--trace-out` file.
    fn track(self) -> u64 {
        match self {
            Thread::Vcpu(n) => perfetto::TID_VCPU0 + u64::from(n),
            Thread::EventLoop => perfetto::TID_EVENT_LOOP,
            Thread::DiskIo => perfetto::TID_DISK_IO,
        }
    }

    /// Its name in a trace line, five characters wide.
    fn label(self) -> String {
        match self {
            Thread::Vcpu(n) => format!("vcpu{n}"),
            Thread::EventLoop => "loop ".to_string(),
            Thread::DiskIo => "disk ".to_string(),
        }
    }
}

/// Why the guest stopped running, as the trace names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Reason {
    /// A port read (KVM_EXIT_IO, in).
    IoIn,
    /// A port write (KVM_EXIT_IO, out).
    IoOut,
    /// A read of an address no memory backs (KVM_EXIT_MMIO).
    MmioRead,
    /// A write there.
    MmioWrite,
    /// HLT (KVM_EXIT_HLT).
    Hlt,
    /// An MSR write KVM hands to kiln (KVM_EXIT_X86_WRMSR).
    Msr,
    /// A debug exit: kiln's breakpoints on nested hosts (KVM_EXIT_DEBUG).
    Debug,
    /// An instruction KVM could not emulate (KVM_EXIT_INTERNAL_ERROR).
    Emulation,
    /// Reset or power-off (KVM_EXIT_SYSTEM_EVENT).
    SystemEvent,
    /// A triple fault (KVM_EXIT_SHUTDOWN).
    Shutdown,
    /// KVM_RUN interrupted by kiln's own tick or a pause (EINTR).
    Kick,
    /// A queue notification the event loop got through an ioeventfd
    /// (the guest's QueueNotify write, handled by KVM without an exit).
    Notify,
    /// A device's host side is ready (tap, socket, file).
    Backend,
    /// Any other exit.
    Other,
}

impl Reason {
    /// The name lines, tables and FILTER terms use.
    pub fn name(self) -> &'static str {
        match self {
            Reason::IoIn => "io-in",
            Reason::IoOut => "io-out",
            Reason::MmioRead => "mmio-read",
            Reason::MmioWrite => "mmio-write",
            Reason::Hlt => "hlt",
            Reason::Msr => "msr",
            Reason::Debug => "debug",
            Reason::Emulation => "emulation",
            Reason::SystemEvent => "event",
            Reason::Shutdown => "shutdown",
            Reason::Kick => "kick",
            Reason::Notify => "notify",
            Reason::Backend => "backend",
            Reason::Other => "other",
        }
    }
}

/// One exit, copied out of the `kvm_run` page after kiln handled it (so a
/// read carries the value the device answered).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TracedExit {
    reason: Reason,
    /// Port or MMIO access: space, address, bytes (up to 8).
    access: Option<(Space, u64, [u8; 8], usize)>,
    /// Extra words for non-access exits (the MSR and its value).
    detail: Option<String>,
}

impl TracedExit {
    /// The trace's copy of `exit`.
    pub fn of(exit: &VcpuExit) -> TracedExit {
        let access = |space, addr, data: &[u8]| {
            let mut bytes = [0u8; 8];
            let n = data.len().min(8);
            bytes[..n].copy_from_slice(&data[..n]);
            Some((space, addr, bytes, n))
        };
        let (reason, access, detail) = match exit {
            VcpuExit::IoIn(port, data) => (
                Reason::IoIn,
                access(Space::Pio, u64::from(*port), data),
                None,
            ),
            VcpuExit::IoOut(port, data) => (
                Reason::IoOut,
                access(Space::Pio, u64::from(*port), data),
                None,
            ),
            VcpuExit::MmioRead(addr, data) => {
                (Reason::MmioRead, access(Space::Mmio, *addr, data), None)
            }
            VcpuExit::MmioWrite(addr, data) => {
                (Reason::MmioWrite, access(Space::Mmio, *addr, data), None)
            }
            VcpuExit::Hlt => (Reason::Hlt, None, None),
            VcpuExit::X86Wrmsr(m) => (
                Reason::Msr,
                None,
                Some(format!("WRMSR {:#x} <- {:#x}", m.index, m.data)),
            ),
            VcpuExit::Debug(d) => (
                Reason::Debug,
                None,
                Some(format!("debug exception {} at {:#x}", d.exception, d.pc)),
            ),
            VcpuExit::InternalError => (
                Reason::Emulation,
                None,
                Some("KVM could not emulate an instruction: kiln looks at it".into()),
            ),
            VcpuExit::SystemEvent(kind, _) => (
                Reason::SystemEvent,
                None,
                Some(match *kind {
                    kvm_bindings::KVM_SYSTEM_EVENT_SHUTDOWN => "power off".into(),
                    kvm_bindings::KVM_SYSTEM_EVENT_RESET => "reset".into(),
                    k => format!("system event {k}"),
                }),
            ),
            VcpuExit::Shutdown => (Reason::Shutdown, None, Some("triple fault".into())),
            other => (Reason::Other, None, Some(format!("{other:?}"))),
        };
        TracedExit {
            reason,
            access,
            detail,
        }
    }

    /// KVM_RUN came back with EINTR.
    pub fn kick() -> TracedExit {
        TracedExit {
            reason: Reason::Kick,
            access: None,
            detail: Some("KVM_RUN interrupted (kiln's tick)".into()),
        }
    }

    /// The event loop serves queue `queue` of the virtio-mmio device at
    /// `base`: the guest wrote it to QueueNotify, KVM signalled the
    /// ioeventfd.
    pub fn notify(base: u64, queue: usize) -> TracedExit {
        let mut bytes = [0u8; 8];
        bytes[..4].copy_from_slice(&(queue as u32).to_le_bytes());
        TracedExit {
            reason: Reason::Notify,
            access: Some((
                Space::Mmio,
                base + devices::virtio::mmio::NOTIFY_OFFSET,
                bytes,
                4,
            )),
            detail: None,
        }
    }

    /// The host side of the virtio device at `base` is ready.
    pub fn backend(base: u64) -> TracedExit {
        TracedExit {
            reason: Reason::Backend,
            access: Some((Space::Mmio, base, [0; 8], 0)),
            detail: None,
        }
    }
}

/// Marks the end of each phase of the boot recipe in the trace; does
/// nothing without one.
pub struct Phases<'a> {
    tracer: Option<&'a Tracer>,
    from: Instant,
}

impl<'a> Phases<'a> {
    /// Phases from `from` on (the first one started then).
    pub fn new(tracer: Option<&'a Tracer>, from: Instant) -> Phases<'a> {
        Phases { tracer, from }
    }

    /// Phase `number`, `name`, ended now; the next one starts.
    pub fn done(&mut self, number: u8, name: &str) {
        self.done_explained(number, name, String::new);
    }

    /// The same, with what `kiln explain` says about it (made only then).
    pub fn done_explained(&mut self, number: u8, name: &str, explain: impl FnOnce() -> String) {
        if let Some(t) = self.tracer {
            t.phase(number, name, self.from);
            if t.explaining() {
                t.explain(&explain());
            }
            self.from = Instant::now();
        }
    }
}

/// Count and time of one row of the summary.
#[derive(Debug, Default, Clone, Copy)]
struct Tally {
    count: u64,
    total: Duration,
}

impl Tally {
    fn add(&mut self, took: Duration) {
        self.count += 1;
        self.total += took;
    }
}

#[derive(Default)]
struct Summary {
    by_reason: BTreeMap<Reason, Tally>,
    by_device: BTreeMap<&'static str, Tally>,
}

/// The trace of one VM, shared by its vCPU threads and the event loop.
pub struct Tracer {
    print: Option<Filter>,
    explain: Option<Explain>,
    /// Exit lines printed so far (`kiln explain` stops after its count).
    printed: std::sync::atomic::AtomicUsize,
    file: Mutex<Option<TraceFile>>,
    decoder: Decoder,
    symbols: Option<Symbols>,
    start: Instant,
    summary: Mutex<Summary>,
    out: Mutex<Box<dyn Write + Send>>,
}

impl Tracer {
    /// A tracer printing to stderr and writing `config.file`; times count
    /// from `start`.
    pub fn new(
        config: &TraceConfig,
        decoder: Decoder,
        symbols: Option<Symbols>,
        start: Instant,
    ) -> std::io::Result<Tracer> {
        let mut t = Tracer::with_output(
            config.print.clone(),
            decoder,
            symbols,
            start,
            Box::new(std::io::stderr()),
        );
        t.explain = config.explain;
        if let Some(path) = &config.file {
            *t.file.lock().expect("trace file lock") = Some(TraceFile::create(path)?);
        }
        Ok(t)
    }

    /// The tracer `config.trace` asks for (None without `--trace` and
    /// `--trace-out`): the decoder for this machine's address map, and the
    /// kernel's function names when its file has them.
    pub fn for_config(
        config: &crate::config::VmConfig,
        start: Instant,
    ) -> Result<Option<std::sync::Arc<Tracer>>, crate::vmm::VmmError> {
        let Some(trace) = &config.trace else {
            return Ok(None);
        };
        if !COMPILED_IN {
            return Err(crate::vmm::VmmError::NoTrace);
        }
        use decode::VirtioKind;
        let disks = config.disks.iter().enumerate().map(|(i, d)| {
            let name = format!("vd{}", char::from(b'a' + (i % 26) as u8));
            let label = match &d.id {
                Some(id) => format!("{name}, {id}"),
                None => name,
            };
            (VirtioKind::Block, label)
        });
        let nets = config
            .nets
            .iter()
            .enumerate()
            .map(|(i, n)| (VirtioKind::Net, format!("eth{i} on {}", n.tap)));
        let vsock = config
            .vsock
            .iter()
            .map(|v| (VirtioKind::Vsock, format!("cid {}", v.cid)));
        let virtio: Vec<_> = disks.chain(nets).chain(vsock).collect();
        let symbols = if config.kernel.as_os_str().is_empty() {
            None
        } else {
            match Symbols::from_elf(&config.kernel) {
                Ok(s) => {
                    log::info!(
                        "trace: {} function names from {} ({})",
                        s.len(),
                        config.kernel.display(),
                        s.source()
                    );
                    Some(s)
                }
                Err(why) => {
                    log::info!("trace: no function names: {why}");
                    None
                }
            }
        };
        let decoder = Decoder::new(&virtio, !config.no_acpi);
        Tracer::new(trace, decoder, symbols, start)
            .map(|t| Some(std::sync::Arc::new(t)))
            .map_err(|e| {
                let path = trace.file.clone().unwrap_or_default();
                crate::vmm::VmmError::TraceFile(path, e)
            })
    }

    fn with_output(
        print: Option<Filter>,
        decoder: Decoder,
        symbols: Option<Symbols>,
        start: Instant,
        out: Box<dyn Write + Send>,
    ) -> Tracer {
        Tracer {
            print,
            explain: None,
            printed: std::sync::atomic::AtomicUsize::new(0),
            file: Mutex::new(None),
            decoder,
            symbols,
            start,
            summary: Mutex::default(),
            out: Mutex::new(out),
        }
    }

    fn micros_since_start(&self, t: Instant) -> f64 {
        t.saturating_duration_since(self.start).as_secs_f64() * 1e6
    }

    fn write_line(&self, line: &str) {
        // A trace line that cannot be written is dropped; the VM goes on.
        let _ = self
            .out
            .lock()
            .expect("trace output lock")
            .write_all(line.as_bytes());
    }

    /// Whether `kiln explain` narrates.
    pub fn explaining(&self) -> bool {
        self.explain.is_some()
    }

    /// The decoder (the explanation of phase 6 lists its devices).
    pub fn decoder(&self) -> &Decoder {
        &self.decoder
    }

    /// `kiln explain`: what happens when the vCPUs start (nothing otherwise).
    pub fn explain_run(&self) {
        if let Some(e) = self.explain {
            self.explain(&format!(
                "phase 8 starts: KVM_RUN\n{}",
                explain::run(e.exits, e.keep_running)
            ));
        }
    }

    /// Prints an explanation block under the last line.
    pub fn explain(&self, text: &str) {
        let mut block = String::new();
        for line in text.lines() {
            block.push_str("             | ");
            block.push_str(line);
            block.push('\n');
        }
        self.write_line(&block);
    }

    /// Records phase `number` of the boot recipe, from `from` until now.
    pub fn phase(&self, number: u8, name: &str, from: Instant) {
        self.phase_span(number, name, from, Instant::now());
    }

    /// Records phase `number` of the boot recipe, from `from` to `end`.
    pub fn phase_span(&self, number: u8, name: &str, from: Instant, end: Instant) {
        let took = end.saturating_duration_since(from);
        if self.print.is_some() {
            self.write_line(&format!(
                "{:>11.6} kiln  phase {number}    {name:<68} {:.3} ms\n",
                self.start.elapsed().as_secs_f64(),
                took.as_secs_f64() * 1e3
            ));
        }
        if let Some(f) = self.file.lock().expect("trace file lock").as_mut() {
            f.span(
                perfetto::TID_PHASES,
                &format!("{number}. {name}"),
                "phase",
                self.micros_since_start(from),
                took.as_secs_f64() * 1e6,
                json!({ "phase": number }),
            );
        }
    }

    /// Records an event `thread` took `took` to handle (it ended now);
    /// `rip` is asked for only when the event is printed or written.
    /// True when `kiln explain` has shown its exits and the VM should stop.
    pub fn record(
        &self,
        thread: Thread,
        exit: &TracedExit,
        took: Duration,
        rip: impl FnOnce() -> Option<u64>,
    ) -> bool {
        let now = Instant::now();
        // The device only (`Some(None)`: an access nothing answers): every
        // exit is counted, only printed or written ones are decoded.
        let filter_device = exit
            .access
            .map(|(space, addr, _, _)| self.decoder.device(space, addr).map(Device::name));
        let device = filter_device.map(|d| d.unwrap_or("unclaimed"));
        {
            let mut s = self.summary.lock().expect("trace summary lock");
            s.by_reason.entry(exit.reason).or_default().add(took);
            if let Some(name) = device {
                s.by_device.entry(name).or_default().add(took);
            }
        }
        let vcpu = thread.vcpu();
        let mut printed = self
            .print
            .as_ref()
            .is_some_and(|f| f.selects(vcpu, exit.reason, filter_device));
        let mut stop = false;
        if let (Some(e), true) = (self.explain, printed) {
            let n = self
                .printed
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed)
                + 1;
            printed = n <= e.exits;
            stop = n == e.exits && !e.keep_running;
        }
        let mut file = self.file.lock().expect("trace file lock");
        if !printed && file.is_none() {
            return stop;
        }
        let (addr, text) = match exit.access {
            Some((space, addr, bytes, n)) => (
                format!("{addr:#x}"),
                self.describe(exit.reason, space, addr, &bytes[..n]),
            ),
            None => (String::new(), exit.detail.clone().unwrap_or_default()),
        };
        let rip = vcpu.and_then(|_| rip());
        let function = rip.and_then(|r| self.symbols.as_ref()?.name(r));
        if let Some(f) = file.as_mut() {
            let name = match device {
                Some(d) => format!("{} {d}", exit.reason.name()),
                None => exit.reason.name().to_string(),
            };
            let mut args = json!({ "what": text });
            if !addr.is_empty() {
                args["address"] = json!(addr);
            }
            if let Some(r) = rip {
                args["rip"] = json!(format!("{r:#x}"));
            }
            if let Some(func) = &function {
                args["function"] = json!(func);
            }
            f.span(
                thread.track(),
                &name,
                if vcpu.is_some() { "exit" } else { "device" },
                self.micros_since_start(now) - took.as_secs_f64() * 1e6,
                took.as_secs_f64() * 1e6,
                args,
            );
        }
        drop(file);
        if !printed {
            return stop;
        }
        let at = match (rip, function) {
            (Some(rip), Some(name)) => format!("at {name} ({rip:#x})"),
            (Some(rip), None) => format!("at {rip:#x}"),
            (None, _) => String::new(),
        };
        let who = thread.label();
        self.write_line(&format!(
            "{:>11.6} {who} {:<10} {addr:<11} {text:<56} {at}  {:.1} us\n",
            self.start.elapsed().as_secs_f64(),
            exit.reason.name(),
            took.as_secs_f64() * 1e6,
        ));
        if stop {
            self.explain(&format!(
                "that was the first {} exits; kiln stops the VM here (--continue lets it run on)",
                self.printed.load(std::sync::atomic::Ordering::Relaxed)
            ));
        }
        stop
    }

    /// What an access means, as the trace lines say it.
    fn describe(&self, reason: Reason, space: Space, addr: u64, data: &[u8]) -> String {
        let write = matches!(reason, Reason::IoOut | Reason::MmioWrite | Reason::Notify);
        let d = self.decoder.decode(space, addr, write, data);
        match reason {
            Reason::Notify => format!("{} [ioeventfd: no exit]", d.text),
            Reason::Backend => match &d.device {
                Some(dev) => format!("{} host side ready", dev.describe()),
                None => "host side ready".into(),
            },
            _ => d.text,
        }
    }

    /// Closes the trace file: the message saying where it is, or why it
    /// is incomplete.
    pub fn finish(&self, vcpus: u8) -> Option<String> {
        let f = self.file.lock().expect("trace file lock").take()?;
        Some(match f.finish(vcpus) {
            Ok((path, n)) => format!(
                "trace written to {}: {n} events (open it in https://ui.perfetto.dev or chrome://tracing)",
                path.display()
            ),
            Err(e) => format!("the trace file is incomplete: {e}"),
        })
    }

    /// Whether the table is wanted (`--trace`, not only `--trace-out`).
    pub fn prints(&self) -> bool {
        self.print.is_some()
    }

    /// The table printed when the VM stops.
    pub fn summary(&self) -> String {
        let s = self.summary.lock().expect("trace summary lock");
        let (mut exits, mut events, mut total) = (0, 0, Duration::ZERO);
        for (reason, t) in &s.by_reason {
            match reason {
                Reason::Notify | Reason::Backend => events += t.count,
                _ => exits += t.count,
            }
            total += t.total;
        }
        let mut out = format!(
            "kiln trace: {exits} exits and {events} device events in {:.3} s; kiln spent {:.3} ms handling them\n",
            self.start.elapsed().as_secs_f64(),
            total.as_secs_f64() * 1e3
        );
        let rows = |out: &mut String, title: &str, rows: Vec<(&str, Tally)>| {
            out.push_str(&format!(
                "  {title:<12} {:>10} {:>12} {:>10}\n",
                "count", "total ms", "mean us"
            ));
            for (name, t) in rows {
                out.push_str(&format!(
                    "  {name:<12} {:>10} {:>12.3} {:>10.1}\n",
                    t.count,
                    t.total.as_secs_f64() * 1e3,
                    t.total.as_secs_f64() * 1e6 / t.count.max(1) as f64
                ));
            }
        };
        let mut reasons: Vec<(&str, Tally)> =
            s.by_reason.iter().map(|(r, t)| (r.name(), *t)).collect();
        reasons.sort_by_key(|(_, t)| std::cmp::Reverse(t.count));
        rows(&mut out, "exit reason", reasons);
        let mut devices: Vec<(&str, Tally)> = s.by_device.iter().map(|(d, t)| (*d, *t)).collect();
        devices.sort_by_key(|(_, t)| std::cmp::Reverse(t.count));
        if !devices.is_empty() {
            rows(&mut out, "device", devices);
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    /// A writer tests can read back.
    #[derive(Clone, Default)]
    struct Shared(Arc<Mutex<Vec<u8>>>);

    impl Write for Shared {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    fn tracer(filter: &str) -> (Tracer, Shared) {
        let out = Shared::default();
        let t = Tracer::with_output(
            Some(Filter::parse(Some(filter)).unwrap()),
            Decoder::new(&[], false),
            None,
            Instant::now(),
            Box::new(out.clone()),
        );
        (t, out)
    }

    #[test]
    fn lines_follow_the_filter_and_the_summary_counts_everything() {
        let (t, out) = tracer("com1");
        let mut data = *b"h";
        let thr = TracedExit::of(&VcpuExit::IoOut(0x3f8, &data));
        let mut rips = 0;
        let _ = t.record(Thread::Vcpu(0), &thr, Duration::from_micros(3), || {
            rips += 1;
            Some(0x1234)
        });
        let cmos = TracedExit::of(&VcpuExit::IoIn(0x71, &mut data));
        t.record(Thread::Vcpu(1), &cmos, Duration::from_micros(5), || {
            panic!("not printed: no RIP read")
        });
        t.record(
            Thread::Vcpu(0),
            &TracedExit::kick(),
            Duration::from_micros(1),
            || None,
        );
        assert_eq!(rips, 1);
        let text = String::from_utf8(out.0.lock().unwrap().clone()).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 1, "{text}");
        assert!(lines[0].contains("vcpu0 io-out"), "{text}");
        assert!(lines[0].contains("0x3f8"), "{text}");
        assert!(lines[0].contains("COM1 THR <- 'h' (send a byte)"), "{text}");
        assert!(lines[0].contains("at 0x1234"), "{text}");
        assert!(lines[0].ends_with("3.0 us"), "{text}");
        let s = t.summary();
        assert!(
            s.starts_with("kiln trace: 3 exits and 0 device events"),
            "{s}"
        );
        let row = |name: &str| {
            s.lines()
                .find(|l| l.split_whitespace().next() == Some(name))
                .unwrap_or_else(|| panic!("no {name} row in {s}"))
                .split_whitespace()
                .skip(1)
                .map(str::to_string)
                .collect::<Vec<_>>()
        };
        assert_eq!(row("io-out"), ["1", "0.003", "3.0"]);
        assert_eq!(row("kick")[0], "1");
        assert_eq!(row("com1")[0], "1");
        assert_eq!(row("cmos"), ["1", "0.005", "5.0"]);
    }

    #[test]
    fn reads_carry_the_answer_and_msr_writes_their_value() {
        let mut data = [0x60u8];
        let e = TracedExit::of(&VcpuExit::IoIn(0x3fd, &mut data));
        assert_eq!(e.reason, Reason::IoIn);
        assert_eq!(
            e.access,
            Some((Space::Pio, 0x3fd, [0x60, 0, 0, 0, 0, 0, 0, 0], 1))
        );
        let e = TracedExit::of(&VcpuExit::Shutdown);
        assert_eq!(
            (e.reason, e.detail.as_deref()),
            (Reason::Shutdown, Some("triple fault"))
        );
    }
}
