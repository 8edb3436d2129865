"""
Generate the toy code benchmark (sft, rl, dev, test .jsonl) and train its BPE tokenizer.

    python data/prepare.py                         # everything, default knobs (about 6 minutes on 2 cores)
    python data/prepare.py --mutation_report       # mutation score of the shipped dev and test hidden tests
    python data/prepare.py --max_steps=8 --hard    # knobs: see Knobs below, or --help
    python data/prepare.py --tokenizer             # retrain only the tokenizer, from data/sft.jsonl

A task is a small program over an integer list: 1..K primitive steps, one line each, and a return:

    def f(xs):
        \"\"\"Sort the list in ascending order, then keep the first 2 elements. Return the sum.
        >>> f([3, 1, 2])
        3
        \"\"\"
        ys = sorted(xs)
        ys = ys[:2]
        return sum(ys)

Every program is run (in-process, it is our own code) on a fixed probe set of inputs to reject the
degenerate ones and to de-duplicate by behaviour; hidden tests are picked by mutation testing: every
single-step near miss of the solution that behaves differently on some candidate input fails at least one
hidden test; the sandbox then checks every canonical solution. Generation is stdlib only and seeded: the
same knobs give byte-identical files (tasks are built in parallel processes, each from its own seed).
"""

import argparse
import ast
import dataclasses
import hashlib
import json
import multiprocessing
import os
import random
import re
import sys
import textwrap
import time
from collections import Counter
from dataclasses import dataclass

DATA_DIR = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(DATA_DIR)

