"""mcts.py, value.py and decode.py: selection, expansion and backup against hand-computed trees, budgets in
samples, value targets against a brute-force count; then the real adapters (policy, tests, VM) against independent
references, the collection and VM stages (incl. resume), and decoding that never runs hidden tests to choose."""
import json
import math
import os
import random
import shutil
import sys
from types import SimpleNamespace

import pytest
import tiktoken
import torch

sys.path.insert(0, os.path.join(os.path.dirname(__file__), '..'))
import decode  # noqa: E402
import mcts  # noqa: E402
import sandbox  # noqa: E402
from tasks import SPLIT_PATTERN  # noqa: E402
import value  # noqa: E402
from mcts import Draw, Node, Tree, best_sample, format_tree, run_search, uct, value_targets  # noqa: E402
from model import GPT, GPTConfig, ValueModel  # noqa: E402

PROMPT = 'P\n'
TASK = {'task_id': 't0', 'prompt': PROMPT}


class FakePolicy:
    """Draws from a table: state -> continuations (text, complete); the first ns[i] are returned. A draw costs
    one token per character (plus 1 for the end token of a complete program) and has log-prob -len(text)."""

    def __init__(self, table):
        self.table, self.calls = table, []

    def __call__(self, states, ns):
        self.calls.append((list(states), list(ns)))
        out = []
        for state, n in zip(states, ns):
            assert state.startswith(PROMPT)
            out.append([Draw(text, complete, len(text) + complete, -len(text))
                        for text, complete in self.table[state[len(PROMPT):]][:n]])
        return out


class FakeScorer:
    """Scores from a table keyed by (solution text, complete); records every job."""

    def __init__(self, table):
        self.table, self.jobs = table, []

    def __call__(self, jobs):
        self.jobs.extend(jobs)
        return [self.table[(text, complete)] for _, text, complete in jobs]


# the hand-made search: 3 samples an expansion, 2 children kept, budget 9 (three expansions)
POLICY = {'': [('a\nx\n', True), ('b\ny\n', True), ('a\nz\n', True)],
          'a\n': [('x\n', True), ('w\nq\n', True), ('x\n', True)],
          'a\nw\n': [('q\n', True), ('q\n', True), ('r\n', True)]}
SCORES = {('a\nx\n', True): 1.0, ('b\ny\n', True): 0.0, ('a\nz\n', True): 0.5, ('a\nw\nq\n', True): 0.2,
          ('a\nw\nr\n', True): 0.8}


def hand_tree(budget=9):
    tree, policy, scorer = Tree(TASK, budget), FakePolicy(POLICY), FakeScorer(SCORES)
    run_search([tree], policy, scorer, num_sample=3, num_decision=2, c=0.2, eps=0.1)
    return tree, policy, scorer


def test_uct_official_formula_by_hand():
    parent, ch = Node(), Node()
    parent.visit_count, ch.visit_count, ch.value_sum = 5, 4, 1.8
    # 0.45 + 0.2 * sqrt((1 + ln 5) / 4.1) = 0.45 + 0.2 * 0.797777
    assert uct(parent, ch, 0.2, 0.1) == pytest.approx(0.609555, abs=1e-6)


def test_hand_computed_search():
    # expansion 1, root: samples a/x 1.0, b/y 0, a/z .5 -> children a (2 samples, 1.5), b (1, 0)    root N=3 S=1.5
    # expansion 2: UCT a .75 + .2 sqrt(2.0986 / 2.1) = .9499 > b .2763; a draws x (twice: 1.0 each), w/q .2
    #              -> a's children x (terminal, 2, 2.0), w (1, .2)                                     root N=6 S=3.7
    # expansion 3: UCT a .74 + .1480 > b .3186; at a, x is complete (never selected): w; w draws q .2 twice, r .8
    #              -> w's children q (terminal, 2, .4), r (terminal, 1, .8)                            root N=9 S=4.9
    tree, policy, scorer = hand_tree()
    root = tree.root
    a, b = root.children['a\n'], root.children['b\n']
    x, w = a.children['x\n'], a.children['w\n']
    q, r = w.children['q\n'], w.children['r\n']
    expected = {root: (9, 4.9), a: (8, 4.9), b: (1, 0.0), x: (2, 2.0), w: (4, 1.4), q: (2, 0.4), r: (1, 0.8)}
    for node, (n, s) in expected.items():
        assert (node.visit_count, node.value_sum) == (n, pytest.approx(s)), node.text
    assert x.complete and q.complete and r.complete and not (a.complete or b.complete or w.complete)
    assert [ch.line for ch in a.kept] == ['x\n', 'w\n'] and [ch.line for ch in w.kept] == ['r\n', 'q\n']
    assert [s[0] for s, _ in policy.calls] == [PROMPT, PROMPT + 'a\n', PROMPT + 'a\nw\n']
    assert [ns for _, ns in policy.calls] == [[3], [3], [3]] and tree.expansions == 3
    assert [s.text for s in tree.samples] == ['a\nx\n', 'b\ny\n', 'a\nz\n', 'a\nx\n', 'a\nw\nq\n', 'a\nx\n',
                                              'a\nw\nq\n', 'a\nw\nq\n', 'a\nw\nr\n']
    assert [s.at for s in tree.samples] == [''] * 3 + ['a\n'] * 3 + ['a\nw\n'] * 3
    assert len(scorer.jobs) == 9 and all(complete for _, _, complete in scorer.jobs)  # every sample, once
    assert tree.tokens == sum(len(s.text) - len(s.at) + 1 for s in tree.samples)
    best = best_sample(tree)
    assert best is tree.samples[0] and best.score == 1.0  # the first of the best-scored


