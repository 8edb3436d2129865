"""
How the policies fail, by difficulty: each policy's greedy program for every test task of the given
difficulties, sorted into passed, or failed with fewer lines than the reference solution, as many, or more
(and the share that does not even run). Reads test tasks only to describe finished runs; tunes nothing.

    python results/repro/failures.py out-repro-hard/sft.pt out-repro-hard/rl_grpo_seed1337.pt \
        out-repro-hard/rl_rest_grpo_seed1337.pt --steps 1,2,3
"""
import argparse
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(__file__), '..', '..'))
import sandbox  # noqa: E402
from tasks import get_tokenizer, load_tasks, sample_programs  # noqa: E402
from configurator import load_policy  # noqa: E402


def lines(code):
    return len([s for s in code.strip('\n').split('\n') if s.strip()])


def failures(path, task_list, enc):
    policy = load_policy(path, 'cpu')[0].eval()
    texts, _ = sample_programs(policy, enc, task_list, 'cpu', 160, 256, temperature=0.0, samples=1)
    results = sandbox.run_batch([(t['prompt'] + c, t['tests']) for t, c in zip(task_list, texts)])
    out = dict(passed=0, fewer_lines=0, same_lines=0, more_lines=0, does_not_run=0)
    for t, c, r in zip(task_list, texts, results):
        if r.solved:
            out['passed'] += 1
            continue
        gap = lines(c) - lines(t['canonical_solution'])
        out['fewer_lines' if gap < 0 else 'same_lines' if gap == 0 else 'more_lines'] += 1
        out['does_not_run'] += r.status in ('syntax', 'timeout', 'memory', 'killed') or 'Error' in r.error \
            and 'AssertionError' not in r.error
    return {k: v / len(task_list) for k, v in out.items()}


if __name__ == '__main__':
    ap = argparse.ArgumentParser()
    ap.add_argument('checkpoints', nargs='+')
    ap.add_argument('--steps', default='1,2,3', help='difficulties (steps) of the test tasks')
    args = ap.parse_args()
    enc = get_tokenizer()
    steps = {int(s) for s in args.steps.split(',')}
    task_list = [t for t in load_tasks('data/test.jsonl') if t['difficulty'] in steps]
    print(f"{len(task_list)} test tasks of {args.steps} steps, greedy; shares of the tasks")
    print('| policy | passed | failed, fewer lines | failed, as many | failed, more lines | failed, does not run |')
    print('|---|---|---|---|---|---|')
    for path in args.checkpoints:
        f = failures(path, task_list, enc)
        print(f"| {path} | {f['passed']:.3f} | {f['fewer_lines']:.3f} | {f['same_lines']:.3f} | {f['more_lines']:.3f} "
              f"| {f['does_not_run']:.3f} |")
