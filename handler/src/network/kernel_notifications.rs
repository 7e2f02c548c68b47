//! The kernel's own notifications of a change to the network (rtnetlink multicast, as `ip
//! monitor` listens): what the node-state reporter used to find by reading the kernel every
//! minute, told instead, so an idle node is not read at all.
//!
//! The datagrams are counted, not parsed: what changed is read by the next periodic check, and
//! netlink-packet-route has no type for some of them (netconf, the IP sysctls), which a parsed
//! stream drops.

use futures::Stream;
use rtnetlink::{
    MulticastGroup,
    sys::{AsyncSocket, AsyncSocketExt, SocketAddr, TokioSocket, protocols::NETLINK_ROUTE},
};

/// What nmstate reports from the kernel: links (their state, MTU, MAC, bridge ports, features),
/// addresses, routes, rules, and the per-interface IP sysctls (forwarding, for one). All are
/// groups below 32, joined when the socket is bound.
const GROUPS: [MulticastGroup; 10] = [
    MulticastGroup::Link,
    MulticastGroup::Ipv4Ifaddr,
    MulticastGroup::Ipv6Ifaddr,
    MulticastGroup::Ipv4Route,
    MulticastGroup::Ipv6Route,
    MulticastGroup::Ipv4Rule,
    MulticastGroup::Ipv6Rule,
    MulticastGroup::Ipv6Ifinfo,
    MulticastGroup::Ipv4Netconf,
    MulticastGroup::Ipv6Netconf,
];

/// A notification's datagram is read into this much at most; the rest of a longer one is
/// dropped, unread (only its arrival counts).
const DATAGRAM: usize = 8 * 1024;

/// A stream with one item per kernel notification of a change in [`GROUPS`]. Notifications lost
/// to a full socket queue still count: the kernel's overrun comes as an item. The stream ends
/// when the socket fails. Needs a tokio runtime.
pub fn change_notifications() -> std::io::Result<impl Stream<Item = ()> + Send + Unpin> {
    let mut socket = TokioSocket::new(NETLINK_ROUTE)?;
    let groups = GROUPS
        .iter()
        .fold(0u32, |bits, group| bits | 1 << (*group as u32 - 1));
    socket.socket_mut().bind(&SocketAddr::new(0, groups))?;
    let received = futures::stream::unfold(
        (socket, Vec::with_capacity(DATAGRAM)),
        |(socket, mut datagram)| async move {
            datagram.clear();
            let counts = match socket.recv(&mut datagram).await {
                Ok(()) => true,
                // Notifications were lost while the socket's queue was full.
                Err(error) => error.raw_os_error() == Some(nix::errno::Errno::ENOBUFS as i32),
            };
            counts.then_some(((), (socket, datagram)))
        },
    );
    Ok(Box::pin(received))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_group_is_joined_when_the_socket_is_bound() {
        // Groups from 32 on need a membership each, which `change_notifications` does not add.
        assert!(GROUPS.iter().all(|group| !group.need_via_add_membership()));
    }
}
