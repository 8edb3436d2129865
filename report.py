"""
report.md (and PNG plots, when matplotlib is installed) from a run's results.json: the paper's two claims
as tables with the mean and standard error over seeds.

    python report.py out-repro      # rewrite out-repro/report.md from out-repro/results.json

train.py calls write_report at the end of every run, so a finished run always has its report.
"""
import json
import math
import os
import sys

DECODE_ORDER = ('greedy', 'bon_orm', 'prm', 'prm_last', 'orm_mcts', 'vm_mcts')


def mean_se(xs):
    """(mean, standard error of the mean); SE = sample std / sqrt(n), 0 for a single value."""
    n = len(xs)
    m = sum(xs) / n
    if n < 2:
        return m, 0.0
    return m, math.sqrt(sum((x - m) ** 2 for x in xs) / (n - 1) / n)


def write_atomic(path, text):
    """Write to a temporary file of this process, then rename: a reader never sees half a file, and RL runs
    side by side in one out_dir never write into each other's temporary file."""
    tmp = f'{path}.{os.getpid()}.tmp'
    with open(tmp, 'w') as f:
        f.write(text)
    os.replace(tmp, path)


def decode_budgets(decode):
    """The budgets of results.json's decode entries, ascending; greedy's budget 0 is not one."""
    return sorted({int(b) for per in decode.values() for b in per if int(b)})


def fmt(m, se):
    return f"{m:.3f} ± {se:.3f}" if se else f"{m:.3f}"


def rl_table(train):
    lines = ['| method | seeds | dev greedy pass@1 (start -> last evaluation) | test greedy pass@1 (end) | '
             'effective groups (mean over iterations) | iterations (tokens) run |', '|---|---|---|---|---|---|']
    for m, r in train.items():
        runs = list(r['seeds'].values())
        start, end = (mean_se([run['eval_pass1_curve'][k][2] for run in runs]) for k in (0, -1))
        eff = mean_se([sum(run['effective_group_frac']) / max(1, len(run['effective_group_frac'])) for run in runs])
        iters, toks = (mean_se([run[k] for run in runs])[0] for k in ('iterations', 'tokens_sampled'))
        lines.append(f"| {m} | {len(runs)} | {fmt(*start)} -> {fmt(*end)} | **{fmt(r['test_pass1'], r['test_pass1_se'])}** | "
                     f"{fmt(*eff)} | {iters:.0f} ({toks / 1e3:.0f}K) |")
    return '\n'.join(lines)


def decode_table(decode):
    budgets = decode_budgets(decode)
    lines = ['| method | ' + ' | '.join(f'budget {b}' for b in budgets) + ' |', '|---' * (len(budgets) + 1) + '|']
    for m in DECODE_ORDER:
        if m in decode:
            cells = [decode[m].get(str(b)) or decode[m]['0'] for b in budgets]  # greedy has one entry, budget 0
            lines.append(f'| {m} | ' + ' | '.join(f"{fmt(c['pass1'], c.get('pass1_se', 0))} ({c['tokens']:.0f})"
                                                  for c in cells) + ' |')
    return '\n'.join(lines)


def difficulty_table(decode, budget):
    rows = {m: decode[m].get(str(budget)) or decode[m].get('0') for m in DECODE_ORDER if m in decode}
    diffs = sorted({d for r in rows.values() for d in r['by_difficulty']}, key=int)
    lines = ['| method | ' + ' | '.join(f'{d} steps' for d in diffs) + ' |', '|---' * (len(diffs) + 1) + '|']
    for m, r in rows.items():
        lines.append(f'| {m} | ' + ' | '.join(f"{r['by_difficulty'][d]:.2f}" for d in diffs) + ' |')
    return '\n'.join(lines)


