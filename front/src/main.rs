//! `vpcnet`: the CNI plugin's no-libc front (see the library's documentation for why).
//!
//! Flow, for every exec by the container runtime:
//!
//! 1. argc, argv and envp from the initial stack (`_start` below);
//! 2. descriptors 0, 1 and 2 must be open, else fall back;
//! 3. `SIGPIPE` ignored (restored before any fallback `execve`);
//! 4. only `CNI_COMMAND` `ADD`, `DEL`, `CHECK`, `GC`, `STATUS` are forwarded; anything else
//!    falls back without reading stdin;
//! 5. stdin read to EOF, at most 1 MiB + 1 byte (more: fall back, replaying those bytes —
//!    the standalone refuses them with code 7, as it would the whole; the rest is never read);
//! 6. the top-level `socket` of the netconf (default `/run/vpcnet/vpcnetd.sock`), plus
//!    `.exec`: the agent's exec socket;
//! 7. the environment (at most 64 KiB), the front's and the pod's netns descriptors, and
//!    stdin sent to the agent (`vpcnet_front::wire`);
//! 8. the agent answers an exit code and the plugin's stdout, which the front copies to
//!    fd 1 before exiting with that code; or it declines, and the front falls back.
//!
//! Fallback: `execve` of `vpcnet-standalone` in the front's own directory (from
//! `/proc/self/exe`) — or of `$VPCNET_FRONT_STANDALONE` when that is set to an absolute path
//! (for tests) — with the original argv and environment; stdin, if the front read any of it,
//! is replayed from a memfd put on descriptor 0. If even that fails the front prints a CNI
//! error result (code 999) and exits 1.
//!
//! Ship `cargo build --release` (~10 KB, static, no libc). The dev profile links too, only
//! because an empty `rust_eh_personality` is provided below for its libcore (never called
//! with `panic = "abort"`). The link arguments are in `build.rs`.
//!
//! The environment is copied (step 7) during the initial walk that finds `CNI_COMMAND`;
//! that is memory only, so the system calls still come in the order above. A panic (none is
//! expected: no indexing, no `unwrap`) runs the fallback too.

#![cfg_attr(not(test), no_std)]
#![cfg_attr(not(test), no_main)]

use core::cell::UnsafeCell;
use core::ffi::CStr;
use core::sync::atomic::{AtomicBool, AtomicPtr, AtomicUsize, Ordering::Relaxed};

use vpcnet_front::sys::{self, Iovec, KSigaction, Msghdr, SockaddrUn};
use vpcnet_front::{env, path, scan, wire, ENV_LIMIT, STDIN_LIMIT};

/// The entry point: the kernel leaves `argc`, the argv pointers, NULL, the envp pointers,
/// NULL, … at `rsp`. Passes that address to [`start`] on a 16-byte aligned stack.
#[cfg(not(test))]
#[unsafe(naked)]
#[unsafe(no_mangle)]
pub extern "C" fn _start() -> ! {
    core::arch::naked_asm!(
        "xor ebp, ebp",
        "mov rdi, rsp",
        "and rsp, -16",
        "call {start}",
        "ud2",
        start = sym start,
    )
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_: &core::panic::PanicInfo) -> ! {
    fallback()
}

/// Referenced by libcore's debug build; never called with `panic = "abort"`.
#[cfg(all(not(test), debug_assertions))]
#[unsafe(no_mangle)]
pub extern "C" fn rust_eh_personality() {}

/// The memory functions LLVM calls (there is no libc). `rep movsb`/`rep stosb` are fast on
/// current `x86_64` and cannot be turned back into calls to themselves by the optimizer.
#[cfg(not(test))]
mod mem {
    use core::arch::asm;

    #[unsafe(no_mangle)]
    pub unsafe extern "C" fn memcpy(dst: *mut u8, src: *const u8, n: usize) -> *mut u8 {
        // SAFETY: the caller (compiler-generated code) guarantees `n` bytes are valid at both
        // pointers and do not overlap; the direction flag is clear per the ABI.
        unsafe {
            asm!(
                "rep movsb",
                inout("rcx") n => _,
                inout("rdi") dst => _,
                inout("rsi") src => _,
                options(nostack, preserves_flags),
            );
        }
        dst
    }

