//! Raw Linux `x86_64` system calls, without libc.
//!
//! Every call returns `Ok(value)` or `Err(errno)` (the kernel returns `-errno` in
//! `-4095..=-1`). Wrappers that only take Rust slices and references are safe; the ones that
//! take raw pointers (`execve`, `sendmsg`) are `unsafe`. Every fallible call fails with the
//! kernel's errno, so the functions do not repeat an `# Errors` section.
//!
//! The structures are the kernel's `x86_64` ABI (`struct msghdr`, `struct iovec`,
//! `struct cmsghdr`, `struct sockaddr_un`, the kernel's `struct sigaction`).

#![allow(clippy::missing_errors_doc)]

use core::arch::asm;
use core::ffi::CStr;

/// An errno value as the kernel reports it (positive).
pub type Errno = i32;

pub const EINTR: Errno = 4;
/// Reported when a path or a buffer does not fit (no system call was made).
pub const ENAMETOOLONG: Errno = 36;

pub const STDIN: i32 = 0;
pub const STDOUT: i32 = 1;

pub const AT_FDCWD: i32 = -100;
pub const O_RDONLY: usize = 0;
pub const O_CLOEXEC: usize = 0o2_000_000;
pub const F_GETFD: usize = 1;
pub const SEEK_SET: usize = 0;

pub const AF_UNIX: u16 = 1;
pub const SOCK_STREAM: usize = 1;
pub const SOCK_CLOEXEC: usize = O_CLOEXEC;
pub const SOL_SOCKET: i32 = 1;
pub const SCM_RIGHTS: i32 = 1;
pub const MSG_NOSIGNAL: usize = 0x4000;

pub const SIGPIPE: usize = 13;
pub const SIG_IGN: usize = 1;

/// `sizeof(struct sockaddr_un.sun_path)`, including the terminating NUL.
pub const SUN_PATH: usize = 108;

mod nr {
    pub const READ: usize = 0;
    pub const WRITE: usize = 1;
    pub const CLOSE: usize = 3;
    pub const LSEEK: usize = 8;
    pub const RT_SIGACTION: usize = 13;
    pub const DUP2: usize = 33;
    pub const SOCKET: usize = 41;
    pub const CONNECT: usize = 42;
    pub const SENDTO: usize = 44;
    pub const SENDMSG: usize = 46;
    pub const EXECVE: usize = 59;
    pub const FCNTL: usize = 72;
    pub const READLINK: usize = 89;
    pub const EXIT_GROUP: usize = 231;
    pub const OPENAT: usize = 257;
    pub const MEMFD_CREATE: usize = 319;
}

/// `syscall(n, a, b, c, d)`.
///
/// # Safety
///
/// The arguments must be valid for system call `n`: pointers point to memory the kernel may
/// read or write as that call defines.
#[inline(always)] // A call around the `syscall` instruction would only cost.
#[allow(clippy::inline_always, clippy::many_single_char_names)]
unsafe fn syscall4(n: usize, a: usize, b: usize, c: usize, d: usize) -> isize {
    let ret: isize;
    // SAFETY: the caller guarantees the arguments are valid for `n`. The `syscall`
    // instruction clobbers rcx and r11 only; memory may be read and written (no `nomem`).
    unsafe {
        asm!(
            "syscall",
            inlateout("rax") n => ret,
            in("rdi") a,
            in("rsi") b,
            in("rdx") c,
            in("r10") d,
            lateout("rcx") _,
            lateout("r11") _,
            options(nostack),
        );
    }
    ret
}

/// `syscall4` with the last argument(s) zero.
///
/// # Safety
///
/// As for [`syscall4`].
#[inline(always)]
#[allow(clippy::inline_always)]
unsafe fn syscall3(n: usize, a: usize, b: usize, c: usize) -> isize {
    // SAFETY: forwarded from the caller.
    unsafe { syscall4(n, a, b, c, 0) }
}

/// Maps the kernel's return value to `Ok`/`Err(errno)`.
#[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
fn check(ret: isize) -> Result<usize, Errno> {
    if (-4095..0).contains(&ret) {
        Err((-ret) as Errno)
    } else {
        Ok(ret as usize)
    }
}

/// A descriptor as the kernel's `int` (descriptors are below `i32::MAX`).
fn fd_of(v: usize) -> i32 {
    i32::try_from(v).unwrap_or(-1)
}

/// A descriptor argument: sign-extended, as the kernel reads an `int` from a register.
#[allow(clippy::cast_sign_loss)]
fn arg(fd: i32) -> usize {
    fd as isize as usize
}

pub fn read(fd: i32, buf: &mut [u8]) -> Result<usize, Errno> {
    // SAFETY: the kernel writes at most `buf.len()` bytes into `buf`.
    check(unsafe { syscall3(nr::READ, arg(fd), buf.as_mut_ptr() as usize, buf.len()) })
}

