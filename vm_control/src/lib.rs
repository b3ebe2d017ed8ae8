//! The `vmm` control-socket protocol. The wire format and client arrive with the control-socket work.
