//! `NodeNetworkIPPool` (`nnip`): addresses that policies hand out to nodes, one per node, policy
//! and variable (`spec.variables.<name>.fromIPPool`). Allocations live in the pool's status, so
//! they survive handler restarts and reboots; the status is written with the object's
//! resourceVersion, so two nodes never get the same address.

use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use std::net::IpAddr;

/// A range of addresses on one subnet, handed out to nodes.
#[derive(CustomResource, Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "nmstate.io",
    version = "v1",
    kind = "NodeNetworkIPPool",
    plural = "nodenetworkippools",
    doc = "NodeNetworkIPPool is a range of addresses that policies allocate to nodes, one per node, policy and variable.",
    singular = "nodenetworkippool",
    shortname = "nnip",
    status = "NodeNetworkIPPoolStatus",
    printcolumn = r#"{"name": "CIDR", "type": "string", "jsonPath": ".spec.cidr"}"#,
    printcolumn = r#"{"name": "Allocated", "type": "integer", "jsonPath": ".status.allocated"}"#,
    printcolumn = r#"{"name": "Size", "type": "integer", "jsonPath": ".status.size"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct NodeNetworkIPPoolSpec {
    /// The subnet, e.g. `192.0.2.0/24` or `2001:db8::/64`; its prefix length is what
    /// `{{ var.<name>.prefix }}` gives.
    #[schemars(length(min = 3, max = 43))]
    pub cidr: String,
    /// The first address handed out. Default: the first host address of the subnet.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 39))]
    pub start: Option<String>,
    /// The last address handed out. Default: the last host address of the subnet.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 39))]
    pub end: Option<String>,
    /// The subnet's gateway, given as `{{ var.<name>.gateway }}`; never handed out.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 39))]
    pub gateway: Option<String>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct NodeNetworkIPPoolStatus {
    /// The addresses handed out, each to one node for one policy's variable.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allocations: Vec<IPAllocation>,
    /// How many addresses are handed out.
    #[serde(default)]
    pub allocated: u32,
    /// How many addresses the pool can hand out.
    #[serde(default)]
    pub size: u64,
}

impl NodeNetworkIPPoolStatus {
    /// Brings `allocated` in line with the allocations, after they changed.
    pub fn recount(&mut self) {
        self.allocated = u32::try_from(self.allocations.len()).unwrap_or(u32::MAX);
    }
}

/// One address handed out.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct IPAllocation {
    pub address: String,
    pub node: String,
    pub policy: String,
    pub variable: String,
}

/// What is wrong with a pool's spec, in words that name the field.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("spec.{field} {value:?}: {problem}")]
pub struct PoolSpecError {
    pub field: &'static str,
    pub value: String,
    pub problem: String,
}

/// A pool's subnet and range, parsed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PoolRange {
    pub prefix: u8,
    pub gateway: Option<IpAddr>,
    first: u128,
    last: u128,
    ipv6: bool,
}

impl NodeNetworkIPPoolSpec {
    /// The subnet and range, checked: the range within the subnet, one address family.
    pub fn range(&self) -> Result<PoolRange, PoolSpecError> {
        let error = |field, value: &str, problem: &str| PoolSpecError {
            field,
            value: value.to_string(),
            problem: problem.to_string(),
        };
        let (address, prefix) = self.cidr.split_once('/').ok_or_else(|| {
            error(
                "cidr",
                &self.cidr,
                "expected an address and a prefix length, e.g. 192.0.2.0/24",
            )
        })?;
        let network: IpAddr = address
            .parse()
            .map_err(|_| error("cidr", &self.cidr, "not an IP address"))?;
        let ipv6 = network.is_ipv6();
        let bits: u8 = if ipv6 { 128 } else { 32 };
        let prefix: u8 = prefix
            .parse()
            .ok()
            .filter(|prefix| *prefix <= bits)
            .ok_or_else(|| error("cidr", &self.cidr, "the prefix length is out of range"))?;
        let host_bits = u32::from(bits - prefix);
        let mask = if host_bits >= 128 {
            u128::MAX
        } else {
            (1u128 << host_bits) - 1
        };
        let base = to_number(network) & !mask;
        let top = base | mask;
        // Without a range: the host addresses (IPv4 leaves out the network and broadcast
        // addresses of subnets that have them).
        let (mut first, mut last) = if !ipv6 && host_bits >= 2 {
            (base + 1, top - 1)
        } else {
            (base, top)
        };
        let parse = |field, value: &Option<String>| -> Result<Option<u128>, PoolSpecError> {
            let Some(value) = value else { return Ok(None) };
            let address: IpAddr = value
                .parse()
                .map_err(|_| error(field, value, "not an IP address"))?;
            let number = to_number(address);
            if address.is_ipv6() != ipv6 || number < base || number > top {
                return Err(error(field, value, &format!("not in spec.cidr {}", self.cidr)));
            }
            Ok(Some(number))
        };
        if let Some(start) = parse("start", &self.start)? {
            first = start;
        }
        if let Some(end) = parse("end", &self.end)? {
            last = end;
        }
        if first > last {
            return Err(error(
                "end",
                self.end.as_deref().unwrap_or_default(),
                "before spec.start",
            ));
        }
        let gateway = parse("gateway", &self.gateway)?.map(|number| from_number(number, ipv6));
        Ok(PoolRange {
            prefix,
            gateway,
            first,
            last,
            ipv6,
        })
    }
}

