"""
Run model-written Python against assert tests: contained, fast, and hard to game.

Threat model: accidents and reward hacking by a small model (exit(0), printing "passed", patching
builtins, fork bombs, memory bombs, sleeping children), not a determined attacker who walks frames
or uses ctypes: for that, put the whole run in a container or VM. README (Sandbox) has the details.

Design. run_batch() feeds JSON lines to warm workers, `python -S sandbox.py --worker`, started fresh
(never forked from the caller, which may hold torch and threads), stdlib only, lean so that forks
are cheap, never running user code themselves. A worker enters namespaces of its own: an empty
network, a private mount namespace with / read-only and a /proc showing only its pid namespace. Per
program it mounts a fresh tmpfs on /tmp (also behind /var/tmp and /dev/shm) and forks
  I  pid 1 of a new pid namespace, in its own session, without privileges (root: a uid that no other
     process on the machine has; otherwise a nested user namespace), with rlimits, a bare env,
     stdin /dev/null and output to a capped pipe. It compiles the program and every test before
     user code runs, runs the program, puts builtins and math back, then for each test but the last
     forks
  T  which runs the test in a copy of the program's globals, builtin names resolving to a private
     pristine dict, and writes "<nonce> pass i" on the report pipe only if exec() returned. The
     last test runs in I itself. Every test starts from the state the program left.
     With stop_at_failure (an all-or-nothing reward) I runs the tests itself, one after another,
     and stops at the first failure: no T. A later test then sees what earlier calls changed, but
     to pass the set a program must still return every test's right value.
At the time limit, or when I exits, the worker SIGKILLs I and the kernel kills all that is left in
its pid namespace, setsid'd and double-forked grandchildren included.

Why the reward cannot be faked: passes count only from lines on a private pipe that carry the run's
random nonce, written by I or a T it forked (never by a fork of user code), once per test. Exit
codes and stdout mean nothing, so exit(0), SystemExit, killing the parent or closing fds only end a
test unreported. exec/compile/os.write/... are bound before user code runs, `assert` raises the real
AssertionError (optimize=0), sys.settrace/setprofile are disabled. Out of scope: frames, the heap,
ctypes, and values whose __eq__ always says True (tests should check types too).
Without namespaces the worker falls back to a child subreaper that kills every descendant and a temp
dir per run; the network and the user's files then stay reachable, and it says so on stderr.
isolation() reports what this machine gives.
"""
import atexit
import builtins
import ctypes
import gc
import io
import json
import math
import os
import re
import resource
import select
import signal
import sys
import time
import _thread
from dataclasses import dataclass

DEFAULT_TIMEOUT = 3.0     # seconds of wall time for a program and all of its tests together
DEFAULT_MEMORY_MB = 512   # address space per process (RLIMIT_AS)
MAX_PROCESSES = 64        # RLIMIT_NPROC, counted per sandbox uid / user namespace
MAX_FILE_MB = 16          # RLIMIT_FSIZE: largest file a program can write
TMP_MB = 64               # size of the private tmpfs on /tmp (isolated mode)
MAX_OPEN_FILES = 256      # RLIMIT_NOFILE
OUTPUT_CHARS = 2000       # captured stdout+stderr kept in Result.output (the rest is discarded)
SANDBOX_UID = 2_000_000_000  # + the worker's pid: the uid programs run as when the worker is root
_KERNEL = tuple(int(n) for n in re.findall(r'\d+', os.uname().release)[:2])


