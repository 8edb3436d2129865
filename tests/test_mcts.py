"""mcts.py and decode.py: selection, expansion and backup against hand-computed trees, budgets, value
targets; then the real adapters (policy, rollouts + sandbox, VM) against independent references, the
collection and VM stages (incl. resume), and decoding that never runs hidden tests to choose."""
import json
import os
import random
import sys
from types import SimpleNamespace

import numpy as np
import pytest
import tiktoken
import torch

sys.path.insert(0, os.path.join(os.path.dirname(__file__), '..'))
import decode  # noqa: E402
import mcts  # noqa: E402
import sandbox  # noqa: E402
import tasks as T  # noqa: E402
from mcts import Node, Tree, best_program, format_tree, run_search, select, uct, value_targets  # noqa: E402
from model import GPT, GPTConfig, ValueModel  # noqa: E402

PROMPT = 'P\n'
TASK = {'task_id': 't0', 'prompt': PROMPT}


class FakePolicy:
    """Samples from a table: state -> samples (line, prior, terminal); the first ns[i] are returned.
    A sample costs len(line) tokens ('\\n' is the stop token) plus 1 for the end-of-solution token."""

    def __init__(self, table):
        self.table, self.calls = table, []

    def __call__(self, states, ns):
        self.calls.append((list(states), list(ns)))
        out = []
        for state, n in zip(states, ns):
            assert state.startswith(PROMPT)
            rows = self.table[state[len(PROMPT):]][:n]
            out.append(([(line, prior, term) for line, prior, term in rows],
                        sum(len(line) + term for line, _, term in rows)))
        return out


class FakeScorer:
    """Scores from a table keyed by (text, complete); records every job."""

    def __init__(self, table, rollout_tokens=0):
        self.table, self.rollout_tokens, self.jobs = table, rollout_tokens, []

    def __call__(self, jobs):
        self.jobs.extend(jobs)
        return [(self.table[(text, complete)], 0 if complete else self.rollout_tokens, None)
                for _, text, complete in jobs]


# the hand-made tree: '' -> a, b (a twice); 'a\n' -> c, end, d; 'b\n' -> e, e, f; 'a\nc\n' -> end x3
POLICY = {
    '': [('a\n', 0.5, False), ('b\n', 0.3, False), ('a\n', 0.5, False)],
    'a\n': [('c\n', 0.4, False), ('', 0.3, True), ('d\n', 0.2, False)],
    'b\n': [('e\n', 0.6, False), ('e\n', 0.6, False), ('f\n', 0.1, False)],
    'a\nc\n': [('', 0.9, True)] * 3,
}
SCORES = {('a\n', False): 0.5, ('b\n', False): 0.4, ('a\nc\n', False): 0.9, ('a\n', True): 0.3,
          ('a\nd\n', False): 0.1, ('b\ne\n', False): 0.0, ('b\nf\n', False): 0.2, ('a\nc\n', True): 1.0}


def hand_tree(iterations=6):
    tree = Tree(TASK)
    policy, scorer = FakePolicy(POLICY), FakeScorer(SCORES)
    run_search([tree], policy, scorer, iterations=iterations, num_sample=3, num_decision=2, c=0.2, eps=0.1)
    return tree, policy, scorer


def child(node, line, complete=False):
    (match,) = [ch for ch in node.children if ch.line == line and ch.complete == complete]
    return match


def test_uct_official_formula_by_hand():
    parent, ch = Node(), Node()
    parent.visit_count, ch.visit_count, ch.value_sum = 5, 4, 1.8
    # 0.45 + 0.2 * sqrt((1 + ln 5) / 4.1) = 0.45 + 0.2 * 0.797777
    assert uct(parent, ch, 0.2, 0.1) == pytest.approx(0.609555, abs=1e-6)
    ch.prior = 0.3  # PUCT: 0.45 + 0.2 * (0.3 / 0.6) * sqrt(5) / 5
    assert uct(parent, ch, 0.2, 0.1, prior_sum=0.6) == pytest.approx(0.45 + 0.1 * 5 ** 0.5 / 5)


