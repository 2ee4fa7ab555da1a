//! The scale lab's launcher (`bench/scale.sh`, issue 10): starts many processes, each in its
//! own network namespace, from one small single-threaded process — one `fork` + `setns` +
//! `exec` per process instead of a shell, an `nsenter` and their execs each.
//!
//! ```text
//! netns-launch PIDFILE < SPECS
//! ```
//!
//! Each line of SPECS is `NETNS LOG PROGRAM [ARG...]` (whitespace-separated; no quoting):
//! PROGRAM runs in `/run/netns/NETNS` with stdin `/dev/null` and stdout and stderr appended
//! to LOG. All lines are read (and every namespace and log opened) before the first spawn, so
//! the spawns follow each other without pause. The launcher raises its own priority (nice
//! -10) so that the processes it already started do not starve it of the CPU, and sets each
//! child's back to 0 as soon as it has exec'd. Once all are spawned it writes their PIDs, one line each in
//! SPECS order, to PIDFILE (to a temporary name, then renamed: the file appears complete),
//! prints `launched N in S s` and stays to reap its children; it exits when the last one
//! has exited (with status 0), or at once with status 1 if a spawn failed (those already
//! started keep running, their PIDs are written).

use std::fs::{File, OpenOptions};
use std::io::{BufRead, Write};
use std::os::fd::AsRawFd;
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, ExitCode, Stdio};

use std::time::Instant;

struct Spec {
    netns: File,
    log: File,
    argv: Vec<String>,
}

fn parse(line: &str) -> Result<Option<Spec>, String> {
    let words: Vec<&str> = line.split_whitespace().collect();
    match words.as_slice() {
        [] => Ok(None),
        [ns, log, program, args @ ..] => {
            let netns = File::open(format!("/run/netns/{ns}"))
                .map_err(|e| format!("network namespace {ns}: {e}"))?;
            let log = OpenOptions::new()
                .create(true)
                .append(true)
                .open(log)
                .map_err(|e| format!("log {log}: {e}"))?;
            let mut argv = vec![program.to_string()];
            argv.extend(args.iter().map(|a| a.to_string()));
            Ok(Some(Spec { netns, log, argv }))
        }
        _ => Err(format!("want NETNS LOG PROGRAM [ARG...], got {line:?}")),
    }
}

fn spawn(spec: &Spec) -> std::io::Result<Child> {
    let mut cmd = Command::new(&spec.argv[0]);
    cmd.args(&spec.argv[1..])
        .stdin(Stdio::null())
        .stdout(spec.log.try_clone()?)
        .stderr(spec.log.try_clone()?);
    let ns = spec.netns.as_raw_fd();
    // SAFETY: the closure runs in the forked child before exec and makes one
    // async-signal-safe system call (setns) on a descriptor the parent keeps open until after
    // the spawn; it allocates nothing and takes no lock.
    unsafe {
        cmd.pre_exec(move || {
            if libc::setns(ns, libc::CLONE_NEWNET) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let child = cmd.spawn()?;
    // The child keeps our nice -10 up to its exec (spawn waits for the exec: at nice 0 among
    // hundreds of starting agents that wait would be long), then is set back to 0 here.
    let pid = libc::id_t::from(child.id());
    // SAFETY: setpriority on one process id; no memory is passed.
    if unsafe { libc::setpriority(libc::PRIO_PROCESS, pid, 0) } != 0 {
        eprintln!(
            "netns-launch: nice 0 for {pid}: {}",
            std::io::Error::last_os_error()
        );
    }
    Ok(child)
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().collect();
    let [_, pidfile] = args.as_slice() else {
        eprintln!("usage: netns-launch PIDFILE < SPECS (lines: NETNS LOG PROGRAM [ARG...])");
        return ExitCode::from(2);
    };
    let mut specs = Vec::new();
    for (n, line) in std::io::stdin().lock().lines().enumerate() {
        let parsed = line.map_err(|e| e.to_string()).and_then(|l| parse(&l));
        match parsed {
            Ok(Some(s)) => specs.push(s),
            Ok(None) => {}
            Err(e) => {
                eprintln!("netns-launch: line {}: {e}", n + 1);
                return ExitCode::from(2);
            }
        }
    }
    // SAFETY: setpriority on this process only; no memory is passed.
    if unsafe { libc::setpriority(libc::PRIO_PROCESS, 0, -10) } != 0 {
        eprintln!(
            "netns-launch: nice -10: {} (launching at normal priority)",
            std::io::Error::last_os_error()
        );
    }
    let t0 = Instant::now();
    let mut children = Vec::with_capacity(specs.len());
    let mut failed = false;
    for s in &specs {
        match spawn(s) {
            Ok(c) => children.push(c),
            Err(e) => {
                eprintln!("netns-launch: {}: {e}", s.argv[0]);
                failed = true;
                break;
            }
        }
    }
    let took = t0.elapsed();
    drop(specs);
    let pids: String = children.iter().map(|c| format!("{}\n", c.id())).collect();
    let tmp = format!("{pidfile}.tmp");
    if let Err(e) = std::fs::write(&tmp, pids).and_then(|()| std::fs::rename(&tmp, pidfile)) {
        eprintln!("netns-launch: {pidfile}: {e}");
        failed = true;
    }
    println!("launched {} in {:.3} s", children.len(), took.as_secs_f64());
    let _ = std::io::stdout().flush();
    if failed {
        return ExitCode::FAILURE;
    }
    drop(children);
    // Reap in any order (a child the lab kills early must not stay a zombie behind others).
    loop {
        // SAFETY: wait(2) with a null status pointer; it only reaps our own children.
        let r = unsafe { libc::wait(std::ptr::null_mut()) };
        if r < 0 && std::io::Error::last_os_error().raw_os_error() != Some(libc::EINTR) {
            return ExitCode::SUCCESS; // ECHILD: the last one is gone
        }
    }
}
