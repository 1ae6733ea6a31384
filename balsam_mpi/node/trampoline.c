/* The task trampoline (balsam_mpi/node/trampoline.py says what it does and why):
   a static program without libc, one half per machine below, then the part they
   share. Compiled with trampoline._FLAGS once per user and machine. */
#if defined(__x86_64__)
#define NR_read 0
#define NR_write 1
#define NR_close 3
#define NR_lseek 8
#define NR_rt_sigaction 13
#define NR_rt_sigprocmask 14
#define NR_pread64 17
#define NR_pwrite64 18
#define NR_getpid 39
#define NR_clone 56
#define NR_execve 59
#define NR_exit 60
#define NR_wait4 61
#define NR_kill 62
#define NR_ftruncate 77
#define NR_fchdir 81
#define NR_getppid 110
#define NR_setsid 112
#define NR_rt_sigtimedwait 128
#define NR_prctl 157
#define NR_openat 257
#define NR_fallocate 285
#define NR_getdents64 217
static long sc(long n, long a, long b, long c, long d) {
    long r;
    register long r10 __asm__("r10") = d;
    __asm__ volatile ("syscall" : "=a"(r) : "a"(n), "D"(a), "S"(b), "d"(c), "r"(r10)
                      : "rcx", "r11", "memory");
    return r;
}
__asm__(".globl _start\n_start:\n mov %rsp, %rdi\n and $-16, %rsp\n call cmain\n hlt\n");
#elif defined(__aarch64__)
#define NR_read 63
#define NR_write 64
#define NR_close 57
#define NR_lseek 62
#define NR_rt_sigaction 134
#define NR_rt_sigprocmask 135
#define NR_pread64 67
#define NR_pwrite64 68
#define NR_getpid 172
#define NR_clone 220
#define NR_execve 221
#define NR_exit 93
#define NR_wait4 260
#define NR_kill 129
#define NR_ftruncate 46
#define NR_fchdir 50
#define NR_getppid 173
#define NR_setsid 157
#define NR_rt_sigtimedwait 137
#define NR_prctl 167
#define NR_openat 56
#define NR_fallocate 47
#define NR_getdents64 61
static long sc(long n, long a, long b, long c, long d) {
    register long x8 __asm__("x8") = n;
    register long x0 __asm__("x0") = a;
    register long x1 __asm__("x1") = b;
    register long x2 __asm__("x2") = c;
    register long x3 __asm__("x3") = d;
    __asm__ volatile ("svc #0" : "+r"(x0) : "r"(x8), "r"(x1), "r"(x2), "r"(x3) : "memory");
    return x0;
}
__asm__(".globl _start\n_start:\n mov x0, sp\n bl cmain\n brk #0\n");
#elif defined(__powerpc64__) && defined(__LITTLE_ENDIAN__)
#define NR_read 3
#define NR_write 4
#define NR_close 6
#define NR_lseek 19
#define NR_rt_sigaction 173
#define NR_rt_sigprocmask 174
#define NR_pread64 179
#define NR_pwrite64 180
#define NR_getpid 20
#define NR_clone 120
#define NR_execve 11
#define NR_exit 1
#define NR_wait4 114
#define NR_kill 37
#define NR_ftruncate 93
#define NR_fchdir 133
#define NR_getppid 64
#define NR_setsid 66
#define NR_rt_sigtimedwait 176
#define NR_prctl 171
#define NR_openat 286
#define NR_fallocate 309
#define NR_getdents64 202
/* The kernel flags a failed call in CR0's summary-overflow bit with a positive errno in
   r3; the rest of this file expects -errno, as x86-64 and aarch64 return it. */
static long sc(long n, long a, long b, long c, long d) {
    register long r0 __asm__("r0") = n;
    register long r3 __asm__("r3") = a;
    register long r4 __asm__("r4") = b;
    register long r5 __asm__("r5") = c;
    register long r6 __asm__("r6") = d;
    __asm__ volatile ("sc\n\tbns+ 1f\n\tneg %1, %1\n1:"
                      : "+r"(r0), "+r"(r3), "+r"(r4), "+r"(r5), "+r"(r6)
                      : : "r7", "r8", "r9", "r10", "r11", "r12", "cr0", "ctr", "xer",
                      "memory");
    return r3;
}
/* ELFv2: r2 must hold the TOC before any C runs; found from our own address (bl/mflr),
   whatever the loader left in r12. Then a 16-byte-aligned stack with an empty frame. */
__asm__(".globl _start\n_start:\n bl 1f\n1: mflr 12\n"
        " addis 2, 12, .TOC.-1b@ha\n addi 2, 2, .TOC.-1b@l\n"
        " mr 3, 1\n clrrdi 1, 1, 4\n li 0, 0\n stdu 0, -32(1)\n bl cmain\n trap\n");