def test_hand_computed_search():
    # it 1: root expands -> a .5, b .4 (a sampled twice: one child)             root N=2  S=.9
    # it 2: UCT a .748 > b .648; a expands -> c .9, end .3, d .1; d pruned      root N=5  S=2.2
    # it 3: UCT a .6096 < b .7080; b expands -> e 0, f .2                       root N=7  S=2.4
    # it 4: a .6195 > b .3950; c 1.1946 > end .5946; c expands -> end 1.0       root N=8  S=3.4
    # it 5: a .7154 > b .3993; c 1.1729 > end .6080; c's end is terminal: +1.0  root N=9  S=4.4
    # it 6: a .7781 > b .4031; c 1.1565 > end .6186; c's end again: +1.0        root N=10 S=5.4
    tree, policy, scorer = hand_tree()
    root = tree.root
    a, b = child(root, 'a\n'), child(root, 'b\n')
    c, a_end = child(a, 'c\n'), child(a, '', complete=True)
    c_end = child(c, '', complete=True)
    f, e = child(b, 'f\n'), child(b, 'e\n')
    expected = {root: (10, 5.4), a: (7, 4.8), b: (3, 0.6), c: (4, 3.9), a_end: (1, 0.3), c_end: (3, 3.0),
                f: (1, 0.2), e: (1, 0.0)}
    for node, (n, s) in expected.items():
        assert (node.visit_count, node.value_sum) == (n, pytest.approx(s)), node.text
    assert [ch.line for ch in a.children] == ['c\n', '']  # top num_decision=2 by value: d (.1) pruned
    assert [ch.line for ch in b.children] == ['f\n', 'e\n']  # sorted by value
    assert [s[0] for s, _ in policy.calls] == [PROMPT, PROMPT + 'a\n', PROMPT + 'b\n', PROMPT + 'a\nc\n']
    assert tree.iterations == 6 and tree.calls == 4
    # tokens: '' 2+2+2, 'a\n' 2+1+2, 'b\n' 2+2+2, 'a\nc\n' 1+1+1
    assert tree.tokens == 6 + 5 + 6 + 3
    assert best_program(tree) == 'a\nc\n'


def test_terminal_node_is_never_expanded():
    tree = Tree(TASK)
    policy = FakePolicy({'': [('x\n', 1.0, True)]})  # a one-line complete program, no newline after it
    scorer = FakeScorer({('x\n', True): 0.7})
    run_search([tree], policy, scorer, iterations=5, num_sample=3)
    (leaf,) = tree.root.children
    assert leaf.terminal and leaf.complete and leaf.reward == 0.7
    assert len(policy.calls) == 1 and len(scorer.jobs) == 1  # scored once, revisited 4 times
    assert (leaf.visit_count, leaf.value_sum) == (5, pytest.approx(3.5))
    assert (tree.root.visit_count, tree.root.value_sum) == (5, pytest.approx(3.5))


def test_dead_end_scores_zero_and_is_not_expanded_again():
    tree = Tree(TASK)
    policy = FakePolicy({'': [('a\n', 1.0, False)], 'a\n': []})  # every sample of 'a\n' ran past the limit
    run_search([tree], policy, FakeScorer({('a\n', False): 0.6}), iterations=4, num_sample=2)
    (a,) = tree.root.children
    assert a.terminal and not a.complete and a.reward == 0.0
    assert len(policy.calls) == 2  # root, then 'a\n' once
    assert (a.visit_count, a.value_sum) == (4, pytest.approx(0.6))  # .6, then 0 three times


class LazyRandomPolicy(FakePolicy):
    """Any state -> 3 lines drawn from 'abc' (seeded by the state): a tree with no terminals at all."""

    def __init__(self, seed):
        super().__init__(None)
        self.seed = seed

    def __call__(self, states, ns):
        out = []
        for state, n in zip(states, ns):
            rng = random.Random(f'{self.seed}|{state}')
            rows = [(rng.choice('abc') + '\n', rng.random(), False) for _ in range(n)]
            out.append((rows, 2 * n))
        return out


