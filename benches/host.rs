//! Host-side benchmarks (being written).
fn main() {}