# -----------------------------------------------------------------------------
# the language: primitives (one line each) and returns
# (name, constant kind, sampling weight, expression, phrasings); {s} is the list read ('xs' in the
# first step, 'ys' after), {v} its element, {k} the constant. Weight 2 marks steps whose order
# matters most (take/drop around a sort, filters around maps with constants), so long programs
# cannot be solved by ignoring the order of the words.
PRIMITIVES = [
    ('sort', None, 2, 'sorted({s})',
     ['sort the list in ascending order', 'sort it from smallest to largest',
      'arrange the numbers in increasing order']),
    ('sort_desc', None, 1, 'sorted({s}, reverse=True)',
     ['sort the list in descending order', 'sort it from largest to smallest',
      'arrange the numbers in decreasing order']),
    ('reverse', None, 1, '{s}[::-1]',
     ['reverse the list', 'reverse the order of the elements', 'flip the list back to front']),
    ('add', 'amount', 2, '[{v} + {k} for {v} in {s}]',
     ['add {k} to every element', 'increase each number by {k}', 'shift every value up by {k}']),
    ('sub', 'amount', 1, '[{v} - {k} for {v} in {s}]',
     ['subtract {k} from every element', 'decrease each number by {k}', 'shift every value down by {k}']),
    ('mul', 'factor', 2, '[{v} * {k} for {v} in {s}]',
     ['multiply every element by {k}', 'scale each number by a factor of {k}',
      'replace each value by {k} times itself']),
    ('neg', None, 1, '[-{v} for {v} in {s}]',
     ['negate every element', 'flip the sign of each number', 'replace each value by its negative']),
    ('floordiv', 'factor', 1, '[{v} // {k} for {v} in {s}]',
     ['floor-divide every element by {k}', 'divide each number by {k}, rounding down',
      'replace each value by the floor of its quotient by {k}']),
    ('mod', 'factor', 1, '[{v} % {k} for {v} in {s}]',
     ['replace every element by its remainder modulo {k}', 'take each number mod {k}', 'reduce each value modulo {k}']),
    ('abs', None, 1, '[abs({v}) for {v} in {s}]',
     ['take the absolute value of every element', 'drop the sign of each number',
      'replace each value by its absolute value']),
    ('square', None, 1, '[{v} * {v} for {v} in {s}]',
     ['square every element', 'replace each number by its square', 'multiply each value by itself']),
    ('keep_even', None, 1, '[{v} for {v} in {s} if {v} % 2 == 0]',
     ['keep only the even numbers', 'remove the odd elements', 'filter out the odd values']),
    ('keep_odd', None, 1, '[{v} for {v} in {s} if {v} % 2 == 1]',
     ['keep only the odd numbers', 'remove the even elements', 'filter out the even values']),
    ('keep_gt', 'threshold', 2, '[{v} for {v} in {s} if {v} > {k}]',
     ['keep only the elements greater than {k}', 'remove every number that is not above {k}',
      'filter out the values of {k} or less']),
    ('keep_lt', 'threshold', 2, '[{v} for {v} in {s} if {v} < {k}]',
     ['keep only the elements less than {k}', 'remove every number that is not below {k}',
      'filter out the values of {k} or more']),
    ('keep_multiple', 'factor', 1, '[{v} for {v} in {s} if {v} % {k} == 0]',
     ['keep only the multiples of {k}', 'remove the numbers not divisible by {k}',
      'filter out the values that {k} does not divide']),
    ('take', 'count', 2, '{s}[:{k}]',
     ['keep the first {k} element{plural}', 'take the first {k} number{plural}',
      'cut the list after {k} element{plural}']),
    ('drop', 'count', 2, '{s}[{k}:]',
     ['drop the first {k} element{plural}', 'remove the first {k} number{plural}', 'skip the first {k} value{plural}']),
    ('take_last', 'count', 1, '{s}[-{k}:]',
     ['keep the last {k} element{plural}', 'take the final {k} number{plural}', 'keep only the last {k} value{plural}']),
    ('drop_last', 'count', 1, '{s}[:-{k}]',
     ['drop the last {k} element{plural}', 'remove the final {k} number{plural}', 'cut off the last {k} value{plural}']),
    ('rotate', 'count', 1, '{s}[{k}:] + {s}[:{k}]',
     ['rotate the list left by {k}', 'move the first {k} element{plural} to the end',
      'shift the list {k} place{plural} to the left, wrapping around']),
    ('every_other', None, 1, '{s}[::2]',
     ['keep every other element, starting with the first', 'keep the elements at even positions (0, 2, 4, ...)',
      'drop every second element']),
    ('dedupe', None, 1, 'list(dict.fromkeys({s}))',
     ['remove duplicates, keeping first occurrences', 'keep only the first occurrence of each number',
      'drop repeated values, keeping the first of each']),
    ('cumsum', None, 2, '[sum({s}[:i + 1]) for i in range(len({s}))]',
     ['replace the list by its running sums', 'take cumulative sums',
      'replace each element by the sum of it and everything before it']),
    ('diffs', None, 1, '[b - a for a, b in zip({s}, {s}[1:])]',
     ['replace the list by the differences of neighbouring elements (each minus the one before)',
      'take the differences between consecutive numbers (later minus earlier)',
      'replace each adjacent pair by the second minus the first']),
    ('cap', 'threshold', 1, '[min({v}, {k}) for {v} in {s}]',
     ['cap every element at {k}', 'replace each number above {k} by {k}', 'limit each value to at most {k}']),
    ('floor', 'threshold', 1, '[max({v}, {k}) for {v} in {s}]',
     ['raise every element below {k} to {k}', 'replace each number below {k} by {k}', 'make each value at least {k}']),
    ('append', 'amount', 1, '{s} + [{k}]',
     ['append {k}', 'put {k} at the end of the list', 'add {k} as a new last element']),
    ('prepend', 'amount', 1, '[{k}] + {s}',
     ['insert {k} at the front', 'put {k} at the start of the list', 'add {k} as a new first element']),
]
RETURNS = [  # (name, sampling weight, expression, phrasings)
    ('list', 3, '{s}', ['return the list', 'return the result', 'return the resulting list']),
    ('sum', 1, 'sum({s})', ['return the sum', 'return the total of the elements', 'return the sum of the numbers']),
    ('max', 1, 'max({s}, default=0)', ['return the largest element, or 0 if there is none',
                                       'return the maximum (0 for an empty list)']),
    ('min', 1, 'min({s}, default=0)', ['return the smallest element, or 0 if there is none',
                                       'return the minimum (0 for an empty list)']),
    ('len', 1, 'len({s})', ['return the length', 'return how many elements are left',
                            'return the number of elements']),
]
PRIM = {p[0]: p for p in PRIMITIVES}
RET = {r[0]: r for r in RETURNS}
CONNECTORS = [', then ', '; then ', ', and then ', '. Then ']
# Families of steps that a near miss confuses with each other (same constant): the "sibling" mutants.
FAMILIES = [('sort', 'sort_desc', 'reverse'), ('add', 'sub'), ('mul', 'floordiv', 'mod'), ('neg', 'abs', 'square'),
            ('keep_even', 'keep_odd'), ('keep_gt', 'keep_lt'), ('take', 'drop', 'take_last', 'drop_last', 'rotate'),
            ('cumsum', 'diffs'), ('cap', 'floor'), ('append', 'prepend'), ('every_other', 'dedupe')]
FAMILY = {name: fam for fam in FAMILIES for name in fam}


