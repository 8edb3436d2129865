"""train.py: the strict configurator, and an interrupted SFT run that resumes to the same weights."""
import os
import sys

import pytest
import torch

sys.path.insert(0, os.path.join(os.path.dirname(__file__), '..'))
import train  # noqa: E402
from tasks import get_tokenizer, load_tasks  # noqa: E402

ROOT = os.path.join(os.path.dirname(__file__), '..')


def test_config_file_and_overrides(tmp_path):
    cfg_file = tmp_path / 'my.py'
    cfg_file.write_text("n_layer = 3\nsft_lr = 1e-3\n")
    config = train.configure([str(cfg_file), '--n_embd=64', '--method=grpo', '--sft_lr=2'])
    assert config['n_layer'] == 3 and config['n_embd'] == 64 and config['method'] == 'grpo'
    assert config['sft_lr'] == 2.0 and type(config['sft_lr']) is float  # an int is accepted for a float
    # a string key given digits stays the text typed, not an int or a tuple
    config = train.configure(['--decode_samples=16', '--out_dir=2026'])
    assert config['decode_samples'] == '16' and config['out_dir'] == '2026'
    assert train.configure(['--decode_samples=4,16'])['decode_samples'] == '4,16'


def test_unknown_key_is_named():
    with pytest.raises(train.ConfigError, match="unknown config key 'n_layers'"):
        train.configure(['--n_layers=3'])


def test_unknown_key_in_file_names_file_and_key(tmp_path):
    cfg_file = tmp_path / 'bad.py'
    cfg_file.write_text("learning_rate = 0.1\n")
    with pytest.raises(train.ConfigError, match=r"bad\.py: unknown config key 'learning_rate'"):
        train.configure([str(cfg_file)])


def test_wrong_type_is_named():
    with pytest.raises(train.ConfigError, match="key 'n_layer' wants int"):
        train.configure(['--n_layer=2.5'])
    with pytest.raises(train.ConfigError, match="key 'stage'"):
        train.configure(['--stage=nonsense'])
    with pytest.raises(train.ConfigError, match="key 'seeds' must be at least 1"):
        train.configure(['--seeds=0'])
    with pytest.raises(train.ConfigError, match="key 'rl_iters' must be at least 1"):  # no RL result without RL
        train.configure(['--rl_iters=0'])
    with pytest.raises(train.ConfigError, match="key 'restart' must be one of sft, rl, mcts, vm, decode"):
        train.configure(['--restart=everything'])
    with pytest.raises(train.ConfigError, match="key 'eval_split' must be one of sft, rl, dev, test"):
        train.configure(['--eval_split=valid'])
    with pytest.raises(train.ConfigError, match="key 'decode_samples'"):
        train.configure(['--decode_samples=16,lots'])


def test_missing_config_file():
    with pytest.raises(train.ConfigError, match="not found"):
        train.configure(['config/does_not_exist.py'])


def test_shipped_configs_parse():
    for name in os.listdir(os.path.join(ROOT, 'config')):
        if name.endswith('.py'):
            train.configure([os.path.join(ROOT, 'config', name)])


def _tiny_cfg(out_dir, **kw):
    config = train.configure(['--n_layer=1', '--n_head=2', '--n_embd=32', '--sft_iters=12',
                              '--sft_batch_size=8', '--sft_eval_interval=4', '--eval_tasks=8',
                              f'--out_dir={out_dir}', '--device=cpu'])
    config.update(kw)
    return train.SimpleNamespace(**config)