    #[unsafe(no_mangle)]
    pub unsafe extern "C" fn memmove(dst: *mut u8, src: *const u8, n: usize) -> *mut u8 {
        if (dst as usize).wrapping_sub(src as usize) >= n {
            // No overlap that a forward copy would clobber.
            // SAFETY: as for memcpy; a forward copy is correct when dst is before src or
            // past its end.
            return unsafe { memcpy(dst, src, n) };
        }
        // SAFETY: `n` bytes are valid at both pointers (the caller's guarantee); copying
        // backwards from the last byte is correct when dst overlaps src's tail. The
        // direction flag is set only for this instruction and cleared again.
        unsafe {
            asm!(
                "std",
                "rep movsb",
                "cld",
                inout("rcx") n => _,
                inout("rdi") dst.add(n).wrapping_sub(1) => _,
                inout("rsi") src.add(n).wrapping_sub(1) => _,
                options(nostack),
            );
        }
        dst
    }

    #[unsafe(no_mangle)]
    pub unsafe extern "C" fn memset(dst: *mut u8, c: i32, n: usize) -> *mut u8 {
        // SAFETY: the caller guarantees `n` writable bytes at `dst`; memset takes the byte
        // value of `c` (truncation intended).
        unsafe {
            asm!(
                "rep stosb",
                inout("rcx") n => _,
                inout("rdi") dst => _,
                in("al") c.to_le_bytes()[0],
                options(nostack, preserves_flags),
            );
        }
        dst
    }

    #[unsafe(no_mangle)]
    pub unsafe extern "C" fn memcmp(left: *const u8, right: *const u8, n: usize) -> i32 {
        let mut i = 0;
        while i < n {
            // SAFETY: the caller guarantees `n` readable bytes at both pointers. Volatile
            // reads keep LLVM from turning this loop into a call to memcmp.
            let (x, y) = unsafe { (left.add(i).read_volatile(), right.add(i).read_volatile()) };
            if x != y {
                return i32::from(x) - i32::from(y);
            }
            i += 1;
        }
        0
    }

    #[unsafe(no_mangle)]
    pub unsafe extern "C" fn bcmp(left: *const u8, right: *const u8, n: usize) -> i32 {
        // SAFETY: forwarded from the caller.
        unsafe { memcmp(left, right, n) }
    }
}

/// A buffer in bss. The front is single-threaded; each buffer's users are documented.
struct Buf<const N: usize>(UnsafeCell<[u8; N]>);

// SAFETY: the process has one thread; accesses are sequential (see each use).
unsafe impl<const N: usize> Sync for Buf<N> {}

impl<const N: usize> Buf<N> {
    const fn new() -> Self {
        Buf(UnsafeCell::new([0; N]))
    }

    fn ptr(&self) -> *mut u8 {
        self.0.get().cast()
    }
}

/// stdin as read: written by [`read_stdin`] only, then read by the forward and the fallback.
static STDIN: Buf<{ STDIN_LIMIT + 1 }> = Buf::new();
/// The environment strings: written by [`scan_env`]; read by the forward; then reused for
/// the agent's answer by [`answer`] once the request is sent.
static ENV: Buf<ENV_LIMIT> = Buf::new();

/// The original argv and envp, for the fallback `execve`.
static ARGV: AtomicPtr<*const u8> = AtomicPtr::new(core::ptr::null_mut());
static ENVP: AtomicPtr<*const u8> = AtomicPtr::new(core::ptr::null_mut());
/// `$VPCNET_FRONT_STANDALONE` when it is an absolute path (NUL-terminated, in the initial
/// environment), else null.
static STANDALONE_OVERRIDE: AtomicPtr<u8> = AtomicPtr::new(core::ptr::null_mut());
/// How many stdin bytes the front read into [`STDIN`] (replayed by the fallback).
static STDIN_READ: AtomicUsize = AtomicUsize::new(0);
/// `SIGPIPE`'s disposition before the front ignored it (restored for the fallback).
static SIGPIPE_CHANGED: AtomicBool = AtomicBool::new(false);
static SIGPIPE_WAS_IGNORED: AtomicBool = AtomicBool::new(false);
/// Set once the fallback starts: a panic inside it exits instead of looping.
static IN_FALLBACK: AtomicBool = AtomicBool::new(false);

