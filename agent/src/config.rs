//! `vpcnetd` command line. Every flag can also be set as `VPCNET_<FLAG>` in the environment
//! (the DaemonSet sets them that way).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use ipnetwork::{IpNetwork, Ipv4Network, Ipv6Network};

use crate::obs::log::LogFormat;
use vpcnet_pool::{PoolConfig, PoolConfig6};
use vpcnet_proto::api::DEFAULT_SOCKET;

#[derive(Debug, Parser)]
#[command(
    name = "vpcnetd",
    version,
    about = "vpcnet node agent: VPC-style warm pool of pod addresses"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,
    #[command(flatten)]
    pub run: RunArgs,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the agent (the default).
    Run,
    /// Check the run flags and environment the way `run` does, then exit 0 (valid) or 1
    /// without starting anything or touching the host.
    CheckConfig,
    /// Print the pool of a running agent.
    Status {
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
    },
    /// Copy the `vpcnet` plugin into the CNI bin directory (an init container runs this).
    InstallCni(InstallCniArgs),
    /// Rebuild a lost or damaged state from the kernel: every pod route of ours through a
    /// vpcnet host veth becomes an allocation (run in the agent's network namespace with the
    /// agent's flags, agent stopped; the old state files are kept as `*.bad-<time>`).
    RebuildState,
    /// Take vpcnet off this node (agent stopped): its conflist, plugin binary, nft tables,
    /// every proto 171 route, the state dir, socket and locks — nothing else. Refuses while
    /// pods still have vpcnet addresses unless --force. Takes the run flags (--socket,
    /// --state-dir, --cni-conf-dir, --cni-conf-name) before the subcommand, or their env.
    Uninstall(UninstallArgs),
    /// Write one `vpcnet-bundle-<node>-<time>.tar.gz` into DIR (default: here) for a bug
    /// report: status, /metrics, /pool, the effective configuration, the conflist, our routes
    /// and nft table, a journal summary, the plugin log's tail. No key, token or credential.
    SupportBundle {
        /// Directory to write the archive into.
        dir: Option<PathBuf>,
    },
}

#[derive(Debug, Clone, Args)]
pub struct UninstallArgs {
    /// Uninstall even while pods have vpcnet addresses (their host veths are deleted: they
    /// lose their network).
    #[arg(long)]
    pub force: bool,
    /// Directory `install-cni` put the plugin into.
    #[arg(long, env = "VPCNET_CNI_BIN_DIR", default_value = "/opt/cni/bin")]
    pub cni_bin_dir: PathBuf,
}

#[derive(Debug, Clone, Args)]
pub struct InstallCniArgs {
    /// The plugin binary to install (default: `vpcnet` next to this vpcnetd executable).
    #[arg(long, env = "VPCNET_PLUGIN_SRC")]
    pub plugin_src: Option<PathBuf>,
    /// Directory holding the `portmap` and `loopback` plugins to install when the node lacks
    /// them (default: the plugin's directory; the image ships them there).
    #[arg(long, env = "VPCNET_CNI_HELPERS_SRC")]
    pub cni_helpers_src: Option<PathBuf>,
    /// Directory the container runtime runs CNI plugins from.
    #[arg(long, env = "VPCNET_CNI_BIN_DIR", default_value = "/opt/cni/bin")]
    pub cni_bin_dir: PathBuf,
}

/// `--max-pods` when it is not set and no Node says otherwise (the kubelet's default).
pub const DEFAULT_MAX_PODS: u32 = 110;

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum DatastoreKind {
    /// Embedded single-node store in the state directory.
    Local,
    /// etcd v3 (`--etcd-endpoints`): many nodes share one VPC.
    Etcd,
    /// Kubernetes API (PrefixClaim objects owned by their Node): in-cluster service account,
    /// or `--kubeconfig`.
    Kubernetes,
}

