"""Sandbox behaviour: verdicts, partial credit, containment, and every reward hack we know of."""
import itertools
import math
import os
import socket
import subprocess
import sys
import threading
import time
from fractions import Fraction

import pytest

import sandbox
from sandbox import Result, pass_at_k, run, run_batch

SORT = 'def f(xs):\n    return sorted(xs)\n'
SORT_TESTS = ['assert f([3, 1, 2]) == [1, 2, 3]', 'assert f([]) == []', 'assert f([2, 2, 1]) == [1, 2, 2]']
WRONG_TESTS = ['assert f([1]) == [2]', 'assert f([]) == [0]']  # no correct f passes these


@pytest.fixture(scope='module')
def iso():
    return sandbox.isolation()


def leftovers(marker):
    """Host processes whose name is `marker` (a sandboxed process names itself so we can find it)."""
    found = []
    for pid in filter(str.isdigit, os.listdir('/proc')):
        try:
            with open(f'/proc/{pid}/comm') as f:
                if f.read().strip() == marker:
                    found.append(int(pid))
        except OSError:
            pass
    return found


def test_passing_program_passes():
    r = run(SORT, SORT_TESTS)
    assert (r.passed, r.total, r.status, r.error, r.reward) == (3, 3, 'ok', '', 1.0)


def test_partial_credit_counts_each_test():
    r = run('def f(xs):\n    return list(xs)\n', SORT_TESTS)  # right on [] only
    assert (r.passed, r.total, r.status) == (1, 3, 'error')
    assert r.reward == pytest.approx(1 / 3) and r.error.startswith('test 0: AssertionError')


def test_each_test_starts_from_the_programs_state():
    # test 0 mutates a global; test 1 must not see it (each test runs alone after the program)
    r = run('seen = []\ndef f(x):\n    seen.append(x)\n    return len(seen)\n', ['assert f(7) == 1', 'assert f(8) == 1'])
    assert r.passed == 2


def test_stop_at_failure_runs_tests_in_order_and_stops_at_the_first_failure():
    # binary reward: one process runs the tests in order (state carries over), the first failure ends the run
    counter = 'seen = []\ndef f(x):\n    seen.append(x)\n    return len(seen)\n'
    r = run(counter, ['assert f(7) == 1', 'assert f(8) == 2', 'assert f(9) == 1', 'assert f(0) == 4'],
            stop_at_failure=True)
    assert (r.passed, r.total, r.status) == (2, 4, 'error') and r.error.startswith('test 2: AssertionError')
    r = run(SORT, SORT_TESTS, stop_at_failure=True)
    assert (r.passed, r.total, r.status, r.reward) == (3, 3, 'ok', 1.0)
    r = run(SORT, ['assert f(', 'assert f([]) == []'], stop_at_failure=True)  # a test that does not compile
    assert (r.passed, r.status) == (0, 'error') and 'does not compile' in r.error


def test_no_tests_reward_zero():
    assert run(SORT, []) == Result(0, 0, 'ok', '')
    assert Result(0, 0, 'ok').reward == 0.0


def test_syntax_error():
    r = run('def f(xs):\n    return sorted(xs\n', SORT_TESTS)
    assert (r.reward, r.status) == (0.0, 'syntax') and 'SyntaxError' in r.error and '\n' not in r.error


def test_program_raising_is_error():
    r = run('raise ValueError("boom")\n' + SORT, SORT_TESTS)
    assert (r.reward, r.status, r.error) == (0.0, 'error', 'program: ValueError: boom')


def test_timeout():
    t = time.monotonic()
    r = run('while True:\n    pass\n', SORT_TESTS, timeout=0.5)
    assert (r.reward, r.status) == (0.0, 'timeout') and time.monotonic() - t < 3


def test_timeout_keeps_tests_passed_before_it():
    r = run(SORT + 'def g():\n    while True:\n        pass\n', SORT_TESTS[:2] + ['g()'], timeout=0.5)
    assert (r.passed, r.status) == (2, 'timeout')


@pytest.mark.parametrize('bomb', ["x = 'a' * (1 << 40)", 'xs = []\nwhile True:\n    xs.append([0] * 100000)'])
def test_memory_bomb_is_memory_and_machine_stays_responsive(bomb):
    r = run(bomb + '\n' + SORT, SORT_TESTS, memory_mb=256)
    assert (r.reward, r.status) == (0.0, 'memory')
    t = time.monotonic()
    assert run(SORT, SORT_TESTS).status == 'ok' and time.monotonic() - t < 2