def test_value_targets_are_mean_of_scores_backed_up_through_each_node():
    rng = random.Random(0)
    for trial in range(5):
        scores = []  # (state text, score) of every scorer output
        def scorer(jobs):
            out = [(text, rng.random()) for _, text, _ in jobs]
            scores.extend(out)
            return [(v, 0, None) for _, v in out]
        tree = Tree(TASK)
        # 20 iterations expand at most 20 levels: no terminal or dead end, so every backed-up value
        # is one scorer output, and a node's value must be the mean of those produced at or below it
        run_search([tree], LazyRandomPolicy(trial), scorer, iterations=20, num_sample=3, num_decision=2)
        targets = {(text, complete): (v, n) for text, v, n, complete in value_targets(tree)}
        expanded = [node for node in all_nodes(tree.root) if node.expanded()]
        for node in all_nodes(tree.root):
            below = [v for text, v in scores if text.startswith(node.text)]  # root: every score
            assert node.visit_count == len(below), (trial, node.text)
            assert node.value_sum == pytest.approx(sum(below))
        for node in expanded:
            assert targets[(node.text, False)] == (pytest.approx(sum(v for t, v in scores if t.startswith(node.text)) /
                                                                 node.visit_count), node.visit_count)
        assert len(targets) == len(expanded) and len(expanded) == 20


def all_nodes(root):
    out, stack = [], [root]
    while stack:
        node = stack.pop()
        out.append(node)
        stack.extend(node.children)
    return out


class AbcPolicy(FakePolicy):
    """Any state -> the lines 'a\\n', 'b\\n', 'c\\n', ... (distinct), `cost` tokens each."""

    def __init__(self, cost=None):
        super().__init__(None)
        self.cost = cost or (lambda state, i: 2)

    def __call__(self, states, ns):
        self.calls.append((list(states), list(ns)))
        return [([('abcdefgh'[i] + '\n', 1.0, False) for i in range(n)],
                 sum(self.cost(state, i) for i in range(n))) for state, n in zip(states, ns)]


def flat_scorer(tokens=0):
    return lambda jobs: [(0.5, tokens, None) for _ in jobs]


def test_budget_hand_computed():
    # worst case 3 tokens a sample, 2 spent: left 20 -> 3 rows (6), 14 -> 3 (6), 8 -> 2 (4), 4 -> 1 (2), 2 -> stop
    tree, policy = Tree(TASK, budget=20), AbcPolicy()
    run_search([tree], policy, flat_scorer(), iterations=100, num_sample=3, line_tokens=3)
    assert [ns for _, ns in policy.calls] == [[3], [3], [2], [1]]
    assert tree.tokens == 18 and tree.calls == 4 and tree.done
    # with rollouts (<= 6 tokens, 5 spent) a sample costs 3 + 6 worst case, 2 + 5 spent:
    # left 40 -> 3 rows (6 + 15), 19 -> 2 rows (4 + 10), 5 -> stop
    tree, policy = Tree(TASK, budget=40), AbcPolicy()
    run_search([tree], policy, flat_scorer(5), iterations=100, num_sample=3, line_tokens=3, eval_tokens=6)
    assert [ns for _, ns in policy.calls] == [[3], [2]] and tree.tokens == 35
    # a reserve of 10 is kept while no complete program exists: left 10 -> 3 rows (6), 4 -> 1 (2), 2 -> stop
    tree, policy = Tree(TASK, budget=20), AbcPolicy()
    run_search([tree], policy, flat_scorer(), iterations=100, num_sample=3, line_tokens=3, reserve=10)
    assert [ns for _, ns in policy.calls] == [[3], [1]] and tree.tokens == 8


