"""
Tasks and tokenizer: one loader for the toy benchmark, HumanEval and MBPP files, and the project's BPE.

A task is a dict: task_id, prompt, entry_point, canonical_solution, test (HumanEval source defining
check(candidate)), tests (assert strings, each run after prompt + completion in a fresh namespace),
difficulty (number of steps; 0 for external sets).
"""

import base64
import gzip
import json
import math
import os
import re
from collections import Counter

import regex
import tiktoken
import torch

import sandbox

DATA_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'data')
TOKENIZER_FILE = 'tokenizer.tiktoken'  # tiktoken's format: one "base64(token) rank" per line
# Pre-tokens: every '\n' alone (so a line boundary is always a token boundary), runs of 2+ blanks
# (indentation) alone, words with an optional leading space, single digits (numbers generalise
# digit by digit), punctuation runs, any other single blank. No lookaround: a pre-token never
# depends on text past a '\n', so encode(a + b) == encode(a) + encode(b) whenever a ends in '\n'.
SPLIT_PATTERN = r"\n|[^\S\n]{2,}| ?[A-Za-z_]+| ?[0-9]| ?[^\sA-Za-z0-9_]+|\s"
SPECIAL_TOKENS = ('<|endoftext|>', '<|pad|>')  # end of solution (enc.eot_token), padding


class TaskFileError(ValueError):
    pass


def load_tasks(path):
    """Read a JSONL file (optionally .gz) of toy, HumanEval or MBPP records into task dicts."""
    if not os.path.exists(path):
        raise TaskFileError(f"{path}: no such task file")
    opener = gzip.open if path.endswith('.gz') else open
    tasks = []
    with opener(path, 'rt', encoding='utf-8') as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as e:
                raise TaskFileError(f"{path}:{lineno}: malformed JSON ({e.msg})") from None
            if not isinstance(rec, dict):
                raise TaskFileError(f"{path}:{lineno}: expected a JSON object, got {type(rec).__name__}")
            where = f"{path}:{lineno}"
            if 'test_list' in rec:
                tasks.append(_from_mbpp(rec, where))
            elif 'tests' in rec:
                tasks.append({k: _field(rec, k, where) for k in
                              ('task_id', 'prompt', 'entry_point', 'canonical_solution', 'test', 'tests', 'difficulty')})
            else:
                tasks.append(_from_humaneval(rec, where))
    return tasks


def _field(rec, key, where):
    if key not in rec:
        raise TaskFileError(f"{where}: missing field '{key}'")
    return rec[key]


def _from_humaneval(rec, where):
    task = {k: _field(rec, k, where) for k in ('task_id', 'prompt', 'entry_point', 'canonical_solution', 'test')}
    task['task_id'] = str(task['task_id'])
    task['tests'] = [task['test'] + f"\ncheck({task['entry_point']})\n"]
    task['difficulty'] = 0
    return task


def _from_mbpp(rec, where):
    """MBPP (original: text/code/test_list/test_setup_code; sanitized: prompt/code/test_list/test_imports).
    The function the tests call is the entry point; everything before its def (imports, helpers) goes
    into the prompt with the def line and a docstring of the text, the rest is the solution, so that
    prompt + canonical_solution runs like the published code."""
    text = _field(rec, 'text' if 'text' in rec or 'prompt' not in rec else 'prompt', where)
    code = _field(rec, 'code', where).replace('\r\n', '\n')
    tests = _field(rec, 'test_list', where)
    setup = rec.get('test_setup_code') or '\n'.join(rec.get('test_imports') or [])
    lines = code.split('\n')
    defs = [(i, m.group(1)) for i, l in enumerate(lines) if (m := re.match(r'def\s+(\w+)\s*\(', l))]
    if not defs:
        raise TaskFileError(f"{where}: field 'code' has no top-level def")
    i, name = next(((i, n) for i, n in defs if re.search(rf'\b{n}\s*\(', ' '.join(tests))), defs[0])
    while not lines[i].rstrip().endswith(':'):  # a signature spread over several lines
        i += 1
        if i == len(lines):
            raise TaskFileError(f"{where}: field 'code': cannot find the end of def {name}")
    body = lines[i + 1:]
    indent = next((re.match(r'\s*', l).group() for l in body if l.strip()), '    ')
    doc = text.strip().replace('\\', '\\\\').replace('"""', '\\"\\"\\"')
    prompt = '\n'.join(lines[:i + 1]) + f'\n{indent}"""{doc}\n{indent}"""\n'
    tests = [f"{setup}\n{t}" if setup else t for t in tests]
    check = 'def check(candidate):\n' + ''.join(f"    {l}\n" for t in tests for l in t.split('\n'))
    return dict(task_id=str(_field(rec, 'task_id', where)), prompt=prompt, entry_point=name,
                canonical_solution='\n'.join(body).rstrip() + '\n', test=check, tests=tests, difficulty=0)


