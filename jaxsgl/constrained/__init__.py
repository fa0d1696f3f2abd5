"""Constrained decoding, host side (plain Python + numpy; never imports JAX).

regex / JSON schema / choices compile to a `TokenAutomaton` (numpy tables the engine moves to the
device); EBNF/Lark grammars compile to an `EbnfGrammar` whose per-request `EbnfMatcher` fills masks
on the host (with `backend="llguidance"`, every kind takes that path). `GrammarCompiler` compiles
off the caller's thread and caches; `plan_jump_forward` turns an automaton's forced strings into
retokenized extend steps. See docs/constrained.md.
"""
from jaxsgl.constrained.automaton import TokenAutomaton
from jaxsgl.constrained.compiler import (GRAMMAR_BACKENDS, CompiledConstraint, CompilerStats, GrammarCompiler,
                                        check_backend, compile_constraint, host_side)
from jaxsgl.constrained.ebnf import EbnfGrammar, EbnfMatcher
from jaxsgl.constrained.errors import ConstraintError
from jaxsgl.constrained.jump_forward import JumpForward, plan_jump_forward
from jaxsgl.constrained.regex_compile import DEFAULT_MAX_STATES, DEFAULT_MAX_TRANSITIONS, compile_regex
from jaxsgl.constrained.spec import (
    JSON_OBJECT_GRAMMAR,
    REGEX_BOOL,
    REGEX_FLOAT,
    REGEX_INT,
    REGEX_STR,
    ConstraintSpec,
    choices_regex,
    constraint_from_params,
    escape_regex_literal,
    spec_from_response_format,
)
from jaxsgl.constrained.vocab import TokenVocab

__all__ = [
    "CompiledConstraint",
    "CompilerStats",
    "ConstraintError",
    "ConstraintSpec",
    "DEFAULT_MAX_STATES",
    "DEFAULT_MAX_TRANSITIONS",
    "EbnfGrammar",
    "EbnfMatcher",
    "GRAMMAR_BACKENDS",
    "GrammarCompiler",
    "JSON_OBJECT_GRAMMAR",
    "JumpForward",
    "REGEX_BOOL",
    "REGEX_FLOAT",
    "REGEX_INT",
    "REGEX_STR",
    "TokenAutomaton",
    "TokenVocab",
    "check_backend",
    "choices_regex",
    "compile_constraint",
    "compile_regex",
    "constraint_from_params",
    "escape_regex_literal",
    "host_side",
    "plan_jump_forward",
    "spec_from_response_format",
]
