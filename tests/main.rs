//! Integration tests: one test binary, one module per area.

mod it;
