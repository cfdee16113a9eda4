//! `kiln report TRACE`: turns a `--trace-out` file into one self-contained
//! HTML page (inline SVG and CSS, no script, nothing fetched) that shows
//! where a boot's time went: kiln's set-up phases as a Gantt chart, the
//! guest's run as exits per device over time, and tables of both.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use serde_json::Value;

/// Errors reading a trace or writing its report.
#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    /// The trace cannot be read.
    #[error("cannot read {0}: {1}; give the file `kiln run --trace-out FILE` wrote")]
    Read(PathBuf, std::io::Error),
    /// Not a trace-event JSON file.
    #[error("{0} is not a trace file: {1}; give the file `kiln run --trace-out FILE` wrote")]
    NotATrace(PathBuf, String),
    /// The report cannot be written.
    #[error("cannot write the report {0}: {1}")]
    Write(PathBuf, std::io::Error),
}

/// Colours of phases 1-9 (also what the browser test looks for).
pub const PHASE_COLOURS: [&str; 9] = [
    "#4e79a7", "#f28e2b", "#e15759", "#76b7b2", "#59a14f", "#edc948", "#b07aa1", "#ff9da7",
    "#9c755f",
];
/// Colours of devices in the exit chart, in order of first use.
const DEVICE_COLOURS: [&str; 8] = [
    "#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f",
];
/// Width of the charts, in pixels.
const WIDTH: f64 = 1000.0;
/// Time buckets of the exit chart.
const BUCKETS: usize = 100;

/// A span of the trace: name, start and duration in microseconds.
#[derive(Debug, Clone, PartialEq)]
struct Span {
    name: String,
    ts: f64,
    dur: f64,
}

/// What the report is made of.
#[derive(Debug, Default)]
struct Trace {
    phases: Vec<Span>,
    /// Exits and device events: (track name, device, span).
    events: Vec<(String, String, Span)>,
}

fn parse(text: &str) -> Result<Trace, String> {
    let v: Value = serde_json::from_str(text).map_err(|e| format!("not JSON ({e})"))?;
    let events = v["traceEvents"].as_array().ok_or("no traceEvents array")?;
    let mut t = Trace::default();
    for e in events {
        if e["ph"] != "X" {
            continue;
        }
        let span = Span {
            name: e["name"].as_str().unwrap_or("?").to_string(),
            ts: e["ts"].as_f64().unwrap_or(0.0),
            dur: e["dur"].as_f64().unwrap_or(0.0).max(0.0),
        };
        match e["cat"].as_str() {
            Some("phase") => t.phases.push(span),
            Some(cat @ ("exit" | "device")) => {
                // "io-out com1" -> device "com1"; exits without a device
                // ("msr", "debug", "kick") stand for themselves.
                let device = span
                    .name
                    .split_once(' ')
                    .map_or(span.name.as_str(), |(_, d)| d)
                    .to_string();
                let track = if cat == "exit" {
                    format!(
                        "vCPU {}",
                        e["tid"].as_u64().unwrap_or(10).saturating_sub(10)
                    )
                } else if e["tid"].as_u64() == Some(crate::trace::perfetto::TID_DISK_IO) {
                    "disk threads".into()
                } else {
                    "event loop".into()
                };
                t.events.push((track, device, span));
            }
            _ => {}
        }
    }
    if t.phases.is_empty() {
        return Err("it holds no boot phases (was it written by kiln run --trace-out?)".into());
    }
    Ok(t)
}