/// Called by `_start` with the initial stack pointer.
#[cfg(not(test))]
extern "C" fn start(sp: *const usize) -> ! {
    // SAFETY: `sp` points at the kernel's initial stack: argc, then argc argv pointers and a
    // NULL, then the envp pointers and a NULL.
    let (argv, envp) = unsafe {
        let count = sp.read();
        let argv = sp.add(1).cast::<*const u8>();
        (argv, argv.add(count + 1))
    };
    ARGV.store(argv.cast_mut(), Relaxed);
    ENVP.store(envp.cast_mut(), Relaxed);
    // SAFETY: `envp` is the kernel's NULL-terminated array of NUL-terminated strings.
    let environ = unsafe { scan_env(envp) };
    run(&environ)
}

/// What the front needs from the environment.
struct Environ {
    command: Option<&'static [u8]>,
    netns: Option<&'static CStr>,
    /// Bytes copied into [`ENV`].
    len: usize,
    /// The environment did not fit [`ENV`].
    too_big: bool,
}

/// Walks `envp`: copies the strings into [`ENV`] and finds the variables the front uses (the
/// first of duplicates, as `getenv`).
///
/// # Safety
///
/// `envp` must be a NULL-terminated array of NUL-terminated strings that live for the whole
/// process (the initial stack's), and [`ENV`] must not be borrowed.
unsafe fn scan_env(envp: *const *const u8) -> Environ {
    // SAFETY: called once, before anything else uses ENV.
    let buf = unsafe { core::slice::from_raw_parts_mut(ENV.ptr(), ENV_LIMIT) };
    let mut e = Environ {
        command: None,
        netns: None,
        len: 0,
        too_big: false,
    };
    let mut p = envp;
    loop {
        // SAFETY: `p` is within the NULL-terminated array (we stop at the NULL).
        let s = unsafe { p.read() };
        if s.is_null() {
            break;
        }
        // SAFETY: `s` is NUL-terminated and lives for the process.
        let entry = unsafe { c_string(s) };
        let text = entry.get(..entry.len() - 1).unwrap_or_default();
        if e.command.is_none() {
            e.command = env::value(text, b"CNI_COMMAND");
        }
        if e.netns.is_none() {
            e.netns = tail(entry, b"CNI_NETNS=");
        }
        if STANDALONE_OVERRIDE.load(Relaxed).is_null() {
            if let Some(v) = tail(entry, b"VPCNET_FRONT_STANDALONE=") {
                if v.to_bytes().first() == Some(&b'/') {
                    STANDALONE_OVERRIDE.store(v.as_ptr().cast::<u8>().cast_mut(), Relaxed);
                }
            }
        }
        match buf.get_mut(e.len..e.len + entry.len()) {
            Some(dst) if !e.too_big => {
                dst.copy_from_slice(entry);
                e.len += entry.len();
            }
            _ => e.too_big = true,
        }
        // SAFETY: `s` was not NULL, so the array goes on at least to the next slot.
        p = unsafe { p.add(1) };
    }
    e
}

/// The bytes of the NUL-terminated string at `s`, with its NUL.
///
/// # Safety
///
/// `s` must point to a NUL-terminated string that lives for the process.
unsafe fn c_string(s: *const u8) -> &'static [u8] {
    let mut n = 0;
    // SAFETY: the string is NUL-terminated, so every byte up to the NUL is readable.
    // Volatile keeps LLVM from turning the loop into a call to strlen (there is no libc).
    while unsafe { s.add(n).read_volatile() } != 0 {
        n += 1;
    }
    // SAFETY: `n + 1` bytes, the NUL included, are readable and live for the process.
    unsafe { core::slice::from_raw_parts(s, n + 1) }
}