def plot(results, out_dir):
    """PNG plots; returns their file names, or [] without matplotlib."""
    try:
        import matplotlib
        matplotlib.use('Agg')
        import matplotlib.pyplot as plt
    except ImportError:
        return []
    files = []
    if results.get('train'):
        fig, (ax1, ax2, ax3) = plt.subplots(1, 3, figsize=(15, 4))
        for i, (m, r) in enumerate(results['train'].items()):
            at = {}  # iteration -> the seeds' (tokens, pass@1) evaluated there
            for run in r['seeds'].values():
                for it, tok, p in run['eval_pass1_curve']:
                    at.setdefault(it, []).append((tok, p))
            it = sorted(at)
            tok = [sum(t for t, _ in at[k]) / len(at[k]) / 1e6 for k in it]
            mean, se = zip(*[mean_se([p for _, p in at[k]]) for k in it])  # SE 0 where one seed has a point
            ax1.errorbar(it, mean, yerr=se, marker='o', ms=3, capsize=3, color=f'C{i}', label=m)
            ax2.errorbar(tok, mean, yerr=se, marker='o', ms=3, capsize=3, color=f'C{i}', label=m)
            eff, w = r['effective_group_frac'], 5  # mean over seeds, then a running mean over w iterations
            smooth = [sum(eff[max(0, k - w + 1):k + 1]) / len(eff[max(0, k - w + 1):k + 1]) for k in range(len(eff))]
            ax3.plot(range(1, len(eff) + 1), smooth, color=f'C{i}', label=m)
        ax1.set(xlabel='RL iteration', ylabel='greedy pass@1 (dev)', title='pass@1 against iteration (mean ± SE)')
        ax2.set(xlabel='completion tokens sampled (M)', title='pass@1 against sampling budget')
        ax3.set(xlabel='RL iteration', ylabel='fraction of sampled groups',
               title='effective groups (reward std > 0), 5-iteration mean')
        for ax in (ax1, ax2, ax3):
            ax.grid(alpha=0.3)
            ax.legend()
        fig.tight_layout()
        fig.savefig(os.path.join(out_dir, 'rl.png'), dpi=110)
        files.append('rl.png')
    if results.get('decode'):
        fig, ax = plt.subplots(figsize=(6, 4))
        for i, m in enumerate(DECODE_ORDER):
            per = results['decode'].get(m)
            if not per:
                continue
            if m == 'greedy':
                ax.axhline(per['0']['pass1'], color='k', ls='--', label='greedy')
                continue
            bs = sorted(int(b) for b in per)
            ax.errorbar(bs, [per[str(b)]['pass1'] for b in bs], yerr=[per[str(b)].get('pass1_se', 0) for b in bs],
                        marker='o', capsize=3, color=f'C{i}', label=m)
        ax.set(xscale='log', xlabel='generated-token budget per task', ylabel='pass@1 (test), mean ± SE',
               title='accuracy against decoding budget')
        budgets = decode_budgets(results['decode'])
        ax.minorticks_off()
        ax.set_xticks(budgets, [str(b) for b in budgets])
        ax.grid(alpha=0.3)
        ax.legend()
        fig.tight_layout()
        fig.savefig(os.path.join(out_dir, 'decode.png'), dpi=110)
        files.append('decode.png')
    plt.close('all')
    return files


def write_report(results, out_dir):
    cfg = results.get('config', {})
    devices = results.get('stage_devices', {})
    by_stage = f" (by stage: {', '.join(f'{k} {v}' for k, v in devices.items())})" if devices else ''
    minutes, first = results.get('wall_seconds', 0) / 60, cfg.get('seed', 0)
    parts = [f"# restrl report: {out_dir}\n",
             f"Device {results.get('device')}{by_stage}, wall time {minutes:.1f} min summed over the runs that "
             f"wrote results.json, seeds {first}..{first + cfg.get('seeds', 1) - 1}. "
             f"Errors are the standard error of the mean over seeds.\n"]
    if 'sft' in results:
        s = results['sft']
        by_diff = sorted(s['by_difficulty'].items(), key=lambda x: int(x[0]))
        bands = ''.join(f", {b} {p:.2f}" for b, p in s.get('by_band', {}).items())
        parts.append(f"## SFT\n\nGreedy pass@1 on test {s['test_pass1']:.3f}{bands}; by difficulty "
                     + ', '.join(f"{d}: {p:.2f}" for d, p in by_diff) + '.\n')
    if results.get('train'):
        parts.append("## RL: ReST-GRPO against GRPO and ReST-DPO\n\nFrom the same SFT model; each run stops at "
                     f"rl_iters={cfg.get('rl_iters')} or after rl_token_budget={cfg.get('rl_token_budget')} sampled "
                     "completion tokens (0: no budget). Greedy pass@1 on dev during training, on test at the end.\n\n"
                     + rl_table(results['train']) + '\n')
    for name, mse in (('vm', 'val_mse'), ('orm', 'val_mse_complete')):  # the ORM is chosen and used on programs
        if name in results:
            v = results[name]
            parts.append(f"## {name.upper()}\n\nValidation at step {v.get('iter')}: {mse} {v.get(mse, 0):.4f} "
                         f"(predicting the mean of all targets: {v.get('val_mse_of_mean', 0):.4f}), Pearson "
                         f"{v.get('val_pearson', 0):.3f} (intermediate states {v.get('val_pearson_states', 0):.3f}, "
                         f"complete programs {v.get('val_pearson_complete', 0):.3f}).\n")
    if results.get('decode'):
        budgets = decode_budgets(results['decode'])
        parts.append("## Decoding at equal budgets\n\npass@1 on the test tasks (mean generated tokens per task); "
                     "the budget caps the tokens each method may generate per task.\n\n"
                     + decode_table(results['decode']) + '\n')
        if budgets:
            parts.append(f"By difficulty at budget {budgets[-1]}:\n\n"
                         + difficulty_table(results['decode'], budgets[-1]) + '\n')
    files = plot(results, out_dir)
    parts += [f"![{f}]({f})\n" for f in files] or ["(No plots: `pip install matplotlib` and rerun "
                                                   f"`python report.py {out_dir}`.)\n"]
    path = os.path.join(out_dir, 'report.md')
    write_atomic(path, '\n'.join(parts))
    return path


if __name__ == '__main__':
    if len(sys.argv) != 2:
        raise SystemExit("usage: python report.py OUT_DIR   (the folder holding results.json)")
    results_path = os.path.join(sys.argv[1], 'results.json')
    if not os.path.exists(results_path):
        raise SystemExit(f"{results_path} not found: run python train.py first")
    print(f"wrote {write_report(json.load(open(results_path)), sys.argv[1])}")