def test_budget_never_exceeded_and_used_up_to_the_last_affordable_sample():
    rng = random.Random(1)
    for _ in range(200):
        budget, line_tokens, eval_tokens = rng.randint(0, 300), rng.randint(1, 12), rng.choice([0, rng.randint(1, 20)])
        policy = AbcPolicy(lambda state, i: rng.randint(1, line_tokens))
        scorer = lambda jobs: [(rng.random(), rng.randint(0, eval_tokens), None) for _ in jobs]  # noqa: E731
        tree = Tree(TASK, budget=budget)
        run_search([tree], policy, scorer, iterations=10 ** 6, num_sample=rng.randint(1, 5),
                   num_decision=rng.randint(1, 3), line_tokens=line_tokens, eval_tokens=eval_tokens)
        assert tree.tokens <= budget
        assert budget - tree.tokens < line_tokens + eval_tokens  # stopped only when one more sample might not fit


def test_lock_step_one_policy_call_per_round_for_all_trees():
    trees = [Tree(dict(TASK, task_id=str(i)), budget=b) for i, b in enumerate([12, 30, None])]
    policy = AbcPolicy()
    run_search(trees, policy, flat_scorer(), iterations=6, num_sample=3, line_tokens=2)
    # 6 tokens a round: the 12-token tree affords 2 rounds, the 30-token one 5, the unlimited one all 6
    assert [len(states) for states, _ in policy.calls] == [3, 3, 2, 2, 2, 1]
    assert [t.tokens for t in trees] == [12, 30, 36] and [t.iterations for t in trees] == [2, 5, 6]


def test_tree_printer_shows_lines_visits_values():
    tree, _, _ = hand_tree()
    assert format_tree(tree.root) == '\n'.join([
        "ROOT  N=10 V=0.540",
        "|-- 'a\\n'  p=0.50  N=7 V=0.686",
        "|   |-- 'c\\n'  p=0.40  N=4 V=0.975",
        "|   |   `-- ''  p=0.90  N=3 V=1.000 [complete]",
        "|   `-- ''  p=0.30  N=1 V=0.300 [complete]",
        "`-- 'b\\n'  p=0.30  N=3 V=0.200",
        "    |-- 'f\\n'  p=0.10  N=1 V=0.200",
        "    `-- 'e\\n'  p=0.60  N=1 V=0.000"])


def test_puct_prefers_the_likelier_line_at_equal_value():
    root = Node()
    root.visit_count = 4
    for line, prior in [('x\n', 0.1), ('y\n', 0.3)]:
        ch = Node(line, line, prior)
        ch.visit_count, ch.value_sum = 2, 1.0
        root.children.append(ch)
    assert select(root, 0.2, 0.1, puct=True)[-1].line == 'y\n'
    assert select(root, 0.2, 0.1, puct=False)[-1].line == 'x\n'  # UCT ignores the prior: first on ties


# -----------------------------------------------------------------------------
# the real adapters and stages, on a tiny policy trained for a second on two programs (byte-level BPE)


EOT, PAD = 256, 257
DEV = os.environ.get('RESTRL_TEST_DEVICE', 'cpu')  # e.g. cuda: the same tests on a GPU
TASKS = [dict(task_id='a', prompt='def f(xs):\n    """sort"""\n', tests=['assert f([2, 1]) == [1, 2]', 'assert f([]) == []'],
              difficulty=1, solution='    ys = sorted(xs)\n    return ys\n'),
         dict(task_id='b', prompt='def f(xs):\n    """reverse"""\n', tests=['assert f([1, 2]) == [2, 1]'],
              difficulty=2, solution='    ys = xs[::-1]\n    return ys\n')]


def make_cfg(**kw):
    cfg = dict(seed=0, device=DEV, max_new_tokens=48, grad_clip=1.0,
               mcts_num_sample=3, mcts_num_decision=2, mcts_c_collect=0.2, mcts_c_decode=0.1, mcts_eps=0.1,
               mcts_puct=False, mcts_line_tokens=24, mcts_temperature=1.0, decode_temperature=1.0, mcts_batch_tasks=8,
               mcts_collect_iters=4, mcts_collect_tasks=0,
               vm_iters=20, vm_batch_size=8, vm_lr=1e-3, vm_val_frac=0.5, vm_visit_weight=False, vm_eval_interval=10,
               decode_budgets='60,150', seeds=1, decode_tasks=0, decode_max_iters=200, decode_reserve=30)
    cfg.update(kw)
    return SimpleNamespace(**cfg)