pub fn write(fd: i32, buf: &[u8]) -> Result<usize, Errno> {
    // SAFETY: the kernel reads at most `buf.len()` bytes from `buf`.
    check(unsafe { syscall3(nr::WRITE, arg(fd), buf.as_ptr() as usize, buf.len()) })
}

/// Reads, retrying on `EINTR`.
pub fn read_retry(fd: i32, buf: &mut [u8]) -> Result<usize, Errno> {
    loop {
        match read(fd, buf) {
            Err(EINTR) => {}
            r => return r,
        }
    }
}

/// Writes all of `buf`, retrying on `EINTR` and partial writes.
pub fn write_all(fd: i32, mut buf: &[u8]) -> Result<(), Errno> {
    while !buf.is_empty() {
        match write(fd, buf) {
            Ok(n) => buf = buf.get(n..).unwrap_or_default(),
            Err(EINTR) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

pub fn close(fd: i32) {
    // SAFETY: no memory is passed. Errors of close are of no use here.
    unsafe { syscall3(nr::CLOSE, arg(fd), 0, 0) };
}

/// `fcntl(fd, F_GETFD)`: whether `fd` is open.
pub fn fcntl_getfd(fd: i32) -> Result<usize, Errno> {
    // SAFETY: no memory is passed.
    check(unsafe { syscall3(nr::FCNTL, arg(fd), F_GETFD, 0) })
}

/// `openat(AT_FDCWD, path, flags)`.
pub fn open(path: &CStr, flags: usize) -> Result<i32, Errno> {
    // SAFETY: `path` is NUL-terminated; the kernel only reads it.
    check(unsafe { syscall4(nr::OPENAT, arg(AT_FDCWD), path.as_ptr() as usize, flags, 0) })
        .map(fd_of)
}

pub fn readlink(path: &CStr, buf: &mut [u8]) -> Result<usize, Errno> {
    // SAFETY: `path` is NUL-terminated; the kernel writes at most `buf.len()` bytes to `buf`.
    check(unsafe {
        syscall3(
            nr::READLINK,
            path.as_ptr() as usize,
            buf.as_mut_ptr() as usize,
            buf.len(),
        )
    })
}

pub fn memfd_create(name: &CStr, flags: usize) -> Result<i32, Errno> {
    // SAFETY: `name` is NUL-terminated; the kernel only reads it.
    check(unsafe { syscall3(nr::MEMFD_CREATE, name.as_ptr() as usize, flags, 0) }).map(fd_of)
}

pub fn lseek(fd: i32, offset: usize, whence: usize) -> Result<usize, Errno> {
    // SAFETY: no memory is passed.
    check(unsafe { syscall3(nr::LSEEK, arg(fd), offset, whence) })
}

pub fn dup2(old: i32, new: i32) -> Result<i32, Errno> {
    // SAFETY: no memory is passed.
    check(unsafe { syscall3(nr::DUP2, arg(old), arg(new), 0) }).map(fd_of)
}

pub fn socket(domain: u16, ty: usize, protocol: usize) -> Result<i32, Errno> {
    // SAFETY: no memory is passed.
    check(unsafe { syscall3(nr::SOCKET, usize::from(domain), ty, protocol) }).map(fd_of)
}

/// `struct sockaddr_un`.
#[repr(C)]
pub struct SockaddrUn {
    pub family: u16,
    pub path: [u8; SUN_PATH],
}

/// `connect(fd, addr, len)`; `path_len` is the length of the path in `addr.path` without its
/// NUL.
pub fn connect(fd: i32, addr: &SockaddrUn, path_len: usize) -> Result<(), Errno> {
    let len = core::mem::size_of::<u16>() + path_len.min(SUN_PATH - 1) + 1;
    // SAFETY: `addr` is a valid `sockaddr_un` of at least `len` bytes; the kernel only reads it.
    check(unsafe {
        syscall3(
            nr::CONNECT,
            arg(fd),
            core::ptr::from_ref(addr) as usize,
            len,
        )
    })
    .map(|_| ())
}

/// `sendto(fd, buf, len, flags, NULL, 0)`.
pub fn send(fd: i32, buf: &[u8], flags: usize) -> Result<usize, Errno> {
    // SAFETY: the kernel reads at most `buf.len()` bytes from `buf`; no address is passed.
    check(unsafe { syscall4(nr::SENDTO, arg(fd), buf.as_ptr() as usize, buf.len(), flags) })
}

/// `struct iovec`.
#[repr(C)]
pub struct Iovec {
    pub base: *const u8,
    pub len: usize,
}

/// `struct msghdr`.
#[repr(C)]
pub struct Msghdr {
    pub name: *const u8,
    pub namelen: u32,
    pub iov: *const Iovec,
    pub iovlen: usize,
    pub control: *const u8,
    pub controllen: usize,
    pub flags: i32,
}

/// A `struct cmsghdr` with room for up to two descriptors (`SCM_RIGHTS`): 16 bytes of header,
/// 8 of data; `CMSG_SPACE(4) == CMSG_SPACE(8) == 24`.
#[repr(C, align(8))]
pub struct FdsCmsg {
    pub len: usize,
    pub level: i32,
    pub ty: i32,
    pub fds: [i32; 2],
}

impl FdsCmsg {
    /// `SCM_RIGHTS` with `fds` (one or two descriptors; more are ignored).
    #[must_use]
    pub fn rights(fds: &[i32]) -> Self {
        let n = fds.len().clamp(1, 2);
        let mut out = [-1; 2];
        for (o, f) in out.iter_mut().zip(fds) {
            *o = *f;
        }
        FdsCmsg {
            // CMSG_LEN(n * sizeof(int))
            len: 16 + 4 * n,
            level: SOL_SOCKET,
            ty: SCM_RIGHTS,
            fds: out,
        }
    }
}

/// `sendmsg(fd, msg, flags)`.
///
/// # Safety
///
/// `msg` must point to valid iovecs and control data for the kernel to read.
pub unsafe fn sendmsg(fd: i32, msg: &Msghdr, flags: usize) -> Result<usize, Errno> {
    // SAFETY: the caller guarantees `msg`'s pointers are valid; the kernel only reads them.
    check(unsafe {
        syscall3(
            nr::SENDMSG,
            arg(fd),
            core::ptr::from_ref(msg) as usize,
            flags,
        )
    })
}

/// The kernel's `struct sigaction` on `x86_64` (not glibc's).
#[repr(C)]
#[derive(Clone, Copy)]
pub struct KSigaction {
    pub handler: usize,
    pub flags: u64,
    pub restorer: usize,
    pub mask: u64,
}

impl KSigaction {
    pub const ZERO: KSigaction = KSigaction {
        handler: 0,
        flags: 0,
        restorer: 0,
        mask: 0,
    };
}

/// `rt_sigaction(sig, new, old, 8)`.
pub fn rt_sigaction(
    sig: usize,
    new: Option<&KSigaction>,
    old: Option<&mut KSigaction>,
) -> Result<(), Errno> {
    let new = new.map_or(0, |n| core::ptr::from_ref(n) as usize);
    let old = old.map_or(0, |o| core::ptr::from_mut(o) as usize);
    // SAFETY: `new` (read) and `old` (written) are null or valid `KSigaction`s, the kernel's
    // layout; the signal set is 8 bytes.
    check(unsafe { syscall4(nr::RT_SIGACTION, sig, new, old, 8) }).map(|_| ())
}

/// `execve(path, argv, envp)`; returns only on failure.
///
/// # Safety
///
/// `argv` and `envp` must be null-terminated arrays of pointers to NUL-terminated strings.
#[must_use]
pub unsafe fn execve(path: &CStr, argv: *const *const u8, envp: *const *const u8) -> Errno {
    // SAFETY: `path` is NUL-terminated; the caller guarantees `argv` and `envp`.
    let ret = unsafe {
        syscall3(
            nr::EXECVE,
            path.as_ptr() as usize,
            argv as usize,
            envp as usize,
        )
    };
    check(ret).err().unwrap_or(0)
}

pub fn exit_group(code: i32) -> ! {
    loop {
        // SAFETY: no memory is passed; the call does not return.
        unsafe { syscall3(nr::EXIT_GROUP, arg(code), 0, 0) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layouts_are_the_kernels() {
        assert_eq!(core::mem::size_of::<SockaddrUn>(), 110);
        assert_eq!(core::mem::size_of::<Msghdr>(), 56);
        assert_eq!(core::mem::size_of::<Iovec>(), 16);
        assert_eq!(core::mem::size_of::<FdsCmsg>(), 24);
        assert_eq!(core::mem::size_of::<KSigaction>(), 32);
        assert_eq!(FdsCmsg::rights(&[3]).len, 20);
        assert_eq!(FdsCmsg::rights(&[3, 4]).len, 24);
    }

    #[test]
    fn errors_are_errnos() {
        assert_eq!(fcntl_getfd(-1), Err(9)); // EBADF
        assert_eq!(open(c"/nonexistent/x", O_RDONLY), Err(2)); // ENOENT
    }

    #[test]
    fn memfd_round_trip() {
        let fd = memfd_create(c"t", 0).expect("memfd");
        write_all(fd, b"hello").expect("write");
        assert_eq!(lseek(fd, 0, SEEK_SET), Ok(0));
        let mut b = [0u8; 8];
        assert_eq!(read_retry(fd, &mut b), Ok(5));
        assert_eq!(&b[..5], b"hello");
        close(fd);
    }
}
