"""Every language against the real engine and gVisor: stdio cases and tests in the language itself.

For each language: a correct program, a wrong answer, a compile error, a crash, an infinite loop,
a memory bomb, an output flood, attempts to reach the network or write outside scratch, and a fork
bomb where the language can fork; each batch ends with innocent programs judged right in the same
sandbox. Inline tests (HumanEval-X, MultiPL-E) are checked on real problems, including programs that
exit early with status 0 to skip their tests.
"""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest

from sandbox.container import docker_client
from sandbox.languages import LANGUAGES
from sandbox.models import JobResult, JobSpec, TestStatus, Verdict
from sandbox.problems import Sample, load_problems, sample_job
from sandbox.runner import Runner

DATA = Path(__file__).resolve().parents[1] / "data" / "languages"
STDIO = {"cases": [{"input": "1 2\n", "output": "3\n"}, {"input": "5 7\n", "output": "12\n"},
                   {"input": "-1 1\n", "output": "0\n"}]}

# Per language: programs reading "a b" and printing a + b, and the ways a program goes wrong.
PROGRAMS: dict[str, dict[str, str]] = {
    "cpp": {
        "sum": "#include <cstdio>\nint main(){ long a, b; if (scanf(\"%ld %ld\", &a, &b) != 2) return 3; printf(\"%ld\\n\", a + b); }\n",
        "wrong": "#include <cstdio>\nint main(){ long a, b; scanf(\"%ld %ld\", &a, &b); printf(\"%ld\\n\", a * b); }\n",
        "compile_error": "int main( { return 0; }\n",
        "crash": "int main(){ volatile int *p = nullptr; *p = 1; return 0; }\n",
        "loop": "int main(){ volatile unsigned long x = 0; for (;;) x++; }\n",
        "memory": "#include <vector>\n#include <cstring>\nint main(){ std::vector<char*> v; for (;;) { char *p = new char[64 << 20];"
                  " memset(p, 1, 64 << 20); v.push_back(p); } }\n",
        "flood": "#include <cstdio>\nint main(){ for (;;) fputs(\"yyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyy\\n\", stdout); }\n",
        "escape": """#include <cstdio>
#include <sys/socket.h>
#include <netinet/in.h>
#include <arpa/inet.h>
#include <fcntl.h>
int main(){
  int s = socket(AF_INET, SOCK_STREAM, 0); sockaddr_in a{}; a.sin_family = AF_INET; a.sin_port = htons(6379);
  inet_pton(AF_INET, "127.0.0.1", &a.sin_addr);
  bool escaped = (s >= 0 && connect(s, (sockaddr*)&a, sizeof a) == 0)
      || open("/etc/sandbox-escape", O_CREAT | O_WRONLY, 0644) >= 0
      || open("/opt/harness/escape", O_CREAT | O_WRONLY, 0644) >= 0
      || open("out/main", O_WRONLY) >= 0;              // its own build is a read-only copy
  long x, y; scanf("%ld %ld", &x, &y); printf("%ld\\n", escaped ? -999 : x + y);
}
""",
        "fork": "#include <unistd.h>\nint main(){ for (;;) fork(); }\n",
    },
    "c": {
        "sum": "#include <stdio.h>\nint main(void){ long a, b; scanf(\"%ld %ld\", &a, &b); printf(\"%ld\\n\", a + b); return 0; }\n",
        "wrong": "#include <stdio.h>\nint main(void){ long a, b; scanf(\"%ld %ld\", &a, &b); printf(\"%ld\\n\", a - b); return 0; }\n",
        "compile_error": "int main(void) { return x; }\n",
        "fork": "#include <unistd.h>\nint main(void){ for (;;) fork(); }\n",
    },
    "java": {
        # a public class not named Main: the file is named after it, and it is what runs
        "sum": "import java.util.*;\npublic class Solution { public static void main(String[] x){ Scanner s = new Scanner(System.in);"
               " long a = s.nextLong(), b = s.nextLong(); System.out.println(a + b); } }\n",
        "wrong": "import java.util.*;\npublic class Main { public static void main(String[] x){ Scanner s = new Scanner(System.in);"
                 " long a = s.nextLong(), b = s.nextLong(); System.out.println(a * b); } }\n",
        "compile_error": "public class Main { void f( }\n",
        "crash": "public class Main { public static void main(String[] a){ throw new RuntimeException(\"boom\"); } }\n",
        "loop": "public class Main { public static void main(String[] a){ long x = 0; while (true) x++; } }\n",
        "memory": "import java.util.*;\npublic class Main { public static void main(String[] a){ List<long[]> l = new ArrayList<>();"
                  " while (true) l.add(new long[1 << 20]); } }\n",
        "flood": "public class Main { public static void main(String[] a){ while (true) System.out.println(\"yyyyyyyyyyyyyyyyyy\"); } }\n",
        "escape": """import java.util.*;
import java.io.*;
import java.net.*;
public class Main {
  static boolean wrote(String path) { try (FileOutputStream f = new FileOutputStream(path)) { return true; } catch (Exception e) { return false; } }
  public static void main(String[] args) {
    boolean escaped = wrote("/etc/sandbox-escape") || wrote("/opt/harness/escape") || wrote("out/Main.class");
    try (Socket s = new Socket()) { s.connect(new InetSocketAddress("127.0.0.1", 6379), 500); escaped = true; } catch (Exception e) { }
    Scanner in = new Scanner(System.in); long a = in.nextLong(), b = in.nextLong();
    System.out.println(escaped ? -999 : a + b);
  }
}
""",
        "fork": "public class Main { public static void main(String[] a) throws Exception {"
                " while (true) new ProcessBuilder(\"/bin/sleep\", \"100\").start(); } }\n",
    },
    "javascript": {
        "sum": "const [a, b] = require('fs').readFileSync(0, 'utf8').trim().split(/\\s+/).map(BigInt); console.log(String(a + b));\n",
        "wrong": "const [a, b] = require('fs').readFileSync(0, 'utf8').trim().split(/\\s+/).map(Number); console.log(a - b);\n",
        "crash": "throw new Error('boom');\n",
        "loop": "for (;;) {}\n",
        "memory": "const a = []; for (;;) a.push(new Array(1e6).fill(1.5));\n",
        "flood": "const fs = require('fs'), line = 'y'.repeat(1000) + '\\n'; for (;;) fs.writeSync(1, line);\n",
        "escape": """const fs = require('fs'), net = require('net');
const input = fs.readFileSync(0, 'utf8');
function wrote(p) { try { fs.writeFileSync(p, 'x'); return true; } catch (e) { return false; } }
const escaped = wrote('/etc/sandbox-escape') || wrote('/opt/harness/escape') || wrote('out/main.js');
const socket = net.connect(6379, '127.0.0.1');
socket.on('connect', () => { console.log(-999); process.exit(0); });
socket.on('error', () => { const [a, b] = input.trim().split(/\\s+/).map(Number); console.log(escaped ? -999 : a + b); });
""",
        "fork": "const cp = require('child_process'); for (;;) cp.spawn('/bin/sleep', ['100']);\n",
    },
    "typescript": {
        "sum": "declare var require: any;\nconst [a, b]: number[] = require('fs').readFileSync(0, 'utf8').trim().split(/\\s+/).map(Number);"
               "\nconsole.log(a + b);\n",
        "wrong": "declare var require: any;\nconst [a, b]: number[] = require('fs').readFileSync(0, 'utf8').trim().split(/\\s+/).map(Number);"
                 "\nconsole.log(a * b);\n",
        "compile_error": "const x: number = 'not a number';\nconsole.log(x);\n",
    },
    "go": {
        "sum": "package main\nimport \"fmt\"\nfunc main() { var a, b int64; fmt.Scan(&a, &b); fmt.Println(a + b) }\n",
        "wrong": "package main\nimport \"fmt\"\nfunc main() { var a, b int64; fmt.Scan(&a, &b); fmt.Println(a - b) }\n",
        "compile_error": "package main\nfunc main() { x := }\n",
        "crash": "package main\nfunc main() { var p *int; *p = 1 }\n",
        "loop": "package main\nfunc main() { x := 0; for { x++ } }\n",
        "memory": "package main\nfunc main() { var s [][]byte; for { b := make([]byte, 64<<20); for i := range b { b[i] = 1 };"
                  " s = append(s, b) } }\n",
        "flood": "package main\nimport (\"bufio\"; \"os\")\nfunc main() { w := bufio.NewWriter(os.Stdout); for { w.WriteString(\"yyyyyyyyyyyyyyyy\\n\") } }\n",
        "escape": """package main
import ("fmt"; "net"; "os"; "time")
func main() {
	escaped := false
	if c, err := net.DialTimeout("tcp", "127.0.0.1:6379", 500*time.Millisecond); err == nil { c.Close(); escaped = true }
	for _, p := range []string{"/etc/sandbox-escape", "/opt/harness/escape", "out/main"} {
		if os.WriteFile(p, []byte("x"), 0644) == nil { escaped = true }
	}
	var a, b int64
	fmt.Scan(&a, &b)
	if escaped { fmt.Println(-999) } else { fmt.Println(a + b) }
}
""",
        # Go programs may make no process (threads only): the program passes only if starting one fails
        "fork": """package main
import ("fmt"; "os/exec")
func main() {
	var a, b int64
	fmt.Scan(&a, &b)
	if exec.Command("/bin/true").Run() == nil { fmt.Println(-999) } else { fmt.Println(a + b) }
}
""",
    },
    "rust": {
        "sum": "use std::io::Read;\nfn main() { let mut s = String::new(); std::io::stdin().read_to_string(&mut s).unwrap();"
               " let v: Vec<i64> = s.split_whitespace().map(|x| x.parse().unwrap()).collect(); println!(\"{}\", v[0] + v[1]); }\n",
        "wrong": "use std::io::Read;\nfn main() { let mut s = String::new(); std::io::stdin().read_to_string(&mut s).unwrap();"
                 " let v: Vec<i64> = s.split_whitespace().map(|x| x.parse().unwrap()).collect(); println!(\"{}\", v[0] * v[1]); }\n",
        "compile_error": "fn main() { let x: i32 = \"s\"; }\n",
        "crash": "fn main() { let v: Vec<i32> = Vec::new(); let i = v.len() + 3; println!(\"{}\", v[i]); }\n",
        "loop": "fn main() { loop {} }\n",
        "memory": "fn main() { let mut v: Vec<Vec<u8>> = Vec::new(); loop { v.push(vec![1u8; 64 << 20]); } }\n",
        "flood": "use std::io::Write;\nfn main() { let o = std::io::stdout(); let mut l = std::io::BufWriter::new(o.lock()); loop { l.write_all(b\"yyyyyyyyyyyyyyy\\n\").unwrap(); } }\n",
        "escape": """use std::io::Read;
fn main() {
    let mut escaped = std::net::TcpStream::connect("127.0.0.1:6379").is_ok();
    for p in ["/etc/sandbox-escape", "/opt/harness/escape", "out/main"] { escaped |= std::fs::write(p, b"x").is_ok(); }
    let mut s = String::new(); std::io::stdin().read_to_string(&mut s).unwrap();
    let v: Vec<i64> = s.split_whitespace().map(|x| x.parse().unwrap()).collect();
    println!("{}", if escaped { -999 } else { v[0] + v[1] });
}
""",
        "fork": "fn main() { loop { let _ = std::process::Command::new(\"/bin/sleep\").arg(\"100\").spawn(); } }\n",
    },
}


