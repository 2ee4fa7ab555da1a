//! The agent's HTTP endpoint (`--metrics-addr`): /metrics agrees with the pool, counts ADDs
//! and DELs; /healthz and /readyz answer (503 with the reason when no address can be had);
//! /pool shows the pool without container IDs; bad requests get 4xx.
//!
//! The agent runs in the lab's private network namespace, bound to 127.0.0.1 there, so the
//! requests are sent from a thread that entered that namespace.

use std::net::SocketAddr;
use std::time::Duration;

use serde_json::Value;
use vpcnet_tests::http::{self, sample};
use vpcnet_tests::{par_map, stat, Lab};

const ADDR: &str = "127.0.0.1:9961";

/// Sends `raw` to `ADDR` inside namespace `ns`; returns (status code, body), the body
/// checked against Content-Length (but for HEAD).
fn request(ns: &str, raw: &str) -> (u16, String) {
    let addr: SocketAddr = ADDR.parse().expect("ADDR");
    let r = http::request(ns, addr, raw);
    let len: usize = r
        .header("Content-Length")
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no Content-Length in {:?}", r.head));
    if !raw.starts_with("HEAD ") {
        assert_eq!(r.body.len(), len, "Content-Length vs body: {r:?}");
    }
    (r.code, r.body)
}

