"""restrl.py: advantages, GRPO and DPO losses against per-token Python references with autograd, the ReST filter
and prefix states, rollouts through the real sandbox, and tiny RL iterations of every method (incl. resume)."""
import copy
from contextlib import nullcontext
import math
import os
import sys
from collections import Counter
from types import SimpleNamespace

import numpy as np
import pytest
import tiktoken
import torch

sys.path.insert(0, os.path.join(os.path.dirname(__file__), '..'))
import restrl  # noqa: E402
from model import GPT, GPTConfig, Samples  # noqa: E402

# -----------------------------------------------------------------------------
# advantages


def ref_advantages(rows, eps, scale_by_std=True):
    out = []
    for r in rows:
        mean = sum(r) / len(r)
        std = math.sqrt(sum((x - mean) ** 2 for x in r) / len(r))  # population std
        out.append([0.0 if max(r) == min(r) else (x - mean) / ((std + eps) if scale_by_std else 1.0) for x in r])
    return out


def test_group_advantages_match_reference_and_flat_groups_are_exactly_zero():
    rows = [[0.0, 1.0, 0.0, 0.0], [0.3, 0.7, 0.1, 0.9], [0.1] * 4, [1.0] * 4, [0.0] * 4, [1 / 3] * 4]
    got = restrl.group_advantages(torch.tensor(rows), eps=1e-4)
    assert torch.allclose(got, torch.tensor(ref_advantages(rows, 1e-4)), atol=1e-5)
    assert (got[2:] == 0).all()  # exactly zero, not rounding noise
    # population std: [0, 1] -> std 0.5, so advantages are -+0.5/0.5 = -+1 (the sample std would give -+0.71)
    assert torch.allclose(restrl.group_advantages(torch.tensor([[0.0, 1.0]]), eps=0.0), torch.tensor([[-1.0, 1.0]]))
    dr = restrl.group_advantages(torch.tensor(rows), eps=1e-4, scale_by_std=False)  # Dr. GRPO: r - mean
    assert torch.allclose(dr, torch.tensor(ref_advantages(rows, 1e-4, scale_by_std=False)), atol=1e-6)


# -----------------------------------------------------------------------------
# GRPO loss: a per-token loop over Python scalars, differentiated by autograd


def ref_grpo(lp_rows, old_rows, ref_rows, adv, clip_eps, beta, token_level):
    leaves = [[torch.tensor(v, dtype=torch.float64, requires_grad=True) for v in row] for row in lp_rows]
    seq_losses, all_terms, clipped, ratios, kls = [], [], 0, [], []
    for row, old, ref, a in zip(leaves, old_rows, ref_rows, adv):
        terms = []
        for lp, o, r in zip(row, old, ref):
            ratio = torch.exp(lp - o)
            clip = torch.clamp(ratio, 1 - clip_eps, 1 + clip_eps)
            kl = torch.exp(r - lp) - (r - lp) - 1
            terms.append(-torch.min(ratio * a, clip * a) + beta * kl)
            clipped += int((ratio.item() > 1 + clip_eps and a > 0) or (ratio.item() < 1 - clip_eps and a < 0))
            ratios.append(ratio.item())
            kls.append(kl.item())
        seq_losses.append(sum(terms) / len(terms))
        all_terms += terms
    loss = sum(all_terms) / len(all_terms) if token_level else sum(seq_losses) / len(seq_losses)
    loss.backward()
    grads = [[v.grad.item() for v in row] for row in leaves]
    n = len(ratios)
    return loss.item(), grads, dict(clip_frac=clipped / n, kl=sum(kls) / n, ratio=sum(ratios) / n)


