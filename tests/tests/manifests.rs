//! The Kubernetes packaging, checked offline (no cluster, no root, no Docker):
//!
//! 1. every Kubernetes object in `manifests/*.yaml` validates against the Kubernetes OpenAPI
//!    schemas (PyPI `kubernetes-validate`, strict: unknown fields are errors), and the example
//!    `PrefixClaim` against the CRD's own schema. The validator is installed by
//!    `scripts/deps.sh` into `/tmp/vpcnet-venv` (or set `KUBERNETES_VALIDATE` to its path); the
//!    test fails when it is missing unless `VPCNET_SKIP_MANIFEST_VALIDATION=1`, which skips it
//!    (`vpcnet_tests::skip`: reported as skipped; scripts/test.sh fails under CI);
//! 2. every DaemonSet agrees with the real binaries: each `--flag` and `VPCNET_*` variable is one
//!    `vpcnetd --help` (or `vpcnetd install-cni --help`) lists, the whole command line and
//!    environment pass the real `vpcnetd`'s own checks (`check-config`: parse + validate), the
//!    host paths it mounts are the ones its flags (or their defaults) name, the probes hit the `--metrics-addr` port, the init container
//!    runs `install-cni` into the mounted CNI bin dir, and the conflist name is the product's;
//! 3. the kind config, the Dockerfile and `scripts/kind-bench.sh` agree with the manifests.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;
use vpcnet_tests::manifests::{read, repo, yaml_docs};
use vpcnet_tests::{bin, skip};

/// The DaemonSet variants and the datastore each one runs.
const VARIANTS: &[(&str, &str)] = &[
    ("vpcnet-etcd.yaml", "etcd"),
    ("vpcnet-local.yaml", "local"),
    ("vpcnet-kubernetes.yaml", "kubernetes"),
    // Generated (scripts/gen-manifests.py): the CRD + the kubernetes variant, in one file.
    ("install.yaml", "kubernetes"),
];
/// What scripts/gen-manifests.py writes; the committed files must be exactly its output.
const GENERATED: &[&str] = &[
    "vpcnet-local.yaml",
    "vpcnet-etcd.yaml",
    "vpcnet-kubernetes.yaml",
    "install.yaml",
    "uninstall.yaml",
];
/// The PrefixClaim CRD (vpcnetd's kubernetes backend names this file in its error hints).
const CRD_FILE: &str = "crd-prefixclaims.yaml";
/// Kubernetes versions the objects must be valid for (oldest supported, newest).
const K8S_VERSIONS: &[&str] = &["1.29", "1.33"];
/// Pinned in scripts/deps.sh.
const VALIDATOR_VENV: &str = "/tmp/vpcnet-venv";

// Product names and defaults (DESIGN.md §2, README): the manifests must use exactly these.
const SOCKET: &str = "/run/vpcnet/vpcnetd.sock";
const STATE_DIR: &str = "/var/lib/vpcnet";
const CNI_CONF_DIR: &str = "/etc/cni/net.d";
const CNI_CONF_NAME: &str = "10-vpcnet.conflist";
const CNI_BIN_DIR: &str = "/opt/cni/bin";
const PLUGIN_LOG_DIR: &str = "/var/log/vpcnet";
const VPCNETD_IN_IMAGE: &str = "/usr/local/bin/vpcnetd";

fn manifests() -> PathBuf {
    vpcnet_tests::manifests::dir()
}

fn kind_of<'a>(docs: &'a [Value], kind: &str) -> Vec<&'a Value> {
    docs.iter().filter(|d| d["kind"] == kind).collect()
}

fn one<'a>(docs: &'a [Value], kind: &str, file: &str) -> &'a Value {
    let v = kind_of(docs, kind);
    assert_eq!(
        v.len(),
        1,
        "{file}: want exactly one {kind}, found {}",
        v.len()
    );
    v[0]
}

fn s<'a>(v: &'a Value, ptr: &str) -> &'a str {
    v.pointer(ptr)
        .and_then(Value::as_str)
        .unwrap_or_else(|| panic!("missing string at {ptr} in {v}"))
}

fn arr<'a>(v: &'a Value, ptr: &str) -> &'a [Value] {
    v.pointer(ptr)
        .and_then(Value::as_array)
        .map_or(&[], Vec::as_slice)
}

fn workspace_version() -> String {
    let toml = read(&repo().join("Cargo.toml"));
    toml.lines()
        .find_map(|l| l.strip_prefix("version = \"")?.strip_suffix('"'))
        .expect("version in [workspace.package]")
        .to_string()
}

// ---- what the real vpcnetd accepts ----------------------------------------------------------

#[derive(Debug, Default, Clone)]
struct Flag {
    env: Option<String>,
    default: Option<String>,
    possible: Vec<String>,
}

#[derive(Debug, Default)]
struct Help {
    flags: BTreeMap<String, Flag>,
    subcommands: BTreeSet<String>,
}

impl Help {
    fn envs(&self) -> BTreeMap<String, String> {
        self.flags
            .iter()
            .filter_map(|(f, x)| Some((x.env.clone()?, f.clone())))
            .collect()
    }
}

/// Parses clap's long help (`--help`): options with their `[env: ..]`, `[default: ..]` and
/// possible values, and the `Commands:` section.
fn parse_help(text: &str) -> Help {
    let mut h = Help::default();
    let mut cur: Option<String> = None;
    let mut section = "";
    let mut in_possible = false;
    for line in text.lines() {
        let t = line.trim_start();
        let indent = line.len() - t.len();
        if indent == 0 && t.ends_with(':') {
            section = t;
            cur = None;
            continue;
        }
        if section == "Commands:" {
            if let Some(name) = t.split_whitespace().next() {
                h.subcommands.insert(name.to_string());
            }
            continue;
        }
        let opt = t.strip_prefix("--").or_else(|| {
            t.get(4..)
                .filter(|_| t.starts_with('-') && t.get(2..4) == Some(", "))?
                .strip_prefix("--")
        });
        if let (Some(rest), true) = (opt, indent <= 6) {
            let name: String = rest
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '-')
                .collect();
            h.flags.insert(name.clone(), Flag::default());
            cur = Some(name);
            in_possible = false;
        }
        let Some(name) = cur.clone() else { continue };
        let flag = h.flags.get_mut(&name).expect("current flag");
        if t.is_empty() {
            in_possible = false;
        } else if t == "Possible values:" {
            in_possible = true;
            continue;
        } else if in_possible {
            if let Some(v) = t.strip_prefix("- ") {
                let v = v.split(':').next().unwrap_or(v).trim();
                flag.possible.push(v.to_string());
            }
            continue;
        }
        if let Some(i) = t.find("[env: ") {
            let rest = &t[i + 6..];
            flag.env = Some(rest[..rest.find('=').expect("[env: NAME=...]")].to_string());
        }
        if let Some(i) = t.find("[default: ") {
            let rest = &t[i + 10..];
            flag.default = Some(rest[..rest.find(']').expect("[default: ..]")].to_string());
        }
        if let Some(i) = t.find("[possible values: ") {
            let rest = &t[i + 18..];
            flag.possible = rest[..rest.find(']').expect("]")]
                .split(", ")
                .map(str::to_string)
                .collect();
        }
    }
    h
}