#[derive(Debug, Clone, Args)]
pub struct RunArgs {
    /// Unix socket the plugin talks to.
    #[arg(long, env = "VPCNET_SOCKET", default_value = DEFAULT_SOCKET, global = true)]
    pub socket: PathBuf,
    /// Directory for the crash-safe pool state.
    #[arg(long, env = "VPCNET_STATE_DIR", default_value = "/var/lib/vpcnet")]
    pub state_dir: PathBuf,
    /// When the pool journal is flushed to the device: `prefixes` (default) before every
    /// change of the node's prefixes — a pod's address is written before the reply and
    /// survives any crash of the agent, and only a crash of the machine, which ends every pod,
    /// can lose it; `every-change` before every reply, pods' too (one fdatasync per ADD/DEL
    /// or per batch of ADDs that arrived together). docs/reliability.md, item 3.
    #[arg(long, env = "VPCNET_JOURNAL_SYNC", value_enum, default_value_t = crate::node::store::JournalSync::Prefixes)]
    pub journal_sync: crate::node::store::JournalSync,
    /// The VPC: CIDRs prefixes are claimed from (repeatable; comma-separated in the env).
    /// IPv4 and IPv6 CIDRs, any mix: the families present decide the mode (IPv4-only,
    /// IPv6-only or dual-stack; docs/dual-stack.md).
    #[arg(long = "vpc-cidr", env = "VPCNET_VPC_CIDR", value_delimiter = ',')]
    pub vpc_cidrs: Vec<IpNetwork>,
    /// Length of the IPv4 prefixes a node claims (28 = 16 addresses).
    #[arg(long, env = "VPCNET_PREFIX_LEN", default_value_t = 28)]
    pub prefix_len: u8,
    /// Length of the IPv6 prefixes a node claims (64..=120; 80 = what EC2 delegates per
    /// interface: one prefix per node is the normal case).
    #[arg(long, env = "VPCNET_PREFIX_LEN_V6", default_value_t = 80)]
    pub prefix_len_v6: u8,
    /// Keep at least this many free addresses (0 = off).
    #[arg(long, env = "VPCNET_WARM_IP_TARGET", default_value_t = 0)]
    pub warm_ip_target: u32,
    /// Hold at least this many addresses in total (0 = off).
    #[arg(long, env = "VPCNET_MINIMUM_IP_TARGET", default_value_t = 0)]
    pub minimum_ip_target: u32,
    /// Keep at least this many wholly free prefixes.
    #[arg(long, env = "VPCNET_WARM_PREFIX_TARGET", default_value_t = 1)]
    pub warm_prefix_target: u32,
    /// Most pods on this node; ADD beyond it fails with CNI code 11. Unset: with
    /// `--datastore kubernetes`, the Node's `status.capacity.pods` (the kubelet's maxPods),
    /// read at start; otherwise (or if the Node cannot be read) 110.
    #[arg(long, env = "VPCNET_MAX_PODS")]
    pub max_pods: Option<u32>,
    /// How long a released address rests before reuse (e.g. 30s, 2m, 500ms).
    #[arg(long, env = "VPCNET_IP_COOLDOWN", default_value = "30s", value_parser = parse_duration)]
    pub ip_cooldown: Duration,
    /// A wholly free prefix is released only after being held this long.
    #[arg(long, env = "VPCNET_MIN_PREFIX_AGE", default_value = "60s", value_parser = parse_duration)]
    pub min_prefix_age: Duration,
    /// How often the warm pool is re-planned even when nothing happens.
    #[arg(long, env = "VPCNET_POOL_CHECK_INTERVAL", default_value = "5s", value_parser = parse_duration)]
    pub pool_check_interval: Duration,
    /// How often the agent reconciles its allocations with the host's veths and routes.
    #[arg(long, env = "VPCNET_RECONCILE_INTERVAL", default_value = "60s", value_parser = parse_duration)]
    pub reconcile_interval: Duration,
    /// An allocation younger than this is never released by reconcile (its ADD may be in flight).
    #[arg(long, env = "VPCNET_RECONCILE_GRACE", default_value = "10s", value_parser = parse_duration)]
    pub reconcile_grace: Duration,
    /// Cluster datastore for prefix claims.
    #[arg(long, env = "VPCNET_DATASTORE", value_enum, default_value_t = DatastoreKind::Local)]
    pub datastore: DatastoreKind,
    /// This node's name in the datastore (default: the hostname).
    #[arg(long, env = "VPCNET_NODE_NAME")]
    pub node_name: Option<String>,
    /// This node's address, which peers route its prefixes via. Repeatable (or a comma
    /// list), one per family: IPv4 prefixes are routed via the IPv4 one, IPv6 prefixes via
    /// the IPv6 one (docs/dual-stack.md).
    #[arg(long = "node-ip", env = "VPCNET_NODE_IP", value_delimiter = ',')]
    pub node_ips: Vec<IpAddr>,
    /// etcd endpoints (comma-separated), e.g. http://10.0.0.2:2379.
    #[arg(long, env = "VPCNET_ETCD_ENDPOINTS", value_delimiter = ',')]
    pub etcd_endpoints: Vec<String>,
    /// Key prefix of vpcnet's data in etcd.
    #[arg(long, env = "VPCNET_ETCD_PREFIX", default_value = "/vpcnet")]
    pub etcd_prefix: String,
    /// TTL of the lease that says this node is alive (`<prefix>/nodes/<node>/alive`); a node
    /// dead this long starts its `--etcd-claim-grace`.
    #[arg(long, env = "VPCNET_ETCD_LEASE_TTL", default_value = "15s", value_parser = parse_duration)]
    pub etcd_lease_ttl: Duration,
    /// How long a node's liveness must be gone (its lease expired, and no new lease announced)
    /// before another node deletes its claims: a dead node's prefixes come back after this.
    /// Claims do not expire with the lease (a live node that cannot renew for a while keeps
    /// them); `0` never deletes them (an operator does), else at least 1s. A running node is
    /// never swept, however short the grace: while it shows no `alive` key it rewrites its
    /// `announced` record every quarter of the grace.
    #[arg(long, env = "VPCNET_ETCD_CLAIM_GRACE", default_value = "10m", value_parser = parse_duration)]
    pub etcd_claim_grace: Duration,
    /// CA bundle to verify etcd's certificate (enables TLS).
    #[arg(long, env = "VPCNET_ETCD_CA")]
    pub etcd_ca: Option<PathBuf>,
    /// Client certificate for etcd (with --etcd-key).
    #[arg(long, env = "VPCNET_ETCD_CERT")]
    pub etcd_cert: Option<PathBuf>,
    /// Client key for etcd (with --etcd-cert).
    #[arg(long, env = "VPCNET_ETCD_KEY")]
    pub etcd_key: Option<PathBuf>,
    /// kubeconfig file for `--datastore kubernetes` (default: the in-cluster service account).
    #[arg(long, env = "VPCNET_KUBECONFIG")]
    pub kubeconfig: Option<PathBuf>,
    /// Enforce Kubernetes NetworkPolicy for this node's pods (nftables table
    /// `inet vpcnet-policy`, fed by watches of Pods, Namespaces and NetworkPolicies through the
    /// Kubernetes API: `--kubeconfig` or the in-cluster service account, whatever
    /// `--datastore`). Off: no table, no watches.
    #[arg(long, env = "VPCNET_NETWORK_POLICY", default_value_t = false, action = clap::ArgAction::Set)]
    pub network_policy: bool,
    /// Masquerade pod traffic to destinations outside the VPC with the node's address.
    #[arg(long, env = "VPCNET_SNAT", default_value_t = true, action = clap::ArgAction::Set)]
    pub snat: bool,
    /// Destinations (besides the VPC) pod traffic to which keeps the pod address (repeatable,
    /// either family).
    #[arg(
        long = "snat-exclude",
        env = "VPCNET_SNAT_EXCLUDE",
        value_delimiter = ','
    )]
    pub snat_exclude: Vec<IpNetwork>,
    /// IPv6 pod traffic leaving the VPC: `auto` masquerades it when the IPv6 VPC CIDR is a
    /// unique local one (`fc00::/7`, not routable outside) and leaves global unicast pod
    /// addresses as they are; `always` masquerades every IPv6 VPC CIDR; `never` none.
    #[arg(long, env = "VPCNET_SNAT_V6", value_enum, default_value_t = crate::snat::SnatV6::Auto)]
    pub snat_v6: crate::snat::SnatV6,
    /// How often peer routes are re-synced even without a watch event.
    #[arg(long, env = "VPCNET_PEER_SYNC_INTERVAL", default_value = "10s", value_parser = parse_duration)]
    pub peer_sync_interval: Duration,
    /// Address of /metrics, /healthz, /readyz and /pool (`off` or "" disables).
    #[arg(long, env = "VPCNET_METRICS_ADDR", default_value = "127.0.0.1:9961")]
    pub metrics_addr: String,
    /// Directory the agent writes its conflist to once pods can get addresses ("" = don't;
    /// the DaemonSet sets /etc/cni/net.d).
    #[arg(long, env = "VPCNET_CNI_CONF_DIR", default_value = "")]
    pub cni_conf_dir: String,
    /// File name of that conflist.
    #[arg(
        long,
        env = "VPCNET_CNI_CONF_NAME",
        default_value = "10-vpcnet.conflist"
    )]
    pub cni_conf_name: String,
    /// The plugin's log file, written into that conflist as `logFile` (an absolute path;
    /// unset: the plugin's default, /var/log/vpcnet/plugin.log).
    #[arg(long, env = "VPCNET_CNI_LOG_FILE")]
    pub cni_log_file: Option<PathBuf>,
    /// The plugin's log level, written into that conflist as `logLevel` (unset: info).
    #[arg(long, env = "VPCNET_CNI_LOG_LEVEL", value_parser = ["error", "info", "debug"])]
    pub cni_log_level: Option<String>,
    /// The agent's log level: error, warn, info, debug, trace, or EnvFilter directives
    /// (`info,vpcnet_agent::loops=debug`). At info the datastore libraries (kube, tonic, hyper,
    /// h2, tower, etcd-client, rustls) are held to warn; at debug they show.
    #[arg(long, env = "VPCNET_LOG_LEVEL", default_value = "info", global = true)]
    pub log_level: String,
    /// The agent's log lines on stderr: text, or JSON (one object a line).
    #[arg(long, env = "VPCNET_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text, global = true)]
    pub log_format: LogFormat,
}

