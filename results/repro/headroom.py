"""
Where best-of-16 loses the headroom over greedy, on `dev`: the policy's greedy program and 16 samples at the
decoding temperature for each task, every program graded; the tasks split by whether greedy passes and whether
any sample does; on each group, how often each scorer's pick passes and its within-task AUC; and how often the
pick is the greedy program itself. Reads `dev` only; tunes nothing.

    python results/repro/headroom.py results/repro/ckpt/rl_rest_grpo_seed1337.model-only.pt \
        results/repro/ckpt/vm.model-only.pt results/repro/ckpt/orm.model-only.pt --tasks 300
"""
import argparse
import json
import os
import sys

import torch

sys.path.insert(0, os.path.join(os.path.dirname(__file__), '..', '..'))
import mcts  # noqa: E402
from tasks import TOKENIZER_FILE, get_tokenizer, grade, load_tasks, sample_programs, spread  # noqa: E402
import value  # noqa: E402
from configurator import load_policy  # noqa: E402


def groups(greedy_passed, passed):
    """Task indices by what greedy and the samples do."""
    return {'greedy passes': [i for i, g in enumerate(greedy_passed) if g],
            'greedy fails, a sample passes': [i for i, g in enumerate(greedy_passed) if not g and any(passed[i])],
            'greedy fails, no sample passes': [i for i, g in enumerate(greedy_passed) if not g and not any(passed[i])]}


def main():
    ap = argparse.ArgumentParser(description=__doc__.strip().split('\n\n')[0])
    ap.add_argument('policy')
    ap.add_argument('vm')
    ap.add_argument('orm')
    ap.add_argument('--tasks', type=int, default=300, help='dev tasks, spread over difficulties')
    ap.add_argument('--samples', type=int, default=16)
    ap.add_argument('--seed', type=int, default=1337)
    args = ap.parse_args()
    root = os.path.join(os.path.dirname(__file__), '..', '..', 'data')
    dev = spread(load_tasks(os.path.join(root, 'dev.jsonl')), args.tasks)
    enc = get_tokenizer(os.path.join(root, TOKENIZER_FILE))
    policy = load_policy(args.policy, 'cpu')[0].eval()
    greedy = sample_programs(policy, enc, dev, 'cpu', 160, 32, 0.0, 1)[0]
    greedy_passed = grade(dev, greedy)
    pool = value.sample_pool(policy, enc, dev, args.samples, 160, mcts.TEMPERATURE,
                             torch.Generator().manual_seed(args.seed))
    passed = value.grade_pool(dev, pool)
    complete = [[d.complete for d in draws] for draws in pool]
    scores = {'likelihood': [[d.logp for d in draws] for draws in pool]}
    for name, path in (('vm', args.vm), ('orm', args.orm)):
        scores[name] = value.program_scores(value.load_value_model(path, 'cpu'), enc, dev, pool)
    split = groups(greedy_passed, passed)
    out = dict(tasks=len(dev), greedy_pass1=sum(greedy_passed) / len(dev),
               greedy_program_in_pool=sum(g in [d.text for d in draws] for g, draws in zip(greedy, pool)) / len(dev),
               oracle=value.oracle_of_k(passed, args.samples), tasks_by_group={g: len(ix) for g, ix in split.items()},
               passing_share_by_group={g: sum(sum(passed[i]) for i in ix) / (args.samples * max(1, len(ix)))
                                       for g, ix in split.items()})
    for name, s in scores.items():
        picks = [value.pick(s[i], args.samples, complete[i]) for i in range(len(dev))]
        out[name] = dict(pick_passes=sum(passed[i][p] for i, p in enumerate(picks)) / len(dev),
                         pick_is_greedy_program=sum(pool[i][p].text == greedy[i] for i, p in enumerate(picks)) / len(dev),
                         by_group={g: dict(pick_passes=sum(passed[i][picks[i]] for i in ix) / max(1, len(ix)),
                                           within_task_auc=value.within_task_auc([s[i] for i in ix],
                                                                                 [passed[i] for i in ix]))
                                   for g, ix in split.items()})
    print(json.dumps(out, indent=1))


if __name__ == '__main__':
    main()