def test_interrupted_sft_resumes_to_identical_weights(tmp_path, monkeypatch):
    enc = get_tokenizer()
    sft = load_tasks(os.path.join(ROOT, 'data', 'sft.jsonl'))[:64]
    test = load_tasks(os.path.join(ROOT, 'data', 'test.jsonl'))[:8]
    monkeypatch.setattr(train, 'evaluate_greedy', lambda *a, **k: {'pass1': 0.0, 'by_difficulty': {}, 'by_band': {}, 'n': 0})
    monkeypatch.setattr(train, 'SFT_WARMUP_ITERS', 2)  # a 12-step run
    quiet = lambda *a: None  # noqa: E731

    straight = _tiny_cfg(str(tmp_path / 'a'))
    os.makedirs(straight.out_dir)
    model_a, _ = train.run_sft(straight, enc, sft, test, test, log=quiet)

    # crash right after the checkpoint of iteration 8, then rerun the same command
    resumed = _tiny_cfg(str(tmp_path / 'b'))
    os.makedirs(resumed.out_dir)
    real_save = train.save_checkpoint

    def save_then_crash(obj, path):
        real_save(obj, path)
        if obj['iter_num'] == 8:
            raise KeyboardInterrupt

    monkeypatch.setattr(train, 'save_checkpoint', save_then_crash)
    with pytest.raises(KeyboardInterrupt):
        train.run_sft(resumed, enc, sft, test, test, log=quiet)
    monkeypatch.setattr(train, 'save_checkpoint', real_save)
    model_b, _ = train.run_sft(resumed, enc, sft, test, test, log=quiet)

    for (name, a), (_, b) in zip(model_a.state_dict().items(), model_b.state_dict().items()):
        assert torch.equal(a, b), name
    # and a third call finds the stage complete and loads it instead of training again
    model_c, _ = train.run_sft(resumed, enc, sft, test, test, log=quiet)
    assert all(torch.equal(a, b) for a, b in zip(model_b.state_dict().values(), model_c.state_dict().values()))


def test_out_dir_of_another_model_is_refused(tmp_path, monkeypatch):
    enc = get_tokenizer()
    sft = load_tasks(os.path.join(ROOT, 'data', 'sft.jsonl'))[:16]
    monkeypatch.setattr(train, 'evaluate_greedy', lambda *a, **k: {'pass1': 0.0, 'by_difficulty': {}, 'by_band': {}, 'n': 0})
    cfg = _tiny_cfg(str(tmp_path), sft_iters=4)
    train.run_sft(cfg, enc, sft, sft, sft, log=lambda *a: None)
    bigger = _tiny_cfg(str(tmp_path), sft_iters=4, n_embd=64)
    with pytest.raises(SystemExit, match=r"n_embd=32 \(this run: 64\)"):
        train.run_sft(bigger, enc, sft, sft, sft, log=lambda *a: None)


def test_sft_tunes_on_dev_and_reports_on_test(tmp_path, monkeypatch):
    """Every periodic evaluation reads the eval split (dev); only the final evaluation reads test."""
    enc = get_tokenizer()
    sft = load_tasks(os.path.join(ROOT, 'data', 'sft.jsonl'))[:16]
    dev = load_tasks(os.path.join(ROOT, 'data', 'dev.jsonl'))[:8]
    test = load_tasks(os.path.join(ROOT, 'data', 'test.jsonl'))[:8]
    seen = []

    def evaluate_greedy(model, enc, task_list, *a, **k):
        seen.append({t['task_id'].split('/')[0] for t in task_list})
        return {'pass1': 0.0, 'by_difficulty': {}, 'by_band': {}, 'n': len(task_list)}
    monkeypatch.setattr(train, 'evaluate_greedy', evaluate_greedy)
    train.run_sft(_tiny_cfg(str(tmp_path), sft_iters=8), enc, sft, dev, test, log=lambda *a: None)
    assert seen == [{'dev'}, {'dev'}, {'test'}]  # iterations 4 and 8, then the final table


def test_sft_micro_batches_give_the_padded_batch_gradient():
    # Reference: the whole batch padded to its longest row in one pass, mean cross-entropy over its targets.
    from model import GPT, GPTConfig
    torch.manual_seed(0)
    lengths = torch.tensor([5, 17, 9, 30, 12, 3, 22, 8])
    x_all = torch.randint(0, 50, (8, 30))
    y_all = torch.randint(0, 50, (8, 30))
    for i, L in enumerate(lengths):
        x_all[i, L:] = 0
        y_all[i, :2] = -1  # a prompt
        y_all[i, L:] = -1  # padding
    model = GPT(GPTConfig(block_size=32, vocab_size=50, n_layer=2, n_head=2, n_embd=16))
    ix = torch.tensor([3, 0, 6, 1, 3, 5])  # a repeated row too
    _, ref = model(x_all[ix], y_all[ix])
    ref.backward()
    want = [p.grad.clone() for p in model.parameters()]
    for k in (1, 3, 6):
        model.zero_grad()
        loss, n = train.sft_backward(model, x_all, y_all, lengths, ix, k, 'cpu')
        assert n == int((y_all[ix] != -1).sum()) and abs(loss - ref.item()) < 1e-5
        for g, w in zip((p.grad for p in model.parameters()), want):
            torch.testing.assert_close(g, w, rtol=1e-4, atol=1e-6)