/// Every environment variable some `vpcnetd` flag reads (of every subcommand).
pub fn known_env_vars() -> Vec<String> {
    use clap::CommandFactory;
    fn walk(c: &clap::Command, out: &mut Vec<String>) {
        for a in c.get_arguments() {
            if let Some(e) = a.get_env() {
                out.push(e.to_string_lossy().into_owned());
            }
        }
        for s in c.get_subcommands() {
            walk(s, out);
        }
    }
    let mut out = Vec::new();
    walk(&Cli::command(), &mut out);
    out.sort();
    out.dedup();
    out
}

/// `VPCNET_*` variables in `env` that no flag reads: a ConfigMap key with a typo, or a
/// setting of another version. Reported, never silently ignored.
pub fn unknown_env_vars(env: impl IntoIterator<Item = String>) -> Vec<String> {
    let known = known_env_vars();
    let mut v: Vec<String> = env
        .into_iter()
        .filter(|k| k.starts_with("VPCNET_") && !known.contains(k))
        .collect();
    v.sort();
    v
}

/// `30s`, `2m`, `1h`, `500ms`, or a plain number of seconds.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let (num, unit) = s
        .find(|c: char| !c.is_ascii_digit())
        .map_or((s, ""), |i| s.split_at(i));
    let n: u64 = num
        .parse()
        .map_err(|_| format!("{s:?} is not a duration like 30s, 2m, 500ms"))?;
    match unit {
        "" | "s" => Ok(Duration::from_secs(n)),
        "ms" => Ok(Duration::from_millis(n)),
        "m" => Ok(Duration::from_secs(n * 60)),
        "h" => Ok(Duration::from_secs(n * 3600)),
        _ => Err(format!("{s:?}: unknown unit {unit:?} (ms, s, m, h)")),
    }
}

