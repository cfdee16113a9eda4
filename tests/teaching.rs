//! Teaching mode through the real binary: `kiln run --trace[=FILTER]` on
//! the bare-metal test payload (its ELF symbols name the functions) prints
//! the exits a learner expects, decoded and in order, and the table of
//! exits per reason and device; FILTER selects; bad filters are refused;
//! the ring-3 test agent's virtio-blk set-up and its queue notifications
//! (through ioeventfds, on the event loop); `--trace-out` writes a
//! Perfetto trace file with the boot phases, one track per vCPU.

#[path = "agent/mod.rs"]
mod agent;
#[path = "common/mod.rs"]
mod common;
#[path = "payload/mod.rs"]
mod payload;

use std::time::Duration;

use common::{run, Outcome};

const TIMEOUT: Duration = Duration::from_secs(60);

fn boot(mode: &str, extra: &[&str]) -> Outcome {
    let mut all = vec!["--console", "none"];
    all.extend_from_slice(extra);
    let args = payload::run_args(mode, &all);
    run(
        &args.iter().map(String::as_str).collect::<Vec<_>>(),
        TIMEOUT,
    )
}

/// Every trace line (they start with the time in seconds).
fn all_trace_lines(o: &Outcome) -> Vec<&str> {
    o.stderr
        .lines()
        .filter(|l| {
            l.split_whitespace()
                .next()
                .is_some_and(|t| t.parse::<f64>().is_ok())
        })
        .collect()
}

/// The trace lines of exits and device events (not the boot phases).
fn trace_lines(o: &Outcome) -> Vec<&str> {
    all_trace_lines(o)
        .into_iter()
        .filter(|l| !l.contains(" kiln  phase "))
        .collect()
}

/// The summary row `name`: count, total ms, mean us.
fn row<'a>(o: &'a Outcome, name: &str) -> Option<Vec<&'a str>> {
    o.stderr
        .lines()
        .find(|l| l.split_whitespace().next() == Some(name) && l.starts_with("  "))
        .map(|l| l.split_whitespace().skip(1).collect())
}

fn count(o: &Outcome, name: &str) -> u64 {
    row(o, name)
        .and_then(|r| r.first()?.parse().ok())
        .unwrap_or(0)
}

#[test]
fn the_payload_boot_is_traced_exit_by_exit_in_order() {
    let o = boot("hello", &["--trace"]);
    o.check(o.code == Some(0), "the payload resets as usual");
    let lines = trace_lines(&o);
    // What the payload does: print its greeting through putc (poll LSR,
    // write THR), mark the boot time, print the times, reset.
    let expect = [
        ("vcpu0 io-in", "COM1 LSR -> 0x60 (THR empty)", "at putc"),
        ("vcpu0 io-out", "COM1 THR <- 'k' (send a byte)", "at putc"),
        ("vcpu0 io-out", "COM1 THR <- 'i' (send a byte)", "at putc"),
        (
            "vcpu0 mmio-write",
            "boot-timer <- 123 (the guest says: booted)",
            "at mode_hello",
        ),
        ("vcpu0 io-out", "i8042 cmd <- 0xfe (reset)", "at reset"),
    ];
    let mut at = 0;
    for (reason, text, function) in expect {
        let found = lines[at..]
            .iter()
            .position(|l| l.contains(reason) && l.contains(text) && l.contains(function));
        o.check(
            found.is_some(),
            &format!("a line '{reason} ... {text} ... {function}' after line {at}"),
        );
        at += found.unwrap() + 1;
    }
    o.check(at == lines.len(), "the reset is the last exit");
    // The boot recipe's phases frame the exits: 1-7 before the guest runs,
    // 8 (run) and 9 (tear down) after.
    let all = all_trace_lines(&o);
    let phases: Vec<(usize, &str)> = all
        .iter()
        .enumerate()
        .filter_map(|(i, l)| Some((i, l.split(" kiln  phase ").nth(1)?)))
        .collect();
    let numbers: Vec<&str> = phases
        .iter()
        .map(|(_, p)| p.split_whitespace().next().unwrap())
        .collect();
    o.check(
        numbers == ["1", "1", "2", "3", "4", "5", "6", "7", "7", "8", "9"],
        &format!("phase lines: {numbers:?}"),
    );
    o.check(
        phases[8].0 < all.len() - 3 && phases[9].0 == all.len() - 2,
        "phases 1-7 before the exits, 8 and 9 after",
    );
    o.check(
        phases[5].1.contains("load the kernel") && phases[5].1.ends_with(" ms"),
        "each phase says what it does and how long it took",
    );
    // Each line ends with the time kiln took.
    o.check(
        lines.iter().all(|l| l.ends_with(" us")),
        "every line says how long kiln took",
    );
    // The table counts what the lines show.
    let thr = lines.iter().filter(|l| l.contains("COM1 THR <-")).count() as u64;
    let lsr = lines.iter().filter(|l| l.contains("COM1 LSR ->")).count() as u64;
    o.check(thr > 40, "the greeting and the times, byte by byte");
    o.check(
        count(&o, "io-out") == thr + 1,
        "io-out = THR writes + the reset",
    );
    o.check(count(&o, "io-in") == lsr, "io-in = LSR reads");
    o.check(count(&o, "mmio-write") == 1, "one boot-timer write");
    o.check(count(&o, "com1") == thr + lsr, "com1 row");
    o.check(count(&o, "i8042") == 1, "i8042 row");
    o.check(count(&o, "boot-timer") == 1, "boot-timer row");
    o.check(
        o.stderr.contains(&format!(
            "kiln trace: {} exits and 0 device events",
            thr + lsr + 2 + count(&o, "kick")
        )),
        "the total",
    );

    // Without --trace: no trace lines, no table.
    let quiet = boot("hello", &[]);
    quiet.check(
        trace_lines(&quiet).is_empty() && !quiet.stderr.contains("kiln trace:"),
        "no trace unless asked",
    );
}