fn vpcnetd_help(sub: &[&str]) -> Help {
    let out = Command::new(bin("vpcnetd"))
        .args(sub)
        .arg("--help")
        .env_clear()
        .output()
        .expect("running vpcnetd --help");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "vpcnetd {sub:?} --help failed: {text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    parse_help(&text)
}

#[test]
fn help_parser_reads_clap_output() {
    let h = vpcnetd_help(&[]);
    let socket = &h.flags["socket"];
    assert_eq!(socket.env.as_deref(), Some("VPCNET_SOCKET"));
    assert_eq!(socket.default.as_deref(), Some(SOCKET));
    assert_eq!(h.flags["state-dir"].default.as_deref(), Some(STATE_DIR));
    assert!(
        h.flags["datastore"].possible.contains(&"local".to_string()),
        "{h:?}"
    );
    assert!(h.flags.contains_key("help"));
    assert!(h.subcommands.contains("status"), "{h:?}");
    assert!(
        !h.flags.contains_key("json"),
        "status's flag is not a top-level flag"
    );
}

// ---- the DaemonSets against the binaries ----------------------------------------------------

/// A container's settings as vpcnetd will see them.
#[derive(Debug)]
struct Invocation {
    /// Positional words (a subcommand), in order.
    positional: Vec<String>,
    /// `--flag=value` / `--flag` (value "" then).
    args: Vec<(String, String)>,
    /// Env name -> value (ConfigMap values substituted; downward-API fields get samples).
    env: BTreeMap<String, String>,
}

impl Invocation {
    fn of(file: &str, c: &Value, config: &BTreeMap<String, String>, cm_name: &str) -> Self {
        let mut inv = Invocation {
            positional: vec![],
            args: vec![],
            env: BTreeMap::new(),
        };
        for a in arr(c, "/args") {
            let a = a.as_str().expect("args are strings");
            assert!(
                !a.contains("$("),
                "{file}: keep args literal (no $(VAR) expansion): {a}"
            );
            match a.strip_prefix("--") {
                Some(f) => {
                    let (k, v) = f.split_once('=').unwrap_or((f, ""));
                    inv.args.push((k.to_string(), v.to_string()));
                }
                None => {
                    assert!(
                        inv.args.is_empty(),
                        "{file}: write flags as --flag=value; {a:?} after a flag is ambiguous"
                    );
                    inv.positional.push(a.to_string());
                }
            }
        }
        // envFrom first: `env` entries override it (Kubernetes' precedence).
        if let Some(froms) = c.get("envFrom") {
            for f in froms.as_array().expect("envFrom is a list") {
                let r = f
                    .pointer("/configMapRef/name")
                    .and_then(Value::as_str)
                    .unwrap_or_else(|| panic!("{file}: envFrom {f}: only configMapRef"));
                assert_eq!(r, cm_name, "{file}: envFrom reads another ConfigMap");
                assert!(f.get("prefix").is_none(), "{file}: keys are the env names");
                inv.env.extend(config.clone());
            }
        }
        for e in arr(c, "/env") {
            let name = s(e, "/name").to_string();
            let value = if let Some(v) = e.get("value") {
                v.as_str().expect("env value is a string").to_string()
            } else if let Some(r) = e.pointer("/valueFrom/configMapKeyRef") {
                assert_eq!(
                    s(r, "/name"),
                    cm_name,
                    "{file}: {name} reads another ConfigMap"
                );
                let key = s(r, "/key");
                let want = format!("VPCNET_{}", key.to_uppercase().replace('-', "_"));
                assert_eq!(
                    name, want,
                    "{file}: ConfigMap key {key:?} must feed {want} (keys are flag names)"
                );
                config
                    .get(key)
                    .unwrap_or_else(|| {
                        panic!("{file}: {name} reads key {key:?}, not in ConfigMap {cm_name}")
                    })
                    .clone()
            } else if let Some(f) = e.pointer("/valueFrom/fieldRef/fieldPath") {
                match f.as_str() {
                    Some("spec.nodeName") => "node-1".into(),
                    // Every address of the node, comma-separated (dual-stack: both families).
                    Some("status.hostIPs") => "192.0.2.10,2001:db8::10".into(),
                    other => panic!("{file}: {name}: unexpected fieldRef {other:?}"),
                }
            } else {
                panic!("{file}: env {name}: unsupported source {e}");
            };
            assert!(
                inv.env.insert(name.clone(), value).is_none(),
                "{file}: env {name} set twice"
            );
        }
        inv
    }

    /// The value vpcnetd will use for `flag`: the arg, else its env var, else the default.
    fn value(&self, help: &Help, flag: &str) -> Option<String> {
        if let Some((_, v)) = self.args.iter().find(|(k, _)| k == flag) {
            return Some(v.clone());
        }
        let f = help.flags.get(flag)?;
        if let Some(v) = f.env.as_ref().and_then(|e| self.env.get(e)) {
            return Some(v.clone());
        }
        f.default.clone()
    }

    /// Every flag and VPCNET_* variable must be one `help` lists.
    fn check_names(&self, file: &str, what: &str, help: &Help) {
        let known: Vec<&String> = help.flags.keys().collect();
        for (k, _) in &self.args {
            assert!(
                help.flags.contains_key(k),
                "{file}: {what} passes --{k}, which `vpcnetd{}` does not accept (it accepts: {known:?})",
                if what == "vpcnetd" { String::new() } else { format!(" {what}") }
            );
        }
        let envs = help.envs();
        for name in self.env.keys().filter(|n| n.starts_with("VPCNET_")) {
            assert!(
                envs.contains_key(name),
                "{file}: {what} sets {name}, which vpcnetd does not read (it reads: {:?})",
                envs.keys().collect::<Vec<_>>()
            );
        }
    }
}

