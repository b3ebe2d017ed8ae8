//! virtio-blk (device type 2): a raw disk image as a guest block device.