/// Which address families pods get, decided by the families of `--vpc-cidr`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StackMode {
    /// Only IPv4 VPC CIDRs: today's behaviour.
    V4,
    /// Only IPv6 VPC CIDRs.
    V6,
    /// Both: every pod gets one address of each family.
    Dual,
}

impl StackMode {
    pub fn has_v4(self) -> bool {
        matches!(self, StackMode::V4 | StackMode::Dual)
    }
    pub fn has_v6(self) -> bool {
        matches!(self, StackMode::V6 | StackMode::Dual)
    }
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

impl RunArgs {
    /// The IPv4 `--vpc-cidr`s, in the order given.
    pub fn vpc_cidrs_v4(&self) -> Vec<Ipv4Network> {
        self.vpc_cidrs
            .iter()
            .filter_map(|c| match c {
                IpNetwork::V4(n) => Some(*n),
                IpNetwork::V6(_) => None,
            })
            .collect()
    }

    /// The IPv6 `--vpc-cidr`s, in the order given.
    pub fn vpc_cidrs_v6(&self) -> Vec<Ipv6Network> {
        self.vpc_cidrs
            .iter()
            .filter_map(|c| match c {
                IpNetwork::V6(n) => Some(*n),
                IpNetwork::V4(_) => None,
            })
            .collect()
    }

    /// The SNAT table for these flags (`--vpc-cidr`, `--snat-exclude`, `--snat-v6`).
    pub fn snat_config(&self) -> crate::snat::SnatConfig {
        let (ex4, ex6) =
            self.snat_exclude
                .iter()
                .fold((Vec::new(), Vec::new()), |(mut v4, mut v6), c| {
                    match c {
                        IpNetwork::V4(n) => v4.push(*n),
                        IpNetwork::V6(n) => v6.push(*n),
                    }
                    (v4, v6)
                });
        crate::snat::SnatConfig {
            vpc_cidrs: self.vpc_cidrs_v4(),
            exclude: ex4,
            vpc_cidrs_v6: self.vpc_cidrs_v6(),
            exclude_v6: ex6,
            v6: self.snat_v6,
        }
    }

    /// The mode the `--vpc-cidr` families decide; `None` without any `--vpc-cidr`.
    pub fn mode(&self) -> Option<StackMode> {
        let v4 = self.vpc_cidrs.iter().any(IpNetwork::is_ipv4);
        let v6 = self.vpc_cidrs.iter().any(IpNetwork::is_ipv6);
        match (v4, v6) {
            (true, true) => Some(StackMode::Dual),
            (true, false) => Some(StackMode::V4),
            (false, true) => Some(StackMode::V6),
            (false, false) => None,
        }
    }

    /// Checks what clap cannot (returns a message naming the flag), and refuses what this
    /// build does not serve yet: IPv6 pod addresses (issue 11 is built in steps; the flags
    /// are accepted and checked by [`RunArgs::validate_flags`], the agent does not use them).
    pub fn validate(&self) -> Result<(), String> {
        self.validate_flags()?;
        // Many nodes (a shared datastore): peers route our IPv6 prefixes via our IPv6
        // address; without one they could not, so refuse rather than serve unroutable pods.
        if let Some(c) = self.vpc_cidrs_v6().first() {
            if self.datastore != DatastoreKind::Local && self.node_ip6().is_none() {
                return Err(format!(
                    "--node-ip: an IPv6 --vpc-cidr ({c}) with --datastore {:?} (many nodes) needs \
                     this node's IPv6 address as --node-ip (peers route its IPv6 prefixes via \
                     it)",
                    self.datastore
                ));
            }
        }
        Ok(())
    }

    /// The IPv4 `--node-ip`, if given.
    pub fn node_ip(&self) -> Option<Ipv4Addr> {
        self.node_ips.iter().find_map(|ip| match ip {
            IpAddr::V4(ip) => Some(*ip),
            IpAddr::V6(_) => None,
        })
    }

    /// The IPv6 `--node-ip`, if given.
    pub fn node_ip6(&self) -> Option<Ipv6Addr> {
        self.node_ips.iter().find_map(|ip| match ip {
            IpAddr::V6(ip) => Some(*ip),
            IpAddr::V4(_) => None,
        })
    }

