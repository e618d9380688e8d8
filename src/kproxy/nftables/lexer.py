"""Tokens of nft's script language, each with the line and columns nft's error messages point at."""

from __future__ import annotations

import re
from dataclasses import dataclass


@dataclass(frozen=True)
class Token:
    kind: str  # "word", "string", "punct", "nl", "eof"
    text: str
    line: int
    col: int  # 1-based first column
    end: int  # 1-based last column

    def __repr__(self) -> str:
        return f"{self.kind}:{self.text!r}@{self.line}:{self.col}"


class LexError(Exception):
    def __init__(self, msg: str, line: int, col: int, end: int) -> None:
        super().__init__(msg)
        self.line, self.col, self.end = line, col, end


# One scan of the text: each alternative is one token class, tried at the current position in this order.
SCAN = re.compile(r"""
    (?P<nl>\n) | (?P<ws>[ \t\r]+) | (?P<cont>\\\n) | (?P<comment>\#[^\n]*) | (?P<string>"[^"\n]*")
  | (?P<word>(?:::|[A-Za-z0-9_])[A-Za-z0-9_./:*\-]*|\*) | (?P<neg>-[0-9][A-Za-z0-9_]*)
  | (?P<punct><<|>>|<=|>=|==|!=|[-+{}()\[\];,=@$&|^!<>:./*])
""", re.X)


def tokenize(text: str, first_line: int = 1) -> list[Token]:
    """Split a script into tokens; ``#`` comments and line continuations vanish, newlines remain.
    ``first_line`` numbers the lines of a part of a longer script."""
    out: list[Token] = []
    append = out.append
    line, pos, line_start = first_line, 0, 0
    n = len(text)
    match = SCAN.match
    while pos < n:
        m = match(text, pos)
        col = pos - line_start + 1
        if m is None:
            raise LexError("syntax error, unexpected junk", line, col, col)
        kind = m.lastgroup
        end = m.end()
        if kind == "word":
            word = m.group()
            # A trailing colon belongs to a map's key separator, not to the word (``80: accept``).
            if word[-1] == ":" and not word.endswith("::"):
                word = word[:-1]
                end -= 1
            append(Token("word", word, line, col, col + len(word) - 1))
        elif kind == "ws" or kind == "comment":
            pass
        elif kind == "nl":
            append(Token("nl", "\n", line, col, col))
            line += 1
            line_start = end
        elif kind == "punct":
            append(Token("punct", m.group(), line, col, col + end - pos - 1))
        elif kind == "string":
            append(Token("string", text[pos + 1:end - 1], line, col, col + end - pos - 1))
        elif kind == "neg":
            # A leading minus followed by a digit is a negative number (``priority -100``), unless it follows
            # a word directly (``10-20`` is read whole as a word; ``a -1`` is not).
            last = out[-1] if out else None
            if last is None or last.kind != "word" or last.end < col - 1:
                append(Token("word", m.group(), line, col, col + end - pos - 1))
            else:
                append(Token("punct", "-", line, col, col))
                end = pos + 1
        else:  # a backslash continues the line
            line += 1
            line_start = end
        pos = end
    out.append(Token("eof", "", line, pos - line_start + 1, pos - line_start + 1))
    return out


# The words nft 1.0.6's scanner turns into keywords in every scanner state (scanner.l's rules without a
# start condition): where the grammar wants an ``identifier`` (a chain's name, a jump's target) they
# are syntax errors. Words scoped to a state (``daddr``, ``name``, ``last``, ...) are names there.
SCANNER_KEYWORDS = frozenset((
    "accept", "add", "ah", "all", "and", "arp", "auto-merge", "bridge", "cgroup", "chain", "comment", "comp",
    "constant", "continue", "counter", "cpu", "create", "ct", "day", "dccp", "define", "delete", "describe",
    "device", "devices", "dnat", "drop", "dst", "dup", "dynamic", "ecn", "element", "elements", "eq", "esp",
    "ether", "exists", "expires", "export", "exthdr", "fib", "flags", "flow", "flowtable", "flush", "frag",
    "fwd", "gc-interval", "ge", "get", "goto", "gt", "handle", "hbh", "hook", "hour", "ibriport", "ibrname",
    "icmp", "icmpv6", "igmp", "iif", "iifgroup", "iifname", "iiftype", "import", "include", "index", "inet",
    "insert", "interval", "ip", "ip6", "ipsec", "jhash", "jump", "le", "limit", "list", "log", "lshift", "lt",
    "map", "mark", "masquerade", "meta", "meter", "mh", "missing", "monitor", "ne", "netdev", "nftrace", "not",
    "notrack", "numgen", "obriport", "obrname", "offload", "oif", "oifgroup", "oifname", "oiftype", "or",
    "osf", "pkttype", "policy", "position", "priority", "queue", "quota", "random", "redefine", "redirect",
    "reject", "rename", "replace", "reset", "return", "rshift", "rt", "rt0", "rt2", "rtclassid", "rule",
    "ruleset", "sctp", "secmark", "set", "size", "skgid", "skuid", "snat", "socket", "srh", "symhash",
    "synproxy", "table", "tcp", "th", "time", "timeout", "tproxy", "type", "typeof", "udp", "udplite",
    "undefine", "update", "vlan", "vmap", "xor", "xt",
))
# How bison names the keywords spelled as operators in its messages ("unexpected ==").
KEYWORD_NAMES = {"eq": "==", "ne": "!=", "le": "<=", "lt": "<", "ge": ">=", "gt": ">", "lshift": "<<",
                 "rshift": ">>", "xor": "^", "and": "&", "not": "!", "or": "'|'"}
# Punctuation nft's grammar declares as named tokens (COLON "colon", SLASH "/", ...); the rest are
# character literals, which bison quotes.
PUNCT_NAMES = {",": "comma", ":": "colon", ";": "semicolon", ".": ".", "/": "/", "^": "^", "&": "&", "!": "!",
               "<": "<", ">": ">", "*": "*", "-": "-", "@": "@", "+": "+"}
NUMBER = re.compile(r"[0-9]+|0x[0-9a-fA-F]+")


def token_name(t: Token) -> str:
    """A token as bison's "unexpected ..." names it."""
    if t.kind == "eof":
        return "end of file"
    if t.kind == "nl":
        return "newline"
    if t.kind == "string":
        return "quoted string"
    if t.kind == "punct":
        return PUNCT_NAMES.get(t.text, f"'{t.text}'")
    if NUMBER.fullmatch(t.text):
        return "number"
    if t.kind == "word" and t.text not in SCANNER_KEYWORDS:
        return "string"       # no keyword of nft's scanner: bison's "string"
    return KEYWORD_NAMES.get(t.text, t.text)


def is_identifier(t: Token) -> bool:
    """Whether nft's grammar reads ``t`` as an ``identifier`` (a bare word that is no keyword, no number)."""
    return t.kind == "word" and t.text not in SCANNER_KEYWORDS and not NUMBER.fullmatch(t.text)
