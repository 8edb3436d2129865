"""outputs.py and train.py's checks before any work: a stale output is refused with what differs, a key that
cannot change a result is not, --restart moves outputs aside, a damaged checkpoint is named, and records made
by side-by-side runs assemble into one results.json."""
import json
import os
import sys
from types import SimpleNamespace

import pytest
import torch

sys.path.insert(0, os.path.join(os.path.dirname(__file__), '..'))
import outputs  # noqa: E402
import report  # noqa: E402
import train  # noqa: E402
from model import load_checkpoint  # noqa: E402

ROOT = os.path.join(os.path.dirname(__file__), '..')


def config(out_dir, *overrides):
    c = train.configure([os.path.join(ROOT, 'config', 'smoke.py'), f'--out_dir={out_dir}', '--device=cpu',
                         f"--data_dir={os.path.join(ROOT, 'data')}", *overrides])
    return SimpleNamespace(**c)


def fake_make(cfg, names, result=None, machine=None, monkeypatch=None):
    """Finish the planned outputs named in `names` as train.make would, with a placeholder file for each."""
    if machine:
        monkeypatch.setattr(outputs, 'machine', lambda device: machine)
    for o in train.planned_outputs(cfg):
        if os.path.basename(o.path) in names:
            def work(o=o):
                open(o.path, 'w').write('x')
                return result(o) if result else {}
            train.make(o, 'cpu', work)


def test_a_changed_key_is_refused_with_the_key_named(tmp_path):
    cfg = config(tmp_path)
    fake_make(cfg, {'sft.pt', 'rl_rest_grpo_seed1337.pt', 'rl_rest_grpo_seed1338.pt', 'value_targets.jsonl', 'vm.pt',
                    'orm.pt', 'decode.jsonl'}, result=lambda o: dict(iters=o.cfg.rl_iters) if o.stage == 'rl' else {})
    train.preflight(train.planned_outputs(cfg), outputs.STAGES)  # the same config: nothing to refuse
    changed = config(tmp_path, '--decode_samples=1,8')
    with pytest.raises(outputs.Stale) as e:
        train.preflight(train.planned_outputs(changed), ['decode'])
    assert 'decode.jsonl' in str(e.value) and "decode_samples: '1,4' then, '1,8' now" in str(e.value)
    assert '--restart=decode' in str(e.value) and 'another --out_dir' in str(e.value)
    with pytest.raises(outputs.Stale, match=r"sft\.pt was not made from this config:\n  sft_lr: 0\.002 then, 0\.001"):
        train.preflight(train.planned_outputs(config(tmp_path, '--sft_lr=1e-3')), ['decode'])  # an input, too
    # an earlier stage's output is reused whatever seed it was made with: RL seed 1338 from this SFT model
    train.preflight(train.planned_outputs(config(tmp_path, '--seed=1338', '--seeds=1')), ['rl'])
    with pytest.raises(outputs.Stale, match=r"seed: 1337 then, 1338 now"):  # but not when that stage runs again
        train.preflight(train.planned_outputs(config(tmp_path, '--seed=1338')), ['sft', 'rl'])
    # keys that cannot change a result are not compared
    train.preflight(train.planned_outputs(config(tmp_path, '--eval_batch_size=7', '--rl_eval_interval=9',
                                                 '--sft_eval_interval=5')), outputs.STAGES)


def test_an_output_without_a_record_is_never_trusted(tmp_path):
    cfg = config(tmp_path)
    torch.save({'model': {}}, tmp_path / 'sft.pt')  # as an earlier restrl left it: no sft.json beside it
    with pytest.raises(outputs.Stale, match=r"has no record sft\.json"):
        train.preflight(train.planned_outputs(cfg), ['sft'])


def test_an_output_made_from_an_input_this_run_rewrites_is_refused(tmp_path):
    cfg = config(tmp_path)
    fake_make(cfg, {'sft.pt', 'rl_rest_grpo_seed1337.pt', 'rl_rest_grpo_seed1338.pt', 'value_targets.jsonl'},
              result=lambda o: dict(iters=o.cfg.rl_iters) if o.stage == 'rl' else {})
    longer = config(tmp_path, '--rl_iters=4')  # extends the finished RL runs: a new policy for the search stages
    with pytest.raises(outputs.Stale, match=r"input policy: this run rewrites it first"):
        train.preflight(train.planned_outputs(longer), outputs.STAGES)
    train.preflight(train.planned_outputs(longer), ['rl'])  # extending the runs alone is fine
    with pytest.raises(outputs.Stale, match=r"holds 2 iterations and rl_iters=1"):  # cutting them is not
        train.preflight(train.planned_outputs(config(tmp_path, '--rl_iters=1')), ['rl'])