    /// Every check of the flags, IPv6 ones included, with a message naming the flag.
    pub fn validate_flags(&self) -> Result<(), String> {
        if self.vpc_cidrs.is_empty() {
            return Err("--vpc-cidr is required (the CIDR pods get addresses from)".into());
        }
        for (i, a) in self.node_ips.iter().enumerate() {
            if let Some(b) = self.node_ips[i + 1..]
                .iter()
                .find(|b| b.is_ipv4() == a.is_ipv4())
            {
                return Err(format!(
                    "--node-ip {a} and --node-ip {b} are of one family: give at most one per \
                     family"
                ));
            }
        }
        if !(16..=32).contains(&self.prefix_len) {
            return Err(format!(
                "--prefix-len {} must be within 16..=32",
                self.prefix_len
            ));
        }
        for c in self.vpc_cidrs_v4() {
            if c.prefix() > self.prefix_len {
                return Err(format!(
                    "--vpc-cidr {c} is smaller than one /{} prefix (--prefix-len)",
                    self.prefix_len
                ));
            }
        }
        for c in self.vpc_cidrs_v6() {
            if c.prefix() > self.prefix_len_v6 {
                return Err(format!(
                    "--prefix-len-v6 {}: shorter than /{} (--vpc-cidr {c}): a node's prefix \
                     must fit in the VPC",
                    self.prefix_len_v6,
                    c.prefix()
                ));
            }
        }
        if !(64..=120).contains(&self.prefix_len_v6) {
            return Err(format!(
                "--prefix-len-v6 {} must be within 64..=120",
                self.prefix_len_v6
            ));
        }
        for (i, a) in self.vpc_cidrs.iter().enumerate() {
            for b in &self.vpc_cidrs[i + 1..] {
                let overlap = match (a, b) {
                    (IpNetwork::V4(a), IpNetwork::V4(b)) => a.overlaps(*b),
                    (IpNetwork::V6(a), IpNetwork::V6(b)) => a.overlaps(*b),
                    _ => false,
                };
                if overlap {
                    return Err(format!("--vpc-cidr {a} overlaps --vpc-cidr {b}"));
                }
            }
        }
        if self.datastore == DatastoreKind::Etcd && self.etcd_endpoints.is_empty() {
            return Err("--datastore etcd needs --etcd-endpoints".into());
        }
        // The gap bridge (`datastore/etcd/liveness.rs`) rewrites `announced` every quarter of
        // the grace; a grace shorter than a second leaves no room for that write's round trip.
        if !self.etcd_claim_grace.is_zero() && self.etcd_claim_grace < Duration::from_secs(1) {
            return Err(format!(
                "--etcd-claim-grace {:?} is too short: 0 (never sweep) or at least 1s",
                self.etcd_claim_grace
            ));
        }
        if self.etcd_cert.is_some() != self.etcd_key.is_some() {
            return Err("--etcd-cert and --etcd-key go together".into());
        }
        if self.max_pods == Some(0) {
            return Err("--max-pods must be at least 1".into());
        }
        crate::obs::http::parse_addr(&self.metrics_addr)?;
        crate::obs::log::directives(&self.log_level)
            .map_err(|e| format!("--log-level {:?}: {e}", self.log_level))?;
        if !self.cni_conf_dir.is_empty()
            && (!self.cni_conf_name.ends_with(".conflist") || self.cni_conf_name.contains('/'))
        {
            return Err(format!(
                "--cni-conf-name {:?} must be a file name ending in .conflist",
                self.cni_conf_name
            ));
        }
        if self.cni_conf_dir.is_empty()
            && (self.cni_log_file.is_some() || self.cni_log_level.is_some())
        {
            return Err(
                "--cni-log-file and --cni-log-level go into the conflist: they need --cni-conf-dir"
                    .into(),
            );
        }
        if let Some(f) = &self.cni_log_file {
            if !f.is_absolute() {
                return Err(format!(
                    "--cni-log-file {} must be an absolute path (the runtime runs the plugin)",
                    f.display()
                ));
            }
        }
        Ok(())
    }

    pub fn pool_config(&self) -> PoolConfig {
        PoolConfig {
            vpc_cidrs: self.vpc_cidrs_v4(),
            prefix_len: self.prefix_len,
            warm_ip_target: self.warm_ip_target,
            minimum_ip_target: self.minimum_ip_target,
            warm_prefix_target: self.warm_prefix_target,
            max_pods: self.max_pods.unwrap_or(DEFAULT_MAX_PODS),
            cooldown_ms: millis(self.ip_cooldown),
            min_prefix_age_ms: millis(self.min_prefix_age),
        }
    }

    /// The IPv6 pool's configuration, when an IPv6 `--vpc-cidr` is set: the pool policy with
    /// the warm targets off (docs/dual-stack.md): it claims a prefix only when it has no free
    /// address (one /80 per node in practice) and releases a wholly-free one only while
    /// another still has room. Max-pods, cooldown and prefix age as for IPv4.
    pub fn pool_config6(&self) -> Option<PoolConfig6> {
        let vpc_cidrs = self.vpc_cidrs_v6();
        (!vpc_cidrs.is_empty()).then(|| PoolConfig6 {
            vpc_cidrs,
            prefix_len: self.prefix_len_v6,
            warm_ip_target: 0,
            minimum_ip_target: 0,
            warm_prefix_target: 0,
            max_pods: self.max_pods.unwrap_or(DEFAULT_MAX_PODS),
            cooldown_ms: millis(self.ip_cooldown),
            min_prefix_age_ms: millis(self.min_prefix_age),
        })
    }

