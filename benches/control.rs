//! Control-socket round-trip benchmark (being written).
fn main() {}