@pytest.fixture(scope='module')
def enc():
    return tiktoken.Encoding(name='bytes', pat_str=T.SPLIT_PATTERN, special_tokens={'<|endoftext|>': EOT, '<|pad|>': PAD},
                             mergeable_ranks={bytes([i]): i for i in range(256)})


@pytest.fixture(scope='module')
def policy(enc):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny matrices: threads only contend on a busy 2-core machine (30x slower)
    torch.manual_seed(0)
    model = GPT(GPTConfig(block_size=96, vocab_size=258, n_layer=2, n_head=2, n_embd=32)).to(DEV)
    seqs = [enc.encode_ordinary(t['prompt'] + t['solution']) + [EOT] for t in TASKS]
    x = torch.full((len(seqs), max(map(len, seqs))), PAD)
    for i, s in enumerate(seqs):
        x[i, :len(s)] = torch.tensor(s)
    y = x.masked_fill(x == PAD, -1)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    for _ in range(150):  # ~1 s: it then writes both programs, with a slip now and then at temperature 1
        _, loss = model(x[:, :-1].contiguous().to(DEV), y[:, 1:].contiguous().to(DEV))
        opt.zero_grad()
        loss.backward()
        opt.step()
    yield model.eval()
    torch.set_num_threads(threads)


@pytest.fixture(scope='module')
def vm(policy):
    torch.manual_seed(1)
    v = ValueModel.from_policy(policy)
    torch.nn.init.normal_(v.head.weight, std=0.5)  # not the constant 0.5 of a fresh head
    return v.eval()


def test_policy_expander_lines_priors_and_tokens(policy, enc):
    stats, gen = {}, torch.Generator(device=DEV).manual_seed(0)
    expand = mcts.policy_expander(policy, enc, 24, 1.0, stats, gen)
    states = [TASKS[0]['prompt'], TASKS[1]['prompt'] + '    ys = xs[::-1]\n', TASKS[0]['prompt'] + TASKS[0]['solution']]
    out = expand(states, [3, 2, 3])
    assert stats['calls'] == 2  # one call per distinct number of samples
    for state, n, (lines, tokens) in zip(states, [3, 2, 3], out):
        assert len(lines) == n  # this policy ends every line well within 24 tokens
        assert tokens == sum(len(enc.encode_ordinary(line)) + terminal for line, _, terminal in lines)  # '\n' or end token
        for line, prior, terminal in lines:
            assert terminal or (line.endswith('\n') and line.count('\n') == 1)
            ids = enc.encode_ordinary(state) + enc.encode_ordinary(line) + ([EOT] if terminal else [])
            ref = policy.logprobs(torch.tensor([ids], device=DEV))[0, len(enc.encode_ordinary(state)) - 1:].sum().exp()
            assert prior == pytest.approx(ref.item(), rel=1e-4)  # pi(line) by an independent full forward
    assert all(terminal and line == '' for line, _, terminal in out[2][0])  # after 'return ys': the end token


def test_rollout_scorer_runs_hidden_tests(policy, enc):
    stats = {}
    evaluate = mcts.rollout_scorer(policy, enc, 48, 0.0, stats, None)  # greedy: finishes on any device
    a = TASKS[0]
    jobs = [(a, a['solution'], True), (a, '    return [0]\n', True), (a, '', False), (a, '    ys = sorted(xs)\n', False)]
    out = evaluate(jobs)
    assert out[0] == (1.0, 0, None) and out[1] == (0.0, 0, None)  # complete: run as is, no tokens
    for (task, text, _), (value, tokens, rollout) in zip(jobs[2:], out[2:]):
        assert rollout.startswith(text) and tokens == len(enc.encode_ordinary(rollout[len(text):])) + 1
        assert value == sandbox.run(task['prompt'] + rollout, task['tests']).reward
    assert stats['calls'] == 1 and stats['tokens'] == out[2][1] + out[3][1]


