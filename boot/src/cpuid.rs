//! What each vCPU is told about itself through CPUID: its APIC ID, the
//! number of CPUs, and that it runs under a hypervisor. Starts from what
//! KVM supports (KVM_GET_SUPPORTED_CPUID) and patches a few leaves.

use kvm_bindings::kvm_cpuid_entry2;

/// CPUID.1:ECX bit 31: running under a hypervisor.
const ECX_HYPERVISOR: u32 = 1 << 31;
/// CPUID.1:EDX bit 28: more than one logical processor per package.
const EDX_HTT: u32 = 1 << 28;

/// Patches the supported CPUID entries for vCPU `cpu_id` of `cpu_count`.
pub fn patch(entries: &mut [kvm_cpuid_entry2], cpu_id: u8, cpu_count: u8) {
    let id = u32::from(cpu_id);
    let count = u32::from(cpu_count);
    // Bits needed to number `count` CPUs (x2APIC ID shift of the package level).
    let shift = 32 - (count.max(1) - 1).leading_zeros();
    for e in entries.iter_mut() {
        match e.function {
            0x1 => {
                // EBX: [31:24] initial APIC ID, [23:16] logical CPUs, [15:8] CLFLUSH (64 B).
                e.ebx = (id << 24) | (count << 16) | (8 << 8) | (e.ebx & 0xff);
                e.ecx |= ECX_HYPERVISOR;
                if count > 1 {
                    e.edx |= EDX_HTT;
                } else {
                    e.edx &= !EDX_HTT;
                }
            }
            0xb => {
                // Extended topology: one thread per core, `count` cores per package.
                e.edx = id;
                match e.index {
                    0 => {
                        e.eax = 0;
                        e.ebx = 1;
                        e.ecx = 0x100; // level 0, type SMT
                    }
                    1 => {
                        e.eax = shift;
                        e.ebx = count;
                        e.ecx = 0x201; // level 1, type core
                    }
                    n => {
                        e.eax = 0;
                        e.ebx = 0;
                        e.ecx = n; // invalid level: end of the list
                    }
                }
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(function: u32, index: u32) -> kvm_cpuid_entry2 {
        kvm_cpuid_entry2 {
            function,
            index,
            ..Default::default()
        }
    }

    #[test]
    fn apic_ids_and_counts() {
        let mut v = vec![entry(1, 0), entry(0xb, 0), entry(0xb, 1), entry(0xb, 2)];
        patch(&mut v, 3, 4);
        assert_eq!(v[0].ebx >> 24, 3);
        assert_eq!((v[0].ebx >> 16) & 0xff, 4);
        assert_ne!(v[0].ecx & ECX_HYPERVISOR, 0);
        assert_ne!(v[0].edx & EDX_HTT, 0);
        assert_eq!(v[1].edx, 3);
        assert_eq!((v[2].eax, v[2].ebx), (2, 4));
        assert_eq!(v[3].ecx & 0xff00, 0);
    }

    #[test]
    fn single_cpu_has_no_htt() {
        let mut v = vec![kvm_cpuid_entry2 {
            function: 1,
            edx: EDX_HTT,
            ..Default::default()
        }];
        patch(&mut v, 0, 1);
        assert_eq!(v[0].edx & EDX_HTT, 0);
        assert_eq!((v[0].ebx >> 16) & 0xff, 1);
    }
}