/// Container `name` of a pod spec's `containers` or `initContainers`.
fn container<'a>(pod: &'a Value, list: &str, name: &str, file: &str) -> &'a Value {
    arr(pod, &format!("/{list}"))
        .iter()
        .find(|c| c["name"] == name)
        .unwrap_or_else(|| panic!("{file}: no {list} entry named {name}"))
}

/// mountPath -> (volume name, readOnly) of a container.
fn mounts(c: &Value) -> BTreeMap<String, (String, bool)> {
    arr(c, "/volumeMounts")
        .iter()
        .map(|m| {
            let ro = m.get("readOnly").and_then(Value::as_bool).unwrap_or(false);
            (
                s(m, "/mountPath").to_string(),
                (s(m, "/name").to_string(), ro),
            )
        })
        .collect()
}

/// Asserts `dir` is mounted in `c` (writable unless `ro`) from the node's same path.
fn assert_host_dir(file: &str, pod: &Value, c: &Value, dir: &str, ro: bool) {
    let m = mounts(c);
    let (vol, read_only) = m.get(dir).unwrap_or_else(|| {
        panic!(
            "{file}: container {} does not mount {dir} (mounts: {:?})",
            c["name"],
            m.keys().collect::<Vec<_>>()
        )
    });
    assert_eq!(
        *read_only, ro,
        "{file}: {dir} mounted readOnly={read_only}, want {ro}"
    );
    let v = arr(pod, "/volumes")
        .iter()
        .find(|v| v["name"] == vol.as_str())
        .expect("volume");
    assert_eq!(
        v.pointer("/hostPath/path").and_then(Value::as_str),
        Some(dir),
        "{file}: {dir} must be the node's {dir} (the plugin runs on the node and uses the same path)"
    );
}

fn port_number(c: &Value, port: &Value) -> u64 {
    if let Some(n) = port.as_u64() {
        return n;
    }
    let name = port.as_str().expect("port is a number or a name");
    arr(c, "/ports")
        .iter()
        .find(|p| p["name"] == name)
        .and_then(|p| p["containerPort"].as_u64())
        .unwrap_or_else(|| panic!("probe port {name:?} is not a named port of the container"))
}

/// The real vpcnetd accepts this command line and environment: run with `check-config`
/// appended, it parses them (flags, values, enums) and runs its own `validate()` exactly as
/// `run` would, without touching the host, and must exit 0 and say so. Anything else (a clap
/// error: 2; a validation error: 1; a panic: 101) fails.
fn assert_vpcnetd_parses(file: &str, inv: &Invocation) {
    let mut cmd = Command::new(bin("vpcnetd"));
    cmd.env_clear();
    for (k, v) in &inv.env {
        cmd.env(k, v);
    }
    for (k, v) in &inv.args {
        cmd.arg(if v.is_empty() {
            format!("--{k}")
        } else {
            format!("--{k}={v}")
        });
    }
    let out = cmd.arg("check-config").output().expect("running vpcnetd");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.code() == Some(0) && stdout.trim() == "vpcnetd: configuration ok",
        "{file}: `vpcnetd … check-config` with the DaemonSet's command line and environment \
         exited {:?}:\n{stdout}{stderr}",
        out.status.code()
    );
}

/// One DaemonSet variant being checked: its file, its documents and the parts every check
/// reads.
struct Variant<'a> {
    file: &'a str,
    docs: &'a [Value],
    cm: &'a Value,
    cm_name: &'a str,
    /// The ConfigMap's data (key -> value).
    config: BTreeMap<String, String>,
    ds: &'a Value,
    /// The DaemonSet's pod spec.
    pod: &'a Value,
    /// The `vpcnetd` container.
    agent: &'a Value,
    /// `vpcnet:<workspace version>`.
    image: String,
}

impl<'a> Variant<'a> {
    fn of(file: &'a str, docs: &'a [Value]) -> Variant<'a> {
        let cm = one(docs, "ConfigMap", file);
        let config = cm["data"]
            .as_object()
            .expect("ConfigMap data")
            .iter()
            .map(|(k, v)| {
                (
                    k.clone(),
                    v.as_str()
                        .expect("ConfigMap values are strings")
                        .to_string(),
                )
            })
            .collect();
        let ds = one(docs, "DaemonSet", file);
        let pod = ds.pointer("/spec/template/spec").expect("pod spec");
        Variant {
            file,
            docs,
            cm,
            cm_name: s(cm, "/metadata/name"),
            config,
            ds,
            pod,
            agent: container(pod, "containers", "vpcnetd", file),
            image: format!("vpcnet:{}", workspace_version()),
        }
    }

    /// The agent's command line and environment as vpcnetd will see them.
    fn agent_invocation(&self) -> Invocation {
        Invocation::of(self.file, self.agent, &self.config, self.cm_name)
    }
}

/// Every ConfigMap key is an environment variable of a vpcnetd flag (the agent reads the
/// ConfigMap whole, `envFrom`).
fn check_config_keys_are_flags(v: &Variant, top: &Help) {
    let file = v.file;
    let envs = top.envs();
    for key in v.config.keys() {
        assert!(
            envs.contains_key(key),
            "{file}: ConfigMap key {key:?} is not an environment variable vpcnetd reads"
        );
    }
}

/// Namespace, rollout, host network, DNS, priority, tolerations and service account.
fn check_pod_placement(v: &Variant) {
    let (file, ds, pod) = (v.file, v.ds, v.pod);
    assert_eq!(
        s(ds, "/metadata/namespace"),
        "kube-system",
        "{file}: system-node-critical pods belong in kube-system"
    );
    assert_eq!(s(v.cm, "/metadata/namespace"), "kube-system");
    assert_eq!(
        ds.pointer("/spec/updateStrategy/rollingUpdate/maxUnavailable"),
        Some(&Value::from("10%")),
        "{file}"
    );
    assert_eq!(
        pod["hostNetwork"], true,
        "{file}: the agent configures the node's network"
    );
    assert_eq!(
        pod["dnsPolicy"], "Default",
        "{file}: cluster DNS needs the pod network first"
    );
    assert_eq!(pod["priorityClassName"], "system-node-critical", "{file}");
    assert!(
        arr(pod, "/tolerations")
            .iter()
            .any(|t| t["operator"] == "Exists"
                && t.get("key").is_none()
                && t.get("effect").is_none()),
        "{file}: must tolerate every taint"
    );
    let sa = one(v.docs, "ServiceAccount", file);
    assert_eq!(
        s(pod, "/serviceAccountName"),
        s(sa, "/metadata/name"),
        "{file}"
    );
}

