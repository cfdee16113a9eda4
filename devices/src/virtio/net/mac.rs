//! Ethernet MAC addresses for virtio-net: parsing what the user wrote and
//! generating a stable one from the tap name when they wrote nothing.

use std::fmt;
use std::str::FromStr;

use super::NetError;

/// A unicast Ethernet address.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct MacAddr([u8; 6]);

impl MacAddr {
    /// The address as six bytes, first byte first (the order on the wire and
    /// in virtio-net's config space).
    pub fn bytes(&self) -> [u8; 6] {
        self.0
    }

    /// A locally administered unicast address derived from `tap_name`, so
    /// the same command line gives the guest the same MAC on every run.
    ///
    /// The first byte is `0x02` (locally administered, unicast); the other
    /// five are the FNV-1a hash of the name (a hash defined by its
    /// algorithm, unlike `std`'s `DefaultHasher`, so it never changes
    /// between Rust releases).
    pub fn from_tap_name(tap_name: &str) -> MacAddr {
        let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
        for byte in b"kiln-net:".iter().chain(tap_name.as_bytes()) {
            hash ^= u64::from(*byte);
            hash = hash.wrapping_mul(0x0100_0000_01b3);
        }
        let h = hash.to_be_bytes();
        MacAddr([0x02, h[0], h[1], h[2], h[3], h[4]])
    }
}

impl FromStr for MacAddr {
    type Err = NetError;

    /// Parses `aa:bb:cc:dd:ee:ff` (six pairs of hex digits, either case).
    /// Multicast (first byte odd) and all-zero addresses are refused: a
    /// NIC cannot own them.
    fn from_str(text: &str) -> Result<MacAddr, NetError> {
        let bad = || NetError::ParseMac(text.to_string());
        let mut bytes = [0u8; 6];
        let mut parts = text.split(':');
        for byte in bytes.iter_mut() {
            let part = parts.next().ok_or_else(bad)?;
            if part.len() != 2 || !part.bytes().all(|c| c.is_ascii_hexdigit()) {
                return Err(bad());
            }
            *byte = u8::from_str_radix(part, 16).map_err(|_| bad())?;
        }
        if parts.next().is_some() {
            return Err(bad());
        }
        if bytes[0] & 1 != 0 {
            return Err(NetError::MulticastMac(text.to_string()));
        }
        if bytes == [0; 6] {
            return Err(NetError::ZeroMac);
        }
        Ok(MacAddr(bytes))
    }
}

impl fmt::Display for MacAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let b = self.0;
        write!(
            f,
            "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
            b[0], b[1], b[2], b[3], b[4], b[5]
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_prints_a_mac() {
        let mac: MacAddr = "52:54:00:AB:cd:0f".parse().unwrap();
        assert_eq!(mac.bytes(), [0x52, 0x54, 0x00, 0xab, 0xcd, 0x0f]);
        assert_eq!(mac.to_string(), "52:54:00:ab:cd:0f");
    }

    #[test]
    fn refuses_malformed_macs() {
        for text in [
            "",
            "52:54:00:ab:cd",
            "52:54:00:ab:cd:0f:00",
            "52:54:00:ab:cd:0",
            "52:54:00:ab:cd:0g",
            "52-54-00-ab-cd-0f",
            "52:54:00:ab:cd:+f",
            "525:4:00:ab:cd:0f",
            " 52:54:00:ab:cd:0f",
            "52:54:00:ab:cd:0f:",
        ] {
            let err = text.parse::<MacAddr>().unwrap_err();
            assert!(matches!(err, NetError::ParseMac(_)), "{text:?}: {err}");
        }
    }

    #[test]
    fn refuses_multicast_and_zero_macs() {
        let err = "01:00:5e:00:00:01".parse::<MacAddr>().unwrap_err();
        assert!(matches!(err, NetError::MulticastMac(_)), "{err}");
        assert!(err.to_string().contains("multicast"), "{err}");
        let err = "ff:ff:ff:ff:ff:ff".parse::<MacAddr>().unwrap_err();
        assert!(matches!(err, NetError::MulticastMac(_)), "{err}");
        let err = "00:00:00:00:00:00".parse::<MacAddr>().unwrap_err();
        assert!(matches!(err, NetError::ZeroMac), "{err}");
    }

    #[test]
    fn generated_macs_are_stable_local_unicast_and_differ_by_name() {
        let a = MacAddr::from_tap_name("tap0");
        assert_eq!(a, MacAddr::from_tap_name("tap0"));
        assert_ne!(a, MacAddr::from_tap_name("tap1"));
        assert_eq!(a.bytes()[0] & 0x03, 0x02, "locally administered unicast");
        // Pinned: a change here changes every user's guest MAC.
        assert_eq!(a.to_string(), "02:9d:67:20:cd:cd");
        assert_eq!(a.to_string().parse::<MacAddr>().unwrap(), a);
    }
}
