pub mod allocation;
pub mod cli;
pub mod common;
pub mod fuzz;
pub mod lab;
pub mod properties;
pub mod validation;
pub mod wgtools;