@dataclass
class Result:
    passed: int       # tests that ran to completion without raising
    total: int        # tests given
    status: str       # 'ok' iff every test passed, else 'error', 'syntax', 'timeout', 'memory', 'killed'
    error: str = ''   # one short line, '' when ok
    output: str = ''  # the first OUTPUT_CHARS of what the program printed

    @property
    def reward(self) -> float:
        return self.passed / self.total if self.total else 0.0

    @property
    def solved(self) -> bool:
        return self.total > 0 and self.passed == self.total  # every test passed: what pass@k counts


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k from n samples of which c passed (Chen et al., 2021)."""
    if not (0 <= c <= n and 1 <= k <= n):
        raise ValueError(f'pass_at_k needs 0 <= c <= n and 1 <= k <= n, got n={n} c={c} k={k}')
    if n - c < k:
        return 1.0
    # 1 - C(n-c, k) / C(n, k) = 1 - prod_{i=n-c+1}^{n} (1 - k / i)   (stable, no big binomials)
    return 1.0 - math.prod(1.0 - k / i for i in range(n - c + 1, n + 1))

# ----------------------------------------------------------------------------------------------
# worker side: runs in a fresh interpreter (see _worker_main), never executes user code itself

_libc = ctypes.CDLL(None, use_errno=True)
CLONE_NEWNS, CLONE_NEWUSER, CLONE_NEWPID, CLONE_NEWNET = 0x20000, 0x10000000, 0x20000000, 0x40000000
MS_NOSUID, MS_NODEV, MS_NOEXEC, MS_BIND, MS_REC, MS_PRIVATE = 2, 4, 8, 4096, 16384, 1 << 18
MNT_DETACH, MOUNT_ATTR_RDONLY, AT_RECURSIVE, AT_FDCWD, SYS_MOUNT_SETATTR = 2, 1, 0x8000, -100, 442
PR_SET_PDEATHSIG, PR_SET_KEEPCAPS, PR_SET_CHILD_SUBREAPER, PR_SET_NO_NEW_PRIVS = 1, 8, 36, 38
CAP_DAC_READ_SEARCH, CAPABILITY_VERSION_3 = 2, 0x20080522
RESTORED_MODULES = ('builtins', 'math')  # put back after the program ran, before the tests
_PRISTINE = []        # [(name, module, its dict, a pristine copy)], filled by _worker_main
_MODULES = sys.modules  # the interpreter's own dict (rebinding sys.modules does not change imports)
_BUILTINS = {}        # a private pristine copy of the builtins dict: what tests resolve names in
_BUILTIN_NAMES = set()  # non-dunder builtin names: a program's global of that name is hidden from tests


class _Setup:  # what the worker could set up; filled once by _enter_namespaces
    isolated = False   # own pid/net/mount namespaces
    uid = None         # root: the uid programs run as
    pidns = None       # fd of the worker's own pid namespace (to reset after each run)
    tmp_stat = None    # /tmp's mode, owner and free blocks and inodes when freshly mounted
    workdir = None     # fallback mode: parent of the per-run temp dirs


def _check(ret, what):
    if ret != 0:
        raise OSError(ctypes.get_errno(), f'{what}: {os.strerror(ctypes.get_errno())}')


def _mount(src, dst, fstype, flags, data=None):
    _check(_libc.mount(src, dst, fstype, flags, data), f'mount {dst}')


def _uid_mapped(uid):
    """Is `uid` usable here? (Not inside a container's user namespace that maps only a few uids.)"""
    with open('/proc/self/uid_map') as f:
        return any(int(a) <= uid < int(a) + int(n) for a, _, n in (line.split() for line in f))


def _enter_namespaces(first):
    """Worker start: own pid, net and mount namespaces (and user, when not root); falls back if denied."""
    uid, gid = os.geteuid(), os.getegid()  # read now: unmapped, they read as 65534 after unshare
    # Root: a uid no other process has (pids are unique). RLIMIT_NPROC counts per uid, machine-wide: a
    # uid shared by several callers' pools let one program's processes fail the test forks of all.
    root = uid == 0 and _uid_mapped(SANDBOX_UID + os.getpid())
    _Setup.uid = SANDBOX_UID + os.getpid() if root else None
    if _libc.unshare(CLONE_NEWPID | CLONE_NEWNET | CLONE_NEWNS | (0 if root else CLONE_NEWUSER)) != 0:
        import tempfile  # fallback mode: no namespaces; a subreaper and a temp dir per run
        no_net = _libc.unshare(CLONE_NEWNET | (0 if root else CLONE_NEWUSER)) == 0  # if only that is allowed
        _libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)  # orphans of a run come to us, to be killed
        _Setup.workdir = tempfile.mkdtemp(prefix='restrl-sandbox-')
        os.chmod(_Setup.workdir, 0o711)
        risks = ([] if no_net else ['reach the network']) + ([] if root else ['write and signal as you'])
        if first:
            print(f'sandbox.py: namespaces are not allowed here, so programs can {" and ".join(risks)} '
                  '(see README, Sandbox)', file=sys.stderr)
        return
    if not root:  # map our uid/gid to themselves in the new user namespace (needed to nest another)
        for name, text in (('uid_map', f'{uid} {uid} 1'), ('setgroups', 'deny'), ('gid_map', f'{gid} {gid} 1')):
            with open(f'/proc/self/{name}', 'w') as f:
                f.write(text)
    pid = os.fork()  # the first child is pid 1 of the new pid namespace: it becomes the worker
    if pid:
        os._exit(os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]) & 0xFF)
    _libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)  # dies with the process the caller started
    _mount(b'none', b'/', None, MS_REC | MS_PRIVATE)  # nothing we mount leaks out, nor in
    attr = (ctypes.c_uint64 * 4)(MOUNT_ATTR_RDONLY, 0, 0, 0)  # struct mount_attr {set, clr, propagation, userns}
    _libc.syscall(SYS_MOUNT_SETATTR, AT_FDCWD, b'/', AT_RECURSIVE, ctypes.byref(attr), ctypes.sizeof(attr))
    # (fails on kernel < 5.12: / then stays writable where the uid may write; isolation() says so)
    _mount(b'proc', b'/proc', b'proc', MS_NOSUID | MS_NODEV | MS_NOEXEC)  # shows only our processes
    _Setup.pidns = os.open('/proc/self/ns/pid', os.O_RDONLY)
    _Setup.isolated = True