@pytest.fixture(scope="module")
def images(language_images: dict[str, str]) -> dict[str, str]:
    return language_images


ONE_CASE = {"cases": STDIO["cases"][:1]}


def job(language: str, program: str, stdio: dict = STDIO) -> JobSpec:  # type: ignore[type-arg]
    return JobSpec(language=language, program=program, stdio=stdio, policy="stdio")  # type: ignore[arg-type]


def statuses(result: JobResult) -> list[TestStatus]:
    return [t.status for t in result.tests]


@pytest.mark.parametrize("language", list(PROGRAMS))
def test_stdio_programs_in_every_language(runner: Runner, images: dict[str, str], language: str) -> None:
    programs = PROGRAMS[language]
    kinds = [kind for kind in ("sum", "wrong", "compile_error", "crash", "loop", "memory", "flood", "escape", "fork")
             if kind in programs]
    # innocents after every attack, in the same sandbox: a correct program and a wrong one
    # attacks get one case (each costs up to a case's limits), the innocents three
    results = runner.run([*(job(language, programs[kind], STDIO if kind in ("sum", "wrong") else ONE_CASE) for kind in kinds),
                          job(language, programs["sum"]), job(language, programs["wrong"])])
    by_kind = dict(zip(kinds, results))
    good, wrong = results[-2:]
    assert good.verdict is Verdict.passed, (language, good)
    assert statuses(wrong) == [TestStatus.failed] * 3, wrong
    assert {r.runtime for r in results} == {"runsc"}  # a fork bomb may leave its sandbox to be replaced
    assert by_kind["sum"].verdict is Verdict.passed, by_kind["sum"]
    assert "wrong answer" in by_kind["wrong"].tests[0].message
    if "compile_error" in by_kind:
        failed = by_kind["compile_error"]
        assert failed.verdict is Verdict.error and failed.error.startswith("compile error: "), failed
        assert statuses(failed) == [TestStatus.not_run]
    if "crash" in by_kind:
        crash = by_kind["crash"]
        assert statuses(crash) == [TestStatus.error] and "runtime error" in crash.tests[0].message, crash
    if "loop" in by_kind:
        loop = by_kind["loop"]
        assert loop.verdict is Verdict.timeout and statuses(loop) == [TestStatus.timeout], loop
        assert all(1.9 <= (t.cpu_time_s or 0) < 3 for t in loop.tests), loop.tests  # 2 s of CPU per case
    if "memory" in by_kind:
        memory = by_kind["memory"]
        assert memory.verdict is not Verdict.passed and memory.verdict is not Verdict.infra_error, memory
        assert set(statuses(memory)) <= {TestStatus.memory_limit, TestStatus.error, TestStatus.timeout}, memory
    if "flood" in by_kind:  # a JVM printing line by line may run out of CPU before it fills 4 MiB
        assert set(statuses(by_kind["flood"])) <= {TestStatus.output_limit, TestStatus.timeout}, by_kind["flood"]
        assert TestStatus.output_limit in statuses(by_kind["flood"]) or language == "java", by_kind["flood"]
    if "escape" in by_kind:
        assert by_kind["escape"].verdict is Verdict.passed, by_kind["escape"]  # every attempt failed
    if "fork" in by_kind:
        fork = by_kind["fork"]
        expected = Verdict.passed if language == "go" else None
        assert fork.verdict is not Verdict.infra_error and (expected is None or fork.verdict is expected), fork


