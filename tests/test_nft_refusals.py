"""What nft 1.0.6 refuses, and how it says so: jump loops and jumps nested deeper than the kernel's
jump stack (EMLINK, blamed on the rule that made the table invalid and on every later rule of that
table in the batch). Each case runs through the real nft in a kp- namespace and through the emulator;
exit status and stderr must be the same, carets included."""

from __future__ import annotations

from pathlib import Path

import pytest

from kproxy.nftables.cli import run_nft
from kproxy.nftables.model import Ruleset

LOOP = """table ip t {
	chain a {
		jump b
	}
	chain b {
		counter
		jump a
	}
	chain base {
		type filter hook input priority 0; policy accept;
		jump a
	}
}
"""
# the loop closes at line 7, and the kernel refuses line 8 too (the table is validated at every rule)
LOOP_COMMANDS = """add table ip x
add chain ip x a
add chain ip x b
add chain ip x base { type filter hook input priority 0; }
add rule ip x base jump a
add rule ip x a counter jump b
add rule ip x b jump a
add rule ip x b accept
add table ip other
add chain ip other c
add rule ip other c accept
"""
# a base chain declared first: the loop closes in chain b, and a later rule of the same table fails too
LOOP_LATE = """table ip y {
	chain base {
		type filter hook input priority 0; policy accept;
		jump a
	}
	chain a {
		jump b
	}
	chain b {
		ip saddr 1.2.3.4 jump a
		counter
	}
}
add rule ip y a jump a
"""
# a loop through a named verdict map's element: no rule of the batch is to blame
VMAP_LOOP = """table ip t {
	map vm {
		type ipv4_addr : verdict
		elements = { 10.96.0.10 : jump u1 }
	}
	chain c {
		type filter hook forward priority filter;
		jump u1
	}
	chain u1 {
		ip daddr vmap @vm
	}
}
"""
# regular chains that call each other but that no base chain reaches are accepted
UNREACHED = "table ip t {\n\tchain a {\n\t\tjump b\n\t}\n\tchain b {\n\t\tjump a\n\t}\n}\n"


def chain_of(depth: int) -> str:
    """A base chain jumping down a line of ``depth`` regular chains."""
    lines = ["table ip d {"]
    lines += [f"\tchain c{i} {{\n\t\tjump c{i + 1}\n\t}}" for i in range(depth - 1)]
    lines += [f"\tchain c{depth - 1} {{\n\t\tcounter\n\t}}",
              "\tchain base {\n\t\ttype filter hook input priority 0; policy accept;\n\t\tjump c0\n\t}", "}"]
    return "\n".join(lines) + "\n"


CASES = {"loop": LOOP, "loop-commands": LOOP_COMMANDS, "loop-late": LOOP_LATE, "vmap-loop": VMAP_LOOP,
         "unreached": UNREACHED, "depth-15": chain_of(15), "depth-16": chain_of(16), "depth-19": chain_of(19)}


def emulated(path: Path) -> tuple[int, str]:
    rc, _, err, _ = run_nft(["-f", str(path)], Ruleset())
    return rc, err


@pytest.mark.kernel
@pytest.mark.parametrize("name", sorted(CASES))
def test_jump_refusals_match_the_real_nft(kernel_ns, tmp_path: Path, name: str) -> None:
    path = tmp_path / f"{name}.nft"
    path.write_text(CASES[name])
    real = kernel_ns.run(["nft", "-f", str(path)], check=False)
    assert emulated(path) == (real.returncode, real.stderr)


@pytest.mark.kernel
def test_jump_refusals_on_the_command_line_match_the_real_nft(kernel_ns) -> None:
    rs = Ruleset()
    for line in LOOP_COMMANDS.splitlines() + ["insert rule ip x b jump a", "add rule ip x b jump b"]:
        argv = line.split()
        real = kernel_ns.run(["nft", *argv], check=False)
        rc, _, err, rs = run_nft(argv, rs)
        assert (rc, err) == (real.returncode, real.stderr), line
    assert run_nft(["list", "ruleset"], rs)[1] == kernel_ns.run(["nft", "list", "ruleset"]).stdout


def test_the_rule_that_closes_a_loop_is_blamed(tmp_path: Path) -> None:
    path = tmp_path / "loop.nft"
    path.write_text(LOOP_COMMANDS)
    rc, err = emulated(path)
    assert rc == 1
    assert err == (f"{path}:7:1-23: Error: Could not process rule: Too many links\nadd rule ip x b jump a\n"
                   f"{'^' * 23}\n{path}:8:1-23: Error: Could not process rule: Too many links\n"
                   f"add rule ip x b accept\n{'^' * 23}\n")
    path.write_text(chain_of(17))
    assert emulated(path)[1].startswith(f"{path}:55:3-9: Error: Could not process rule: Too many links\n"
                                        "\t\tjump c0\n\t\t^^^^^^^\n")
    path.write_text(chain_of(16))                        # 16 jumps deep fill the kernel's jump stack
    assert emulated(path)[0] == 1
    path.write_text(chain_of(15))
    assert emulated(path) == (0, "")


