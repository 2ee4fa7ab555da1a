//! The data plane recipe (DESIGN.md §3), built with rtnetlink, every step undoable.
//!
//! Pod namespace: `$IFNAME` with `IP/32`, up; `lo` up; `169.254.1.1 dev $IFNAME scope link`;
//! `default via 169.254.1.1`; permanent neighbour `169.254.1.1 → host veth MAC`.
//! Host namespace: host veth up, no address; `IP/32 dev <host veth> scope link proto 171`.
//!
//! The veth is created in one request with the peer born in the pod namespace (no link moves,
//! no rtnl_lock contention from moving). The pod side is configured on a dedicated thread that
//! entered the pod namespace (setns is per thread) while the host route goes in from this one.

use std::net::Ipv4Addr;
use std::os::fd::{AsFd, OwnedFd};

use rtnetlink::Handle;
use vpcnet_ipam::naming;
use vpcnet_netlink::{address, link, neighbour, netns, route, veth, NetlinkError, RTPROT_VPCNET};

use crate::error::CniError;
use crate::result::{Wired, GATEWAY};

/// What a new attachment needs.
#[derive(Debug)]
pub struct Plan<'a> {
    pub container_id: &'a str,
    pub ifname: &'a str,
    pub netns_path: &'a str,
    pub netns: &'a OwnedFd,
    pub ip: Ipv4Addr,
    pub mtu: Option<u32>,
}

const LOOPBACK_INDEX: u32 = 1;

/// Opens the pod namespace, refusing anything that is not one (code 4, naming CNI_NETNS).
pub fn open_netns(path: &std::path::Path) -> Result<OwnedFd, CniError> {
    netns::open(path).map_err(|e| CniError::env("CNI_NETNS", format!("{}: {e}", path.display())))
}

/// The host end of a freshly created veth pair.
#[derive(Debug, Clone)]
pub struct HostVeth {
    pub name: String,
    pub index: u32,
    pub mac: [u8; 6],
}

/// Creates the veth pair: host end here, peer born as `ifname` in the pod namespace, both up.
/// A stale veth of ours with the same name (an earlier attempt for the same attachment whose
/// background delete has not run yet) is replaced; a name clash inside the pod namespace fails.
pub async fn create_veth(
    host: &Handle,
    container_id: &str,
    ifname: &str,
    netns_path: &str,
    netns: &OwnedFd,
    mtu: Option<u32>,
) -> Result<HostVeth, CniError> {
    let name = naming::host_veth_name(container_id, ifname);
    let mac = naming::host_veth_mac(container_id, ifname);
    let spec = veth::VethSpec {
        host_name: &name,
        host_mac: mac,
        peer_name: ifname,
        peer_mac: naming::pod_mac(container_id, ifname),
        peer_netns: netns.as_fd(),
        mtu,
    };
    let what = || format!("creating veth {name} with peer {ifname} in {netns_path}");
    let index = match veth::create(host, &spec).await {
        Ok(i) => i,
        Err(e) if e.is_exists() => {
            let stale = link::delete_by_name(host, &name)
                .await
                .map_err(|e| CniError::dataplane("deleting stale host veth", e))?;
            if !stale {
                return Err(CniError::dataplane(&what(), e));
            }
            veth::create(host, &spec)
                .await
                .map_err(|e| CniError::dataplane(&what(), e))?
        }
        Err(e) => {
            // The pair may exist half-configured (the second step failed): remove it.
            let _ = link::delete_by_name(host, &name).await;
            return Err(CniError::dataplane(&what(), e));
        }
    };
    Ok(HostVeth { name, index, mac })
}

/// Deleting the host end deletes the peer and with it every pod-side address, route and
/// neighbour; the host route goes with its device.
pub async fn remove_veth(host: &Handle, veth: &HostVeth) {
    let _ = link::delete_by_index(host, veth.index).await;
}

/// Addresses and routes on both sides of a created veth. On failure the caller removes the veth.
///
/// The pod side goes through a netlink socket created inside the pod namespace (see
/// [`netns::connect_in`]), so both sides' requests run concurrently from this one thread.
pub async fn wire(
    host: &Handle,
    veth: &HostVeth,
    ifname: &str,
    netns: &OwnedFd,
    ip: Ipv4Addr,
) -> Result<(), CniError> {
    let pod = netns::connect_in(netns.as_fd())
        .map_err(|e| CniError::dataplane("opening netlink in pod namespace", e))?;
    let (host_route, pod_side) = futures::join!(
        route::add_link_scope(host, ip, 32, veth.index, RTPROT_VPCNET, true),
        configure_pod(&pod, ifname, ip, veth.mac),
    );
    host_route.map_err(|e| CniError::dataplane(&format!("adding host route {ip}/32"), e))?;
    pod_side
}

/// Builds the whole attachment; on failure everything created is removed again.
pub async fn setup(host: &Handle, plan: &Plan<'_>) -> Result<Wired, CniError> {
    let veth = create_veth(
        host,
        plan.container_id,
        plan.ifname,
        plan.netns_path,
        plan.netns,
        plan.mtu,
    )
    .await?;
    finish(host, plan, veth).await
}

