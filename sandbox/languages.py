"""The languages the service runs: each is one entry of ``LANGUAGES`` (data, not plumbing).

An entry says which sandbox image holds its toolchain (``images/<image>/image.toml``), the file a
program is written to, how it is compiled (inside the sandbox, as a process of its own uid, once
per sample) and run (once per case, from a read-only copy of what the compile step left in
``out/``), and how tests written in the language itself (HumanEval-X, MultiPL-E) are arranged so
that they print the sample's nonce only after every test ran (``finale``). A finale sees the tests and
only what ``facts`` extracts of the program (Java: the class that holds the tests' ``main``; Go: the
package): that is part of the plan's cache key, so one program's plan is never another's. Source is
scanned with its comments and literals blanked (``sandbox/lexer.py``).

Python is the exception: the harness's own interpreter runs it (function calls judged by the
trusted driver, or stdio cases), so it has no commands here.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Callable

from sandbox.errors import JobValidationError
from sandbox.harness.messages import NONCE_MARK, Toolchain
from sandbox.lexer import mask

__all__ = ["Language", "LANGUAGES", "language", "known_languages"]

# What the tests print once all of them ran (the supervisor replaces the mark by a secret per sample).
_NONCE_LINE = "\\n" + NONCE_MARK + "\\n"


@dataclass(frozen=True)
class Language:
    name: str
    image: str                                   # images/<image>/image.toml
    title: str
    aliases: tuple[str, ...] = ()
    source_name: str = "main"                    # the file the program is written to
    compile: tuple[str, ...] = ()                # argv in the build directory; writes into out/
    run: tuple[str, ...] = ()                    # argv in the case's directory; out/ holds the build
    env: tuple[tuple[str, str], ...] = ()
    version: tuple[str, ...] = ()                # prints the toolchain's version (`sandbox images`)
    # (program source) -> (source file name, main name): Java names the file after its public class
    layout: Callable[[str], tuple[str, str]] | None = None
    # (test code, facts) -> (test code, support files) that print the nonce after the last test
    finale: Callable[[str, str], tuple[str, tuple[tuple[str, str], ...]]] | None = None
    # (test code, program) -> what the finale needs of the program, a short text (part of the plan's key)
    facts: Callable[[str, str], str] | None = None
    # inline tests may build differently (Go: a test binary); None: as for stdio
    inline_compile: tuple[str, ...] | None = None
    inline_source_name: str | None = None
    inline_main: str | None = None            # Java: the finale's class runs
    compile_guard: str = "sigchld"            # see hardening.guard: what its processes may not do besides
    run_guard: str = "sigchld"
    forms: tuple[str, ...] = ("stdio", "inline_tests")  # JobSpec fields this language takes
    notes: str = ""

    @property
    def native(self) -> bool:
        return self.name == "python"

    def toolchain(self, inline: bool = False) -> Toolchain:
        compile_argv = self.inline_compile if inline and self.inline_compile is not None else self.compile
        return Toolchain(language=self.name, native=self.native, compile=compile_argv, run=self.run, env=self.env,
                         compile_guard=self.compile_guard, run_guard=self.run_guard)

    def source_layout(self, source: str, inline: bool = False) -> tuple[str, str]:
        """(file name, main name) of a program (with its inline tests after it, if any)."""
        name, main = self.layout(source) if self.layout is not None else (self.source_name, "main")
        if inline:
            name, main = self.inline_source_name or name, self.inline_main or main
        return name, main


# -- finales: the tests' own end prints the nonce -----------------------------------------------------
_C_MAIN = re.compile(r"\bint\s+main\s*\(\s*(void)?\s*\)")


def _c_finale(tests: str, facts: str) -> tuple[str, tuple[tuple[str, str], ...]]:
    """Rename the tests' ``main`` and call it from one that prints the nonce when it returns 0."""
    code = mask(tests, "c")
    match = _C_MAIN.search(code)
    if match is None:
        raise JobValidationError("the C/C++ tests have no `int main()` to run")
    end = _body_end(code, match.end())
    if end < 0:
        raise JobValidationError("the C/C++ tests' `main` has no body that ends")
    # falling off the end of a non-void function is undefined in C++ (main alone returns 0): say it
    renamed = tests[:match.start()] + "int sandbox_tests_main(void)" + tests[match.end():end] + "return 0;\n" + tests[end:]
    # a program's macros would reach the tests (`#define __assert_fail(...)` silences every assert): the tests
    # start with assert.h's own definitions again. A program can still forge in other ways (see README)
    restore = "\n#undef NDEBUG\n#undef assert\n#undef __assert_fail\n#include <assert.h>\n"
    return (restore + renamed + "\n#include <stdio.h>\nint main(void) {\n    int status = sandbox_tests_main();\n"
            f"    if (status == 0) {{ fputs(\"{_NONCE_LINE}\", stdout); fflush(stdout); }}\n    return status;\n}}\n"), ()