/// Writes the report of `trace` to `out` (default: the trace's name with
/// `.html`); returns where it went.
pub fn run(trace: &Path, out: Option<&Path>) -> Result<PathBuf, ReportError> {
    let text = std::fs::read_to_string(trace).map_err(|e| ReportError::Read(trace.into(), e))?;
    let t = parse(&text).map_err(|why| ReportError::NotATrace(trace.into(), why))?;
    let out = out.map_or_else(|| trace.with_extension("html"), Path::to_path_buf);
    let title = trace
        .file_name()
        .map_or_else(String::new, |n| n.to_string_lossy().into_owned());
    std::fs::write(&out, render(&t, &title)).map_err(|e| ReportError::Write(out.clone(), e))?;
    Ok(out)
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

fn ms(us: f64) -> String {
    if us >= 1e6 {
        format!("{:.2} s", us / 1e6)
    } else {
        format!("{:.3} ms", us / 1e3)
    }
}

/// A phase's name without its file references, at most 56 characters.
fn short(name: &str) -> String {
    let name = name.split(" (").next().unwrap_or(name);
    if name.chars().count() > 56 {
        format!("{}...", name.chars().take(53).collect::<String>())
    } else {
        name.to_string()
    }
}

fn phase_colour(name: &str) -> &'static str {
    let n = name
        .split('.')
        .next()
        .and_then(|n| n.trim().parse::<usize>().ok())
        .unwrap_or(9);
    PHASE_COLOURS[(n.clamp(1, 9)) - 1]
}

fn render(t: &Trace, title: &str) -> String {
    let mut h = String::new();
    let end = t
        .phases
        .iter()
        .map(|p| p.ts + p.dur)
        .chain(t.events.iter().map(|(_, _, s)| s.ts + s.dur))
        .fold(0.0, f64::max);
    let handling: f64 = t.events.iter().map(|(_, _, s)| s.dur).sum();
    let _ = write!(
        h,
        "<!doctype html>\n<html><head><meta charset=\"utf-8\"><title>kiln report: {title}</title>\n<style>\n\
         body{{font-family:sans-serif;margin:24px;color:#222}} table{{border-collapse:collapse;margin:8px 0 24px}}\n\
         td,th{{border:1px solid #ccc;padding:3px 8px;text-align:right}} td.l,th.l{{text-align:left}}\n\
         .swatch{{display:inline-block;width:12px;height:12px;margin-right:6px;vertical-align:middle}}\n\
         </style></head><body>\n<h1>kiln: where the time went</h1>\n\
         <p>{title}: {} from kiln's start to its end; {} exits and device events; kiln spent {} handling them.</p>\n",
        ms(end),
        t.events.len(),
        ms(handling),
        title = esc(title),
    );
    set_up_chart(&mut h, t);
    run_chart(&mut h, t, end);
    phase_table(&mut h, t);
    device_table(&mut h, t);
    h.push_str("</body></html>\n");
    h
}

/// Phases 1-7 (and the restore's): kiln's own work before the guest runs,
/// on their own time scale, one bar per phase.
fn set_up_chart(h: &mut String, t: &Trace) {
    let set_up: Vec<&Span> = t
        .phases
        .iter()
        .filter(|p| !p.name.starts_with('8') && !p.name.starts_with('9'))
        .collect();
    let Some(last) = set_up.iter().map(|p| p.ts + p.dur).reduce(f64::max) else {
        return;
    };
    let first = set_up.iter().map(|p| p.ts).fold(f64::MAX, f64::min);
    let span = (last - first).max(1.0);
    let row = 26.0;
    // Names in a column on the left, bars on their own time scale.
    let label_w = 470.0;
    let bars_w = WIDTH - label_w;
    let height = row * set_up.len() as f64 + 30.0;
    let _ = writeln!(
        h,
        "<h2>Setting the VM up: phases 1-7 ({})</h2>\n<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{}\" height=\"{height}\" shape-rendering=\"crispEdges\" font-size=\"12\">",
        ms(span),
        WIDTH + 20.0
    );
    for (i, p) in set_up.iter().enumerate() {
        let x = label_w + (p.ts - first) / span * bars_w;
        let w = (p.dur / span * bars_w).max(6.0);
        let y = i as f64 * row + 4.0;
        let _ = writeln!(
            h,
            "<text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"end\" shape-rendering=\"auto\">{} ({})</text>\
             <rect x=\"{x:.1}\" y=\"{y:.1}\" width=\"{w:.1}\" height=\"18\" fill=\"{}\"><title>{} ({})</title></rect>",
            label_w - 8.0,
            y + 13.0,
            esc(&short(&p.name)),
            ms(p.dur),
            phase_colour(&p.name),
            esc(&p.name),
            ms(p.dur)
        );
    }
    let _ = writeln!(
        h,
        "<text x=\"{label_w}\" y=\"{:.1}\">0</text><text x=\"{WIDTH}\" y=\"{:.1}\" text-anchor=\"end\">{}</text></svg>",
        height - 4.0,
        height - 4.0,
        ms(span)
    );
}