def test_each_language_image_is_what_the_registry_says(images: dict[str, str]) -> None:
    client = docker_client()
    for entry in LANGUAGES.values():
        if entry.native:
            continue
        tag = images[entry.image]
        labels = client.images.get(tag).labels
        assert labels.get("io.sandbox-exec.exec-scratch") == ("1" if entry.image in ("gcc", "go", "rust") else "0")
        output = client.containers.run(tag, ["sh", "-c", "find / -xdev -perm /6000 -type f | head -5; "
                                             + " ".join(entry.version) + " 2>&1 | head -1"],
                                       runtime="runsc", network_mode="none", remove=True, user="65534:65534")
        lines = output.decode().strip().splitlines()
        assert len(lines) == 1 and lines[0], (entry.name, lines)  # no setuid/setgid file; the toolchain answers


def test_the_harness_cpu_is_not_a_compiled_programs(runner: Runner, images: dict[str, str]) -> None:
    # the spare's fork and set-up (0.1-0.2 s of CPU under gVisor) happen before the exec: not the program's
    cases = {"cases": [{"input": f"{i} {i * 7}\n", "output": f"{i * 8}\n"} for i in range(20)]}
    many = JobSpec(language="c", program=PROGRAMS["c"]["sum"], stdio=cases, policy="stdio",  # type: ignore[arg-type]
                   limits={"cpu_time_s": 2.5})  # type: ignore[arg-type]
    [result] = runner.run([many])
    assert result.verdict is Verdict.passed and len(result.tests) == 20, result
    assert sum(t.cpu_time_s or 0 for t in result.tests) < 2.5, [t.cpu_time_s for t in result.tests]


