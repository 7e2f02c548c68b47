//! The probes that look beyond the node: its default gateways answer a ping, one of its DNS
//! servers answers a query, a TCP port opens. The ping and DNS probes look up their target at
//! every attempt, so after a change they test the gateway and servers the change left in place:
//! the gateway from the kernel's routes, the servers from NetworkManager's running DNS
//! configuration (both cheap to repeat).

use crate::network::network_manager;
use futures::TryStreamExt;
use rtnetlink::{
    RouteMessageBuilder,
    packet_route::{
        link::LinkAttribute,
        route::{RouteAddress, RouteAttribute, RouteHeader, RouteMessage, RouteType},
    },
};
use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    time::Duration,
};

/// An address family: each has its own default gateway, probed apart.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Family {
    Ipv4,
    Ipv6,
}

impl Family {
    fn name(self) -> &'static str {
        match self {
            Family::Ipv4 => "IPv4",
            Family::Ipv6 => "IPv6",
        }
    }
}

/// The gateway and outgoing interface (its index) of `route` when it is a default route of
/// the main table; of its first next hop when it has several.
fn default_route(route: &RouteMessage) -> Option<(IpAddr, u32)> {
    let header = &route.header;
    let table = route
        .attributes
        .iter()
        .find_map(|attribute| match attribute {
            RouteAttribute::Table(table) => Some(*table),
            _ => None,
        })
        .unwrap_or(u32::from(header.table));
    if header.destination_prefix_length != 0
        || header.kind != RouteType::Unicast
        || table != u32::from(RouteHeader::RT_TABLE_MAIN)
    {
        return None;
    }
    let gateway = |attributes: &[RouteAttribute]| {
        attributes.iter().find_map(|attribute| match attribute {
            RouteAttribute::Gateway(RouteAddress::Inet(address)) => Some(IpAddr::V4(*address)),
            RouteAttribute::Gateway(RouteAddress::Inet6(address)) => Some(IpAddr::V6(*address)),
            _ => None,
        })
    };
    let interface = route.attributes.iter().find_map(|attribute| match attribute {
        RouteAttribute::Oif(index) => Some(*index),
        _ => None,
    });
    match (gateway(&route.attributes), interface) {
        (Some(gateway), Some(interface)) => Some((gateway, interface)),
        _ => route.attributes.iter().find_map(|attribute| match attribute {
            RouteAttribute::MultiPath(hops) => hops
                .iter()
                .find_map(|hop| Some((gateway(&hop.attributes)?, hop.interface_index))),
            _ => None,
        }),
    }
}

/// The `family` default route's gateway and the name of its interface, in the main table, as
/// the kernel has them now: one dump of the family's routes and one link looked up, not a
/// whole kernel state (every link with its addresses, each route protocol apart, the rules),
/// which took most of a ping probe's time.
async fn default_gateway(family: Family) -> Result<Option<(IpAddr, String)>, String> {
    let (connection, handle, _) = rtnetlink::new_connection().map_err(|error| error.to_string())?;
    let driver = tokio::spawn(connection);
    let query = match family {
        Family::Ipv4 => RouteMessageBuilder::<Ipv4Addr>::new().build(),
        Family::Ipv6 => RouteMessageBuilder::<Ipv6Addr>::new().build(),
    };
    let found = async {
        let routes: Vec<RouteMessage> = handle.route().get(query).execute().try_collect().await?;
        let Some((gateway, index)) = routes.iter().find_map(default_route) else {
            return Ok(None);
        };
        let links: Vec<_> = handle
            .link()
            .get()
            .match_index(index)
            .execute()
            .try_collect()
            .await?;
        let name = links
            .iter()
            .flat_map(|link| &link.attributes)
            .find_map(|attribute| match attribute {
                LinkAttribute::IfName(name) => Some(name.clone()),
                _ => None,
            });
        Ok(name.map(|name| (gateway, name)))
    };
    let found: Result<_, rtnetlink::Error> = found.await;
    driver.abort();
    found.map_err(|error| error.to_string())
}