@pytest.mark.parametrize('token_level', [False, True])
def test_grpo_loss_value_gradient_and_stats_match_per_token_reference(token_level):
    g = torch.Generator().manual_seed(0)
    lengths = [5, 2, 7, 1]
    adv = [1.3, -0.7, 0.4, -2.0]  # both signs
    R, T = len(lengths), max(lengths)
    lp_rows = [(-torch.rand(n, generator=g) * 3).tolist() for n in lengths]
    # ratios far outside [0.8, 1.2] on both sides, and inside
    shifts = [[0.5, -0.5, 0.05, -0.05, 0.3], [-0.4, 0.4], [0.0, 0.25, -0.25, 0.1, -0.1, 1.0, -1.0], [0.6]]
    old_rows = [[lp - s for lp, s in zip(row, sh)] for row, sh in zip(lp_rows, shifts)]
    ref_rows = [[lp + 0.3 * torch.randn(1, generator=g).item() for lp in row] for row in lp_rows]
    # padded tensors with garbage (huge, nan) where mask is False
    logp = torch.full((R, T), 1e4)
    old = torch.full((R, T), float('nan'))
    ref = torch.full((R, T), -1e4)
    mask = torch.zeros(R, T, dtype=torch.bool)
    for i, n in enumerate(lengths):
        logp[i, :n], old[i, :n], ref[i, :n], mask[i, :n] = (torch.tensor(lp_rows[i]), torch.tensor(old_rows[i]),
                                                             torch.tensor(ref_rows[i]), True)
    logp.requires_grad_(True)
    loss, stats = restrl.grpo_loss(logp, old, ref, torch.tensor(adv), mask, clip_eps=0.2, kl_coef=0.05,
                                   token_level=token_level)
    loss.backward()
    want_loss, want_grads, want_stats = ref_grpo(lp_rows, old_rows, ref_rows, adv, 0.2, 0.05, token_level)
    assert loss.item() == pytest.approx(want_loss, abs=1e-5)
    for i, n in enumerate(lengths):
        assert torch.allclose(logp.grad[i, :n], torch.tensor(want_grads[i], dtype=torch.float32), atol=1e-5)
        assert (logp.grad[i, n:] == 0).all()  # pads get no gradient at all
    assert 0 < want_stats['clip_frac'] < 1  # the case really exercises the clip
    for k in ('clip_frac', 'kl', 'ratio'):
        assert stats[k] == pytest.approx(want_stats[k], abs=1e-5), k


def test_grpo_loss_flat_group_at_the_reference_is_zero():
    # "my loss is 0": zero advantages and policy == reference -> the loss and its gradient vanish
    logp = torch.log(torch.rand(4, 6)).requires_grad_(True)
    mask = torch.ones(4, 6, dtype=torch.bool)
    loss, stats = restrl.grpo_loss(logp, logp.detach(), logp.detach(), torch.zeros(4), mask)
    loss.backward()
    assert loss.item() == 0 and (logp.grad == 0).all() and stats['kl'] == 0 and stats['ratio'] == 1


# -----------------------------------------------------------------------------
# DPO loss


def test_dpo_loss_value_and_gradient_match_reference():
    g = torch.Generator().manual_seed(1)
    P, beta = 6, 0.3
    pc, pr, rc, rr = (-torch.rand(P, generator=g, dtype=torch.float64) * 20 for _ in range(4))
    leaves = [[torch.tensor(v.item(), dtype=torch.float64, requires_grad=True) for v in t] for t in (pc, pr)]
    terms = []
    for c, r, c0, r0 in zip(leaves[0], leaves[1], rc.tolist(), rr.tolist()):
        h = beta * ((c - c0) - (r - r0))
        terms.append(torch.log(1 + torch.exp(-h)))  # -log sigmoid(h)
    want = sum(terms) / P
    want.backward()
    pc_, pr_ = pc.clone().requires_grad_(True), pr.clone().requires_grad_(True)
    loss, stats = restrl.dpo_loss(pc_, pr_, rc, rr, beta)
    loss.backward()
    assert loss.item() == pytest.approx(want.item(), rel=1e-9)
    assert torch.allclose(pc_.grad, torch.tensor([v.grad.item() for v in leaves[0]], dtype=torch.float64))
    assert torch.allclose(pr_.grad, torch.tensor([v.grad.item() for v in leaves[1]], dtype=torch.float64))
    margins = beta * ((pc - rc) - (pr - rr))
    assert stats['reward_acc'] == pytest.approx((margins > 0).double().mean().item())
    assert stats['margin'] == pytest.approx(margins.mean().item())


# -----------------------------------------------------------------------------
# ReST filter and prefix states


def test_keep_groups_on_a_hand_made_batch():
    rewards = torch.tensor([
        [1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0],  # all pass: drop
        [0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0],  # all fail: drop
        [1.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0],  # binary, one success: std 0.33, keep
        [0.5, 0.4, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5],  # partial, one differs by 0.1: std 0.033 < 0.05, drop
        [0.5, 0.3, 0.5, 0.5, 0.5, 0.5, 0.5, 0.7],  # std 0.071, keep
    ])
    assert restrl.keep_groups(rewards, 0.05).tolist() == [False, False, True, False, True]
    assert restrl.keep_groups(rewards, 0.0).tolist() == [True] * 5  # threshold 0 keeps everything


SOLUTION = '    ys = sorted(xs)\n    ys = [y * 2 for y in ys]\n\n    return sum(ys)\n'  # 4 lines, one blank


