"""How Postfix's smtpd reads the address of MAIL FROM, RCPT TO and VRFY.

Three steps, each with its own way to refuse (Postfix 3.7):

- **The command's words** (``smtpd_token.c``): split at white space, except
  inside ``<...>`` (which may nest) and ``"..."``; an unterminated one makes
  the word an error (``501 5.1.7 Bad sender address syntax``, nothing
  logged). ``FROM:`` and ``TO:`` end a word of their own.
- **The address in the word** (``extract_addr`` and ``tok822_parse``): the
  outer ``<>`` and a source route (``@a,@b:``) are taken off and the rest is
  read as RFC 822: comments dropped, quoted strings and ``[literals]`` kept
  whole. Two addresses in one word (``a b@x``, ``a,b@x``) is illegal.
- **Its domain** (``smtpd_check_addr`` through trivial-rewrite's resolver):
  after the last ``@``, less one trailing dot, it must be a valid host name
  (letters, digits, ``-`` and ``_``; no empty label; no ``-`` at a label's
  ends; not all digits) or an address literal ``[1.2.3.4]``/``[IPv6:...]``.

An illegal address is logged as ``warning: Illegal address syntax from
CLIENT in MAIL command: WORD``.
"""

from __future__ import annotations

import ipaddress

_SPECIALS = set('()<>@,;:\\".[]')


def command_words(text: str) -> tuple[list[str], int | None]:
    """The words of a command's arguments, as smtpd_token.c splits them, and
    the index of the word left unterminated (an open ``<`` or ``"``: it runs
    to the end of the line), if any."""
    words: list[str] = []
    i, n = 0, len(text)
    while i < n:
        while i < n and text[i].isspace():
            i += 1
        if i >= n:
            break
        word = []
        while i < n and not text[i].isspace():
            c = text[i]
            i += 1
            if c in '<"':
                word.append(c)
                wanted, stack = (">" if c == "<" else '"'), []
                while True:
                    if i >= n:
                        words.append("".join(word))
                        return words, len(words) - 1
                    c = text[i]
                    i += 1
                    word.append(c)
                    if c == "\\":
                        if i < n:
                            word.append(text[i])
                            i += 1
                    elif c == wanted:
                        if not stack:
                            break
                        wanted = stack.pop()
                    elif c == '"' and wanted != '"':
                        stack.append(wanted)
                        wanted = '"'
                    elif c == "<" and wanted != '"':
                        stack.append(wanted)
                        wanted = ">"
            elif c == ":":
                word.append(c)
                if "".join(word).lower() in ("to:", "from:"):
                    break
            else:
                word.append(c)
                if c == "\\" and i < n:
                    word.append(text[i])
                    i += 1
        words.append("".join(word))
    return words, None


def _lex(text: str) -> list[tuple[str, str]]:
    """RFC 822 tokens: ("atom"|"quoted"|"literal"|"space"|<special>, text);
    comments are dropped (they separate, as white space does)."""
    out: list[tuple[str, str]] = []
    i, n = 0, len(text)
    while i < n:
        c = text[i]
        if c.isspace():
            i += 1
            out.append(("space", " "))
        elif c == "(":
            depth = 0
            while i < n:
                if text[i] == "\\":
                    i += 2
                    continue
                depth += {"(": 1, ")": -1}.get(text[i], 0)
                i += 1
                if depth == 0:
                    break
            out.append(("space", " "))
        elif c == '"':
            j = i + 1
            while j < n and text[j] != '"':
                j += 2 if text[j] == "\\" else 1
            out.append(("quoted", text[i:j + 1]))
            i = j + 1
        elif c == "[":
            j = text.find("]", i)
            j = n - 1 if j < 0 else j
            out.append(("literal", text[i:j + 1]))
            i = j + 1
        elif c in _SPECIALS and c != "\\":
            out.append((c, c))
            i += 1
        else:
            j = i
            while j < n and not text[j].isspace() and (text[j] not in _SPECIALS or text[j] == "\\"):
                j += 2 if text[j] == "\\" else 1
            out.append(("atom", text[i:j]))
            i = j
    return out


def _addresses(text: str) -> list[str]:
    """The addresses tok822_parse finds in ``text``, in their internal form
    (less comments, brackets and the quotes of quoted strings)."""
    # brackets do not make an address; what follows a "<...>" is another one
    tokens = [("space", " ") if t[0] in "<>" else t for t in _lex(text)]
    if any(kind == ":" for kind, _ in tokens):
        # a group ("name: a, b;"): its name is no address
        last = max(i for i, (kind, _) in enumerate(tokens) if kind == ":")
        tokens = tokens[last + 1:]
    found: list[list[tuple[str, str]]] = [[]]
    word = ("atom", "quoted", "literal")
    previous = None         # the last token that was not space
    spaced = False
    for kind, value in tokens:
        if kind in ",;":
            found.append([])
            previous, spaced = None, False
            continue
        if kind == "space":
            spaced = True
            continue
        if spaced and previous in word and kind in word:
            found.append([])            # "a b": two addresses
        found[-1].append((kind, value))
        previous, spaced = kind, False
    # the internal form (tok822_internalize): quoted strings without their quotes
    return ["".join(value[1:-1] if kind == "quoted" else value for kind, value in part)
            for part in found if part]


def valid_hostname(name: str) -> bool:
    """valid_hostname.c: letters, digits, '-' and '_' in non-empty labels of
    at most 63, no '-' at a label's ends, at most 255 in all, not all digits."""
    if not name or len(name) > 255:
        return False
    numeric = True
    for label in name.split("."):
        if not label or len(label) > 63 or label[0] == "-" or label[-1] == "-":
            return False
        for c in label:
            if not (c.isascii() and (c.isalnum() or c in "-_")):
                return False
            if not c.isdigit():
                numeric = False
    return not numeric


def _valid_literal(literal: str) -> bool:
    inner = literal[1:-1] if literal.startswith("[") and literal.endswith("]") else None
    if not inner:
        return False
    try:
        if inner[:5].upper() == "IPV6:":
            return ipaddress.ip_address(inner[5:]).version == 6
        return ipaddress.ip_address(inner).version == 4
    except ValueError:
        return False


def _valid_domain(address: str, smtputf8: bool) -> bool:
    """smtpd_check_addr(): the resolver must take the address's domain; a
    non-ASCII one only in a transaction that asked for SMTPUTF8 (then as
    its IDNA form, valid_utf8_hostname)."""
    if "@" not in address:
        return True
    domain = address.rsplit("@", 1)[1]
    if domain.endswith("."):
        domain = domain[:-1]
    if domain.startswith("["):
        return _valid_literal(domain)
    if smtputf8 and not domain.isascii():
        try:
            domain = domain.encode("idna").decode("ascii")
        except UnicodeError:
            return False
    return valid_hostname(domain)


def extract_address(word: str, allow_empty: bool, smtputf8: bool = False) -> str | None:
    """The address in one command word, or None when Postfix finds it illegal
    (``smtputf8``: the client asked for SMTPUTF8 in MAIL FROM or VRFY)."""
    text = word[1:-1] if len(word) >= 2 and word[0] == "<" and word[-1] == ">" else word
    if text.startswith("@") and ":" in text:
        text = text.split(":", 1)[1]            # a source route: dropped
    found = _addresses(text)
    if len(found) > 1:
        return None
    address = found[0] if found else ""
    if not address:
        return "" if allow_empty else None
    return address if _valid_domain(address, smtputf8) else None