# -----------------------------------------------------------------------------
# tokenizer

def bpe_train(text, vocab_size, pattern=SPLIT_PATTERN):
    """Same merges as tiktoken._educational.bpe_train (most frequent pair, ties to the pair seen first),
    but each distinct pre-token is merged once and weighted by its count. Stops early, instead of
    failing inside max(), when every pre-token is a single token and no pair is left."""
    counts = Counter(regex.findall(pattern, text))  # insertion order = first appearance, as in the original
    words = [[bytes([b]) for b in w.encode('utf-8')] for w in counts]
    freqs = list(counts.values())
    ranks = {bytes([i]): i for i in range(256)}
    while len(ranks) < vocab_size:
        stats = Counter()
        for word, n in zip(words, freqs):
            for pair in zip(word[:-1], word[1:]):
                stats[pair] += n
        if not stats:
            break
        best = max(stats, key=lambda p: stats[p])
        ranks[best[0] + best[1]] = len(ranks)
        merged = []
        for word in words:
            new, i = [], 0
            while i < len(word):
                if i + 1 < len(word) and (word[i], word[i + 1]) == best:
                    new.append(best[0] + best[1])
                    i += 2
                else:
                    new.append(word[i])
                    i += 1
            merged.append(new)
        words = merged
    return ranks


def save_bpe(ranks, path):
    with open(path, 'w') as f:
        f.writelines(f"{base64.b64encode(tok).decode()} {rank}\n" for tok, rank in sorted(ranks.items(), key=lambda x: x[1]))


def get_tokenizer(path=os.path.join(DATA_DIR, TOKENIZER_FILE)):
    """The shipped BPE as a tiktoken.Encoding (read directly: tiktoken's loader caches by path)."""
    ranks = {}
    with open(path) as f:
        for lineno, line in enumerate(f, 1):
            try:
                tok, rank = line.split()
                ranks[base64.b64decode(tok, validate=True)] = int(rank)
            except ValueError:
                raise TaskFileError(f"{path}:{lineno}: expected 'base64-token rank', got {line.strip()!r}") from None
    special = {s: len(ranks) + i for i, s in enumerate(SPECIAL_TOKENS)}
    return tiktoken.Encoding(name=os.path.basename(path), pat_str=SPLIT_PATTERN, mergeable_ranks=ranks,
                             special_tokens=special)


def step_seed(seed, step):
    """The seed of one step (an iteration, a batch, a decoding unit) of a run with `seed`: every step draws from
    its own, so a resumed run draws exactly what the uninterrupted run drew."""
    return seed * 1_000_003 + step


# -----------------------------------------------------------------------------
# evaluation: greedy or sampled pass@1 through the sandbox