def _fresh_tmp():
    """Isolated mode, before each run: a new empty tmpfs on /tmp, shared with /var/tmp and /dev/shm.
    A tmpfs the last run left as it was mounted is kept (most programs write no file): no entry, no
    extended attribute, no block or inode in use, the same mode and owner. Saves ~0.5 ms a program."""
    if _Setup.tmp_stat is not None and _tmp_as_mounted():
        return
    owner = f',uid={_Setup.uid},gid={_Setup.uid}' if _Setup.uid is not None else ''
    for d in (b'/dev/shm', b'/var/tmp', b'/tmp'):
        _libc.umount2(d, MNT_DETACH)  # the previous run's files go with it
    _mount(b'tmpfs', b'/tmp', b'tmpfs', MS_NOSUID | MS_NODEV, f'size={TMP_MB}m,mode=0700{owner}'.encode())
    for d in (b'/var/tmp', b'/dev/shm'):
        if os.path.isdir(d):
            _mount(b'/tmp', d, None, MS_BIND)
    st, fs = os.stat('/tmp'), os.statvfs('/tmp')
    _Setup.tmp_stat = (st.st_mode, st.st_uid, st.st_gid, fs.f_bfree, fs.f_ffree)


def _tmp_as_mounted():
    st, fs = os.stat('/tmp'), os.statvfs('/tmp')
    return ((st.st_mode, st.st_uid, st.st_gid, fs.f_bfree, fs.f_ffree) == _Setup.tmp_stat
            and not os.listdir('/tmp') and not os.listxattr('/tmp'))


_CAP_HEADER = (ctypes.c_uint32 * 2)(CAPABILITY_VERSION_3, 0)
_CAP_DATA = (ctypes.c_uint32 * 6)(1 << CAP_DAC_READ_SEARCH, 1 << CAP_DAC_READ_SEARCH, 0, 0, 0, 0)  # {eff,perm,inh}x2


def _become(uid):
    """Root only: run as `uid`, keeping just the right to read files (Python may live in /root)."""
    _libc.prctl(PR_SET_KEEPCAPS, 1, 0, 0, 0)
    os.setgroups([])
    os.setresgid(uid, uid, uid)
    os.setresuid(uid, uid, uid)  # no root, no CAP_SYS_ADMIN: cannot undo mounts, signal root, raise limits
    _check(_libc.capset(_CAP_HEADER, _CAP_DATA), 'capset')


def _refuse(*args, **kwargs):
    raise RuntimeError('tracing and profiling are disabled in the sandbox')


def _describe(e, _type=type, _str=str, _BaseException=BaseException):
    """One short line for an exception, robust to a hostile __str__."""
    try:
        msg = _str(e)
    except _BaseException:
        msg = '?'
    line = f'{_type(e).__name__}: {msg}' if msg else _type(e).__name__
    return ' '.join(line.split())[:200]


