"""ConstraintError cases and GrammarCompiler: cache, de-duplication, byte bound, eviction, threads."""
from __future__ import annotations

import json
import threading

import pytest

from jaxsgl.constrained import ConstraintError, ConstraintSpec, GrammarCompiler, compile_constraint, compile_regex
from jaxsgl.constrained import compiler as compiler_module


@pytest.mark.parametrize("regex, message", [
    ("a(", "invalid regex"),
    ("(?=a)b", "invalid regex"),
    (r"[^\x00-\x{10FFFF}]", "no path the vocabulary can produce"),
    (r"a\x01", "no path the vocabulary can produce"),  # no token of the ASCII vocab spells \x01
    (r"a+\x01", "no path the vocabulary can produce"),
])
def test_regex_errors(ascii_vocab, regex, message):
    with pytest.raises(ConstraintError, match=message):
        compile_regex(regex, ascii_vocab)


@pytest.mark.parametrize("schema, message", [
    ({"type": "foo"}, "rejected by the compiler"),
    ({"$ref": "#/nope"}, "rejected by the compiler"),
    ({"type": "string", "format": "weird"}, "rejected by the compiler"),
    ({"allOf": [{"type": "string"}, {"type": "integer"}]}, "allOf"),
    ({"type": "integer", "minimum": 5, "maximum": 4}, "admit no value"),
])
def test_schema_errors(ascii_vocab, schema, message):
    with pytest.raises(ConstraintError, match=message):
        compile_constraint(ConstraintSpec("json_schema", json.dumps(schema)), ascii_vocab)


def test_size_limits(ascii_vocab):
    with pytest.raises(ConstraintError, match="max_states"):
        compile_regex("[a-z]{0,30}", ascii_vocab, max_states=10)
    with pytest.raises(ConstraintError, match="max_transitions"):
        compile_regex("[a-z]{0,3}", ascii_vocab, max_transitions=50)
    with pytest.raises(ConstraintError, match="max_states"):  # caught by the byte-DFA preflight
        compile_regex("[a-z]{0,300}", ascii_vocab, max_states=10)
    assert compile_regex("[a-z]{0,30}", ascii_vocab).num_states == 31


def test_grammar_errors(ascii_vocab):
    with pytest.raises(ConstraintError, match="invalid grammar"):
        compile_constraint(ConstraintSpec("ebnf", "root ::= undefined_rule"), ascii_vocab)
    with pytest.raises(ConstraintError, match="invalid grammar"):
        compile_constraint(ConstraintSpec("ebnf", "start: ("), ascii_vocab)


def test_cache_hits_and_errors(ascii_vocab):
    compiler = GrammarCompiler(ascii_vocab, processes=False)
    first = compiler.submit(ConstraintSpec("regex", "ab+c")).result()
    assert compiler.submit(ConstraintSpec("regex", "ab+c")).result() is first
    assert compiler.get(ConstraintSpec("regex", "ab+c")) is first and compiler.get(ConstraintSpec("regex", "x")) is None
    for _ in range(2):
        with pytest.raises(ConstraintError):
            compiler.submit(ConstraintSpec("regex", "a(")).result()
    stats = compiler.stats
    assert (stats.hits, stats.misses, stats.errors, stats.entries) == (2, 2, 1, 1)
    assert stats.bytes == first.nbytes and stats.compile_seconds > 0
    compiler.shutdown()
    with pytest.raises(RuntimeError):
        compiler.submit(ConstraintSpec("regex", "a"))


def test_lru_bounded_by_bytes(ascii_vocab):
    sizes = {r: compile_regex(r, ascii_vocab).nbytes for r in ("[a-z]{1,8}", "[0-9]{1,8}", "[A-Z]{1,8}")}
    budget = sizes["[a-z]{1,8}"] + max(sizes["[0-9]{1,8}"], sizes["[A-Z]{1,8}"])
    compiler = GrammarCompiler(ascii_vocab, max_cache_bytes=budget, processes=False)
    for regex in ("[a-z]{1,8}", "[0-9]{1,8}"):
        compiler.compile(ConstraintSpec("regex", regex))
    compiler.compile(ConstraintSpec("regex", "[a-z]{1,8}"))  # touch: [0-9] is now least recently used
    compiler.compile(ConstraintSpec("regex", "[A-Z]{1,8}"))
    assert [s.source for s in compiler.cached_specs()] == ["[a-z]{1,8}", "[A-Z]{1,8}"]
    assert compiler.stats.evictions == 1 and compiler.stats.bytes <= budget
    tiny = GrammarCompiler(ascii_vocab, max_cache_bytes=10, processes=False)  # larger than the cache: returned, not kept
    assert tiny.compile(ConstraintSpec("regex", "abc")).num_states == 4 and tiny.cached_specs() == []
    compiler.shutdown()
    tiny.shutdown()


def test_compiles_off_thread_and_deduplicates(ascii_vocab, monkeypatch):
    release, started = threading.Event(), threading.Event()
    calls: list[str] = []
    real = compiler_module.compile_constraint

    def slow_compile(spec, vocab, **options):
        calls.append(threading.current_thread().name)
        started.set()
        assert release.wait(10)
        return real(spec, vocab, **options)

    monkeypatch.setattr(compiler_module, "compile_constraint", slow_compile)
    compiler = GrammarCompiler(ascii_vocab, max_workers=2, processes=False)
    spec = ConstraintSpec("regex", "(yes|no)")
    first, second = compiler.submit(spec), compiler.submit(spec)
    assert started.wait(10)
    assert second is first and not first.done()  # submit returned while the compile is blocked
    release.set()
    fsm = first.result(timeout=10)
    assert fsm.num_states > 1 and len(calls) == 1 and calls[0].startswith("jaxsgl-grammar")
    assert compiler.stats.deduplicated == 1 and compiler.stats.misses == 1
    compiler.shutdown()


def test_process_pool_compiles_same_tables(smol_vocab):
    """Tables compile in a spawned worker process while this thread keeps running Python code."""
    from corpus import CHARACTER_CARD

    compiler = GrammarCompiler(smol_vocab)
    compiler.warm_up().result(timeout=120)
    spec = ConstraintSpec("json_schema", json.dumps(dict(CHARACTER_CARD, title="off-process")))
    future = compiler.submit(spec)
    spins = 0
    while not future.done():
        spins += 1
    remote = future.result()
    assert spins > 1000 and remote.token_bytes is smol_vocab.token_bytes
    local = compile_constraint(spec, smol_vocab)
    for name in ("accepting", "mask", "trans_start", "trans_token", "trans_next"):
        assert (getattr(remote, name) == getattr(local, name)).all(), name
    assert remote.forced_bytes(0) == local.forced_bytes(0) == b"{"
    with pytest.raises(ConstraintError, match="invalid regex"):  # errors cross the process boundary
        compiler.compile(ConstraintSpec("regex", "a("))
    grammar = compiler.compile(ConstraintSpec("ebnf", 'root ::= "x"'))  # grammars stay in-process
    assert grammar.matcher().forced_bytes() == b"x"
    compiler.shutdown()
