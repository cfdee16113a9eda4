//! `--trace=FILTER`: which exits the trace prints. FILTER is a
//! comma-separated list of terms:
//!
//! - device names (`com1`, `i8042`, `cmos`, `pvpanic`, `acpi-pm`,
//!   `boot-timer`, `blk`, `net`, `vsock`, `virtio` for all three,
//!   `unclaimed` for addresses nothing answers);
//! - exit reasons (`io`, `io-in`, `io-out`, `mmio`, `mmio-read`,
//!   `mmio-write`, `hlt`, `msr`, `debug`, `emulation`, `event`,
//!   `shutdown`, `kick`; `notify` and `backend` are the event loop's:
//!   queue notifications through ioeventfds, host-side I/O);
//! - vCPUs (`vcpu0`, `vcpu1`, ...);
//! - `all`.
//!
//! An exit is printed when its device or its reason is named (or neither
//! devices nor reasons are), and its vCPU is named (or none is). `kick`
//! exits (KVM_RUN interrupted by kiln's own tick) are printed only when
//! named; the summary table counts every exit.

use super::decode::DEVICE_NAMES;
use super::Reason;

/// A parsed FILTER.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Filter {
    devices: Vec<String>,
    reasons: Vec<Reason>,
    vcpus: Vec<u8>,
}

/// Reason terms and the reasons they stand for.
const REASON_TERMS: [(&str, &[Reason]); 15] = [
    ("io", &[Reason::IoIn, Reason::IoOut]),
    ("io-in", &[Reason::IoIn]),
    ("io-out", &[Reason::IoOut]),
    ("mmio", &[Reason::MmioRead, Reason::MmioWrite]),
    ("mmio-read", &[Reason::MmioRead]),
    ("mmio-write", &[Reason::MmioWrite]),
    ("hlt", &[Reason::Hlt]),
    ("msr", &[Reason::Msr]),
    ("debug", &[Reason::Debug]),
    ("emulation", &[Reason::Emulation]),
    ("event", &[Reason::SystemEvent]),
    ("shutdown", &[Reason::Shutdown]),
    ("kick", &[Reason::Kick]),
    ("notify", &[Reason::Notify]),
    ("backend", &[Reason::Backend]),
];

impl Filter {
    /// Parses FILTER; `None` (plain `--trace`) is "all".
    pub fn parse(spec: Option<&str>) -> Result<Filter, String> {
        let mut f = Filter::default();
        let Some(spec) = spec else { return Ok(f) };
        for term in spec.split(',').map(str::trim) {
            let t = term.to_ascii_lowercase();
            if t == "all" {
                continue;
            }
            if t == "virtio" {
                f.devices.extend(["blk", "net", "vsock"].map(String::from));
            } else if t == "unclaimed" || DEVICE_NAMES.contains(&t.as_str()) {
                f.devices.push(t);
            } else if let Some((_, reasons)) = REASON_TERMS.iter().find(|(n, _)| *n == t) {
                f.reasons.extend_from_slice(reasons);
            } else if let Some(n) = t.strip_prefix("vcpu").and_then(|n| n.parse::<u8>().ok()) {
                f.vcpus.push(n);
            } else {
                let what = if term.is_empty() {
                    "an empty term".to_string()
                } else {
                    format!("'{term}'")
                };
                return Err(format!(
                    "--trace: {what} is not a filter term; use device names ({}, virtio, unclaimed), exit reasons ({}), vcpuN or all, separated by commas",
                    DEVICE_NAMES.join(", "),
                    REASON_TERMS.map(|(n, _)| n).join(", ")
                ));
            }
        }
        Ok(f)
    }

    /// Whether to print an exit of `reason` on `vcpu` (None: the event
    /// loop) at `device` (`Some(None)`: an access nothing answered; `None`:
    /// not an access).
    pub fn selects(&self, vcpu: Option<u8>, reason: Reason, device: Option<Option<&str>>) -> bool {
        if !self.vcpus.is_empty() && !vcpu.is_some_and(|n| self.vcpus.contains(&n)) {
            return false;
        }
        if reason == Reason::Kick {
            return self.reasons.contains(&Reason::Kick);
        }
        if self.devices.is_empty() && self.reasons.is_empty() {
            return true;
        }
        let device_named = match device {
            Some(name) => self
                .devices
                .iter()
                .any(|d| d == name.unwrap_or("unclaimed")),
            None => false,
        };
        device_named || self.reasons.contains(&reason)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_trace_selects_everything_but_kicks() {
        let f = Filter::parse(None).unwrap();
        assert!(f.selects(Some(0), Reason::IoOut, Some(Some("com1"))));
        assert!(f.selects(Some(3), Reason::Hlt, None));
        assert!(!f.selects(Some(0), Reason::Kick, None));
        assert_eq!(Filter::parse(Some("all")).unwrap(), f);
    }

    #[test]
    fn devices_and_reasons_add_up_vcpus_narrow() {
        let f = Filter::parse(Some("com1, msr,vcpu1")).unwrap();
        assert!(f.selects(Some(1), Reason::IoOut, Some(Some("com1"))));
        assert!(f.selects(Some(1), Reason::Msr, None));
        assert!(!f.selects(Some(0), Reason::IoOut, Some(Some("com1"))));
        assert!(!f.selects(Some(1), Reason::IoOut, Some(Some("i8042"))));
        let f = Filter::parse(Some("virtio,unclaimed,kick")).unwrap();
        assert!(f.selects(Some(0), Reason::MmioWrite, Some(Some("vsock"))));
        assert!(f.selects(Some(0), Reason::IoIn, Some(None)));
        assert!(f.selects(Some(0), Reason::Kick, None));
        assert!(!f.selects(Some(0), Reason::IoIn, Some(Some("cmos"))));
        let f = Filter::parse(Some("MMIO")).unwrap();
        assert!(f.selects(Some(0), Reason::MmioRead, Some(Some("boot-timer"))));
        assert!(!f.selects(Some(0), Reason::IoIn, Some(Some("com1"))));
    }

    #[test]
    fn bad_terms_are_named() {
        let e = Filter::parse(Some("com1,serial")).unwrap_err();
        assert!(
            e.starts_with("--trace: 'serial' is not a filter term"),
            "{e}"
        );
        assert!(e.contains("com1, i8042"), "{e}");
        let e = Filter::parse(Some("com1,")).unwrap_err();
        assert!(e.contains("an empty term"), "{e}");
        assert!(Filter::parse(Some("vcpu300")).is_err());
    }
}
