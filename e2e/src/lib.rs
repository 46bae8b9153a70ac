//! The node lab.