/// The whole run: phases as a band, then exits per device over time
/// (stacked columns), one chart for all tracks.
fn run_chart(h: &mut String, t: &Trace, end: f64) {
    let end = end.max(1.0);
    let mut devices: Vec<&str> = Vec::new();
    for (_, d, _) in &t.events {
        if !devices.contains(&d.as_str()) {
            devices.push(d);
        }
    }
    let mut counts = vec![vec![0u64; devices.len()]; BUCKETS];
    for (_, d, s) in &t.events {
        let b = ((s.ts / end * BUCKETS as f64) as usize).min(BUCKETS - 1);
        let i = devices.iter().position(|x| x == d).unwrap_or(0);
        counts[b][i] += 1;
    }
    let max = counts
        .iter()
        .map(|c| c.iter().sum::<u64>())
        .max()
        .unwrap_or(0)
        .max(1);
    let chart_h = 160.0;
    let band = 24.0;
    let _ = writeln!(
        h,
        "<h2>The whole run ({}): phases, then exits per device over time</h2>\n<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{}\" height=\"{}\" shape-rendering=\"crispEdges\" font-size=\"12\">",
        ms(end),
        WIDTH + 20.0,
        band + chart_h + 40.0
    );
    for p in &t.phases {
        let x = p.ts / end * WIDTH;
        let w = (p.dur / end * WIDTH).max(2.0);
        let _ = writeln!(
            h,
            "<rect x=\"{x:.1}\" y=\"0\" width=\"{w:.1}\" height=\"{}\" fill=\"{}\"><title>{} ({})</title></rect>",
            band - 4.0,
            phase_colour(&p.name),
            esc(&p.name),
            ms(p.dur)
        );
    }
    let col_w = WIDTH / BUCKETS as f64;
    for (b, c) in counts.iter().enumerate() {
        let mut y = band + chart_h;
        for (i, &n) in c.iter().enumerate() {
            if n == 0 {
                continue;
            }
            let hgt = n as f64 / max as f64 * chart_h;
            y -= hgt;
            let _ = writeln!(
                h,
                "<rect x=\"{:.1}\" y=\"{y:.1}\" width=\"{:.1}\" height=\"{hgt:.1}\" fill=\"{}\"><title>{}: {n}</title></rect>",
                b as f64 * col_w,
                col_w.max(1.0),
                DEVICE_COLOURS[i % DEVICE_COLOURS.len()],
                esc(devices[i])
            );
        }
    }
    let _ = writeln!(
        h,
        "<text x=\"0\" y=\"{:.1}\">0</text><text x=\"{WIDTH}\" y=\"{:.1}\" text-anchor=\"end\">{}</text>\
         <text x=\"4\" y=\"{:.1}\">{max} per column</text></svg>",
        band + chart_h + 16.0,
        band + chart_h + 16.0,
        ms(end),
        band + 14.0
    );
    h.push_str("<p>");
    for (i, d) in devices.iter().enumerate() {
        let _ = write!(
            h,
            "<span class=\"swatch\" style=\"background:{}\"></span>{} &nbsp; ",
            DEVICE_COLOURS[i % DEVICE_COLOURS.len()],
            esc(d)
        );
    }
    h.push_str("</p>\n");
}

