"""Staff accounts: argon2id hashes, the `member-support staff` commands, the table's rules."""

from __future__ import annotations

import io
import sys
from collections.abc import Iterator
from pathlib import Path

import asyncpg
import pytest
from argon2 import PasswordHasher
from conftest import asyncpg_dsn, fresh_database
from ops_support import execute, fetch_value, run, run_cli

from app import cli, staff
from app.migrations import upgrade_to_head

PASSWORD = "correct horse battery staple"


@pytest.fixture(scope="module")
def staff_database(server_url: str) -> Iterator[str]:
    """A migrated database whose rows the CLI (in this process or a shell) commits."""
    with fresh_database(server_url) as url:
        upgrade_to_head(url)
        yield url


@pytest.fixture
def database(staff_database: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    run(execute(staff_database, "TRUNCATE staff CASCADE"))
    monkeypatch.setenv("DATABASE_URL", staff_database)
    yield staff_database


def _cli(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], *arguments: str, stdin: str
) -> tuple[int, str, str]:
    """`member-support ARGS` in this process with `stdin` as standard input."""
    monkeypatch.setattr(sys, "stdin", io.StringIO(stdin))
    code = 0
    try:
        cli.main(list(arguments))
    except SystemExit as exit_info:
        code = int(exit_info.code or 0)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def _hash_of(url: str, email: str) -> str:
    value = run(fetch_value(url, "SELECT password_hash FROM staff WHERE email = $1", email))
    assert isinstance(value, str)
    return value


# --- passwords --------------------------------------------------------------------------


def test_a_password_is_stored_as_an_argon2id_hash_that_verifies() -> None:
    hashed = staff.hash_password(PASSWORD)
    assert hashed.startswith("$argon2id$")
    assert PASSWORD not in hashed
    assert staff.verify(hashed, PASSWORD) == staff.Verification(ok=True)
    assert staff.verify(hashed, PASSWORD + "!") == staff.Verification(ok=False)
    assert staff.verify("not a hash", PASSWORD) == staff.Verification(ok=False)


def test_a_hash_made_with_other_parameters_is_replaced_at_the_next_good_login() -> None:
    weaker = PasswordHasher(time_cost=1, memory_cost=8192, parallelism=1).hash(PASSWORD)
    outcome = staff.verify(weaker, PASSWORD)
    assert outcome.ok and outcome.new_hash is not None
    assert outcome.new_hash != weaker
    assert staff.verify(outcome.new_hash, PASSWORD) == staff.Verification(ok=True)
    assert staff.verify(weaker, "wrong password!") == staff.Verification(ok=False)


@pytest.mark.parametrize(
    ("password", "rule"),
    [("short-11ch", "at least 12"), ("x" * 1025, "at most 1024"), (" " * 12, "blank")],
)
def test_a_password_that_breaks_the_rule_is_refused_without_echoing_it(
    password: str, rule: str
) -> None:
    with pytest.raises(staff.InvalidStaffInput, match=rule) as error:
        staff.hash_password(password)
    assert password.strip() == "" or password not in str(error.value)


def test_an_overlong_password_is_refused_before_any_hashing() -> None:
    assert staff.verify(staff.hash_password(PASSWORD), "x" * 5000) == staff.Verification(ok=False)


# --- the commands -----------------------------------------------------------------------


