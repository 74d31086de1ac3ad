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
  ends; not all digits) or an address literal ``[1.2.3.4]``/``[IPv6:...]``
  as ``valid_hostname.c`` reads them (dotted-quad decimal, each part at
  most 255, so ``[01.2.3.4]`` passes; IPv6 as 16-bit hex fields).

An illegal address is logged as ``warning: Illegal address syntax from
CLIENT in MAIL command: WORD``. When its domain is a bracketed literal whose
inside is no address (``[foo]``, ``[1.2.3]``), trivial-rewrite, asked first,
has already logged why (``resolve_local()`` checks whether the literal is
one of the server's own addresses, complaining as it parses it):
``warning: valid_ipv4_hostaddr: invalid character 102(decimal): foo``
(:func:`literal_warning`).
"""

from __future__ import annotations

import socket
from typing import Callable

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
            # tok822 keeps a literal's inside and writes it back bracketed:
            # an unterminated one gets its "]"
            j = text.find("]", i)
            j = n if j < 0 else j + 1
            out.append(("literal", text[i:j] if text[j - 1] == "]" and j - 1 > i
                        else text[i:j] + "]"))
            i = j
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


def ipv4_hostaddr_problem(addr: str) -> str | None:
    """valid_ipv4_hostaddr(): what is wrong with a dotted quad (its warning), or None."""
    where = "valid_ipv4_hostaddr"
    in_byte, count, value = False, 0, 0
    for i, c in enumerate(addr):
        if "0" <= c <= "9":
            if not in_byte:
                in_byte, count, value = True, count + 1, 0
            value = value * 10 + int(c)
            if value > 255:
                return f"{where}: invalid octet value: {addr[:100]}"
        elif c == ".":
            if not in_byte or i == len(addr) - 1:
                return f"{where}: misplaced dot: {addr[:100]}"
            # 0.0.0.0 is allowed, 0.1.2.3 is not
            if count == 1 and value == 0 and addr.lstrip("0.") != "":
                return f"{where}: bad initial octet value: {addr[:100]}"
            in_byte = False
        else:
            return f"{where}: invalid character {_code(c)}(decimal): {addr[:100]}"
    if count != 4:
        return f"{where}: invalid octet count: {addr[:100]}"
    return None


def _code(c: str) -> int:
    """The character's code as C reads it: its first UTF-8 byte."""
    return ord(c) if ord(c) < 128 else c.encode("utf-8", "surrogateescape")[0]


_HEX = set("0123456789abcdefABCDEF")


def ipv6_hostaddr_problem(addr: str) -> str | None:
    """valid_ipv6_hostaddr(): eight 16-bit hex fields (one ``::`` at most, an
    IPv4 tail allowed); what is wrong (its warning), or None."""
    where, show = "valid_ipv6_hostaddr", addr[:100]
    null_field = field = length = 0
    i, n = 0, len(addr)
    while True:
        c = addr[i] if i < n else ""
        if c == "":
            if field < 2:
                return f"{where}: too few `:' in IPv6 address: {show}"
            if length == 0 and null_field != field - 1:
                return f"{where}: bad null last field in IPv6 address: {show}"
            return None
        if c == ".":
            if field < 2 or field > 6:
                return f"{where}: malformed IPv4-in-IPv6 address: {show}"
            return ipv4_hostaddr_problem(addr[i - length:])
        if c == ":":
            if field == 0 and length == 0 and i + 1 < n and addr[i + 1].isascii() \
                    and addr[i + 1].isalnum():
                return f"{where}: bad null first field in IPv6 address: {show}"
            field += 1
            if field > 7:
                return f"{where}: too many `:' in IPv6 address: {show}"
            i, length = i + 1, 0
            if i < n and addr[i] == ":":
                if null_field > 0:
                    return f"{where}: too many `::' in IPv6 address: {show}"
                null_field = field
            continue
        length = 0
        while i + length < n and addr[i + length] in _HEX:
            length += 1
        if length > 4:
            return f"{where}: malformed IPv6 address: {show}"
        if length == 0:
            return f"{where}: invalid character {_code(c)}(decimal) in IPv6 address: {show}"
        i += length


def mailhost_addr_problem(text: str) -> str | None:
    """valid_mailhost_addr(): the inside of a literal, ``IPv6:`` (any case)
    then an IPv6 address, else an IPv4 one; what is wrong, or None."""
    if text[:5].lower() == "ipv6:":
        return ipv6_hostaddr_problem(text[5:])
    return ipv4_hostaddr_problem(text)


#: INET6_ADDRSTRLEN: the longest inside of a literal that valid_mailhost_literal() reads
_HOSTADDR_MAX = 46


def _valid_literal(literal: str) -> bool:
    """valid_mailhost_literal(): ``[`` first, the first ``]`` last, an address inside."""
    end = literal.find("]")
    if not literal.startswith("[") or end != len(literal) - 1 or end - 1 >= _HOSTADDR_MAX:
        return False
    return mailhost_addr_problem(literal[1:-1]) is None


def _strip_dot(domain: str) -> str:
    """resolve_local(): one trailing dot is dropped ("" when that is not enough)."""
    if domain.endswith("."):
        domain = domain[:-1]
    return "" if not domain or domain.endswith(".") else domain


def _bracketed(domain: str) -> str | None:
    """The inside of a domain that resolve_local() reads as an address literal
    (``[...]``, after one trailing dot is dropped), or None."""
    domain = _strip_dot(domain)
    if len(domain) < 2 or not (domain.startswith("[") and domain.endswith("]")):
        return None
    return domain[1:-1]


def literal_warning(domain: str) -> str | None:
    """What trivial-rewrite logs (``warning: ...``) when it resolves an address
    in ``domain``: resolve_local() parses a bracketed domain as an address,
    complaining about what is not one (``valid_ipv4_hostaddr: invalid
    character 102(decimal): foo``)."""
    text = _bracketed(domain)
    problem = mailhost_addr_problem(text) if text is not None else None
    return f"warning: {problem}" if problem else None


def literal_address(domain: str) -> tuple[int, bytes] | None:
    """The address a bracketed domain names, as resolve_local() converts it
    (``getaddrinfo()``, numeric: an IPv4 part with a leading 0 is octal, so
    ``[0177.0.0.1]`` is 127.0.0.1): ``(family, packed)``, or None."""
    text = _bracketed(domain)
    if text is None or mailhost_addr_problem(text) is not None:
        return None
    try:
        if text[:5].lower() == "ipv6:":
            return socket.AF_INET6, socket.inet_pton(socket.AF_INET6, text[5:])
        return socket.AF_INET, socket.inet_aton(text)
    except OSError:
        return None          # [09.1.1.1]: valid syntax, no address (a remote domain)


def resolve_local(domain: str, mydestination, own_addresses) -> bool:
    """resolve_local(): whether ``domain`` is this server's: listed in
    ``mydestination`` (lower case, one trailing dot dropped), or an address
    literal naming one of the server's own addresses (``own_addresses``:
    ``(family, packed)`` pairs, :func:`packed_address`)."""
    domain = _strip_dot(domain.lower())
    if not domain:
        return False
    if domain in mydestination:
        return True
    named = literal_address(domain)
    return named is not None and named in own_addresses


def own_address_set(addresses) -> frozenset:
    """The server's own addresses (text) as :func:`resolve_local` compares them."""
    return frozenset(filter(None, map(packed_address, addresses)))


def packed_address(ip: str) -> tuple[int, bytes] | None:
    """``(family, packed)`` of an IP address as text (None when it is none)."""
    for family in (socket.AF_INET, socket.AF_INET6):
        try:
            return family, socket.inet_pton(family, ip)
        except OSError:
            continue
    return None


#: RFC 5322 specials that make a local part quoted, less "." (checked apart)
_QUOTED_SPECIALS = set('()<>@,;:\\"[]')


def _needs_quoting(local: str) -> bool:
    if not local:
        return False
    if local.startswith(".") or local.endswith(".") or ".." in local:
        return True
    return any(c in _QUOTED_SPECIALS or c == " " or ord(c) < 0x20 or ord(c) == 0x7F
               for c in local)


def quote_822_local(address: str) -> str:
    """Quote the local part of ``address`` when RFC 5322 needs it.

    ``john smith@example.org`` -> ``"john smith"@example.org``; an ordinary
    address is returned unchanged (Postfix ``quote_822_local``).
    """
    local, at, domain = address.rpartition("@")
    if not at:
        local, domain = address, ""
    if at and not local:
        return f'""@{domain}'                   # an empty local part: <@gponlab.local>
    if not _needs_quoting(local):
        return address
    quoted = '"' + local.replace("\\", "\\\\").replace('"', '\\"') + '"'
    return quoted + (f"@{domain}" if at else "")


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


def extract_address(word: str, allow_empty: bool, smtputf8: bool = False,
                    resolved: Callable[[str, str | None], None] | None = None) -> str | None:
    """The address in one command word, or None when Postfix finds it illegal
    (``smtputf8``: the client asked for SMTPUTF8 in MAIL FROM or VRFY).
    ``resolved(address, warning)``: called for the address smtpd has
    trivial-rewrite resolve, with what trivial-rewrite logs about it
    (:func:`literal_warning`, or None)."""
    text = word[1:-1] if len(word) >= 2 and word[0] == "<" and word[-1] == ">" else word
    if text.startswith("@") and ":" in text:
        text = text.split(":", 1)[1]            # a source route: dropped
    found = _addresses(text)
    if len(found) > 1:
        return None
    address = found[0] if found else ""
    if not address:
        return "" if allow_empty else None
    if resolved is not None:
        resolved(address, literal_warning(address.rsplit("@", 1)[1]) if "@" in address else None)
    return address if _valid_domain(address, smtputf8) else None