    pub fn node_name(&self) -> String {
        self.node_name.clone().unwrap_or_else(|| {
            nix::unistd::gethostname()
                .ok()
                .and_then(|h| h.into_string().ok())
                .unwrap_or_else(|| "localhost".into())
        })
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("7"), Ok(Duration::from_secs(7)));
        assert!(parse_duration("7x").is_err());
        assert!(parse_duration("s").is_err());
    }

    #[test]
    fn validation_names_flags() {
        let cli = Cli::parse_from([
            "vpcnetd",
            "--vpc-cidr",
            "10.0.0.0/16",
            "--vpc-cidr",
            "10.0.128.0/17",
        ]);
        assert!(cli.run.validate().unwrap_err().contains("overlaps"));
        let cli = Cli::parse_from(["vpcnetd"]);
        assert!(cli.run.validate().unwrap_err().contains("--vpc-cidr"));
        let cli = Cli::parse_from(["vpcnetd", "--vpc-cidr", "10.0.0.0/30"]);
        assert!(cli.run.validate().unwrap_err().contains("--prefix-len"));
        let cli = Cli::parse_from(["vpcnetd", "--vpc-cidr", "10.0.0.0/24", "status", "--json"]);
        assert!(matches!(cli.command, Some(Command::Status { json: true })));
        let cli = Cli::parse_from(["vpcnetd", "install-cni", "--cni-bin-dir", "/x"]);
        match cli.command {
            Some(Command::InstallCni(a)) => {
                assert_eq!(a.cni_bin_dir, PathBuf::from("/x"));
                assert_eq!(a.plugin_src, None);
            }
            other => panic!("{other:?}"),
        }
        let cli = Cli::parse_from([
            "vpcnetd",
            "--vpc-cidr",
            "10.0.0.0/16",
            "--metrics-addr",
            "x",
        ]);
        assert!(cli.run.validate().unwrap_err().contains("--metrics-addr"));
        let cli = Cli::parse_from([
            "vpcnetd",
            "--vpc-cidr",
            "10.0.0.0/16",
            "--metrics-addr",
            "off",
        ]);
        assert!(cli.run.validate().is_ok());
        let grace = |g: &str| {
            Cli::parse_from([
                "vpcnetd",
                "--vpc-cidr",
                "10.0.0.0/16",
                "--etcd-claim-grace",
                g,
            ])
            .run
            .validate()
        };
        assert!(grace("500ms").unwrap_err().contains("--etcd-claim-grace"));
        assert!(grace("0").is_ok());
        assert!(grace("1s").is_ok());
    }

    #[test]
    fn node_ip_is_one_per_family_and_ipv6_many_nodes_need_one() {
        let parse = |args: &[&str]| Cli::parse_from(["vpcnetd"].iter().chain(args)).run;
        let a = parse(&[
            "--vpc-cidr",
            "10.0.0.0/16,fd00:10::/64",
            "--node-ip",
            "192.0.2.7",
            "--node-ip",
            "fd00:1::7",
            "--datastore",
            "etcd",
            "--etcd-endpoints",
            "http://127.0.0.1:2379",
        ]);
        assert_eq!(a.node_ip(), Some(Ipv4Addr::new(192, 0, 2, 7)));
        assert_eq!(a.node_ip6(), Some("fd00:1::7".parse().unwrap()));
        assert!(a.validate().is_ok());
        // A comma list works too; IPv4 only: no IPv6 address.
        let a = parse(&["--vpc-cidr", "10.0.0.0/16", "--node-ip", "192.0.2.7"]);
        assert_eq!(
            (a.node_ip(), a.node_ip6()),
            (Some(Ipv4Addr::new(192, 0, 2, 7)), None)
        );
        // Two of one family: refused naming the flag.
        let e = parse(&[
            "--vpc-cidr",
            "10.0.0.0/16",
            "--node-ip",
            "192.0.2.7,192.0.2.8",
        ])
        .validate()
        .unwrap_err();
        assert!(
            e.starts_with("--node-ip 192.0.2.7 and --node-ip 192.0.2.8"),
            "{e}"
        );
        // Many nodes with an IPv6 VPC and no IPv6 --node-ip: refused naming the flag.
        for ds in [
            &[
                "--datastore",
                "etcd",
                "--etcd-endpoints",
                "http://127.0.0.1:2379",
            ][..],
            &["--datastore", "kubernetes"][..],
        ] {
            let mut args = vec![
                "--vpc-cidr",
                "10.0.0.0/16,fd00:10::/64",
                "--node-ip",
                "192.0.2.7",
            ];
            args.extend_from_slice(ds);
            let e = parse(&args).validate().unwrap_err();
            assert!(
                e.starts_with("--node-ip: an IPv6 --vpc-cidr (fd00:10::/64)"),
                "{e}"
            );
        }
        // One node (local): fine without.
        assert!(parse(&["--vpc-cidr", "fd00:10::/64"]).validate().is_ok());
    }