impl PoolRange {
    /// How many addresses the pool can hand out.
    pub fn size(&self) -> u64 {
        let gateway_inside = self
            .gateway
            .is_some_and(|gateway| (self.first..=self.last).contains(&to_number(gateway)));
        // `::/0` holds 2^128 addresses, one more than a u128 counts (found by fuzzing); a size
        // that large is reported as u64::MAX anyway.
        let count = (self.last - self.first)
            .saturating_add(1)
            .saturating_sub(u128::from(gateway_inside));
        u64::try_from(count).unwrap_or(u64::MAX)
    }

    /// The first address that is neither taken nor the gateway.
    pub fn first_free(&self, taken: &[IpAddr]) -> Option<IpAddr> {
        let taken: std::collections::BTreeSet<u128> = taken
            .iter()
            .chain(self.gateway.as_ref())
            .map(|address| to_number(*address))
            .collect();
        let mut candidate = self.first;
        // The taken addresses are at most as many as the nodes: this loop is short.
        loop {
            if !taken.contains(&candidate) {
                return Some(from_number(candidate, self.ipv6));
            }
            if candidate == self.last {
                return None;
            }
            candidate += 1;
        }
    }
}

fn to_number(address: IpAddr) -> u128 {
    match address {
        IpAddr::V4(v4) => u128::from(u32::from(v4)),
        IpAddr::V6(v6) => u128::from(v6),
    }
}

fn from_number(number: u128, ipv6: bool) -> IpAddr {
    if ipv6 {
        IpAddr::V6(number.into())
    } else {
        IpAddr::V4(u32::try_from(number).unwrap_or(u32::MAX).into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pool(
        cidr: &str,
        start: Option<&str>,
        end: Option<&str>,
        gateway: Option<&str>,
    ) -> NodeNetworkIPPoolSpec {
        NodeNetworkIPPoolSpec {
            cidr: cidr.into(),
            start: start.map(Into::into),
            end: end.map(Into::into),
            gateway: gateway.map(Into::into),
        }
    }

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    #[test]
    fn ranges_sizes_and_free_addresses() {
        let table: [(NodeNetworkIPPoolSpec, u64, Option<&str>, &[&str]); 8] = [
            (
                pool("10.77.2.0/24", None, None, None),
                254,
                Some("10.77.2.1"),
                &[],
            ),
            (
                pool("10.77.2.0/24", None, None, Some("10.77.2.1")),
                253,
                Some("10.77.2.2"),
                &[],
            ),
            (
                pool("10.77.2.0/24", Some("10.77.2.20"), Some("10.77.2.21"), None),
                2,
                Some("10.77.2.21"),
                &["10.77.2.20"],
            ),
            (
                pool("10.77.2.0/24", Some("10.77.2.20"), Some("10.77.2.21"), None),
                2,
                None,
                &["10.77.2.21", "10.77.2.20"],
            ),
            (pool("192.0.2.7/32", None, None, None), 1, Some("192.0.2.7"), &[]),
            (
                pool("2001:db8::/126", None, None, Some("2001:db8::1")),
                3,
                Some("2001:db8::2"),
                &["2001:db8::"],
            ),
            // The whole address space of each family.
            (
                pool("2001:db8::/0", None, None, Some("::1")),
                u64::MAX,
                Some("::"),
                &[],
            ),
            (
                pool("0.0.0.0/0", None, None, None),
                (1 << 32) - 2,
                Some("0.0.0.1"),
                &[],
            ),
        ];
        for (spec, size, free, taken) in table {
            let range = spec.range().unwrap();
            assert_eq!(range.size(), size, "{spec:?}");
            let taken: Vec<IpAddr> = taken.iter().map(|text| ip(text)).collect();
            assert_eq!(range.first_free(&taken), free.map(ip), "{spec:?}");
        }
        assert_eq!(pool("10.77.2.0/24", None, None, None).range().unwrap().prefix, 24);
    }

    #[test]
    fn bad_specs_name_the_field() {
        let table = [
            (
                pool("10.77.2.0", None, None, None),
                "spec.cidr \"10.77.2.0\": expected an address and a prefix length, e.g. 192.0.2.0/24",
            ),
            (
                pool("10.77.2.0/33", None, None, None),
                "spec.cidr \"10.77.2.0/33\": the prefix length is out of range",
            ),
            (
                pool("10.77.2.0/24", Some("10.77.3.1"), None, None),
                "spec.start \"10.77.3.1\": not in spec.cidr 10.77.2.0/24",
            ),
            (
                pool("10.77.2.0/24", None, Some("2001:db8::1"), None),
                "spec.end \"2001:db8::1\": not in spec.cidr 10.77.2.0/24",
            ),
            (
                pool("10.77.2.0/24", Some("10.77.2.9"), Some("10.77.2.8"), None),
                "spec.end \"10.77.2.8\": before spec.start",
            ),
            (
                pool("10.77.2.0/24", None, None, Some("gw")),
                "spec.gateway \"gw\": not an IP address",
            ),
        ];
        for (spec, message) in table {
            assert_eq!(spec.range().unwrap_err().to_string(), message);
        }
    }
}