def test_a_node_whose_kept_children_are_complete_is_expanded_again():
    # budget 12: the 4th expansion selects a, then w, whose kept children (r, q) are complete programs: w is
    # expanded again (a revisit of a scored program would spend nothing and could stall the search)
    tree, policy, _ = hand_tree(budget=12)
    assert [s[0] for s, _ in policy.calls][-1] == PROMPT + 'a\nw\n' and len(policy.calls) == 4
    assert len(tree.samples) == 12 and tree.root.visit_count == 12


def test_terminal_revisits_cannot_stall_a_search():
    # every sample is a one-line complete program: all children terminal; the budget is still spent, 3 at a time
    tree, policy = Tree(TASK, 10), FakePolicy({'': [('x\n', True), ('y\n', True), ('x\n', True)]})
    run_search([tree], policy, FakeScorer({('x\n', True): 0.7, ('y\n', True): 0.1}), num_sample=3)
    assert [ns for _, ns in policy.calls] == [[3], [3], [3], [1]] and len(tree.samples) == 10
    x = tree.root.children['x\n']
    assert x.complete and x.visit_count == 7 and x.value_sum == pytest.approx(4.9)  # 2 + 2 + 2 + 1 samples
    assert tree.root.visit_count == 10 and tree.root.value_sum == pytest.approx(4.9 + 0.3)


def test_vm_search_values_children_by_their_states_and_counts_duplicates():
    scores = dict(SCORES)
    scores.update({('a\n', False): 0.6, ('b\n', False): 0.3})
    tree, scorer = Tree(TASK, 3), FakeScorer(scores)
    run_search([tree], FakePolicy(POLICY), scorer, num_sample=3, num_decision=2, value_states=True)
    a, b = tree.root.children['a\n'], tree.root.children['b\n']
    assert (a.visit_count, a.value_sum, a.state_value) == (2, pytest.approx(1.2), 0.6)  # 2 samples through a
    assert (b.visit_count, b.value_sum) == (1, pytest.approx(0.3))
    assert tree.root.value_sum == pytest.approx(1.5)
    assert [s.score for s in tree.samples] == [1.0, 0.0, 0.5]  # the samples keep their own scores: candidates
    assert scorer.jobs[3:] == [(TASK, 'a\n', False), (TASK, 'b\n', False)]  # each new child's state, once


def test_dead_end_at_the_root_ends_the_search_and_below_is_never_chosen_again():
    tree = Tree(TASK, 10)
    run_search([tree], FakePolicy({'': []}), FakeScorer({}), num_sample=3)
    assert tree.samples == [] and tree.budget == 0 and tree.root.dead_end
    # 'a\n' leaves no room: a dead end; the next expansion goes to b
    tree, policy = Tree(TASK, 6), FakePolicy({'': [('a\nx', False), ('b\nx\n', True)], 'a\n': [],
                                                'b\n': [('y\n', True), ('z\n', True)]})
    run_search([tree], policy, FakeScorer({('a\nx', False): 0.9, ('b\nx\n', True): 0.1, ('b\ny\n', True): 0.5,
                                           ('b\nz\n', True): 0.5}), num_sample=2)
    assert [s[0] for s, _ in policy.calls] == [PROMPT, PROMPT + 'a\n', PROMPT + 'b\n', PROMPT + 'b\n']
    assert tree.root.children['a\n'].dead_end and len(tree.samples) == 6
    assert "'a\\n'  N=1 V=0.900 [dead end]" in format_tree(tree.root)
    assert best_sample(tree).text in ('b\ny\n', 'b\nz\n')  # the cut 'a\nx' scored .9 but is not complete