@dataclass
class Knobs:
    seed: int = 1337
    min_steps: int = 1            # difficulty = number of steps
    max_steps: int = 8
    primitives: str = 'all'       # comma-separated primitive names, or 'all'
    returns: str = 'all'          # comma-separated return names, or 'all'
    values: tuple = (-9, 9)       # elements of every input list
    amount: tuple = (1, 15)       # constants of add, sub, append, prepend
    threshold: tuple = (-9, 9)    # constants of keep_gt, keep_lt, cap, floor
    factor: tuple = (2, 6)        # constants of mul, floordiv, mod, keep_multiple
    count: tuple = (1, 6)         # constants of take, drop, take_last, drop_last, rotate
    list_len: tuple = (1, 8)      # lengths of hidden-test inputs (the empty list is always tested too)
    example_len: tuple = (3, 6)   # lengths of the docstring examples' inputs
    examples: tuple = (1, 3)      # docstring examples per task
    tests: tuple = (5, 10)        # hidden tests per task, before the mutation check adds what it needs
    pool: int = 48                # random candidate inputs per task for the hidden tests (plus the probe set)
    hard: bool = False            # example-only docstrings (programming by example, as DeepCoder)
    sft: int = 14000              # tasks, spread over the difficulties by sft_mix
    sft_mix: str = '1,1,1,1,1,1,0.2,0.1'  # relative share of sft tasks per difficulty min_steps..max_steps: few
    #                               long programs in the warm start make 7-8 steps the hard tail (results/README.md)
    sft_copies: int = 8           # a difficulty with fewer sft programs than its share (1 step: 154) writes each
    #                               up to this many times, with other words and examples (data/README.md)
    rl: int = 12000
    dev: int = 100                # tasks per difficulty: every tuning run and checkpoint choice reads dev
    test: int = 300               # tasks per difficulty: only the final tables read test
    max_abs: int = 999            # reject programs whose values leave [-max_abs, max_abs] on the probes
    max_chars: int = 800          # prompt + solution; examples are dropped (down to one) to fit
    patience: int = 4000          # consecutive rejected samples before a difficulty counts as exhausted
    verify: bool = True           # run every canonical solution in the sandbox
    workers: int = 0              # processes that build tasks (0: one per core); the bytes do not depend on it


SPLITS = ('sft', 'rl', 'dev', 'test')
HELD_OUT = ('test', 'dev')  # compositions of these splits occur in no other split


# -----------------------------------------------------------------------------
# programs: steps = ((name, k), ...), ret = name; run in-process on the probe set

_fn_cache = {}


def compiled(expr):
    """`lambda ys: expr`, compiled once: a step or a return as the very expression written into a solution."""
    if expr not in _fn_cache:
        _fn_cache[expr] = eval('lambda ys: ' + expr)
    return _fn_cache[expr]


def step_expr(name, k):
    return PRIM[name][3].format(s='ys', v='y', k=k)


def ret_expr(name):
    return RET[name][2].format(s='ys')


def step_fn(name, k):
    return compiled(step_expr(name, k))


def ret_fn(name):
    return compiled(ret_expr(name))


def run_program(steps, ret, xs):
    for name, k in steps:
        xs = step_fn(name, k)(xs)
    return ret_fn(ret)(xs)


def solution_code(steps, ret):
    lines = []
    for i, (name, k) in enumerate(steps):
        s = 'xs' if i == 0 else 'ys'
        lines.append(f"    ys = {PRIM[name][3].format(s=s, v=s[0], k=k)}\n")
    lines.append(f"    return {RET[ret][2].format(s='ys' if steps else 'xs')}\n")
    return ''.join(lines)


def digest(outputs):
    """Behaviour fingerprint: the outputs on the probe set, hashed (16 bytes, collisions negligible)."""
    return hashlib.blake2b(repr(outputs).encode(), digest_size=16).digest()


def constants(kind, kn):
    lo, hi = getattr(kn, kind)
    return list(range(lo, hi + 1))


def step_choices(kn):
    names = [p[0] for p in PRIMITIVES] if kn.primitives == 'all' else kn.primitives.split(',')
    for n in names:
        if n not in PRIM:
            raise ValueError(f"unknown primitive '{n}' (known: {', '.join(PRIM)})")
    return [(n, k) for n in names for k in (constants(PRIM[n][1], kn) if PRIM[n][1] else [None])]


def make_probes(rng, kn):
    """A fixed set of inputs: edge cases (empty, singletons, negatives, duplicates) and random lists."""
    lo, hi = kn.values
    probes = [[], [0], [hi], [lo], [lo, hi], [1, 1, 1], [3, -3, 3, -3], list(range(lo, hi + 1))]
    for _ in range(32):
        xs = [rng.randint(lo, hi) for _ in range(rng.randint(1, max(kn.list_len[1], 10)))]
        probes.append(xs)
    return probes


def short_behaviours(choices, rets, probes, max_len=2):
    """Fingerprints of EVERY program of 0..max_len steps, so a longer program equal to one is rejected."""
    found, level = [], [probes]  # level: the probe outputs of every list program of the current length
    for n in range(max_len + 1):
        found.append({digest([ret_fn(r)(o) for o in outs]) for outs in level for r in rets})
        if n < max_len:
            level = [[step_fn(*c)(o) for o in outs] for outs in level for c in choices]
    return found