def _restore_modules():
    """Undo what the program did to RESTORED_MODULES (the dict objects stay: functions refer to them)."""
    keep = [dict(d) for _, _, d, _ in _PRISTINE]  # hold the program's objects: no __del__ runs here
    for name, module, d, pristine in _PRISTINE:  # (no builtin names used: builtins may be empty)
        _MODULES[name] = module  # `import math` in a test finds the real one
        d.clear()
        d.update(pristine)
    return keep


def _harness(program, tests, report, nonce, fork_tests=True, _exec=exec, _compile=compile, _fork=os.fork,
             _waitpid=os.waitpid, _write=os.write, _exit=os._exit, _getpid=os.getpid,
             _getppid=os.getppid, _sleep=time.sleep, _OSError=OSError, _BaseException=BaseException,
             _MemoryError=MemoryError, _isinstance=isinstance, _dict=dict, _str=str,
             _restore=_restore_modules, _describe=_describe, _builtins=_BUILTINS,
             _names=_BUILTIN_NAMES, _wifsignaled=os.WIFSIGNALED, _wtermsig=os.WTERMSIG):
    """Runs in I. Everything it calls is bound here, before user code can patch anything. One function on
    purpose (86 lines): its locals are the only names user code cannot reach or rebind, so a helper it called
    would have to be bound the same way, and the order of what runs before and after the program is the
    security argument, best read in one place."""
    def say(*words):
        # Only I and the T it forked may speak. A process that user code forked (to try several
        # answers to one test, and keep whichever passes) stays silent.
        me = _getpid()
        if me == i_pid or (me == t_pid and _getppid() == i_pid):
            _write(report, nonce + b' ' + ' '.join(words).encode('utf-8', 'replace') + b'\n')

    def kind(e):
        return 'memory' if _isinstance(e, _MemoryError) else 'error'

    i_pid = t_pid = _getpid()
    try:
        code = _compile(program, '<program>', 'exec', dont_inherit=True, optimize=0)
    except _BaseException as e:
        return say('syntax', _describe(e))
    codes = []
    for t in tests:
        try:
            codes.append(_compile(t, '<test>', 'exec', dont_inherit=True, optimize=0))
        except _BaseException as e:
            codes.append('test does not compile: ' + _describe(e))
    no_memory = nonce + b' memory program: MemoryError\n'  # built now: there may be no memory later
    g = {'__name__': '__sandbox__', '__builtins__': builtins}
    try:
        _exec(code, g)
    except _MemoryError:
        if _getpid() == i_pid:
            _write(report, no_memory)
        return
    except _BaseException as e:
        return say(kind(e), 'program: ' + _describe(e))
    keep = _restore()  # once here, not per test: each restore costs ~0.5 ms of copy-on-write faults

    def run_test(i, c):
        ns = _dict(g)
        for name in _names.intersection(g):
            del ns[name]  # the test's `type`, `len`, ... are the real ones
        ns['__builtins__'] = _builtins  # a dict the program never saw: cannot be patched
        try:
            _exec(c, ns)
        except _MemoryError:
            say('fail', _str(i), 'memory', 'MemoryError')
        except _BaseException as e:
            say('fail', _str(i), kind(e), _describe(e))
        else:
            say('pass', _str(i))
            return True
        return False

    def fork():  # waits out a passing shortage of processes or memory on the machine (1.3 s at most)
        for pause in (0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, None):
            try:
                return _fork()
            except _OSError as e:
                if pause is None:
                    return e
                _sleep(pause)

    for i, c in enumerate(codes):
        if _isinstance(c, _str):
            say('fail', _str(i), 'error', c)
            if not fork_tests:
                break
        elif not fork_tests:  # all-or-nothing: one test after another in I, the first failure ends the run
            if not run_test(i, c):
                break
        elif i == len(codes) - 1:  # the last test needs no clean state after it: no fork (saves ~1 ms)
            run_test(i, c)
        elif _isinstance(pid := fork(), _OSError):  # e.g. the program's own processes fill RLIMIT_NPROC
            say('fail', _str(i), 'killed', 'cannot fork the test: ' + _describe(pid))
        elif pid == 0:  # T: this test alone, from the state right after the program ran
            t_pid = _getpid()
            try:
                run_test(i, c)
            finally:
                _exit(0)
        elif _wifsignaled(status := _waitpid(pid, 0)[1]):
            say('fail', _str(i), 'killed', f'killed by signal {_wtermsig(status)}')
    say('done')