def test_staff_add_list_disable_and_set_password(
    database: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, _ = _cli(
        monkeypatch,
        capsys,
        *("staff", "add", "  Ann.Lee@Example.ORG ", "--name", " Ann Lee ", "--password-stdin"),
        stdin=PASSWORD + "\n",
    )
    assert code == 0
    assert out.startswith("added agent ann.lee@example.org (")
    first_hash = _hash_of(database, "ann.lee@example.org")
    assert staff.verify(first_hash, PASSWORD).ok

    code, out, _ = _cli(
        monkeypatch,
        capsys,
        *("staff", "add", "boss@example.org", "--name", "Boss", "--admin", "--password-stdin"),
        stdin=PASSWORD + "\n",
    )
    assert (code, out.split(" (")[0]) == (0, "added admin boss@example.org")

    code, out, _ = _cli(monkeypatch, capsys, "staff", "disable", "ANN.LEE@example.org", stdin="")
    assert (code, out) == (0, "disabled ann.lee@example.org\n")
    code, out, _ = _cli(monkeypatch, capsys, "staff", "disable", "ann.lee@example.org", stdin="")
    assert (code, out) == (0, "already disabled: ann.lee@example.org\n")

    code, out, _ = _cli(monkeypatch, capsys, "staff", "list", stdin="")
    assert code == 0
    header, boss, ann = out.splitlines()
    assert header.split() == ["email", "name", "role", "active", "id"]
    assert boss.split()[:4] == ["boss@example.org", "Boss", "admin", "yes"]
    assert ann.split()[:5] == ["ann.lee@example.org", "Ann", "Lee", "agent", "no"]
    assert "$argon2" not in out

    new_password = "a brand new passphrase"
    code, out, _ = _cli(
        monkeypatch,
        capsys,
        *("staff", "set-password", "ann.lee@example.org", "--password-stdin"),
        stdin=new_password + "\n",
    )
    assert (code, out) == (0, "password changed for ann.lee@example.org\n")
    second_hash = _hash_of(database, "ann.lee@example.org")
    assert staff.verify(second_hash, new_password).ok
    assert not staff.verify(second_hash, PASSWORD).ok


def test_adding_an_existing_email_fails_with_one_line_and_changes_nothing(
    database: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    arguments = ("staff", "add", "ann@example.org", "--name", "Ann", "--password-stdin")
    assert _cli(monkeypatch, capsys, *arguments, stdin=PASSWORD + "\n")[0] == 0
    original = _hash_of(database, "ann@example.org")
    code, out, err = _cli(monkeypatch, capsys, *arguments, stdin="another password!!\n")
    assert (code, out) == (1, "")
    assert err == "error: A staff account with that email already exists\n"
    assert _hash_of(database, "ann@example.org") == original


@pytest.mark.parametrize(
    "arguments", [("staff", "disable", "nobody@example.org"), ("staff", "set-password", "x@y.org")]
)
def test_an_unknown_account_is_exit_code_1(
    database: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    arguments: tuple[str, ...],
) -> None:
    flags = ("--password-stdin",) if "set-password" in arguments else ()
    code, _, err = _cli(monkeypatch, capsys, *arguments, *flags, stdin=PASSWORD + "\n")
    assert (code, err) == (1, "error: No staff account with that email\n")


@pytest.mark.parametrize(
    ("arguments", "stdin", "message"),
    [
        (("staff", "add", "not-an-email", "--name", "X", "--password-stdin"), PASSWORD, "email"),
        (("staff", "add", "a@example.org", "--name", "  ", "--password-stdin"), PASSWORD, "name"),
        (("staff", "add", "a@example.org", "--password-stdin"), PASSWORD, "--name"),
        (("staff", "add", "a@example.org", "--name", "A", "--password-stdin"), "tooShort!", "12"),
        (("staff", "add", "a@example.org", "--name", "A"), PASSWORD, "--password-stdin"),
        (("staff", "add", "a@example.org", "--name", "A", "--password", PASSWORD), "", "not shown"),
        (("staff",), "", "action"),
    ],
)
def test_bad_input_is_one_line_exit_code_2_and_stores_nothing(
    database: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    arguments: tuple[str, ...],
    stdin: str,
    message: str,
) -> None:
    code, out, err = _cli(monkeypatch, capsys, *arguments, stdin=stdin + "\n")
    assert code == 2
    assert err.count("\n") == 1 and message in err
    assert stdin.strip() == "" or stdin.strip() not in err + out
    assert run(fetch_value(database, "SELECT count(*) FROM staff")) == 0


def test_the_password_prompt_asks_twice_and_refuses_a_mismatch(
    database: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    answers = iter([PASSWORD, PASSWORD + "?"])
    monkeypatch.setattr("getpass.getpass", lambda prompt="": next(answers))
    monkeypatch.setattr(sys, "stdin", io.StringIO(""))
    monkeypatch.setattr(sys.stdin, "isatty", lambda: True)
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["staff", "add", "ann@example.org", "--name", "Ann"])
    assert exit_info.value.code == 2
    assert capsys.readouterr().err == "error: the two passwords differ\n"

    answers = iter([PASSWORD, PASSWORD])
    cli.main(["staff", "add", "ann@example.org", "--name", "Ann"])
    assert staff.verify(_hash_of(database, "ann@example.org"), PASSWORD).ok


def test_staff_add_from_the_shell_with_a_piped_password(database: str, tmp_path: Path) -> None:
    result = run_cli(
        *("staff", "add", "shell@example.org", "--name", "Shell", "--password-stdin"),
        database_url=database,
        cwd=tmp_path,
        input=PASSWORD + "\n",
    )
    assert result.returncode == 0, result.stderr
    assert PASSWORD not in result.stdout + result.stderr
    assert staff.verify(_hash_of(database, "shell@example.org"), PASSWORD).ok


# --- the table --------------------------------------------------------------------------


async def test_the_staff_table_refuses_an_unknown_role_and_keeps_updated_at(
    staff_database: str,
) -> None:
    run_sql = await asyncpg.connect(asyncpg_dsn(staff_database))
    try:
        await run_sql.execute("TRUNCATE staff CASCADE")
        with pytest.raises(asyncpg.CheckViolationError):
            await run_sql.execute(
                "INSERT INTO staff (email, display_name, password_hash, role) "
                "VALUES ('r@example.org', 'R', 'x', 'owner')"
            )
        row = await run_sql.fetchrow(
            "INSERT INTO staff (email, display_name, password_hash) "
            "VALUES ('r@example.org', 'R', 'x') RETURNING role, active, updated_at"
        )
        assert (row["role"], row["active"]) == ("agent", True)
        changed = await run_sql.fetchval(
            "UPDATE staff SET active = false RETURNING updated_at > $1", row["updated_at"]
        )
        assert changed is True
        assert await run_sql.fetchval("SELECT relrowsecurity FROM pg_class WHERE relname = 'staff'")
    finally:
        await run_sql.close()
