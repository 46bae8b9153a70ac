//! Conntrack over netlink: dump, delete, create and events, in any network namespace.

#[cfg(feature = "testing")]
pub mod testing;
