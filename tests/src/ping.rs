//! Reachability checks between namespaces: many pings at once, each failure retried once.

use std::process::Command;

/// Pings every target of every source (`ip netns exec <src> ping -c1`), four sources at a
/// time, each source pinging all its targets at once. A source with at most `retry_up_to`
/// failed targets has each of them retried once, on its own (more failures than that are no
/// fluke and are reported without slow one-by-one retries). Returns the failures as
/// "src -> target".
pub fn ping_matrix(jobs: &[(String, Vec<String>)], retry_up_to: usize) -> Vec<String> {
    const PARALLEL_SOURCES: usize = 4;
    let run = |src: &str, targets: &[String]| -> Vec<String> {
        let script = format!(
            "for ip in {}; do ( ping -c1 -W2 -q $ip >/dev/null 2>&1 || echo $ip ) & done; wait",
            targets.join(" ")
        );
        let out = Command::new("ip")
            .args(["netns", "exec", src, "sh", "-c", &script])
            .output()
            .expect("spawn ping batch");
        String::from_utf8_lossy(&out.stdout)
            .split_whitespace()
            .map(str::to_string)
            .collect()
    };
    let mut failures = Vec::new();
    for chunk in jobs.chunks(PARALLEL_SOURCES) {
        let results: Vec<(String, Vec<String>)> = std::thread::scope(|s| {
            let handles: Vec<_> = chunk
                .iter()
                .map(|(src, targets)| s.spawn(move || (src.clone(), run(src, targets))))
                .collect();
            handles
                .into_iter()
                .map(|h| h.join().expect("ping thread"))
                .collect()
        });
        for (src, failed) in results {
            let retry = failed.len() <= retry_up_to;
            for t in failed {
                if retry && crate::sh_ok(&format!("ip netns exec {src} ping -c1 -W3 -q {t}")) {
                    continue;
                }
                failures.push(format!("{src} -> {t}"));
            }
        }
    }
    failures
}
