//! Boot-time structures of a kiln guest, as pure functions over guest memory:
//! no ioctls, so all of it is unit-tested without /dev/kvm.

pub mod acpi;
pub mod cpu;
pub mod cpuid;
pub mod layout;
pub mod loader;
pub mod mptable;
pub mod zero_page;