class RandomPolicy(FakePolicy):
    """Any state -> random programs of 1-3 lines over 'abc' (seeded by the state and the call)."""

    def __init__(self, seed):
        super().__init__(None)
        self.rng = random.Random(seed)

    def __call__(self, states, ns):
        self.calls.append((list(states), list(ns)))
        out = []
        for n in ns:
            texts = [''.join(self.rng.choice('abc') + '\n' for _ in range(self.rng.randint(1, 3))) for _ in range(n)]
            out.append([Draw(t, self.rng.random() < 0.9, self.rng.randint(1, 9), -1.0) for t in texts])
        return out


def random_scorer(rng):
    return lambda jobs: [rng.choice([0.0, 0.25, 0.5, 1.0]) for _ in jobs]


def test_budget_is_spent_exactly_and_never_exceeded():
    rng = random.Random(1)
    for trial in range(100):
        budgets = [rng.randint(0, 40) for _ in range(3)]
        trees, policy = [Tree(dict(TASK, task_id=str(i)), b) for i, b in enumerate(budgets)], RandomPolicy(trial)
        run_search(trees, policy, random_scorer(rng), num_sample=rng.randint(1, 5),
                   num_decision=rng.choice([None, 1, 2, 3]), value_states=rng.random() < 0.5)
        assert [len(t.samples) for t in trees] == budgets
        assert [t.tokens for t in trees] == [sum(s.tokens for s in t.samples) for t in trees]
        assert [t.root.visit_count for t in trees] == budgets


def test_lock_step_one_policy_call_per_round_for_all_trees():
    trees = [Tree(dict(TASK, task_id=str(i)), b) for i, b in enumerate([3, 7, 10])]
    policy = RandomPolicy(0)
    run_search(trees, policy, random_scorer(random.Random(0)), num_sample=3)
    assert [ns for _, ns in policy.calls] == [[3, 3, 3], [3, 3], [1, 3], [1]]


def test_value_targets_against_a_brute_force_count():
    rng = random.Random(2)
    for trial in range(20):
        tree = Tree(TASK, 30)
        run_search([tree], RandomPolicy(trial), random_scorer(rng), num_sample=3)
        records = value_targets(tree)
        assert len(records) == 30
        for s, r in zip(tree.samples, records):
            assert (r['solution'], r['complete'], r['value']) == (s.text, s.complete, s.score)
            assert r['value_binary'] == float(s.score == 1.0)
            cuts = [i + 1 for i, ch in enumerate(s.text) if ch == '\n' and i + 1 >= len(s.at)]
            assert [step['end'] for step in r['steps']] == cuts
            for step in r['steps']:
                prefix = s.text[:step['end']]  # every sample through this prefix, drawn at it or above it
                through = [o.score for o in tree.samples if o.text.startswith(prefix) and len(o.at) <= step['end']]
                assert step['n'] == len(through) and step['value'] == pytest.approx(sum(through) / len(through))
                assert step['value_binary'] == pytest.approx(sum(x == 1.0 for x in through) / len(through))


def test_tree_printer_shows_lines_visits_values():
    tree, _, _ = hand_tree()
    assert format_tree(tree.root) == '\n'.join([
        "ROOT  N=9 V=0.544",
        "|-- 'a\\n'  N=8 V=0.613",
        "|   |-- 'x\\n'  N=2 V=1.000 [complete]",
        "|   `-- 'w\\n'  N=4 V=0.350",
        "|       |-- 'q\\n'  N=2 V=0.200 [complete]",
        "|       `-- 'r\\n'  N=1 V=0.800 [complete]",
        "`-- 'b\\n'  N=1 V=0.000"])


# -----------------------------------------------------------------------------
# the real adapters and stages, on a tiny policy trained for a second on two programs (byte-level BPE)


EOT, PAD = 256, 257
DEV = os.environ.get('RESTRL_TEST_DEVICE', 'cpu')  # e.g. cuda: the same tests on a GPU
TASKS = [dict(task_id='a', prompt='def f(xs):\n    """sort"""\n', tests=['assert f([2, 1]) == [1, 2]', 'assert f([]) == []'],
              difficulty=1, solution='    ys = sorted(xs)\n    return ys\n'),
         dict(task_id='b', prompt='def f(xs):\n    """reverse"""\n', tests=['assert f([1, 2]) == [2, 1]'],
              difficulty=2, solution='    ys = xs[::-1]\n    return ys\n')]