def test_value_scorer_equals_unpadded_single_forward(vm, enc):
    jobs = [(TASKS[0], '', False), (TASKS[1], TASKS[1]['solution'], True), (TASKS[0], '    ys = sorted(xs)\n', False)]
    got = [v for v, _, _ in mcts.value_scorer(vm, enc)(jobs)]
    for (task, text, complete), v in zip(jobs, got):
        ids = enc.encode_ordinary(task['prompt'] + text) + ([EOT] if complete else [])
        assert v == pytest.approx(vm(torch.tensor([ids], device=DEV))[0, -1].item(), abs=1e-5)
    assert len(set(round(v, 4) for v in got)) == 3
    assert mcts.encode_state(enc, 'abcdef', True, 4) == [ord('d'), ord('e'), ord('f'), EOT]  # keeps the tail


def test_step_scores_are_values_of_each_line_prefix(vm, enc):
    programs = [('    ys = sorted(xs)\n    return ys\n', True), ('    ys = xs\n    ret', False)]
    got = decode.step_scores(vm, enc, TASKS, programs)
    for task, (sol, complete), (v_min, v_last) in zip(TASKS, programs, got):
        lines = sol.splitlines(keepends=True)
        prefixes = [(''.join(lines[:k]), False) for k in range(1, len(lines) + 1) if lines[k - 1].endswith('\n')]
        prefixes.append((sol, complete))
        ref = [vm(torch.tensor([enc.encode_ordinary(task['prompt'] + p) + ([EOT] if c else [])], device=DEV))[0, -1].item()
               for p, c in prefixes]
        assert v_min == pytest.approx(min(ref), abs=1e-5) and v_last == pytest.approx(ref[-1], abs=1e-5)


def test_collect_value_targets_writes_pairs_and_resumes(policy, enc, tmp_path, monkeypatch):
    cfg = make_cfg()
    pairs = mcts.collect_value_targets(cfg, policy, enc, TASKS, str(tmp_path), DEV, log=lambda *a: None)
    path = tmp_path / 'value_targets.jsonl'
    assert pairs == [json.loads(line) for line in path.read_text().splitlines()]
    by_task = {t['task_id']: [p for p in pairs if p['task_id'] == t['task_id']] for t in TASKS}
    for task in TASKS:
        got = by_task[task['task_id']]
        root = [p for p in got if p['state'] == task['prompt'] and not p['complete']]
        assert len(root) == 1 and root[0]['visits'] >= 4  # 4 iterations, each backs up >= 1 score
        for p in got:
            assert set(p) == {'task_id', 'state', 'value', 'visits', 'complete'} and 0 <= p['value'] <= 1
            if p['complete']:  # a complete program's target is its reward, by an independent sandbox run
                assert p['value'] == sandbox.run(p['state'], task['tests']).reward
    # resume: a torn last line is cut, finished tasks are not searched again
    path.write_text(path.read_text() + '{"task_id": "b", "sta')
    monkeypatch.setattr(mcts, 'run_search', lambda *a, **k: pytest.fail('searched a finished task again'))
    again = mcts.collect_value_targets(cfg, policy, enc, TASKS, str(tmp_path), DEV, log=lambda *a: None)
    assert again == pairs


def synthetic_pairs():
    pairs = []
    for i in range(8):  # 8 tasks: states with a value that depends on the text, complete and not
        prompt = f'def f(xs):\n    """task {i}"""\n'
        for sol, value, complete in [('', 0.5, False), ('    ys = sorted(xs)\n', 0.9, False),
                                     ('    ys = sorted(xs)\n    return ys\n', 1.0, True),
                                     ('    ys = xs\n', 0.1, False), ('    ys = xs\n    return ys\n', 0.0, True)]:
            pairs.append(dict(task_id=str(i), state=prompt + sol, value=value, visits=3, complete=complete))
    return pairs


