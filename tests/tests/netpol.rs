//! NetworkPolicy on the real kernel (issue 13, the engine's foundation): the rules the
//! `vpcnet-policy` compiler and renderer make, applied with nft in a private "node" network
//! namespace whose pods are attached the way the plugin attaches them (host veth named by
//! `vpcnet_proto::naming`, `/32` host route, link-local gateway), plus one "remote" pod
//! behind an uplink. Every pair is probed on TCP and UDP ports 80 and 81 by real sockets in
//! the namespaces, the observed matrix printed against the expected one and asserted; then
//! the policies change (and a pod is relabelled), the new ruleset goes in as one transaction,
//! and the matrix follows. A transaction the kernel rejects leaves the old ruleset in force.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::networking::v1::NetworkPolicy;
use serde_json::{json, Value};
use vpcnet_policy::model::Labels;
use vpcnet_policy::{compile, ClusterView, LocalPod, NamedPort, NamespaceInfo, PodInfo, Protocol};
use vpcnet_tests::netns::{enter, Namespaces};
use vpcnet_tests::{in_netns, par_map, unique_prefix};

const PROBE_TIMEOUT: Duration = Duration::from_millis(300);
/// (protocol, port) probed for every pair.
const PROBES: [(&str, u16); 4] = [("tcp", 80), ("tcp", 81), ("udp", 80), ("udp", 81)];
const NODE_SRC: &str = "node";

/// One pod's namespace: `key` is `ns/pod`; `link` the node's end of its veth.
struct PodNs {
    key: &'static str,
    netns: String,
    ip: Ipv4Addr,
    link: String,
    alloc: vpcnet_pool::AllocKey,
}

struct World {
    node: String,
    pods: Vec<PodNs>,
    stop: Arc<AtomicBool>,
    servers: Vec<std::thread::JoinHandle<()>>,
    // Last: namespaces go after the servers stopped.
    _nss: Namespaces,
}

impl Drop for World {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        for h in self.servers.drain(..) {
            let _ = h.join();
        }
    }
}

