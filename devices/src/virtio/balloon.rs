//! virtio-balloon (device type 5): guest memory the host can reclaim.