def test_train_value_model_learns_resumes_and_orm_uses_complete_only(policy, enc, tmp_path):
    cfg, pairs = make_cfg(vm_iters=40, vm_eval_interval=20, vm_lr=3e-3), synthetic_pairs()
    full = mcts.train_value_model(cfg, policy, enc, pairs, str(tmp_path / 'full.pt'), DEV, log=lambda *a: None)
    assert full['val_mse'] < full['val_mse_of_mean'] and full['val_pearson'] > 0.5
    # the metrics by an independent computation: numpy on values read one state at a time
    vm = mcts.load_value_model(str(tmp_path / 'full.pt'), DEV)
    val = [p for p in pairs if p['task_id'] in mcts.held_out_tasks(pairs, cfg.vm_val_frac, cfg.seed)]
    v = np.array([vm(torch.tensor([mcts.encode_state(enc, p['state'], p['complete'], 96)], device=DEV))[0, -1].item()
                  for p in val])
    y = np.array([p['value'] for p in val])
    assert full['val_mse'] == pytest.approx(((v - y) ** 2).mean(), abs=1e-5)
    assert full['val_pearson'] == pytest.approx(np.corrcoef(v, y)[0, 1], abs=1e-4)
    # the saved weights are those of the validation step with the lowest MSE, not of the last step
    history = torch.load(tmp_path / 'full.pt', weights_only=False)['history']
    assert [h['iter'] for h in history] == [20, 40] and full['iters_trained'] == 40
    assert full['val_mse'] == min(h['val_mse'] for h in history)
    assert full['iter'] == min(history, key=lambda h: h['val_mse'])['iter']
    # interrupted after the first checkpoint, then resumed: the same model as the uninterrupted run
    def stop_at_first_eval(msg):
        if 'iter 20' in msg:
            raise KeyboardInterrupt
    with pytest.raises(KeyboardInterrupt):
        mcts.train_value_model(cfg, policy, enc, pairs, str(tmp_path / 'cut.pt'), DEV, log=stop_at_first_eval)
    resumed = mcts.train_value_model(cfg, policy, enc, pairs, str(tmp_path / 'cut.pt'), DEV, log=lambda *a: None)
    assert resumed == pytest.approx(full, rel=1e-4, nan_ok=True)  # exact on CPU; GPU sums may differ
    # ORM: complete programs only, same steps and batch size
    logs = []
    orm = mcts.train_value_model(cfg, policy, enc, pairs, str(tmp_path / 'orm.pt'), DEV, only_complete=True,
                                 log=logs.append)
    n_train = sum(p['complete'] and p['task_id'] not in mcts.held_out_tasks(pairs, cfg.vm_val_frac, cfg.seed)
                  for p in pairs)
    assert any(f'orm: {n_train} training pairs' in m for m in logs) and orm['iters_trained'] == full['iters_trained'] == 40


def test_decoding_never_runs_hidden_tests_to_choose_and_respects_budgets(policy, vm, enc, monkeypatch):
    graded = []

    def spy(jobs, workers=None, **kw):  # the grader's only door to the tests; answers pass iff they are right
        graded.append(jobs)
        return [sandbox.Result(1, 1, 'ok', '') for _ in jobs]
    monkeypatch.setattr(sandbox, 'run_batch', spy)
    monkeypatch.setattr(sandbox, 'run', lambda *a, **k: pytest.fail('sandbox.run called while decoding'))
    cfg = make_cfg(decode_budgets='60,150', seeds=2)
    orm = ValueModel.from_policy(policy).eval()
    results = decode.decode_compare(cfg, policy, vm, orm, enc, TASKS, DEV, log=lambda *a: None)
    rows = results['rows']
    assert [r['method'] for r in rows[:1]] == ['greedy'] and len(rows) == 1 + 5 * 2 * 2
    # exactly one grading call per (method, budget, seed), with one program per task and nothing else
    assert len(graded) == len(rows) and all(len(jobs) == len(TASKS) for jobs in graded)
    for jobs in graded:
        for (program, tests), task in zip(jobs, TASKS):
            assert program.startswith(task['prompt']) and tests == task['tests']
    for r in rows[1:]:
        assert 0 < r['tokens'] <= r['budget'] and r['pass1'] == 1.0
    assert results['summary']['vm_mcts'][150]['seeds'] == 2
    assert sorted({r['seed'] for r in rows[1:]}) == [cfg.seed, cfg.seed + 1]