def test_identical_programs_are_compiled_once_per_sandbox(runner: Runner, images: dict[str, str]) -> None:
    program = PROGRAMS["cpp"]["sum"] + "// same text\n"
    first, second = runner.run([job("cpp", program), job("cpp", program)])
    assert first.verdict is second.verdict is Verdict.passed
    assert "compile_s" in first.timings and second.timings.get("build_cached") == 1.0, (first.timings, second.timings)


# -- tests in the program's own language ----------------------------------------------------------
def _problems(name: str) -> dict:  # type: ignore[type-arg]
    return load_problems(DATA / name)


HUMANEVAL_X = {"cpp": ("humaneval-x/humaneval_cpp.jsonl.gz", ["CPP/0", "CPP/22", "CPP/137", "CPP/162"]),
               "java": ("humaneval-x/humaneval_java.jsonl.gz", ["Java/0", "Java/1"]),
               "javascript": ("humaneval-x/humaneval_js.jsonl.gz", ["JavaScript/0", "JavaScript/1"]),
               "go": ("humaneval-x/humaneval_go.jsonl.gz", ["Go/0", "Go/1"]),
               "rust": ("humaneval-x/humaneval_rust.jsonl.gz", ["Rust/0", "Rust/1"])}
# Programs that skip their tests by ending early with status 0, then that fail them.
EARLY_EXIT = {"cpp": "exit(0);", "java": "System.exit(0);", "javascript": "process.exit(0);",
              "go": "os.Exit(0)", "rust": "std::process::exit(0);"}