/// The value of `KEY=VALUE\0` (`prefix` is `KEY=`) as a C string.
fn tail(entry: &'static [u8], prefix: &[u8]) -> Option<&'static CStr> {
    CStr::from_bytes_with_nul(entry.strip_prefix(prefix)?).ok()
}

fn run(environ: &Environ) -> ! {
    for fd in 0..=2 {
        if sys::fcntl_getfd(fd).is_err() {
            fallback();
        }
    }
    ignore_sigpipe();
    if !env::forwarded(environ.command) || environ.too_big {
        fallback();
    }
    let stdin = read_stdin();
    if stdin.len() > STDIN_LIMIT {
        // Over the limit: the standalone refuses it (code 7) from the bytes read.
        fallback();
    }
    let socket = match scan::socket(stdin) {
        scan::Socket::Default => path::DEFAULT_SOCKET,
        scan::Socket::Path(p) => p,
        scan::Socket::Defer(_) => fallback(),
    };
    let mut addr = SockaddrUn {
        family: sys::AF_UNIX,
        path: [0; sys::SUN_PATH],
    };
    let Some(addr_len) = path::exec_socket(socket, &mut addr.path) else {
        fallback()
    };
    // SAFETY: scan_env wrote `environ.len` bytes and is done with ENV; nothing writes it
    // until `answer`, after this borrow's last use.
    let env_bytes = unsafe { core::slice::from_raw_parts(ENV.ptr(), environ.len) };

    let cloexec = sys::O_RDONLY | sys::O_CLOEXEC;
    let Ok(own_ns) = sys::open(c"/proc/self/ns/net", cloexec) else {
        fallback()
    };
    let pod_ns = environ
        .netns
        .filter(|p| !p.is_empty())
        .and_then(|p| sys::open(p, cloexec).ok());
    let Ok(sock) = sys::socket(sys::AF_UNIX, sys::SOCK_STREAM | sys::SOCK_CLOEXEC, 0) else {
        fallback()
    };
    if sys::connect(sock, &addr, addr_len).is_err() {
        fallback();
    }
    let sent = send_request(sock, own_ns, pod_ns, env_bytes, stdin);
    sys::close(own_ns);
    if let Some(fd) = pod_ns {
        sys::close(fd);
    }
    if sent.is_err() {
        fallback();
    }
    answer(sock)
}

fn ignore_sigpipe() {
    let ign = KSigaction {
        handler: sys::SIG_IGN,
        ..KSigaction::ZERO
    };
    let mut old = KSigaction::ZERO;
    if sys::rt_sigaction(sys::SIGPIPE, Some(&ign), Some(&mut old)).is_ok() {
        // At exec every handler is reset to SIG_DFL, so the old disposition is SIG_DFL or
        // SIG_IGN.
        SIGPIPE_WAS_IGNORED.store(old.handler == sys::SIG_IGN, Relaxed);
        SIGPIPE_CHANGED.store(true, Relaxed);
    }
}

fn restore_sigpipe() {
    if SIGPIPE_CHANGED.load(Relaxed) {
        let act = KSigaction {
            handler: if SIGPIPE_WAS_IGNORED.load(Relaxed) {
                sys::SIG_IGN
            } else {
                0
            },
            ..KSigaction::ZERO
        };
        // Best effort: the standalone plugin (Rust std) ignores SIGPIPE itself anyway.
        let _ = sys::rt_sigaction(sys::SIGPIPE, Some(&act), None);
    }
}

/// Reads stdin into [`STDIN`] until EOF or `STDIN_LIMIT + 1` bytes; falls back on a read
/// error (replaying what was read, if anything).
fn read_stdin() -> &'static [u8] {
    let cap = STDIN_LIMIT + 1;
    let mut n = 0;
    let failed = {
        // SAFETY: the only mutable borrow of STDIN, ended before any shared one is made.
        let buf = unsafe { core::slice::from_raw_parts_mut(STDIN.ptr(), cap) };
        loop {
            // At the limit plus one byte: the rest is never read (inputs are bounded); the
            // standalone plugin, given these bytes, refuses them (code 7) as it would have.
            let Some(rest) = buf.get_mut(n..).filter(|r| !r.is_empty()) else {
                break false;
            };
            match sys::read_retry(sys::STDIN, rest) {
                Ok(0) => break false,
                Ok(k) => {
                    n += k;
                    STDIN_READ.store(n, Relaxed);
                }
                Err(_) => break true,
            }
        }
    };
    if failed {
        fallback();
    }
    // SAFETY: `n` bytes were written above; STDIN is not written again.
    unsafe { core::slice::from_raw_parts(STDIN.ptr(), n) }
}