/// The agent container: image, command, no subcommand, only flags and variables vpcnetd
/// knows, node name and IP from the downward API, the VPC from the ConfigMap.
fn check_agent_command_line(v: &Variant, inv: &Invocation, top: &Help) {
    let (file, agent) = (v.file, v.agent);
    assert_eq!(
        s(agent, "/image"),
        v.image,
        "{file}: image tag = workspace version"
    );
    assert_eq!(
        arr(agent, "/command"),
        [Value::from(VPCNETD_IN_IMAGE)],
        "{file}"
    );
    assert!(
        inv.positional.is_empty(),
        "{file}: no subcommand in the agent's args (`run` is the default, and the run flags are top-level flags that `vpcnetd run` refuses): {:?}",
        inv.positional
    );
    inv.check_names(file, "vpcnetd", top);
    for (env, field) in [
        ("VPCNET_NODE_NAME", "spec.nodeName"),
        ("VPCNET_NODE_IP", "status.hostIPs"),
    ] {
        let e = arr(agent, "/env")
            .iter()
            .find(|e| e["name"] == env)
            .unwrap_or_else(|| panic!("{file}: {env} unset"));
        assert_eq!(
            e.pointer("/valueFrom/fieldRef/fieldPath")
                .and_then(Value::as_str),
            Some(field),
            "{file}: {env}"
        );
    }
    assert!(
        inv.env.contains_key("VPCNET_VPC_CIDR"),
        "{file}: VPCNET_VPC_CIDR comes from the ConfigMap"
    );
}

/// Socket, state, CNI conf dir and plugin log dir: the paths vpcnetd uses, each mounted
/// from the node's same path.
fn check_agent_host_dirs(v: &Variant, inv: &Invocation, top: &Help) {
    let (file, pod, agent) = (v.file, v.pod, v.agent);
    let v = |flag: &str| inv.value(top, flag).unwrap_or_default();
    assert_eq!(v("socket"), SOCKET, "{file}: --socket");
    assert_host_dir(
        file,
        pod,
        agent,
        Path::new(SOCKET)
            .parent()
            .and_then(Path::to_str)
            .expect("dir"),
        false,
    );
    assert_eq!(v("state-dir"), STATE_DIR, "{file}: --state-dir");
    assert_host_dir(file, pod, agent, STATE_DIR, false);
    assert_eq!(
        v("cni-conf-dir"),
        CNI_CONF_DIR,
        "{file}: --cni-conf-dir (the agent writes the conflist only when it is set)"
    );
    assert_host_dir(file, pod, agent, CNI_CONF_DIR, false);
    assert_eq!(v("cni-conf-name"), CNI_CONF_NAME, "{file}: --cni-conf-name");
    assert_eq!(
        top.flags
            .get("cni-conf-name")
            .and_then(|f| f.default.as_deref()),
        Some(CNI_CONF_NAME),
        "vpcnetd's default conflist name"
    );
    assert_host_dir(file, pod, agent, PLUGIN_LOG_DIR, true);
}

/// `--datastore` is the variant's and one vpcnetd accepts; for etcd, the endpoints are set
/// and the client certificates come read-only from the Secret.
fn check_datastore(v: &Variant, inv: &Invocation, top: &Help, datastore: &str) {
    let (file, pod, agent) = (v.file, v.pod, v.agent);
    let v = |flag: &str| inv.value(top, flag).unwrap_or_default();
    let ds_value = v("datastore");
    assert_eq!(ds_value, datastore, "{file}: --datastore");
    let possible = &top.flags["datastore"].possible;
    assert!(
        possible.contains(&ds_value),
        "{file}: --datastore={ds_value} is not one vpcnetd accepts ({possible:?})"
    );
    if datastore == "etcd" {
        assert!(!v("etcd-endpoints").is_empty(), "{file}: --etcd-endpoints");
        for flag in ["etcd-ca", "etcd-cert", "etcd-key"] {
            let path = PathBuf::from(v(flag));
            let dir = path.parent().and_then(Path::to_str).expect("dir");
            let file_name = path.file_name().and_then(|f| f.to_str()).expect("file");
            let (vol, ro) = mounts(agent)
                .remove(dir)
                .unwrap_or_else(|| panic!("{file}: --{flag}: {dir} is not mounted"));
            assert!(ro, "{file}: {dir} read-only");
            let vol = arr(pod, "/volumes")
                .iter()
                .find(|x| x["name"] == vol.as_str())
                .expect("volume");
            let items: Vec<&str> = arr(vol, "/secret/items")
                .iter()
                .map(|i| s(i, "/path"))
                .collect();
            assert!(
                items.contains(&file_name),
                "{file}: --{flag}: secret volume has no {file_name} ({items:?})"
            );
        }
    }
}

/// `--metrics-addr` listens on every address, its port is declared, and the three probes ask
/// that port for `/healthz` and `/readyz`.
fn check_metrics_and_probes(v: &Variant, inv: &Invocation, top: &Help) {
    let (file, agent) = (v.file, v.agent);
    let addr = inv.value(top, "metrics-addr").unwrap_or_default();
    assert!(
        addr.parse::<std::net::SocketAddr>().is_ok(),
        "{file}: --metrics-addr {addr:?} is not host:port"
    );
    let port: u64 = addr
        .rsplit_once(':')
        .and_then(|(_, p)| p.parse().ok())
        .unwrap_or_else(|| panic!("{file}: --metrics-addr {addr:?} has no port"));
    assert!(
        addr.starts_with("0.0.0.0:") || addr.starts_with("[::]:"),
        "{file}: --metrics-addr {addr:?}: the kubelet probes the node's address, not loopback"
    );
    let ports = arr(agent, "/ports");
    assert!(
        ports
            .iter()
            .any(|p| p["containerPort"] == port && p["hostPort"] == port),
        "{file}: port {port} (--metrics-addr) is not declared in ports: {ports:?}"
    );
    for (probe, path) in [
        ("startupProbe", "/healthz"),
        ("livenessProbe", "/healthz"),
        ("readinessProbe", "/readyz"),
    ] {
        let p = agent
            .get(probe)
            .unwrap_or_else(|| panic!("{file}: no {probe}"));
        assert_eq!(
            port_number(agent, &p["httpGet"]["port"]),
            port,
            "{file}: {probe} port vs --metrics-addr"
        );
        assert_eq!(s(p, "/httpGet/path"), path, "{file}: {probe}");
    }
}