#else
#error "no trampoline for this machine"
#endif
#define NR_close_range 436
#define AT_FDCWD (-100)
#define O_RDONLY 0
#define O_WRONLY 1
#define O_RDWR 2
#define O_CLOEXEC 02000000
#define SIGHUP 1
#define SIGINT 2
#define SIGKILL 9
#define SIGTERM 15
#define SIGCHLD 17
#define SIG(s) (1UL << ((s) - 1))
#define WNOHANG 1
#define ECHILD 10
#define PR_SET_PDEATHSIG 1
#define PR_SET_DUMPABLE 4
#define PR_SET_CHILD_SUBREAPER 36
#define COLLAPSE_RANGE 8
#define ALIGN (~0xFFFFL)

struct ts { long sec, nsec; };
struct out { long fd, rw, marked; const char *proc; };
static char buf[65536];
static const char MARK[] =
    "\n[balsam_mpi: this output passed its cap; the middle was cut here]\n";

static long num(const char *s) {
    long v = 0;
    while (*s >= '0' && *s <= '9') v = v * 10 + (*s++ - '0');
    return v;
}
static long len(const char *s) { long n = 0; while (s[n]) n++; return n; }
static void die(const char *what, const char *arg, long code) {
    sc(NR_write, 2, (long)"balsam trampoline: ", 19, 0);
    sc(NR_write, 2, (long)what, len(what), 0);
    sc(NR_write, 2, (long)arg, len(arg), 0);
    sc(NR_write, 2, (long)"\n", 1, 0);
    sc(NR_exit, code, 0, 0, 0);
}

/* Keep one output file under the cap: its first half and its last quarter. */
static void cut(struct out *o, long cap) {
    long size = sc(NR_lseek, o->fd, 0, 2 /* SEEK_END */, 0);
    long head = (cap / 2) & ALIGN, keep = cap / 4, mark = sizeof MARK - 1;
    if (size <= cap) return;
    /* Our fd is O_APPEND, where pwrite appends: write through a second, plain open. */
    if (o->rw < 0) o->rw = sc(NR_openat, AT_FDCWD, (long)o->proc, O_RDWR | O_CLOEXEC, 0);
    if (o->rw < 0) return;
    if (!o->marked) {
        sc(NR_pwrite64, o->rw, (long)MARK, mark, head - mark);
        o->marked = 1;
    }
    long span = (size - keep - head) & ALIGN;
    if (span <= 0) return;
    if (sc(NR_fallocate, o->rw, COLLAPSE_RANGE, head, span) == 0) return;
    long src = size - keep, dst = head;
    while (src < size) {
        long n = size - src < (long)sizeof buf ? size - src : (long)sizeof buf;
        n = sc(NR_pread64, o->rw, (long)buf, n, src);
        if (n <= 0 || sc(NR_pwrite64, o->rw, (long)buf, n, dst) != n) break;
        src += n;
        dst += n;
    }
    sc(NR_ftruncate, o->rw, dst, 0, 0);
}

/* Close every descriptor from `low` up: close_range (Linux 5.9), else, on a kernel that
   answers ENOSYS, each one /proc/self/fd lists (open and closed in turn). */
struct d64 { unsigned long ino; long off; unsigned short reclen; unsigned char type;
             char name[]; };
static void close_from(long low) {
    if (sc(NR_close_range, low, ~0UL, 0, 0) == 0) return;
    long dir = sc(NR_openat, AT_FDCWD, (long)"/proc/self/fd", O_RDONLY | O_CLOEXEC, 0);
    if (dir < 0) return;
    for (;;) {
        long n = sc(NR_getdents64, dir, (long)buf, sizeof buf, 0);
        if (n <= 0) break;
        for (long at = 0; at < n;) {
            struct d64 *d = (struct d64 *)(buf + at);
            long fd = num(d->name);
            if (d->name[0] >= '0' && d->name[0] <= '9' && fd >= low && fd != dir)
                sc(NR_close, fd, 0, 0, 0);
            at += d->reclen;
        }
    }
    sc(NR_close, dir, 0, 0, 0);
}

/* SIGKILL the task's group (while it lives) and every process re-parented to us. */
static void kill_all(long task, long task_alive) {
    if (task_alive) sc(NR_kill, -task, SIGKILL, 0, 0);
    long fd = sc(NR_openat, AT_FDCWD, (long)"/proc/thread-self/children", O_CLOEXEC, 0);
    if (fd < 0) return;
    long n = sc(NR_read, fd, (long)buf, sizeof buf - 1, 0);
    sc(NR_close, fd, 0, 0, 0);
    long pid = 0, digits = 0;
    for (long i = 0; i <= n; i++) {
        char c = i < n ? buf[i] : ' ';
        if (c >= '0' && c <= '9') {
            pid = pid * 10 + (c - '0');
            digits = 1;
        } else if (digits) {
            sc(NR_kill, -pid, SIGKILL, 0, 0);  /* its group, if it leads one */
            sc(NR_kill, pid, SIGKILL, 0, 0);
            pid = digits = 0;
        }
    }
}