/// Pings the node's `family` default gateway through its interface once.
pub async fn ping_default_gateway(family: Family, timeout: Duration) -> Result<(), String> {
    let (gateway, interface) = default_gateway(family)
        .await
        .map_err(|error| format!("cannot read the kernel's {} routes: {error}", family.name()))?
        .ok_or_else(|| format!("the node has no {} default route", family.name()))?;
    let kind = match family {
        Family::Ipv4 => surge_ping::ICMP::V4,
        Family::Ipv6 => surge_ping::ICMP::V6,
    };
    // Raw ICMP: the handler is privileged, and unprivileged ping sockets are often disabled.
    let config = surge_ping::Config::builder()
        .kind(kind)
        .interface(&interface)
        .sock_type_hint(socket2::Type::RAW)
        .build();
    let client =
        surge_ping::Client::new(&config).map_err(|error| format!("cannot open an ICMP socket: {error}"))?;
    let mut pinger = client
        .pinger(gateway, surge_ping::PingIdentifier(std::process::id() as u16))
        .await;
    pinger.timeout(timeout);
    pinger
        .ping(surge_ping::PingSequence(0), &[0; 16])
        .await
        .map(|_| ())
        .map_err(|error| format!("default gateway {gateway} via {interface} does not answer: {error}"))
}

/// Resolves `host` through each of the node's DNS servers until one answers. As upstream, the
/// default host `root-servers.net` is asked for its NS records, any other for an address.
pub async fn resolve_through_node_servers(host: &str, timeout: Duration) -> Result<(), String> {
    let servers: Vec<IpAddr> = network_manager::running_dns_servers(None)
        .await
        .map_err(|error| error.to_string())?
        .iter()
        .filter_map(|server| server.parse().ok())
        .collect();
    if servers.is_empty() {
        return Err("the node has no DNS server".into());
    }
    let record_type = if host == "root-servers.net" {
        RECORD_NS
    } else {
        RECORD_A
    };
    let mut failures = Vec::new();
    for server in servers {
        match query(SocketAddr::new(server, 53), host, record_type, timeout).await {
            Ok(()) => return Ok(()),
            Err(error) => failures.push(format!("{server}: {error}")),
        }
    }
    Err(format!("no DNS server resolved {host} ({})", failures.join("; ")))
}

/// Opens a TCP connection to `host`:`port` (a name is resolved by the node's resolver) and
/// closes it.
pub async fn connect(host: &str, port: u16) -> Result<(), String> {
    tokio::net::TcpStream::connect((host, port))
        .await
        .map(drop)
        .map_err(|error| format!("cannot connect to {host}:{port}: {error}"))
}

const RECORD_A: u16 = 1;
const RECORD_NS: u16 = 2;

/// One DNS question, as sent on the wire: header (recursion desired), the name, type, class IN.
fn dns_question(id: u16, name: &str, record_type: u16) -> Result<Vec<u8>, String> {
    let mut message = Vec::with_capacity(32 + name.len());
    message.extend_from_slice(&id.to_be_bytes());
    message.extend_from_slice(&[0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0]); // RD; 1 question
    for label in name.trim_end_matches('.').split('.') {
        let length = u8::try_from(label.len())
            .ok()
            .filter(|len| (1..=63).contains(len));
        let length = length.ok_or_else(|| format!("{name:?} is not a valid DNS name"))?;
        message.push(length);
        message.extend_from_slice(label.as_bytes());
    }
    message.push(0);
    message.extend_from_slice(&record_type.to_be_bytes());
    message.extend_from_slice(&1u16.to_be_bytes());
    Ok(message)
}

/// Whether `response` answers question `id` successfully with at least one record.
fn dns_answered(response: &[u8], id: u16) -> Result<(), String> {
    if response.len() < 12 || response[0..2] != id.to_be_bytes() || response[2] & 0x80 == 0 {
        return Err("not an answer to the question".into());
    }
    match response[3] & 0x0f {
        0 => {}
        3 => return Err("no such name".into()),
        code => return Err(format!("error code {code}")),
    }
    if u16::from_be_bytes([response[6], response[7]]) == 0 {
        return Err("no records in the answer".into());
    }
    Ok(())
}

