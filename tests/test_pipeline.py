"""The smoke config end to end: every stage runs, results.json has the promised keys and sane values, a rerun
finds every stage complete instead of training again, and a run killed anywhere resumes to the same outputs."""
import json
import os
import random
import subprocess
import sys
import time

import pytest
import torch

sys.path.insert(0, os.path.join(os.path.dirname(__file__), '..'))
import decode  # noqa: E402
import train  # noqa: E402

ROOT = os.path.join(os.path.dirname(__file__), '..')


def smoke_argv(out_dir):
    return [os.path.join(ROOT, 'config', 'smoke.py'), f'--out_dir={out_dir}', '--device=cpu',
            f"--data_dir={os.path.join(ROOT, 'data')}"]


@pytest.fixture(scope='module')
def smoke(tmp_path_factory):
    """One uninterrupted run of the smoke config: (out_dir, results). In a fresh process, like the killed runs it
    is compared with: torch's CPU kernels round differently in a process that switched its thread count (other
    test modules do), so an in-process run would not be bit-equal to a run of train.py."""
    out = tmp_path_factory.mktemp('smoke')
    subprocess.run([sys.executable, os.path.join(ROOT, 'train.py'), *smoke_argv(out)], check=True,
                   stdout=subprocess.DEVNULL)
    return out, json.load(open(out / 'results.json'))


def test_smoke_config_runs_every_stage_and_resumes(smoke, capsys):
    tmp_path, results = smoke
    argv = smoke_argv(tmp_path)
    for f in ('sft.pt', 'rl_rest_grpo_seed1337.pt', 'rl_rest_grpo_seed1338.pt', 'value_targets.jsonl', 'vm.pt',
              'orm.pt', 'decode.jsonl', 'report.md'):
        assert (tmp_path / f).exists(), f

    assert 0.0 <= results['sft']['test_pass1'] <= 1.0
    assert set(results['sft']['by_difficulty']) == {str(d) for d in range(1, 9)}  # as JSON keeps them
    assert list(results['sft']['by_band']) == ['introductory', 'interview', 'competition']
    rl = results['train']['rest_grpo']
    assert set(rl['seeds']) == {'1337', '1338'}  # smoke.py: seeds = 2
    finals = [r['test_pass1'] for r in rl['seeds'].values()]
    assert rl['test_pass1'] == sum(finals) / 2 and rl['test_pass1_se'] == abs(finals[0] - finals[1]) / 2
    assert len(rl['effective_group_frac']) == 2 and all(0.0 <= x <= 1.0 for x in rl['effective_group_frac'])
    assert rl['tokens_sampled'] > 0 and all(0.0 <= p <= 1.0 for p in rl['by_difficulty'].values())
    assert rl['optimizer_steps'] == 2 and rl['start_pass1'] == results['sft']['test_pass1']  # the same 64 tasks
    for run in rl['seeds'].values():  # the records checks read: steps, tokens, and test pass@1 where evaluated
        assert [h['optimizer_steps'] for h in run['history']] == [0, 1, 2]
        assert [('test_pass1' in h) for h in run['history']] == [True, False, True]
        assert run['history'][0]['tokens_sampled'] == 0 < run['history'][1]['tokens_sampled']
    for m in decode.METHODS:
        assert m in results['decode'], m
        for n, v in results['decode'][m].items():
            assert 0.0 <= v['pass1'] <= 1.0 and v['pass1_se'] >= 0 and v['seeds'] == (1 if m == 'greedy' else 2)
            assert n == '0' or v['samples'] == (1 if m == 'one_sample' else int(n))  # N complete samples, no more
            assert all(0.0 <= p <= 1.0 for p in v['by_difficulty'].values())
    report = (tmp_path / 'report.md').read_text()
    assert '| rest_grpo | 2 |' in report and '| vm_mcts |' in report and '| likelihood |' in report
    assert results['mcts']['programs'] == 8 * 10 and results['mcts']['tasks'] == 8  # smoke: 8 tasks x 10 samples
    for name in ('vm', 'orm'):
        assert 0.0 <= results[name]['dev_pearson'] <= 1.0 or results[name]['dev_pearson'] != results[name]['dev_pearson']
        assert 'test_within_task_auc' in results[name]
    assert results['config']['n_layer'] == 2
    assert list(results['stages']) == ['sft', 'rl rest_grpo seed 1337', 'rl rest_grpo seed 1338', 'value_targets', 'vm',
                                       'orm', 'decode']  # the fixed order, each with its machine and wall time
    assert all(s['machines'][0]['device'] == 'cpu' and s['wall_seconds'] > 0 for s in results['stages'].values())

    capsys.readouterr()
    t0 = time.time()
    again = train.main(argv)  # every stage is complete: loaded, not recomputed
    out = capsys.readouterr().out
    assert 'sft: complete' in out and 'decode: complete' in out
    as_json = lambda x: json.loads(json.dumps(x))  # noqa: E731  (results.json's view: keys are strings)
    assert as_json(again['sft']) == as_json(results['sft']) and as_json(again['decode']) == as_json(results['decode'])
    assert time.time() - t0 < 60


OUTPUTS = ['sft.pt', 'rl_rest_grpo_seed1337.pt', 'rl_rest_grpo_seed1338.pt', 'value_targets.jsonl', 'vm.pt', 'orm.pt',
           'decode.jsonl']


def test_a_run_killed_anywhere_resumes_to_the_same_outputs(smoke, tmp_path):
    """SIGKILL once while each output is being made (at a random moment after its record appears: mid-step,
    mid-write or mid-evaluation, not only after a checkpoint), rerun, and let the last run finish: every output
    equals the uninterrupted run's (the weights of SFT, RL, VM and ORM; the value targets byte for byte; the
    decoding rows)."""
    ref, _ = smoke
    rng = random.Random(0)
    cmd = [sys.executable, os.path.join(ROOT, 'train.py'), *smoke_argv(tmp_path)]
    killed = []
    for name in OUTPUTS:
        record = tmp_path / (os.path.splitext(name)[0] + '.json')
        p = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        while p.poll() is None and not record.exists():
            time.sleep(0.05)
        time.sleep(rng.uniform(0.2, 3.0))
        if p.poll() is None:
            p.kill()
            killed.append(name)
        p.wait()
    assert len(killed) >= 5, killed  # nearly every stage was interrupted at least once
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    for name in ('sft.pt', 'rl_rest_grpo_seed1337.pt', 'rl_rest_grpo_seed1338.pt', 'vm.pt', 'orm.pt'):
        a, b = (torch.load(d / name, weights_only=False)['model'] for d in (ref, tmp_path))
        assert all(torch.equal(a[k], b[k]) for k in a), name
    assert (ref / 'value_targets.jsonl').read_bytes() == (tmp_path / 'value_targets.jsonl').read_bytes()
    rows = [{json.dumps({k: v for k, v in r.items() if k != 'seconds'}, sort_keys=True) for r in
             json.load(open(d / 'decode.json'))['result']['rows']} for d in (ref, tmp_path)]
    assert rows[0] == rows[1]