/// Container `c` is not privileged, cannot escalate, drops ALL and adds NET_ADMIN only.
fn assert_net_admin_only(file: &str, c: &Value) {
    let sc = &c["securityContext"];
    assert_ne!(sc["privileged"], true, "{file}");
    assert_eq!(sc["allowPrivilegeEscalation"], false, "{file}");
    assert_eq!(
        arr(sc, "/capabilities/add"),
        [Value::from("NET_ADMIN")],
        "{file}: NET_ADMIN only"
    );
    assert_eq!(
        arr(sc, "/capabilities/drop"),
        [Value::from("ALL")],
        "{file}"
    );
}

/// The agent: not privileged, no escalation, NET_ADMIN and SYS_ADMIN (the `vpcnet` front's
/// commands enter pod namespaces) only, and exactly the justified host paths.
fn check_least_privilege(v: &Variant) {
    let (file, pod) = (v.file, v.pod);
    let sc = &v.agent["securityContext"];
    assert_ne!(sc["privileged"], true, "{file}");
    assert_eq!(sc["allowPrivilegeEscalation"], false, "{file}");
    assert_eq!(
        arr(sc, "/capabilities/add"),
        [Value::from("NET_ADMIN"), Value::from("SYS_ADMIN")],
        "{file}: NET_ADMIN and SYS_ADMIN only"
    );
    assert_eq!(
        arr(sc, "/capabilities/drop"),
        [Value::from("ALL")],
        "{file}"
    );
    let host_paths: BTreeSet<&str> = arr(pod, "/volumes")
        .iter()
        .filter_map(|v| v.pointer("/hostPath/path")?.as_str())
        .collect();
    let expected: BTreeSet<&str> = [
        "/run/vpcnet",
        STATE_DIR,
        CNI_CONF_DIR,
        CNI_BIN_DIR,
        PLUGIN_LOG_DIR,
    ]
    .into();
    assert_eq!(
        host_paths, expected,
        "{file}: host paths (each is justified in manifests/README.md)"
    );
}

/// The init container installs the plugin into the node's CNI bin dir, with no capability.
fn check_install_cni(v: &Variant, top: &Help, install: &Help) {
    let (file, pod) = (v.file, v.pod);
    let init = container(pod, "initContainers", "install-cni", file);
    assert_eq!(s(init, "/image"), v.image, "{file}");
    assert_eq!(
        arr(init, "/command"),
        [Value::from(VPCNETD_IN_IMAGE)],
        "{file}"
    );
    assert!(
        top.subcommands.contains("install-cni"),
        "vpcnetd has no install-cni subcommand (subcommands: {:?})",
        top.subcommands
    );
    let iinv = Invocation::of(file, init, &v.config, v.cm_name);
    assert_eq!(
        iinv.positional,
        ["install-cni"],
        "{file}: init container args"
    );
    iinv.check_names(file, "install-cni", install);
    assert_eq!(
        iinv.value(install, "cni-bin-dir").as_deref(),
        Some(CNI_BIN_DIR),
        "{file}: --cni-bin-dir"
    );
    assert_host_dir(file, pod, init, CNI_BIN_DIR, false);
    assert_eq!(
        arr(init, "/securityContext/capabilities/drop"),
        [Value::from("ALL")],
        "{file}"
    );
    assert!(
        arr(init, "/securityContext/capabilities/add").is_empty(),
        "{file}: install-cni needs no capability"
    );
}

/// Every check of one DaemonSet variant, in the order a reader meets its parts.
fn check_variant(file: &str, datastore: &str, top: &Help, install: &Help) {
    let docs = yaml_docs(&manifests().join(file));
    let v = Variant::of(file, &docs);
    check_config_keys_are_flags(&v, top);
    check_pod_placement(&v);
    let inv = v.agent_invocation();
    check_agent_command_line(&v, &inv, top);
    check_agent_host_dirs(&v, &inv, top);
    check_datastore(&v, &inv, top, datastore);
    check_metrics_and_probes(&v, &inv, top);
    check_least_privilege(&v);
    assert_vpcnetd_parses(file, &inv);
    check_install_cni(&v, top, install);
}

#[test]
fn daemonsets_match_the_binaries() {
    let top = vpcnetd_help(&[]);
    let install = if top.subcommands.contains("install-cni") {
        vpcnetd_help(&["install-cni"])
    } else {
        Help::default()
    };
    for (file, datastore) in VARIANTS {
        check_variant(file, datastore, &top, &install);
    }
}

/// `--k=v` words as (k, v); panics on anything else.
fn flag_words<'a>(file: &str, words: &'a [Value]) -> Vec<(&'a str, &'a str)> {
    words
        .iter()
        .map(|w| {
            let w = w.as_str().expect("args are strings");
            let f = w
                .strip_prefix("--")
                .unwrap_or_else(|| panic!("{file}: {w:?} is not a --flag"));
            f.split_once('=').unwrap_or((f, ""))
        })
        .collect()
}