def _program_process(job, report, out, cwd):
    """I: lock the process down, then hand over to the harness. Never returns."""
    try:
        _lock_down(job, report, out, cwd)
    except Exception as e:  # the sandbox itself cannot work here: the caller must hear of it
        os.write(report, f'{job["nonce"]} broken {e!r}\n'.encode())
        os._exit(0)
    try:
        _harness(job['program'], job['tests'], report, job['nonce'].encode(), not job['stop_at_failure'])
    finally:
        os._exit(0)


def _lock_down(job, report, out, cwd):
    """I, before any user code: own session, clean fds, no privileges, limits, environment."""
    os.setsid()
    os.dup2(os.open('/dev/null', os.O_RDONLY), 0)
    os.dup2(out, 1)
    os.dup2(out, 2)
    os.closerange(3, report)  # only stdin/stdout/stderr and the report pipe stay open
    os.closerange(report + 1, 1 << 20)
    if _Setup.uid is not None:  # root: a uid of our own (NPROC counts per uid; root files stay root's)
        _become(_Setup.uid)
    elif _Setup.isolated:  # no capabilities over the worker's namespaces: mounts cannot be undone
        _check(_libc.unshare(CLONE_NEWUSER), 'unshare user namespace')
    _libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0)  # setuid binaries cannot give privileges back
    os.chdir(cwd)
    if cwd != os.environ['HOME']:  # fallback mode: a temp dir per run (isolated: /tmp, set at start)
        os.environ.update(HOME=cwd, TMPDIR=cwd)
    limits = [(resource.RLIMIT_CPU, math.ceil(job['timeout']) + 1),
              (resource.RLIMIT_AS, job['memory_mb'] << 20),
              (resource.RLIMIT_FSIZE, MAX_FILE_MB << 20),
              (resource.RLIMIT_NOFILE, MAX_OPEN_FILES),
              (resource.RLIMIT_CORE, 0)]
    if _Setup.uid is not None or (_Setup.isolated and _KERNEL >= (5, 14)):  # NPROC counts this run alone:
        limits.append((resource.RLIMIT_NPROC, MAX_PROCESSES))  # own uid, or own user namespace (5.14+)
    for which, n in limits:
        resource.setrlimit(which, (n, n))
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # oversized writes raise instead of killing
    signal.signal(signal.SIGINT, signal.default_int_handler)
    sys.modules['__main__'] = type(sys)('__main__')  # `import __main__` must not reach the harness


def _kill_descendants():
    """Fallback mode: SIGKILL and reap every child of this subreaper until none is left."""
    me = os.getpid()
    while kids := [int(p) for p in open(f'/proc/{me}/task/{me}/children').read().split()]:
        for pid in kids:
            os.kill(pid, signal.SIGKILL)  # an unreaped child (maybe a zombie) can always be signalled
        for pid in kids:
            os.waitpid(pid, 0)  # its own children are reparented to us and seen next round


def _read_into(fd, buf, cap):
    """Read what is there into buf, keeping at most cap bytes (but draining all). False at EOF."""
    try:
        data = os.read(fd, 1 << 16)
    except BlockingIOError:
        return False
    buf += data[:max(0, cap - len(buf))]
    return bool(data)


