//! Device models (filled in by the devices work).
