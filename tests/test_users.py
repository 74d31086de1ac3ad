"""The lab's users file (Dovecot passwd-file), checked against real doveadm."""

from __future__ import annotations

import os
import re
import shutil
import stat
import statistics
import subprocess
import time

import pytest

from gponsim.server.dovecot.passwd import (
    Users, UsersError, check_name, hash_password, path_for,
)

LINE_RE = re.compile(r"^(user[12]):\{BLF-CRYPT\}(\$2y\$05\$[./A-Za-z0-9]{53}):::::$")


@pytest.fixture
def users_path(tmp_path):
    return path_for(tmp_path)


def test_default_file_has_user1_user2_hashed_like_doveadm(users_path, tmp_path):
    users = Users.ensure_default(users_path)
    assert users_path == tmp_path / "etc" / "dovecot" / "users"
    lines = users_path.read_text().splitlines()
    assert [LINE_RE.match(line).group(1) for line in lines] == ["user1", "user2"]
    assert stat.S_IMODE(os.stat(users_path).st_mode) == 0o600
    assert users.names() == ["user1", "user2"]
    assert users.verify("user1", "pass") and users.verify("user2", b"pass")
    assert not users.verify("user1", "Pass")
    assert not users.verify("nobody", "pass")


def test_existing_file_is_not_overwritten(users_path):
    Users.ensure_default(users_path)
    before = users_path.read_bytes()
    Users.ensure_default(users_path)
    assert users_path.read_bytes() == before


@pytest.mark.slow          # real Dovecot's doveadm
@pytest.mark.skipif(shutil.which("doveadm") is None,
                    reason="doveadm not installed (apt-get install dovecot-core)")
def test_hashes_interoperate_with_doveadm(users_path):
    users = Users.ensure_default(users_path)
    ours = LINE_RE.match(users_path.read_text().splitlines()[0]).group(2)
    out = subprocess.run(["doveadm", "pw", "-t", "{BLF-CRYPT}" + ours, "-p", "pass"],
                         capture_output=True, text=True, timeout=30)
    assert out.returncode == 0 and "(verified)" in out.stdout, out.stderr
    bad = subprocess.run(["doveadm", "pw", "-t", "{BLF-CRYPT}" + ours, "-p", "wrong"],
                         capture_output=True, text=True, timeout=30)
    assert bad.returncode != 0
    theirs = subprocess.run(["doveadm", "pw", "-s", "BLF-CRYPT", "-p", "s3cret"],
                            capture_output=True, text=True, timeout=30, check=True).stdout.strip()
    assert theirs.startswith("{BLF-CRYPT}$2y$")
    with open(users_path, "a") as fh:
        fh.write(f"carol:{theirs}:::::\n")
    assert users.verify("carol", "s3cret")
    assert not users.verify("carol", "s3cret ")


def test_add_delete_set_password(users_path):
    users = Users.ensure_default(users_path)
    users.add("alice.b-c_9", "secret")
    assert users.exists("alice.b-c_9")
    assert users.verify("alice.b-c_9", "secret")
    users.set_password("alice.b-c_9", "other")
    assert not users.verify("alice.b-c_9", "secret")
    assert users.verify("alice.b-c_9", "other")
    users.delete("user2")
    assert users.names() == ["alice.b-c_9", "user1"]
    assert not users.verify("user2", "pass")
    # what a fresh reader sees is the same
    assert Users.load(users_path).names() == ["alice.b-c_9", "user1"]
    assert stat.S_IMODE(os.stat(users_path).st_mode) == 0o600
    assert sorted(os.listdir(users_path.parent)) == ["users"]       # no temp files left


def test_errors_are_clear(users_path):
    users = Users.ensure_default(users_path)
    with pytest.raises(UsersError, match="already exists"):
        users.add("user1", "x")
    with pytest.raises(UsersError, match="no such user: 'ghost'"):
        users.delete("ghost")
    with pytest.raises(UsersError, match="no such user"):
        users.set_password("ghost", "x")
    for bad in ["", "User1", "a b", "x:y", "ñ", "..", ".", "a/b"]:
        with pytest.raises(UsersError):
            check_name(bad)
        with pytest.raises(UsersError):
            users.add(bad, "pw")
    with pytest.raises(UsersError, match="empty"):
        users.add("dave", "")
    with pytest.raises(UsersError, match="72 bytes"):
        users.add("dave", "x" * 73)
    with pytest.raises(UsersError, match="line breaks"):
        users.add("dave", "a\nb")
    assert users.names() == ["user1", "user2"]


