//! The CMOS RTC at ports 0x70 (index) / 0x71 (data), enough for a guest
//! to read the wall-clock time at boot: the time registers in BCD from the
//! host clock, "update not in progress", and the RAM-size bytes. Linux
//! polls register A until its UIP bit clears, so without this device a
//! guest spins forever on the all-ones an empty port returns.

use crate::bus::BusDevice;

const INDEX_MASK: u8 = 0x7f;
const REG_A: u8 = 0x0a;
const REG_B: u8 = 0x0b;
const REG_C: u8 = 0x0c;
const REG_D: u8 = 0x0d;
/// Register A: 32.768 kHz time base, 1024 Hz rate, UIP (bit 7) clear.
const REG_A_VALUE: u8 = 0x26;
/// Register B: 24-hour mode, BCD, no interrupts.
const REG_B_VALUE: u8 = 0x02;
/// Register D: valid RAM and time (bit 7).
const REG_D_VALUE: u8 = 0x80;

/// A broken-down UTC time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DateTime {
    /// 0-59.
    pub sec: u8,
    /// 0-59.
    pub min: u8,
    /// 0-23.
    pub hour: u8,
    /// 1 = Sunday .. 7 = Saturday.
    pub weekday: u8,
    /// 1-31.
    pub day: u8,
    /// 1-12.
    pub month: u8,
    /// Full year, e.g. 2026.
    pub year: u32,
}

impl DateTime {
    /// UTC date and time of `secs` seconds after the Unix epoch.
    pub fn from_unix(secs: u64) -> DateTime {
        let days = secs / 86_400;
        let rem = secs % 86_400;
        // Civil-from-days (Howard Hinnant's algorithm).
        let z = days as i64 + 719_468;
        let era = z.div_euclid(146_097);
        let doe = z - era * 146_097;
        let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
        let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
        let mp = (5 * doy + 2) / 153;
        let day = (doy - (153 * mp + 2) / 5 + 1) as u8;
        let month = if mp < 10 { mp + 3 } else { mp - 9 } as u8;
        let year = (yoe + era * 400 + i64::from(month <= 2)) as u32;
        DateTime {
            sec: (rem % 60) as u8,
            min: (rem / 60 % 60) as u8,
            hour: (rem / 3600) as u8,
            // 1970-01-01 was a Thursday (5 in 1 = Sunday numbering).
            weekday: ((days + 4) % 7 + 1) as u8,
            day,
            month,
            year,
        }
    }
}

fn bcd(v: u32) -> u8 {
    (((v / 10) % 10) << 4 | (v % 10)) as u8
}

/// The CMOS/RTC device.
pub struct Cmos {
    index: u8,
    mem_below_4g: u64,
    mem_above_4g: u64,
    now: fn() -> u64,
}

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

impl Cmos {
    /// A CMOS reporting the given RAM sizes (bytes below and above 4 GiB).
    pub fn new(mem_below_4g: u64, mem_above_4g: u64) -> Self {
        Cmos {
            index: 0,
            mem_below_4g,
            mem_above_4g,
            now: unix_now,
        }
    }

    fn register(&self, index: u8) -> u8 {
        let t = DateTime::from_unix((self.now)());
        // RAM above 16 MiB in 64 KiB units, RAM above 4 GiB in 64 KiB units.
        let ext = self.mem_below_4g.saturating_sub(16 << 20) >> 16;
        let high = self.mem_above_4g >> 16;
        match index {
            0x00 => bcd(t.sec.into()),
            0x02 => bcd(t.min.into()),
            0x04 => bcd(t.hour.into()),
            0x06 => t.weekday,
            0x07 => bcd(t.day.into()),
            0x08 => bcd(t.month.into()),
            0x09 => bcd(t.year % 100),
            0x32 => bcd(t.year / 100),
            REG_A => REG_A_VALUE,
            REG_B => REG_B_VALUE,
            REG_C => 0,
            REG_D => REG_D_VALUE,
            0x34 => ext as u8,
            0x35 => (ext >> 8) as u8,
            0x5b => high as u8,
            0x5c => (high >> 8) as u8,
            0x5d => (high >> 16) as u8,
            _ => 0,
        }
    }
}

impl Cmos {
    /// The selected register: the only state the guest can change.
    pub fn index(&self) -> u8 {
        self.index
    }

    /// Selects a register (restoring a snapshot).
    pub fn set_index(&mut self, index: u8) {
        self.index = index & INDEX_MASK;
    }
}

impl BusDevice for Cmos {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        let v = if offset == 1 {
            self.register(self.index)
        } else {
            0xff
        };
        data.fill(v);
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        // Writes to the data port (setting the clock) are ignored.
        if let (0, Some(b)) = (offset, data.first()) {
            self.index = b & INDEX_MASK;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_from_unix_time() {
        let t = DateTime::from_unix(0);
        assert_eq!((t.year, t.month, t.day, t.weekday), (1970, 1, 1, 5));
        // 2026-11-22 16:39:00 UTC, a Sunday.
        let t = DateTime::from_unix(1_795_365_540);
        assert_eq!(
            (t.year, t.month, t.day, t.hour, t.min, t.sec),
            (2026, 11, 22, 16, 39, 0)
        );
        assert_eq!(t.weekday, 1);
        // Leap day.
        let t = DateTime::from_unix(951_782_400); // 2000-02-29
        assert_eq!((t.year, t.month, t.day), (2000, 2, 29));
    }

    #[test]
    fn registers_read_back_in_bcd() {
        let mut c = Cmos::new(256 << 20, 0);
        c.now = || 1_795_365_540;
        let mut read = |i: u8| {
            c.write(0, &[i]);
            let mut b = [0u8];
            c.read(1, &mut b);
            b[0]
        };
        assert_eq!(read(REG_A) & 0x80, 0, "update never in progress");
        assert_eq!(read(0x04), 0x16);
        assert_eq!(read(0x09), 0x26);
        assert_eq!(read(0x32), 0x20);
        assert_eq!(read(0x08), 0x11);
        assert_eq!(
            read(0x34) as u64 | (read(0x35) as u64) << 8,
            (240 << 20) >> 16
        );
        // The NMI-disable bit in the index is ignored.
        assert_eq!(read(0x80 | 0x07), 0x22);
    }
}
