"""report.py: mean and standard error, the markdown tables, and plots only when matplotlib is there."""
import os
import sys

import numpy as np
import pytest

sys.path.insert(0, os.path.join(os.path.dirname(__file__), '..'))
import report  # noqa: E402


def fake_results():
    run = lambda p, eff: dict(test_pass1=p, eval_pass1_curve=[(0, 0, 0.5), (4, 1000, p - 0.02)],  # noqa: E731
                              effective_group_frac=eff, iterations=4, tokens_sampled=1000)
    decode = {'greedy': {'0': dict(pass1=0.5, pass1_se=0.0, tokens=50, seeds=1, by_difficulty={'1': 0.9, '2': 0.1})}}
    for m, p in (('bon_orm', 0.4), ('vm_mcts', 0.6)):
        decode[m] = {b: dict(pass1=p, pass1_se=0.02, tokens=int(b) - 10, seeds=3, by_difficulty={'1': 1.0, '2': 0.2})
                     for b in ('128', '256')}
    return dict(config=dict(seed=1, seeds=2, rl_iters=4, rl_token_budget=0), device='cpu', wall_seconds=60,
                sft=dict(test_pass1=0.5, by_difficulty={'1': 0.9, '2': 0.1}),
                train={'grpo': dict(test_pass1=0.55, test_pass1_se=0.05, effective_group_frac=[0.6, 0.7], seeds={'1': run(0.5, [0.5, 0.6]),
                                                                             '2': run(0.6, [0.7, 0.8])})},
                decode=decode)


def test_mean_se_matches_numpy():
    xs = [0.51, 0.48, 0.55]
    m, se = report.mean_se(xs)
    assert m == pytest.approx(np.mean(xs)) and se == pytest.approx(np.std(xs, ddof=1) / np.sqrt(3))
    assert report.mean_se([0.3]) == (0.3, 0.0)


def test_tables_hold_the_numbers():
    r = fake_results()
    rl = report.rl_table(r['train'])
    # dev: start 0.5 for both seeds, end 0.53 +- 0.05; test at the end 0.55 +- 0.05; effective groups
    # (0.55 + 0.75) / 2 +- 0.1
    assert '| grpo | 2 | 0.500 -> 0.530 ± 0.050 | **0.550 ± 0.050** | 0.650 ± 0.100 | 4 (1K) |' in rl
    dec = report.decode_table(r['decode'])
    assert '| greedy | 0.500 (50) | 0.500 (50) |' in dec  # greedy has no budget: the same in every column
    assert '| vm_mcts | 0.600 ± 0.020 (118) | 0.600 ± 0.020 (246) |' in dec
    assert dec.index('greedy') < dec.index('bon_orm') < dec.index('vm_mcts')
    assert '| vm_mcts | 1.00 | 0.20 |' in report.difficulty_table(r['decode'], 256)


def test_report_without_matplotlib_is_text(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, 'matplotlib', None)  # import matplotlib now raises ImportError
    text = open(report.write_report(fake_results(), str(tmp_path))).read()
    assert 'pip install matplotlib' in text and '| grpo | 2 |' in text and not list(tmp_path.glob('*.png'))


def test_report_with_matplotlib_has_plots(tmp_path):
    pytest.importorskip('matplotlib')
    text = open(report.write_report(fake_results(), str(tmp_path))).read()
    assert '![rl.png](rl.png)' in text and '![decode.png](decode.png)' in text
    assert (tmp_path / 'rl.png').stat().st_size > 10_000 and (tmp_path / 'decode.png').stat().st_size > 10_000