def test_missing_file(tmp_path):
    with pytest.raises(UsersError, match="not found"):
        Users.load(tmp_path / "nope")


@pytest.mark.parametrize("content, message", [
    ("user1:{PLAIN}a:::::\nthis line has no colon\n", r"users:2: malformed line"),
    ("# lab users\n\nUser1:{PLAIN}a\n", r"users:3: invalid user name 'User1'"),
    ("bob:{PLAIN}a\nbob:{PLAIN}b\n", r"users:2: user 'bob' is listed twice"),
    ("bob:{SSHA}abcdef\n", r"users:1: user 'bob': password scheme \{SSHA\} is not supported"),
    ("bob:{BLF-CRYPT}$2y$05$short\n", r"users:1: user 'bob': malformed \{BLF-CRYPT\}"),
    ("bob:secret\n", r"users:1: user 'bob': password is neither"),
])
def test_malformed_file_names_file_and_line(users_path, content, message):
    users_path.parent.mkdir(parents=True)
    users_path.write_text(content)
    with pytest.raises(UsersError, match=message) as info:
        Users.load(users_path)
    assert str(users_path) in str(info.value)


def test_not_utf8(users_path):
    users_path.parent.mkdir(parents=True)
    users_path.write_bytes(b"bob:{PLAIN}\xff\n")
    with pytest.raises(UsersError, match="not UTF-8"):
        Users.load(users_path)


def test_hand_typed_entries_and_comments_survive(users_path):
    bcrypt_bare = hash_password("hashed")[len("{BLF-CRYPT}"):]
    users_path.parent.mkdir(parents=True)
    users_path.write_text(
        "# typed by the instructor\n"
        "plain:{PLAIN}pw1::::\n"
        "clear:{cleartext}pw2\n"
        f"bare:{bcrypt_bare}:1000:1000::/home/bare::\n"
        "\n"
        "nopass:\n")
    users = Users.load(users_path)
    assert users.verify("plain", "pw1") and not users.verify("plain", "pw")
    assert users.verify("clear", "pw2")
    assert users.verify("bare", "hashed")
    assert not users.verify("nopass", "")
    users.set_password("bare", "new")
    users.add("zed", "z")
    text = users_path.read_text().splitlines()
    assert text[0] == "# typed by the instructor"
    assert text[1] == "plain:{PLAIN}pw1::::"
    assert text[3].startswith("bare:{BLF-CRYPT}$2y$05$") and text[3].endswith(":1000:1000::/home/bare::")
    assert text[4] == ""
    assert text[6].startswith("zed:{BLF-CRYPT}")
    assert users.verify("bare", "new")


def test_running_lab_sees_changes_on_disk(users_path):
    running = Users.ensure_default(users_path)
    assert not running.exists("carol")
    Users.load(users_path).add("carol", "c")          # e.g. `gponsim users add`
    assert running.exists("carol") and running.verify("carol", "c")
    # an instructor editing the file by hand
    with open(users_path, "a") as fh:
        fh.write("dan:{PLAIN}d:::::\n")
    assert running.verify("dan", "d")
    # a broken edit is reported, not ignored
    with open(users_path, "a") as fh:
        fh.write("broken line\n")
    with pytest.raises(UsersError, match=r"users:5: malformed line"):
        running.verify("user1", "pass")


def test_password_truncation_matches_bcrypt(users_path):
    users = Users.ensure_default(users_path)
    users.add("long", "a" * 72)
    assert users.verify("long", "a" * 80)             # bcrypt looks at 72 bytes
    assert not users.verify("long", "a" * 71)


def test_unknown_user_costs_like_a_wrong_password(users_path):
    users = Users.ensure_default(users_path)

    def median(name: str) -> float:
        times = []
        for _ in range(15):
            start = time.perf_counter()
            assert not users.verify(name, "wrong")
            times.append(time.perf_counter() - start)
        return statistics.median(times)
    median("user1")                                   # warm up
    wrong, unknown = median("user1"), median("nosuchuser")
    assert unknown > 0.5 * wrong, (unknown, wrong)
