//! The host's NetworkManager, read over D-Bus: its version, reported in NodeNetworkState as
//! `hostNetworkManagerVersion`, and checked against the oldest version kubernetes-nmstate
//! supports.

use futures::{Stream, StreamExt, future};
use semver::Version;
use std::collections::HashMap;

/// The oldest NetworkManager kubernetes-nmstate supports (upstream's documented minimum).
pub const MINIMUM_VERSION: Version = Version::new(1, 22, 0);

const BUS_NAME: &str = "org.freedesktop.NetworkManager";
const OBJECT_PATH: &str = "/org/freedesktop/NetworkManager";
/// Where NetworkManager's checkpoint objects are (`/org/freedesktop/NetworkManager/Checkpoint/N`).
const CHECKPOINT_PATH: &str = "/org/freedesktop/NetworkManager/Checkpoint/";

#[derive(Debug, thiserror::Error)]
pub enum NetworkManagerError {
    #[error(
        "cannot read NetworkManager's version over D-Bus ({0}); is NetworkManager running, and is \
         the system bus socket (/run/dbus/system_bus_socket) mounted into the handler?"
    )]
    Dbus(#[from] zbus::Error),
    #[error("NetworkManager reports version {0:?}, which is not a version number")]
    UnparsableVersion(String),
    #[error(
        "NetworkManager {found} is older than {MINIMUM_VERSION}, the oldest version kubernetes-nmstate \
         supports; upgrade NetworkManager on this node"
    )]
    Unsupported { found: Version },
}

impl NetworkManagerError {
    /// A bounded category, for logs and metrics.
    pub fn category(&self) -> &'static str {
        match self {
            NetworkManagerError::Dbus(_) => "dbus",
            NetworkManagerError::UnparsableVersion(_) => "unparsable-version",
            NetworkManagerError::Unsupported { .. } => "unsupported",
        }
    }
}

/// The `Version` property of NetworkManager on the bus at `address`, or on the system bus
/// (`DBUS_SYSTEM_BUS_ADDRESS` if set) when `address` is `None`.
pub async fn version(address: Option<&str>) -> Result<String, NetworkManagerError> {
    let connection = connect(address).await?;
    let proxy = proxy(&connection, OBJECT_PATH, BUS_NAME).await?;
    Ok(proxy.get_property::<String>("Version").await?)
}

/// What NetworkManager announces it can do, in its `VersionInfo` property (NetworkManager 1.42
/// and later; older ones announce nothing): the encoded version, then a bit field of
/// `NM_VERSION_INFO_CAPABILITY_*`. nmstate decides by these bits, not by version numbers.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Capabilities {
    /// `ipv4.forwarding` per interface (`NM_VERSION_INFO_CAPABILITY_IP4_FORWARDING`,
    /// NetworkManager 1.54). Without it nmstate drops the property with a warning ("Clearing
    /// unsupported ipv4.forwarding") and its verification then fails, unless the interface
    /// already forwarded as asked.
    pub ipv4_forwarding: bool,
}

/// The NetworkManager release that brought per-interface IPv4 forwarding, for messages.
pub const IPV4_FORWARDING_SINCE: Version = Version::new(1, 54, 0);

const CAPABILITY_IP4_FORWARDING: usize = 1;

impl Capabilities {
    /// From the `VersionInfo` array: `[encoded version, capability bits 0-31, bits 32-63, ...]`.
    pub fn from_version_info(version_info: &[u32]) -> Capabilities {
        let has = |capability: usize| {
            version_info
                .get(1 + capability / 32)
                .is_some_and(|bits| bits & (1 << (capability % 32)) != 0)
        };
        Capabilities {
            ipv4_forwarding: has(CAPABILITY_IP4_FORWARDING),
        }
    }
}

/// NetworkManager's capabilities; none where it is too old to announce them.
pub async fn capabilities(address: Option<&str>) -> Result<Capabilities, NetworkManagerError> {
    let connection = connect(address).await?;
    let proxy = proxy(&connection, OBJECT_PATH, BUS_NAME).await?;
    match proxy.get_property::<Vec<u32>>("VersionInfo").await {
        Ok(version_info) => Ok(Capabilities::from_version_info(&version_info)),
        // Before 1.42 there is no such property.
        Err(zbus::Error::FDO(_) | zbus::Error::MethodError(..)) => Ok(Capabilities::default()),
        Err(error) => Err(error.into()),
    }
}

