//! Per-vCPU exit counters, summed and printed with `--verbose`.

/// Exit counts of one vCPU.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct ExitStats {
    /// Port I/O exits.
    pub pio: u64,
    /// MMIO exits.
    pub mmio: u64,
    /// KVM_RUN interrupted by a kick or a signal.
    pub interrupted: u64,
}

impl ExitStats {
    /// Adds another vCPU's counts.
    pub fn add(&mut self, o: &ExitStats) {
        self.pio += o.pio;
        self.mmio += o.mmio;
        self.interrupted += o.interrupted;
    }
}

impl std::fmt::Display for ExitStats {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "pio={} mmio={} kicks={}",
            self.pio, self.mmio, self.interrupted
        )
    }
}
