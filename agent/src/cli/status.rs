//! `vpcnetd status`: the pool of a running agent, as a table or JSON.

use std::fmt::Write;

use vpcnet_proto::api::AgentStatus;

pub fn render(s: &AgentStatus) -> String {
    let mut out = String::new();
    let st = &s.stats;
    let _ = writeln!(
        out,
        "node {}  datastore {}  {}",
        s.node,
        s.datastore,
        if s.ready { "ready" } else { "starting" }
    );
    let _ = writeln!(
        out,
        "addresses: {} total, {} assigned, {} cooling, {} available (max-pods {})",
        st.total, st.assigned, st.cooling, st.available, s.max_pods
    );
    let _ = writeln!(
        out,
        "prefixes:  {} held, {} wholly free",
        st.prefixes, st.free_prefixes
    );
    if let Some(p6) = &s.pool6 {
        // Dual-stack / IPv6-only: the lines above are the IPv4 pool's. IPv6 counts saturate
        // (a /80 holds 2^48 addresses).
        let st6 = &p6.stats;
        let n = |v: u32| {
            if v == u32::MAX {
                "very many".to_string()
            } else {
                v.to_string()
            }
        };
        let _ = writeln!(
            out,
            "IPv6 addresses: {} total, {} assigned, {} cooling, {} available",
            n(st6.total),
            st6.assigned,
            st6.cooling,
            n(st6.available)
        );
        let _ = writeln!(
            out,
            "IPv6 prefixes:  {} held, {} wholly free",
            st6.prefixes, st6.free_prefixes
        );
    }
    if s.degraded.is_empty() {
        let _ = writeln!(out, "health:    ok");
    } else {
        for d in &s.degraded {
            let _ = writeln!(out, "degraded:  {d}");
        }
    }
    let _ = writeln!(out);
    let _ = writeln!(
        out,
        "{:<20} {:>8} {:>8} {:>7}",
        "PREFIX", "ASSIGNED", "COOLING", "USABLE"
    );
    for p in &s.prefixes {
        let _ = writeln!(
            out,
            "{:<20} {:>8} {:>8} {:>7}",
            p.prefix.to_string(),
            p.assigned,
            p.cooling,
            p.usable
        );
    }
    for p in s.pool6.iter().flat_map(|p| &p.prefixes) {
        let _ = writeln!(
            out,
            "{:<20} {:>8} {:>8} {:>7}",
            p.prefix.to_string(),
            p.assigned,
            p.cooling,
            if p.usable == u32::MAX {
                "many".to_string()
            } else {
                p.usable.to_string()
            }
        );
    }
    if let Some(allocs) = &s.allocations {
        let _ = writeln!(out);
        let _ = writeln!(
            out,
            "{:<16} {:<24} {:<8} {:<14} POD",
            "IP", "CONTAINER", "IFNAME", "NETWORK"
        );
        for a in allocs {
            let pod = match (&a.meta.namespace, &a.meta.name) {
                (Some(ns), Some(n)) => format!("{ns}/{n}"),
                _ => "-".into(),
            };
            let cid: String = a.key.container_id.chars().take(24).collect();
            let _ = writeln!(
                out,
                "{:<16} {:<24} {:<8} {:<14} {pod}",
                a.ip.to_string(),
                cid,
                a.key.ifname,
                a.key.network
            );
        }
    }
    // IPv6 allocations: the same columns (an attachment of a dual-stack node is listed once
    // per family).
    for a in s.pool6.iter().flat_map(|p| p.allocations.iter().flatten()) {
        let pod = match (&a.meta.namespace, &a.meta.name) {
            (Some(ns), Some(n)) => format!("{ns}/{n}"),
            _ => "-".into(),
        };
        let cid: String = a.key.container_id.chars().take(24).collect();
        let _ = writeln!(
            out,
            "{:<16} {:<24} {:<8} {:<14} {pod}",
            a.ip.to_string(),
            cid,
            a.key.ifname,
            a.key.network
        );
    }
    out
}