def _body_end(code: str, start: int) -> int:
    """Index of the ``}`` closing the first ``{`` at or after ``start`` in masked code; -1 if it never closes."""
    depth = 0
    for brace in re.finditer(r"[{}]", code[start:]):
        depth += 1 if brace.group() == "{" else -1
        if depth == 0:
            return start + brace.start()
    return -1


_JAVA_MAIN = re.compile(r"public\s+static\s+void\s+main\s*\(\s*(final\s+)?String\s*"
                        r"(\[\s*\]\s*(\w+)|(\w+)\s*\[\s*\]|\.\.\.\s*(\w+))\s*\)")
# a type declaration, or a brace; `Foo.class` is not one
_JAVA_TYPE_OR_BRACE = re.compile(r"(?<![.\w])(?:class|interface|enum|record)\s+(\w+)|[{}]")
_JAVA_PUBLIC_TYPE = re.compile(r"(?<![.\w])public\s+(?:(?:final|abstract|sealed|non-sealed|strictfp)\s+)*"
                               r"(?:class|interface|enum|record)\s+(\w+)|[{}]")


def _java_facts(tests: str, program: str) -> str:
    """The class whose body holds the tests' ``main``: it may open in the program (MultiPL-E's tests are the end
    of `class Problem`), and classes the program declares and closes before it (`class Helper`) are not it."""
    code = mask(program + "\n" + tests, "java")
    main = _JAVA_MAIN.search(code, len(program) + 1)
    enclosing: list[str | None] = []
    pending: str | None = None
    for token in _JAVA_TYPE_OR_BRACE.finditer(code, 0, main.start() if main else 0):
        if token.group(1):
            pending = token.group(1)
        elif token.group() == "{":
            enclosing.append(pending)
            pending = None
        elif enclosing:
            enclosing.pop()
    if main is None or not enclosing or enclosing[-1] is None:
        raise JobValidationError("the Java tests have no `public static void main(String[] args)` in a class")
    return enclosing[-1]


def _java_finale(tests: str, owner: str) -> tuple[str, tuple[tuple[str, str], ...]]:
    match = _JAVA_MAIN.search(mask(tests, "java"))
    if match is None or not owner.isidentifier():
        raise JobValidationError("the Java tests have no `public static void main(String[] args)` in a class")
    renamed = tests[:match.start()] + "public static void sandboxTestsMain(String[] args)" + tests[match.end():]
    finale = ("\nclass SandboxFinale {\n    public static void main(String[] args) throws Throwable {\n"
              f"        {owner}.sandboxTestsMain(args);\n        System.out.print(\"{_NONCE_LINE}\");\n"
              "        System.out.flush();\n    }\n}\n")
    return renamed + finale, ()


def _java_layout(source: str) -> tuple[str, str]:
    """javac wants a public top-level class in a file of its name; a class with ``main`` is what runs."""
    depth = 0
    for token in _JAVA_PUBLIC_TYPE.finditer(mask(source, "java")):
        if token.group(1) and depth == 0:
            return f"{token.group(1)}.java", token.group(1)
        depth += {"{": 1, "}": -1}.get(token.group(), 0)
    return "Main.java", "Main"


def _js_finale(tests: str, facts: str) -> tuple[str, tuple[tuple[str, str], ...]]:
    return tests + f"\n;process.stdout.write(\"{_NONCE_LINE}\");\n", ()


def _ts_finale(tests: str, facts: str) -> tuple[str, tuple[tuple[str, str], ...]]:
    # the image has no @types/node: `process` is reached untyped
    return tests + f"\n;(globalThis as any).process.stdout.write(\"{_NONCE_LINE}\");\n", ()


_GO_TEST_FLAGS = (("run", ""), ("list", ""), ("count", "1"), ("short", "false"), ("failfast", "false"),
                  ("timeout", "0"), ("cpu", ""), ("parallel", "1"), ("shuffle", "off"), ("benchtime", "1s"), ("bench", ""))
_GO_PACKAGE = re.compile(r"^\s*package\s+(\w+)", re.MULTILINE)


def _go_facts(tests: str, program: str) -> str:
    """The package the tests are in: the program's clause, else the tests' own."""
    package = _GO_PACKAGE.search(mask(program, "go")) or _GO_PACKAGE.search(mask(tests, "go"))
    if package is None:
        raise JobValidationError("the Go program has no `package` clause")
    return package.group(1)