def test_memory_bomb_inside_a_test():
    r = run(SORT + 'def g():\n    return [0] * (1 << 40)\n', SORT_TESTS + ['g()'], memory_mb=256)
    assert (r.passed, r.status) == (3, 'memory')


# Every hack we could think of, each on a program that deserves 0, with tests the hack would pass if
# the sandbox let it (a test whose first clause fails anyway would prove nothing).
WRONG = 'def f(xs):\n    return "garbage"\n'
PLAIN = ['assert f([1]) == [2]', 'assert f([]) == [0]']
TYPED = ['assert type(f([1])) is list and len(f([1])) == 1 and isinstance(f([1]), list)']
FAKE_LINES = ('import os\ndef f(xs):\n    for fd in range(256):\n'
              '        for line in (b"pass 0\\n", b"pass 1\\n", b"done\\n"):\n'
              '            try:\n                os.write(fd, line)\n'
              '            except OSError:\n                pass\n    return xs\n')
TRACER = ('import sys\ndef skip(frame, event, arg):  # jump over every line of the test\n'
          '    if frame.f_code.co_filename == "<test>" and event == "line":\n        try:\n'
          '            frame.f_lineno += 1\n        except ValueError:\n            pass\n    return skip\n'
          'try:\n    sys.settrace(skip)\nexcept RuntimeError:\n    pass\n' + WRONG)
HOSTILE = {
    'exit(0) at top level': ('exit(0)\n' + WRONG, PLAIN),
    'exit(0) in the tested function': ('def f(xs):\n    exit(0)\n', PLAIN),
    'os._exit(0) at top level': ('import os\nos._exit(0)\n', PLAIN),
    'os._exit(0) in the tested function': ('import os\ndef f(xs):\n    os._exit(0)\n', PLAIN),
    'raise SystemExit(0)': ('def f(xs):\n    raise SystemExit(0)\n', PLAIN),
    'raise KeyboardInterrupt': ('def f(xs):\n    raise KeyboardInterrupt\n', PLAIN),
    'SIGINT to itself': ('import os, signal\ndef f(xs):\n    os.kill(os.getpid(), signal.SIGINT)\n', PLAIN),
    'print passed and fake result lines': (
        'import json\ndef f(xs):\n    print("passed"); print("ok"); print("pass 0"); print("pass 1")\n'
        '    print(json.dumps(dict(passed=2, total=2, status="ok", error="")))\n    return xs\n', PLAIN),
    'fake lines on every fd': (FAKE_LINES, PLAIN),
    'close every fd then exit 0': ('import os\ndef f(xs):\n    os.closerange(0, 1 << 16)\n    os._exit(0)\n', PLAIN),
    'patch builtins module': ('import builtins\nbuiltins.isinstance = lambda *a: True\nbuiltins.len = lambda x: 1\n'
                              'builtins.type = lambda x: list\n' + WRONG, TYPED),
    'shadow builtins as globals': ('type = lambda x: list\nlen = lambda x: 1\nisinstance = lambda *a: True\n'
                                   + WRONG, TYPED),
    'patch builtins while the test runs': (
        'import builtins\ndef f(xs):\n    builtins.len = lambda x: 1\n    builtins.isinstance = lambda *a: True\n'
        '    return "garbage"\n', ['assert f([1]) and len(f([1])) == 1 and isinstance(f([1]), list)']),
    'patch AssertionError': ('import builtins\nbuiltins.AssertionError = type("Nope", (Exception,), {})\n'
                             'AssertionError = None\n' + WRONG, PLAIN),
    'patch math.isclose': ('import math\nmath.isclose = lambda *a, **k: True\ndef f(x):\n    return 0.0\n',
                           ['import math\nassert math.isclose(f(1), 2.0)']),
    'replace math in sys.modules': ('import sys, types\nfake = types.ModuleType("math")\n'
                                    'fake.isclose = lambda *a, **k: True\n'
                                    'sys.modules["math"] = fake\ndef f(x):\n    return 0.0\n',
                                    ['import math\nassert math.isclose(f(1), 2.0)']),
    'settrace to jump over asserts': (TRACER, ['assert f([1]) == [2]\npass']),
    'kill the parent': ('import os\ndef f(xs):\n    os.kill(os.getppid(), 9)\n    return xs\n', PLAIN),
    'kill the parent at top level': ('import os\nos.kill(os.getppid(), 9)\nos.kill(0, 9)\n' + WRONG, PLAIN),
    'kill every process it can': ('import os\ndef f(xs):\n    os.kill(-1, 9)\n    return xs\n', PLAIN),
    'hanging thread': ('import threading, time\nthreading.Thread(target=time.sleep, args=(60,)).start()\n' + WRONG, PLAIN),
    'ignore SIGTERM and spin': ('import signal\nsignal.signal(signal.SIGTERM, signal.SIG_IGN)\n'
                                'def f(xs):\n    while True:\n        pass\n', PLAIN),
    'exception with a hostile __str__': (
        'class E(Exception):\n    def __str__(self):\n        raise SystemExit(0)\ndef f(xs):\n    raise E()\n', PLAIN),
    # values that compare equal to anything: only a type check catches them (README: write typed tests)
    'always-equal list subclass': ('class Eq(list):\n    def __eq__(self, other):\n        return True\n'
                                   '    __hash__ = None\ndef f(xs):\n    return Eq()\n',
                                   ['assert f([1]) == [2] and type(f([1])) is list']),
    'isinstance spoof via __class__': ('class Fake:\n    __class__ = list\n    def __eq__(self, o):\n        return True\n'
                                       'def f(xs):\n    return Fake()\n',
                                       ['assert f([1]) == [2] and type(f([1])) is list']),
    'fork and let the child report': ('import os\ndef f(xs):\n    if os.fork() == 0:\n        return [2] if xs else [0]\n'
                                      '    os.wait()\n    return xs\n', PLAIN),
}


