//! The CNI result vpcnet prints on ADD, in the shape of the requested cniVersion, and the
//! error result printed on failure.

use std::net::{Ipv4Addr, Ipv6Addr};

use serde_json::{json, Map, Value};

use vpcnet_proto::naming::format_mac;

use crate::error::CniError;
use crate::version::Spec;

pub use vpcnet_proto::attachment::{GATEWAY, GATEWAY6};

/// What ADD set up, enough to build (or check) the result.
#[derive(Clone, Debug)]
pub struct Wired {
    pub host_veth: String,
    pub host_mac: [u8; 6],
    pub ifname: String,
    pub pod_mac: [u8; 6],
    pub netns: String,
    /// The IPv4 address, when the node serves IPv4.
    pub ip: Option<Ipv4Addr>,
    /// The IPv6 address, when the node serves IPv6 (dual-stack, issue 11).
    pub ip6: Option<Ipv6Addr>,
    pub mtu: Option<u32>,
    /// This interface owns the pod's default route (it is `eth0`): the result lists the
    /// default route of each family it has. Other interfaces get no routes and their results
    /// list none.
    pub default_route: bool,
}

/// Builds the ADD result. When chained after another plugin, `prev` is its result: ours is
/// appended to it (interfaces, ips and routes), so nothing it reported is lost.
pub fn add_result(cni_version: &str, spec: Spec, wired: &Wired, prev: Option<&Value>) -> Value {
    let mut out = match prev {
        Some(Value::Object(m)) => m.clone(),
        _ => Map::new(),
    };
    let mut interfaces = take_array(&mut out, "interfaces");
    let mut host = json!({ "name": wired.host_veth, "mac": format_mac(&wired.host_mac) });
    let mut pod = json!({
        "name": wired.ifname,
        "mac": format_mac(&wired.pod_mac),
        "sandbox": wired.netns,
    });
    if spec >= Spec::V11 {
        if let Some(mtu) = wired.mtu {
            host["mtu"] = json!(mtu);
            pod["mtu"] = json!(mtu);
        }
    }
    interfaces.push(host);
    interfaces.push(pod);
    let pod_index = interfaces.len() - 1;
    // IPv4 first, then IPv6: the runtime takes the first as the pod's primary IP
    // (containerd: `ip`, then `additionalIps`).
    let mut ips = take_array(&mut out, "ips");
    if let Some(ip) = wired.ip {
        ips.push(json!({
            "address": format!("{ip}/32"),
            "gateway": GATEWAY.to_string(),
            "interface": pod_index,
        }));
    }
    if let Some(ip6) = wired.ip6 {
        ips.push(json!({
            "address": format!("{ip6}/128"),
            "gateway": GATEWAY6.to_string(),
            "interface": pod_index,
        }));
    }
    let mut routes = take_array(&mut out, "routes");
    if wired.default_route {
        if wired.ip.is_some() {
            routes.push(json!({ "dst": "0.0.0.0/0", "gw": GATEWAY.to_string() }));
        }
        if wired.ip6.is_some() {
            routes.push(json!({ "dst": "::/0", "gw": GATEWAY6.to_string() }));
        }
    }
    out.insert("interfaces".into(), Value::Array(interfaces));
    out.insert("ips".into(), Value::Array(ips));
    out.insert("routes".into(), Value::Array(routes));
    out.entry("dns").or_insert_with(|| json!({}));
    convert(Value::Object(out), cni_version, spec)
}

/// Re-shapes a result for `spec`: 0.3.x/0.4.0 carry `ips[].version`, 1.x do not.
pub fn convert(mut result: Value, cni_version: &str, spec: Spec) -> Value {
    if let Some(ips) = result.get_mut("ips").and_then(Value::as_array_mut) {
        for ip in ips.iter_mut().filter_map(Value::as_object_mut) {
            if spec == Spec::V03 {
                let v6 = ip
                    .get("address")
                    .and_then(Value::as_str)
                    .is_some_and(|a| a.contains(':'));
                ip.insert("version".into(), json!(if v6 { "6" } else { "4" }));
            } else {
                ip.remove("version");
            }
        }
    }
    if let Some(m) = result.as_object_mut() {
        m.insert("cniVersion".into(), json!(cni_version));
    }
    result
}

/// Takes `key` out of `m` as an array (a missing or malformed one becomes empty).
fn take_array(m: &mut Map<String, Value>, key: &str) -> Vec<Value> {
    match m.remove(key) {
        Some(Value::Array(a)) => a,
        _ => Vec::new(),
    }
}

