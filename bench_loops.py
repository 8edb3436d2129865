"""
The RL and search loops against an earlier commit, side by side on this machine (results/README.md, Performance).

    python bench_loops.py --against=a7140f3 --init=out/sft.pt     # prints a table, writes bench_loops.json

Each tree (a `git worktree` of COMMIT, and this checkout) runs in a process of its own with its own modules,
one after the other, with this checkout's default config (keys the old tree lacks are left out), the same
data files (this checkout's data/), the same seeds and the same starting checkpoint (--init):
  rl_grpo, rl_rest_grpo   RL iterations: wall time per iteration (median of --iters) split into sampling /
                          scoring / update, as train_rl records them
  mcts_collect            one value-target search: 32 rl tasks in lock-step, default collect settings
"""
import argparse
import inspect
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from types import SimpleNamespace

HERE = os.path.dirname(os.path.abspath(__file__))


def measure(args, config):
    """In the tree under test (the working directory): time its own train_rl and collect_value_targets."""
    sys.path.insert(0, os.getcwd())
    import mcts
    import restrl
    from tasks import TOKENIZER_FILE, get_tokenizer, load_tasks, spread
    import train
    quiet = lambda *a, **k: None  # noqa: E731
    cfg = SimpleNamespace(**{**train.DEFAULTS, **{k: v for k, v in config.items() if k in train.DEFAULTS}})
    enc = get_tokenizer(os.path.join(cfg.data_dir, TOKENIZER_FILE))
    rl_tasks = load_tasks(os.path.join(cfg.data_dir, 'rl.jsonl'))
    probe = spread(load_tasks(os.path.join(cfg.data_dir, 'dev.jsonl')), 8)  # the evaluations: kept tiny
    out = {}
    for method in ('grpo', 'rest_grpo'):
        policy, _ = train.load_policy(args.init, 'cpu')
        path = os.path.join(args.tmp, f'{method}.pt')
        kw = dict(cfg=cfg, policy=policy, enc=enc, rl_tasks=rl_tasks, eval_tasks=probe, test_tasks=probe, path=path,
                  device='cpu', method=method, log=quiet)
        params = inspect.signature(restrl.train_rl).parameters
        history = restrl.train_rl(**{k: v for k, v in kw.items() if k in params})
        recs = history[1:]
        wall = statistics.median(r['wall'] for r in recs)
        out[f'rl_{method}'] = dict(iter_s=wall, **{k: statistics.median(r[k + '_share'] * r['wall'] for r in recs)
                                                  for k in ('sample', 'score', 'update')},
                                   tokens_per_iter=statistics.median(r['tokens_iter'] for r in recs))
    policy, _ = train.load_policy(args.init, 'cpu')
    cfg.mcts_collect_tasks = cfg.mcts_batch_tasks = 32
    t0 = time.time()
    records = mcts.collect_value_targets(cfg, policy, enc, rl_tasks, args.tmp, 'cpu', log=quiet)
    out['mcts_collect'] = dict(search_s=time.time() - t0, programs=len(records))
    print(json.dumps(out))


def run_tree(tree, args, config):
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [sys.executable, os.path.join(HERE, 'bench_loops.py'), '--worker', '--init', os.path.abspath(args.init),
               '--iters', str(args.iters), '--tmp', tmp, '--config', json.dumps(config)]
        p = subprocess.run(cmd, cwd=tree, capture_output=True, text=True)
        if p.returncode:
            sys.exit(f"bench_loops: the run in {tree} failed:\n{p.stderr[-3000:]}")
        return json.loads(p.stdout.strip().splitlines()[-1])


def main():
    ap = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    ap.add_argument('--against', default='a7140f3', help='the baseline commit')
    ap.add_argument('--init', default='out/sft.pt', help='the starting policy checkpoint (an SFT model)')
    ap.add_argument('--iters', type=int, default=4, help='RL iterations per method and tree')
    ap.add_argument('--worker', action='store_true', help=argparse.SUPPRESS)
    ap.add_argument('--tmp', help=argparse.SUPPRESS)
    ap.add_argument('--config', help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        return measure(args, json.loads(args.config))
    if not os.path.exists(args.init):
        sys.exit(f"bench_loops: no checkpoint {args.init} (train one: python train.py --stage=sft)")
    sys.path.insert(0, HERE)
    import train
    config = dict(train.DEFAULTS, data_dir=os.path.join(HERE, 'data'), device='cpu', rl_iters=args.iters,
                  rl_eval_interval=10 ** 6, eval_tasks=8, final_eval_tasks=8)
    base = os.path.join(tempfile.gettempdir(), f'restrl-{args.against}')
    if not os.path.isdir(base):
        subprocess.run(['git', '-C', HERE, 'worktree', 'add', '--detach', base, args.against], check=True)
    results = {'against': args.against, 'machine': f'{os.cpu_count()} cores, torch threads default',
               'baseline': run_tree(base, args, config), 'now': run_tree(HERE, args, config)}
    print(f"{'':>22} {args.against:>10} {'now':>10} {'ratio':>7}")
    for section, figures in results['now'].items():
        for key, now in figures.items():
            old = results['baseline'][section][key]
            ratio = f'{now / old:7.2f}' if key.endswith('_s') or key in ('sample', 'score', 'update') else ''
            print(f"{section + ' ' + key:>22} {old:10.3f} {now:10.3f} {ratio}")
    with open('bench_loops.json', 'w') as f:
        json.dump(results, f, indent=2)


if __name__ == '__main__':
    main()