def _go_finale(tests: str, package: str) -> tuple[str, tuple[tuple[str, str], ...]]:
    """A TestMain in a file of its own (Go wants imports first): prints the nonce when every test passed."""
    if not package.isidentifier():
        raise JobValidationError("the Go program has no `package` clause")
    # the program's init() runs first and could set the test binary's flags (-test.run=^$ runs nothing): the
    # finale puts the command line and those flags back before any test runs
    resets = "".join(f"\tsandboxflag.Set(\"test.{name}\", \"{value}\")\n" for name, value in _GO_TEST_FLAGS)
    return tests, (("sandbox_finale_test.go", f"package {package}\n\nimport (\n\tsandboxflag \"flag\"\n"
                    "\tsandboxfmt \"fmt\"\n\tsandboxos \"os\"\n\tsandboxtesting \"testing\"\n)\n\n"
                    "func TestMain(m *sandboxtesting.M) {\n\tsandboxos.Args = sandboxos.Args[:1]\n" + resets +
                    "\tcode := m.Run()\n"
                    f"\tif code == 0 {{\n\t\tsandboxfmt.Print(\"{_NONCE_LINE}\")\n\t}}\n\tsandboxos.Exit(code)\n}}\n"),)


_RUST_MAIN = re.compile(r"\bfn\s+main\s*\(\s*\)")
_RUST_TEST = re.compile(r"#\[test\]\s*fn\s+(\w+)")  # comments may sit between them (Rust/50): masked
_RUST_MOD_TESTS = re.compile(r"\bmod\s+tests\b")
_RUST_CFG_TEST = re.compile(r"#\[cfg\(test\)\]")


def _rust_finale(tests: str, facts: str) -> tuple[str, tuple[tuple[str, str], ...]]:
    """MultiPL-E: the tests are ``fn main``; HumanEval-X: ``#[test]`` functions in ``mod tests``, called here."""
    finale = f"    println!(\"{{}}\", \"{_NONCE_LINE}\".trim());\n}}\n"
    code = mask(tests, "rust")  # tests commented out (HumanEval-X's Rust/32) or inside strings are not tests
    if _RUST_MAIN.search(code):
        renamed = _substitute(tests, code, _RUST_MAIN, lambda m: "fn sandbox_tests_main()", count=1)
        return renamed + "\nfn main() {\n    sandbox_tests_main();\n" + finale, ()
    names = _RUST_TEST.findall(code)
    if not names and "#[test]" not in tests:
        raise JobValidationError("the Rust tests have neither `fn main()` nor `#[test]` functions")
    # none left (HumanEval-X's Rust/32 comments its test out): no test fails, as under `cargo test`
    body = _substitute(tests, code, _RUST_TEST, lambda m: f"pub fn {m.group(1)}")
    body = _substitute(body, mask(body, "rust"), _RUST_MOD_TESTS, lambda m: "pub mod tests", count=1)
    body = _substitute(body, mask(body, "rust"), _RUST_CFG_TEST, lambda m: "")
    calls = "".join(f"    tests::{name}();\n" for name in names)
    return body + "\nfn main() {\n" + calls + finale, ()


def _substitute(text: str, code: str, pattern: re.Pattern[str], replace: Callable[[re.Match[str]], str],
                count: int = 0) -> str:
    """``text`` with ``pattern``'s matches in ``code`` (its mask) replaced: only code, never comments or strings."""
    matches = list(pattern.finditer(code))[:count or None]
    for match in reversed(matches):
        text = text[:match.start()] + replace(match) + text[match.end():]
    return text


# Go's compile step starts from the image's warm build cache (testify prebuilt): ~1 s instead of ~23 s
_GO_WARM = "cp -r /opt/go/cache \"$GOCACHE\" && "

# Inline tests (HumanEval-X, MultiPL-E) are built as their harnesses build them: without -O (cargo test's
# debug profile; MultiPL-E's plain rustc), which also halves the compile time.
_RUST_CRATES = ("-L", "dependency=/opt/rust/deps", "--extern", "rand=/opt/rust/deps/librand.rlib",
                "--extern", "regex=/opt/rust/deps/libregex.rlib", "--extern", "md5=/opt/rust/deps/libmd5.rlib")
_RUST_INLINE = ("rustc", "--edition", "2021", "-A", "warnings", *_RUST_CRATES, "-o", "out/main", "main.rs")