def test_prefix_states_cut_whole_lines_the_full_program_included():
    rng = np.random.default_rng(0)
    lines = SOLUTION.split('\n')[:-1]
    seen = set()
    for _ in range(60):
        states = restrl.prefix_states(SOLUTION, rng, frac=0.5, alpha=0.95)
        assert len(states) == math.ceil(0.5 * 4)
        for body in states:  # whole lines: prompt + body is a valid prompt
            assert SOLUTION.startswith(body) and body.endswith('\n') and body
            seen.add(body.count('\n'))
            assert body == '\n'.join(lines[:body.count('\n')]) + '\n'
    assert seen == {1, 2, 3, 4}  # every prefix appears, the full program too (official)
    assert len(restrl.prefix_states(SOLUTION + '    x = 1\n', rng)) == 3  # ceil(0.5 * 5)
    assert restrl.prefix_states('    return xs\n', rng) == ['    return xs\n']  # one line
    # a truncated last line (cut at max_new_tokens) is a line like any other: the program as sampled
    cut = restrl.prefix_states('    ys = sorted(xs)\n    return su', np.random.default_rng(0))
    assert all(c in ('    ys = sorted(xs)\n', '    ys = sorted(xs)\n    return su\n') for c in cut)


def test_prefix_weights_favour_short_prefixes():
    rng = np.random.default_rng(123)
    solution = ''.join(f'    x{i} = {i}\n' for i in range(10))  # 10 lines -> prefixes of 1..10 lines
    for alpha in (0.95, 0.5):
        counts = Counter()
        for _ in range(4000):
            counts.update(s.count('\n') for s in restrl.prefix_states(solution, rng, 0.5, alpha))
        n = sum(counts.values())
        w = np.array([alpha ** (k - 1) for k in range(1, 11)])
        p = w / w.sum()
        for k in range(1, 11):  # within 4 binomial standard errors of alpha^(k-1) / sum
            assert abs(counts[k] / n - p[k - 1]) < 4 * math.sqrt(p[k - 1] * (1 - p[k - 1]) / n), (alpha, k)
        assert counts[1] > counts[10]


def test_state_pool_epochs_queue_and_resume():
    pool = restrl.StatePool(task_ids=[10, 11, 12, 13, 14], seed=0)
    first = pool.fresh(3) + pool.fresh(2)
    assert sorted(first) == [10, 11, 12, 13, 14]  # one epoch: every problem once
    second = pool.fresh(5)
    assert sorted(second) == sorted(first) and second != first  # the next epoch, reshuffled
    pool.queue += [(0, 'a\n'), (1, ''), (2, 'b\n')]
    saved = pool.state_dict()
    assert pool.take(2) == [(0, 'a\n'), (1, '')] and pool.queue == [(2, 'b\n')]  # in order, each once
    twin = restrl.StatePool([10, 11, 12, 13, 14], 0)
    twin.load_state_dict(saved)
    assert twin.take(2) == [(0, 'a\n'), (1, '')] and twin.fresh(4) == pool.fresh(4)


# -----------------------------------------------------------------------------
# rollouts and RL iterations on a tiny model: a byte-level tokenizer and three tiny tasks, built here

ENC = tiktoken.Encoding(name='bytes', pat_str=r"\n|[^\n]+", mergeable_ranks={bytes([i]): i for i in range(256)},
                        special_tokens={'<|endoftext|>': 256, '<|pad|>': 257})
TASKS = [  # (prompt, good solution, bad solution)
    ('def f(xs):\n    # double\n', '    ys = [x * 2 for x in xs]\n    return ys\n', '    return xs\n'),
    ('def f(xs):\n    # reverse\n', '    ys = xs[::-1]\n    return ys\n', '    return xs\n'),
    ('def f(xs):\n    # total\n', '    s = sum(xs)\n    return s\n', '    return 0\n'),
]
TESTS = [['assert f([1, 2]) == [2, 4]', 'assert f([]) == []'], ['assert f([1, 2]) == [2, 1]', 'assert f([3]) == [3]'],
         ['assert f([1, 2]) == 3', 'assert f([]) == 0']]
RL_TASKS = [dict(task_id=f'toy/{i}', prompt=p, entry_point='f', canonical_solution=good, test='', tests=tests,
                 difficulty=1) for i, ((p, good, _), tests) in enumerate(zip(TASKS, TESTS))]
EVAL_TASKS = [dict(t, task_id=f'dev/{i}') for i, t in enumerate(RL_TASKS)]  # stand-ins for the dev and test splits
TEST_TASKS = [dict(t, task_id=f'test/{i}') for i, t in enumerate(RL_TASKS)]


