"""tasks.mean_se, and report.py: the markdown tables, and plots only when matplotlib is there."""
import json
import os
import sys

import numpy as np
import pytest

sys.path.insert(0, os.path.join(os.path.dirname(__file__), '..'))
import report  # noqa: E402
import tasks  # noqa: E402
import train  # noqa: E402


def history(end, sampled, eff, tokens):
    """A two-iteration RL history as restrl.train_rl writes it: test evaluated at the start and the end."""
    start = dict(iter=0, optimizer_steps=0, tokens_sampled=0, wall_total=0.0, test_pass1=0.5, test_pass1_sampled=0.4,
                 test_by_difficulty={1: 0.9, 2: 0.1})
    mid = dict(iter=1, optimizer_steps=2, tokens_sampled=tokens // 2, wall_total=30.0, effective_group_frac=eff[0])
    last = dict(iter=2, optimizer_steps=4, tokens_sampled=tokens, wall_total=60.0, effective_group_frac=eff[1],
                test_pass1=end, test_pass1_sampled=sampled, test_by_difficulty={1: 1.0, 2: end - 0.4})
    return [start, mid, last]


def fake_results():
    decode = {'greedy': {'0': dict(pass1=0.5, pass1_se=0.0, tokens=50, seeds=1, by_difficulty={'1': 0.9, '2': 0.1})}}
    for m, p in (('orm_bon', 0.4), ('vm_mcts', 0.6)):
        decode[m] = {n: dict(pass1=p, pass1_se=0.02, samples=int(n), tokens=60 * int(n) - 10, seeds=3,
                             by_difficulty={'1': 1.0, '2': 0.2}) for n in ('4', '16')}
    ranking = {'vm': dict(within_task_auc=0.75, pearson=0.5, pick_of_1=0.3, pick_of_4=0.45),
               'orm': dict(within_task_auc=None, pearson=0.4, pick_of_1=0.3, pick_of_4=0.4)}
    train_ = {'grpo': train.rl_summary({1: history(0.55, 0.45, [0.5, 0.6], 1000), 2: history(0.65, 0.5, [0.7, 0.8], 3000)}),
              'rest_grpo': train.rl_summary({1: history(0.6, 0.5, [0.8, 0.9], 1200), 2: history(0.75, 0.6, [0.9, 1.0], 3200)})}
    return dict(config=dict(seed=1, seeds=2, rl_iters=2, rl_inner_steps=2, rl_reward='partial', rl_min_difficulty=1,
                            eval_samples=4, eval_temperature=0.7),
                stages={'sft': dict(machines=[dict(device='cpu', name='x86_64', cpus=2, host='h')], wall_seconds=60)},
                sft=dict(test_pass1=0.5, by_difficulty={'1': 0.9, '2': 0.1}),
                train=json.loads(json.dumps(train_)), decode=decode, ranking=ranking)  # as results.json holds it


def test_mean_se_matches_numpy():
    xs = [0.51, 0.48, 0.55]
    m, se = tasks.mean_se(xs)
    assert m == pytest.approx(np.mean(xs)) and se == pytest.approx(np.std(xs, ddof=1) / np.sqrt(3))
    assert tasks.mean_se([0.3]) == (0.3, 0.0)


def test_tables_hold_the_numbers():
    r = fake_results()
    rl = report.rl_table(r['train'])
    # start 0.5 on both seeds; end (0.55, 0.65): 0.6 +- 0.05; sampled (0.45, 0.5): 0.475 +- 0.025; effective
    # groups per iteration (0.6, 0.7), mean 0.65; 4 steps, 2000 tokens and 1 minute on average
    assert '| grpo | 2 | 0.500 -> **0.600 ± 0.050** | 0.475 ± 0.025 | 0.65 | 4 | 0.00M | 1 |' in rl
    assert r['train']['grpo']['by_difficulty'] == {'1': 1.0, '2': pytest.approx(0.2)}
    assert [h['test_pass1'] for h in r['train']['grpo']['seeds']['2']['history'] if 'test_pass1' in h] == [0.5, 0.65]
    # paired by seed: (0.6 - 0.55, 0.75 - 0.65) = (0.05, 0.1): 0.075 +- 0.025
    assert report.paired_difference(r['train'], 'rest_grpo', 'grpo') == (pytest.approx(0.075), pytest.approx(0.025))
    dec = report.decode_table(r['decode'])
    assert '| method | N = 4 | N = 16 |' in dec
    assert '| greedy | 0.500 (50) | 0.500 (50) |' in dec  # greedy has no budget: the same in every column
    assert '| vm_mcts | 0.600 ± 0.020 (230) | 0.600 ± 0.020 (950) |' in dec
    assert dec.index('greedy') < dec.index('orm_bon') < dec.index('vm_mcts')
    assert '| vm_mcts | 1.00 | 0.20 |' in report.difficulty_table(r['decode'], 16)
    rank = report.ranking_table(r['ranking'])
    assert '| vm | 0.750 | 0.500 | 0.300 | 0.450 |' in rank and '| orm | - | 0.400 |' in rank  # None: no mixed task


def test_report_without_matplotlib_is_text(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, 'matplotlib', None)  # import matplotlib now raises ImportError
    text = open(report.write_report(fake_results(), str(tmp_path))).read()
    assert 'pip install matplotlib' in text and '| grpo | 2 |' in text and not list(tmp_path.glob('*.png'))
    assert '| sft | cpu (x86_64, 2 CPUs, h) | 1.0 min |' in text  # the machine of every stage


def test_report_with_matplotlib_has_plots(tmp_path):
    pytest.importorskip('matplotlib')
    text = open(report.write_report(fake_results(), str(tmp_path))).read()
    assert '![rl.png](rl.png)' in text and '![decode.png](decode.png)' in text
    assert (tmp_path / 'rl.png').stat().st_size > 10_000 and (tmp_path / 'decode.png').stat().st_size > 10_000


def test_effective_groups_split_into_fresh_problems_and_prefix_states():
    # iteration 1: 4 groups, 3 vary; its 2 fresh problems both vary, so 1 of its 2 prefix states does
    # iteration 2: 4 groups, 2 vary; 1 of its 2 fresh problems varies, so 1 of its 2 prefix states does
    start = dict(iter=0)
    r1 = dict(iter=1, items=4, effective_group_frac=0.75, effective_groups_by_difficulty={1: [2, 2]})
    r2 = dict(iter=2, items=4, effective_group_frac=0.5, effective_groups_by_difficulty={1: [1, 1], 2: [0, 1]})
    got = train.effective_by_source({1: [start, r1, r2]})
    assert got == dict(fresh=3 / 4, prefix=2 / 4, prefix_share=4 / 8)
    dpo = dict(iter=1, items=4, kl=0.1)  # ReST-DPO samples no groups of its own
    assert train.effective_by_source({1: [start, dpo]}) == dict(fresh=None, prefix=None, prefix_share=None)