/// The checkpoints NetworkManager holds (object paths). A checkpoint is a change applied but
/// not yet committed: NetworkManager rolls it back when its timeout expires.
pub async fn checkpoints(address: Option<&str>) -> Result<Vec<String>, NetworkManagerError> {
    let connection = connect(address).await?;
    let proxy = proxy(&connection, OBJECT_PATH, BUS_NAME).await?;
    let paths: Vec<zbus::zvariant::OwnedObjectPath> = proxy.get_property("Checkpoints").await?;
    Ok(paths.into_iter().map(|path| path.to_string()).collect())
}

/// NetworkManager's global DNS configuration (the `GlobalDnsConfiguration` property, `a{sv}`),
/// where nmstate stores `dns-resolver` settings. A checkpoint does not cover it, so a rollback
/// must put it back itself.
pub type GlobalDns = std::collections::HashMap<String, zbus::zvariant::OwnedValue>;

pub async fn global_dns(address: Option<&str>) -> Result<GlobalDns, NetworkManagerError> {
    let connection = connect(address).await?;
    let proxy = proxy(&connection, OBJECT_PATH, BUS_NAME).await?;
    Ok(proxy.get_property("GlobalDnsConfiguration").await?)
}

pub async fn set_global_dns(address: Option<&str>, value: GlobalDns) -> Result<(), NetworkManagerError> {
    let connection = connect(address).await?;
    let proxy = proxy(&connection, OBJECT_PATH, BUS_NAME).await?;
    proxy
        .set_property("GlobalDnsConfiguration", value)
        .await
        .map_err(zbus::Error::from)?;
    Ok(())
}

/// One entry of NetworkManager's running DNS configuration (DnsManager `Configuration`).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct DnsEntry {
    pub name_servers: Vec<String>,
    /// Empty for the global configuration.
    pub interface: String,
    pub priority: i32,
}

/// The name servers the node uses, as nmstate reads them for `dns-resolver.running`: one
/// D-Bus property instead of a whole state retrieval, so the DNS probe is cheap to repeat.
pub async fn running_dns_servers(address: Option<&str>) -> Result<Vec<String>, NetworkManagerError> {
    type Entry = std::collections::HashMap<String, zbus::zvariant::OwnedValue>;
    let connection = connect(address).await?;
    let interface = "org.freedesktop.NetworkManager.DnsManager";
    let path = "/org/freedesktop/NetworkManager/DnsManager";
    let proxy = proxy(&connection, path, interface).await?;
    let entries: Vec<Entry> = proxy.get_property("Configuration").await?;
    let text = |entry: &Entry, key: &str| -> Option<String> {
        entry
            .get(key)
            .and_then(|value| String::try_from(value.try_clone().ok()?).ok())
    };
    let entries = entries
        .iter()
        .map(|entry| DnsEntry {
            name_servers: entry
                .get("nameservers")
                .and_then(|value| Vec::<String>::try_from(value.try_clone().ok()?).ok())
                .unwrap_or_default(),
            interface: text(entry, "interface").unwrap_or_default(),
            priority: entry
                .get("priority")
                .and_then(|value| i32::try_from(value).ok())
                .unwrap_or_default(),
        })
        .collect();
    Ok(servers_in_use(entries))
}

/// nmstate's reading of the entries: by priority; global servers alone if there are any,
/// otherwise every connection's, up to the first entry with a negative priority.
pub fn servers_in_use(mut entries: Vec<DnsEntry>) -> Vec<String> {
    entries.sort_by_key(|entry| entry.priority);
    let global: Vec<String> = entries
        .iter()
        .filter(|entry| entry.interface.is_empty())
        .flat_map(|entry| entry.name_servers.clone())
        .collect();
    if !global.is_empty() {
        return global;
    }
    let mut servers = Vec::new();
    for entry in entries {
        servers.extend(entry.name_servers);
        if entry.priority < 0 {
            break;
        }
    }
    servers
}

/// A stream with one item per D-Bus signal of a change to the network from NetworkManager's
/// objects: devices added or removed, state and property changes (including links created
/// behind its back, which it picks up from the kernel); not its checkpoints. It ends when the
/// bus connection closes.
pub async fn change_signals(
    address: Option<&str>,
) -> Result<impl Stream<Item = ()> + Unpin + Send, NetworkManagerError> {
    // Its own connection: the stream ends when it closes, and no call shares its queue.
    let connection = connect_new(address).await?;
    // By object path, not by sender: signals carry NetworkManager's unique bus name, which
    // zbus's client-side matching would not equate with its well-known name.
    let rule = zbus::MatchRule::builder()
        .msg_type(zbus::message::Type::Signal)
        .path_namespace(OBJECT_PATH)?
        .build();
    let signals = zbus::MessageStream::for_match_rule(rule, &connection, Some(1024)).await?;
    Ok(signals.filter_map(|signal| {
        let change = !signal.is_ok_and(|signal| about_checkpoints_only(&signal));
        future::ready(change.then_some(()))
    }))
}