def make_cfg(**kw):
    cfg = dict(seed=0, device=DEV, max_new_tokens=48, eval_split='dev', mcts_batch_tasks=8, mcts_collect_samples=6,
               mcts_collect_tasks=0, vm_iters=20, vm_reads_logp=False, vm_eval_interval=10, vm_dev_tasks=0,
               decode_samples='1,4', seeds=1, decode_tasks=0)
    cfg.update(kw)
    return SimpleNamespace(**cfg)


@pytest.fixture(autouse=True)
def small_constants(monkeypatch):
    """Searches and value models for the toy policy: smaller than the official constants."""
    for name, v in dict(NUM_SAMPLE=3, NUM_DECISION=2, TEMPERATURE=1.0).items():
        monkeypatch.setattr(mcts, name, v)
    monkeypatch.setattr(value, 'BATCH_TASKS', 4)
    monkeypatch.setattr(value, 'LR', 1e-3)


@pytest.fixture(scope='module')
def enc():
    return tiktoken.Encoding(name='bytes', pat_str=SPLIT_PATTERN, special_tokens={'<|endoftext|>': EOT, '<|pad|>': PAD},
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


def test_policy_expander_draws_programs_with_their_mean_log_prob(policy, enc):
    stats, gen = {}, torch.Generator(device=DEV).manual_seed(0)
    expand = mcts.policy_expander(policy, enc, 40, 1.0, stats, gen)
    states = [TASKS[0]['prompt'], TASKS[1]['prompt'] + '    ys = xs[::-1]\n']
    out = expand(states, [3, 2])
    assert stats['calls'] == 2 and [len(d) for d in out] == [3, 2]  # one call per distinct number of samples
    for state, draws in zip(states, out):
        for d in draws:
            ids = enc.encode_ordinary(d.text) + ([EOT] if d.complete else [])
            assert d.tokens == len(ids) and (d.complete or d.tokens == 40)
            full = enc.encode_ordinary(state) + ids
            ref = policy.logprobs(torch.tensor([full], device=DEV))[0, len(full) - len(ids) - 1:]
            assert d.logp == pytest.approx(ref.mean().item(), rel=1e-4)  # by an independent full forward


def test_test_scorer_runs_hidden_tests():
    a = TASKS[0]
    jobs = [(a, a['solution'], True), (a, '    return [0]\n', True), (a, '    ys = sorted(xs)\n    ret', False)]
    assert mcts.test_scorer()(jobs) == [sandbox.run(a['prompt'] + text, a['tests']).reward for _, text, _ in jobs]
    assert mcts.test_scorer()(jobs)[:2] == [1.0, 0.0]


def test_value_scorer_equals_unpadded_single_forward(vm, enc):
    jobs = [(TASKS[0], '', False), (TASKS[1], TASKS[1]['solution'], True), (TASKS[0], '    ys = sorted(xs)\n', False)]
    got = value.value_scorer(vm, enc)(jobs)
    for (task, text, complete), v in zip(jobs, got):
        ids = enc.encode_ordinary(task['prompt'] + text) + ([EOT] if complete else [])
        assert v == pytest.approx(torch.sigmoid(vm(torch.tensor([ids], device=DEV))[0, -1]).item(), abs=1e-5)
    assert len(set(round(v, 4) for v in got)) == 3
    assert value.encode_state(enc, 'ab', 'cdef', True, 4) == ([ord('d'), ord('e'), ord('f'), EOT], 0)  # the tail
    assert value.encode_state(enc, 'abc', 'de', True, 5) == ([ord('b'), ord('c'), ord('d'), ord('e'), EOT], 2)


def test_line_scores_are_the_least_and_mean_value_over_line_prefixes(vm, enc):
    pool = [[Draw('    ys = sorted(xs)\n    return ys\n', True, 0, 0.0)], [Draw('    ys = xs\n    ret', False, 0, 0.0)]]
    got = decode.line_scores(vm, enc, TASKS, pool)
    for task, (d,), (v_min,), (v_mean,) in zip(TASKS, pool, got['prm_min'], got['prm_mean']):
        lines = d.text.splitlines(keepends=True)
        prefixes = [(''.join(lines[:k]), False) for k in range(1, len(lines) + 1) if lines[k - 1].endswith('\n')]
        prefixes.append((d.text, d.complete))
        ref = [torch.sigmoid(vm(torch.tensor([enc.encode_ordinary(task['prompt'] + p) + ([EOT] if c else [])],
                                             device=DEV))[0, -1]).item() for p, c in prefixes]
        assert v_min == pytest.approx(min(ref), abs=1e-5) and v_mean == pytest.approx(sum(ref) / len(ref), abs=1e-5)


def test_collect_value_targets_writes_records_and_resumes(policy, enc, tmp_path, monkeypatch):
    cfg = make_cfg()
    records = mcts.collect_value_targets(cfg, policy, enc, TASKS, str(tmp_path), DEV, log=lambda *a: None)
    path = tmp_path / 'value_targets.jsonl'
    assert records == [json.loads(line) for line in path.read_text().splitlines()]
    for task in TASKS:
        got = [r for r in records if r['task_id'] == task['task_id']]
        assert len(got) == cfg.mcts_collect_samples
        for r in got:
            assert r['prompt'] == task['prompt'] and 0 <= r['value'] <= 1
            assert r['value'] == sandbox.run(task['prompt'] + r['solution'], task['tests']).reward  # independent run
            assert all(0 <= step['value'] <= 1 and step['n'] >= 1 for step in r['steps'])
    # resume: a torn last line is cut, finished tasks are not searched again
    path.write_text(path.read_text() + '{"task_id": "b", "sol')
    monkeypatch.setattr(mcts, 'run_search', lambda *a, **k: pytest.fail('searched a finished task again'))
    assert mcts.collect_value_targets(cfg, policy, enc, TASKS, str(tmp_path), DEV, log=lambda *a: None) == records


def record(task_id, prompt, solution, reward, steps, complete=True):
    return dict(task_id=task_id, prompt=prompt, solution=solution, complete=complete, value=reward,
                value_binary=float(reward == 1.0),
                steps=[dict(end=end, value=v, value_binary=vb, n=n) for end, v, vb, n in steps])


def test_training_items_read_each_line_end_and_the_program_end(enc):
    sol = '    ys = sorted(xs)\n    return ys\n'
    r = record('a', TASKS[0]['prompt'], sol, 0.5, [[20, 0.75, 0.5, 4], [34, 0.5, 0.0, 2]])
    (task,) = value.training_items([r], enc, 96, 'partial')
    (item,) = task
    assert item['ids'] == enc.encode_ordinary(r['prompt'] + sol) + [EOT]
    assert item['start'] == len(enc.encode_ordinary(r['prompt']))
    assert [enc.decode([item['ids'][p]]) for p in item['pos'][:2]] == ['\n', '\n']
    assert enc.decode(item['ids'][:item['pos'][0] + 1]) == r['prompt'] + sol[:20]  # the first line's end
    assert item['pos'][2] == len(item['ids']) - 1 and item['tgt'] == [0.75, 0.5, 0.5]
    assert value.training_items([r], enc, 96, 'binary')[0][0]['tgt'] == [0.5, 0.0, 0.0]
    assert value.training_items([r], enc, 96, 'binary')[0][0]['reward'] == 0.0  # ranked by the same target
    assert value.training_items([r], enc, 96, 'partial', only_complete=True)[0][0]['pos'] == [len(item['ids']) - 1]
    # a long program keeps its tail: positions move with it, and a line end cut off the front is not read
    cut = len(item['ids']) - 15
    (short,) = value.training_items([r], enc, 15, 'partial')[0]
    assert item['pos'][0] < cut <= item['pos'][1]  # the first line end falls off the front
    assert short['ids'] == item['ids'][-15:] and short['start'] == 0
    assert short['pos'] == [p - cut for p in item['pos'][1:]] and short['tgt'] == [0.5, 0.5]


@pytest.mark.parametrize('reads_logp', [False, True])
def test_program_logits_equal_forward_with_each_prompt_run_once(policy, enc, reads_logp):
    torch.manual_seed(2)
    vm = ValueModel.from_policy(policy, reads_logp)
    torch.nn.init.normal_(vm.head.weight, std=0.5)
    if reads_logp:
        torch.nn.init.normal_(vm.logp_in, std=0.5)
    prompts = [enc.encode_ordinary(t['prompt']) for t in TASKS]
    sols = [['    ys = sorted(xs)\n    return ys\n', '    return xs\n', '    ys = xs\n'], ['    ys = xs[::-1]\n']]
    completions = [enc.encode_ordinary(s) + [EOT] for group in sols for s in group]
    z = vm.program_logits(prompts, completions, [3, 1], PAD)
    owners = [0, 0, 0, 1]
    for r, (p, c) in enumerate(zip([prompts[o] for o in owners], completions)):
        full = vm(torch.tensor([p + c], device=DEV), torch.tensor([len(p)], device=DEV))[0]
        torch.testing.assert_close(z[r, :len(c)], full[len(p):], atol=1e-5, rtol=1e-5)
    z[0, 3].backward()  # the gradient reaches the shared prompt's computation
    assert vm.gpt.transformer.wte.weight.grad.abs().sum() > 0


def test_shared_prompts_group_a_tasks_programs():
    a = [dict(ids=[1, 2, 3, 4], start=2), dict(ids=[1, 2, 5], start=2)]
    cropped = dict(ids=[2, 3, 9, 9], start=1)  # its front was cut: a prompt of its own
    b = [dict(ids=[7, 8], start=1), dict(ids=[9, 8], start=0)]
    prompts, counts, programs = value.shared_prompts([a + [cropped], b])
    assert prompts == [[1, 2], [2], [7], [9]] and counts == [2, 1, 1, 1]
    assert [cut for _, cut in programs] == [2, 2, 1, 1, 1]  # a program needs a prompt of one token at least


def test_vm_loss_by_hand(vm, enc):
    items = [[dict(ids=[1, 2, 3], start=1, pos=[1, 2], tgt=[0.5, 1.0], reward=1.0),
              dict(ids=[4, 5], start=1, pos=[1], tgt=[0.0], reward=0.0)],
             [dict(ids=[6, 7, 8], start=1, pos=[2], tgt=[0.3], reward=0.3)]]
    loss, parts = value.vm_loss(vm, items, 0.5, PAD, DEV)
    z = [vm(torch.tensor([it['ids']], device=DEV))[0] for task in items for it in task]
    read = [(z[0][1], 0.5), (z[0][2], 1.0), (z[1][1], 0.0), (z[2][2], 0.3)]
    mse = sum((torch.sigmoid(v) - y) ** 2 for v, y in read) / 4
    rank = -torch.log(torch.sigmoid(z[0][2] - z[1][1]))  # one pair: the same task, rewards 1 > 0
    assert parts['mse'] == pytest.approx(mse.item(), rel=1e-5) and parts['rank'] == pytest.approx(rank.item(), rel=1e-5)
    assert loss.item() == pytest.approx((mse + 0.5 * rank).item(), rel=1e-5)


def test_value_model_reading_log_probs_starts_at_the_running_mean_log_prob(policy, enc):
    vm = ValueModel.from_policy(policy, reads_logp=True)
    prompt, sol = TASKS[0]['prompt'], TASKS[0]['solution']
    ids, start = value.encode_state(enc, prompt, sol, True, 96)
    z = vm(torch.tensor([ids], device=DEV), torch.tensor([start], device=DEV))[0]
    lp = policy.logprobs(torch.tensor([ids], device=DEV))[0]  # lp[t - 1] = log pi(ids[t] | ids[:t])
    for t in range(start, len(ids)):  # a fresh head reads 0: z is the mean log-prob of the solution so far
        assert z[t].item() == pytest.approx(lp[start - 1:t].mean().item(), abs=1e-5)
    assert not any(p.requires_grad for p in vm.policy.parameters())  # the policy copy stays frozen
    z.sum().backward()
    assert vm.logp_scale.grad is not None and vm.logp_in.grad is not None


def test_dev_pool_is_kept_and_remade_when_the_policy_or_a_setting_changes(policy, enc, tmp_path, monkeypatch):
    spy = Spy(True)
    monkeypatch.setattr(sandbox, 'run_batch', spy)
    path, cfg = str(tmp_path / 'pool.pt'), make_cfg()
    first = value.dev_pool(cfg, policy, enc, TASKS, path, DEV)
    assert [len(d) for d in first['pool']] == [16, 16] and len(spy.calls) == 1
    assert value.dev_pool(cfg, policy, enc, TASKS, path, DEV)['pool'] == first['pool'] and len(spy.calls) == 1
    monkeypatch.setattr(mcts, 'TEMPERATURE', 0.5)
    value.dev_pool(cfg, policy, enc, TASKS, path, DEV)
    assert len(spy.calls) == 2  # another temperature: sampled and graded again
    other = GPT(policy.config).to(DEV)
    value.dev_pool(cfg, other, enc, TASKS, path, DEV)
    assert len(spy.calls) == 3  # another policy: the same


def synthetic_records():
    out = []
    for i in range(8):  # 8 tasks, a right and a wrong program each, with their line targets
        prompt = f'def f(xs):\n    """task {i}"""\n'
        out += [record(str(i), prompt, '    ys = sorted(xs)\n    return ys\n', 1.0, [[20, 0.9, 0.8, 5], [34, 1.0, 1.0, 2]]),
                record(str(i), prompt, '    ys = xs\n    return ys\n', 0.0, [[12, 0.1, 0.0, 3], [26, 0.0, 0.0, 2]])]
    return out


def synthetic_dev():
    tasks = [dict(task_id=f'd{i}', prompt=f'def f(xs):\n    """dev {i}"""\n') for i in range(3)]
    pool = [[Draw('    ys = xs\n    return ys\n', True, 9, -1.0), Draw('    ys = sorted(xs)\n    return ys\n', True, 9, -1.0)]
            for _ in tasks]
    return dict(tasks=tasks, pool=pool, passed=[[False, True] for _ in tasks])


@pytest.mark.parametrize('reads_logp', [False, True])
def test_train_value_model_keeps_the_best_dev_auc_resumes_and_orm_reads_programs_only(policy, enc, tmp_path,
                                                                                      reads_logp, monkeypatch):
    monkeypatch.setattr(value, 'LR', 3e-3)
    cfg = make_cfg(vm_iters=40, vm_eval_interval=10, vm_reads_logp=reads_logp)
    records, dev = synthetic_records(), synthetic_dev()
    full = value.train_value_model(cfg, policy, enc, records, dev, str(tmp_path / 'full.pt'), DEV, log=lambda *a: None)
    history = torch.load(tmp_path / 'full.pt', weights_only=False)['history']
    assert [h['iter'] for h in history] == [10, 20, 30, 40] and full['iters_trained'] == 40
    best = max(history, key=lambda h: h['dev_within_task_auc'])  # the first of the best
    assert full['iter'] == best['iter'] and full['dev_within_task_auc'] == 1.0  # the right program ranks first
    # the kept weights rank the dev pool as recorded (an independent read of the saved model)
    vm = value.load_value_model(str(tmp_path / 'full.pt'), DEV)
    assert vm.reads_logp == reads_logp
    scores = value.program_scores(vm, enc, dev['tasks'], dev['pool'])
    assert value.within_task_auc(scores, dev['passed']) == full['dev_within_task_auc']
    # interrupted after the first checkpoint, then resumed: the same run as the uninterrupted one
    def stop_at_first_eval(msg):
        if 'iter 10' in msg:
            raise KeyboardInterrupt
    with pytest.raises(KeyboardInterrupt):
        value.train_value_model(cfg, policy, enc, records, dev, str(tmp_path / 'cut.pt'), DEV, log=stop_at_first_eval)
    shutil.copy(tmp_path / 'cut.pt', tmp_path / 'lowered.pt')
    resumed = value.train_value_model(cfg, policy, enc, records, dev, str(tmp_path / 'cut.pt'), DEV, log=lambda *a: None)
    assert resumed == pytest.approx(full, rel=1e-4)  # exact on CPU; GPU sums may differ
    # resumed with vm_iters lowered to the step it stopped at: finished there, with that step's weights
    short = value.train_value_model(make_cfg(vm_iters=10, vm_eval_interval=10, vm_reads_logp=reads_logp),
                                    policy, enc, records, dev, str(tmp_path / 'lowered.pt'), DEV, log=lambda *a: None)
    assert short['iter'] == short['iters_trained'] == 10
    assert torch.load(tmp_path / 'lowered.pt', weights_only=False)['done']
    # ORM: complete programs only, read at their end
    logs = []
    value.train_value_model(cfg, policy, enc, records + [record('0', 'p\n', 'x', 0.0, [], complete=False)], dev,
                            str(tmp_path / 'orm.pt'), DEV, only_complete=True, log=logs.append)
    assert any('orm: 16 programs of 8 tasks' in m and 'line end' not in m for m in logs)


class Spy:
    """sandbox.run_batch stand-in with a fixed verdict; records every program it is given, and fails if a search
    is running (no search may run a test)."""

    def __init__(self, verdict):
        self.verdict, self.calls, self.searching = verdict, [], False

    def __call__(self, jobs, workers=None, **kw):
        assert not self.searching, 'a test ran inside a search'
        self.calls.append([program for program, _ in jobs])
        return [sandbox.Result(int(self.verdict), 1, 'ok', '') for _ in jobs]


def run_decoding(policy, vm, enc, monkeypatch, verdict):
    spy = Spy(verdict)
    monkeypatch.setattr(sandbox, 'run_batch', spy)
    monkeypatch.setattr(sandbox, 'run', lambda *a, **k: pytest.fail('sandbox.run called while decoding'))
    search = mcts.run_search

    def watched(*args, **kw):
        spy.searching = True
        try:
            return search(*args, **kw)
        finally:
            spy.searching = False
    monkeypatch.setattr(decode, 'run_search', watched)
    cfg = make_cfg(decode_samples='1,4', seeds=2)
    orm = ValueModel.from_policy(policy).eval()
    return decode.decode_compare(cfg, policy, vm, orm, enc, TASKS, DEV, log=lambda *a: None), spy


def test_decoding_never_runs_hidden_tests_to_choose_and_spends_n_samples(policy, vm, enc, monkeypatch):
    passing, spy = run_decoding(policy, vm, enc, monkeypatch, True)
    failing, again = run_decoding(policy, vm, enc, monkeypatch, False)
    # the verdicts differ, the programs chosen and graded do not: no choice read a test result
    assert spy.calls == again.calls
    # one grading per (method, N, seed) with one program per task, and one of each seed's pool of 4 x 2 tasks
    methods = len(decode.BEST_OF_N) + len(decode.SEARCHES)
    assert len(spy.calls) == 1 + 2 * (2 * methods + 1)
    assert sorted(map(len, spy.calls)) == [len(TASKS)] * (1 + 2 * 2 * methods) + [4 * len(TASKS)] * 2
    rows = passing['rows']
    assert rows[0]['method'] == 'greedy' and len(rows) == 1 + 2 * 2 * methods
    for r, r_fail in zip(rows[1:], failing['rows'][1:]):
        assert r['pass1'] == 1.0 and r_fail['pass1'] == 0.0
        assert r['samples'] == (1 if r['method'] == 'one_sample' else r['n'])
    assert passing['summary']['vm_mcts'][4]['seeds'] == 2 and passing['summary']['vm_mcts'][4]['samples'] == 4
    assert set(passing['ranking']) == {'likelihood', 'orm', 'vm', 'prm_min', 'prm_mean', 'random', 'oracle'}
    assert passing['ranking']['oracle']['pick_of_4'] == 1.0 and failing['ranking']['oracle']['pick_of_4'] == 0.0


def test_vm_mcts_answer_is_the_best_scored_complete_program(policy, enc):
    # a "VM" that loves one program: the search must return it
    target = TASKS[0]['solution']

    class Oracle(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.gpt = policy
            self.target = enc.encode_ordinary(TASKS[0]['prompt'] + target) + [EOT]

        def forward(self, idx, start=None):  # logit 5 at the end of the target program, else -1
            out = torch.full(idx.shape, -1.0, device=idx.device)
            n = len(self.target)
            if idx.size(1) >= n:
                out[(idx[:, :n] == torch.tensor(self.target, device=idx.device)).all(1), n - 1] = 5.0
            return out
    answers, samples, tokens = decode.search_answers(make_cfg(), policy, Oracle(), enc, TASKS[:1], 12,
                                                     torch.Generator(device=DEV).manual_seed(0), True)
    assert answers == [target] and samples == [12] and tokens[0] > 0


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
    assert value.within_task_auc(scores, passed) == pytest.approx(wins / pairs)
    assert value.within_task_auc([[0.9, 0.1]], [[True, False]]) == 1.0  # passing above failing
    assert value.within_task_auc([[0.1, 0.9]], [[True, False]]) == 0.0
    assert value.within_task_auc([[0.1, 0.9]], [[True, True]]) is None  # no mixed task: undefined
    # best-of-k on a hand-made pair of tasks: the scorer's pick, a random pick, and any pass among the first k
    scores, passed = [[0.2, 0.9, 0.5, 0.9], [0.7, 0.1, 0.3, 0.0]], [[True, False, True, True], [False, True, True, False]]
    assert value.pick_of_k(scores, passed, 1) == 0.5  # the first sample: pass, fail
    assert value.pick_of_k(scores, passed, 4) == 0.0  # 0.9 (index 1, the first of the tie) fails; 0.7 fails
    assert value.random_of_k(passed, 4) == (3 / 4 + 2 / 4) / 2 and value.oracle_of_k(passed, 2) == 1.0
    assert value.oracle_of_k([[False, False, True]], 2) == 0.0
    # a pick prefers a complete program, as decoding does; no sample, no pick
    assert value.pick([0.9, 0.5, 0.7], 3, [False, True, True]) == 2 and value.pick([0.9, 0.5], 2) == 0
    assert value.pick([0.9, 0.5], 2, [False, False]) == 0 and value.pick([], 4) is None
    assert value.pick_of_k([[0.9, 0.5]], [[False, True]], 2, [[False, True]]) == 1.0
    # Pearson over all samples, by the textbook formula
    x = [v for s in scores for v in s]
    y = [float(v) for p in passed for v in p]
    mx, my = sum(x) / len(x), sum(y) / len(y)
    r = sum((a - mx) * (b - my) for a, b in zip(x, y)) / math.sqrt(sum((a - mx) ** 2 for a in x) *
                                                                 sum((b - my) ** 2 for b in y))
    assert value.pearson(scores, passed) == pytest.approx(r)
    assert value.ranking(scores, passed, (1, 4, 16)).keys() == {'within_task_auc', 'pearson', 'pick_of_1', 'pick_of_4'}