fn phase_table(h: &mut String, t: &Trace) {
    h.push_str("<h2>Phases</h2>\n<table><tr><th class=\"l\">phase</th><th>starts at</th><th>took</th></tr>\n");
    for p in &t.phases {
        let _ = writeln!(
            h,
            "<tr><td class=\"l\"><span class=\"swatch\" style=\"background:{}\"></span>{}</td><td>{}</td><td>{}</td></tr>",
            phase_colour(&p.name),
            esc(&p.name),
            ms(p.ts),
            ms(p.dur)
        );
    }
    h.push_str("</table>\n");
}

fn device_table(h: &mut String, t: &Trace) {
    let mut rows: BTreeMap<(&str, &str), (u64, f64)> = BTreeMap::new();
    for (track, _, s) in &t.events {
        let r = rows.entry((track.as_str(), s.name.as_str())).or_default();
        r.0 += 1;
        r.1 += s.dur;
    }
    let mut rows: Vec<_> = rows.into_iter().collect();
    rows.sort_by_key(|r| std::cmp::Reverse(r.1 .0));
    h.push_str("<h2>Exits and device events</h2>\n<table><tr><th class=\"l\">where</th><th class=\"l\">what</th><th>count</th><th>kiln's time</th><th>mean</th></tr>\n");
    for ((track, name), (n, dur)) in rows {
        let _ = writeln!(
            h,
            "<tr><td class=\"l\">{}</td><td class=\"l\">{}</td><td>{n}</td><td>{}</td><td>{:.1} us</td></tr>",
            esc(track),
            esc(name),
            ms(dur),
            dur / n as f64
        );
    }
    h.push_str("</table>\n");
}

#[cfg(test)]
mod tests {
    use super::*;

    const TRACE: &str = r#"{"traceEvents":[
        {"name":"1. validate","cat":"phase","ph":"X","ts":0,"dur":100,"pid":1,"tid":1},
        {"name":"5. load <kernel>","cat":"phase","ph":"X","ts":100,"dur":300,"pid":1,"tid":1},
        {"name":"8. run","cat":"phase","ph":"X","ts":400,"dur":10000,"pid":1,"tid":1},
        {"name":"io-out com1","cat":"exit","ph":"X","ts":500,"dur":20,"pid":1,"tid":10},
        {"name":"io-out com1","cat":"exit","ph":"X","ts":600,"dur":40,"pid":1,"tid":11},
        {"name":"notify blk","cat":"device","ph":"X","ts":700,"dur":5,"pid":1,"tid":2},
        {"name":"thread_name","ph":"M","pid":1,"tid":10,"args":{"name":"vCPU 0: exits"}}
    ]}"#;

    #[test]
    fn the_report_shows_phases_and_exits() {
        let t = parse(TRACE).unwrap();
        assert_eq!(t.phases.len(), 3);
        assert_eq!(t.events.len(), 3);
        assert_eq!(t.events[1].0, "vCPU 1");
        assert_eq!(t.events[2].0, "event loop");
        let html = render(&t, "boot.json");
        assert!(html.contains("5. load &lt;kernel&gt;"), "names are escaped");
        assert!(html.contains(PHASE_COLOURS[0]) && html.contains(PHASE_COLOURS[4]));
        assert!(html.contains("vCPU 0</td><td class=\"l\">io-out com1</td><td>1</td>"));
        assert!(html.contains("3 exits and device events"));
        assert!(!html.contains("<script"), "no script");
        assert_eq!(short("4. guest RAM: mmap (vm.rs)"), "4. guest RAM: mmap");
        assert_eq!(short(&"x".repeat(60)).len(), 56);
    }

    #[test]
    fn other_files_are_refused_with_the_reason() {
        assert!(parse("hello").unwrap_err().contains("not JSON"));
        assert!(parse("{}").unwrap_err().contains("no traceEvents"));
        assert!(parse(r#"{"traceEvents":[]}"#)
            .unwrap_err()
            .contains("no boot phases"));
    }
}
