//! The CNI result vpcnet prints on ADD, in the shape of the requested cniVersion, and the
//! error result printed on failure.

use std::net::Ipv4Addr;

use serde_json::{json, Map, Value};

use vpcnet_proto::naming::format_mac;

use crate::error::CniError;
use crate::version::Spec;

pub use vpcnet_proto::attachment::GATEWAY;

/// What ADD set up, enough to build (or check) the result.
#[derive(Clone, Debug)]
pub struct Wired {
    pub host_veth: String,
    pub host_mac: [u8; 6],
    pub ifname: String,
    pub pod_mac: [u8; 6],
    pub netns: String,
    pub ip: Ipv4Addr,
    pub mtu: Option<u32>,
    /// This interface owns the pod's default route (it is `eth0`): the result lists the
    /// route. Other interfaces get no routes and their results list none.
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
    let mut ips = take_array(&mut out, "ips");
    ips.push(json!({
        "address": format!("{}/32", wired.ip),
        "gateway": GATEWAY.to_string(),
        "interface": pod_index,
    }));
    let mut routes = take_array(&mut out, "routes");
    if wired.default_route {
        routes.push(json!({ "dst": "0.0.0.0/0", "gw": GATEWAY.to_string() }));
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

/// Our IPv4 address in a (prev)result, for CHECK: the /32 on the interface named `ifname`.
pub fn our_ip(result: &Value, ifname: &str) -> Option<Ipv4Addr> {
    let interfaces = result.get("interfaces")?.as_array()?;
    result.get("ips")?.as_array()?.iter().find_map(|ip| {
        let idx = usize::try_from(ip.get("interface")?.as_u64()?).ok()?;
        let name = interfaces.get(idx)?.get("name")?.as_str()?;
        if name != ifname {
            return None;
        }
        let addr = ip.get("address")?.as_str()?;
        let (a, len) = addr.split_once('/')?;
        if len != "32" {
            return None;
        }
        a.parse().ok()
    })
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
            ip: Ipv4Addr::new(10, 0, 0, 5),
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
        assert_eq!(our_ip(&r, "eth0"), Some(Ipv4Addr::new(10, 0, 0, 5)));
        assert_eq!(our_ip(&r, "eth1"), None);
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
}