/// Whether `signal` is only about NetworkManager's checkpoints (one created, extended, committed
/// or rolled back): the handler's own bookkeeping around a change, not a change to the network.
fn about_checkpoints_only(signal: &zbus::Message) -> bool {
    let header = signal.header();
    let Some(path) = header.path() else { return false };
    if path.as_str().starts_with(CHECKPOINT_PATH) {
        return true;
    }
    let properties_changed = header
        .member()
        .is_some_and(|member| member.as_str() == "PropertiesChanged");
    if path.as_str() != OBJECT_PATH || !properties_changed {
        return false;
    }
    type PropertiesChanged = (String, HashMap<String, zbus::zvariant::OwnedValue>, Vec<String>);
    signal
        .body()
        .deserialize::<PropertiesChanged>()
        .is_ok_and(|(_, changed, invalidated)| {
            invalidated.is_empty() && changed.keys().all(|name| name == "Checkpoints")
        })
}

/// A proxy for `interface` of NetworkManager's object at `path` that reads each property as it
/// is now. zbus's default proxy caches properties: its first read fetches every property of
/// the object (`GetAll`, a large reply for NetworkManager's main object) and subscribes to
/// their changes, several round trips for the one property each call here reads once.
async fn proxy<'a>(
    connection: &zbus::Connection,
    path: &'a str,
    interface: &'a str,
) -> Result<zbus::Proxy<'a>, zbus::Error> {
    let builder = zbus::proxy::Builder::<zbus::Proxy<'a>>::new(connection)
        .destination(BUS_NAME)?
        .path(path)?
        .interface(interface)?
        .cache_properties(zbus::proxy::CacheProperties::No);
    builder.build().await
}

/// The system bus connection the calls here share. Connecting (the socket, authentication,
/// `Hello`) costs more than the one property most calls read, and an apply makes several. A
/// closed one (the bus restarted) is replaced at the next call. A task of the runtime that
/// first connects drives it: the handler has one runtime for its life.
static SYSTEM_BUS: tokio::sync::Mutex<Option<zbus::Connection>> = tokio::sync::Mutex::const_new(None);

/// A connection to the bus at `address`, or the shared one to the system bus.
async fn connect(address: Option<&str>) -> Result<zbus::Connection, zbus::Error> {
    if address.is_some() {
        return connect_new(address).await;
    }
    let mut shared = SYSTEM_BUS.lock().await;
    if let Some(connection) = shared.as_ref().filter(|connection| !connection.is_closed()) {
        return Ok(connection.clone());
    }
    let connection = connect_new(None).await?;
    *shared = Some(connection.clone());
    Ok(connection)
}

/// A connection of its own to the bus at `address`, or to the system bus.
async fn connect_new(address: Option<&str>) -> Result<zbus::Connection, zbus::Error> {
    match address {
        Some(address) => zbus::connection::Builder::address(address)?.build().await,
        None => zbus::Connection::system().await,
    }
}

/// Parses NetworkManager's version leniently: distributions append build suffixes
/// (`1.46.0-26.el9_4`, `1.42.4-1+deb12u1`) and development builds can lack a patch number.
pub fn parse_version(text: &str) -> Result<Version, NetworkManagerError> {
    let unparsable = || NetworkManagerError::UnparsableVersion(text.to_string());
    let numeric: &str = text
        .trim()
        .split(|c: char| !(c.is_ascii_digit() || c == '.'))
        .next()
        .ok_or_else(unparsable)?;
    let mut parts = numeric
        .split('.')
        .filter(|part| !part.is_empty())
        .map(str::parse::<u64>);
    let major = parts.next().ok_or_else(unparsable)?.map_err(|_| unparsable())?;
    let minor = parts.next().unwrap_or(Ok(0)).map_err(|_| unparsable())?;
    let patch = parts.next().unwrap_or(Ok(0)).map_err(|_| unparsable())?;
    Ok(Version::new(major, minor, patch))
}

/// Fails with a message naming the found and required versions when `found` is too old.
pub fn check_supported(found: &str) -> Result<Version, NetworkManagerError> {
    let version = parse_version(found)?;
    if version < MINIMUM_VERSION {
        return Err(NetworkManagerError::Unsupported { found: version });
    }
    Ok(version)
}

#[cfg(test)]
mod tests {
    use super::*;
    use zbus::zvariant::Value;