async fn query(server: SocketAddr, name: &str, record_type: u16, timeout: Duration) -> Result<(), String> {
    let id = (std::process::id() as u16) ^ 0x5a5a;
    let question = dns_question(id, name, record_type)?;
    let local: SocketAddr = if server.is_ipv4() {
        ([0, 0, 0, 0], 0).into()
    } else {
        ([0u16; 8], 0).into()
    };
    let socket = tokio::net::UdpSocket::bind(local)
        .await
        .map_err(|error| error.to_string())?;
    let mut buffer = [0u8; 1500];
    let deadline = tokio::time::Instant::now() + timeout;
    // Asked again every second, as resolvers do: one lost datagram is not a dead server.
    loop {
        socket
            .send_to(&question, server)
            .await
            .map_err(|error| error.to_string())?;
        let wait = deadline
            .saturating_duration_since(tokio::time::Instant::now())
            .min(Duration::from_secs(1));
        if let Ok(received) = tokio::time::timeout(wait, socket.recv(&mut buffer)).await {
            let received = received.map_err(|error| error.to_string())?;
            return dns_answered(&buffer[..received], id);
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(format!("no answer within {} s", timeout.as_secs()));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rtnetlink::packet_route::route::RouteNextHop;

    /// A route of `table` to `destination`/`prefix` through `gateway` on interface `oif`.
    fn route(destination: IpAddr, prefix: u8, gateway: IpAddr, oif: u32, table: u32) -> RouteMessage {
        let mut route = RouteMessage::default();
        route.header.destination_prefix_length = prefix;
        route.header.kind = RouteType::Unicast;
        route.header.table = u8::try_from(table).unwrap_or(RouteHeader::RT_TABLE_UNSPEC);
        route.attributes = vec![
            RouteAttribute::Destination(destination.into()),
            RouteAttribute::Gateway(gateway.into()),
            RouteAttribute::Oif(oif),
            RouteAttribute::Table(table),
        ];
        route
    }

    #[test]
    fn a_default_gateway_is_a_default_route_of_the_main_table() {
        let any4: IpAddr = "0.0.0.0".parse().unwrap();
        let gateway: IpAddr = "10.77.0.1".parse().unwrap();
        let v6: IpAddr = "fd00::1".parse().unwrap();
        let main = u32::from(RouteHeader::RT_TABLE_MAIN);
        assert_eq!(
            default_route(&route(any4, 0, gateway, 2, main)),
            Some((gateway, 2))
        );
        assert_eq!(
            default_route(&route("::".parse().unwrap(), 0, v6, 3, main)),
            Some((v6, 3))
        );
        // Another table, a subnet's route, a route that is not unicast: none is.
        assert_eq!(default_route(&route(any4, 0, gateway, 2, 200)), None);
        assert_eq!(default_route(&route(any4, 0, gateway, 2, 1000)), None);
        assert_eq!(
            default_route(&route("10.77.0.0".parse().unwrap(), 24, gateway, 2, main)),
            None
        );
        let mut blackhole = route(any4, 0, gateway, 2, main);
        blackhole.header.kind = RouteType::BlackHole;
        assert_eq!(default_route(&blackhole), None);
        // Several next hops: the first with a gateway.
        let second: IpAddr = "10.77.0.2".parse().unwrap();
        let hop = |gateway: Option<IpAddr>, interface_index| {
            let mut hop = RouteNextHop::default();
            hop.interface_index = interface_index;
            hop.attributes = gateway
                .map(|gateway| RouteAttribute::Gateway(gateway.into()))
                .into_iter()
                .collect();
            hop
        };
        let mut multipath = route(any4, 0, gateway, 2, main);
        multipath.attributes = vec![
            RouteAttribute::Table(main),
            RouteAttribute::MultiPath(vec![hop(None, 4), hop(Some(second), 5)]),
        ];
        assert_eq!(default_route(&multipath), Some((second, 5)));
    }

    #[test]
    fn questions_are_encoded_as_the_wire_format_says() {
        let question = dns_question(0x1234, "gw.sandbox.test", RECORD_A).unwrap();
        let mut expected = vec![0x12, 0x34, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0];
        expected.extend_from_slice(b"\x02gw\x07sandbox\x04test\x00\x00\x01\x00\x01");
        assert_eq!(question, expected);
        assert!(dns_question(1, "a..b", RECORD_A).is_err());
        assert!(dns_question(1, &"x".repeat(64), RECORD_A).is_err());
    }

    #[test]
    fn answers_are_checked_for_id_rcode_and_records() {
        let answer = |id: u16, flags: [u8; 2], answers: u16| {
            let mut response = id.to_be_bytes().to_vec();
            response.extend_from_slice(&flags);
            response.extend_from_slice(&[0, 1]);
            response.extend_from_slice(&answers.to_be_bytes());
            response.extend_from_slice(&[0, 0, 0, 0]);
            response
        };
        assert_eq!(dns_answered(&answer(7, [0x81, 0x80], 1), 7), Ok(()));
        assert!(
            dns_answered(&answer(8, [0x81, 0x80], 1), 7).is_err(),
            "another question's answer"
        );
        assert!(
            dns_answered(&answer(7, [0x01, 0x00], 1), 7).is_err(),
            "a question, not an answer"
        );
        assert_eq!(
            dns_answered(&answer(7, [0x81, 0x83], 0), 7),
            Err("no such name".into())
        );
        assert_eq!(
            dns_answered(&answer(7, [0x81, 0x85], 0), 7),
            Err("error code 5".into())
        );
        assert!(
            dns_answered(&answer(7, [0x81, 0x80], 0), 7).is_err(),
            "no records"
        );
        assert!(dns_answered(&[0; 5], 7).is_err());
    }
}