fn get(lab: &Lab, path: &str) -> (u16, String) {
    request(
        &lab.host(),
        &format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nAccept: */*\r\n\r\n"),
    )
}

#[track_caller]
fn metric(text: &str, name: &str) -> u64 {
    sample(text, name).unwrap_or_else(|| panic!("no sample {name} in:\n{text}"))
}

#[test]
fn metrics_health_and_pool_agree_with_the_agent() {
    let mut lab = Lab::new("10.231.0.0/16");
    lab.start_agent(&["--metrics-addr", ADDR]);

    let (code, body) = get(&lab, "/healthz");
    assert_eq!((code, body.as_str()), (200, "ok\n"));
    let (code, body) = get(&lab, "/readyz");
    assert_eq!(code, 200, "/readyz: {body}");

    let cids: Vec<String> = (0..3).map(|i| format!("obs-container-{i}")).collect();
    for (i, cid) in cids.iter().enumerate() {
        let ns = lab.pod(i);
        lab.add(cid, &ns).expect_ok("ADD");
    }

    // The warm loop may still be claiming: compare once the pool holds still.
    let mut last = (Value::Null, String::new());
    let agreed = lab.wait_for(Duration::from_secs(10), || {
        let before = lab.status();
        let (code, text) = get(&lab, "/metrics");
        assert_eq!(code, 200, "/metrics: {text}");
        let after = lab.status();
        let same = before["stats"] == after["stats"];
        let agree = same
            && [
                ("vpcnet_addresses{family=\"ipv4\"}", "total"),
                ("vpcnet_addresses_assigned{family=\"ipv4\"}", "assigned"),
                ("vpcnet_addresses_cooling{family=\"ipv4\"}", "cooling"),
                ("vpcnet_addresses_available{family=\"ipv4\"}", "available"),
                ("vpcnet_prefixes{family=\"ipv4\"}", "prefixes"),
                ("vpcnet_prefixes_free{family=\"ipv4\"}", "free_prefixes"),
                // One node alone in its VPC: every claimed prefix is its own.
                ("vpcnet_vpc_prefixes_claimed", "prefixes"),
            ]
            .iter()
            .all(|(m, s)| sample(&text, m) == Some(stat(&after, s)));
        last = (after, text);
        agree
    });
    let (status, text) = last;
    assert!(agreed, "metrics disagree with status {status:#}:\n{text}");
    assert_eq!(stat(&status, "assigned"), 3);
    assert!(stat(&status, "total") >= 16, "{status:#}");
    assert!(stat(&status, "prefixes") >= 1, "{status:#}");
    assert!(
        text.ends_with("# EOF\n"),
        "OpenMetrics text ends with # EOF"
    );
    assert!(text.contains("# TYPE vpcnet_prefix_claim_duration_seconds histogram"));
    assert!(metric(&text, "vpcnet_prefix_claim_duration_seconds_count") >= 1);
    assert!(metric(&text, "vpcnet_prefix_claims_total{result=\"claimed\"}") >= 1);
    assert_eq!(
        metric(&text, "vpcnet_cni_requests_total{op=\"add\",result=\"ok\"}"),
        3
    );
    assert_eq!(
        metric(
            &text,
            "vpcnet_cni_requests_total{op=\"add\",result=\"error\"}"
        ),
        0
    );
    assert_eq!(metric(&text, "vpcnet_ready"), 1);
    assert_eq!(metric(&text, "vpcnet_can_assign"), 1);
    assert_eq!(metric(&text, "vpcnet_max_pods"), 110);
    for op in ["claim", "release", "list"] {
        assert_eq!(
            metric(
                &text,
                &format!("vpcnet_datastore_errors_total{{op=\"{op}\"}}")
            ),
            0
        );
    }
    // 10.231.0.0/16 in /28s.
    assert_eq!(metric(&text, "vpcnet_vpc_prefixes"), 4096);
    assert_eq!(
        metric(&text, "vpcnet_vpc_prefixes_free"),
        4096 - stat(&status, "prefixes")
    );
    assert!(
        text.lines()
            .any(|l| l.starts_with("vpcnet_build_info{version=\"") && l.ends_with("} 1")),
        "vpcnet_build_info: {text}"
    );
    assert!(metric(&text, "vpcnet_reconcile_runs_total{result=\"ok\"}") >= 1);
    assert_eq!(
        metric(&text, "vpcnet_reconcile_actions_total{action=\"released\"}"),
        0
    );

    // DEL is counted too.
    let ns0 = lab.pod(0);
    lab.del(&cids[0], &ns0).expect_ok("DEL");
    let (_, text) = get(&lab, "/metrics");
    assert_eq!(
        metric(&text, "vpcnet_cni_requests_total{op=\"del\",result=\"ok\"}"),
        1
    );
    assert_eq!(
        metric(&text, "vpcnet_addresses_assigned{family=\"ipv4\"}"),
        2
    );
    assert_eq!(
        metric(&text, "vpcnet_addresses_cooling{family=\"ipv4\"}"),
        1
    );

    // What the runtime saw (issue 12): the plugin reports each ADD/DEL's time and result
    // after its result is out. An ADD whose data plane fails after an ok assign is an ok
    // assign (and an ok release) to the agent, but an error to the runtime: only the
    // plugin's report shows it.
    let ns3 = lab.pod(3);
    vpcnet_tests::sh(&format!(
        "ip -n {ns3} link add eth0 type veth peer name obs-taken"
    ));
    let refused = lab.add("obs-container-taken", &ns3);
    assert!(
        !refused.ok(),
        "ADD into a namespace that has eth0 must fail"
    );
    let want = [
        (
            "vpcnet_cni_plugin_duration_seconds_count{op=\"add\",result=\"ok\"}",
            3,
        ),
        (
            "vpcnet_cni_plugin_duration_seconds_count{op=\"del\",result=\"ok\"}",
            1,
        ),
        (
            "vpcnet_cni_plugin_duration_seconds_count{op=\"add\",result=\"error\"}",
            1,
        ),
        // The agent's own view of the failed ADD: an assign that went well.
        ("vpcnet_cni_requests_total{op=\"add\",result=\"ok\"}", 4),
    ];
    let mut text = String::new();
    let reported = lab.wait_for(Duration::from_secs(5), || {
        text = get(&lab, "/metrics").1;
        want.iter().all(|(m, n)| sample(&text, m) == Some(*n))
    });
    assert!(reported, "plugin reports {want:?} not all in:\n{text}");
    assert!(text.contains("# TYPE vpcnet_cni_plugin_duration_seconds histogram"));

    // /pool: the status, minus allocations: no container ID goes over HTTP.
    let (code, body) = get(&lab, "/pool");
    assert_eq!(code, 200, "/pool: {body}");
    let pool: Value = serde_json::from_str(&body).expect("/pool is JSON");
    assert_eq!(stat(&pool, "assigned"), 2, "{pool:#}");
    assert_eq!(pool["ready"], Value::Bool(true));
    assert!(pool.get("allocations").is_none(), "{pool:#}");
    assert!(
        pool["prefixes"].as_array().is_some_and(|p| !p.is_empty()),
        "{pool:#}"
    );
    for cid in &cids {
        assert!(!body.contains(cid.as_str()), "/pool leaks {cid}: {body}");
    }

    // HEAD: headers only.
    let (code, body) = request(&lab.host(), "HEAD /healthz HTTP/1.1\r\n\r\n");
    assert_eq!(code, 200);
    assert_eq!(body, "", "HEAD has no body");
    // Bad requests.
    assert_eq!(get(&lab, "/nope").0, 404);
    assert_eq!(
        request(
            &lab.host(),
            "POST /metrics HTTP/1.1\r\nContent-Length: 0\r\n\r\n"
        )
        .0,
        405
    );
    assert_eq!(request(&lab.host(), "hello\r\n\r\n").0, 400);
    assert_eq!(request(&lab.host(), "GET /metrics SPDY/3\r\n\r\n").0, 400);
    let huge = format!("GET /metrics HTTP/1.1\r\nX: {}\r\n\r\n", "a".repeat(20_000));
    assert_eq!(request(&lab.host(), &huge).0, 431);
    // Still serving after all that.
    assert_eq!(get(&lab, "/healthz").0, 200);
}

#[test]
fn readyz_is_503_when_no_address_can_be_had() {
    // One /29 prefix is the whole VPC: 6 usable addresses (.1 to .6; the VPC's network and
    // broadcast addresses are never handed out), then nothing.
    const USABLE: usize = 6;
    let mut lab = Lab::new("10.232.0.0/29");
    lab.start_agent(&["--metrics-addr", ADDR, "--prefix-len", "29"]);
    assert_eq!(get(&lab, "/readyz").0, 200);
    let mut ips = std::collections::BTreeSet::new();
    for i in 0..USABLE {
        let status = lab.status();
        assert_eq!(
            status["canAssign"],
            Value::Bool(true),
            "only {i} of {USABLE} addresses handed out: {status:#}"
        );
        let ns = lab.pod(i);
        let out = lab.add(&format!("full-{i}"), &ns);
        out.expect_ok("ADD");
        ips.insert(out.ip().expect("ADD result has an address"));
    }
    let want: std::collections::BTreeSet<std::net::Ipv4Addr> = (1..=6)
        .map(|h| std::net::Ipv4Addr::new(10, 232, 0, h))
        .collect();
    assert_eq!(ips, want, "the /29's six host addresses, each once");
    let status = lab.status();
    assert_eq!(status["canAssign"], Value::Bool(false), "{status:#}");
    assert_eq!(stat(&status, "total"), 6, "{status:#}");
    assert_eq!(stat(&status, "available"), 0);
    assert_eq!(stat(&status, "assigned"), 6);
    let added = 6;

    let (code, body) = get(&lab, "/readyz");
    assert_eq!(code, 503, "/readyz with a full VPC: {body}");
    assert!(body.contains("cannot assign"), "{body}");
    assert_eq!(get(&lab, "/healthz").0, 200, "full is not dead");
    let (_, text) = get(&lab, "/metrics");
    assert_eq!(metric(&text, "vpcnet_can_assign"), 0);
    assert_eq!(
        metric(&text, "vpcnet_addresses_available{family=\"ipv4\"}"),
        0
    );

    // The next ADD fails with code 11, and is counted as failed.
    let ns = lab.pod(9);
    let out = lab.add("full-9", &ns);
    assert_eq!(out.code(), Some(11), "{}", out.stdout);
    let (_, text) = get(&lab, "/metrics");
    assert_eq!(
        metric(
            &text,
            "vpcnet_cni_requests_total{op=\"add\",result=\"error\"}"
        ),
        1
    );
    assert_eq!(
        metric(&text, "vpcnet_cni_requests_total{op=\"add\",result=\"ok\"}"),
        added
    );
}

/// Group commit (issue 14), with `--journal-sync every-change` (every pod's record flushed
/// before its answer): ADDs that reach the agent together share one journal sync —
/// `vpcnet_journal_syncs_total` grows by less than `vpcnet_journal_records_total` — and
/// every one of them is durable before its answer: after a `kill -9` and a restart the agent
/// holds all of them, each address once, as the plugins were told.
#[test]
fn parallel_adds_share_journal_syncs_and_all_survive_a_kill() {
    let (syncs, records) = parallel_adds_then_a_kill("10.232.0.0/16", "every-change");
    assert!(
        syncs < records,
        "no ADDs shared a sync: {syncs} syncs for {records} records"
    );
}

/// By default (`--journal-sync prefixes`) a pod's assignment is written but not flushed:
/// the 30 records cost no sync at all — and a kill -9 of the agent still loses none of them
/// (the page cache outlives the process; only a crash of the machine, which ends the pods
/// too, could).
#[test]
fn by_default_pod_records_are_not_flushed_and_survive_a_kill() {
    let (syncs, records) = parallel_adds_then_a_kill("10.233.0.0/16", "prefixes");
    // Every flushed append is one sync: at least the 30 assignments went unflushed (with
    // every-change, records - syncs is 30 minus the number of batches).
    assert!(
        records >= syncs + 30,
        "pods' records were flushed: {syncs} syncs for {records} records"
    );
}

/// 30 parallel ADDs against an agent with `--journal-sync SYNC`, then a kill -9 and a
/// restart: the agent holds exactly the addresses the plugins were told. Returns the
/// journal syncs and records of the burst.
fn parallel_adds_then_a_kill(vpc: &str, sync: &str) -> (u64, u64) {
    let mut lab = Lab::new(vpc);
    // A warm pool larger than the burst: no ADD waits for a claim.
    lab.start_agent(&[
        "--metrics-addr",
        ADDR,
        "--warm-ip-target",
        "40",
        "--journal-sync",
        sync,
    ]);
    assert!(
        lab.wait_for(Duration::from_secs(10), || stat(&lab.status(), "available")
            >= 40),
        "warm pool never filled: {:#}",
        lab.status()
    );
    let pods: Vec<(String, String)> = lab
        .pods(0..30)
        .into_iter()
        .enumerate()
        .map(|(i, ns)| (format!("gc-{i}"), ns))
        .collect();
    let (_, text) = get(&lab, "/metrics");
    let syncs0 = metric(&text, "vpcnet_journal_syncs_total");
    let records0 = metric(&text, "vpcnet_journal_records_total");
    let adds = par_map(&pods, 30, |(cid, ns)| lab.add(cid, ns));
    let mut told = std::collections::BTreeMap::new();
    for (o, (cid, _)) in adds.iter().zip(&pods) {
        o.expect_ok(cid);
        let ip = o.ip().expect("ip");
        assert!(
            told.insert(ip, cid.clone()).is_none(),
            "{ip} handed out twice"
        );
    }
    let (_, text) = get(&lab, "/metrics");
    let syncs = metric(&text, "vpcnet_journal_syncs_total") - syncs0;
    let records = metric(&text, "vpcnet_journal_records_total") - records0;
    // 30 assignments, and whatever the warm loop recorded meanwhile.
    assert!(records >= 30, "records {records}");
    lab.agent.as_mut().expect("agent").kill();
    lab.start_agent(&[]);
    let held: std::collections::BTreeMap<_, _> = vpcnet_tests::status_allocs(&lab.status())
        .into_iter()
        .map(|a| (a.ip, a.container_id))
        .collect();
    assert_eq!(
        held, told,
        "after kill -9 the agent holds what the plugins were told"
    );
    eprintln!("30 parallel ADDs ({sync}): {syncs} journal syncs for {records} records");
    (syncs, records)
}
