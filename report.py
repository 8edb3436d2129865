"""
report.md (and PNG plots, when matplotlib is installed) from a run's results.json: the paper's two claims
as tables with the mean and standard error over seeds.

    python report.py out-repro      # rewrite out-repro/report.md from out-repro/results.json

train.py calls write_report at the end of every run, so a finished run always has its report.
"""
import json
import os
import sys

import mcts
from outputs import write_atomic
from tasks import EVAL_SAMPLES, EVAL_TEMPERATURE, mean_se

DECODE_ORDER = ('greedy', 'one_sample', 'likelihood_bon', 'orm_bon', 'vm_bon', 'prm_min', 'prm_mean', 'orm_mcts',
                'vm_mcts')


def decode_ns(decode):
    """The budgets N (complete samples) of results.json's decode entries, ascending; greedy's 0 is not one."""
    return sorted({int(n) for per in decode.values() for n in per if int(n)})


def figure(v):
    return '-' if v is None or v != v else f'{v:.3f}'  # None (no mixed task) and NaN print as '-'


def fmt(m, se):
    return f"{m:.3f} ± {se:.3f}" if se else f"{m:.3f}"


def rl_table(train):
    lines = ['| method | seeds | test greedy pass@1: start -> end | test sampled pass@1 (end) | effective groups '
             '(mean over iterations) | optimizer steps | tokens sampled | wall (min) |', '|---' * 8 + '|']
    for m, r in train.items():
        eff = r['effective_group_frac']
        lines.append(f"| {m} | {len(r['seeds'])} | {fmt(r['start_pass1'], r['start_pass1_se'])} -> "
                     f"**{fmt(r['test_pass1'], r['test_pass1_se'])}** | "
                     f"{fmt(r['test_pass1_sampled'], r['test_pass1_sampled_se'])} | "
                     + (f"{sum(eff) / len(eff):.2f}" if eff else '-') +
                     f" | {r['optimizer_steps']:.0f} | {r['tokens_sampled'] / 1e6:.2f}M | {r['wall_total'] / 60:.0f} |")
    lines.append('\nWall time is indicative: runs made one after another on a shared machine.')
    return '\n'.join(lines)


def paired_difference(train, a, b, key='test_pass1'):
    """(mean, SE) over seeds of method a's final `key` minus method b's, paired by seed: a seed fixes the order
    of the RL problems and the test sampling for both, so pairing removes that noise (both start from the
    same SFT model whatever the seed). None unless both ran the same seeds."""
    sa, sb = train[a]['seeds'], train[b]['seeds']
    if sorted(sa) != sorted(sb):
        return None
    return mean_se([sa[s][key] - sb[s][key] for s in sa])


def decode_table(decode):
    ns = decode_ns(decode)
    lines = ['| method | ' + ' | '.join(f'N = {n}' for n in ns) + ' |', '|---' * (len(ns) + 1) + '|']
    for m in DECODE_ORDER:
        if m in decode:
            cells = [decode[m].get(str(n)) or decode[m]['0'] for n in ns]  # greedy has one entry, N = 0
            lines.append(f'| {m} | ' + ' | '.join(f"{fmt(c['pass1'], c.get('pass1_se', 0))} ({c['tokens']:.0f})"
                                                  for c in cells) + ' |')
    return '\n'.join(lines)


def ranking_table(ranking):
    """The rankers on the test pools: within-task AUC, Pearson, best-of-k pass@1 (random and oracle beside)."""
    ks = sorted({int(k.rsplit('_', 1)[1]) for r in ranking.values() for k in r if k.startswith('pick_of_')})
    lines = ['| scorer | within-task AUC | Pearson | ' + ' | '.join(f'best of {k}' for k in ks) + ' |',
             '|---' * (len(ks) + 3) + '|']
    for name, r in ranking.items():
        lines.append(f"| {name} | {figure(r.get('within_task_auc'))} | {figure(r.get('pearson'))} | "
                     + ' | '.join(figure(r.get(f'pick_of_{k}')) for k in ks) + ' |')
    return '\n'.join(lines)


