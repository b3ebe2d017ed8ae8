//! x86-64 VM setup (filled in by the arch work).
