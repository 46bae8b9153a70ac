//! Running a closure with the calling thread inside another network namespace.
//!
//! Sockets keep the namespace they were created in, so a listener or a client socket made on a
//! short-lived thread that `setns(2)`ed into `/run/netns/<name>` can then be used from anywhere
//! (tokio included) while the rest of the process stays in its own namespace.

use std::io;
use std::path::Path;

/// Runs `f` on a fresh thread that first joins the network namespace at `netns`.
///
/// The thread ends with `f`, so no other code ever runs in the foreign namespace.
pub fn in_netns<T, F>(netns: &Path, f: F) -> io::Result<T>
where
    T: Send,
    F: FnOnce() -> io::Result<T> + Send,
{
    ctnetlink::netns::in_netns(netns, f)?
}

#[cfg(test)]
mod tests {
    use super::*;
    use ctnetlink::testing::{TestNetns, root_or_skip};

    #[test]
    fn a_listener_made_inside_a_namespace_is_not_reachable_from_outside() {
        if !root_or_skip("netns::listener_isolation") {
            return;
        }
        let ns = TestNetns::new("e2e-netns").unwrap();
        let listener = in_netns(&ns.path(), || std::net::TcpListener::bind("127.0.0.1:0")).unwrap();
        let port = listener.local_addr().unwrap().port();
        // Inside: connects. Outside (our own loopback): nothing listens on that port.
        let inside = in_netns(&ns.path(), move || {
            std::net::TcpStream::connect(("127.0.0.1", port))
        });
        assert!(inside.is_ok(), "{inside:?}");
        // The port may coincidentally be in use outside; only check that it is not *this* listener.
        if let Ok(stream) = std::net::TcpStream::connect(("127.0.0.1", port)) {
            listener.set_nonblocking(true).unwrap();
            let _ = listener.accept(); // drain the inside connection
            assert!(
                listener.accept().is_err(),
                "the outside connection must not reach the namespaced listener: {stream:?}"
            );
        }
    }
}