def check_program(steps, ret, probes, short, kn):
    """Probe the program; None if it is degenerate, else its behaviour fingerprint."""
    inter = [probes]  # inter[i]: probe values before step i
    for name, k in steps:
        outs = [step_fn(name, k)(o) for o in inter[-1]]
        if outs == inter[-1]:
            return None  # a step that changes nothing on the probe set
        if max((abs(v) for o in outs for v in o), default=0) > kn.max_abs:
            return None  # values blow up: long numbers teach nothing
        inter.append(outs)
    final = [ret_fn(ret)(o) for o in inter[-1]]
    if Counter(map(repr, final)).most_common(1)[0][1] > len(final) / 2:
        return None  # (nearly) constant output: a constant guess would pass most tests
    if sum(y == x for x, y in zip(probes, final)) > len(final) / 2:
        return None  # (nearly) the identity: returning the input would pass most tests
    d = digest(final)
    if any(d in short[j] for j in range(min(len(steps), len(short)))):
        return None  # same behaviour as some program with fewer steps
    for i in range(len(steps)):  # ... or as this program with one step deleted
        outs = inter[i]
        for name, k in steps[i + 1:]:
            outs = [step_fn(name, k)(o) for o in outs]
        if digest([ret_fn(ret)(o) for o in outs]) == d:
            return None
    return d


def sample_program(rng, d, choices_by_name, weights, rets, ret_weights):
    names = rng.choices(list(choices_by_name), weights, k=d)
    steps = tuple(rng.choice(choices_by_name[n]) for n in names)
    return steps, rng.choices(rets, ret_weights)[0]


# -----------------------------------------------------------------------------
# mutants: the single-step near misses that the hidden tests must kill

SWAPS = [(' < ', ' > '), (' == ', ' != '), ('min(', 'max('), (' + ', ' - '), (' * ', ' // '), ('True', 'False'),
         ('[::2]', '[1::2]'), ('sorted(ys)', 'sorted(ys, reverse=True)')]


def expr_mutants(expr):
    """Near misses of one step or return expression: every integer literal moved by -3..+3, a comparison,
    min/max, +/-, * and //, True/False swapped, an off-by-one stride, a sort turned round."""
    out = []
    for m in re.finditer(r'\d+', expr):
        n = int(m.group())
        for d in (-3, -2, -1, 1, 2, 3):
            v = n + d
            out.append(expr[:m.start()] + (str(v) if v >= 0 else f'({v})') + expr[m.end():])
    for a, b in SWAPS:
        for x, y in ((a, b), (b, a)):
            i = expr.find(x)
            while i >= 0:
                out.append(expr[:i] + y + expr[i + len(x):])
                i = expr.find(x, i + 1)
    return out


def mutants(steps, ret):
    """Every single-step mutant of a program, as (i, exprs, ret_expr): the program's first i steps, then the
    step expressions `exprs`, then the return. Mutations: a step's expression edited (expr_mutants), a sibling
    step of its family with the same constant, a step dropped, two neighbouring steps swapped, another return."""
    exprs = [step_expr(n, k) for n, k in steps]
    r = ret_expr(ret)
    out = [(0, (), r)]  # no steps at all
    for i, (name, k) in enumerate(steps):
        rest = tuple(exprs[i + 1:])
        alts = expr_mutants(exprs[i]) + [step_expr(s, k) for s in FAMILY.get(name, ()) if s != name
                                         if (PRIM[s][1] is None) == (k is None)]
        out += [(i, (e,) + rest, r) for e in alts]
        out.append((i, rest, r))  # step i dropped
        if i + 1 < len(steps):
            out.append((i, (exprs[i + 1], exprs[i]) + tuple(exprs[i + 2:]), r))
    n = len(steps)
    out += [(n, (), e) for e in expr_mutants(r)]
    if ret != 'list':  # another number-valued return
        out += [(n, (), ret_expr(o)) for o in RET if o not in ('list', ret)]
    return out


def behaviour(inputs, exprs, ret):
    """repr of the output on each input ('raises X' where it raises): repr tells 1 from True and [1] from (1,)."""
    fns, rf, out = [compiled(e) for e in exprs], compiled(ret), []
    for ys in inputs:
        try:
            for fn in fns:
                ys = fn(ys)
            out.append(repr(rf(ys)))
        except Exception as e:  # a mutant may divide by zero
            out.append('raises ' + type(e).__name__)
    return out