@pytest.mark.parametrize("language", list(HUMANEVAL_X))
def test_humaneval_x_canonical_solutions_pass_and_early_exits_fail(runner: Runner, images: dict[str, str],
                                                                   language: str) -> None:
    path, tasks = HUMANEVAL_X[language]
    problems = _problems(path)
    canonical = [sample_job(i, Sample(task_id=t, completion=problems[t].canonical_solution or ""), problems[t], "humaneval")
                 for i, t in enumerate(tasks)]
    first = problems[tasks[0]]
    # the body's first statement leaves with status 0 before any test could fail
    early = EARLY_EXIT[language] + "\n" + (first.canonical_solution or "")
    cheat = sample_job(90, Sample(task_id=tasks[0], completion=early), first, "humaneval")
    if language == "go":  # the problem's setup imports no os: the sample imports it, as a model could
        cheat = cheat.model_copy(update={"prompt": "import \"os\"\n" + cheat.prompt})
    wrong = sample_job(91, Sample(task_id=tasks[1], completion=problems[tasks[0]].canonical_solution or ""), problems[tasks[1]],
                       "humaneval")
    results = runner.run([*canonical, cheat, wrong, canonical[0].model_copy(update={"id": "again"})])
    assert [r.verdict for r in results[:len(tasks)]] == [Verdict.passed] * len(tasks), \
        [(r.verdict, r.error[:300], [t.message[:300] for t in r.tests]) for r in results]
    assert all("program's own process" in r.tests[0].message for r in results[:len(tasks)])  # the guarantee, said
    cheated = results[len(tasks)]
    assert cheated.verdict is Verdict.failed, cheated
    if language != "go":  # Go's own test runner already fails a test that calls os.Exit(0)
        assert "ended before its tests did" in cheated.tests[0].message, cheated
    assert results[len(tasks) + 1].verdict in (Verdict.failed, Verdict.error), results[len(tasks) + 1]
    assert results[-1].verdict is Verdict.passed


MULTIPL_E = {"cpp": "cpp", "java": "java", "javascript": "javascript", "ts": "typescript", "go_test.go": "go", "rust": "rust"}


def test_multipl_e_self_test_completions(runner: Runner, images: dict[str, str]) -> None:
    """MultiPL-E's own harness self-test: per language the first completion passes, the second does not."""
    folder = DATA / "multipl-e" / "test_inputs"
    jobs, expected = [], []
    for path in sorted(folder.glob("*.json*")):
        opener = gzip.open if path.suffix == ".gz" else open
        with opener(path, "rt") as handle:  # type: ignore[operator]
            row = json.load(handle)
        language = MULTIPL_E[row["language"]]
        for index, completion in enumerate(row["completions"][:2]):
            jobs.append(JobSpec(language=language, prompt=row["prompt"], completion=completion,
                                inline_tests={"code": row["tests"]}, policy="humaneval"))  # type: ignore[arg-type]
            expected.append((language, index == 0))
    results = runner.run(jobs)
    got = [(language, r.verdict is Verdict.passed) for (language, _), r in zip(expected, results)]
    assert got == expected, [(e, r.verdict, r.error[:200], [t.message[:200] for t in r.tests]) for e, r in zip(expected, results)]
    assert all(r.verdict is not Verdict.infra_error for r in results)
    assert {language for language, _ in expected} == set(MULTIPL_E.values())