#[test]
fn a_filter_selects_devices_reasons_and_vcpus() {
    let o = boot("badport", &["--trace=i8042,unclaimed"]);
    o.check(o.code == Some(0), "the payload survives and resets");
    let lines = trace_lines(&o);
    let texts: Vec<&str> = lines
        .iter()
        .map(|l| l.split_whitespace().nth(3).unwrap_or(""))
        .collect();
    o.check(
        texts == ["0x510", "0x510", "0xd0000000", "0xd0000000", "0x64"],
        &format!("the unclaimed accesses, then the reset: {texts:?}"),
    );
    o.check(
        lines[1].contains("unclaimed -> 0xff (nothing here: reads all ones)"),
        "an unclaimed port reads all ones",
    );
    o.check(
        lines[2].contains("unclaimed <- 0x42 (nothing here: the write is dropped)"),
        "an unclaimed MMIO write is dropped",
    );
    o.check(
        count(&o, "com1") > 20,
        "the table still counts what the filter hides",
    );

    let o = boot("hello", &["--trace=mmio,vcpu1"]);
    o.check(
        trace_lines(&o).is_empty(),
        "vcpu1 does not exist: nothing is printed",
    );
    let o = boot("hello", &["--trace=io-in"]);
    let lines = trace_lines(&o);
    o.check(
        !lines.is_empty() && lines.iter().all(|l| l.contains(" io-in ")),
        "only port reads",
    );
}

#[test]
fn bad_filters_are_refused_with_one_line() {
    for (filter, named) in [
        ("--trace=serial", "'serial' is not a filter term"),
        ("--trace=com1,", "an empty term"),
        ("--trace=vcpuX", "'vcpuX' is not a filter term"),
    ] {
        let o = boot("hello", &[filter]);
        o.check(o.code == Some(2), &format!("{filter}: exit 2"));
        let errors = o.errors();
        o.check(
            errors.len() == 1 && errors[0].contains(named) && errors[0].contains("com1, i8042"),
            &format!("{filter}: one line naming the term and the valid ones"),
        );
        o.check(trace_lines(&o).is_empty(), "no VM ran");
    }
}