/// The cleanup DaemonSet (`manifests/uninstall.yaml`, docs/operations.md § Uninstall): one
/// DaemonSet and nothing else (no ConfigMap that would overwrite the agent's); on every node,
/// host network; an init container running `vpcnetd <the agent's paths> uninstall
/// --cni-bin-dir=…` with flags the real binary lists, the agent's exact paths, no `--force`,
/// each directory mounted writable from the node's same path, NET_ADMIN only; then a
/// container that only sleeps (so `rollout status` completes).
#[test]
fn uninstall_daemonset_matches_the_binary() {
    let file = "uninstall.yaml";
    let docs = yaml_docs(&manifests().join(file));
    assert_eq!(docs.len(), 1, "{file}: only the DaemonSet");
    let ds = one(&docs, "DaemonSet", file);
    assert_eq!(s(ds, "/metadata/namespace"), "kube-system", "{file}");
    let pod = ds.pointer("/spec/template/spec").expect("pod spec");
    assert_eq!(pod["hostNetwork"], true, "{file}: the node's namespace");
    assert_eq!(
        pod["automountServiceAccountToken"], false,
        "{file}: no API, no token"
    );
    assert!(
        arr(pod, "/tolerations")
            .iter()
            .any(|t| t["operator"] == "Exists" && t.get("key").is_none()),
        "{file}: every node, whatever its taints"
    );
    let top = vpcnetd_help(&[]);
    assert!(
        top.subcommands.contains("uninstall"),
        "vpcnetd has no uninstall subcommand: {:?}",
        top.subcommands
    );
    let sub = vpcnetd_help(&["uninstall"]);
    let init = container(pod, "initContainers", "uninstall", file);
    assert_eq!(
        s(init, "/image"),
        format!("vpcnet:{}", workspace_version()),
        "{file}"
    );
    assert_eq!(
        arr(init, "/command"),
        [Value::from(VPCNETD_IN_IMAGE)],
        "{file}"
    );
    let args = arr(init, "/args");
    let at = args
        .iter()
        .position(|a| a == "uninstall")
        .unwrap_or_else(|| panic!("{file}: no `uninstall` in {args:?}"));
    let (before, after) = (
        flag_words(file, &args[..at]),
        flag_words(file, &args[at + 1..]),
    );
    for (k, _) in &before {
        assert!(top.flags.contains_key(*k), "{file}: vpcnetd has no --{k}");
    }
    for (k, _) in &after {
        assert!(
            sub.flags.contains_key(*k),
            "{file}: `vpcnetd uninstall` has no --{k}"
        );
        assert_ne!(
            *k, "force",
            "{file}: --force is the operator's decision, not the default"
        );
    }
    let val = |flags: &[(&str, &str)], k: &str| -> String {
        flags
            .iter()
            .find(|(f, _)| *f == k)
            .map(|(_, v)| v.to_string())
            .unwrap_or_else(|| panic!("{file}: --{k} not given (the agent DaemonSet sets it)"))
    };
    // The agent DaemonSet's own values (check_agent_host_dirs holds it to the same ones).
    assert_eq!(val(&before, "socket"), SOCKET, "{file}");
    assert_eq!(val(&before, "state-dir"), STATE_DIR, "{file}");
    assert_eq!(val(&before, "cni-conf-dir"), CNI_CONF_DIR, "{file}");
    assert_eq!(val(&before, "cni-conf-name"), CNI_CONF_NAME, "{file}");
    assert_eq!(val(&after, "cni-bin-dir"), CNI_BIN_DIR, "{file}");
    for dir in ["/run/vpcnet", STATE_DIR, CNI_CONF_DIR, CNI_BIN_DIR] {
        assert_host_dir(file, pod, init, dir, false);
    }
    let froms = arr(init, "/envFrom");
    assert_eq!(froms.len(), 1, "{file}: envFrom");
    assert_eq!(
        froms[0]
            .pointer("/configMapRef/name")
            .and_then(Value::as_str),
        Some("vpcnet-config"),
        "{file}: the agent's ConfigMap"
    );
    assert_eq!(
        froms[0].pointer("/configMapRef/optional"),
        Some(&Value::from(true)),
        "{file}: the ConfigMap may already be deleted"
    );
    assert_net_admin_only(file, init);
    let containers = arr(pod, "/containers");
    assert_eq!(containers.len(), 1, "{file}: one idle container");
    let idle = &containers[0];
    assert_eq!(
        arr(idle, "/command"),
        [Value::from("sleep"), Value::from("infinity")],
        "{file}"
    );
    assert!(
        arr(idle, "/volumeMounts").is_empty(),
        "{file}: the idle container mounts nothing"
    );
    assert!(
        arr(idle, "/securityContext/capabilities/add").is_empty(),
        "{file}: the idle container needs no capability"
    );
}

