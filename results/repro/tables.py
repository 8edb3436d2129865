"""
README's tables of the RL comparison, from the run records in a folder (each run's own <output>.json).

    python results/repro/tables.py                       # the headline: results/repro/runs
    python results/repro/tables.py results/repro/runs/hard

Prints markdown: pass@1 per method (mean ± standard error over seeds) at each evaluated step, the
differences paired by seed, the groups that vary by source (fresh problems, prefix states), and the
final greedy pass@1 by the number of steps in a task.
"""
import glob
import json
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(__file__), '..', '..'))
from tasks import mean_se  # noqa: E402
from train import effective_by_source  # noqa: E402

ORDER = ('grpo', 'rest_grpo', 'rest_dpo', 'rest_grpo_filter')
PAIRS = (('rest_grpo', 'grpo'), ('grpo', 'rest_dpo'), ('rest_grpo_filter', 'grpo'), ('rest_grpo_filter', 'rest_grpo'))


def load_runs(folder):
    """{method: {seed: history}} of the finished runs in folder, all of one length (the most common one)."""
    runs, iters = {}, {}
    for path in sorted(glob.glob(os.path.join(folder, 'rl_*_seed*.json'))):
        rec = json.load(open(path))
        if rec.get('done'):
            method, seed = os.path.basename(path)[3:-5].rsplit('_seed', 1)
            runs.setdefault(method, {})[int(seed)] = rec['result']['history']
            iters[rec['result']['iters']] = iters.get(rec['result']['iters'], 0) + 1
    n = max(iters, key=iters.get)
    runs = {m: {s: h for s, h in per.items() if h[-1]['iter'] == n} for m, per in runs.items()}
    return {m: runs[m] for m in ORDER if runs.get(m)}


def at(history, it, key):
    return next(r[key] for r in history if r['iter'] == it and key in r)


def cell(xs, sign=''):
    m, se = mean_se(xs)
    return f"{m:{sign}.3f} ± {se:.3f}" if len(xs) > 1 else f"{m:{sign}.3f}"


def pass_table(runs):
    h0 = next(iter(next(iter(runs.values())).values()))
    points = [r['iter'] for r in h0 if 'test_pass1' in r]
    steps = ' / '.join('start' if p == 0 else str(p) for p in points)
    lines = [f"| method | seeds | test greedy: {steps} steps | test sampled at 0.7: {steps} | dev greedy: end | "
             "sampled tokens | wall (min) |", '|---' * 7 + '|']
    for m, per in runs.items():
        hs = list(per.values())
        greedy, sampled = (' / '.join([cell([at(h, p, key) for h in hs]) for p in points[:-1]]
                                      + [f"**{cell([h[-1][key] for h in hs])}**"])
                           for key in ('test_pass1', 'test_pass1_sampled'))
        dev = cell([at(h, points[-1], 'eval_pass1') for h in hs])
        tokens = sum(h[-1]['tokens_sampled'] for h in hs) / len(hs) / 1e6
        wall = sum(h[-1]['wall_total'] for h in hs) / len(hs) / 60
        lines.append(f"| {m} | {len(hs)} ({', '.join(map(str, sorted(per)))}) | {greedy} | {sampled} | {dev} | "
                     f"{tokens:.2f}M | {wall:.0f} |")
    return '\n'.join(lines)


def paired(runs):
    lines = ['Differences at the end, paired by seed (mean ± standard error over the seeds both methods ran):']
    for a, b in PAIRS:
        if a in runs and b in runs:
            seeds = sorted(set(runs[a]) & set(runs[b]))
            diff = {k: [runs[a][s][-1][k] - runs[b][s][-1][k] for s in seeds]
                    for k in ('test_pass1', 'test_pass1_sampled')}
            named = f"seed{'s' * (len(seeds) > 1)} {', '.join(map(str, seeds))}"
            lines.append(f"- {a} - {b} ({named}): greedy {cell(diff['test_pass1'], '+')}, "
                         f"sampled {cell(diff['test_pass1_sampled'], '+')}"
                         + ('; per seed, greedy: ' + ', '.join(f'{x:+.3f}' for x in diff['test_pass1'])
                            if len(seeds) > 1 else ''))
    return '\n'.join(lines)


def groups_table(runs):
    lines = ['| method | fresh problems: groups that vary | prefix states: groups that vary | prefix share of '
             'trained groups | all trained groups that vary |', '|---' * 5 + '|']
    show = lambda v: '-' if v is None else f'{v:.2f}'  # noqa: E731
    for m, per in runs.items():
        if m != 'rest_dpo':  # DPO trains on pairs, not groups
            e = effective_by_source(per)
            every = [r['effective_group_frac'] for h in per.values() for r in h[1:]]
            lines.append(f"| {m} | {show(e['fresh'])} | {show(e['prefix'])} | {show(e['prefix_share'])} | "
                         f"{sum(every) / len(every):.2f} |")
    return '\n'.join(lines)


def difficulty_table(runs):
    ks = [str(k) for k in range(1, 9)]
    lines = ['| method | ' + ' | '.join(f'{k} steps' for k in ks) + ' |', '|---' * 9 + '|']
    start = next(iter(next(iter(runs.values())).values()))[0]['test_by_difficulty']
    lines.append('| start (SFT) | ' + ' | '.join(f'{start[k]:.2f}' for k in ks) + ' |')
    for m, per in runs.items():
        means = [mean_se([h[-1]['test_by_difficulty'][k] for h in per.values()])[0] for k in ks]
        lines.append(f'| {m} | ' + ' | '.join(f'{v:.2f}' for v in means) + ' |')
    return '\n'.join(lines)


if __name__ == '__main__':
    runs = load_runs(sys.argv[1] if len(sys.argv) > 1 else os.path.join(os.path.dirname(__file__), 'runs'))
    print('\n\n'.join([pass_table(runs), paired(runs), groups_table(runs), difficulty_table(runs)]))
