//! The control socket's VMM side (being written).
