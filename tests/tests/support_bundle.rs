//! `vpcnetd support-bundle` (issue 12, item 2): against a real agent with a pod, in a private
//! node namespace. The archive holds exactly the files documented, each with real content
//! (the pod's address in status, journal and routes; our nft table; the plugin log), and none
//! of the key, token and password material planted in the paths and values the
//! configuration names.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use serde_json::Value;
use vpcnet_tests::{bin, free_port, sh, Lab};

const SECRETS: [&str; 5] = [
    "PLANTEDKEYMATERIAL",
    "PLANTEDKUBETOKEN",
    "PLANTEDETCDPASS",
    "PLANTEDENVTOKEN",
    "PLANTEDCERTBODY",
];

fn plant(dir: &Path) {
    std::fs::write(
        dir.join("etcd.key"),
        "-----BEGIN PRIVATE KEY-----\nPLANTEDKEYMATERIAL\n-----END PRIVATE KEY-----\n",
    )
    .expect("key");
    std::fs::write(
        dir.join("etcd.crt"),
        "-----BEGIN CERTIFICATE-----\nPLANTEDCERTBODY\n-----END CERTIFICATE-----\n",
    )
    .expect("cert");
    std::fs::write(
        dir.join("kubeconfig"),
        "apiVersion: v1\nkind: Config\nusers:\n- name: u\n  user:\n    token: PLANTEDKUBETOKEN\n",
    )
    .expect("kubeconfig");
}