@pytest.mark.parametrize('stop_at_failure', [False, True], ids=['fork per test', 'stop at failure'])
@pytest.mark.parametrize('name', HOSTILE)
def test_hostile_program_earns_nothing(name, stop_at_failure):
    program, tests = HOSTILE[name]
    r = run(program, tests, timeout=1.0, stop_at_failure=stop_at_failure)
    assert r.passed == 0 and r.reward == 0.0, r
    assert r.status in ('error', 'timeout', 'killed') and r.error and '\n' not in r.error, r
    assert run(SORT, SORT_TESTS).status == 'ok'  # and the sandbox still works


def test_forked_child_does_not_double_count():
    r = run('import os\nos.fork()\n' + SORT, SORT_TESTS)  # two processes run the tests: still 3/3
    assert (r.passed, r.total, r.reward) == (3, 3, 1.0)


def test_hanging_thread_does_not_block_a_good_program():
    t = time.monotonic()
    r = run('import threading, time\nthreading.Thread(target=time.sleep, args=(60,)).start()\n' + SORT, SORT_TESTS)
    assert (r.reward, r.status) == (1.0, 'ok') and time.monotonic() - t < 2


def test_closing_fds_in_a_good_program_cannot_raise_reward():
    r = run('import os\nos.closerange(0, 1 << 16)\n' + SORT, SORT_TESTS)
    assert r.reward <= 1.0 and r.status in ('ok', 'error')


def run_watching(program, marker, **kw):
    """run() while polling for processes named `marker`: (result, whether one was ever seen)."""
    result, seen = [], False
    thread = threading.Thread(target=lambda: result.append(run(program, SORT_TESTS, **kw)))
    thread.start()
    while thread.is_alive():
        seen = seen or bool(leftovers(marker))
        time.sleep(0.01)
    thread.join()
    return result[0], seen


NAME_ME = 'import ctypes\nctypes.CDLL(None).prctl(15, b"{}", 0, 0, 0)  # PR_SET_NAME: findable from outside\n'


@pytest.mark.parametrize('how', ['timeout', 'normal exit'])
def test_everything_spawned_is_killed(how):
    marker = f'rz{os.getpid() % 10000}{how[0]}'  # comm names are at most 15 chars
    program = (
        'import os, time\n'
        'if os.fork() == 0:\n'
        '    os.setsid()\n'
        '    if os.fork() == 0:  # a setsid, double-forked grandchild that outlives its parents\n'
        + ''.join('        ' + line + '\n' for line in NAME_ME.format(marker).splitlines()) +
        '        time.sleep(1.5)\n'
        '        open("/tmp/late", "w").write("x")\n'
        '    os._exit(0)\n'
        'time.sleep(0.3)\n' + ('time.sleep(30)\n' if how == 'timeout' else '') + SORT)
    r, seen = run_watching(program, marker, timeout=0.8)
    assert seen and r.status == ('timeout' if how == 'timeout' else 'ok')
    assert leftovers(marker) == []
    time.sleep(0.1)
    assert leftovers(marker) == []