def _run_job(job):
    """Run one program in I/T processes and return its verdict (a Result dict). One function on purpose: the
    fork, the lock-down of the child, the wait with its deadline and the draining of the pipes are one
    protocol, and each step's order matters (see the threat model in README, Sandbox)."""
    total, timeout = len(job['tests']), job['timeout']
    job['nonce'] = nonce = os.urandom(16).hex()
    if _Setup.isolated:
        _fresh_tmp()
        cwd = '/tmp'
    else:
        import tempfile
        cwd = tempfile.mkdtemp(dir=_Setup.workdir)
        if _Setup.uid is not None:
            os.chown(cwd, _Setup.uid, _Setup.uid)
    report_r, report_w = os.pipe()
    out_r, out_w = os.pipe()
    if _Setup.isolated:
        _check(_libc.unshare(CLONE_NEWPID), 'unshare pid namespace')  # the next child is its pid 1
    pid = os.fork()
    if pid == 0:
        os.close(report_r)
        os.close(out_r)
        _program_process(job, report_w, out_w, cwd)
    if _Setup.isolated:
        _check(_libc.setns(_Setup.pidns, CLONE_NEWPID), 'setns')  # back: later children are ours
    os.close(report_w)
    os.close(out_w)
    pidfd = os.pidfd_open(pid)
    streams = {report_r: (bytearray(), 1 << 20), out_r: (bytearray(), 4 * OUTPUT_CHARS)}
    deadline, watch = time.monotonic() + timeout, [report_r, out_r, pidfd]
    while pidfd in watch:  # until I exits or time is up, keep the pipes drained
        left = deadline - time.monotonic()
        ready = select.select(watch, [], [], left)[0] if left > 0 else []
        if not ready:
            break
        for fd in ready:
            if fd == pidfd or not _read_into(fd, *streams[fd]):
                watch.remove(fd)
    timed_out = pidfd in watch
    os.kill(pid, signal.SIGKILL)  # not reaped yet, so not reused; everything in I's pid namespace dies too
    code = os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])
    if not _Setup.isolated:  # no pid namespace: I's orphans (setsid'd or not) were reparented to us
        _kill_descendants()
        import shutil
        shutil.rmtree(cwd, ignore_errors=True)
    os.close(pidfd)
    for fd, (buf, cap) in streams.items():
        os.set_blocking(fd, False)  # every writer is dead now: read what is left
        while _read_into(fd, buf, cap):
            pass
        os.close(fd)
    output = streams[out_r][0].decode('utf-8', 'replace')[:OUTPUT_CHARS]
    return _verdict(bytes(streams[report_r][0]), nonce, total, timeout, timed_out, code, output)


def _verdict(report, nonce, total, timeout, timed_out, code, output):
    """The Result dict from the report lines that carry this run's nonce (every other line is ignored)."""
    passes, failures, program_msg, done = set(), {}, None, False
    for line in report.split(b'\n'):
        if not line.startswith(nonce.encode() + b' '):
            continue  # not from the harness
        words = line.decode('utf-8', 'replace').split(' ', 4)[1:]
        if words[0] == 'pass' and len(words) == 2 and words[1].isdigit() and int(words[1]) < total:
            passes.add(int(words[1]))
        elif words[0] == 'fail' and len(words) >= 3 and words[1].isdigit():
            failures.setdefault(int(words[1]), (words[2], ' '.join(words[3:])))
        elif words[0] in ('syntax', 'error', 'memory') and program_msg is None:
            program_msg = (words[0], ' '.join(words[1:]))
        elif words[0] == 'done':
            done = True
        elif words[0] == 'broken':
            return dict(broken=' '.join(words[1:]))
    passed = len(passes)
    if program_msg:
        status, error = program_msg
    elif passed == total and (done or total):
        status, error = 'ok', ''
    elif timed_out:
        status, error = 'timeout', f'time limit of {timeout:g} s exceeded ({passed}/{total} tests passed)'
    elif failures:
        i = min(failures)
        status, error = failures[i][0], f'test {i}: {failures[i][1]}'
    elif code < 0:
        status, error = 'killed', f'program killed by signal {-code}'
    else:
        status, error = 'error', 'program exited before its tests finished'
    return dict(passed=passed, total=total, status=status, error=error[:200], output=output)