def make_cfg(**kw):
    cfg = dict(seed=0, max_new_tokens=48, eval_tasks=0, final_eval_tasks=0, eval_split='dev',
               eval_batch_size=16, dtype='float32', data_dir='data',
               rl_iters=1, rl_lr=1e-3, rl_batch_groups=3, rl_group_size=4,
               rl_temperature=1.0, rl_reward='binary', rl_min_difficulty=1, rl_filter_tasks=3,
               rl_std_threshold=0.05, rl_kl_coef=0.02, rl_inner_steps=1, rl_eval_interval=1, rl_test_interval=0)
    cfg.update(kw)
    return SimpleNamespace(**cfg)


@pytest.fixture(autouse=True)
def small_constants(monkeypatch):
    """The toy policy's filter rounds and micro-batches, smaller than the official constants."""
    monkeypatch.setattr(restrl, 'FILTER_SAMPLES', 4)
    monkeypatch.setattr(restrl, 'FILTER_TEMPERATURE', 1.0)
    monkeypatch.setattr(restrl, 'MICRO_BATCH', 5)


@pytest.fixture(scope='module', autouse=True)
def one_thread():
    """Tiny ops: one thread is faster, and far faster while other processes (the sandbox) hold the cores."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope='module')
def sft_policy():
    """A 1-layer GPT fitted to a good and a bad solution of every task: its samples get mixed rewards."""
    torch.manual_seed(0)
    model = GPT(GPTConfig(block_size=96, vocab_size=ENC.n_vocab, n_layer=1, n_head=2, n_embd=32))
    seqs = [(ENC.encode_ordinary(p), ENC.encode_ordinary(c) + [ENC.eot_token]) for p, g, b in TASKS for c in (g, b)]
    L = max(len(p) + len(c) for p, c in seqs)
    x, y = torch.zeros(len(seqs), L, dtype=torch.long), torch.full((len(seqs), L), -1)
    for i, (p, c) in enumerate(seqs):
        x[i, :len(p) + len(c)] = torch.tensor(p + c)
        y[i, len(p) - 1:len(p) + len(c) - 1] = torch.tensor(c)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    for _ in range(100):
        _, loss = model(x, y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval()


class ScriptedPolicy:
    """Stands in for GPT.sample: scripted completions (text, stopped), the same for every state (a list) or per
    state text (a dict)."""
    config = SimpleNamespace(block_size=1000)

    def __init__(self, script):
        self.script = script

    def eval(self):
        return self

    def sample(self, prompts, n, max_new_tokens, temperature, stop_ids, pad_id, generator):
        scripts = [self.script if isinstance(self.script, list) else self.script[ENC.decode(p)] for p in prompts]
        assert all(n == len(sc) for sc in scripts)
        rows = [ENC.encode_ordinary(t) + ([stop_ids[0]] if stop else []) for sc in scripts for t, stop in sc]
        T = max(len(r) for r in rows)
        tokens = torch.full((len(rows), T), pad_id)
        mask = torch.zeros(len(rows), T, dtype=torch.bool)
        for i, r in enumerate(rows):
            tokens[i, :len(r)], mask[i, :len(r)] = torch.tensor(r), True
        stopped = torch.tensor([stop for sc in scripts for _, stop in sc])
        return Samples(tokens, torch.where(mask, -1.0, 0.0), mask, stopped)


def test_rollout_crash_and_hang_cost_reward_zero_and_truncation_adds_no_end_token(monkeypatch):
    monkeypatch.setattr(restrl, 'TIMEOUT', 0.5)  # the hanging program's limit
    good = '    ys = [x * 2 for x in xs]\n    return ys\n'
    script = [(good, True), ('    return xs\n', True), ('    raise SystemExit(0)\n', True),
              ('    while True:\n        pass\n', True), ('    import os\n    os._exit(0)\n', True),
              (good, False), ('    ys = [x * 2 fo', False)]
    state = restrl.make_state(0, '', RL_TASKS, ENC)
    for reward in ('binary', 'partial'):  # binary: the sandbox stops at the first failing test
        cfg = make_cfg(rl_reward=reward)
        groups, info = restrl.rollout(ScriptedPolicy(script), ENC, [state, state], len(script), cfg)
        for g in groups:
            assert g['binary'].tolist() == [1, 0, 0, 0, 0, 1, 0]  # the run goes on; crash, hang, exit earn 0
            if reward == 'partial':
                assert g['reward'].tolist() == [1, 0.5, 0, 0, 0, 1, 0]  # 'return xs' passes f([]) == []
            else:
                assert torch.equal(g['reward'], g['binary'])
            assert g['ids'][0][-1] == ENC.eot_token and g['ids'][5][-1] != ENC.eot_token  # sampled tokens only
            assert g['texts'][5] == good and g['texts'][0] == good
        assert info['truncated'] == 4
        assert info['tokens'] == 2 * sum(len(ENC.encode_ordinary(t)) + s for t, s in script)


def test_completion_logprobs_equal_the_samplers(sft_policy):
    """The training forward scores exactly the tokens the KV-cache sampler drew (mixed prompt lengths)."""
    states = [restrl.make_state(i, p, RL_TASKS, ENC) for i, p in [(0, ''), (1, '    ys = xs[::-1]\n'), (2, '')]]
    s = sft_policy.sample([st['ids'] for st in states], n=3, max_new_tokens=20, stop_ids=(ENC.eot_token,),
                          pad_id=257, generator=torch.Generator().manual_seed(0))
    rows = s.rows()
    lp, mask = restrl.completion_logprobs(sft_policy, [states[r // 3]['ids'] for r in range(9)], rows, 257)
    assert torch.equal(mask, s.mask)
    assert torch.allclose(lp[mask], s.logp[s.mask], atol=1e-5)


BAD_DOUBLE = '    return xs\n'
FILTER_SCRIPT = {  # four samples per problem, partial reward (fraction of the two tests passed)
    RL_TASKS[0]['prompt']: [(TASKS[0][1], True), (BAD_DOUBLE, True), (TASKS[0][1], True), (BAD_DOUBLE, True)],
    RL_TASKS[1]['prompt']: [(TASKS[1][1], True)] * 4,  # all pass: std 0, dropped
    RL_TASKS[2]['prompt']: [('    return 0\n', True), ('    return None\n', True), ('    return 0\n', True),
                            ('    return None\n', True)],  # 0.5 and 0: kept, but its best (0.5) seeds no prefix
}


@pytest.mark.parametrize('method', ['rest_grpo', 'rest_dpo'])
def test_filter_round_keeps_varied_problems_and_builds_the_official_data_set(method):
    cfg = make_cfg(rl_reward='partial', rl_filter_tasks=3)
    pool = restrl.StatePool([0, 1, 2], seed=0)
    info = restrl.filter_round(method, ScriptedPolicy(FILTER_SCRIPT), ENC, pool, RL_TASKS, cfg, None,
                               np.random.default_rng(0))
    assert (info['problems'], info['kept']) == (3, 2) and info['items'] == len(pool.queue)
    assert info['tokens'] == sum(len(ENC.encode_ordinary(t)) + 1 for sc in FILTER_SCRIPT.values() for t, _ in sc)
    if method == 'rest_dpo':  # the (best, worst) pair of each kept problem's own samples
        pairs = sorted(pool.queue)
        assert [i for i, _, _ in pairs] == [0, 2]
        assert ENC.decode(pairs[0][1]) == TASKS[0][1] + '<|endoftext|>' and ENC.decode(pairs[0][2]).startswith(BAD_DOUBLE)
        assert ENC.decode(pairs[1][1]).startswith('    return 0\n')
        return
    fresh = sorted(i for i, p in pool.queue if p == '')
    prefixes = [(i, p) for i, p in pool.queue if p]
    assert fresh == [0, 2]  # the kept problems themselves
    assert len(prefixes) == 1 and prefixes[0][0] == 0  # ceil(0.5 * 2 lines) of problem 0's best program
    assert TASKS[0][1].startswith(prefixes[0][1]) and prefixes[0][1].endswith('\n')


def test_filter_keeps_every_prefix_state_with_room_for_a_token():
    first_line = TASKS[0][1].split('\n')[0] + '\n'
    room_for_one = len(ENC.encode_ordinary(RL_TASKS[0]['prompt'] + first_line)) + 1
    policy = ScriptedPolicy(FILTER_SCRIPT)
    policy.config = SimpleNamespace(block_size=room_for_one)  # the 1-line prefix fits, the full program does not
    cfg = make_cfg(rl_reward='partial', rl_filter_tasks=3)
    found = []
    for seed in range(10):
        pool = restrl.StatePool([0, 1, 2], seed=0)
        restrl.filter_round('rest_grpo', policy, ENC, pool, RL_TASKS, cfg, None, np.random.default_rng(seed))
        found += [p for _, p in pool.queue if p]
    assert found and set(found) == {first_line}


def test_online_queue_is_trained_in_order_and_filter_runs_only_when_it_runs_short(sft_policy):
    cfg = make_cfg(rl_batch_groups=2, rl_filter_tasks=3)
    pool = restrl.StatePool([0, 1, 2], seed=0)
    pool.queue = [(1, ''), (2, 'x\n'), (0, '')]
    items, info = restrl.next_items('rest_grpo', sft_policy, ENC, pool, RL_TASKS, cfg, torch.Generator().manual_seed(0),
                                    np.random.default_rng(0))
    assert items == [(1, ''), (2, 'x\n')] and info['rounds'] == 0  # enough queued: no filter round
    items, info = restrl.next_items('rest_grpo', sft_policy, ENC, pool, RL_TASKS, cfg, torch.Generator().manual_seed(0),
                                    np.random.default_rng(0))
    assert items[0] == (0, '') and info['rounds'] == 1 and info['tokens'] > 0  # the leftover first, then a new round
    items, info = restrl.next_items('grpo', sft_policy, ENC, restrl.StatePool([0, 1, 2], 0), RL_TASKS, cfg, None, None)
    assert len(items) == 2 and all(p == '' for _, p in items) and info['rounds'] == 0  # fresh problems, unfiltered


@pytest.fixture(autouse=True)
def fake_eval(monkeypatch):
    """Evaluation is tasks.py's (tested there); here we record which split train_rl evaluates on, and how: the
    eval tasks (EVAL_TASKS, the dev split) greedily, the test tasks (TEST_TASKS) greedily and sampled."""
    calls = []

    def evaluate_greedy(model, enc, task_list, *args, **kwargs):
        calls.append('dev' if task_list[0] in EVAL_TASKS else 'test')
        return {'pass1': 0.25, 'by_difficulty': {1: 0.25}, 'by_band': {'introductory': 0.25}, 'n': len(task_list)}

    def evaluate_sampled(model, enc, task_list, *args, **kwargs):
        calls.append('dev sampled' if task_list[0] in EVAL_TASKS else 'test sampled')
        return {'pass1': 0.5, 'by_difficulty': {1: 0.5}, 'by_band': {'introductory': 0.5}, 'n': len(task_list)}
    monkeypatch.setattr(restrl, 'evaluate_greedy', evaluate_greedy)
    monkeypatch.setattr(restrl, 'evaluate_sampled', evaluate_sampled)
    return calls


def weights(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


@pytest.mark.parametrize('method', restrl.METHODS)
def test_one_iteration_of_each_method_changes_the_weights(sft_policy, method, tmp_path, fake_eval):
    policy = copy.deepcopy(sft_policy)
    before = weights(policy)
    path = str(tmp_path / f'rl_{method}.pt')
    # G = 8, not 4: with 4, all of ReST-GRPO's groups in its one iteration came out flat on one machine's samples
    # (no gradient, nothing to check); 8 makes a group whose rewards vary all but certain
    hist = restrl.train_rl(make_cfg(rl_group_size=8), policy, ENC, RL_TASKS, EVAL_TASKS, TEST_TASKS, path, 'cpu',
                           method, log=lambda s: 0)
    assert [h['iter'] for h in hist] == [0, 1] and [h['optimizer_steps'] for h in hist] == [0, 1]
    assert hist[0]['test_pass1'] == hist[1]['test_pass1'] == 0.25 and hist[1]['test_pass1_sampled'] == 0.5
    # the start and the end: dev greedily, test greedily and sampled
    assert fake_eval == ['dev', 'test', 'test sampled'] * 2
    h = hist[1]
    assert h['items'] > 0 and h['tokens_sampled'] > 0
    assert (h['filter_rounds'] > 0) == restrl.METHODS[method]['filtered']
    if method != 'rest_dpo':
        assert 0 <= h['effective_group_frac'] <= 1 and h['sampler_logp_err'] < 1e-4
        assert h['ratio'] == 1.0 and h['clip_frac'] == 0  # one on-policy step: the ratio is exactly 1
        assert sum(c[1] for c in h['effective_groups_by_difficulty'].values()) == round(h['items'] * (1 - h['prefix_frac']))
    assert any(not torch.equal(before[k], v) for k, v in policy.state_dict().items())
    assert os.path.exists(path)


def test_start_evaluation_is_reused_only_for_the_same_weights_seed_and_settings(sft_policy, tmp_path, fake_eval):
    def run(method, policy=sft_policy, **over):  # each run its own checkpoint, all in one directory
        path = str(tmp_path / f'rl_{method}_{len(list(tmp_path.iterdir()))}.pt')
        return restrl.train_rl(make_cfg(**over), copy.deepcopy(policy), ENC, RL_TASKS, EVAL_TASKS, TEST_TASKS, path,
                               'cpu', method, log=lambda s: 0)
    first = run('grpo')
    assert fake_eval == ['dev', 'test', 'test sampled'] * 2
    fake_eval.clear()
    second = run('rest_grpo')  # another method from the same model and seed: only the end is evaluated
    assert fake_eval == ['dev', 'test', 'test sampled'] and second[0] == first[0]
    for change in (dict(seed=7), dict(max_new_tokens=40)):
        fake_eval.clear()
        run('grpo', **change)
        assert fake_eval == ['dev', 'test', 'test sampled'] * 2, change
    other = copy.deepcopy(sft_policy)
    with torch.no_grad():
        next(other.parameters()).add_(1e-3)
    fake_eval.clear()
    run('grpo', policy=other)
    assert fake_eval == ['dev', 'test', 'test sampled'] * 2


def test_second_step_on_a_batch_moves_the_ratio_and_the_clip_acts(sft_policy, tmp_path):
    cfg = make_cfg(rl_inner_steps=3, rl_lr=3e-2, rl_reward='partial')
    h = restrl.train_rl(cfg, copy.deepcopy(sft_policy), ENC, RL_TASKS, EVAL_TASKS, None, str(tmp_path / 'g.pt'), 'cpu',
                        'grpo', log=lambda s: 0)[-1]
    assert h['optimizer_steps'] == 3 and h['ratio'] != 1.0 and h['clip_frac'] > 0


@pytest.mark.parametrize('method', ['rest_grpo', 'rest_dpo'])
def test_resumed_run_equals_uninterrupted_run(sft_policy, tmp_path, method):
    cfg = make_cfg(rl_iters=3, rl_eval_interval=100, rl_batch_groups=2)  # the second iteration runs a filter round
    a = copy.deepcopy(sft_policy)
    hist_a = restrl.train_rl(cfg, a, ENC, RL_TASKS, EVAL_TASKS, None, str(tmp_path / 'a.pt'), 'cpu', method,
                             log=lambda s: 0)
    b = copy.deepcopy(sft_policy)
    restrl.train_rl(make_cfg(rl_iters=1, rl_eval_interval=100, rl_batch_groups=2), b, ENC, RL_TASKS, EVAL_TASKS, None,
                    str(tmp_path / 'b.pt'), 'cpu', method, log=lambda s: 0)
    b = copy.deepcopy(sft_policy)  # a fresh process would start again from the SFT model
    hist_b = restrl.train_rl(cfg, b, ENC, RL_TASKS, EVAL_TASKS, None, str(tmp_path / 'b.pt'), 'cpu', method,
                             log=lambda s: 0)
    for k, v in a.state_dict().items():
        assert torch.equal(v, b.state_dict()[k]), k
    assert hist_a[-1]['filter_rounds'] >= 2
    keep = ('reward', 'effective_group_frac', 'tokens_sampled', 'items', 'filter_kept', 'loss', 'optimizer_steps')
    assert [{k: h.get(k) for k in keep} for h in hist_a] == [{k: h.get(k) for k in keep} for h in hist_b]


def test_resume_refuses_another_setting_or_an_older_checkpoint(sft_policy, tmp_path):
    path = str(tmp_path / 'rl.pt')
    restrl.train_rl(make_cfg(), copy.deepcopy(sft_policy), ENC, RL_TASKS, EVAL_TASKS, None, path, 'cpu', 'grpo',
                    log=lambda s: 0)
    with pytest.raises(SystemExit, match=r"rl_lr=0\.001 \(this run: 0\.0003\)"):
        restrl.train_rl(make_cfg(rl_lr=3e-4, rl_iters=2), copy.deepcopy(sft_policy), ENC, RL_TASKS, EVAL_TASKS, None,
                        path, 'cpu', 'grpo', log=lambda s: 0)
    hist = restrl.train_rl(make_cfg(rl_iters=2, rl_eval_interval=5), copy.deepcopy(sft_policy), ENC, RL_TASKS,
                           EVAL_TASKS, None, path, 'cpu', 'grpo', log=lambda s: 0)  # more iterations: allowed
    assert [h['optimizer_steps'] for h in hist] == [0, 1, 2]
    ckpt = torch.load(path, weights_only=False)
    ckpt['pool'] = dict(epoch=0, cursor=3, buffer=[])  # what the online filter's runs saved
    torch.save(ckpt, path)
    with pytest.raises(SystemExit, match='earlier restrl'):
        restrl.train_rl(make_cfg(rl_iters=3), copy.deepcopy(sft_policy), ENC, RL_TASKS, EVAL_TASKS, None, path, 'cpu',
                        'grpo', log=lambda s: 0)


def test_hard_regime_pool_holds_only_hard_problems():
    hard = [dict(t, difficulty=d) for t, d in zip(RL_TASKS, (3, 7, 8))]
    assert restrl.rl_task_ids(hard, make_cfg(rl_min_difficulty=7)) == [1, 2]
    with pytest.raises(ValueError, match="rl_min_difficulty"):
        restrl.rl_task_ids(hard, make_cfg(rl_min_difficulty=9))


def test_shared_prompt_logprobs_and_gradients_equal_full_recompute():
    """completion_logprobs runs each group's prompt once; reference: every row's prompt + completion through
    the plain causal forward. Same log-probs and the same gradient of a weighted sum of them."""
    torch.manual_seed(0)
    model = GPT(GPTConfig(block_size=64, vocab_size=50, n_layer=2, n_head=2, n_embd=32))
    g = torch.Generator().manual_seed(1)
    prompts = [torch.randint(1, 50, (n,), generator=g).tolist() for n in (5, 11, 3)]
    G = 4
    comps = [torch.randint(1, 50, (int(torch.randint(1, 9, (1,), generator=g)),), generator=g).tolist()
             for _ in range(len(prompts) * G)]
    weights = torch.randn(len(comps), 8, generator=g)

    def reference():
        out = torch.zeros(len(comps), 8)
        for r, c in enumerate(comps):
            seq = torch.tensor([prompts[r // G] + c])
            lp = model.logprobs(seq)[0, len(prompts[r // G]) - 1:]  # log pi of each completion token
            out[r, :len(c)] = lp
        return out

    want = reference()
    (want * weights).sum().backward()
    want_grad = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    lp, mask = restrl.completion_logprobs(model, prompts, comps, pad=0)
    got = torch.where(mask, lp, 0.0)
    assert mask.sum(1).tolist() == [len(c) for c in comps]
    torch.testing.assert_close(got, want[:, :got.size(1)], atol=1e-5, rtol=1e-5)
    (got * weights[:, :got.size(1)]).sum().backward()
    for p, w in zip(model.parameters(), want_grad):
        torch.testing.assert_close(p.grad, w, atol=1e-5, rtol=1e-4)


def test_grpo_update_gradient_equals_one_full_recompute_pass(monkeypatch):
    """grpo_update (length-sorted micro-batches of whole groups, each prompt run once) against the plain
    computation: every row's prompt + completion through the model at once, grpo_loss over the batch."""
    torch.manual_seed(0)
    policy = GPT(GPTConfig(block_size=64, vocab_size=50, n_layer=2, n_head=2, n_embd=32))
    ref = copy.deepcopy(policy)
    with torch.no_grad():
        for p in ref.parameters():
            p.add_(0.01 * torch.randn_like(p))  # a reference that differs: the KL term has a gradient
    g = torch.Generator().manual_seed(2)
    G, batch = 4, []
    for n in (6, 9, 4):
        comps = [torch.randint(1, 50, (int(torch.randint(1, 10, (1,), generator=g)),), generator=g).tolist()
                 for _ in range(G)]
        batch.append(dict(state=dict(ids=torch.randint(1, 50, (n,), generator=g).tolist()), ids=comps,
                          logp=[torch.zeros(len(c)) for c in comps], reward=torch.rand(G, generator=g)))
    cfg = make_cfg()
    monkeypatch.setattr(restrl, 'MICRO_BATCH', G)  # one group per micro-batch
    grads = []

    def capture(model, optimizer):
        grads.append([p.grad.clone() for p in model.parameters()])
        model.zero_grad()
        return 0.0
    monkeypatch.setattr(restrl, '_step', capture)
    restrl.grpo_update(restrl.LogProbs(policy), ref, None, batch, cfg, 0, nullcontext())

    def full(model):  # (R, Tc) log-probs and mask by plain full recompute of each row
        rows = [(b['state']['ids'], c) for b in batch for c in b['ids']]
        lp = torch.zeros(len(rows), 9)
        mask = torch.zeros(len(rows), 9, dtype=torch.bool)
        for r, (p, c) in enumerate(rows):
            lp[r, :len(c)] = model.logprobs(torch.tensor([p + c]))[0, len(p) - 1:]
            mask[r, :len(c)] = True
        return lp, mask
    with torch.no_grad():
        ref_lp, _ = full(ref)
    lp, mask = full(policy)
    adv = restrl.group_advantages(torch.stack([b['reward'] for b in batch])).flatten()
    loss, _ = restrl.grpo_loss(lp, lp.detach(), ref_lp, adv, mask, restrl.CLIP_EPS, cfg.rl_kl_coef)
    loss.backward()
    for p, got in zip(policy.parameters(), grads[0]):
        torch.testing.assert_close(got, p.grad, atol=1e-6, rtol=1e-4)
