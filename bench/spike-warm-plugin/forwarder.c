/* SPIKE (issue 14 round 8, not product code): the no-libc front of a warm plugin process.
 * Sends its environment, its stdin bytes and its stdout/stderr descriptors (SCM_RIGHTS) to the
 * socket named by VPCNET_SPIKE_WORKERS, waits for the exit code, exits with it. x86_64 only. */
#include <stddef.h>
#include <stdint.h>
#include <sys/syscall.h>
#include <sys/socket.h>
#include <sys/un.h>

static long sys(long n, long a, long b, long c) {
  long r;
  __asm__ volatile("syscall" : "=a"(r) : "a"(n), "D"(a), "S"(b), "d"(c) : "rcx", "r11", "memory");
  return r;
}
static void die(int code) { sys(SYS_exit_group, code, 0, 0); for (;;) {} }
static size_t slen(const char *s) { size_t n = 0; while (s[n]) n++; return n; }

static char envbuf[65536], inbuf[262144];

void cmain(long *sp) {
  long argc = sp[0];
  char **envp = (char **)(sp + argc + 2);
  const char *path = 0;
  size_t elen = 0;
  for (char **e = envp; *e; e++) {
    const char *k = "VPCNET_SPIKE_WORKERS=";
    size_t i = 0;
    while (k[i] && (*e)[i] == k[i]) i++;
    if (!k[i]) path = *e + i;
    size_t n = slen(*e) + 1;
    if (elen + n > sizeof envbuf) die(98);
    for (size_t j = 0; j < n; j++) envbuf[elen + j] = (*e)[j];
    elen += n;
  }
  if (!path) die(97);
  size_t ilen = 0;
  for (;;) {
    long r = sys(SYS_read, 0, (long)(inbuf + ilen), sizeof inbuf - ilen);
    if (r <= 0) break;
    ilen += r;
  }
  int s = sys(SYS_socket, AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  struct sockaddr_un a = {.sun_family = AF_UNIX};
  size_t pl = slen(path);
  if (pl >= sizeof a.sun_path) die(96);
  for (size_t i = 0; i < pl; i++) a.sun_path[i] = path[i];
  if (sys(SYS_connect, s, (long)&a, sizeof a) < 0) die(95);
  uint32_t el = elen, il = ilen;
  struct iovec iov[4] = {{&el, 4}, {envbuf, elen}, {&il, 4}, {inbuf, ilen}};
  union { struct cmsghdr h; char b[CMSG_SPACE(2 * sizeof(int))]; } c;
  struct msghdr m = {.msg_iov = iov, .msg_iovlen = 1, .msg_control = c.b, .msg_controllen = sizeof c.b};
  c.h.cmsg_level = SOL_SOCKET; c.h.cmsg_type = SCM_RIGHTS; c.h.cmsg_len = CMSG_LEN(2 * sizeof(int));
  ((int *)CMSG_DATA(&c.h))[0] = 1; ((int *)CMSG_DATA(&c.h))[1] = 2;
  if (sys(SYS_sendmsg, s, (long)&m, 0) != 4) die(94);
  struct msghdr m2 = {.msg_iov = iov + 1, .msg_iovlen = 3};
  if (sys(SYS_sendmsg, s, (long)&m2, 0) < 0) die(93);
  int32_t code = 0; size_t got = 0;
  while (got < 4) {
    long r = sys(SYS_read, s, (long)((char *)&code + got), 4 - got);
    if (r <= 0) die(92);
    got += r;
  }
  die(code);
}

__asm__(".global _start\n_start:\n mov %rsp, %rdi\n and $-16, %rsp\n call cmain\n hlt\n");