fn ip_ok(netns: &str, args: &str) {
    let out = std::process::Command::new("ip")
        .arg("-n")
        .arg(netns)
        .args(args.split_whitespace())
        .output()
        .expect("run ip");
    assert!(
        out.status.success(),
        "ip -n {netns} {args}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Attaches pod namespace `pod` to node namespace `node` through `link` as the plugin does.
fn attach(node: &str, pod: &str, link: &str, mac: [u8; 6], ip: Ipv4Addr) {
    let mac = vpcnet_proto::naming::format_mac(&mac);
    let gw = vpcnet_proto::attachment::GATEWAY;
    ip_ok(
        node,
        &format!("link add {link} type veth peer name eth0 netns {pod}"),
    );
    ip_ok(node, &format!("link set {link} address {mac} up"));
    ip_ok(node, &format!("route add {ip}/32 dev {link} scope link"));
    ip_ok(pod, "link set lo up");
    ip_ok(pod, "link set eth0 up");
    ip_ok(pod, &format!("addr add {ip}/32 dev eth0"));
    ip_ok(
        pod,
        &format!("neigh add {gw} lladdr {mac} dev eth0 nud permanent"),
    );
    ip_ok(pod, &format!("route add {gw} dev eth0 scope link"));
    ip_ok(pod, &format!("route add default via {gw} dev eth0"));
}

/// TCP 80/81 greet, UDP 80/81 echo, inside `netns`, until `stop`.
fn serve(netns: String, stop: Arc<AtomicBool>) -> std::thread::JoinHandle<()> {
    let (tx, rx) = std::sync::mpsc::channel();
    let h = std::thread::spawn(move || {
        let setup = (|| -> std::io::Result<_> {
            enter(&netns)?;
            let mut tcp = Vec::new();
            let mut udp = Vec::new();
            for port in [80, 81] {
                let l = TcpListener::bind((Ipv4Addr::UNSPECIFIED, port))?;
                l.set_nonblocking(true)?;
                tcp.push(l);
                let u = UdpSocket::bind((Ipv4Addr::UNSPECIFIED, port))?;
                u.set_nonblocking(true)?;
                udp.push(u);
            }
            Ok((tcp, udp))
        })();
        let (tcp, udp) = match setup {
            Ok(s) => {
                let _ = tx.send(Ok(()));
                s
            }
            Err(e) => {
                let _ = tx.send(Err(format!("{netns}: {e}")));
                return;
            }
        };
        let mut buf = [0u8; 64];
        while !stop.load(Ordering::SeqCst) {
            let mut idle = true;
            for l in &tcp {
                if let Ok((mut s, _)) = l.accept() {
                    let _ = s.write_all(b"hi");
                    idle = false;
                }
            }
            for u in &udp {
                if let Ok((n, from)) = u.recv_from(&mut buf) {
                    let _ = u.send_to(&buf[..n], from);
                    idle = false;
                }
            }
            if idle {
                std::thread::sleep(Duration::from_millis(2));
            }
        }
    });
    match rx.recv() {
        Ok(Ok(())) => h,
        Ok(Err(e)) => panic!("server: {e}"),
        Err(_) => panic!("server thread died"),
    }
}

fn world() -> World {
    let p = unique_prefix();
    let node = format!("{p}n");
    let mut nss = Namespaces::default();
    let specs: [(&'static str, Ipv4Addr, bool); 4] = [
        ("x/a", Ipv4Addr::new(10, 0, 0, 10), true),
        ("x/b", Ipv4Addr::new(10, 0, 0, 11), true),
        ("y/a", Ipv4Addr::new(10, 0, 1, 10), true),
        // Another node's pod, behind this node's uplink.
        ("z/a", Ipv4Addr::new(10, 0, 2, 10), false),
    ];
    let pod_ns: Vec<String> = (0..specs.len()).map(|i| format!("{p}p{i}")).collect();
    nss.add_batch(std::iter::once(node.as_str()).chain(pod_ns.iter().map(String::as_str)));
    // Through /proc, not the `sysctl` tool (procps is not on a fresh machine).
    let forwarding = std::process::Command::new("ip")
        .args([
            "netns",
            "exec",
            &node,
            "sh",
            "-c",
            "echo 1 > /proc/sys/net/ipv4/ip_forward",
        ])
        .status()
        .expect("ip netns exec");
    assert!(forwarding.success(), "ip_forward in {node}");
    ip_ok(&node, "link set lo up");
    // The node's own address (what kubelet's probes come from).
    ip_ok(&node, "addr add 192.168.77.1/32 dev lo");
    let mut pods = Vec::new();
    for ((key, ip, local), netns) in specs.into_iter().zip(pod_ns) {
        let alloc = vpcnet_pool::AllocKey {
            network: "vpcnet".into(),
            container_id: format!("{p}-{}", key.replace('/', "-")),
            ifname: "eth0".into(),
        };
        let (link, mac) = if local {
            (
                vpcnet_proto::naming::key_host_veth(&alloc),
                vpcnet_proto::naming::host_veth_mac(&alloc.container_id, &alloc.ifname),
            )
        } else {
            ("up0".to_string(), [0x02, 0x76, 0, 0, 0, 0x99])
        };
        attach(&node, &netns, &link, mac, ip);
        pods.push(PodNs {
            key,
            netns,
            ip,
            link,
            alloc,
        });
    }
    let stop = Arc::new(AtomicBool::new(false));
    let servers = pods
        .iter()
        .map(|p| serve(p.netns.clone(), stop.clone()))
        .collect();
    World {
        node,
        pods,
        stop,
        servers,
        _nss: nss,
    }
}

fn probe(netns: &str, to: Ipv4Addr, proto: &str, port: u16) -> bool {
    let to = SocketAddr::from((to, port));
    in_netns(Some(netns), move || match proto {
        "tcp" => (|| -> std::io::Result<()> {
            let mut s = TcpStream::connect_timeout(&to, PROBE_TIMEOUT)?;
            s.set_read_timeout(Some(PROBE_TIMEOUT))?;
            let mut buf = [0u8; 2];
            s.read_exact(&mut buf)
        })()
        .is_ok(),
        _ => (|| -> std::io::Result<bool> {
            let u = UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0))?;
            u.set_read_timeout(Some(PROBE_TIMEOUT))?;
            let mut buf = [0u8; 16];
            for _ in 0..2 {
                u.send_to(b"ping", to)?;
                if let Ok((n, from)) = u.recv_from(&mut buf) {
                    if from == to && &buf[..n] == b"ping" {
                        return Ok(true);
                    }
                }
            }
            Ok(false)
        })()
        .unwrap_or(false),
    })
}

impl World {
    fn pod(&self, key: &str) -> &PodNs {
        self.pods.iter().find(|p| p.key == key).expect("pod")
    }

    /// The cluster as the API would show it, with `relabel` (`ns/pod` -> labels) applied.
    fn view(&self, policies: Vec<Value>, relabel: &[(&str, &str)]) -> (ClusterView, Vec<LocalPod>) {
        let mut view = ClusterView::default();
        for ns in ["x", "y", "z"] {
            let mut l = Labels::new();
            l.insert("ns".into(), ns.into());
            view.namespaces.push(NamespaceInfo::new(ns, l));
        }
        let mut local = Vec::new();
        for p in &self.pods {
            let (ns, name) = p.key.split_once('/').expect("ns/pod");
            let label = relabel
                .iter()
                .find(|(k, _)| *k == p.key)
                .map_or(name, |(_, v)| v);
            let mut l = Labels::new();
            l.insert("pod".into(), label.into());
            let mut info = PodInfo::new(ns, name, l, Some(p.ip));
            info.named_ports = vec![
                NamedPort {
                    name: "serve-80-tcp".into(),
                    protocol: Protocol::Tcp,
                    port: 80,
                },
                NamedPort {
                    name: "serve-81-udp".into(),
                    protocol: Protocol::Udp,
                    port: 81,
                },
            ];
            view.pods.push(info);
            if p.link != "up0" {
                local.push(LocalPod::new(ns, name, p.ip, &p.alloc));
            }
        }
        view.policies = policies
            .into_iter()
            .map(|v| serde_json::from_value::<NetworkPolicy>(v).expect("policy"))
            .collect();
        (view, local)
    }

    fn render(&self, policies: Vec<Value>, relabel: &[(&str, &str)]) -> Value {
        let (view, local) = self.view(policies, relabel);
        let compiled = compile(&view, &local);
        assert!(compiled.warnings.is_empty(), "{:?}", compiled.warnings);
        assert_eq!(compiled.pods.len(), 3);
        vpcnet_policy::render::render(&compiled)
    }

    fn apply(&self, ruleset: &Value) -> Result<(), vpcnet_policy::apply::ApplyError> {
        in_netns(Some(&self.node), || vpcnet_policy::apply::apply(ruleset))
    }

    fn nft(&self, args: &str) -> String {
        let out = std::process::Command::new("ip")
            .args(["netns", "exec", &self.node, "nft"])
            .args(args.split_whitespace())
            .output()
            .expect("nft");
        assert!(
            out.status.success(),
            "nft {args}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Probes every (source, destination, protocol, port), prints the matrices, and returns the
    /// differences from `expect`.
    fn check(&self, phase: &str, expect: fn(&str, &str, &str, u16) -> bool) -> Vec<String> {
        let sources: Vec<(&str, &str)> = self
            .pods
            .iter()
            .map(|p| (p.key, p.netns.as_str()))
            .chain(std::iter::once((NODE_SRC, self.node.as_str())))
            .collect();
        let mut cases = Vec::new();
        for (proto, port) in PROBES {
            for (from, netns) in &sources {
                for to in &self.pods {
                    cases.push((proto, port, *from, *netns, to.key, to.ip));
                }
            }
        }
        let got = par_map(&cases, 12, |(proto, port, _, netns, _, ip)| {
            probe(netns, *ip, proto, *port)
        });
        let mut diffs = Vec::new();
        let mut report = format!("== {phase}: observed/expected (A allow, - deny, ! differs)\n");
        let mut i = 0;
        for (proto, port) in PROBES {
            report += &format!(
                "{proto}/{port}     {}\n",
                self.pods
                    .iter()
                    .map(|p| format!("{:>5}", p.key))
                    .collect::<String>()
            );
            for (from, _) in &sources {
                report += &format!("  {from:>6} ");
                for to in &self.pods {
                    let (g, w) = (got[i], expect(from, to.key, proto, port));
                    i += 1;
                    report += match (g, w) {
                        (true, true) => "    A",
                        (false, false) => "    -",
                        (true, false) => "  !A ",
                        (false, true) => "  !- ",
                    };
                    if g != w {
                        diffs.push(format!(
                            "{from} -> {} {proto}/{port}: observed {g}, expected {w}",
                            to.key
                        ));
                    }
                }
                report += "\n";
            }
        }
        eprintln!("{report}");
        diffs
    }
}

fn np(ns: &str, name: &str, spec: Value) -> Value {
    json!({"metadata": {"namespace": ns, "name": name}, "spec": spec})
}

fn phase1() -> Vec<Value> {
    vec![
        np(
            "x",
            "deny-ingress",
            json!({"podSelector": {}, "policyTypes": ["Ingress"]}),
        ),
        np(
            "x",
            "allow-a",
            json!({"podSelector": {"matchLabels": {"pod": "a"}}, "ingress": [
                {"from": [{"namespaceSelector": {"matchLabels": {"ns": "y"}}}],
                 "ports": [{"port": 80}]},
                {"from": [{"ipBlock": {"cidr": "10.0.2.0/24"}}],
                 "ports": [{"port": 81, "protocol": "UDP"}]}]}),
        ),
        np(
            "y",
            "a-egress",
            json!({"podSelector": {"matchLabels": {"pod": "a"}}, "policyTypes": ["Egress"],
                   "egress": [{"to": [{"namespaceSelector": {"matchLabels": {"ns": "x"}}}],
                               "ports": [{"port": "serve-80-tcp"}]}]}),
        ),
    ]
}

/// x: deny-all ingress but x/a from namespace y on TCP 80 and from z's block on UDP 81;
/// y/a: egress only to x's pods on the named port serve-80-tcp.
fn expect1(from: &str, to: &str, proto: &str, port: u16) -> bool {
    if from == to || from == NODE_SRC {
        return true;
    }
    match to {
        "x/a" => {
            (from == "y/a" && proto == "tcp" && port == 80)
                || (from == "z/a" && proto == "udp" && port == 81)
        }
        "x/b" => false,
        "y/a" => true,
        _ => from != "y/a",
    }
}

fn phase2() -> Vec<Value> {
    vec![
        np(
            "y",
            "from-pods-a-udp",
            json!({"podSelector": {}, "ingress": [{
                "from": [{"namespaceSelector": {},
                          "podSelector": {"matchExpressions": [
                              {"key": "pod", "operator": "In", "values": ["a"]}]}}],
                "ports": [{"port": 80, "endPort": 81, "protocol": "UDP"}]}]}),
        ),
        np(
            "x",
            "a-egress-not-z",
            json!({"podSelector": {"matchLabels": {"pod": "a"}}, "policyTypes": ["Egress"],
                   "egress": [{"to": [{"ipBlock": {"cidr": "10.0.0.0/16",
                                                   "except": ["10.0.2.0/24"]}}]}]}),
        ),
    ]
}

/// x's policies gone; y/a reachable on UDP 80-81 from pods labelled pod=a in any namespace
/// (x/b is relabelled pod=a); x/a and x/b (now pod=a too) may not reach z's block.
fn expect2(from: &str, to: &str, proto: &str, _port: u16) -> bool {
    if from == to || from == NODE_SRC {
        return true;
    }
    match to {
        "y/a" => ["x/a", "x/b", "z/a"].contains(&from) && proto == "udp",
        "z/a" => !["x/a", "x/b"].contains(&from),
        _ => true,
    }
}

#[test]
fn netpol_matrix_on_the_kernel_follows_policy_changes() {
    if !vpcnet_policy::apply::nft_program().exists()
        && std::process::Command::new("nft")
            .arg("--version")
            .output()
            .is_err()
    {
        vpcnet_tests::skip(
            "netpol_matrix_on_the_kernel_follows_policy_changes",
            "nft not installed (scripts/deps.sh installs nftables)",
        );
        return;
    }
    let w = world();

    // Before any policy: everything reaches everything.
    let diffs = w.check("no table", |_, _, _, _| true);
    assert!(diffs.is_empty(), "without policy: {diffs:#?}");

    let rs1 = w.render(phase1(), &[]);
    w.apply(&rs1).expect("apply phase 1");
    // Read back: the table, its dispatch maps keyed by the host veths the naming gives.
    let listed: Value =
        serde_json::from_str(&w.nft("-j list table inet vpcnet-policy")).expect("nft json");
    let items = listed["nftables"].as_array().expect("array");
    let map_elems = |name: &str| -> Vec<String> {
        items
            .iter()
            .filter_map(|o| o.get("map"))
            .filter(|m| m["name"] == name)
            .flat_map(|m| m["elem"].as_array().cloned().unwrap_or_default())
            .filter_map(|e| e[0].as_str().map(str::to_string))
            .collect()
    };
    let mut want_in = vec![w.pod("x/a").link.clone(), w.pod("x/b").link.clone()];
    want_in.sort();
    let mut got_in = map_elems("ingress_dispatch");
    got_in.sort();
    assert_eq!(got_in, want_in, "ingress-isolated pods");
    assert_eq!(
        map_elems("egress_dispatch"),
        vec![w.pod("y/a").link.clone()]
    );
    let text = w.nft("list table inet vpcnet-policy");
    assert!(
        text.contains("ct state established,related accept"),
        "{text}"
    );
    assert!(
        text.contains("type ipv4_addr . inet_proto . inet_service"),
        "{text}"
    );
    let diffs = w.check("phase 1", expect1);
    assert!(
        diffs.is_empty(),
        "phase 1: {} differences:\n{}",
        diffs.len(),
        diffs.join("\n")
    );

    // A transaction the kernel rejects changes nothing: it is one batch.
    let mut bad = w.render(phase2(), &[("x/b", "a")]);
    bad["nftables"].as_array_mut().expect("array").push(
        json!({"add": {"element": {"family": "inet", "table": "vpcnet-policy",
                                         "name": "no-such-set", "elem": ["10.0.0.1"]}}}),
    );
    let before = w.nft("list table inet vpcnet-policy");
    let err = w
        .apply(&bad)
        .expect_err("a transaction with an element of a missing set");
    assert!(err.to_string().contains("rejected"), "{err}");
    assert_eq!(
        w.nft("list table inet vpcnet-policy"),
        before,
        "rejected batch left traces"
    );

    // New policies and a relabelled pod: one transaction, and the matrix follows.
    let rs2 = w.render(phase2(), &[("x/b", "a")]);
    assert_ne!(rs1, rs2);
    w.apply(&rs2).expect("apply phase 2");
    let diffs = w.check("phase 2", expect2);
    assert!(
        diffs.is_empty(),
        "phase 2: {} differences:\n{}",
        diffs.len(),
        diffs.join("\n")
    );

    // Re-applying the same transaction is idempotent; removal restores allow-all.
    let applied = w.nft("list table inet vpcnet-policy");
    w.apply(&rs2).expect("re-apply phase 2");
    assert_eq!(w.nft("list table inet vpcnet-policy"), applied);
    w.apply(&vpcnet_policy::render::removal()).expect("removal");
    assert!(!w.nft("list tables").contains("vpcnet-policy"));
    let diffs = w.check("removed", |_, _, _, _| true);
    assert!(diffs.is_empty(), "after removal: {diffs:#?}");
}