def mutant_behaviours(steps, ret, inputs):
    """The original's outputs on `inputs` and every distinct mutant's, each run from the original's values
    before the step it changes."""
    inter = [list(inputs)]  # inter[i]: the values before step i
    for name, k in steps:
        fn = step_fn(name, k)
        inter.append([fn(ys) for ys in inter[-1]])
    want = behaviour(inter[-1], (), ret_expr(ret))
    seen, outs = set(), []
    for i, exprs, r in mutants(steps, ret):
        key = (tuple(step_expr(*s) for s in steps[:i]) + exprs, r)
        if key not in seen:
            seen.add(key)
            outs.append(behaviour(inter[i], exprs, r))
    return want, outs


# -----------------------------------------------------------------------------
# one task: docstring, examples, hidden tests

def random_list(rng, lo_len, hi_len, kn):
    return [rng.randint(*kn.values) for _ in range(rng.randint(lo_len, hi_len))]


def pick_tests(rng, steps, ret, kn, avoid, probes):
    """Hidden-test inputs: the empty list and one with negatives and duplicates, then greedily the input that
    kills the most mutants still alive, until every mutant that differs from the program on some candidate
    (kn.pool random lists, then the probe set) fails a test; then more, up to a random count in kn.tests.
    Ties go to short random lists, to outputs within max_abs, and away from tests a trivial body passes too
    (output == input while one such test is in already, or an output used twice)."""
    dup = random_list(rng, max(3, kn.list_len[0]), max(3, kn.list_len[1]), kn)
    dup[0], dup[-1] = (-abs(dup[0]) or -1) if kn.values[0] < 0 else dup[0], dup[1]
    forced = [x for x in ([], dup) if repr(x) not in avoid]
    pool, is_random = [], []  # candidate inputs, and whether each is one of our random lists (not a probe)
    for x, rand in [(x, True) for x in forced + [random_list(rng, *kn.list_len, kn) for _ in range(kn.pool)]] + \
                   [(x, False) for x in probes]:
        if repr(x) not in avoid and x not in pool:
            pool.append(x)
            is_random.append(rand)
    want, outs = mutant_behaviours(steps, ret, pool)
    alive = [m for m in outs if m != want]  # the distinguishable mutants
    ok = [max((abs(int(v)) for v in re.findall(r'-?\d+', w)), default=0) <= kn.max_abs for w in want]
    chosen, n_tests = list(range(len(forced))), rng.randint(*kn.tests)
    while True:
        alive = [m for m in alive if all(m[c] == want[c] for c in chosen)]
        if not alive and len(chosen) >= min(n_tests, len(pool)):
            break
        outputs = Counter(want[c] for c in chosen)
        n_identity = sum(want[c] == repr(pool[c]) for c in chosen)
        strong = lambda i: not ((want[i] == repr(pool[i]) and n_identity) or outputs[want[i]] >= 2)
        score = lambda i: (sum(m[i] != want[i] for m in alive), is_random[i], ok[i], strong(i), want[i] not in outputs)
        chosen.append(max((i for i in range(len(pool)) if i not in chosen), key=score))
    return [(pool[i], run_program(steps, ret, pool[i])) for i in chosen]


def pick_examples(rng, steps, ret, kn, n):
    """Docstring examples: short inputs whose output differs from the input, distinct outputs (longer
    inputs if short ones cannot show the step, e.g. 'take the first 6'; at worst any input)."""
    picked = []
    for attempt in range(40 * n):
        lo, hi = kn.example_len if attempt < 20 * n else (kn.example_len[0], max(kn.list_len[1], kn.example_len[1]))
        x = random_list(rng, lo, hi, kn)
        y = run_program(steps, ret, x)
        if y != x and all(repr(y) != repr(py) for _, py in picked):
            picked.append((x, y))
        if len(picked) == n:
            break
    return picked or [(x, y)]


def describe(rng, steps, ret):
    phrases = []
    for name, k in steps:
        phrases.append(rng.choice(PRIM[name][4]).format(k=k, plural='' if k == 1 else 's'))
    text = phrases[0]
    for p in phrases[1:]:
        text += rng.choice(CONNECTORS) + p
    text = f"{text}. {rng.choice(RET[ret][3])}."
    return '. '.join(s[0].upper() + s[1:] for s in text.split('. '))


def make_prompt(words, examples):
    doc = textwrap.fill(words, width=96, initial_indent='    """', subsequent_indent='    ',
                        break_on_hyphens=False) + '\n' if words else '    """\n'
    for x, y in examples:
        doc += f"    >>> f({x!r})\n    {y!r}\n"
    return f'def f(xs):\n{doc}    """\n'