/// `{cniVersion, code, msg, details}` as the spec wants it on stdout.
pub fn error_result(cni_version: &str, err: &CniError) -> Value {
    json!({ "cniVersion": cni_version, "code": err.code(), "msg": err.to_string() })
}

/// Our addresses in a (prev)result, for CHECK: the `/32` (IPv4) and the `/128` (IPv6) on the
/// interface named `ifname`, each `None` when the result lists none.
pub fn our_ips(result: &Value, ifname: &str) -> (Option<Ipv4Addr>, Option<Ipv6Addr>) {
    let mut v4 = None;
    let mut v6 = None;
    for (addr, len) in addresses_on(result, ifname) {
        match (addr.parse::<Ipv4Addr>(), addr.parse::<Ipv6Addr>(), len) {
            (Ok(a), _, "32") if v4.is_none() => v4 = Some(a),
            (_, Ok(a), "128") if v6.is_none() => v6 = Some(a),
            _ => {}
        }
    }
    (v4, v6)
}

/// The `(address, prefix length)` texts of every `ips[]` entry on interface `ifname`.
fn addresses_on<'a>(result: &'a Value, ifname: &str) -> Vec<(&'a str, &'a str)> {
    let Some(interfaces) = result.get("interfaces").and_then(Value::as_array) else {
        return Vec::new();
    };
    let Some(ips) = result.get("ips").and_then(Value::as_array) else {
        return Vec::new();
    };
    ips.iter()
        .filter_map(|ip| {
            let idx = usize::try_from(ip.get("interface")?.as_u64()?).ok()?;
            let name = interfaces.get(idx)?.get("name")?.as_str()?;
            if name != ifname {
                return None;
            }
            ip.get("address")?.as_str()?.split_once('/')
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn wired() -> Wired {
        Wired {
            host_veth: "vpc0123456789a".into(),
            host_mac: [2, 0, 0, 0, 0, 1],
            ifname: "eth0".into(),
            pod_mac: [2, 0, 0, 0, 0, 2],
            netns: "/var/run/netns/p".into(),
            ip: Some(Ipv4Addr::new(10, 0, 0, 5)),
            ip6: None,
            mtu: Some(1500),
            default_route: true,
        }
    }

    #[test]
    fn shapes_per_version() {
        let r = add_result("1.1.0", Spec::V11, &wired(), None);
        assert_eq!(r["cniVersion"], "1.1.0");
        assert_eq!(r["ips"][0]["address"], "10.0.0.5/32");
        assert_eq!(r["ips"][0]["interface"], 1);
        assert!(r["ips"][0].get("version").is_none());
        assert_eq!(r["interfaces"][1]["sandbox"], "/var/run/netns/p");
        assert_eq!(r["interfaces"][1]["mtu"], 1500);
        let old = add_result("0.4.0", Spec::V03, &wired(), None);
        assert_eq!(old["ips"][0]["version"], "4");
        assert!(old["interfaces"][1].get("mtu").is_none());
        assert_eq!(
            our_ips(&r, "eth0"),
            (Some(Ipv4Addr::new(10, 0, 0, 5)), None)
        );
        assert_eq!(our_ips(&r, "eth1"), (None, None));
        assert_eq!(r["routes"][0]["dst"], "0.0.0.0/0");
        let secondary = Wired {
            ifname: "net1".into(),
            default_route: false,
            ..wired()
        };
        let r = add_result("1.1.0", Spec::V11, &secondary, None);
        assert_eq!(r["routes"].as_array().map(Vec::len), Some(0));
    }

    #[test]
    fn chained_result_keeps_previous() {
        let prev = json!({"cniVersion":"1.0.0","interfaces":[{"name":"x"}],"ips":[{"address":"10.9.0.1/24","interface":0}],"dns":{"nameservers":["1.1.1.1"]}});
        let r = add_result("1.0.0", Spec::V10, &wired(), Some(&prev));
        assert_eq!(r["interfaces"].as_array().map(Vec::len), Some(3));
        assert_eq!(r["ips"][1]["interface"], 2);
        assert_eq!(r["dns"]["nameservers"][0], "1.1.1.1");
    }

    fn dual() -> Wired {
        Wired {
            ip6: Some(Ipv6Addr::new(0xfd00, 0x10, 0, 0, 0, 0, 0, 5)),
            ..wired()
        }
    }

    /// Every cniVersion the plugin speaks has `ips[]`: both addresses on the pod interface
    /// (index 1), IPv4 first, each with its gateway; both default routes; 0.3.x/0.4.0 tag each
    /// address with its family. (0.2.0, the `ip4`/`ip6` shape, is refused: `version::parse`.)
    #[test]
    fn dual_stack_in_every_version() {
        for v in crate::version::SUPPORTED {
            let spec = crate::version::parse(v).expect("supported");
            let r = add_result(v, spec, &dual(), None);
            assert_eq!(r["cniVersion"], *v);
            let ips = r["ips"].as_array().expect("ips");
            assert_eq!(ips.len(), 2, "{v}: {r}");
            assert_eq!(ips[0]["address"], "10.0.0.5/32", "{v}");
            assert_eq!(ips[0]["gateway"], "169.254.1.1", "{v}");
            assert_eq!(ips[1]["address"], "fd00:10::5/128", "{v}");
            assert_eq!(ips[1]["gateway"], "fe80::1", "{v}");
            assert!(ips.iter().all(|ip| ip["interface"] == 1), "{v}: {r}");
            assert_eq!(r["interfaces"][1]["name"], "eth0");
            if spec == Spec::V03 {
                assert_eq!(ips[0]["version"], "4", "{v}");
                assert_eq!(ips[1]["version"], "6", "{v}");
            } else {
                assert!(ips.iter().all(|ip| ip.get("version").is_none()), "{v}");
            }
            let routes = r["routes"].as_array().expect("routes");
            assert_eq!(
                routes,
                &vec![
                    json!({"dst": "0.0.0.0/0", "gw": "169.254.1.1"}),
                    json!({"dst": "::/0", "gw": "fe80::1"}),
                ],
                "{v}"
            );
            assert_eq!(
                our_ips(&r, "eth0"),
                (
                    Some(Ipv4Addr::new(10, 0, 0, 5)),
                    Some(Ipv6Addr::new(0xfd00, 0x10, 0, 0, 0, 0, 0, 5))
                )
            );
        }
    }

    #[test]
    fn ipv6_only_in_every_version() {
        let only6 = Wired { ip: None, ..dual() };
        for v in crate::version::SUPPORTED {
            let spec = crate::version::parse(v).expect("supported");
            let r = add_result(v, spec, &only6, None);
            let ips = r["ips"].as_array().expect("ips");
            assert_eq!(ips.len(), 1, "{v}: {r}");
            assert_eq!(ips[0]["address"], "fd00:10::5/128", "{v}");
            assert_eq!(ips[0]["gateway"], "fe80::1", "{v}");
            assert_eq!(ips[0]["interface"], 1, "{v}");
            if spec == Spec::V03 {
                assert_eq!(ips[0]["version"], "6", "{v}");
            }
            assert_eq!(
                r["routes"],
                json!([{"dst": "::/0", "gw": "fe80::1"}]),
                "{v}"
            );
            assert_eq!(
                our_ips(&r, "eth0"),
                (None, Some(Ipv6Addr::new(0xfd00, 0x10, 0, 0, 0, 0, 0, 5)))
            );
        }
        // A secondary interface: addresses, no routes.
        let net1 = Wired {
            ifname: "net1".into(),
            default_route: false,
            ..dual()
        };
        let r = add_result("1.1.0", Spec::V11, &net1, None);
        assert_eq!(r["ips"].as_array().map(Vec::len), Some(2));
        assert_eq!(r["routes"], json!([]));
    }

    /// The IPv4-only result is exactly what it was before dual-stack.
    #[test]
    fn ipv4_only_result_unchanged() {
        let r = add_result("1.0.0", Spec::V10, &wired(), None);
        assert_eq!(
            r,
            json!({
                "cniVersion": "1.0.0",
                "interfaces": [
                    {"name": "vpc0123456789a", "mac": "02:00:00:00:00:01"},
                    {"name": "eth0", "mac": "02:00:00:00:00:02", "sandbox": "/var/run/netns/p"}
                ],
                "ips": [{"address": "10.0.0.5/32", "gateway": "169.254.1.1", "interface": 1}],
                "routes": [{"dst": "0.0.0.0/0", "gw": "169.254.1.1"}],
                "dns": {}
            })
        );
    }

    #[test]
    fn our_ips_ignores_other_interfaces_and_lengths() {
        let r = json!({
            "interfaces": [{"name": "eth0"}, {"name": "net1"}],
            "ips": [
                {"address": "fd00::9/64", "interface": 0},
                {"address": "fd00::7/128", "interface": 1},
                {"address": "fd00::5/128", "interface": 0}
            ]
        });
        assert_eq!(
            our_ips(&r, "eth0"),
            (None, Some(Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 5)))
        );
    }
}