# -- the registry ----------------------------------------------------------------------------------
_GCC_NOTE = "gcc/g++ 12 (Debian bookworm), Boost 1.74 and OpenSSL 3 headers"
LANGUAGES: dict[str, Language] = {entry.name: entry for entry in (
    Language("python", "python", "Python 3.11", aliases=("py", "python3"), source_name="main.py",
             version=("python3", "--version"), forms=("check", "tests", "stdio", "calls")),
    Language("c", "gcc", "C (gcc, C17)", source_name="main.c",
             compile=("gcc", "-O2", "-std=gnu17", "-pipe", "-o", "out/main", "main.c", "-lm", "-lcrypto", "-lssl"),
             run=("out/main",), version=("gcc", "--version"), notes=_GCC_NOTE, finale=_c_finale),
    Language("cpp", "gcc", "C++ (g++, C++17)", aliases=("c++", "cxx"), source_name="main.cpp",
             compile=("g++", "-O2", "-std=gnu++17", "-pipe", "-o", "out/main", "main.cpp", "-lcrypto", "-lssl"),
             run=("out/main",), version=("g++", "--version"), notes=_GCC_NOTE, finale=_c_finale),
    Language("java", "java", "Java (OpenJDK 17)", source_name="Main.java",
             compile=("javac", "-J-Xss8m", "-J-XX:+UseSerialGC", "-J-XX:TieredStopAtLevel=1", "-J-Xmx512m",
                      "-J-XX:CompressedClassSpaceSize=64m", "-J-XX:ReservedCodeCacheSize=32m", "-encoding", "UTF-8",
                      "-cp", "/usr/share/java/javatuples.jar", "-d", "out", "{source}"),
             run=("java", "-XX:+UseSerialGC", "-XX:TieredStopAtLevel=1", "-Xss16m", "-Xmx512m",
                  "-XX:CompressedClassSpaceSize=64m", "-XX:ReservedCodeCacheSize=32m", "-ea",
                  "-cp", "out:/usr/share/java/javatuples.jar", "{main}"),
             version=("javac", "-version"), layout=_java_layout, finale=_java_finale, facts=_java_facts,
             inline_main="SandboxFinale",
             notes="javatuples 1.2 on the class path (MultiPL-E imports it); assertions on (-ea)"),
    Language("javascript", "node", "JavaScript (Node.js 18)", aliases=("js", "node"), source_name="main.js",
             run=("node", "--stack-size=8192", "out/main.js"), version=("node", "--version"), finale=_js_finale),
    Language("typescript", "node", "TypeScript (tsc 4.8, Node.js 18)", aliases=("ts",), source_name="main.ts",
             compile=("tsc", "--target", "es2020", "--module", "commonjs", "--outDir", "out", "main.ts"),
             run=("node", "--stack-size=8192", "out/main.js"), version=("tsc", "--version"), finale=_ts_finale),
    Language("go", "go", "Go 1.19", aliases=("golang",), source_name="main.go",
             compile=("sh", "-c", _GO_WARM + "exec go build -o out/main main.go"), run=("out/main",),
             inline_compile=("sh", "-c", _GO_WARM + "exec go test -c -o out/main"), inline_source_name="main_test.go",
             env=(("GOCACHE", "{home}/.cache"), ("GOPATH", "/usr/share/gocode"), ("GO111MODULE", "off"),
                  ("GOMAXPROCS", "1"), ("CGO_ENABLED", "0")),
             version=("go", "version"), finale=_go_finale, facts=_go_facts,
             # Go's runtime sets a SIGCHLD handler: its programs may make no process instead (the compile
             # step, Go's own toolchain, may: it runs no code of the sample's)
             compile_guard="none", run_guard="no_fork",
             notes="testify from Debian (GOPATH mode, offline, prebuilt in a warm build cache); inline tests run as "
                   "a test binary"),
    Language("rust", "rust", "Rust 1.63 (edition 2021)", aliases=("rs",), source_name="main.rs",
             compile=("rustc", "--edition", "2021", "-O", "-A", "warnings", *_RUST_CRATES, "-o", "out/main", "main.rs"),
             inline_compile=_RUST_INLINE, run=("out/main",), version=("rustc", "--version"), finale=_rust_finale,
             notes="crates rand 0.8, regex 1.7, md5 0.7 from Debian, prebuilt in the image"),
)}

_ALIASES = {alias: entry.name for entry in LANGUAGES.values() for alias in (entry.name, *entry.aliases)}


def known_languages() -> str:
    return ", ".join(LANGUAGES)


def language(name: str) -> Language:
    """The registry entry for ``name`` or one of its aliases; ``JobValidationError`` naming the known ones."""
    canonical = _ALIASES.get(name.lower())
    if canonical is None:
        raise JobValidationError(f"unsupported language {name!r}: this service runs {known_languages()}")
    return LANGUAGES[canonical]


def images_by_name() -> dict[str, list[str]]:
    """Sandbox image -> the languages it runs, in registry order."""
    found: dict[str, list[str]] = {}
    for entry in LANGUAGES.values():
        found.setdefault(entry.image, []).append(entry.name)
    return found


def canonical_name(name: str) -> str | None:
    return _ALIASES.get(name.lower())
