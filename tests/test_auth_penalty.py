"""Dovecot's auth penalty, in memory (the clock moves only when a test says so).

The figures are the ones real Dovecot 2.3.19 gave on this machine with the
lab's configuration (docs/hostile.md): a guessing address waits about
2, 6, 10, 17, 17... seconds for its answers, on any connection; the same
wrong password again is not a new guess; a success forgives.
"""

from __future__ import annotations

import pytest

from dovecot_memory import MemoryLab
from gponsim.server.dovecot import penalty as pen
from gponsim.server.dovecot.penalty import AuthPenalty

FAILED = "a NO [AUTHENTICATIONFAILED] Authentication failed."


@pytest.fixture
def mem(tmp_path, utc):
    lab = MemoryLab(tmp_path, failure_delay=2.0)
    yield lab
    lab.close()


def answer_time(mem, client, line: str, step: float = 0.5, limit: float = 40.0):
    """Send one line; (seconds until the answer, the answer), the clock
    moved half a second at a time."""
    waited = 0.0
    got = client.send(line)
    while not got and waited < limit:
        got = client.send(b"", seconds=step)
        waited += step
    return waited, got


def test_a_guessing_address_waits_longer_each_time_on_any_connection(mem):
    times = []
    for i in range(6):
        c = mem.imap(local=True)            # a new connection for every guess
        c.lines()
        waited, got = answer_time(mem, c, f"a LOGIN user2 guess{i}")
        assert got == [FAILED]
        times.append(waited)
        c.drop()
    assert times == [2.0, 6.0, 10.0, 17.0, 17.0, 17.0]


def test_the_same_wrong_password_again_is_not_a_new_guess(mem):
    c = mem.imap(local=True)
    c.lines()
    times = [answer_time(mem, c, "a LOGIN user2 oldpassword")[0] for _ in range(5)]
    # 15 s after the first failure its penalty is forgotten
    assert times == [2.0, 6.0, 6.0, 6.0, 2.0]


def test_a_success_forgives_and_other_addresses_never_wait(mem):
    guesser = mem.imap(tls_options=object(), implicit_tls=True)     # 192.168.1.50, on 993
    guesser.lines()
    for i in range(3):
        answer_time(mem, guesser, f"a LOGIN user2 guess{i}")
    other = mem.imap(local=True)            # 192.168.1.1: no penalty
    other.lines()
    assert answer_time(mem, other, "b LOGIN user1 wrong")[0] == 2.0
    assert mem.auth_server.penalty.lookup("192.168.1.50") == 3
    # the guesser finally gets it right: after its 15 s, and then it is forgiven
    waited, got = answer_time(mem, guesser, "c LOGIN user2 pass")
    assert waited == 15.0 and got[0].startswith("c OK [CAPABILITY")
    assert mem.auth_server.penalty.lookup("192.168.1.50") == 0


def test_pop3_and_imap_share_the_address_s_penalty(mem):
    c = mem.imap(local=True)
    c.lines()
    answer_time(mem, c, "a LOGIN user2 wrong1")
    p = mem.pop3(local=True)
    p.lines()
    p.send("USER user2")
    # 4 s of penalty, then the 2 s of auth_failure_delay
    assert answer_time(mem, p, "PASS wrong2") == (6.0, ["-ERR [AUTH] Authentication failed."])


# -- the table itself

class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_penalty_seconds_and_decay():
    assert [pen.to_secs(p) for p in range(1, 6)] == [4, 8, 15, 15, 15]
    clock = Clock()
    table = AuthPenalty(clock)
    for value in range(1, 7):
        table.update("10.0.0.1", value, check=value)
    assert table.lookup("10.0.0.1") == pen.MAX_PENALTY
    clock.now += 14.9
    assert table.lookup("10.0.0.1") == pen.MAX_PENALTY
    clock.now += 0.2
    assert table.lookup("10.0.0.1") == 0


def test_the_table_forgets_and_stays_bounded():
    clock = Clock()
    table = AuthPenalty(clock, max_records=100)
    for i in range(1000):
        table.update(f"10.0.{i // 256}.{i % 256}", 1, check=7)
    assert len(table) == 100                        # the oldest went first
    assert table.lookup("10.0.3.231") == 1 and table.lookup("10.0.0.0") == 0
    clock.now += pen.TIMEOUT
    assert len(table) == 0


def test_ipv6_clients_count_by_their_slash_48_and_no_rip_means_no_penalty():
    table = AuthPenalty(Clock())
    table.update("2001:db8:1:aaaa::1", 2, check=5)
    assert table.lookup("2001:db8:1:bbbb::7") == 2
    assert table.lookup("2001:db8:2::1") == 0
    table.update(None, 3, check=5)
    assert table.lookup(None) == 0 and table.lookup("") == 0