def make_task(rng, steps, ret, kn, probes):
    examples = pick_examples(rng, steps, ret, kn, rng.randint(*kn.examples))
    # no hidden test repeats an example: a body that looks the examples up earns nothing
    tests = pick_tests(rng, steps, ret, kn, {repr(x) for x, _ in examples}, probes)
    words = '' if kn.hard else describe(rng, steps, ret)
    solution = solution_code(steps, ret)
    while len(examples) > 1 and len(make_prompt(words, examples) + solution) > kn.max_chars:
        examples.pop()
    # f is called once per test and the type is checked too, so an object whose __eq__ always
    # returns True (a list or int subclass included) fails every test
    tname = 'list' if ret == 'list' else 'int'
    check = (f"def check(candidate):\n    for x, y in [{', '.join(f'({x!r}, {y!r})' for x, y in tests)}]:\n"
             f"        r = candidate(x); assert type(r) is {tname} and r == y, (x, r, y)\n")
    return dict(prompt=make_prompt(words, examples), entry_point='f', canonical_solution=solution, test=check,
                tests=[f"r = f({x!r}); assert type(r) is {tname} and r == {y!r}" for x, y in tests],
                difficulty=len(steps))


# -----------------------------------------------------------------------------
# the benchmark: sample programs per difficulty, split by composition, build tasks

def distinct_programs(draw, wanted, probes, short, seen, kn):
    """Programs from draw() until `wanted` are kept or kn.patience draws in a row were not: each must pass
    check_program and behave unlike every program kept so far (its fingerprint joins `seen`). Returns
    ({composition: [(steps, ret), ...]}, draws)."""
    programs, misses, attempts = {}, 0, 0
    while sum(map(len, programs.values())) < wanted and misses < kn.patience:
        attempts += 1
        steps, ret = draw()
        fp = check_program(steps, ret, probes, short, kn)
        if fp is None or fp in seen:
            misses += 1
            continue
        misses = 0
        seen.add(fp)
        programs.setdefault(solution_code(steps, 'list'), []).append((steps, ret))
    return programs, attempts