/// Sends the header with the descriptors, then the environment and stdin.
fn send_request(
    sock: i32,
    own_ns: i32,
    pod_ns: Option<i32>,
    env_bytes: &[u8],
    stdin: &[u8],
) -> Result<(), sys::Errno> {
    let env_len = u32::try_from(env_bytes.len()).map_err(|_| sys::ENAMETOOLONG)?;
    let stdin_len = u32::try_from(stdin.len()).map_err(|_| sys::ENAMETOOLONG)?;
    let (flags, fds, nfds) = match pod_ns {
        Some(b) => (wire::FLAG_POD_NETNS, [own_ns, b], 2),
        None => (0, [own_ns, -1], 1),
    };
    let header = wire::header(flags, env_len, stdin_len);
    let cmsg = sys::FdsCmsg::rights(fds.get(..nfds).unwrap_or_default());
    let iov = Iovec {
        base: header.as_ptr(),
        len: header.len(),
    };
    let msg = Msghdr {
        name: core::ptr::null(),
        namelen: 0,
        iov: &raw const iov,
        iovlen: 1,
        control: (&raw const cmsg).cast::<u8>(),
        controllen: core::mem::size_of::<sys::FdsCmsg>(),
        flags: 0,
    };
    let sent = loop {
        // SAFETY: `msg` points at `iov` (the header) and `cmsg`, alive for the call.
        match unsafe { sys::sendmsg(sock, &msg, sys::MSG_NOSIGNAL) } {
            Err(sys::EINTR) => {}
            r => break r?,
        }
    };
    send_all(
        sock,
        [header.get(sent..).unwrap_or_default(), env_bytes, stdin],
    )
}

/// Sends the parts in order, in as few `sendmsg` calls as the socket allows.
fn send_all(sock: i32, mut parts: [&[u8]; 3]) -> Result<(), sys::Errno> {
    loop {
        let mut iov = [
            Iovec {
                base: core::ptr::null(),
                len: 0,
            },
            Iovec {
                base: core::ptr::null(),
                len: 0,
            },
            Iovec {
                base: core::ptr::null(),
                len: 0,
            },
        ];
        let mut n = 0;
        for part in parts.iter().filter(|p| !p.is_empty()) {
            if let Some(v) = iov.get_mut(n) {
                *v = Iovec {
                    base: part.as_ptr(),
                    len: part.len(),
                };
                n += 1;
            }
        }
        if n == 0 {
            return Ok(());
        }
        let msg = Msghdr {
            name: core::ptr::null(),
            namelen: 0,
            iov: iov.as_ptr(),
            iovlen: n,
            control: core::ptr::null(),
            controllen: 0,
            flags: 0,
        };
        // SAFETY: `msg` points at `n` iovecs describing live slices; no control data.
        let mut sent = match unsafe { sys::sendmsg(sock, &msg, sys::MSG_NOSIGNAL) } {
            Err(sys::EINTR) => continue,
            r => r?,
        };
        for part in &mut parts {
            let k = sent.min(part.len());
            *part = part.get(k..).unwrap_or_default();
            sent -= k;
        }
    }
}

/// Reads the agent's answer: exits with its code after copying its output to stdout, or
/// falls back. An answer whose output is cut short (the agent died while writing it) falls
/// back like no answer: nothing of it was written.
fn answer(sock: i32) -> ! {
    // SAFETY: the request is sent; nothing else uses ENV from here on.
    let buf = unsafe { core::slice::from_raw_parts_mut(ENV.ptr(), ENV_LIMIT) };
    let mut got = 0;
    let (code, len) = loop {
        if got >= wire::RESPONSE_LEN {
            let mut head = [0u8; wire::RESPONSE_LEN];
            head.copy_from_slice(
                buf.get(..wire::RESPONSE_LEN)
                    .unwrap_or(&[0; wire::RESPONSE_LEN]),
            );
            match wire::reply(head) {
                wire::Reply::Exit { code, len } => break (code, len),
                wire::Reply::Declined | wire::Reply::BadMagic => fallback(),
            }
        }
        match buf.get_mut(got..).map(|b| sys::read_retry(sock, b)) {
            Some(Ok(n)) if n > 0 => got += n,
            _ => fallback(),
        }
    };
    let want = wire::RESPONSE_LEN.saturating_add(len);
    if want <= buf.len() {
        // The usual case: the whole output in the buffer before any of it is written.
        while got < want {
            match buf.get_mut(got..want).map(|b| sys::read_retry(sock, b)) {
                Some(Ok(n)) if n > 0 => got += n,
                _ => fallback(),
            }
        }
        let out = buf.get(wire::RESPONSE_LEN..want).unwrap_or_default();
        if sys::write_all(sys::STDOUT, out).is_err() {
            sys::exit_group(1);
        }
        sys::exit_group(i32::from(code))
    }
    // Larger than the buffer: copied as it comes; short of `len`, a failure (exit 1).
    let mut left = len;
    let mut out = buf.get(wire::RESPONSE_LEN..got).unwrap_or_default();
    loop {
        left = left.saturating_sub(out.len());
        if sys::write_all(sys::STDOUT, out).is_err() {
            sys::exit_group(1);
        }
        if left == 0 {
            sys::exit_group(i32::from(code))
        }
        let room = buf.len().min(left);
        match buf.get_mut(..room).map(|b| sys::read_retry(sock, b)) {
            Some(Ok(n)) if n > 0 => out = buf.get(..n).unwrap_or_default(),
            _ => sys::exit_group(1),
        }
    }
}

