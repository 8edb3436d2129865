"""
What makes RL learn here: naive GRPO from one SFT model under a few settings, scored on the dev split only
(the test split is never read: a sweep chooses defaults, and the final tables must not have chosen them).

    python sweep_rl.py --sft=out/sft.pt                    # every run below, one after another; resumes
    python sweep_rl.py --sft=out/sft.pt --only=lr2e-4,base # some of them

Each run is `python train.py --stage=rl --method=grpo` with the overrides in RUNS, in sweep_rl/<name>/; it
checkpoints every iteration, so a killed sweep resumes where it stopped. Prints a table of greedy dev pass@1
against optimizer steps and writes sweep_rl/sweep.json.
"""
import argparse
import json
import os
import sys
from types import SimpleNamespace

import restrl
from tasks import get_tokenizer, load_tasks
import train

BASE = dict(method='grpo', rl_reward='partial', rl_iters=60, rl_batch_groups=16, rl_eval_interval=20, eval_tasks=0)
RUNS = {  # name -> overrides of BASE (and of train.py's defaults), in the order they run
    'lr1e-4': dict(rl_lr=1e-4, rl_iters=120),        # 1 step per batch, KL 0.02, temperature 1.0
    'lr2e-5': dict(rl_lr=2e-5),
    'lr5e-5': dict(rl_lr=5e-5),
    'lr1e-4_kl0.2': dict(rl_lr=1e-4, rl_kl_coef=0.2),
    'lr5e-5_binary': dict(rl_lr=5e-5, rl_reward='binary'),
    'lr5e-5_t0.7': dict(rl_lr=5e-5, rl_temperature=0.7),
    'lr5e-5_kl0.1': dict(rl_lr=5e-5, rl_kl_coef=0.1),
    'lr5e-5_t0.7_steps2': dict(rl_lr=5e-5, rl_temperature=0.7, rl_inner_steps=2, rl_iters=30, rl_eval_interval=10),
    'lr5e-5_t0.7_b32': dict(rl_lr=5e-5, rl_temperature=0.7, rl_batch_groups=32),
}


def main(argv):
    parser = argparse.ArgumentParser()
    parser.add_argument('--sft', default='out/sft.pt', help='the SFT checkpoint every run starts from')
    parser.add_argument('--only', default='', help='comma-separated run names (default: all)')
    parser.add_argument('--out', default='sweep_rl')
    args = parser.parse_args(argv)
    names = args.only.split(',') if args.only else list(RUNS)
    unknown = [n for n in names if n not in RUNS]
    if unknown:
        raise SystemExit(f"unknown run(s) {', '.join(unknown)}; known: {', '.join(RUNS)}")
    if not os.path.exists(args.sft):
        raise SystemExit(f"{args.sft} does not exist: train the SFT model first (python train.py --stage=sft)")
    enc = get_tokenizer()
    rl_tasks, dev_tasks = load_tasks('data/rl.jsonl'), load_tasks('data/dev.jsonl')
    device = train.pick_device('auto')
    summary = os.path.join(args.out, 'sweep.json')
    out = json.load(open(summary))['runs'] if os.path.exists(summary) else {}  # earlier invocations' runs stay
    for name in names:
        config = {**train.DEFAULTS, **BASE, **RUNS[name], 'eval_split': 'dev', 'device': device}
        cfg = SimpleNamespace(**config)
        policy, _ = train.load_policy(args.sft, device)
        path = os.path.join(args.out, name, 'rl_grpo.pt')
        os.makedirs(os.path.dirname(path), exist_ok=True)
        print(f"== {name}: {RUNS[name] or 'defaults'}")
        history = restrl.train_rl(cfg, policy, enc, rl_tasks, dev_tasks, None, path, device, 'grpo')
        out[name] = dict(overrides=RUNS[name], steps_per_iter=cfg.rl_inner_steps,
                         curve=[(h['optimizer_steps'], h['eval_pass1']) for h in history if 'eval_pass1' in h],
                         kl=[h.get('kl') for h in history[1:]], reward=[h['reward'] for h in history[1:]],
                         effective_group_frac=[h['effective_group_frac'] for h in history[1:]])
        with open(summary, 'w') as f:
            json.dump(dict(base=BASE, sft=args.sft, runs=out), f, indent=1)
    print("\ngreedy dev pass@1 at optimizer steps")
    for name, r in sorted(out.items(), key=lambda kv: list(RUNS).index(kv[0]) if kv[0] in RUNS else len(RUNS)):
        print(f"{name:<16}" + '  '.join(f"{s}: {p:.3f}" for s, p in r['curve']))


if __name__ == '__main__':
    main(sys.argv[1:])