#[test]
fn support_bundle_holds_what_a_bug_report_needs_and_no_secret() {
    let mut lab = Lab::new("10.233.0.0/16");
    let d = lab.dir.clone();
    plant(&d);
    let port = free_port();
    let metrics = format!("127.0.0.1:{port}");
    let conf_dir = d.join("net.d").display().to_string();
    let log = d.join("plugin.log").display().to_string();
    let key = d.join("etcd.key").display().to_string();
    let crt = d.join("etcd.crt").display().to_string();
    let kubeconfig = d.join("kubeconfig").display().to_string();
    let flags: Vec<String> = [
        "--metrics-addr",
        &metrics,
        "--cni-conf-dir",
        &conf_dir,
        "--cni-log-file",
        &log,
        "--etcd-endpoints",
        "https://root:PLANTEDETCDPASS@127.0.0.1:2379",
        "--etcd-ca",
        &crt,
        "--etcd-cert",
        &crt,
        "--etcd-key",
        &key,
        "--kubeconfig",
        &kubeconfig,
        // Dual-stack: routes.txt lists both families.
        "--vpc-cidr",
        "fd00:233::/64",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let refs: Vec<&str> = flags.iter().map(String::as_str).collect();
    lab.start_agent(&refs);
    let conflist = d.join("net.d/10-vpcnet.conflist");
    assert!(lab.wait_for(Duration::from_secs(10), || conflist.exists()));
    let ns = lab.pod(1);
    let cid = format!("{}c1", lab.prefix);
    let added = lab.add(&cid, &ns);
    let (ip, ip6) = vpcnet_tests::cni::result_ips(added.expect_ok("ADD"));
    let ip = ip.expect("ip").to_string();
    let ip6 = ip6.expect("IPv6 address").to_string();

    // A NetworkPolicy table, as a --network-policy=true agent keeps it (planted: this
    // agent runs without the flag).
    sh(&format!(
        "ip netns exec {} nft -f - <<'EOF'\ntable inet vpcnet-policy {{ map ingress_dispatch {{ type ifname : verdict; }}; chain forward {{ type filter hook forward priority filter; policy accept; oifname vmap @ingress_dispatch; }}; }}\nEOF",
        lab.host()
    ));

    let out_dir = d.join("out");
    std::fs::create_dir_all(&out_dir).expect("out dir");
    let o = Command::new("nsenter")
        .arg(format!("--net=/var/run/netns/{}", lab.host()))
        .arg(bin("vpcnetd"))
        .arg("--socket")
        .arg(lab.socket())
        .arg("--state-dir")
        .arg(lab.state_dir())
        .args(["--vpc-cidr", "10.233.0.0/16", "--node-name", "bundle-node"])
        .args(&flags)
        .arg("support-bundle")
        .arg(&out_dir)
        .env("VPCNET_TEST_TOKEN", "PLANTEDENVTOKEN")
        .output()
        .expect("support-bundle");
    let stdout = String::from_utf8_lossy(&o.stdout).into_owned();
    assert!(
        o.status.success(),
        "support-bundle: {stdout}{}",
        String::from_utf8_lossy(&o.stderr)
    );
    let archive = stdout.trim().to_string();
    assert!(
        archive.contains("vpcnet-bundle-bundle-node-") && archive.ends_with(".tar.gz"),
        "{archive}"
    );
    assert!(Path::new(&archive).is_file(), "{archive}");

    // Listed and extracted with the system tar: a normal archive.
    let mut names: Vec<String> = sh(&format!("tar -tzf {archive}"))
        .lines()
        .map(|l| l.split_once('/').expect("top dir").1.to_string())
        .collect();
    names.sort();
    let mut want = vec![
        "config.txt",
        "conflist.json",
        "errors.txt",
        "journal.txt",
        "links.txt",
        "metrics.txt",
        "nft.txt",
        "plugin.log",
        "pool.json",
        "routes.txt",
        "status.json",
    ];
    want.sort();
    assert_eq!(names, want);
    let x = d.join("x");
    std::fs::create_dir_all(&x).expect("x");
    sh(&format!(
        "tar -xzf {archive} -C {} --strip-components=1",
        x.display()
    ));
    let read = |n: &str| std::fs::read_to_string(x.join(n)).unwrap_or_else(|e| panic!("{n}: {e}"));

    assert_eq!(read("errors.txt"), "", "everything collected");
    let status: Value = serde_json::from_str(&read("status.json")).expect("status json");
    assert!(status.to_string().contains(&ip), "{status}");
    assert!(read("metrics.txt").contains("vpcnet_"), "metrics");
    let pool: Value = serde_json::from_str(&read("pool.json")).expect("pool json");
    assert!(pool.is_object() || pool.is_array(), "{pool}");
    let config = read("config.txt");
    assert!(config.contains(&key), "key path shown: {config}");
    assert!(
        config.contains("https://<redacted>@127.0.0.1:2379"),
        "{config}"
    );
    assert!(config.contains("VPCNET_TEST_TOKEN=<redacted>"), "{config}");
    let conf: Value = serde_json::from_str(&read("conflist.json")).expect("conflist json");
    assert_eq!(conf["plugins"][0]["type"], "vpcnet");
    let routes = read("routes.txt");
    assert!(routes.contains(&format!("{ip}/32")), "{routes}");
    assert!(routes.contains("unreachable 10.233."), "{routes}");
    assert!(routes.contains(&format!("{ip6}/128")), "{routes}");
    assert!(routes.contains("unreachable fd00:233:"), "{routes}");
    assert_eq!(read("links.txt").lines().count(), 1, "one host veth");
    assert!(
        read("nft.txt").contains("masquerade"),
        "{}",
        read("nft.txt")
    );
    assert!(
        read("nft.txt").contains(r#""family": "inet", "name": "vpcnet-policy""#)
            && read("nft.txt").contains("ingress_dispatch"),
        "no policy table in the bundle: {}",
        read("nft.txt")
    );
    let journal = read("journal.txt");
    assert!(journal.contains("load: ok"), "{journal}");
    assert!(journal.contains(&ip) && journal.contains(&cid), "{journal}");
    // A dual-stack node's state loads with its IPv6 pool (it read as "refused" before).
    assert!(
        journal.contains("IPv6 pool: 1 prefixes") && journal.contains(&ip6),
        "{journal}"
    );
    assert!(read("plugin.log").contains(&cid), "plugin log tail");

    // No secret anywhere: in any file, nor in the raw (decompressed) archive.
    for n in &want {
        let text = read(n);
        for s in SECRETS {
            assert!(!text.contains(s), "{s} leaked into {n}");
        }
    }
    let raw = sh(&format!("gzip -dc {archive} | strings"));
    for s in SECRETS {
        assert!(!raw.contains(s), "{s} in the archive");
    }
}
