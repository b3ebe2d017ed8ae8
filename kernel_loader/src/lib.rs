//! Kernel loaders (filled in by the loader work).