def test_inline_tests_cannot_be_switched_off_by_the_program(runner: Runner, images: dict[str, str]) -> None:
    """Two forgeries that used to pass wrong programs: a Go init() that sets -test.run so no test runs, and a
    C++ macro that turns every assert into nothing. The finale undoes both; the wrong programs fail."""
    go = _problems(HUMANEVAL_X["go"][0])["Go/0"]
    go_wrong = "    return false\n}\nfunc init() { os.Args = append(os.Args, \"-test.run=^$\"); flag.Set(\"test.run\", \"^$\") }\n"
    go_job = sample_job(1, Sample(task_id="Go/0", completion=go_wrong), go, "humaneval")
    go_job = go_job.model_copy(update={"prompt": "import (\"os\"; \"flag\")\n" + go_job.prompt})
    cpp = _problems(HUMANEVAL_X["cpp"][0])["CPP/0"]
    cpp_wrong = "    return false;\n}\n#define __assert_fail(...) ((void)0)\n"
    cpp_job = sample_job(2, Sample(task_id="CPP/0", completion=cpp_wrong), cpp, "humaneval")
    honest = sample_job(3, Sample(task_id="CPP/0", completion=cpp.canonical_solution or ""), cpp, "humaneval")
    go_result, cpp_result, honest_result = runner.run([go_job, cpp_job, honest])
    assert go_result.verdict is Verdict.failed, go_result
    assert cpp_result.verdict is Verdict.failed, cpp_result
    assert honest_result.verdict is Verdict.passed, honest_result


def test_evaluate_through_the_queue_for_humaneval_x_and_a_stdio_set_in_cpp(tmp_path: Path, images: dict[str, str]) -> None:
    """`sandbox evaluate` end to end (CLI, Redis, a worker, gVisor) on HumanEval-X C++ canonical solutions, and
    C++ answers to a stdio problem set (`--language cpp`)."""
    from tests.integration.services import RedisServer, sandbox_cli, write_jsonl

    server = RedisServer(tmp_path)
    server.start()
    try:
        rows = [json.loads(line) for line in gzip.open(DATA / "humaneval-x" / "humaneval_cpp.jsonl.gz", "rt")][:3]
        write_jsonl(tmp_path / "cpp.jsonl", rows)
        done = sandbox_cli(server.url, tmp_path, "evaluate", "--canonical", "--problems", str(tmp_path / "cpp.jsonl"),
                           "--k", "1", "--local-workers", "1", "--json")
        assert done.returncode == 0, done.stderr
        assert _table(done.stdout)["pass@1"] == 1.0, done.stdout
        stdio = [{"name": "sum", "public_tests": {"input": ["1 2\n"], "output": ["3\n"]},
                  "private_tests": {"input": ["5 7\n"], "output": ["12\n"]}, "generated_tests": {"input": [], "output": []}}]
        write_jsonl(tmp_path / "sum.jsonl", stdio)
        write_jsonl(tmp_path / "answers.jsonl", [{"task_id": "sum", "completion": PROGRAMS["cpp"]["sum"]},
                                                 {"task_id": "sum", "completion": PROGRAMS["cpp"]["wrong"]}])
        done = sandbox_cli(server.url, tmp_path, "evaluate", str(tmp_path / "answers.jsonl"), "--problems",
                           str(tmp_path / "sum.jsonl"), "--language", "cpp", "--k", "1", "--local-workers", "1", "--json")
        assert done.returncode == 0, done.stderr
        assert _table(done.stdout)["pass@1"] == 0.5, done.stdout
    finally:
        server.stop()


def _table(stdout: str) -> dict[str, float]:
    return json.loads(next(line for line in stdout.splitlines() if line.startswith("{")))
