//! Helpers for the unit tests.

/// xorshift64: the seeded generator of the unit tests' mini-fuzzes, so a
/// failure reproduces.
pub(crate) struct Rng(pub u64);

impl Rng {
    /// The next 64 random bits.
    pub(crate) fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}