def assign_splits(rng, programs, quota, assigned):
    """Give each composition (the step lines as written: the sequence of steps with their constants, the
    return excluded; keyed by the code since keep_multiple 2 is keep_even) one split, so a test or dev task's
    step lines never occur, in that order with those constants, in any other split. When a difficulty has
    fewer programs than wanted (1 step), test takes at most 40% of them, dev at most 15%, and rl/sft share the
    rest. Appends (split, steps, ret, 0) to `assigned`; returns the count per split."""
    n = sum(map(len, programs.values()))
    if n < sum(quota.values()):
        quota['test'], quota['dev'] = min(quota['test'], n * 2 // 5), min(quota['dev'], n * 3 // 20)
        rest = n - quota['test'] - quota['dev']
        quota['rl'] = round(rest * quota['rl'] / (quota['rl'] + quota['sft']))
    comps = list(programs)
    rng.shuffle(comps)
    got = Counter()
    for comp in comps:
        split = next((s for s in ('test', 'dev', 'rl') if got[s] < quota[s]), 'sft')
        got[split] += len(programs[comp])
        assigned += [(split, steps, ret, 0) for steps, ret in programs[comp]]
    return got


def sample_programs(kn, log=print):
    """Sample distinct, non-degenerate programs per difficulty and give each composition one split.
    Returns ([(split, steps, ret), ...], probes)."""
    rng = random.Random(kn.seed)
    choices = step_choices(kn)
    rets = [r[0] for r in RETURNS] if kn.returns == 'all' else kn.returns.split(',')
    for r in rets:
        if r not in RET:
            raise ValueError(f"unknown return '{r}' (known: {', '.join(RET)})")
    by_name = {}
    for c in choices:
        by_name.setdefault(c[0], []).append(c)
    weights = [PRIM[n][2] for n in by_name]
    ret_weights = [RET[r][1] for r in rets]
    probes = make_probes(rng, kn)
    t0 = time.time()
    short = short_behaviours(choices, rets, probes)
    log(f"prepare: {len(choices)} step choices, {len(rets)} returns; all programs of <= 2 steps "
        f"fingerprinted in {time.time() - t0:.1f}s")
    mix = [float(w) for w in kn.sft_mix.split(',')]
    if len(mix) != kn.max_steps - kn.min_steps + 1:
        raise ValueError(f"sft_mix has {len(mix)} weights for {kn.max_steps - kn.min_steps + 1} difficulties")
    assigned, seen, taken = [], set(), Counter()
    for d in range(kn.min_steps, kn.max_steps + 1):
        left = kn.max_steps + 1 - d  # difficulties still to fill share what earlier ones could not take
        w = mix[d - kn.min_steps:]
        quota = {'test': kn.test, 'dev': kn.dev, 'rl': (kn.rl - taken['rl']) // left,
                 'sft': int((kn.sft - taken['sft']) * w[0] / sum(w))}
        draw = lambda: sample_program(rng, d, by_name, weights, rets, ret_weights)  # noqa: E731
        programs, attempts = distinct_programs(draw, sum(quota.values()), probes, short, seen, kn)
        n = sum(map(len, programs.values()))
        got = assign_splits(rng, programs, quota, assigned)
        taken.update(got)
        if 0 < got['sft'] < quota['sft']:  # too few programs for the share: the same ones in other words
            copies = min(kn.sft_copies, -(-quota['sft'] // got['sft']))  # ceil(share / programs), capped
            sft = [a for a in assigned[-n:] if a[0] == 'sft']
            assigned += [('sft', steps, ret, c) for c in range(1, copies) for _, steps, ret, _ in sft]
            got['sft'] *= copies
        log(f"prepare: difficulty {d}: {attempts} programs sampled, {n} kept "
            f"({', '.join(f'{s} {got[s]}' for s in SPLITS)}), {time.time() - t0:.0f}s")
    return assigned, probes


_PROBES = None  # the probe set, for the task-building processes (inherited through fork)


def _build(job):
    kn, steps, ret, copy = job
    # each task's randomness comes from its own program (and copy number), so the bytes do not depend on
    # the process count
    seed = f"{kn.seed}/{steps}/{ret}" + (f"/{copy}" if copy else '')
    return make_task(random.Random(seed), steps, ret, kn, _PROBES)


def generate(kn, log=print):
    global _PROBES
    assigned, _PROBES = sample_programs(kn, log)
    t0, jobs = time.time(), [(kn, steps, ret, copy) for _, steps, ret, copy in assigned]
    workers = kn.workers or os.cpu_count() or 1
    if workers > 1 and len(jobs) > 200:
        with multiprocessing.get_context('fork').Pool(workers) as pool:
            built = pool.map(_build, jobs, chunksize=64)
    else:
        built = [_build(job) for job in jobs]
    splits, prompts = {s: [] for s in SPLITS}, set()
    for (split, *_), task in zip(assigned, built):
        if task['prompt'] in prompts:
            continue  # (possible in hard mode: two programs with the same examples)
        prompts.add(task['prompt'])
        task['task_id'] = f"{split}/{len(splits[split])}"
        splits[split].append(task)
    log(f"prepare: {len(built)} tasks built ({workers} processes) in {time.time() - t0:.0f}s: "
        + ', '.join(f"{s} {len(ts)}" for s, ts in splits.items()))
    keys = ['task_id', 'prompt', 'entry_point', 'canonical_solution', 'test', 'tests', 'difficulty']
    return {s: [{k: t[k] for k in keys} for t in ts] for s, ts in splits.items()}


def verify(splits, log=print):
    """Every canonical solution passes all its tests: each assert string run directly (our own code,
    fast), then the program with its check() function (the same asserts) in the sandbox."""
    tasks = [t for ts in splits.values() for t in ts]
    t0 = time.time()
    for t in tasks:
        namespace = {}
        exec(t['prompt'] + t['canonical_solution'], namespace)
        for test in t['tests']:
            exec(test, dict(namespace))  # raises on a generator bug
    sys.path.insert(0, ROOT)
    import sandbox
    jobs = [(t['prompt'] + t['canonical_solution'], [t['test'] + '\ncheck(f)\n']) for t in tasks]
    bad = [i for i, r in enumerate(sandbox.run_batch(jobs)) if r.reward != 1.0]
    if bad:  # a loaded machine can fail a run for reasons of its own: a real failure repeats
        log(f"prepare: {len(bad)} sandbox runs failed, running them again")
        results = sandbox.run_batch([jobs[i] for i in bad])
        bad = [(tasks[i]['task_id'], r) for i, r in zip(bad, results) if r.reward != 1.0]
        if bad:
            raise RuntimeError(f"{len(bad)} canonical solutions fail in the sandbox, e.g. {bad[:3]}")
    log(f"prepare: verified all {len(tasks)} canonical solutions, in-process and in the sandbox, "
        f"in {time.time() - t0:.0f}s")


def parse_task(task, kn):
    """(steps, ret, [(input, expected repr), ...]) of a shipped toy task, read back from its text."""
    lines = {}
    for name, k in step_choices(kn):
        for s in ('xs', 'ys'):
            lines[f"    ys = {PRIM[name][3].format(s=s, v=s[0], k=k)}"] = (name, k)
    rets = {f"    return {RET[r][2].format(s=s)}": r for r in RET for s in ('xs', 'ys')}
    body = task['canonical_solution'].rstrip('\n').split('\n')
    steps, ret = tuple(lines[l] for l in body[:-1]), rets[body[-1]]
    tests = []
    for t in task['tests']:  # r = f(X); assert type(r) is T and r == Y
        x = ast.literal_eval(t[len('r = f('):t.index('); ')])
        tests.append((x, repr(ast.literal_eval(t[t.index(' and r == ') + len(' and r == '):]))))
    return steps, ret, tests


def mutation_score(task_list, kn, n_fresh=200):
    """Killed / distinguishable single-step mutants of each task's solution, with 'distinguishable' judged two
    ways: on the probe set the generator used, and on n_fresh random inputs it never saw (an independent
    check that the hidden tests generalise). Returns {'probes': (killed, total), 'fresh': ..., 'survivors': [...]}."""
    probes = make_probes(random.Random(kn.seed), kn)
    rng = random.Random(f"{kn.seed}/fresh")
    fresh = [random_list(rng, 0, max(kn.list_len[1], 10), kn) for _ in range(n_fresh)]
    score = {'probes': [0, 0], 'fresh': [0, 0], 'survivors': []}
    for task in task_list:
        steps, ret, tests = parse_task(task, kn)
        inputs = [x for x, _ in tests]
        want = [y for _, y in tests]
        for name, ins in (('probes', probes), ('fresh', fresh)):
            base, outs = mutant_behaviours(steps, ret, ins + inputs)
            for m in outs:
                if m[:len(ins)] != base[:len(ins)]:  # the mutant is distinguishable on these inputs
                    killed = m[len(ins):] != want
                    score[name][0] += killed
                    score[name][1] += 1
                    if not killed and name == 'probes':
                        score['survivors'].append(task['task_id'])
    return {k: tuple(v) if k != 'survivors' else v for k, v in score.items()}


def mutation_report(data_dir, kn, log=print):
    sys.path.insert(0, ROOT)
    import tasks
    for split in HELD_OUT:
        t0 = time.time()
        s = mutation_score(tasks.load_tasks(os.path.join(data_dir, f'{split}.jsonl')), kn)
        (kp, np_), (kf, nf) = s['probes'], s['fresh']
        log(f"mutation score, {split}: {kp}/{np_} = {kp / np_:.4f} of the mutants distinguishable on the probe set, "
            f"{kf}/{nf} = {kf / nf:.4f} of those distinguishable on 200 fresh random inputs ({time.time() - t0:.0f}s)")


def write_splits(splits, out_dir):
    for name, ts in splits.items():
        with open(os.path.join(out_dir, f'{name}.jsonl'), 'w') as f:
            f.writelines(json.dumps(t) + '\n' for t in ts)


# -----------------------------------------------------------------------------
# tokenizer: BPE (tasks.bpe_train) on the sft corpus

def train_tokenizer(sft_path, out_path, vocab_size, log=print):
    sys.path.insert(0, ROOT)
    import tasks
    corpus = ''.join(t['prompt'] + t['canonical_solution'] for t in tasks.load_tasks(sft_path))
    t0 = time.time()
    ranks = tasks.bpe_train(corpus, vocab_size - len(tasks.SPECIAL_TOKENS))
    tasks.save_bpe(ranks, out_path)
    enc = tasks.get_tokenizer(out_path)
    n = len(enc.encode_ordinary(corpus))
    log(f"tokenizer: {enc.n_vocab} tokens ({len(ranks) - 256} merges) in {time.time() - t0:.1f}s, "
        f"{len(corpus) / n:.2f} chars/token on the sft corpus -> {out_path}")
    return enc


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    for f in dataclasses.fields(Knobs):
        if isinstance(f.default, bool):
            ap.add_argument(f'--{f.name}', action=argparse.BooleanOptionalAction, default=f.default)
        elif isinstance(f.default, tuple):
            ap.add_argument(f'--{f.name}', type=int, nargs=2, default=f.default, metavar=('LO', 'HI'))
        else:
            ap.add_argument(f'--{f.name}', type=type(f.default), default=f.default)
    ap.add_argument('--out_dir', default=DATA_DIR)
    ap.add_argument('--tokenizer', action='store_true', help='only retrain the tokenizer from out_dir/sft.jsonl')
    ap.add_argument('--mutation_report', action='store_true', help='only report the mutation score of out_dir/{dev,test}')
    ap.add_argument('--vocab_size', type=int, default=1024, help='upper bound; training stops when no pair is left')
    args = vars(ap.parse_args(argv))
    out_dir, only_tok, vocab_size = args.pop('out_dir'), args.pop('tokenizer'), args.pop('vocab_size')
    only_report = args.pop('mutation_report')
    kn = Knobs(**{k: tuple(v) if isinstance(v, list) else v for k, v in args.items()})
    if only_report:
        return mutation_report(out_dir, kn)
    if not only_tok:
        splits = generate(kn)
        if kn.verify:
            verify(splits)
        os.makedirs(out_dir, exist_ok=True)
        write_splits(splits, out_dir)
        mutation_report(out_dir, kn)
    train_tokenizer(os.path.join(out_dir, 'sft.jsonl'), os.path.join(out_dir, 'tokenizer.tiktoken'), vocab_size)


if __name__ == '__main__':
    main()