/// Wires an already created veth; removes it on failure.
pub async fn finish(host: &Handle, plan: &Plan<'_>, veth: HostVeth) -> Result<Wired, CniError> {
    if let Err(e) = wire(host, &veth, plan.ifname, plan.netns, plan.ip).await {
        remove_veth(host, &veth).await;
        return Err(e);
    }
    Ok(Wired {
        host_veth: veth.name,
        host_mac: veth.mac,
        ifname: plan.ifname.to_string(),
        pod_mac: naming::pod_mac(plan.container_id, plan.ifname),
        netns: plan.netns_path.to_string(),
        ip: plan.ip,
        mtu: plan.mtu,
    })
}

async fn configure_pod(
    h: &Handle,
    ifname: &str,
    ip: Ipv4Addr,
    host_mac: [u8; 6],
) -> Result<(), CniError> {
    let index = link::index_by_name(h, ifname)
        .await
        .map_err(|e| CniError::dataplane(&format!("finding {ifname} in pod"), e))?
        .ok_or_else(|| CniError::Dataplane(format!("{ifname} missing in pod after creation")))?;
    // Sent back to back without waiting for each answer: the kernel handles one socket's
    // requests in order, so the gateway route exists before the default route that uses it.
    let (addr, lo, neigh, gw, default) = futures::join!(
        address::add(h, index, ip, 32),
        link::set_up(h, LOOPBACK_INDEX),
        neighbour::add_permanent(h, index, GATEWAY, host_mac),
        route::add_link_scope(h, GATEWAY, 32, index, RTPROT_VPCNET, true),
        route::add_via(
            h,
            Ipv4Addr::UNSPECIFIED,
            0,
            GATEWAY,
            Some(index),
            RTPROT_VPCNET,
            true
        ),
    );
    addr.map_err(|e| CniError::dataplane(&format!("adding {ip}/32 to {ifname}"), e))?;
    lo.map_err(|e| CniError::dataplane("setting lo up", e))?;
    neigh.map_err(|e| CniError::dataplane("adding gateway neighbour", e))?;
    gw.map_err(|e| CniError::dataplane("adding gateway route", e))?;
    default.map_err(|e| CniError::dataplane("adding default route", e))?;
    Ok(())
}

/// Removes our host route for `ip` (if it is still ours) and the host veth. Used by DEL when
/// the agent is unreachable; idempotent.
pub async fn teardown_host(host: &Handle, host_veth: &str) -> Result<(), NetlinkError> {
    // Deleting the device removes every route through it, ours included.
    link::delete_by_name(host, host_veth).await.map(|_| ())
}

/// CHECK: compares the kernel with what ADD set up; names the first missing piece.
pub async fn check(
    host: &Handle,
    netns_fd: &OwnedFd,
    container_id: &str,
    ifname: &str,
    ip: Ipv4Addr,
) -> Result<(), CniError> {
    let host_veth = naming::host_veth_name(container_id, ifname);
    let fail = |what: String| CniError::CheckFailed(what);
    let nl = |e: NetlinkError| CniError::dataplane("reading host state", e);
    let Some(hl) = link::get_by_name(host, &host_veth).await.map_err(nl)? else {
        return Err(fail(format!("host veth {host_veth} is missing")));
    };
    if !hl.up {
        return Err(fail(format!("host veth {host_veth} is down")));
    }
    let routes = route::list_v4(host, Some(RTPROT_VPCNET))
        .await
        .map_err(nl)?;
    if !routes
        .iter()
        .any(|r| r.dst == ip && r.dst_len == 32 && r.oif == Some(hl.index))
    {
        return Err(fail(format!(
            "host route {ip}/32 dev {host_veth} is missing"
        )));
    }
    let host_mac = naming::host_veth_mac(container_id, ifname);
    let pod = netns::connect_in(netns_fd.as_fd())
        .map_err(|e| CniError::dataplane("opening netlink in pod namespace", e))?;
    check_pod(&pod, ifname, ip, host_mac).await
}

async fn check_pod(
    h: &Handle,
    ifname: &str,
    ip: Ipv4Addr,
    host_mac: [u8; 6],
) -> Result<(), CniError> {
    let fail = |what: String| CniError::CheckFailed(what);
    let nl = |e: NetlinkError| CniError::dataplane("reading pod state", e);
    let Some(l) = link::get_by_name(h, ifname).await.map_err(nl)? else {
        return Err(fail(format!("pod interface {ifname} is missing")));
    };
    if !l.up {
        return Err(fail(format!("pod interface {ifname} is down")));
    }
    let addrs = address::list_v4(h, l.index).await.map_err(nl)?;
    if !addrs.contains(&(ip, 32)) {
        return Err(fail(format!("pod address {ip}/32 on {ifname} is missing")));
    }
    let routes = route::list_v4(h, None).await.map_err(nl)?;
    if !routes.iter().any(|r| {
        r.dst == GATEWAY && r.dst_len == 32 && r.oif == Some(l.index) && r.gateway.is_none()
    }) {
        return Err(fail(format!(
            "pod route {GATEWAY} dev {ifname} scope link is missing"
        )));
    }
    if !routes
        .iter()
        .any(|r| r.dst_len == 0 && r.gateway == Some(GATEWAY))
    {
        return Err(fail(format!("pod default route via {GATEWAY} is missing")));
    }
    match neighbour::get_v4(h, l.index, GATEWAY).await.map_err(nl)? {
        Some((mac, _)) if mac == host_mac => Ok(()),
        _ => Err(fail(format!(
            "pod neighbour {GATEWAY} lladdr {} is missing",
            naming::format_mac(&host_mac)
        ))),
    }
}