#[test]
fn committed_manifests_are_the_generators_output() {
    let out = std::env::temp_dir().join(format!("vpcnet-gen-manifests-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&out);
    let st = Command::new("python3")
        .arg(repo().join("scripts/gen-manifests.py"))
        .arg("--out")
        .arg(&out)
        .status()
        .expect("python3 scripts/gen-manifests.py");
    assert!(st.success(), "gen-manifests.py failed");
    for f in GENERATED {
        assert!(
            read(&out.join(f)) == read(&manifests().join(f)),
            "manifests/{f} differs from the generator's output: edit manifests/src/ (or \
             scripts/gen-manifests.py), run `python3 scripts/gen-manifests.py`, commit both"
        );
    }
    let _ = std::fs::remove_dir_all(&out);
    // install.yaml: the CRD first (applied in one step with the agent), exactly as in its file.
    let install = yaml_docs(&manifests().join("install.yaml"));
    let crd = yaml_docs(&manifests().join(CRD_FILE));
    assert_eq!(crd.len(), 1);
    assert_eq!(
        install.first(),
        crd.first(),
        "install.yaml starts with the CRD"
    );
    assert_eq!(
        kind_of(&install, "CustomResourceDefinition").len(),
        1,
        "one CRD in install.yaml"
    );
}

#[test]
fn rbac_is_least_privilege() {
    for (file, datastore) in VARIANTS {
        let docs = yaml_docs(&manifests().join(file));
        let sa = one(&docs, "ServiceAccount", file);
        let roles = kind_of(&docs, "ClusterRole");
        // Every variant reads the API for NetworkPolicy (VPCNET_NETWORK_POLICY=true).
        assert_eq!(roles.len(), 1, "{file}");
        let ds = one(&docs, "DaemonSet", file);
        assert_ne!(
            sa["automountServiceAccountToken"], false,
            "{file}: the agent needs its token"
        );
        assert_ne!(
            ds.pointer("/spec/template/spec/automountServiceAccountToken"),
            Some(&Value::Bool(false)),
            "{file}"
        );
        let mut got = BTreeSet::new();
        for r in arr(roles[0], "/rules") {
            for g in arr(r, "/apiGroups") {
                for res in arr(r, "/resources") {
                    for verb in arr(r, "/verbs") {
                        got.insert(format!(
                            "{}/{}:{}",
                            g.as_str().expect("g"),
                            res.as_str().expect("r"),
                            verb.as_str().expect("v")
                        ));
                    }
                }
            }
            assert!(
                r.get("nonResourceURLs").is_none() && r.get("resourceNames").is_none(),
                "{file}: {r}"
            );
        }
        // Its own Node: get (the ownerReference's uid); claims: no update/patch (immutable)
        // — the Kubernetes datastore only; pods, namespaces, networkpolicies: read-only
        // (NetworkPolicy), every variant.
        let datastore_rules: Vec<String> = if *datastore == "kubernetes" {
            ["get"]
                .iter()
                .map(|v| format!("/nodes:{v}"))
                .chain(
                    ["get", "list", "watch", "create", "delete"]
                        .iter()
                        .map(|v| format!("vpcnet.io/prefixclaims:{v}")),
                )
                .collect()
        } else {
            Vec::new()
        };
        let want: BTreeSet<String> = datastore_rules
            .into_iter()
            // NetworkPolicy's inputs: read-only, exactly get/list/watch.
            .chain(
                ["/pods", "/namespaces", "networking.k8s.io/networkpolicies"]
                    .iter()
                    .flat_map(|r| {
                        ["get", "list", "watch"]
                            .iter()
                            .map(move |v| format!("{r}:{v}"))
                    }),
            )
            .collect();
        assert_eq!(got, want, "{file}: ClusterRole rules");
        let b = one(&docs, "ClusterRoleBinding", file);
        assert_eq!(
            b.pointer("/roleRef/name"),
            roles[0].pointer("/metadata/name"),
            "{file}"
        );
        let subj = &arr(b, "/subjects")[0];
        assert_eq!(subj["kind"], "ServiceAccount");
        assert_eq!(subj["name"], sa["metadata"]["name"], "{file}");
        assert_eq!(subj["namespace"], "kube-system", "{file}");
        let crds = yaml_docs(&manifests().join(CRD_FILE));
        let crd = one(&crds, "CustomResourceDefinition", CRD_FILE);
        assert_eq!(s(crd, "/metadata/name"), "prefixclaims.vpcnet.io");
        assert_eq!(s(crd, "/spec/scope"), "Cluster");
        let version = &arr(crd, "/spec/versions")[0];
        let props = version
            .pointer("/schema/openAPIV3Schema/properties/spec/properties")
            .and_then(Value::as_object)
            .expect("spec properties");
        let names: BTreeSet<&str> = props.keys().map(String::as_str).collect();
        assert_eq!(
            names,
            ["cidr", "node", "nodeIP", "nodeIPv6"].into(),
            "{file}: PrefixClaim spec"
        );
    }
}

#[test]
fn kind_config_dockerfile_and_bench_agree_with_manifests() {
    let kind = yaml_docs(&manifests().join("kind-config.yaml"));
    assert_eq!(kind.len(), 1);
    let kind = &kind[0];
    assert_eq!(kind["kind"], "Cluster");
    assert_eq!(kind["apiVersion"], "kind.x-k8s.io/v1alpha4");
    assert_eq!(
        kind.pointer("/networking/disableDefaultCNI"),
        Some(&Value::Bool(true))
    );
    let roles: Vec<&str> = arr(kind, "/nodes").iter().map(|n| s(n, "/role")).collect();
    assert_eq!(roles, ["control-plane", "worker", "worker"]);
    let pod_subnet = s(kind, "/networking/podSubnet");
    for (file, _) in VARIANTS {
        let docs = yaml_docs(&manifests().join(file));
        let cm = one(&docs, "ConfigMap", file);
        assert_eq!(
            s(cm, "/data/VPCNET_VPC_CIDR"),
            pod_subnet,
            "{file}: vpc-cidr vs kind podSubnet"
        );
    }

    // The IPv6-only and dual-stack kind configs (issue 11): the same cluster with ipFamily
    // ipv6 / dual; the IPv4 subnets of the dual one are the IPv4 config's, the IPv6 ones are
    // IPv6 and hold the ConfigMap's IPv6 prefix length.
    let cm_v6_len: u8 = {
        let (file, _) = VARIANTS[0];
        let docs = yaml_docs(&manifests().join(file));
        s(one(&docs, "ConfigMap", file), "/data/VPCNET_PREFIX_LEN_V6")
            .parse()
            .expect("VPCNET_PREFIX_LEN_V6 is a number")
    };
    for (file, family, want4) in [
        ("kind-config-ipv6.yaml", "ipv6", false),
        ("kind-config-dual.yaml", "dual", true),
    ] {
        let docs = yaml_docs(&manifests().join(file));
        assert_eq!(docs.len(), 1, "{file}");
        let k = &docs[0];
        assert_eq!(k["kind"], "Cluster", "{file}");
        assert_eq!(k["apiVersion"], "kind.x-k8s.io/v1alpha4", "{file}");
        assert_eq!(s(k, "/networking/ipFamily"), family, "{file}");
        assert_eq!(
            k.pointer("/networking/disableDefaultCNI"),
            Some(&Value::Bool(true)),
            "{file}"
        );
        let roles: Vec<&str> = arr(k, "/nodes").iter().map(|n| s(n, "/role")).collect();
        assert_eq!(roles, ["control-plane", "worker", "worker"], "{file}");
        for key in ["/networking/podSubnet", "/networking/serviceSubnet"] {
            let cidrs: Vec<ipnetwork::IpNetwork> = s(k, key)
                .split(',')
                .map(|c| {
                    c.parse()
                        .unwrap_or_else(|e| panic!("{file} {key} {c}: {e}"))
                })
                .collect();
            let v4: Vec<_> = cidrs.iter().filter(|c| c.is_ipv4()).collect();
            let v6: Vec<_> = cidrs.iter().filter(|c| c.is_ipv6()).collect();
            assert_eq!(v6.len(), 1, "{file} {key}: one IPv6 subnet");
            assert_eq!(v4.len(), usize::from(want4), "{file} {key}");
            if key == "/networking/podSubnet" {
                assert!(
                    v6[0].prefix() <= cm_v6_len,
                    "{file}: the IPv6 pod subnet holds a /{cm_v6_len} per node"
                );
                if want4 {
                    assert_eq!(v4[0].to_string(), pod_subnet, "{file}: IPv4 podSubnet");
                }
            }
        }
    }

    let dockerfile = read(&repo().join("Dockerfile"));
    for needle in [
        "protobuf-compiler",
        "nftables",
        "/usr/local/bin/",
        "--bin vpcnet-standalone",
        "--bin vpcnetd",
        "--manifest-path front/Cargo.toml",
    ] {
        assert!(dockerfile.contains(needle), "Dockerfile lacks {needle:?}");
    }
    assert!(
        dockerfile.contains(&format!(
            "COPY --from=build /out/vpcnet /out/vpcnet-standalone /out/vpcnetd {}",
            "/usr/local/bin/"
        )),
        "Dockerfile: the three binaries in /usr/local/bin (install-cni finds vpcnet and \
         vpcnet-standalone next to vpcnetd)"
    );
    assert!(
        dockerfile.contains(
            "COPY --from=cni-plugins /usr/lib/cni/portmap /usr/lib/cni/loopback /usr/local/bin/"
        ),
        "Dockerfile: portmap and loopback beside vpcnet (install-cni's default helpers source)"
    );
    let ignore = read(&repo().join(".dockerignore"));
    assert!(
        ignore.lines().any(|l| l.trim() == "target/"),
        ".dockerignore must exclude target/"
    );

    // kind-bench.sh points the etcd variant at kind's etcd by replacing the placeholder.
    let bench = read(&repo().join("scripts/kind-bench.sh"));
    let docs = yaml_docs(&manifests().join("vpcnet-etcd.yaml"));
    let endpoint = s(
        one(&docs, "ConfigMap", "vpcnet-etcd.yaml"),
        "/data/VPCNET_ETCD_ENDPOINTS",
    );
    assert!(
        bench.contains(&format!("s#{endpoint}#")),
        "kind-bench.sh must substitute {endpoint}"
    );
    for f in [
        "kind-config.yaml",
        "vpcnet-etcd.yaml",
        "vpcnet-kubernetes.yaml",
        CRD_FILE,
    ] {
        assert!(
            bench.contains(&format!("manifests/{f}")),
            "kind-bench.sh does not use manifests/{f}"
        );
    }
}

// ---- schema validation ----------------------------------------------------------------------

/// The validator, or None when it is missing and skipping was asked for (`test` is then
/// reported as skipped).
fn validator(test: &str) -> Option<PathBuf> {
    let path = std::env::var_os("KUBERNETES_VALIDATE")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(VALIDATOR_VENV).join("bin/kubernetes-validate"));
    if path.exists() {
        return Some(path);
    }
    if std::env::var("VPCNET_SKIP_MANIFEST_VALIDATION").as_deref() == Ok("1") {
        skip(
            &format!("manifests::{test}"),
            &format!(
                "VPCNET_SKIP_MANIFEST_VALIDATION=1 and {} is missing",
                path.display()
            ),
        );
        return None;
    }
    panic!(
        "{} not found: run scripts/deps.sh (it installs PyPI kubernetes-validate into {VALIDATOR_VENV}), \
         set KUBERNETES_VALIDATE, or set VPCNET_SKIP_MANIFEST_VALIDATION=1 to skip",
        path.display()
    );
}

/// Kubernetes objects: every manifests/*.yaml but the kind config (not a Kubernetes object).
fn kubernetes_files() -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(manifests())
        .expect("manifests/")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml" || e == "yml"))
        // Not Kubernetes built-ins: kind's own config, and the Prometheus Operator's
        // PodMonitor (a CRD kubernetes-validate does not know; tests/tests/monitoring.rs).
        .filter(|p| {
            p.file_name().is_some_and(|n| {
                !n.to_string_lossy().starts_with("kind-config") && n != "podmonitor.yaml"
            })
        })
        .collect();
    files.sort();
    assert!(files.len() >= VARIANTS.len(), "{files:?}");
    files
}

