//! The plugin process as the runtime starts it. It has no Rust start-up (`no_main`, issue 14:
//! ~85 µs of every exec), so what std's would have done and the plugin relies on is its own
//! code. (Descriptors 0–2 are also reopened on /dev/null when closed, as std does; std's
//! stdout swallows EBADF, so no exit code tells the two apart and no test here claims to.)

use std::os::unix::process::ExitStatusExt;
use std::process::{Command, Stdio};

use vpcnet_tests::bin;

/// A reader that went away: the write of the result fails (exit 1, the CNI error path), the
/// process is not killed by SIGPIPE.
#[test]
fn a_closed_pipe_is_an_error_not_a_kill() {
    let (reader, writer) = nix::unistd::pipe().expect("pipe");
    drop(reader);
    let status = Command::new(bin("vpcnet"))
        .env_clear()
        .env("CNI_COMMAND", "VERSION")
        .stdout(Stdio::from(writer))
        .status()
        .expect("run vpcnet");
    assert_eq!(status.signal(), None, "killed: {status:?}");
    assert_eq!(status.code(), Some(1), "{status:?}");
}

/// The plugin's one connection per pod event (issue 14): after the reply to its Assign the
/// agent reads one report on the same connection — and a plugin still holding that
/// connection (busy wiring, or stalled) neither loses the report nor holds up the agent's
/// stop: SIGTERM is answered at once, not after the agent's 5 s wait for the report.
#[test]
fn a_held_connection_gets_its_report_read_and_never_delays_the_stop() {
    use std::io::{BufRead, BufReader, Write};
    use std::os::unix::net::UnixStream;
    use std::time::{Duration, Instant};

    let mut lab = vpcnet_tests::Lab::new("10.240.0.0/16");
    lab.start_agent(&["--metrics-addr", "127.0.0.1:9961"]);
    let addr: std::net::SocketAddr = "127.0.0.1:9961".parse().expect("addr");
    let plugin_adds_ok = || {
        let r = vpcnet_tests::http::request(
            &lab.host(),
            addr,
            "GET /metrics HTTP/1.1\r\nHost: localhost\r\n\r\n",
        );
        vpcnet_tests::http::sample::<u64>(
            &r.body,
            "vpcnet_cni_plugin_duration_seconds_count{op=\"add\",result=\"ok\"}",
        )
    };
    let assign = |cid: &str| {
        serde_json::json!({
            "v": 1, "op": "assign",
            "key": {"network": "vpcnet-test", "container_id": cid, "ifname": "eth0"},
            "meta": {}
        })
        .to_string()
            + "\n"
    };
    let call = |line: &str| {
        let mut s = UnixStream::connect(lab.socket()).expect("connect");
        s.write_all(line.as_bytes()).expect("send");
        let mut reply = String::new();
        BufReader::new(&s).read_line(&mut reply).expect("reply");
        assert!(reply.contains("assigned"), "{reply}");
        s
    };
    // A report on the kept connection reaches the metrics.
    let mut reported = call(&assign("held-1"));
    reported
        .write_all(b"{\"v\":1,\"op\":\"observed\",\"verb\":\"add\",\"micros\":1234,\"ok\":true}\n")
        .expect("report");
    drop(reported);
    let counted = lab.wait_for(Duration::from_secs(5), || plugin_adds_ok() == Some(1));
    assert!(counted, "the report on the kept connection was not counted");

    // A connection held open without a report: the stop does not wait for it.
    let _held = call(&assign("held-2"));
    let agent = lab.agent.as_mut().expect("agent");
    let t = Instant::now();
    let st = agent.terminate(Duration::from_secs(8));
    let took = t.elapsed();
    assert!(st.is_some_and(|s| s.success()), "stop: {st:?}");
    assert!(
        took < Duration::from_secs(3),
        "SIGTERM took {took:?} with a plugin connection held open"
    );
}