    #[test]
    fn vpc_cidr_families_decide_the_mode_and_ipv6_flags_are_checked() {
        let parse = |args: &[&str]| Cli::parse_from(["vpcnetd"].iter().chain(args)).run;
        // IPv4-only: as before; the IPv6 prefix length has its default and changes nothing.
        let a = parse(&["--vpc-cidr", "10.0.0.0/16"]);
        assert_eq!(a.mode(), Some(StackMode::V4));
        assert_eq!(a.prefix_len_v6, 80);
        assert!(a.validate().is_ok());
        assert_eq!(a.pool_config().vpc_cidrs, a.vpc_cidrs_v4());
        assert_eq!(parse(&[]).mode(), None);
        // IPv6-only and dual: repeatable, comma list, any order.
        let a = parse(&["--vpc-cidr", "fd00:10::/64"]);
        assert_eq!(a.mode(), Some(StackMode::V6));
        assert!(a.validate_flags().is_ok());
        let a = parse(&[
            "--vpc-cidr",
            "fd00:10::/64,10.0.0.0/16",
            "--vpc-cidr",
            "fd00:20::/56",
        ]);
        assert_eq!(a.mode(), Some(StackMode::Dual));
        assert!(a.validate_flags().is_ok());
        assert_eq!(
            a.vpc_cidrs_v4(),
            vec!["10.0.0.0/16".parse::<Ipv4Network>().unwrap()]
        );
        assert_eq!(
            a.vpc_cidrs_v6(),
            vec![
                "fd00:10::/64".parse::<Ipv6Network>().unwrap(),
                "fd00:20::/56".parse::<Ipv6Network>().unwrap()
            ]
        );
        // The IPv4 pool never sees an IPv6 CIDR.
        assert_eq!(a.pool_config().vpc_cidrs, a.vpc_cidrs_v4());
        // Served: a single node (local datastore) needs no --node-ip.
        assert!(a.validate().is_ok());
        assert!(parse(&["--vpc-cidr", "fd00:10::/64"]).validate().is_ok());
        // --prefix-len-v6: range, and not shorter than any IPv6 VPC CIDR.
        for (args, want) in [
            (
                &["--vpc-cidr", "fd00::/64", "--prefix-len-v6", "63"][..],
                "--prefix-len-v6 63: shorter than /64 (--vpc-cidr fd00::/64)",
            ),
            (
                &["--vpc-cidr", "fd00::/48", "--prefix-len-v6", "60"][..],
                "--prefix-len-v6 60 must be within 64..=120",
            ),
            (
                &["--vpc-cidr", "fd00::/48", "--prefix-len-v6", "121"][..],
                "--prefix-len-v6 121 must be within 64..=120",
            ),
            (
                &["--vpc-cidr", "10.0.0.0/16", "--prefix-len-v6", "200"][..],
                "--prefix-len-v6 200 must be within 64..=120",
            ),
            (
                &["--vpc-cidr", "fd00::/48", "--vpc-cidr", "fd00:0:0:1::/64"][..],
                "--vpc-cidr fd00::/48 overlaps --vpc-cidr fd00:0:0:1::/64",
            ),
            (
                // The IPv4 prefix length applies to IPv4 CIDRs only.
                &["--vpc-cidr", "fd00::/64", "--vpc-cidr", "10.0.0.0/30"][..],
                "--vpc-cidr 10.0.0.0/30 is smaller than one /28 prefix (--prefix-len)",
            ),
        ] {
            let e = parse(args).validate_flags().unwrap_err();
            assert!(e.starts_with(want), "{args:?}: {e}");
            assert_eq!(parse(args).validate().unwrap_err(), e, "{args:?}");
        }
        // Bounds are inclusive; /64 VPC with /64 prefixes is one prefix, allowed.
        for len in ["64", "120"] {
            let a = parse(&["--vpc-cidr", "fd00::/64", "--prefix-len-v6", len]);
            assert!(a.validate_flags().is_ok(), "{len}");
        }
        // The two families never overlap each other (::ffff:10.0.0.0 is not 10.0.0.0).
        let a = parse(&[
            "--vpc-cidr",
            "10.0.0.0/16,::ffff:10.0.0.0/112",
            "--prefix-len-v6",
            "120",
        ]);
        assert!(a.validate_flags().is_ok());
        // The IPv6 pool: only with an IPv6 VPC; warm targets off whatever the flags say.
        assert_eq!(parse(&["--vpc-cidr", "10.0.0.0/16"]).pool_config6(), None);
        let a = parse(&[
            "--vpc-cidr",
            "10.0.0.0/16,fd00:10::/64",
            "--warm-ip-target",
            "5",
            "--minimum-ip-target",
            "9",
            "--warm-prefix-target",
            "2",
            "--max-pods",
            "30",
        ]);
        let c6 = a.pool_config6().unwrap();
        assert_eq!(c6.vpc_cidrs, a.vpc_cidrs_v6());
        assert_eq!(c6.prefix_len, 80);
        assert_eq!(
            (
                c6.warm_ip_target,
                c6.minimum_ip_target,
                c6.warm_prefix_target
            ),
            (0, 0, 0)
        );
        assert_eq!(c6.max_pods, 30);
        assert_eq!(a.pool_config().warm_prefix_target, 2);
        // What that policy does: one prefix when empty, then steady while it has room; a
        // second, wholly-free prefix is released, the last one never.
        let mut p6 = vpcnet_pool::Pool6::new(PoolConfig6 {
            min_prefix_age_ms: 0,
            ..c6
        });
        assert!(matches!(
            p6.plan(0),
            vpcnet_pool::PoolPlan6::Grow { prefixes: 1, .. }
        ));
        p6.add_prefix("fd00:10::/80".parse().unwrap(), 0).unwrap();
        assert_eq!(p6.plan(1), vpcnet_pool::PoolPlan6::Steady);
        for i in 0..30 {
            let key = vpcnet_pool::AllocKey {
                network: "n".into(),
                container_id: format!("c{i}"),
                ifname: "eth0".into(),
            };
            p6.assign(key, vpcnet_pool::PodMeta::default(), 1).unwrap();
        }
        assert_eq!(
            p6.plan(1),
            vpcnet_pool::PoolPlan6::Steady,
            "max-pods reached"
        );
        let second = "fd00:10:0:0:1::/80".parse().unwrap();
        p6.add_prefix(second, 0).unwrap();
        assert_eq!(
            p6.plan(1),
            vpcnet_pool::PoolPlan6::Shrink {
                prefixes: vec![second]
            }
        );
        // Bad text names the flag (clap).
        let e = Cli::try_parse_from(["vpcnetd", "--vpc-cidr", "fd00::zz/64"]).unwrap_err();
        assert!(e.to_string().contains("--vpc-cidr"), "{e}");
    }