    #[test]
    fn checkpoint_signals_are_not_changes_to_the_network() {
        let properties_changed = |path: &str, changed: &[&str], invalidated: &[&str]| {
            let changed: HashMap<&str, Value> =
                changed.iter().map(|name| (*name, Value::from(0u32))).collect();
            let body = ("org.freedesktop.NetworkManager", changed, invalidated.to_vec());
            zbus::Message::signal(path, "org.freedesktop.DBus.Properties", "PropertiesChanged")
                .unwrap()
                .build(&body)
                .unwrap()
        };
        let device_added = zbus::Message::signal(OBJECT_PATH, BUS_NAME, "DeviceAdded")
            .unwrap()
            .build(&(
                zbus::zvariant::ObjectPath::try_from("/org/freedesktop/NetworkManager/Devices/3").unwrap(),
            ))
            .unwrap();
        let cases = [
            (
                properties_changed(OBJECT_PATH, &["Checkpoints"], &[]),
                true,
                "a checkpoint created or gone",
            ),
            (
                properties_changed(
                    "/org/freedesktop/NetworkManager/Checkpoint/4",
                    &["RollbackTimeout"],
                    &[],
                ),
                true,
                "a checkpoint extended",
            ),
            (
                properties_changed(OBJECT_PATH, &["Checkpoints", "ActiveConnections"], &[]),
                false,
                "with a change beside it",
            ),
            (
                properties_changed(OBJECT_PATH, &["Checkpoints"], &["Devices"]),
                false,
                "with a property invalidated",
            ),
            (
                properties_changed(OBJECT_PATH, &["AllDevices"], &[]),
                false,
                "another property",
            ),
            (
                properties_changed("/org/freedesktop/NetworkManager/Devices/3", &["State"], &[]),
                false,
                "a device",
            ),
            (device_added, false, "another signal at the root"),
        ];
        for (signal, expected, case) in cases {
            assert_eq!(about_checkpoints_only(&signal), expected, "{case}");
        }
    }

    #[test]
    fn global_name_servers_win_and_a_negative_priority_ends_the_list() {
        let entry = |servers: &[&str], interface: &str, priority: i32| DnsEntry {
            name_servers: servers.iter().map(|s| s.to_string()).collect(),
            interface: interface.into(),
            priority,
        };
        let per_connection = vec![
            entry(&["10.77.1.1"], "eth1", 100),
            entry(&["10.77.0.1"], "eth0", 50),
        ];
        assert_eq!(servers_in_use(per_connection.clone()), ["10.77.0.1", "10.77.1.1"]);
        let mut with_global = per_connection.clone();
        with_global.push(entry(&["192.0.2.251"], "", 0));
        assert_eq!(servers_in_use(with_global), ["192.0.2.251"]);
        let mut exclusive = per_connection;
        exclusive.push(entry(&["10.77.2.1"], "eth2", -10));
        assert_eq!(servers_in_use(exclusive), ["10.77.2.1"]);
    }

    #[test]
    fn versions_parse_with_distribution_suffixes() {
        for (text, expected) in [
            ("1.42.4", Version::new(1, 42, 4)),
            ("1.46.0-26.el9_4", Version::new(1, 46, 0)),
            ("1.42.4-1+deb12u1", Version::new(1, 42, 4)),
            ("1.51", Version::new(1, 51, 0)),
            (" 1.22.0\n", Version::new(1, 22, 0)),
        ] {
            assert_eq!(parse_version(text).unwrap(), expected, "{text:?}");
        }
        for text in ["", "abc", "-1.2"] {
            assert!(parse_version(text).is_err(), "{text:?}");
        }
    }

    #[test]
    fn capabilities_are_read_from_the_bits_after_the_version() {
        let version_1_42 = (1 << 16) | (42 << 8) | 4;
        let version_1_54 = (1 << 16) | (54 << 8);
        assert_eq!(
            Capabilities::from_version_info(&[version_1_42, 0b01]),
            Capabilities::default(),
            "1.42 has only capability 0 (routes synced with their table)"
        );
        assert!(Capabilities::from_version_info(&[version_1_54, 0b11]).ipv4_forwarding);
        assert!(!Capabilities::from_version_info(&[version_1_54]).ipv4_forwarding);
        assert!(!Capabilities::from_version_info(&[]).ipv4_forwarding);
    }

    #[test]
    fn versions_before_1_22_are_refused_with_both_versions_named() {
        assert_eq!(check_supported("1.22.0").unwrap(), MINIMUM_VERSION);
        assert!(check_supported("1.42.4").is_ok());
        let error = check_supported("1.20.8").unwrap_err().to_string();
        assert!(error.contains("1.20.8") && error.contains("1.22.0"), "{error}");
    }
}