def spread(task_list, n):
    """n tasks evenly spaced through the list (the split files are sorted by difficulty); 0 = all."""
    if not n or n >= len(task_list):
        return task_list
    return [task_list[i * len(task_list) // n] for i in range(n)]


def pad_id(enc):
    return enc.encode_single_token('<|pad|>')


def completion_text(enc, ids):
    """Generated ids -> code: special tokens (end of solution, padding) are not code."""
    return enc.decode([i for i in ids if i < enc.eot_token])


# APPS reports by difficulty band; here a band is a range of step counts (external sets: difficulty 0)
BANDS = (('introductory', range(0, 4)), ('interview', range(4, 7)), ('competition', range(7, 100)))


def band(difficulty):
    return next(name for name, steps in BANDS if difficulty in steps)


def format_bands(ev):
    return ', '.join(f"{b} {p:.2f}" for b, p in ev['by_band'].items())


def evaluate_greedy(model, enc, task_list, device, max_new_tokens=128, batch_size=256):
    """Greedy pass@1 of the policy on task_list, overall and per difficulty."""
    return evaluate_sampled(model, enc, task_list, device, max_new_tokens, batch_size, temperature=0.0, samples=1)


EVAL_SAMPLES = 4         # sampled pass@1: programs per task ...
EVAL_TEMPERATURE = 0.7   # ... at this temperature (the paper evaluates its policies by sampling at 0.7)


@torch.no_grad()
def sample_programs(model, enc, task_list, device, max_new_tokens, batch_size, temperature, samples, seed=0):
    """`samples` completions of each task's prompt at `temperature` (0: greedy), about batch_size rows a policy
    call: (completion texts, their generated token counts), task by task."""
    was_training = model.training
    model.eval()
    generator = torch.Generator(device=device).manual_seed(seed)
    per_call = max(1, batch_size // samples)
    texts, tokens = [], []
    for i in range(0, len(task_list), per_call):
        chunk = task_list[i:i + per_call]
        s = model.sample([enc.encode_ordinary(t['prompt']) for t in chunk], n=samples, max_new_tokens=max_new_tokens,
                         temperature=temperature, stop_ids=(enc.eot_token,), pad_id=pad_id(enc), generator=generator)
        rows = s.rows()
        texts += [completion_text(enc, row) for row in rows]
        tokens += [len(row) for row in rows]
    model.train(was_training)
    return texts, tokens


def grade(task_list, completions, samples=1):
    """Per task the fraction of its `samples` completions (task by task) that pass every hidden test."""
    results = sandbox.run_batch([(task_list[k // samples]['prompt'] + c, task_list[k // samples]['tests'])
                                 for k, c in enumerate(completions)])
    return [sum(r.solved for r in results[k * samples:(k + 1) * samples]) / samples for k in range(len(task_list))]


def evaluate_sampled(model, enc, task_list, device, max_new_tokens=128, batch_size=256,
                     temperature=EVAL_TEMPERATURE, samples=EVAL_SAMPLES, seed=0):
    """pass@1 of programs sampled at `temperature`, `samples` per task: each task scores the fraction of its
    samples that pass (an unbiased pass@1 with less variance than one sample; the paper evaluates its policies
    by sampling at 0.7). Overall and per difficulty. temperature 0 is greedy (use samples=1)."""
    texts, _ = sample_programs(model, enc, task_list, device, max_new_tokens, batch_size, temperature, samples, seed)
    ok = grade(task_list, texts, samples)
    by_difficulty, by_band = {}, {}
    for t, o in zip(task_list, ok):
        by_difficulty.setdefault(t['difficulty'], []).append(o)
        by_band.setdefault(band(t['difficulty']), []).append(o)
    return dict(pass1=sum(ok) / max(1, len(ok)), n=len(ok),
                by_difficulty={d: sum(v) / len(v) for d, v in sorted(by_difficulty.items())},
                by_band={b: sum(by_band[b]) / len(by_band[b]) for b, _ in BANDS if b in by_band})


def mean_se(xs):
    """(mean, standard error of the mean); SE = sample std / sqrt(n), 0 for a single value."""
    n = len(xs)
    m = sum(xs) / n
    if n < 2:
        return m, 0.0
    return m, math.sqrt(sum((x - m) ** 2 for x in xs) / (n - 1) / n)