def difficulty_table(decode, budget):
    rows = {m: decode[m].get(str(budget)) or decode[m].get('0') for m in DECODE_ORDER if m in decode}
    diffs = sorted({d for r in rows.values() for d in r['by_difficulty']}, key=int)
    lines = ['| method | ' + ' | '.join(f'{d} steps' for d in diffs) + ' |', '|---' * (len(diffs) + 1) + '|']
    for m, r in rows.items():
        lines.append(f'| {m} | ' + ' | '.join(f"{r['by_difficulty'][d]:.2f}" for d in diffs) + ' |')
    return '\n'.join(lines)


def plot_rl(plt, train, path):
    """pass@1 against optimizer steps, sampled tokens and wall time, and the effective-group fraction."""
    fig, axes = plt.subplots(1, 4, figsize=(19, 4))
    for i, (m, r) in enumerate(train.items()):
        at = {}  # optimizer step -> the seeds' (tokens, wall, pass@1) where the test split was evaluated
        for run in r['seeds'].values():
            for h in run['history']:
                if 'test_pass1' in h:
                    at.setdefault(h['optimizer_steps'], []).append((h['tokens_sampled'], h['wall_total'],
                                                                     h['test_pass1']))
        steps = sorted(at)
        mean, se = zip(*[mean_se([p for _, _, p in at[k]]) for k in steps])  # SE 0 where one seed has a point
        for ax, x in zip(axes, (steps, [sum(t for t, _, _ in at[k]) / len(at[k]) / 1e6 for k in steps],
                                [sum(w for _, w, _ in at[k]) / len(at[k]) / 60 for k in steps])):
            ax.errorbar(x, mean, yerr=se, marker='o', ms=3, capsize=3, color=f'C{i}', label=m)
        eff, w = r['effective_group_frac'], 5  # mean over seeds, then a running mean over w iterations
        smooth = [sum(eff[max(0, k - w + 1):k + 1]) / len(eff[max(0, k - w + 1):k + 1]) for k in range(len(eff))]
        if eff:
            axes[3].plot(range(1, len(eff) + 1), smooth, color=f'C{i}', label=m)
    axes[0].set(xlabel='optimizer steps', ylabel='greedy pass@1 (test), mean ± SE over seeds',
                title='pass@1 against optimizer steps (the paper\'s axis)')
    axes[1].set(xlabel='tokens sampled, filter rounds included (M)', title='pass@1 against sampled tokens')
    axes[2].set(xlabel='wall time (min)', title='pass@1 against wall time')
    axes[3].set(xlabel='RL iteration', ylabel='fraction of trained groups',
                title='effective groups (reward std > 0), 5-iteration mean')
    for ax in axes:
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def plot_decode(plt, decode, path):
    """pass@1 against the number of complete samples N, every method, greedy as a line."""
    fig, ax = plt.subplots(figsize=(6, 4))
    for i, m in enumerate(DECODE_ORDER):
        per = decode.get(m)
        if not per:
            continue
        if m == 'greedy':
            ax.axhline(per['0']['pass1'], color='k', ls='--', label='greedy')
            continue
        bs = sorted(int(b) for b in per)
        ax.errorbar(bs, [per[str(b)]['pass1'] for b in bs], yerr=[per[str(b)].get('pass1_se', 0) for b in bs],
                    marker='o', capsize=3, color=f'C{i}', label=m)
    ax.set(xscale='log', xlabel='complete samples per task (N)', ylabel='pass@1 (test), mean ± SE',
           title='accuracy against decoding budget')
    ns = decode_ns(decode)
    ax.minorticks_off()
    ax.set_xticks(ns, [str(n) for n in ns])
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)


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
        plot_rl(plt, results['train'], os.path.join(out_dir, 'rl.png'))
        files.append('rl.png')
    if results.get('decode'):
        plot_decode(plt, results['decode'], os.path.join(out_dir, 'decode.png'))
        files.append('decode.png')
    plt.close('all')
    return files