#[test]
fn manifests_validate_against_kubernetes_schemas() {
    let Some(validator) = validator("manifests_validate_against_kubernetes_schemas") else {
        return;
    };
    let files = kubernetes_files();
    for version in K8S_VERSIONS {
        let out = Command::new(&validator)
            .args(["--strict", "--kubernetes-version", version])
            .args(&files)
            .output()
            .expect("running kubernetes-validate");
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        // Unknown kinds only WARN (exit 0): a typo in apiVersion/kind must fail too.
        let bad: Vec<&str> = text.lines().filter(|l| !l.starts_with("INFO ")).collect();
        assert!(
            out.status.success() && bad.is_empty(),
            "kubernetes-validate {version}:\n{text}"
        );
        let passed = text
            .lines()
            .filter(|l| l.contains(" passed for resource "))
            .count();
        let objects: usize = files.iter().map(|f| yaml_docs(f).len()).sum();
        assert_eq!(
            passed, objects,
            "every object validated against {version}:\n{text}"
        );
    }
}

/// The custom resource the planned Kubernetes datastore writes validates against the CRD's
/// openAPIV3Schema (kubernetes-validate knows only built-in kinds), and a malformed one fails.
#[test]
fn prefixclaim_example_validates_against_the_crd() {
    let Some(validator) = validator("prefixclaim_example_validates_against_the_crd") else {
        return;
    };
    let python = validator.with_file_name("python");
    let script = r#"
import sys, json, yaml, jsonschema
crd = next(d for d in yaml.safe_load_all(open(sys.argv[1])) if d and d["kind"] == "CustomResourceDefinition")
cr = yaml.safe_load(open(sys.argv[2]))
if sys.argv[3:]:
    cr["spec"]["cidr"] = sys.argv[3]
group, version = cr["apiVersion"].split("/")
assert group == crd["spec"]["group"] and cr["kind"] == crd["spec"]["names"]["kind"], "apiVersion/kind"
schema = next(v for v in crd["spec"]["versions"] if v["name"] == version)["schema"]["openAPIV3Schema"]
jsonschema.validate(cr, schema)
print("ok")
"#;
    let run = |extra: &[&str]| {
        Command::new(&python)
            .arg("-c")
            .arg(script)
            .arg(manifests().join(CRD_FILE))
            .arg(manifests().join("examples/prefixclaim.yaml"))
            .args(extra)
            .output()
            .expect("running the venv's python")
    };
    let ok = run(&[]);
    assert!(
        ok.status.success(),
        "example PrefixClaim: {}",
        String::from_utf8_lossy(&ok.stderr)
    );
    let bad = run(&["10.244.0.16"]);
    assert!(
        !bad.status.success(),
        "a cidr without a length must be refused by the CRD schema"
    );
    // An IPv6 prefix as the agent writes it (dual-stack); without a length it is refused.
    let v6 = run(&["fd00:10::/80"]);
    assert!(
        v6.status.success(),
        "an IPv6 PrefixClaim: {}",
        String::from_utf8_lossy(&v6.stderr)
    );
    let bad = run(&["fd00:10::"]);
    assert!(
        !bad.status.success(),
        "an IPv6 cidr without a length must be refused by the CRD schema"
    );
}
