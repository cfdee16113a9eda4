//! virtio-mmio transport (placeholder while it is written).