def machines_table(stages):
    """Which machine made each stage's output, and in how much wall time (from the records in out_dir)."""
    rows = ["| output | machine | wall time |", "|---|---|---|"]
    for name, s in stages.items():
        where = '; '.join(f"{m['device']} ({m['name'] or '?'}, {m['cpus']} CPUs, {m['host']})" for m in s['machines'])
        rows.append(f"| {name} | {where} | {s['wall_seconds'] / 60:.1f} min |")
    return '\n'.join(rows)


def rl_section(train, cfg):
    """The RL comparison: the table, the effective groups by source, the differences paired by seed."""
    parts = ["## RL: ReST-GRPO against GRPO and ReST-DPO\n\nFrom the same SFT model, the same number of "
             f"optimizer steps ({cfg.get('rl_iters')} iterations x {cfg.get('rl_inner_steps')}), "
             f"{cfg.get('rl_reward')} reward, problems of at least {cfg.get('rl_min_difficulty')} steps. "
             f"Test pass@1 greedy, and sampled ({EVAL_SAMPLES} programs per task at {EVAL_TEMPERATURE}).\n\n"
             + rl_table(train) + '\n']
    split = [f"{m} {figure(r['effective_by_source']['fresh'])} / {figure(r['effective_by_source']['prefix'])} "
             f"({figure(r['effective_by_source']['prefix_share'])})" for m, r in train.items()
             if r.get('effective_by_source', {}).get('fresh') is not None]
    if split:
        parts.append("Effective groups of fresh problems / of prefix states (the prefix states' share of the "
                     "trained groups): " + "; ".join(split) + ".\n")
    pairs = [(a, b) for a, b in (('rest_grpo', 'grpo'), ('grpo', 'rest_dpo'), ('rest_grpo', 'rest_dpo'))
             if a in train and b in train and paired_difference(train, a, b)]
    if pairs:
        parts.append("Paired by seed, final greedy test pass@1: " + "; ".join(
            f"{a} - {b} = {fmt(*paired_difference(train, a, b))}" for a, b in pairs) + ".\n")
    return parts


def write_report(results, out_dir):
    cfg = results.get('config', {})
    parts = [f"# restrl report: {out_dir}\n",
             "Errors are the standard error of the mean over seeds. Each stage's output, the machine that made it and "
             "its wall time (summed over the processes that worked on it):\n",
             machines_table(results.get('stages', {})) + '\n']
    if results.get('left_out'):
        parts.append("Left out (finished, but made from other settings than this config's): " + "; ".join(
            f"{name} ({', '.join(why)})" for name, why in results['left_out'].items()) + ".\n")
    if 'sft' in results:
        s = results['sft']
        by_diff = sorted(s['by_difficulty'].items(), key=lambda x: int(x[0]))
        bands = ''.join(f", {b} {p:.2f}" for b, p in s.get('by_band', {}).items())
        parts.append(f"## SFT\n\nGreedy pass@1 on test {s['test_pass1']:.3f}{bands}; by difficulty "
                     + ', '.join(f"{d}: {p:.2f}" for d, p in by_diff) + '.\n')
    if results.get('train'):
        parts += rl_section(results['train'], cfg)
    for name in ('vm', 'orm'):
        if 'iter' in results.get(name, {}):
            v = results[name]
            parts.append(f"## {name.upper()}\n\nKept step {v['iter']} of {v.get('iters_trained')}: the best "
                         f"within-task AUC on the dev pool, {figure(v['dev_within_task_auc'])} (best of 16: "
                         f"{figure(v.get('dev_pick_of_16'))}; Pearson {figure(v['dev_pearson'])}).\n")
    if results.get('ranking'):
        parts.append("## Ranking a task's own samples (test pools)\n\n" + ranking_table(results['ranking']) + '\n')
    if results.get('decode'):
        ns = decode_ns(results['decode'])
        parts.append("## Decoding at equal budgets\n\npass@1 on the test tasks at N complete samples per task "
                     f"(mean generated tokens per task), sampling at {mcts.TEMPERATURE}.\n\n"
                     + decode_table(results['decode']) + '\n')
        if ns:
            parts.append(f"By difficulty at N = {ns[-1]}:\n\n" + difficulty_table(results['decode'], ns[-1]) + '\n')
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