__attribute__((used)) void cmain(long *sp) {
    long argc = sp[0];
    char **argv = (char **)(sp + 1);
    char **envp = argv + argc + 1;
    unsigned long set = SIG(SIGHUP) | SIG(SIGINT) | SIG(SIGTERM) | SIG(SIGCHLD), none = 0;
    if (argc < 5) die("usage: pdeath PARENT_PID FLAGS CAP PROGRAM [ARGS...]", "", 127);
    sc(NR_rt_sigprocmask, 0 /* SIG_BLOCK */, (long)&set, 0, 8);
    long flags = num(argv[2]), cap = num(argv[3]);
    if (flags & 1) {
        sc(NR_prctl, PR_SET_PDEATHSIG, SIGHUP, 0, 0);
        if (sc(NR_getppid, 0, 0, 0, 0) != num(argv[1])) sc(NR_exit, 137, 0, 0, 0);
    }
    sc(NR_prctl, PR_SET_CHILD_SUBREAPER, 1, 0, 0);
    if (flags & 2) {
        long fd = sc(NR_openat, 4, (long)"cgroup.procs", O_WRONLY | O_CLOEXEC, 0);
        if (fd >= 0) {
            sc(NR_write, fd, (long)"0", 1, 0);
            sc(NR_close, fd, 0, 0, 0);
        }
    }
    close_from(4);  /* nothing of the worker's leaks further */
    if (sc(NR_fchdir, 3, 0, 0, 0) != 0) die("cannot enter the task's directory", "", 126);
    long me = sc(NR_getpid, 0, 0, 0, 0);
    long task = sc(NR_clone, SIGCHLD, 0, 0, 0);
    if (task < 0) die("cannot fork the task", "", 126);
    if (task == 0) {
        sc(NR_setsid, 0, 0, 0, 0);
        sc(NR_prctl, PR_SET_PDEATHSIG, SIGKILL, 0, 0);
        if (sc(NR_getppid, 0, 0, 0, 0) != me) sc(NR_exit, 137, 0, 0, 0);
        close_from(3);
        sc(NR_rt_sigprocmask, 2 /* SIG_SETMASK */, (long)&none, 0, 8);
        sc(NR_execve, (long)argv[4], (long)(argv + 4), (long)envp, 0);
        die("cannot execute ", argv[4], 127);
    }
    sc(NR_close, 3, 0, 0, 0);
    struct out outs[2];
    outs[0].fd = 1; outs[0].rw = -1; outs[0].marked = 0; outs[0].proc = "/proc/self/fd/1";
    outs[1].fd = 2; outs[1].rw = -1; outs[1].marked = 0; outs[1].proc = "/proc/self/fd/2";
    long status = 0, done = 0, killing = 0, rounds = 0;
    for (;;) {
        struct ts tick, brief;
        tick.sec = 1; tick.nsec = 0; brief.sec = 0; brief.nsec = 20000000;
        long sig = sc(NR_rt_sigtimedwait, (long)&set, 0,
                      killing ? (long)&brief : cap ? (long)&tick : 0, 8);
        if ((sig == SIGTERM || sig == SIGINT) && !done) {
            /* The group, and the task itself: until it has called setsid() the group does
               not exist yet, and a signal sent to it alone would be lost. */
            sc(NR_kill, -task, sig, 0, 0);
            sc(NR_kill, task, sig, 0, 0);
        }
        if (sig == SIGHUP) killing = 1;
        long left = 1;
        for (;;) {
            int st = 0;
            long pid = sc(NR_wait4, -1, (long)&st, WNOHANG, 0);
            if (pid == -ECHILD) left = 0;
            if (pid <= 0) break;
            if (pid == task) { status = st; done = 1; }
        }
        if (cap) { cut(&outs[0], cap); cut(&outs[1], cap); }
        if (!left) break;
        if (done || killing) {
            kill_all(task, !done);
            killing = 1;
            if (++rounds > 250) break;  /* ~5 s: something will not die (stuck in the kernel) */
        }
    }
    if (!done) status = SIGKILL;
    if (status & 0x7f) {  /* killed by a signal: die of the same one, without a core file */
        long s = status & 0x7f, act[4];
        unsigned long one = SIG(s);
        act[0] = act[1] = act[2] = act[3] = 0;  /* SIG_DFL */
        sc(NR_prctl, PR_SET_DUMPABLE, 0, 0, 0);
        sc(NR_rt_sigaction, s, (long)act, 0, 8);
        sc(NR_rt_sigprocmask, 1 /* SIG_UNBLOCK */, (long)&one, 0, 8);
        sc(NR_kill, me, s, 0, 0);
        sc(NR_exit, 128 + s, 0, 0, 0);
    }
    sc(NR_exit, (status >> 8) & 0xff, 0, 0, 0);
}