def test_fork_bomb_is_contained():
    marker = f'fb{os.getpid() % 10000}'
    program = NAME_ME.format(marker) + 'import os\nwhile True:\n    try:\n        os.fork()\n    except OSError:\n'
    program += '        pass\n'
    t = time.monotonic()
    r, seen = run_watching(program, marker, timeout=1.0)
    assert seen and r.reward == 0.0 and r.status == 'timeout' and time.monotonic() - t < 5
    assert leftovers(marker) == []
    assert run(SORT, SORT_TESTS).status == 'ok'


HOLD_PROCESSES = ('import os, time\nfor _ in range(100):  # as many sleeping children as RLIMIT_NPROC allows\n'
                  '    try:\n        if os.fork() == 0:\n            time.sleep(30)\n    except OSError:\n        break\n')


def test_program_holding_all_its_processes_fails_only_the_tests_it_needs_a_fork_for():
    r = run(HOLD_PROCESSES + SORT, SORT_TESTS[:2], timeout=3.0)  # test 0 runs in a fork, the last one does not
    assert (r.passed, r.status) == (1, 'killed') and r.error.startswith('test 0: cannot fork the test'), r


def test_another_callers_pool_cannot_fail_our_good_programs():
    # Regression: every caller's pool ran programs as the same uids, and RLIMIT_NPROC counts per uid,
    # so another process's program holding its processes made our test forks fail (reward 0).
    marker = f'hp{os.getpid() % 10000}'
    hog = NAME_ME.format(marker) + HOLD_PROCESSES + 'time.sleep(30)\n'
    other = subprocess.Popen([sys.executable, '-c', f'import sandbox\nsandbox.run_batch([({hog!r}, [])] * 2, timeout=3)'],
                             cwd=os.path.dirname(os.path.abspath(sandbox.__file__)))
    try:
        t = time.monotonic()
        while len(leftovers(marker)) < 2 * 60 and time.monotonic() - t < 5:  # both of its workers hold ~64
            time.sleep(0.02)
        assert len(leftovers(marker)) >= 2 * 60
        results = run_batch([(SORT, SORT_TESTS)] * 60, workers=2)
        assert len(leftovers(marker)) >= 2 * 60  # still holding them when we finished
        assert [r.status for r in results] == ['ok'] * 60
    finally:
        other.wait()


def test_files_do_not_survive_a_run():
    write = 'import os\nopen("left.txt", "w").write("x")\nopen(os.environ["TMPDIR"] + "/t.txt", "w").write("x")\n'
    assert run(write + SORT, SORT_TESTS).status == 'ok'
    look = 'import os\ndef f():\n    return os.listdir(".") + os.listdir(os.environ["TMPDIR"])\n'
    assert run_batch([(look, ['assert f() == []'])] * 4)[0].reward == 1.0


def test_a_changed_tmp_is_not_handed_on(iso):
    # A worker keeps /tmp between programs when the last one left it as mounted; anything else a
    # program can change there (mode, an xattr, a file written and deleted while still open by a
    # child, an empty directory) must send the next program to a fresh tmpfs.
    if not iso['private_tmp']:
        pytest.skip('no private tmpfs here: a temp dir per run instead')
    changes = ['os.chmod("/tmp", 0o777)', 'os.setxattr("/tmp", "user.k", b"v")', 'os.mkdir("/tmp/d")',
               'open("/tmp/.h", "w").close()']
    look = ('import os\ndef f():\n    st = os.stat("/tmp")\n'
            '    return (oct(st.st_mode & 0o777), os.listdir("/tmp"), os.listxattr("/tmp"))\n')
    jobs = [(look, ['assert f() == ("0o700", [], [])'])]
    for change in changes:
        jobs += [(f'import os\ntry:\n    {change}\nexcept OSError:\n    pass\n', []), jobs[0]]
    results = run_batch(jobs, workers=1)  # one worker: each look runs right after a change
    assert [r.reward for r in results[::2]] == [1.0] * (len(changes) + 1), [r.error for r in results[::2]]


