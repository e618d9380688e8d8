"""Tokens of nft's script language, each with the line and columns nft's error messages point at."""

from __future__ import annotations

import re
from dataclasses import dataclass

PUNCT = ("<<", ">>", "<=", ">=", "==", "!=", "+", "{", "}", "(", ")", "[", "]", ";", ",", "=", "@", "$", "&", "|",
         "^", "!", "<", ">", ":", ".", "-", "/", "*")
WORD = re.compile(r"(?:::|[A-Za-z0-9_])[A-Za-z0-9_./:*\-]*|\*")
# A leading minus followed by a digit is a negative number (``priority -100``), not the minus operator.
NEG = re.compile(r"-[0-9][A-Za-z0-9_]*")


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


def tokenize(text: str) -> list[Token]:
    """Split a script into tokens; ``#`` comments and line continuations vanish, newlines remain."""
    out: list[Token] = []
    line, pos, line_start = 1, 0, 0
    n = len(text)
    while pos < n:
        c = text[pos]
        col = pos - line_start + 1
        if c == "\n":
            out.append(Token("nl", "\n", line, col, col))
            line += 1
            pos += 1
            line_start = pos
        elif c in " \t\r":
            pos += 1
        elif c == "\\" and text.startswith("\n", pos + 1):
            pos += 2
            line += 1
            line_start = pos
        elif c == "#":
            while pos < n and text[pos] != "\n":
                pos += 1
        elif c == '"':
            end = text.find('"', pos + 1)
            if end < 0 or "\n" in text[pos:end]:
                raise LexError("syntax error, unexpected junk", line, col, col)
            out.append(Token("string", text[pos + 1:end], line, col, end - line_start + 1))
            pos = end + 1
        else:
            m = WORD.match(text, pos) or (NEG.match(text, pos) if c == "-" and (not out or out[-1].kind != "word"
                                                                             or out[-1].end < col - 1) else None)
            if m:
                word = m.group(0)
                # A trailing colon belongs to a map's key separator, not to the word (``80: accept``).
                if word.endswith(":") and not word.endswith("::"):
                    word = word[:-1]
                out.append(Token("word", word, line, col, col + len(word) - 1))
                pos += len(word)
                continue
            for p in PUNCT:
                if text.startswith(p, pos):
                    out.append(Token("punct", p, line, col, col + len(p) - 1))
                    pos += len(p)
                    break
            else:
                raise LexError("syntax error, unexpected junk", line, col, col)
    out.append(Token("eof", "", line, pos - line_start + 1, pos - line_start + 1))
    return out