def _worker_main(slot, path):
    sys.path[:] = path  # the caller's import path minus the project: no project module imports
    _enter_namespaces(slot == 0)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is for the caller; it closes our stdin
    os.environ.clear()  # what programs will see (the caller started us with nothing else anyway)
    os.environ.update(PATH='/usr/local/bin:/usr/bin:/bin', HOME='/tmp', TMPDIR='/tmp', LANG='C.UTF-8')
    # warm the stdlib modules programs use (nothing that can act outside the process; not random
    # or threading, whose at-fork hooks would slow every fork)
    import bisect, collections, copy, decimal, fractions, functools, hashlib, heapq, itertools  # noqa
    import operator, re, string, typing  # noqa
    import _sitebuiltins  # `python -S` skips site.py, which defines exit() and quit()
    builtins.exit = _sitebuiltins.Quitter('exit', 'Ctrl-D (i.e. EOF)')
    builtins.quit = _sitebuiltins.Quitter('quit', 'Ctrl-D (i.e. EOF)')
    # the protocol moves to private fds; fds 0/1/2 become what the program will see
    proto_in, proto_out = os.fdopen(os.dup(0), 'rb'), os.fdopen(os.dup(1), 'wb')
    os.dup2(os.open('/dev/null', os.O_RDWR), 0)
    os.dup2(0, 1)
    sys.stdin = sys.__stdin__ = io.TextIOWrapper(io.FileIO(0, 'r', closefd=False), encoding='utf-8')
    for fd, name in ((1, 'stdout'), (2, 'stderr')):  # unbuffered: output survives os._exit
        stream = io.TextIOWrapper(io.FileIO(fd, 'w', closefd=False), encoding='utf-8',
                                  errors='backslashreplace', write_through=True)
        setattr(sys, name, stream)
        setattr(sys, f'__{name}__', stream)
    for name in ('settrace', 'setprofile', '_settraceallthreads', '_setprofileallthreads'):
        if hasattr(sys, name):
            setattr(sys, name, _refuse)  # a tracer can jump over an assert: none allowed
    _BUILTINS.update(vars(builtins))
    _BUILTIN_NAMES.update(n for n in vars(builtins) if not n.startswith('__'))
    for name in RESTORED_MODULES:
        module = sys.modules[name]
        _PRISTINE.append((name, module, vars(module), dict(vars(module))))
    gc.freeze()  # the collector never touches the warm heap: forks stay copy-on-write cheap
    for line in proto_in:
        try:
            result = _run_job(json.loads(line))
        except Exception as e:  # a bug or a refusal of the sandbox itself, never of the program
            result = dict(broken=repr(e))
        proto_out.write(json.dumps(result).encode() + b'\n')
        proto_out.flush()

# ----------------------------------------------------------------------------------------------
# caller side: a warm pool of workers, one program in flight per worker