#[test]
fn virtio_set_up_and_queue_notifications_of_the_test_agent() {
    let dir = tempfile::tempdir().unwrap();
    let disk = dir.path().join("disk.img");
    std::fs::File::create(&disk)
        .unwrap()
        .set_len(1 << 20)
        .unwrap();
    let elf = agent::build();
    let o = run(
        &[
            "run",
            "--kernel",
            elf.to_str().unwrap(),
            "--cmdline",
            "agent.test=blk-flush",
            "--console",
            "none",
            "--disk",
            disk.to_str().unwrap(),
            "--trace=blk,notify",
        ],
        TIMEOUT,
    );
    o.check(o.code == Some(0), "the agent's check passed");
    let lines = trace_lines(&o);
    let find = |what: &str| lines.iter().position(|l| l.contains(what));
    let magic = find("virtio-mmio@0xd0000000 (vda) MagicValue -> 0x74726976");
    let driver_ok = find("(vda) Status <- 0xf (ACKNOWLEDGE|DRIVER|FEATURES_OK|DRIVER_OK)");
    let notify = find("disk  notify");
    o.check(
        magic.is_some() && driver_ok.is_some() && notify.is_some(),
        "probe, DRIVER_OK and a notification are traced",
    );
    o.check(
        magic < driver_ok && driver_ok < notify,
        "in the order the driver does them",
    );
    o.check(
        lines[notify.unwrap()].contains("QueueNotify <- 0x0 (blk requestq) [ioeventfd: no exit]"),
        "the notification names the queue and says it made no exit",
    );
    o.check(
        lines[driver_ok.unwrap()].contains("at kiln_test_agent::virtio::open_disk+"),
        "the function, demangled",
    );
    o.check(count(&o, "notify") >= 1, "notifications in the table");
}

#[test]
fn trace_out_writes_a_perfetto_trace_with_phases_and_vcpu_tracks() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("boot.json");
    let o = boot(
        "hello",
        &["--trace=i8042", "--trace-out", file.to_str().unwrap()],
    );
    o.check(o.code == Some(0), "the payload resets");
    o.check(
        o.stderr
            .contains(&format!("trace written to {}", file.display())),
        "kiln says where the trace is",
    );
    let v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&file).unwrap()).expect("the file is JSON");
    let events = v["traceEvents"].as_array().expect("traceEvents");
    o.check(
        events.iter().all(|e| {
            e["ph"].is_string()
                && e["pid"].is_u64()
                && (e["ph"] == "M" || (e["ts"].is_number() && e["dur"].is_number()))
        }),
        "every event has the trace-event fields",
    );
    let phases: Vec<&str> = events
        .iter()
        .filter(|e| e["cat"] == "phase")
        .map(|e| e["name"].as_str().unwrap())
        .collect();
    let numbers: Vec<char> = phases.iter().map(|p| p.chars().next().unwrap()).collect();
    o.check(
        numbers == ['1', '1', '2', '3', '4', '5', '6', '7', '7', '8', '9'],
        &format!("the boot recipe's phases in order: {phases:?}"),
    );
    let exits: Vec<&serde_json::Value> = events.iter().filter(|e| e["cat"] == "exit").collect();
    o.check(
        exits.len() as u64 == count(&o, "io-out") + count(&o, "io-in") + count(&o, "mmio-write"),
        "every exit is in the file, whatever the filter printed",
    );
    o.check(exits.iter().all(|e| e["tid"] == 10), "on vCPU 0's track");
    let reset = exits.last().unwrap();
    o.check(
        reset["name"] == "io-out i8042"
            && reset["args"]["what"] == "i8042 cmd <- 0xfe (reset)"
            && reset["args"]["function"] == "reset+0x4",
        &format!("the last exit is the reset, decoded: {reset}"),
    );
    let tracks: Vec<&str> = events
        .iter()
        .filter(|e| e["name"] == "thread_name")
        .map(|e| e["args"]["name"].as_str().unwrap())
        .collect();
    o.check(
        tracks
            == [
                "kiln: boot recipe phases",
                "kiln: event loop (devices)",
                "vCPU 0: exits",
            ],
        &format!("named tracks: {tracks:?}"),
    );

    let o = boot("hello", &["--trace-out", "/no/such/dir/t.json"]);
    o.check(o.code == Some(2), "an impossible trace file: exit 2");
    let errors = o.errors();
    o.check(
        errors.len() == 1 && errors[0].contains("cannot create the trace file /no/such/dir/t.json"),
        "one line naming it",
    );
}