/// The standalone plugin's path, at most this long.
const PATH_MAX: usize = 4096;

/// Execs the standalone plugin with the original argv, environment and stdin.
fn fallback() -> ! {
    if IN_FALLBACK.swap(true, Relaxed) {
        sys::exit_group(101);
    }
    restore_sigpipe();
    let mut buf = [0u8; PATH_MAX + path::STANDALONE.len() + 1];
    let over = STANDALONE_OVERRIDE.load(Relaxed);
    let target: &CStr = if over.is_null() {
        let link = buf.get_mut(..PATH_MAX).unwrap_or_default();
        let len = match sys::readlink(c"/proc/self/exe", link) {
            Ok(n) if n < PATH_MAX => n,
            Ok(_) => fail(path::STANDALONE, sys::ENAMETOOLONG),
            Err(e) => fail(path::STANDALONE, e),
        };
        let Some(end) = path::sibling(&mut buf, len, path::STANDALONE) else {
            fail(path::STANDALONE, sys::ENAMETOOLONG)
        };
        match buf.get(..=end).map(CStr::from_bytes_with_nul) {
            Some(Ok(c)) => c,
            _ => fail(path::STANDALONE, sys::ENAMETOOLONG),
        }
    } else {
        // SAFETY: `over` points into a NUL-terminated string of the initial environment.
        // (Not `CStr::from_ptr`: it calls libc's strlen.)
        let bytes = unsafe { c_string(over) };
        match CStr::from_bytes_with_nul(bytes) {
            Ok(c) => c,
            Err(_) => fail(bytes, sys::ENAMETOOLONG),
        }
    };
    let read = STDIN_READ.load(Relaxed);
    if read > 0 {
        // SAFETY: `read` bytes of STDIN were written by read_stdin, which is done.
        let bytes = unsafe { core::slice::from_raw_parts(STDIN.ptr(), read) };
        if let Err(e) = replay(bytes) {
            fail(target.to_bytes(), e);
        }
    }
    // SAFETY: ARGV and ENVP are the kernel's NULL-terminated arrays, set by `start`.
    let e = unsafe { sys::execve(target, ARGV.load(Relaxed), ENVP.load(Relaxed)) };
    fail(target.to_bytes(), e)
}

/// Puts a memfd holding `bytes` on fd 0: what the front read of stdin — all of it, or the
/// plugin's limit plus one byte, which the standalone refuses exactly as the whole would be.
fn replay(bytes: &[u8]) -> Result<(), sys::Errno> {
    let fd = sys::memfd_create(c"vpcnet-stdin", 0)?;
    sys::write_all(fd, bytes)?;
    sys::lseek(fd, 0, sys::SEEK_SET)?;
    sys::dup2(fd, sys::STDIN)?;
    if fd != sys::STDIN {
        sys::close(fd);
    }
    Ok(())
}

/// Prints the CNI error result for a standalone plugin that cannot run, exits 1.
// ~25 KB of stack, on the main thread's 8 MB stack, only on this last path.
#[allow(clippy::large_stack_arrays)]
fn fail(target: &[u8], errno: sys::Errno) -> ! {
    let mut line = [0u8; wire::error_line_capacity(PATH_MAX + 32)];
    let shown = target.get(..PATH_MAX + 32).unwrap_or(target);
    if let Some(n) = wire::error_line(shown, errno, &mut line) {
        let _ = sys::write_all(sys::STDOUT, line.get(..n).unwrap_or_default());
    }
    sys::exit_group(1)
}