# ---- chain names that are nft keywords -----------------------------------------------------------------
KEYWORD_COMMANDS = [
    "add chain ip t accept", "add chain ip t counter", "add chain ip t eq", "add chain ip t or",
    "add chain ip t not", "add chain ip t 123", "add chain ip t 0x10", 'add chain ip t "accept"',
    "create chain ip t jump", "add rule ip t x jump accept", 'add rule ip t x jump "x"', "add rule ip t x goto eq",
    "add rule ip t x ip daddr vmap { 1.1.1.1 : jump accept }", 'add rule ip t x ip daddr vmap { 1.1.1.1 : goto "x" }',
    "add rule ip t counter accept", "insert rule ip t type accept", "delete chain ip t meta",
    "flush chain ip t meta", "list chain ip t meta", "rename chain ip t x meta", "rename chain ip t meta y",
    "delete rule ip t mark handle 3", "add element ip t m { 1.1.1.1 : jump tcp }",
    # scoped keywords, a name starting with digits, and hook names are names
    "add chain ip t daddr", "add chain ip t name", "add chain ip t last", "add chain ip t 8021q",
    "add chain ip t input", "add chain ip t filter",
]
SETUP = ["add table ip t", "add chain ip t x", "add map ip t m { type ipv4_addr : verdict ; }"]


def shell_words(line: str) -> list[str]:
    import shlex

    return shlex.split(line.replace('"', '\\"'))


@pytest.mark.kernel
def test_keyword_chain_names_are_refused_like_the_real_nft(kernel_ns) -> None:
    rs = Ruleset()
    for line in SETUP:
        assert kernel_ns.run(["nft", *shell_words(line)], check=False).returncode == 0
        rc, _, err, rs = run_nft(shell_words(line), rs)
        assert rc == 0, err
    for line in KEYWORD_COMMANDS:
        argv = shell_words(line)
        real = kernel_ns.run(["nft", *argv], check=False)
        rc, _, err, rs = run_nft(argv, rs)
        assert (rc, err) == (real.returncode, real.stderr), line
    assert run_nft(["list", "ruleset"], rs)[1] == kernel_ns.run(["nft", "list", "ruleset"]).stdout


KEYWORD_FILE = """table ip k {
	chain ok {
		jump x
	}
	chain x {
	}
}
add chain ip k return
"""


@pytest.mark.kernel
def test_a_keyword_chain_name_in_a_file_is_refused_like_the_real_nft(kernel_ns, tmp_path: Path) -> None:
    path = tmp_path / "kw.nft"
    for text in (KEYWORD_FILE, KEYWORD_FILE.replace("chain x {", "chain counter {"),
                 KEYWORD_FILE.replace("jump x", "goto ct")):
        path.write_text(text)
        real = kernel_ns.run(["nft", "-f", str(path)], check=False)
        rc, err = emulated(path)
        # nft's parser recovers from a syntax error and reports what follows as it finds it; so does kproxy
        assert (rc, err) == (real.returncode, real.stderr)


def test_keyword_chain_names_are_syntax_errors_at_the_name(tmp_path: Path) -> None:
    rs = run_nft(["add", "table", "ip", "t"], Ruleset())[3]
    assert run_nft(["add", "chain", "ip", "t", "eq"], rs)[:3] == (
        1, "", "Error: syntax error, unexpected ==, expecting string\nadd chain ip t eq\n               ^^\n")
    # before the table is looked up: nft parses the whole command before it evaluates any of it
    assert run_nft(["add", "chain", "ip", "nosuch", "meta"], rs)[2].startswith(
        "Error: syntax error, unexpected meta, expecting string\n")
    path = tmp_path / "kw.nft"
    path.write_text(KEYWORD_FILE)
    assert emulated(path) == (1, f"{path}:8:16-21: Error: syntax error, unexpected return, expecting string\n"
                                 f"add chain ip k return\n{' ' * 15}^^^^^^\n")
    # the same command line by line goes through the fast path, which leaves such lines to the parser
    path.write_text("add table ip f\nadd chain ip f x\nflush chain ip f ct\n")
    assert emulated(path)[1].startswith(f"{path}:3:18-19: Error: syntax error, unexpected ct, expecting string\n")
    assert run_nft(["add", "chain", "ip", "t", "daddr"], rs)[0] == 0


CONFLICTS = ["udp sport 1 ip protocol tcp tcp dport 2", "ip protocol udp ip protocol tcp tcp dport 2",
             "ip protocol tcp udp dport 2", "udp sport 1 meta l4proto tcp tcp dport 2",
             "meta l4proto udp udp sport 1 meta l4proto tcp th dport 2", "udp sport 1 ip protocol tcp udp dport 2"]


@pytest.mark.kernel
def test_transport_protocol_conflicts_are_found_as_nft_finds_them(kernel_ns) -> None:
    """What fixed the transport protocol first stays for nft's conflict check past a later explicit
    match, and that later match counts too (found by the random listing test)."""
    rs = Ruleset()
    for line in ["add table ip t", "add chain ip t c", *(f"add rule ip t c {r}" for r in CONFLICTS)]:
        real = kernel_ns.run(["nft", *line.split()], check=False)
        rc, _, err, rs = run_nft(line.split(), rs)
        assert (rc, err) == (real.returncode, real.stderr), line
    assert run_nft(["list", "ruleset"], rs)[1] == kernel_ns.run(["nft", "list", "ruleset"]).stdout