    #[test]
    fn plugin_log_flags_need_the_conflist_and_an_absolute_path() {
        let base = ["vpcnetd", "--vpc-cidr", "10.0.0.0/16"];
        let with = |extra: &[&str]| Cli::parse_from(base.iter().chain(extra));
        let cli = with(&["--cni-log-file", "/l/plugin.log"]);
        assert!(cli.run.validate().unwrap_err().contains("--cni-conf-dir"));
        let cli = with(&["--cni-log-level", "debug"]);
        assert!(cli.run.validate().unwrap_err().contains("--cni-conf-dir"));
        let cli = with(&["--cni-conf-dir", "/n", "--cni-log-file", "plugin.log"]);
        assert!(cli.run.validate().unwrap_err().contains("absolute"));
        let cli = with(&[
            "--cni-conf-dir",
            "/n",
            "--cni-log-file",
            "/l/plugin.log",
            "--cni-log-level",
            "debug",
        ]);
        assert_eq!(cli.run.validate(), Ok(()));
        assert_eq!(cli.run.cni_log_level.as_deref(), Some("debug"));
        assert!(Cli::try_parse_from(base.iter().chain(&["--cni-log-level", "loud"])).is_err());
    }

    #[test]
    fn log_flags_are_checked_and_named() {
        let base = ["vpcnetd", "--vpc-cidr", "10.0.0.0/16"];
        let with = |extra: &[&str]| Cli::try_parse_from(base.iter().chain(extra));
        let cli = with(&[]).unwrap();
        assert_eq!(cli.run.log_level, "info");
        assert_eq!(cli.run.log_format, LogFormat::Text);
        let cli = with(&[
            "--log-level",
            "info,vpcnet_agent::loops=debug",
            "--log-format",
            "json",
        ])
        .unwrap();
        assert_eq!(cli.run.validate(), Ok(()));
        assert_eq!(cli.run.log_format, LogFormat::Json);
        let cli = with(&["--log-level", "loud"]).unwrap();
        assert!(cli.run.validate().unwrap_err().contains("--log-level"));
        let e = with(&["--log-format", "xml"]).unwrap_err().to_string();
        assert!(e.contains("--log-format"), "{e}");
    }

    #[test]
    fn every_run_flag_has_an_env_var_and_unknown_ones_are_found() {
        use clap::CommandFactory;
        let cmd = Cli::command();
        for a in cmd.get_arguments() {
            let id = a.get_id().as_str();
            if id == "help" || id == "version" {
                continue;
            }
            assert!(a.get_env().is_some(), "--{id} has no VPCNET_* variable");
        }
        let known = known_env_vars();
        assert!(known.contains(&"VPCNET_VPC_CIDR".to_string()));
        assert!(known.contains(&"VPCNET_CNI_BIN_DIR".to_string()));
        assert_eq!(
            unknown_env_vars(
                [
                    "VPCNET_VPC_CIDR",
                    "VPCNET_MAX_POD",
                    "PATH",
                    "VPCNET_CNI_LOG_LEVEL"
                ]
                .map(String::from)
            ),
            vec!["VPCNET_MAX_POD".to_string()]
        );
    }

    #[test]
    fn network_policy_is_off_unless_asked_for() {
        let base = ["vpcnetd", "--vpc-cidr", "10.0.0.0/16"];
        let with = |extra: &[&str]| Cli::try_parse_from(base.iter().chain(extra));
        assert!(!with(&[]).unwrap().run.network_policy);
        assert!(with(&["--network-policy=true"]).unwrap().run.network_policy);
        assert!(
            !with(&["--network-policy", "false"])
                .unwrap()
                .run
                .network_policy
        );
        assert!(with(&["--network-policy=maybe"]).is_err());
        assert!(known_env_vars().contains(&"VPCNET_NETWORK_POLICY".to_string()));
    }

    #[test]
    fn check_config_is_a_subcommand_after_the_run_flags() {
        let cli = Cli::parse_from(["vpcnetd", "--vpc-cidr", "10.0.0.0/16", "check-config"]);
        assert!(matches!(cli.command, Some(Command::CheckConfig)));
        assert_eq!(cli.run.validate(), Ok(()));
    }
}