/// `kiln report` on a payload boot's trace, opened in headless Chromium
/// (Debian's chromium-headless-shell): the screenshot shows every phase in
/// the colour the page's phase table gives it, and the rendered page names
/// them.
#[test]
fn the_report_renders_the_phases_in_a_real_browser() {
    let dir = tempfile::tempdir().unwrap();
    let trace = dir.path().join("boot.json");
    let o = boot("hello", &["--trace-out", trace.to_str().unwrap()]);
    o.check(o.code == Some(0), "the payload resets");
    let html = dir.path().join("boot.html");
    let r = run(&["report", trace.to_str().unwrap()], TIMEOUT);
    r.check(r.code == Some(0), "kiln report succeeds");
    r.check(
        r.stderr
            .contains(&format!("report written to {}", html.display())),
        "next to the trace, as .html",
    );
    let page = std::fs::read_to_string(&html).unwrap();
    // The phase table: each row's swatch colour and name.
    let phases: Vec<(String, String)> = page
        .split("<tr><td class=\"l\"><span class=\"swatch\" style=\"background:")
        .skip(1)
        .filter_map(|row| {
            let (colour, rest) = row.split_once('"')?;
            let name = rest.split_once("</span>")?.1.split_once("</td>")?.0;
            Some((colour.to_string(), name.to_string()))
        })
        .collect();
    r.check(
        phases.len() == 11,
        &format!("eleven phase rows: {phases:?}"),
    );

    let browser = "chromium-headless-shell";
    let shot = dir.path().join("shot.png");
    let mut cmd = std::process::Command::new("timeout");
    cmd.args(["120", browser, "--no-sandbox", "--disable-gpu"])
        .arg(format!(
            "--user-data-dir={}",
            dir.path().join("profile").display()
        ))
        .arg(format!("--screenshot={}", shot.display()))
        .arg("--window-size=1100,1300")
        .arg(format!("file://{}", html.display()))
        .env("HOME", dir.path());
    let out = cmd.output().unwrap_or_else(|e| {
        panic!("cannot run {browser} (./resources/setup-host.sh installs it): {e}")
    });
    assert!(
        out.status.success() && shot.exists(),
        "{browser} took no screenshot: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let decoder = png::Decoder::new(std::io::BufReader::new(std::fs::File::open(&shot).unwrap()));
    let mut reader = decoder.read_info().unwrap();
    let mut buf = vec![0; reader.output_buffer_size().unwrap()];
    let info = reader.next_frame(&mut buf).unwrap();
    let channels = info.color_type.samples();
    let pixels = &buf[..info.buffer_size()];
    for (colour, name) in &phases {
        let want: Vec<u8> = (0..3)
            .map(|i| u8::from_str_radix(&colour[1 + 2 * i..3 + 2 * i], 16).unwrap())
            .collect();
        let n = pixels
            .chunks(channels)
            .filter(|p| p[..3] == want[..])
            .count();
        // A swatch in the table is 12x12; a phase in the whole-run band is
        // at least 2 wide and 20 high, a set-up phase's bar (1-7) at least
        // 6 wide and 18 high: at fractional positions a pixel column less.
        let set_up = name.starts_with(|c: char| ('1'..='7').contains(&c));
        let least = 144 + 20 + if set_up { 5 * 18 } else { 0 };
        r.check(
            n >= least,
            &format!("phase {name}: {n} pixels of {colour} in the screenshot, want {least}"),
        );
    }
    // The text as the browser laid it out.
    let dom = std::process::Command::new("timeout")
        .args([
            "120",
            browser,
            "--no-sandbox",
            "--disable-gpu",
            "--dump-dom",
        ])
        .arg(format!(
            "--user-data-dir={}",
            dir.path().join("profile2").display()
        ))
        .arg(format!("file://{}", html.display()))
        .env("HOME", dir.path())
        .output()
        .unwrap();
    let dom = String::from_utf8_lossy(&dom.stdout);
    for (_, name) in &phases {
        r.check(
            dom.contains(name.as_str()),
            &format!("the page names {name}"),
        );
    }
}

/// Every repository path (src/..., boot/..., devices/...) `text` names.
fn repo_paths(text: &str) -> Vec<String> {
    text.split(|c: char| !(c.is_ascii_alphanumeric() || "_./-".contains(c)))
        .filter(|w| {
            ["src/", "boot/src", "devices/src", "proto/src", "guest/"]
                .iter()
                .any(|p| w.starts_with(p))
        })
        .map(|w| w.trim_end_matches('.').to_string())
        .collect()
}

#[test]
fn explain_narrates_every_phase_then_the_first_exits() {
    let elf = payload::build();
    let args = [
        "explain",
        "--kernel",
        elf.to_str().unwrap(),
        "--cmdline",
        "payload=hello",
        "--console",
        "none",
        "--exits",
        "5",
    ];
    let o = run(&args, TIMEOUT);
    o.check(o.code == Some(0), "kiln explain stops the VM and exits 0");
    let phases: Vec<&str> = o
        .stderr
        .lines()
        .filter_map(|l| l.split(" kiln  phase ").nth(1))
        .map(|p| p.split_whitespace().next().unwrap())
        .collect();
    o.check(
        phases == ["1", "1", "2", "3", "4", "5", "6", "7", "7", "8", "9"],
        &format!("every phase, in order: {phases:?}"),
    );
    for what in [
        "KVM_GET_API_VERSION",
        "KVM_CREATE_VM",
        "KVM_CREATE_IRQCHIP",
        "KVM_SET_USER_MEMORY_REGION slot 0: guest 0x000000000..0x010000000 (256 MiB)",
        "kernel: Elf (64-bit boot protocol, long mode), entry 0x100000",
        "command line at 0x20000: console=ttyS0",
        "0x000000000..0x00009fc00  RAM",
        "ACPI: RSDP at 0xe0000",
        "com1                                     ports 0x3f8..0x400         IRQ 4",
        "KVM_IRQFD",
        "KVM_IOEVENTFD",
        "KVM_SET_CPUID2",
        "page tables: PML4 0x9000",
        "KVM_SET_SREGS: CR0 0x",
        "KVM_SET_REGS:  RIP 0x100000  RSP 0x8ff0  RSI 0x7000",
        "The first 5 exits follow",
        "that was the first 5 exits",
    ] {
        o.check(o.stderr.contains(what), &format!("it says {what:?}"));
    }
    let exits = trace_lines(&o);
    o.check(exits.len() == 5, &format!("five exits: {exits:?}"));
    o.check(
        exits[1].contains("COM1 THR <- 'k' (send a byte)") && exits[1].contains("at putc"),
        "decoded, with the function",
    );
    let paths = repo_paths(&o.stderr);
    o.check(paths.len() >= 15, &format!("files named: {paths:?}"));
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    for p in &paths {
        o.check(
            root.join(p).exists(),
            &format!("{p} exists in the repository"),
        );
    }

    // --continue: the guest runs on to its reset, without more lines.
    let mut cont = args.to_vec();
    cont.push("--continue");
    let o = run(&cont, TIMEOUT);
    o.check(o.code == Some(0), "the guest's reset ends it");
    o.check(
        o.stderr.contains("i8042: guest requested a reset"),
        "it ran to the end",
    );
    o.check(trace_lines(&o).len() == 5, "still five exit lines");

    let o = run(
        &["explain", "--kernel", elf.to_str().unwrap(), "--", "true"],
        TIMEOUT,
    );
    o.check(
        o.code == Some(2) && o.errors().len() == 1 && o.errors()[0].contains("no sandbox command"),
        "a sandbox command is refused",
    );
}

/// A stripped kernel (Debian's vmlinux has no ELF symbol table) still gets
/// function names in the trace, from the kallsyms table inside it.
#[test]
fn a_stripped_kernel_is_named_from_its_kallsyms_table() {
    let missing =
        "run ./resources/guests.sh --debian (it builds Debian's kernel and initramfs) first";
    let kernel = common::guest_artifact("debian/vmlinux", missing);
    let initrd = common::guest_artifact("debian/initramfs.cpio", missing);
    let o = run(
        &[
            "explain",
            "--kernel",
            kernel.to_str().unwrap(),
            "--initrd",
            initrd.to_str().unwrap(),
            "--console",
            "none",
            "--exits",
            "5",
        ],
        Duration::from_secs(900),
    );
    o.check(o.code == Some(0), "kiln explain stops the VM after 5 exits");
    o.check(
        o.stderr.contains("function names from") && o.stderr.contains("(kernel's kallsyms table)"),
        "the names come from kallsyms",
    );
    let lines = trace_lines(&o);
    o.check(lines.len() == 5, "five exits");
    for l in &lines {
        let name = l
            .split(" at ")
            .nth(1)
            .and_then(|a| a.split('+').next())
            .unwrap_or("");
        o.check(
            !name.is_empty() && !name.starts_with("0x") && !name.contains(' '),
            &format!("a function name in {l:?}"),
        );
    }
}