def test_file_written_outside_tmp_does_not_appear(iso):
    if not iso['readonly_root']:
        pytest.skip('no mount namespace here: absolute paths the user can write stay writable (README)')
    target = os.path.abspath(f'.sandbox-probe-{os.getpid()}')
    os.mkdir(target)
    os.chmod(target, 0o777)  # so only the sandbox, not file permissions, can stop the write
    try:
        program = f'def f():\n    open({target!r} + "/x", "w").write("x")\n'
        r = run(program, ['f()'])
        assert r.reward == 0.0 and os.listdir(target) == []
    finally:
        os.rmdir(target)


def test_environment_secret_is_invisible():
    sandbox.shutdown()  # the next workers start after the secret is set
    os.environ['RESTRL_TEST_SECRET'] = secret = 'hunter2-' + os.urandom(4).hex()
    try:
        program = (
            'import os\ndef found():\n    seen = str(dict(os.environ))\n'
            '    for pid in os.listdir("/proc"):\n        try:\n'
            '            seen += open(f"/proc/{pid}/environ", "rb").read().decode("latin-1")\n'
            '        except OSError:\n            pass\n'
            f'    return {secret!r} in seen\n')
        assert run(program, ['assert not found()', 'assert "PATH" in os.environ']).reward == 1.0
    finally:
        del os.environ['RESTRL_TEST_SECRET']


def test_stdin_is_closed():
    assert run('import sys\ndef f():\n    return sys.stdin.read()\n', ['assert f() == ""']).reward == 1.0


def test_output_is_captured_and_capped():
    r = run('print("x" * 10_000_000)\nprint("y" * 10_000_000)\n' + SORT, SORT_TESTS)
    assert r.status == 'ok' and len(r.output) == sandbox.OUTPUT_CHARS and set(r.output) == {'x'}


def test_network_is_blocked(iso):
    if not iso['network_blocked']:
        pytest.skip('no network namespace here: the network stays reachable (README)')
    with socket.socket() as server:
        server.bind(('127.0.0.1', 0))
        server.listen()
        server.setblocking(False)
        program = (f'import socket\ndef connects():\n    try:\n        socket.create_connection(("127.0.0.1", '
                   f'{server.getsockname()[1]}), timeout=1).close()\n        return True\n    except OSError:\n'
                   '        return False\n')
        assert run(program, ['assert not connects()']).reward == 1.0
        with pytest.raises(BlockingIOError):
            server.accept()


def test_run_batch_keeps_job_order():
    jobs = [(f'import time\ntime.sleep({(8 - i) * 0.02})\ndef f():\n    return {i}\n',
             [f'assert f() == {i}', 'assert f() % 2 == 0'])
            for i in range(8)]
    results = run_batch(jobs, workers=2)
    assert [r.passed for r in results] == [2 if i % 2 == 0 else 1 for i in range(8)]


def test_bad_job_is_a_clear_error():
    with pytest.raises(ValueError, match='job 1'):
        run_batch([(SORT, SORT_TESTS), (SORT, 'assert f([]) == []')])


def test_pass_at_k_matches_brute_force():
    for n in range(1, 8):
        for c in range(n + 1):
            for k in range(1, n + 1):
                samples = [True] * c + [False] * (n - c)
                subsets = list(itertools.combinations(samples, k))
                expected = sum(any(s) for s in subsets) / len(subsets)
                assert pass_at_k(n, c, k) == pytest.approx(expected, abs=1e-12), (n, c, k)


def test_pass_at_k_is_stable_for_large_n():
    for n, c, k in [(1000, 1, 1), (1000, 500, 100), (1000, 3, 10), (1000, 990, 5)]:
        exact = 1 - Fraction(math.comb(n - c, k), math.comb(n, k))
        assert pass_at_k(n, c, k) == pytest.approx(float(exact), rel=1e-9)


def test_forking_cannot_try_several_answers():
    # each branch of the fork passes one test; only the process the harness made may report
    program = 'import os\nANSWER = [2] if os.fork() == 0 else [0]\ndef f(xs):\n    return ANSWER\n'
    r = run(program, PLAIN)
    assert r.passed == 1 and r.reward == 0.5  # the real process (fork() != 0) earns test 1 only