def test_vm_mcts_answer_is_the_best_scored_complete_program(policy, enc):
    # a "VM" that loves one program: the search must return it (and stop within budget)
    target = TASKS[0]['solution']

    class Oracle(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.gpt = policy
            self.target = enc.encode_ordinary(TASKS[0]['prompt'] + target) + [EOT]

        def forward(self, idx):  # V = 1 at the end of the target program, else 0.2
            out = torch.full(idx.shape, 0.2, device=idx.device)
            n = len(self.target)
            if idx.size(1) >= n:
                out[(idx[:, :n] == torch.tensor(self.target, device=idx.device)).all(1), n - 1] = 1.0
            return out
    stats = {}
    answers, tokens = decode.mcts_answers(make_cfg(), policy, Oracle(), enc, TASKS[:1], 400, stats,
                                          torch.Generator(device=DEV).manual_seed(0))
    assert answers == [target] and 0 < tokens[0] <= 400


def test_headroom_counts_passing_samples_per_task(policy, enc, monkeypatch):
    # a grader that passes exactly the first sample of the first task: pass@1 = 1 / all samples, pass@n = 1 / tasks
    monkeypatch.setattr(sandbox, 'run_batch', lambda jobs, **kw: [sandbox.Result(int(i == 0), 1, 'ok', '')
                                                                  for i in range(len(jobs))])
    h = decode.headroom(policy, enc, TASKS, 3, 1.0, 16, torch.Generator(device=DEV).manual_seed(0))
    assert h == dict(pass1=1 / (3 * len(TASKS)), pass_n=1 / len(TASKS))


def test_within_task_ranking_metrics_against_brute_force_counts():
    rng = random.Random(0)
    scores = [[rng.choice([0.1, 0.2, 0.3, 0.5]) for _ in range(6)] for _ in range(40)]  # ties are common
    passed = [[rng.random() < q for _ in range(6)] for q in [rng.random() for _ in range(40)]]
    wins = pairs = 0
    for s, p in zip(scores, passed):  # every (passing, failing) pair of one task, one by one
        for i in range(6):
            for j in range(6):
                if p[i] and not p[j]:
                    pairs += 1
                    wins += 1.0 if s[i] > s[j] else 0.5 if s[i] == s[j] else 0.0
    assert decode.within_task_auc(scores, passed) == pytest.approx(wins / pairs)
    assert decode.within_task_auc([[0.9, 0.1]], [[True, False]]) == 1.0  # passing above failing
    assert decode.within_task_auc([[0.1, 0.9]], [[True, False]]) == 0.0
    assert decode.within_task_auc([[0.1, 0.9]], [[True, True]]) is None  # no mixed task: undefined
    # best-of-k on a hand-made pair of tasks: the scorer's pick, a random pick, and any pass among the first k
    scores, passed = [[0.2, 0.9, 0.5, 0.9], [0.7, 0.1, 0.3, 0.0]], [[True, False, True, True], [False, True, True, False]]
    assert decode.pick_of_k(scores, passed, 1) == 0.5  # the first sample: pass, fail
    assert decode.pick_of_k(scores, passed, 4) == 0.0  # 0.9 (index 1, the first of the tie) fails; 0.7 fails
    assert decode.random_of_k(passed, 4) == (3 / 4 + 2 / 4) / 2 and decode.oracle_of_k(passed, 2) == 1.0
    assert decode.oracle_of_k([[False, False, True]], 2) == 0.0