class _Worker:
    def __init__(self, slot):
        import subprocess  # here, not at the top: the lean worker must not import it
        here = os.path.dirname(os.path.abspath(__file__))
        path = [p for p in sys.path if p and os.path.abspath(p) != here]
        env = {'PATH': '/usr/local/bin:/usr/bin:/bin', 'PYTHONHASHSEED': '0', 'LANG': 'C.UTF-8'}
        self.slot, self.answered, self.owner = slot, False, os.getpid()
        self.proc = subprocess.Popen(
            [sys.executable, '-S', os.path.abspath(__file__), '--worker', str(slot), json.dumps(path)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env, cwd='/', start_new_session=True)

    def close(self, kill=False):
        if kill:
            self.proc.kill()
        try:
            self.proc.stdin.close()
        except OSError:
            pass
        self.proc.wait()


_workers = []
_pool_lock = _thread.allocate_lock()


@atexit.register
def shutdown():
    """Stop the warm workers (the next run_batch starts new ones)."""
    while _workers:
        _workers.pop().close()


def run_batch(jobs, workers=None, timeout=DEFAULT_TIMEOUT, memory_mb=DEFAULT_MEMORY_MB, stop_at_failure=False):
    """Run (program, tests) jobs on a warm pool of `workers` processes (default: this process's share of the
    cores); results in job order.
    stop_at_failure: for an all-or-nothing reward, run the tests one after another in the program's process
    and stop at the first failure (no fork per test; `passed` then counts the tests before it, so
    Result.reward is no partial credit). Default: every test from the state the program left, in a fork."""
    jobs = list(jobs)
    for n, job in enumerate(jobs):
        if not (isinstance(job, (tuple, list)) and len(job) == 2 and isinstance(job[0], str)
                and isinstance(job[1], (list, tuple)) and all(isinstance(t, str) for t in job[1])):
            raise ValueError(f'run_batch: job {n} must be (program: str, tests: list[str]), got {job!r:.80}')
    if not (timeout > 0 and memory_mb >= 16):
        raise ValueError(f'run_batch: need timeout > 0 and memory_mb >= 16, got {timeout}, {memory_mb}')
    if not jobs:
        return []
    # default: the machine's cores, shared with the other processes of a torchrun job on this machine
    share = (os.cpu_count() or 1) // int(os.environ.get('LOCAL_WORLD_SIZE', '1'))
    n_workers = max(1, min(workers or share, len(jobs)))
    with _pool_lock:
        try:
            return _run_on_pool(jobs, n_workers, timeout, memory_mb, stop_at_failure)
        except BaseException:  # e.g. Ctrl-C: a worker still busy would answer the next call's jobs
            shutdown()
            raise


def _run_on_pool(jobs, n_workers, timeout, memory_mb, stop_at_failure):
    if _workers and _workers[0].owner != os.getpid():  # we are a fork of the caller (a DataLoader
        _workers.clear()                                # worker, say): its workers are not ours
    while len(_workers) < n_workers:
        _workers.append(_Worker(len(_workers)))
    results, todo, busy = [None] * len(jobs), iter(range(len(jobs))), {}  # busy: fd -> (worker, job, give-up time)

    def give_work(wk):
        i = next(todo, None)
        if i is not None:
            msg = dict(program=jobs[i][0], tests=list(jobs[i][1]), timeout=timeout, memory_mb=memory_mb,
                       stop_at_failure=stop_at_failure)
            wk.proc.stdin.write(json.dumps(msg).encode() + b'\n')
            wk.proc.stdin.flush()
            busy[wk.proc.stdout.fileno()] = (wk, i, time.monotonic() + timeout + 30)

    for wk in _workers[:n_workers]:
        give_work(wk)
    while busy:
        wait = min(t for _, _, t in busy.values()) - time.monotonic()
        for fd in select.select(list(busy), [], [], max(wait, 0))[0]:
            wk, i, _ = busy.pop(fd)
            line = wk.proc.stdout.readline()
            if not line and not wk.answered:
                raise RuntimeError('a sandbox worker died before its first answer (its error is above)')
            if not line:  # the worker died (it never runs user code, so this is rare)
                results[i] = Result(0, len(jobs[i][1]), 'killed', 'sandbox worker died')
                wk = _respawn(wk)
            else:
                result = json.loads(line)
                if 'broken' in result:
                    raise RuntimeError(f'the sandbox cannot run programs on this machine: {result["broken"]}')
                results[i] = Result(**result)
                wk.answered = True
            give_work(wk)
        for fd, (wk, i, give_up) in list(busy.items()):
            if time.monotonic() > give_up:  # the worker hung: same
                del busy[fd]
                results[i] = Result(0, len(jobs[i][1]), 'killed', 'sandbox worker hung')
                give_work(_respawn(wk))
    return results


def _respawn(wk):
    wk.close(kill=True)
    _workers[_workers.index(wk)] = new = _Worker(wk.slot)
    return new


def run(program: str, tests: list[str], timeout: float = DEFAULT_TIMEOUT,
        memory_mb: int = DEFAULT_MEMORY_MB, stop_at_failure: bool = False) -> Result:
    """Run one program and its tests (each test is source run after the program, MBPP style)."""
    return run_batch([(program, tests)], 1, timeout, memory_mb, stop_at_failure)[0]


_PROBES = {  # isolation(): one test each, run inside the sandbox; no traffic leaves the machine
    'network_blocked': "import socket\nassert [n for _, n in socket.if_nameindex()] == ['lo']",
    'own_pid_namespace': "import os\nassert 1 in (os.getpid(), os.getppid())",
    'private_tmp': "import os\nassert os.getcwd() == '/tmp' and os.listdir('/tmp') == []",
    'readonly_root': "import os\nassert os.statvfs('/').f_flag & os.ST_RDONLY",
    'not_root': "import os\nassert os.geteuid() != 0",
}


def isolation() -> dict:
    """What the sandbox achieves on this machine beyond rlimits: {property: bool}."""
    results = run_batch([('', [test]) for test in _PROBES.values()])
    return {name: r.passed == 1 for name, r in zip(_PROBES, results)}


if __name__ == '__main__' and sys.argv[1:2] == ['--worker']:
    _worker_main(int(sys.argv[2]), json.loads(sys.argv[3]))