def test_restart_moves_the_stage_and_the_later_ones_aside(tmp_path):
    cfg = config(tmp_path, '--restart=vm')
    names = {'sft.pt', 'rl_rest_grpo_seed1337.pt', 'rl_rest_grpo_seed1338.pt', 'value_targets.jsonl', 'vm.pt',
             'orm.pt', 'decode.jsonl'}
    fake_make(cfg, names, result=lambda o: dict(iters=o.cfg.rl_iters) if o.stage == 'rl' else {})
    train.restart_from(cfg, train.planned_outputs(cfg))
    left = set(os.listdir(tmp_path))
    assert {'sft.pt', 'sft.json', 'value_targets.jsonl', 'value_targets.json'} <= left
    assert not {'vm.pt', 'vm.json', 'orm.pt', 'decode.jsonl', 'decode.json'} & left
    (moved,) = os.listdir(tmp_path / 'replaced')
    assert {'vm.pt', 'vm.json', 'orm.pt', 'orm.json', 'decode.jsonl', 'decode.json'} == set(
        os.listdir(tmp_path / 'replaced' / moved))


def test_a_damaged_checkpoint_is_named(tmp_path):
    path = tmp_path / 'sft.pt'
    torch.save({'model': {'w': torch.zeros(1000)}}, path)
    path.write_bytes(path.read_bytes()[:300])  # cut short, as a full disk or a copy interrupted would leave it
    with pytest.raises(SystemExit, match=r"sft\.pt is truncated or corrupt"):
        load_checkpoint(str(path))


def test_side_by_side_runs_assemble_into_one_results_json(tmp_path, monkeypatch):
    """Two RL seeds made by two processes on two machines (as config/repro.py's side-by-side form does): each
    leaves its own record, and results.json, assembled from all of them, has both seeds and both machines."""
    def history(seed):
        start = dict(iter=0, optimizer_steps=0, tokens_sampled=0, wall_total=0.0, test_pass1=0.1, test_pass1_sampled=0.1,
                     test_by_difficulty={1: 0.1})
        end = dict(iter=2, optimizer_steps=2, tokens_sampled=100, wall_total=5.0, items=8, effective_group_frac=0.5,
                   test_pass1=0.1 + seed % 2 / 10, test_pass1_sampled=0.2, test_by_difficulty={1: 0.2})
        return dict(iters=2, history=[start, end])
    fake_make(config(tmp_path), {'sft.pt'})
    for seed, host in ((1337, 'gpu-box'), (1338, 'laptop')):
        m = dict(device='cpu', name='x86_64', cpus=2, host=host)
        fake_make(config(tmp_path, f'--seed={seed}', '--seeds=1'), {f'rl_rest_grpo_seed{seed}.pt'},
                  result=lambda o: history(o.cfg.seed), machine=m, monkeypatch=monkeypatch)
    results = train.assemble_results(config(tmp_path, '--seeds=1'))  # any invocation sees every finished seed
    assert set(results['train']['rest_grpo']['seeds']) == {'1337', '1338'}
    assert results['train']['rest_grpo']['test_pass1'] == pytest.approx(0.15)
    hosts = {name: s['machines'][0]['host'] for name, s in results['stages'].items()}
    assert hosts['rl rest_grpo seed 1337'] == 'gpu-box' and hosts['rl rest_grpo seed 1338'] == 'laptop'
    text = open(report.write_report(results, str(tmp_path))).read()
    assert 'gpu-box' in text and 'laptop' in text
    # a seed made with another setting is left out of the table and named, not averaged in
    other = config(tmp_path, '--seed=1339', '--seeds=1', '--rl_lr=1e-3')
    fake_make(other, {'rl_rest_grpo_seed1339.pt'}, result=lambda o: history(1339))
    results = train.assemble_results(config(tmp_path))
    assert set(results['train']['rest_grpo']['seeds']) == {'1337', '1338'}
    assert results['left_out']['rl_rest_grpo_seed1339.pt'] == ['rl_lr: 0.001 then, 5e-05 now']
    assert json.loads(json.dumps(results)) == results  # what results.json holds
    # the SFT model (made with seed 1337) is the one a later RL seed's run reports from, not left out
    results = train.assemble_results(config(tmp_path, '--seed=1338', '--seeds=1'))
    assert 'sft' in results['stages'] and 'sft.pt' not in results.get('left_out', {})
